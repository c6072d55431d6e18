//! The one place where typed errors become gRPC statuses. Exhaustive on purpose: a new error
//! variant does not compile until someone decides its status. A refusal that is worth retrying
//! (RESOURCE_EXHAUSTED for load, not for a limit on what the server holds) carries a
//! `retry-after` metadata entry in seconds, as qdrant sends it, so a client can back off
//! without parsing the message.

use crate::cache::CacheError;
use crate::embed::EmbedError;
use crate::store::StoreError;
use std::time::Duration;
use tonic::Status;

/// The metadata key of the back-off hint.
pub const RETRY_AFTER: &str = "retry-after";

/// How long a client should wait before retrying a call refused because the model's queue
/// was full: about the time the model takes to work through a full queue's head on 2 cores.
const QUEUE_FULL_RETRY: Duration = Duration::from_secs(1);

/// A RESOURCE_EXHAUSTED status that says when to retry (whole seconds, at least one).
pub fn exhausted_retry_after(message: impl Into<String>, after: Duration) -> Status {
    let mut status = Status::resource_exhausted(message);
    let seconds = after.as_secs_f64().ceil().max(1.0) as u64;
    status.metadata_mut().insert(RETRY_AFTER, seconds.into());
    status
}

impl From<CacheError> for Status {
    fn from(err: CacheError) -> Self {
        let message = err.to_string();
        match err {
            CacheError::InvalidArgument(_) => Status::invalid_argument(message),
            CacheError::NamespaceNotFound(_) | CacheError::EntryNotFound { .. } => Status::not_found(message),
            CacheError::ModelMismatch { .. } | CacheError::NotCacheable(_) => Status::failed_precondition(message),
            // A forged or misdirected token is the caller's mistake; an expired or used one
            // was valid once and is refused by the state of things.
            CacheError::Probe(e) if e.is_invalid() => Status::invalid_argument(message),
            CacheError::Probe(_) => Status::failed_precondition(message),
            // Not transient: retrying changes nothing until an operator acts.
            CacheError::LimitReached { .. } => Status::resource_exhausted(message),
            CacheError::Embed(e) => embed_status(e, message),
            CacheError::Storage(e) => storage_status(e, message),
            CacheError::Internal(what) => {
                tracing::error!(error = %what, "internal error");
                Status::internal(message)
            }
        }
    }
}

fn storage_status(err: StoreError, message: String) -> Status {
    match err {
        // Reported once, when the store changes state (log and metric), not per request.
        StoreError::Full { .. } => Status::resource_exhausted(message),
        StoreError::WriteFailed { .. } => Status::unavailable(message),
        StoreError::Damaged { .. } | StoreError::Corrupt { .. } => {
            tracing::error!(error = %message, "damaged data");
            Status::data_loss(message)
        }
        StoreError::Rocks { .. }
        | StoreError::Foreign { .. }
        | StoreError::Schema { .. }
        | StoreError::NotWritable { .. } => {
            tracing::error!(error = %message, "storage failure");
            Status::internal("storage failure; the server log has the details")
        }
    }
}

fn embed_status(err: EmbedError, message: String) -> Status {
    match err {
        EmbedError::QueueFull { .. } => exhausted_retry_after(message, QUEUE_FULL_RETRY),
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
            (CacheError::Probe(crate::cache::probe::ProbeError::Forged), Code::InvalidArgument),
            (CacheError::Probe(crate::cache::probe::ProbeError::OtherNamespace), Code::InvalidArgument),
            (CacheError::Probe(crate::cache::probe::ProbeError::Used), Code::FailedPrecondition),
            (
                CacheError::Probe(crate::cache::probe::ProbeError::Expired { ago_ms: 5, ttl_s: 600 }),
                Code::FailedPrecondition,
            ),
            (EmbedError::Model("boom".into()).into(), Code::Internal),
            (StoreError::Full { path: "/d".into(), detail: "ENOSPC".into() }.into(), Code::ResourceExhausted),
            (StoreError::WriteFailed { path: "/d".into(), detail: "EIO".into() }.into(), Code::Unavailable),
            (StoreError::Damaged { path: "/d".into(), detail: "checksum".into() }.into(), Code::DataLoss),
            (CacheError::Internal("Lookup failed unexpectedly".into()), Code::Internal),
        ];
        for (err, code) in cases {
            let status = Status::from(err);
            assert_eq!(status.code(), code, "{}", status.message());
            assert!(!status.message().is_empty());
        }
    }

    #[test]
    fn load_refusals_say_when_to_retry_and_limits_do_not() {
        let full = Status::from(CacheError::from(EmbedError::QueueFull { capacity: 8 }));
        assert_eq!(full.metadata().get(RETRY_AFTER).unwrap(), "1");
        let limit = Status::from(CacheError::LimitReached { limit: "--max-namespaces", reason: "full".into() });
        assert!(limit.metadata().get(RETRY_AFTER).is_none());
        let later = exhausted_retry_after("slow down", Duration::from_millis(2_100));
        assert_eq!(later.metadata().get(RETRY_AFTER).unwrap(), "3");
    }
}
