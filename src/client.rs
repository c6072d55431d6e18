//! How the CLI's client commands (bench, eval, calibrate, import, export, lookup, store) reach a
//! server: the flags they share, one connection with TLS and a bearer token when the server
//! wants them, and the one error they report for anything between them and the server's answer.

use crate::grpc::routing::NAMESPACE_HEADER;
use crate::proto::semantic_cache_client::SemanticCacheClient;
use crate::proto::{self as pb};
use clap::Args;
use std::path::PathBuf;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

/// How a client command reaches a server.
#[derive(Debug, Clone, Args)]
pub struct ClientArgs {
    /// The server, as a URL (`https://` for TLS).
    #[arg(long, env = "SEMCACHE_ADDR", default_value = "http://127.0.0.1:50051")]
    pub addr: String,

    /// Bearer token, for a server that requires one.
    #[arg(long, env = "SEMCACHE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// PEM CA certificate that the server's certificate chains to (default: the public web
    /// roots). For `https://` addresses.
    #[arg(long, env = "SEMCACHE_TLS_CA", value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,

    /// PEM client certificate, for a server that requires mutual TLS (with --tls-client-key).
    #[arg(long, env = "SEMCACHE_TLS_CLIENT_CERT", value_name = "PEM", requires = "tls_client_key")]
    pub tls_client_cert: Option<PathBuf>,

    /// PEM private key of --tls-client-cert.
    #[arg(long, env = "SEMCACHE_TLS_CLIENT_KEY", value_name = "PEM", requires = "tls_client_cert")]
    pub tls_client_key: Option<PathBuf>,
}

impl ClientArgs {
    /// A plaintext connection without a token.
    pub fn plain(addr: impl Into<String>) -> Self {
        Self { addr: addr.into(), token: None, tls_ca: None, tls_client_cert: None, tls_client_key: None }
    }
}

/// A client of the cache API that sends its token with every call.
pub type Client = SemanticCacheClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to each call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Sends `token`, if any.
    pub fn new(token: Option<&str>) -> Result<Self, ClientError> {
        match token {
            Some(t) => Ok(Self(Some(format!("Bearer {t}").parse().map_err(|_| ClientError::Token)?))),
            None => Ok(Self(None)),
        }
    }
}

impl tonic::service::Interceptor for Bearer {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(value) = &self.0 {
            request.metadata_mut().insert("authorization", value.clone());
        }
        Ok(request)
    }
}

/// Why a client command did not get its answer: the settings, the connection, or the server.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("{addr} is not a server address (expected e.g. http://127.0.0.1:50051): {reason}")]
    Address { addr: String, reason: String },
    #[error("cannot read {what} {}: {source}", .path.display())]
    File { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("the token cannot be sent as gRPC metadata (it must be printable ASCII)")]
    Token,
    #[error("TLS settings for {addr}: {source}")]
    Tls { addr: String, source: tonic::transport::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: tonic::transport::Error },
    /// The server (or the transport under a call) answered with an error status. Not a
    /// `#[source]`: the message already says everything the status does, and a report that
    /// walks the chain would print it twice.
    #[error("{}", rpc_message(.0))]
    Rpc(Status),
}

impl From<Status> for ClientError {
    fn from(status: Status) -> Self {
        Self::Rpc(status)
    }
}

/// "the server answered INVALID_ARGUMENT: ..." with the code as the gRPC spec and every other
/// gRPC tool spell it (tonic's own Display gives only a description such as "Client specified
/// an invalid argument"), and the transport's cause when a call broke off underway.
fn rpc_message(status: &Status) -> String {
    let mut out = format!("the server answered {}", code_name(status.code()));
    if !status.message().is_empty() {
        out += &format!(": {}", status.message());
    }
    if let Some(source) = std::error::Error::source(status) {
        out += &format!(" ({source})");
    }
    out
}

/// The canonical name of a gRPC status code.
fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// A message about one namespace (or, with "", about all of them on one node).
pub trait Namespaced {
    fn namespace(&self) -> &str;
}

macro_rules! namespaced {
    ($($message:ident . $field:ident),* $(,)?) => {
        $(impl Namespaced for pb::$message {
            fn namespace(&self) -> &str {
                &self.$field
            }
        })*
    };
}

namespaced!(
    LookupRequest.namespace,
    StoreRequest.namespace,
    DeleteRequest.namespace,
    FeedbackRequest.namespace,
    StatsRequest.namespace,
    ExportRequest.namespace,
    ConfigureNamespaceRequest.name,
    GetNamespaceRequest.name,
    DropNamespaceRequest.name,
);

/// A batch is routed by its first element's namespace; the server refuses one whose other
/// elements are of another namespace when the header is set.
impl Namespaced for pb::BatchLookupRequest {
    fn namespace(&self) -> &str {
        self.requests.first().map_or("", |r| &r.namespace)
    }
}

impl Namespaced for pb::BatchStoreRequest {
    fn namespace(&self) -> &str {
        self.requests.first().map_or("", |r| &r.namespace)
    }
}

/// The message with the routing header `x-semcache-namespace`, which a proxy in front of
/// several nodes hashes to pick the node that owns the namespace. Harmless without a proxy.
pub fn routed<T: Namespaced>(message: T) -> Request<T> {
    let header = message.namespace().parse::<MetadataValue<Ascii>>().ok().filter(|_| !message.namespace().is_empty());
    let mut request = Request::new(message);
    if let Some(value) = header {
        request.metadata_mut().insert(NAMESPACE_HEADER, value);
    }
    request
}

/// Connects to the server that `args` names.
pub async fn connect(args: &ClientArgs) -> Result<Client, ClientError> {
    let addr = args.addr.clone();
    let mut endpoint = Channel::from_shared(addr.clone())
        .map_err(|e| ClientError::Address { addr: addr.clone(), reason: e.to_string() })?;
    if addr.starts_with("https://") {
        let read = |what, path: &PathBuf| {
            std::fs::read(path).map_err(|source| ClientError::File { what, path: path.clone(), source })
        };
        let mut tls = match &args.tls_ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
            tls = tls.identity(Identity::from_pem(read("--tls-client-cert", cert)?, read("--tls-client-key", key)?));
        }
        endpoint = endpoint.tls_config(tls).map_err(|source| ClientError::Tls { addr: addr.clone(), source })?;
    }
    let bearer = Bearer::new(args.token.as_deref())?;
    let channel = endpoint.connect().await.map_err(|source| ClientError::Connect { addr, source })?;
    Ok(SemanticCacheClient::with_interceptor(channel, bearer))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refusal_reads_with_the_canonical_code() {
        let e = ClientError::from(Status::invalid_argument("namespace \"a b\" has a space"));
        assert_eq!(e.to_string(), "the server answered INVALID_ARGUMENT: namespace \"a b\" has a space");
        assert!(std::error::Error::source(&e).is_none(), "the status is in the message, not repeated as a cause");
        assert_eq!(ClientError::from(Status::not_found("")).to_string(), "the server answered NOT_FOUND");
    }

    #[test]
    fn a_token_that_cannot_be_metadata_is_refused_before_connecting() {
        assert!(Bearer::new(Some("sc_abc")).is_ok());
        assert!(matches!(Bearer::new(Some("sc_a\nb")), Err(ClientError::Token)));
    }
}
