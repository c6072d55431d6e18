//! Routing behind a proxy that shards namespaces over nodes (nginx's consistent-hash ring):
//! the proxy picks a node by the `x-semcache-namespace` header, so a node checks that the
//! header names the request's namespace. A mismatch would put a namespace's entries on a node
//! the ring does not send its Lookups to: a stray copy that is never hit and never deleted.

use std::task::{Context, Poll};
use tonic::codegen::http;
use tonic::{Request, Status};

/// The metadata key the proxy hashes.
pub const NAMESPACE_HEADER: &str = "x-semcache-namespace";
/// The metadata key that addresses one node (request), or says which node answered (response).
pub const NODE_HEADER: &str = "x-semcache-node";

#[derive(Debug, Clone, Default)]
pub struct Routing {
    /// `--node-id`.
    pub node_id: Option<String>,
    /// `--require-routing-header`: the node sits behind a proxy, so a call without the header
    /// did not come through it.
    pub require_header: bool,
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
        let routed = self.batch(request)?;
        Self::element(routed.as_deref(), namespace).map(|_| ())
    }

    /// A call that spans namespaces (Stats or Export of "", ListNamespaces): behind a proxy it
    /// must be addressed to one node.
    pub fn span<T>(&self, request: &Request<T>) -> Result<(), Status> {
        self.node(request)?;
        if self.require_header && header(request, NODE_HEADER)?.is_none() {
            return Err(Status::invalid_argument(format!(
                "this call spans namespaces, and this node serves behind a proxy (--require-routing-header): \
                 address one node with the metadata {NODE_HEADER}: <node id>, and ask each node for its share"
            )));
        }
        Ok(())
    }

    /// The namespace a batch is routed by, if any; each element is then checked with
    /// [`Routing::element`].
    pub fn batch<T>(&self, request: &Request<T>) -> Result<Option<String>, Status> {
        self.node(request)?;
        let routed = header(request, NAMESPACE_HEADER)?;
        if routed.is_none() && self.require_header {
            return Err(Status::invalid_argument(format!(
                "this node serves behind a proxy (--require-routing-header): send the metadata \
                 {NAMESPACE_HEADER} with the request's namespace, which the proxy uses to pick the node"
            )));
        }
        Ok(routed)
    }

    /// Checks one namespace against the routing header.
    pub fn element(routed: Option<&str>, namespace: &str) -> Result<(), Status> {
        match routed {
            Some(routed) if routed != namespace => Err(Status::invalid_argument(format!(
                "metadata {NAMESPACE_HEADER} is {routed:?} but the request's namespace is {namespace:?}; \
                 they must be equal: the proxy picks the node by the header, so a mismatch reaches a node \
                 that does not own the namespace"
            ))),
            _ => Ok(()),
        }
    }

    fn node<T>(&self, request: &Request<T>) -> Result<(), Status> {
        if let (Some(asked), Some(me)) = (header(request, NODE_HEADER)?, &self.node_id) {
            if &asked != me {
                return Err(Status::failed_precondition(format!(
                    "this is node {me:?}, but the call was addressed to {asked:?}: the proxy's per-node \
                     routes do not match the nodes' --node-id"
                )));
            }
        }
        Ok(())
    }
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

        let proxied = Routing { node_id: Some("n1".into()), require_header: true };
        let e = proxied.namespace(&with(&[]), "a").unwrap_err();
        assert!(e.message().contains("--require-routing-header"), "{}", e.message());
        assert!(proxied.namespace(&with(&[(NAMESPACE_HEADER, "a")]), "a").is_ok());
        assert!(proxied.span(&with(&[])).is_err());
        assert!(proxied.span(&with(&[(NODE_HEADER, "n1")])).is_ok());
        let e = proxied.span(&with(&[(NODE_HEADER, "n2")])).unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition);
    }
}
