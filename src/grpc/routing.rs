//! Routing behind a proxy that shards namespaces over nodes (nginx's consistent-hash ring):
//! the proxy picks a node by the `x-semcache-namespace` header, so a node checks that the
//! header names the request's namespace. A mismatch would put a namespace's entries on a node
//! the ring does not send its Lookups to: a stray copy that is never hit and never deleted.

use pingora_ketama::{Bucket, Continuum};
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll};
use tonic::codegen::http;
use tonic::{Request, Status};

/// The metadata key the proxy hashes.
pub const NAMESPACE_HEADER: &str = "x-semcache-namespace";
/// The metadata key that addresses one node (request), or says which node answered (response).
pub const NODE_HEADER: &str = "x-semcache-node";

#[derive(Clone, Default)]
pub struct Routing {
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--require-routing-header`: the node sits behind a proxy, so a call without the header
    /// did not come through it.
    pub require_header: bool,
    /// `--ring`: the proxy's ring, to refuse namespaces another node owns.
    pub ring: Option<Arc<Ring>>,
}

/// The proxy's consistent-hash ring as this node sees it: the same servers in the same
/// spelling (`ip:port`) as nginx's `upstream`, so that both place every namespace alike.
pub struct Ring {
    continuum: Continuum,
    me: SocketAddr,
}

impl Ring {
    /// `servers` as nginx lists them (weight 1 each); `me` is this node's entry.
    pub fn new(servers: &[SocketAddr], me: SocketAddr) -> Result<Self, String> {
        if !servers.contains(&me) {
            return Err(format!("--ring does not list this node's address {me} (--ring-self, or --listen)"));
        }
        let buckets: Vec<Bucket> = servers.iter().map(|s| Bucket::new(*s, 1)).collect();
        Ok(Self { continuum: Continuum::new(&buckets), me })
    }

    /// The node that owns `namespace`.
    pub fn owner(&self, namespace: &str) -> Option<SocketAddr> {
        self.continuum.node(namespace.as_bytes())
    }

    fn check(&self, namespace: &str) -> Result<(), Status> {
        match self.owner(namespace) {
            Some(owner) if owner != self.me => Err(Status::failed_precondition(format!(
                "namespace {namespace:?} belongs to {owner} on the ring (--ring), not to this node ({}): \
                 send it through the proxy, or give the proxy and the nodes the same server list",
                self.me
            ))),
            _ => Ok(()),
        }
    }
}

fn header<T>(request: &Request<T>, key: &str) -> Result<Option<String>, Status> {
    match request.metadata().get(key) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .map(|v| Some(v.to_owned()))
            .map_err(|_| Status::invalid_argument(format!("metadata {key} is not printable ASCII"))),
    }
}

impl Routing {
    /// A call about one namespace.
    pub fn namespace<T>(&self, request: &Request<T>, namespace: &str) -> Result<(), Status> {
        let route = self.batch(request)?;
        self.element(&route, namespace)
    }

    /// A call that spans namespaces (Stats or Export of "", ListNamespaces). It reads and
    /// cannot misplace anything, so it needs no header even behind a proxy (nginx itself
    /// refuses one without `x-semcache-node`); a node header must name this node.
    pub fn span<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.node(request).map(|_| ())
    }

    /// How a call (a batch's, or a single one's) was routed; each namespace in it is then
    /// checked with [`Routing::element`].
    pub fn batch<T>(&self, request: &Request<T>) -> Result<Route, Status> {
        let addressed = self.node(request)?;
        let header = header(request, NAMESPACE_HEADER)?;
        // A call that names this node came through the proxy's per-node route.
        if header.is_none() && self.require_header && !addressed {
            return Err(Status::invalid_argument(format!(
                "this node serves behind a proxy (--require-routing-header): send the metadata \
                 {NAMESPACE_HEADER} with the request's namespace, which the proxy uses to pick the node \
                 (or {NODE_HEADER} to address one node)"
            )));
        }
        Ok(Route { header, addressed })
    }

    /// Checks one namespace against the routing header, and against the ring unless the call
    /// named this node: an operator who addresses a node means it (to drop the copy a namespace
    /// left behind when a new node took it over, say).
    pub fn element(&self, route: &Route, namespace: &str) -> Result<(), Status> {
        match &route.header {
            Some(routed) if routed != namespace => Err(Status::invalid_argument(format!(
                "metadata {NAMESPACE_HEADER} is {routed:?} but the request's namespace is {namespace:?}; \
                 they must be equal: the proxy picks the node by the header, so a mismatch reaches a node \
                 that does not own the namespace"
            ))),
            _ if route.addressed => Ok(()),
            _ => self.ring.as_ref().map_or(Ok(()), |ring| ring.check(namespace)),
        }
    }

    /// Whether the call names this node with `x-semcache-node`; refused if it names another.
    fn node<T>(&self, request: &Request<T>) -> Result<bool, Status> {
        let Some(asked) = header(request, NODE_HEADER)? else { return Ok(false) };
        match &self.node_id {
            Some(me) if &asked != me => Err(Status::failed_precondition(format!(
                "this is node {me:?}, but the call was addressed to {asked:?}: the proxy's per-node \
                 routes do not match the nodes' --node-id"
            ))),
            _ => Ok(true),
        }
    }
}

/// How a call was routed to this node.
pub struct Route {
    /// The `x-semcache-namespace` header, if sent.
    header: Option<String>,
    /// Whether `x-semcache-node` named this node.
    addressed: bool,
}

/// Adds `x-semcache-node: <id>` to every response, so a caller behind the proxy sees which node
/// answered.
#[derive(Debug, Clone)]
pub struct NodeHeaderLayer {
    value: Option<http::HeaderValue>,
}

impl NodeHeaderLayer {
    pub fn new(node_id: Option<&str>) -> Self {
        Self { value: node_id.and_then(|id| http::HeaderValue::from_str(id).ok()) }
    }
}

impl<S> tower::Layer<S> for NodeHeaderLayer {
    type Service = NodeHeader<S>;
    fn layer(&self, inner: S) -> Self::Service {
        NodeHeader { inner, value: self.value.clone() }
    }
}

#[derive(Debug, Clone)]
pub struct NodeHeader<S> {
    inner: S,
    value: Option<http::HeaderValue>,
}

impl<S, B, R> tower::Service<http::Request<B>> for NodeHeader<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = std::pin::Pin<Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let value = self.value.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let mut response = response.await?;
            if let Some(value) = value {
                response.headers_mut().insert(NODE_HEADER, value);
            }
            Ok(response)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Code;

    fn with(headers: &[(&'static str, &str)]) -> Request<()> {
        let mut r = Request::new(());
        for (k, v) in headers {
            r.metadata_mut().insert(*k, v.parse().unwrap());
        }
        r
    }

    #[test]
    fn the_header_must_name_the_namespace_and_is_needed_only_behind_a_proxy() {
        let direct = Routing::default();
        assert!(direct.namespace(&with(&[]), "a").is_ok());
        assert!(direct.namespace(&with(&[(NAMESPACE_HEADER, "a")]), "a").is_ok());
        let e = direct.namespace(&with(&[(NAMESPACE_HEADER, "b")]), "a").unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.message().contains("\"b\"") && e.message().contains("\"a\""), "{}", e.message());

        let proxied = Routing { node_id: Some("n1".into()), require_header: true, ring: None };
        let e = proxied.namespace(&with(&[]), "a").unwrap_err();
        assert!(e.message().contains("--require-routing-header"), "{}", e.message());
        assert!(proxied.namespace(&with(&[(NAMESPACE_HEADER, "a")]), "a").is_ok());
        assert!(proxied.span(&with(&[])).is_ok(), "an operator may ask a node directly");
        assert!(proxied.span(&with(&[(NODE_HEADER, "n1")])).is_ok());
        assert!(proxied.namespace(&with(&[(NODE_HEADER, "n1")]), "a").is_ok(), "addressed: no namespace header needed");
        let e = proxied.span(&with(&[(NODE_HEADER, "n2")])).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
    }

    #[test]
    fn the_ring_refuses_what_another_node_owns_and_splits_namespaces_like_nginx() {
        let servers: Vec<SocketAddr> = (1..=3).map(|k| format!("127.0.0.1:5005{k}").parse().unwrap()).collect();
        let rings: Vec<Routing> = servers
            .iter()
            .map(|me| Routing { ring: Some(Arc::new(Ring::new(&servers, *me).unwrap())), ..Routing::default() })
            .collect();
        let mut owned = [0; 3];
        for i in 0..300 {
            let ns = format!("tenant-{i}");
            let route = Route { header: Some(ns.clone()), addressed: false };
            let accepting: Vec<usize> = (0..3).filter(|&k| rings[k].element(&route, &ns).is_ok()).collect();
            assert_eq!(accepting.len(), 1, "{ns} is owned by exactly one node");
            owned[accepting[0]] += 1;
        }
        assert!(owned.iter().all(|&n| n > 50), "about a third each: {owned:?}");
        let plain = Route { header: None, addressed: false };
        let e = rings[0].element(&plain, "tenant-x").and(rings[1].element(&plain, "tenant-x")).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
        assert!(e.message().contains("--ring"), "{}", e.message());
        let addressed = Route { header: None, addressed: true };
        assert!((0..3).all(|k| rings[k].element(&addressed, "tenant-x").is_ok()), "a node named on purpose answers");
        assert!(Ring::new(&servers, "127.0.0.1:1".parse().unwrap()).is_err());
    }
}
