//! Admission: how many cache calls may be in progress at once, and what a too-large request is
//! told. Both are refused at once with RESOURCE_EXHAUSTED, so overload costs the server a
//! response header, never a queue that grows with the attack.

use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::sync::Semaphore;
use tonic::body::Body;
use tonic::codegen::{http, BoxFuture};
use tonic::{Code, Status};
use tower::{Layer, Service};

use super::status::exhausted_retry_after;

/// A call refused for too many in flight is worth retrying once some have finished; most
/// take milliseconds, a burst of full-window texts about a second on 2 cores.
const IN_FLIGHT_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

/// The cache API's path prefix; health and reflection are not limited, so that probes answer
/// even when the cache is saturated.
const LIMITED: &str = "/semcache.v1.SemanticCache/";

#[derive(Clone)]
pub struct AdmissionLayer {
    permits: Arc<Semaphore>,
    max_in_flight: usize,
    max_request_bytes: usize,
}

impl AdmissionLayer {
    pub fn new(max_in_flight: usize, max_request_bytes: usize) -> Self {
        Self { permits: Arc::new(Semaphore::new(max_in_flight)), max_in_flight, max_request_bytes }
    }
}

impl<S> Layer<S> for AdmissionLayer {
    type Service = Admission<S>;

    fn layer(&self, inner: S) -> Admission<S> {
        Admission { inner, layer: self.clone() }
    }
}

#[derive(Clone)]
pub struct Admission<S> {
    inner: S,
    layer: AdmissionLayer,
}

impl<S, B> Service<http::Request<B>> for Admission<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        if !request.uri().path().starts_with(LIMITED) {
            return Box::pin(self.inner.call(request));
        }
        let Ok(permit) = self.layer.permits.clone().try_acquire_owned() else {
            tracing::debug!(path = request.uri().path(), "refused: too many calls in flight");
            let status = exhausted_retry_after(
                format!(
                    "the server is at its limit of {} calls in progress (--max-in-flight); retry with backoff",
                    self.layer.max_in_flight
                ),
                IN_FLIGHT_RETRY,
            );
            return Box::pin(std::future::ready(Ok(status.into_http())));
        };
        // The service that was polled ready is the one that must be called.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let max_request_bytes = self.layer.max_request_bytes;
        Box::pin(async move {
            let response = inner.call(request).await?;
            drop(permit);
            Ok(name_the_size_limit(response, max_request_bytes))
        })
    }
}

/// tonic refuses a message over the decoding limit from its length prefix, as OUT_OF_RANGE
/// with its own wording; gRPC's convention for a message over the receive limit is
/// RESOURCE_EXHAUSTED, and the caller should learn which setting refused it. No handler of
/// ours returns OUT_OF_RANGE, so the code alone identifies the refusal (tonic's wording is
/// not part of its API and is not read).
fn name_the_size_limit(response: http::Response<Body>, max_request_bytes: usize) -> http::Response<Body> {
    match Status::from_header_map(response.headers()) {
        Some(status) if status.code() == Code::OutOfRange => Status::resource_exhausted(format!(
            "the request is larger than the {max_request_bytes} bytes allowed (--max-request-bytes)"
        ))
        .into_http(),
        _ => response,
    }
}
