//! The client side of the CLI's own commands (bench, eval, calibrate, import, export): one
//! connection, with TLS and a bearer token when the server wants them.

use crate::config::ClientArgs;
use crate::proto::semantic_cache_client::SemanticCacheClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Request, Status};

/// A client of the cache API that sends its token with every call.
pub type Client = SemanticCacheClient<InterceptedService<Channel, Bearer>>;

/// Adds `authorization: Bearer <token>` to each call, when there is a token.
#[derive(Clone)]
pub struct Bearer(Option<MetadataValue<Ascii>>);

impl Bearer {
    /// Sends `token`, if any.
    pub fn new(token: Option<&str>) -> Result<Self, ConnectError> {
        match token {
            Some(t) => Ok(Self(Some(format!("Bearer {t}").parse().map_err(|_| ConnectError::Token)?))),
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

#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("{addr} is not a server address (expected e.g. http://127.0.0.1:50051): {reason}")]
    Address { addr: String, reason: String },
    #[error("cannot read {what} {}: {source}", .path.display())]
    File { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error("the token cannot be sent as gRPC metadata (it must be printable ASCII)")]
    Token,
    #[error("TLS settings for {addr}: {source}")]
    Tls { addr: String, source: tonic::transport::Error },
    #[error("cannot connect to {addr}: {source}")]
    Connect { addr: String, source: tonic::transport::Error },
}

/// Connects to the server that `args` names.
pub async fn connect(args: &ClientArgs) -> Result<Client, ConnectError> {
    let addr = args.addr.clone();
    let mut endpoint = Channel::from_shared(addr.clone())
        .map_err(|e| ConnectError::Address { addr: addr.clone(), reason: e.to_string() })?;
    if addr.starts_with("https://") {
        let read = |what, path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| ConnectError::File { what, path: path.clone(), source })
        };
        let mut tls = match &args.tls_ca {
            Some(ca) => ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read("--tls-ca", ca)?)),
            None => ClientTlsConfig::new().with_webpki_roots(),
        };
        if let (Some(cert), Some(key)) = (&args.tls_client_cert, &args.tls_client_key) {
            tls = tls.identity(Identity::from_pem(read("--tls-client-cert", cert)?, read("--tls-client-key", key)?));
        }
        endpoint = endpoint.tls_config(tls).map_err(|source| ConnectError::Tls { addr: addr.clone(), source })?;
    }
    let bearer = Bearer::new(args.token.as_deref())?;
    let channel = endpoint.connect().await.map_err(|source| ConnectError::Connect { addr, source })?;
    Ok(SemanticCacheClient::with_interceptor(channel, bearer))
}
