//! The one place where typed errors become gRPC statuses. Exhaustive on purpose: a new error
//! variant does not compile until someone decides its status.

use crate::cache::CacheError;
use crate::embed::EmbedError;
use tonic::Status;

impl From<CacheError> for Status {
    fn from(err: CacheError) -> Self {
        let message = err.to_string();
        match err {
            CacheError::InvalidArgument(_) => Status::invalid_argument(message),
            CacheError::NamespaceNotFound(_) | CacheError::EntryNotFound { .. } => Status::not_found(message),
            CacheError::ModelMismatch { .. } | CacheError::NotCacheable(_) => Status::failed_precondition(message),
            CacheError::LimitReached { .. } => Status::resource_exhausted(message),
            CacheError::Embed(e) => embed_status(e, message),
            CacheError::Storage(e) => {
                tracing::error!(error = %e, "storage failure");
                Status::internal("storage failure; the server log has the details")
            }
        }
    }
}

fn embed_status(err: EmbedError, message: String) -> Status {
    match err {
        EmbedError::QueueFull { .. } => Status::resource_exhausted(message),
        EmbedError::NotReady | EmbedError::Stopped => Status::unavailable(message),
        EmbedError::Tokenize(_)
        | EmbedError::Model(_)
        | EmbedError::MissingModel { .. }
        | EmbedError::Load { .. }
        | EmbedError::Device(_) => {
            tracing::error!(error = %message, "embedding failure");
            Status::internal(message)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cache::ValidationError;
    use tonic::Code;

    #[test]
    fn each_error_gets_its_code() {
        let cases: Vec<(CacheError, Code)> = vec![
            (ValidationError::new("query", "is empty", "").into(), Code::InvalidArgument),
            (CacheError::NamespaceNotFound("x".into()), Code::NotFound),
            (CacheError::EntryNotFound { namespace: "x".into(), id: 1 }, Code::NotFound),
            (EmbedError::QueueFull { capacity: 1 }.into(), Code::ResourceExhausted),
            (CacheError::LimitReached { limit: "--max-namespaces", reason: "full".into() }, Code::ResourceExhausted),
            (
                CacheError::NotCacheable(ValidationError {
                    refused_by_config: true,
                    ..ValidationError::new("metadata", "is truncated", "allow it")
                }),
                Code::FailedPrecondition,
            ),
            (EmbedError::NotReady.into(), Code::Unavailable),
            (EmbedError::Model("boom".into()).into(), Code::Internal),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(!status.message().is_empty());
        }
    }
}
