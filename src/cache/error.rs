//! What the cache refuses or fails with. Each inner layer's error converts in with `From`;
//! the gRPC edge maps this type to a status in one exhaustive match.

use super::ValidationError;
use crate::embed::EmbedError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    InvalidArgument(ValidationError),
    #[error("namespace {0:?} does not exist")]
    NamespaceNotFound(String),
    #[error("no entry with id {id} in namespace {namespace:?}")]
    EntryNotFound { namespace: String, id: u64 },
    #[error(
        "namespace {namespace:?} was embedded with model {stored}, but this server runs {current}; \
         run `semcache reembed --namespace {namespace}` (server stopped) to re-embed it with this \
         model, start with the model it was made with, or drop the namespace"
    )]
    ModelMismatch { namespace: String, stored: String, current: String },
    /// An operator's limit on what the server holds (not on one request's size).
    #[error("{reason} ({limit})")]
    LimitReached { limit: &'static str, reason: String },
    /// A well-formed Store of something this server is configured not to cache.
    #[error(transparent)]
    NotCacheable(ValidationError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// A probe token that is not this server's, or no longer usable.
    #[error(transparent)]
    Probe(super::probe::ProbeError),
    /// A bug: an operation panicked (its locks do not poison, so the server goes on).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<ValidationError> for CacheError {
    fn from(e: ValidationError) -> Self {
        if e.refused_by_config {
            Self::NotCacheable(e)
        } else {
            Self::InvalidArgument(e)
        }
    }
}
