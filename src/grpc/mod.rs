//! The gRPC edge: converts between the wire messages and the cache's types, and maps errors to
//! statuses (`status.rs`), after admission (`admission.rs`) and authentication (`auth.rs`).
//! No cache policy lives here.

pub mod admission;
pub mod auth;
pub mod routing;
mod status;

use crate::cache::{self, Cache, DeleteTarget, Entry, Evidence, MissReason, NamespaceView};
use crate::metrics::Metrics;
use crate::proto::{self as pb, semantic_cache_server::SemanticCache};
use auth::{caller, Right};
use routing::Routing;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};

pub use pb::semantic_cache_server::SemanticCacheServer;

pub struct SemanticCacheService {
    cache: Arc<Cache>,
    metrics: Arc<Metrics>,
    routing: Routing,
    /// `--max-batch-requests`.
    max_batch: usize,
}

/// What a batch's elements need of the caller, and where each names its namespace.
struct Elements<P> {
    right: Right,
    namespace: fn(&P) -> &str,
}

/// Runs every checked element at once (the model's queue batches their texts into as few
/// passes as fit) and answers in request order; a failure names its element.
async fn answer_all<C, A, F>(checked: Vec<C>, run: impl Fn(C) -> F) -> Result<Vec<A>, Status>
where
    F: std::future::Future<Output = Result<A, Status>>,
{
    let answers = futures_util::future::join_all(checked.into_iter().map(run)).await;
    answers.into_iter().enumerate().map(|(i, a)| a.map_err(|s| at(i, s))).collect()
}

/// A batch element's refusal: the element's status, its message saying which element.
fn at(index: usize, status: Status) -> Status {
    let mut located = Status::new(status.code(), format!("requests[{index}]: {}", status.message()));
    *located.metadata_mut() = status.metadata().clone();
    located
}

impl SemanticCacheService {
    pub fn new(cache: Arc<Cache>, metrics: Arc<Metrics>, routing: Routing, max_batch: usize) -> Self {
        Self { cache, metrics, routing, max_batch }
    }

    /// Stats and Export take "" for every namespace: a call that spans them.
    fn route<T>(&self, request: &Request<T>, namespace: &str) -> Result<(), Status> {
        match namespace {
            "" => self.routing.span(request),
            ns => self.routing.namespace(request, ns),
        }
    }

    /// Every element of a batch checked before any is run (its size, routing, the caller's
    /// grant and the cache's own checks), converted for the cache; a refusal names its element.
    fn check_batch<P, C>(
        &self,
        who: &auth::Caller,
        route: &routing::Route,
        requests: Vec<P>,
        elements: Elements<P>,
        convert: fn(P) -> C,
        check: fn(&Cache, &C) -> Result<(), cache::CacheError>,
    ) -> Result<Vec<C>, Status> {
        self.batch_size(requests.len())?;
        requests
            .into_iter()
            .enumerate()
            .map(|(i, r)| {
                let namespace = (elements.namespace)(&r);
                self.routing.element(route, namespace).map_err(|s| at(i, s))?;
                who.check(elements.right, namespace).map_err(|s| at(i, s))?;
                let r = convert(r);
                check(&self.cache, &r).map_err(|e| at(i, e.into()))?;
                Ok(r)
            })
            .collect()
    }

    fn batch_size(&self, len: usize) -> Result<(), Status> {
        match len {
            0 => Err(Status::invalid_argument("requests is empty: send at least one")),
            n if n > self.max_batch => Err(Status::invalid_argument(format!(
                "requests has {n} elements, over this server's limit of {} (--max-batch-requests): split the batch",
                self.max_batch
            ))),
            _ => Ok(()),
        }
    }

    async fn lookup_one(&self, r: cache::LookupRequest) -> Result<pb::LookupResponse, Status> {
        let started = Instant::now();
        let namespace = r.namespace.clone();
        let outcome = self
            .cache
            .lookup(r)
            .await
            .inspect_err(|e| tracing::debug!(rpc = "Lookup", %namespace, error = %e, "refused"))?;
        self.metrics.observe_lookup(&outcome, started.elapsed());
        tracing::debug!(
            rpc = "Lookup",
            %namespace,
            hit = outcome.hit(),
            exact = outcome.exact,
            similarity = outcome.similarity,
            reason = ?outcome.miss_reason,
            ms = started.elapsed().as_secs_f64() * 1e3,
        );
        Ok(pb::LookupResponse {
            hit: outcome.hit(),
            entry: outcome.entry.map(entry_to_pb),
            similarity: outcome.similarity,
            nearest_id: outcome.nearest_id.map(|id| id.to_string()).unwrap_or_default(),
            threshold: outcome.threshold,
            veto: outcome.veto.map(|v| pb::GuardVeto {
                id: v.id.to_string(),
                similarity: v.similarity,
                guard: v.veto.guard.to_owned(),
                detail: v.veto.detail,
            }),
            miss_reason: miss_reason_to_pb(outcome.miss_reason).into(),
            probe_token: outcome.probe_token.unwrap_or_default(),
            probe_entry: outcome.probe_entry.map(entry_to_pb),
        })
    }

    async fn store_one(&self, r: cache::StoreRequest) -> Result<pb::StoreResponse, Status> {
        let started = Instant::now();
        let namespace = r.namespace.clone();
        let stored = self
            .cache
            .store(r)
            .await
            .inspect_err(|e| tracing::debug!(rpc = "Store", %namespace, error = %e, "refused"))?;
        tracing::debug!(
            rpc = "Store",
            %namespace,
            id = stored.id,
            probe_correct = ?stored.probe_correct,
            ms = started.elapsed().as_secs_f64() * 1e3
        );
        Ok(pb::StoreResponse { id: stored.id.to_string(), probe_correct: stored.probe_correct })
    }

    /// The service behind the authentication interceptor, refusing messages over
    /// `max_request_bytes` from their length prefix.
    pub fn into_server(
        self,
        auth: auth::Auth,
        max_request_bytes: usize,
    ) -> tonic::service::interceptor::InterceptedService<SemanticCacheServer<Self>, auth::Auth> {
        let server = SemanticCacheServer::new(self).max_decoding_message_size(max_request_bytes);
        tonic::service::interceptor::InterceptedService::new(server, auth)
    }
}

fn entry_to_pb(e: Entry) -> pb::Entry {
    pb::Entry {
        usage: (e.usage != cache::Usage::default()).then_some(pb::Usage {
            input_tokens: e.usage.input_tokens,
            output_tokens: e.usage.output_tokens,
            cost_usd: e.usage.cost_usd,
        }),
        id: e.id.to_string(),
        namespace: e.namespace,
        query: e.query,
        response: e.response,
        scope: e.scope,
        context_key: e.context_key,
        metadata: e.metadata,
        created_at_unix_ms: e.created_at_unix_ms,
        expires_at_unix_ms: e.expires_at_unix_ms,
        hit_count: e.hit_count,
        evidence: (!e.evidence.is_empty()).then(|| evidence_to_pb(e.evidence)),
    }
}

fn evidence_to_pb(e: Evidence) -> pb::Evidence {
    pb::Evidence {
        observations: e
            .observations
            .into_iter()
            .map(|o| pb::Observation {
                similarity: o.features.similarity,
                margin: o.features.margin,
                agreeing: o.features.agreeing,
                correct: o.correct,
                source: match o.source {
                    cache::Source::Probe => pb::ObservationSource::Probe,
                    cache::Source::Feedback => pb::ObservationSource::Feedback,
                }
                .into(),
                audit_p_wrong: o.audit_p_wrong,
            })
            .collect(),
        refused_queries: e.refused_queries,
    }
}

fn evidence_from_pb(e: Option<pb::Evidence>) -> Evidence {
    let Some(e) = e else { return Evidence::default() };
    Evidence {
        observations: e
            .observations
            .into_iter()
            .map(|o| cache::Observation {
                features: cache::Features { similarity: o.similarity, margin: o.margin, agreeing: o.agreeing },
                correct: o.correct,
                source: match o.source() {
                    pb::ObservationSource::Feedback => cache::Source::Feedback,
                    pb::ObservationSource::Probe | pb::ObservationSource::Unspecified => cache::Source::Probe,
                },
                audit_p_wrong: o.audit_p_wrong,
            })
            .collect(),
        refused_queries: e.refused_queries,
    }
}

fn namespace_to_pb(v: NamespaceView) -> pb::Namespace {
    pb::Namespace {
        name: v.settings.name,
        similarity_threshold: v.settings.similarity_threshold,
        ttl_seconds: v.settings.ttl_seconds,
        max_entries: v.settings.max_entries,
        entries: v.entries,
        embedding_model: v.settings.embedding_model,
        threshold_floor: v.settings.threshold_floor,
        hit_guards: v.hit_guards,
        error_bound: v.settings.error_bound,
    }
}

fn miss_reason_to_pb(reason: MissReason) -> pb::MissReason {
    match reason {
        MissReason::None => pb::MissReason::Unspecified,
        MissReason::Empty => pb::MissReason::Empty,
        MissReason::BelowThreshold => pb::MissReason::BelowThreshold,
        MissReason::Vetoed => pb::MissReason::Vetoed,
        MissReason::NeedsContext => pb::MissReason::NeedsContext,
        MissReason::Explore => pb::MissReason::Explore,
    }
}

fn lookup_from_pb(r: pb::LookupRequest) -> cache::LookupRequest {
    cache::LookupRequest {
        namespace: r.namespace,
        query: r.query,
        scope: r.scope,
        similarity_threshold: r.similarity_threshold,
        context: r.context,
        context_key: r.context_key,
    }
}

fn store_from_pb(r: pb::StoreRequest) -> cache::StoreRequest {
    let usage = r.usage.unwrap_or_default();
    cache::StoreRequest {
        namespace: r.namespace,
        query: r.query,
        response: r.response,
        scope: r.scope,
        metadata: r.metadata,
        ttl_seconds: r.ttl_seconds,
        usage: cache::Usage {
            input_tokens: usage.input_tokens,
            output_tokens: usage.output_tokens,
            cost_usd: usage.cost_usd,
        },
        context: r.context,
        context_key: r.context_key,
        probe_token: r.probe_token,
        probe_verdict: r.probe_verdict,
        evidence: evidence_from_pb(r.evidence),
    }
}

#[tonic::async_trait]
impl SemanticCache for SemanticCacheService {
    type ExportStream = std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::Entry, Status>> + Send>>;

    async fn export(&self, request: Request<pb::ExportRequest>) -> Result<Response<Self::ExportStream>, Status> {
        let who = caller(&request);
        self.route(&request, &request.get_ref().namespace)?;
        let namespace = request.into_inner().namespace;
        who.check(Right::Read, &namespace)?;
        // Bounded: RocksDB is read only as fast as the client takes entries.
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<pb::Entry, Status>>(256);
        let cache = self.cache.clone();
        tokio::task::spawn_blocking(move || {
            let sent = cache.export(&namespace, |entry| tx.blocking_send(Ok(entry_to_pb(entry))).is_ok());
            match sent {
                Ok(sent) => tracing::debug!(rpc = "Export", %namespace, sent),
                Err(e) => {
                    let _ = tx.blocking_send(Err(e.into()));
                }
            }
        });
        // A refusal (bad or unknown namespace) comes before any entry: it is the RPC's
        // status, not an item of an empty stream.
        let first = rx.recv().await;
        if let Some(Err(status)) = first {
            return Err(status);
        }
        let rest = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::chain(tokio_stream::iter(first), rest))))
    }

    async fn lookup(&self, request: Request<pb::LookupRequest>) -> Result<Response<pb::LookupResponse>, Status> {
        let who = caller(&request);
        self.routing.namespace(&request, &request.get_ref().namespace)?;
        let r = request.into_inner();
        who.check(Right::Read, &r.namespace)?;
        Ok(Response::new(self.lookup_one(lookup_from_pb(r)).await?))
    }

    async fn store(&self, request: Request<pb::StoreRequest>) -> Result<Response<pb::StoreResponse>, Status> {
        let who = caller(&request);
        self.routing.namespace(&request, &request.get_ref().namespace)?;
        let r = request.into_inner();
        who.check(Right::Write, &r.namespace)?;
        Ok(Response::new(self.store_one(store_from_pb(r)).await?))
    }

    async fn batch_lookup(
        &self,
        request: Request<pb::BatchLookupRequest>,
    ) -> Result<Response<pb::BatchLookupResponse>, Status> {
        let (who, route) = (caller(&request), self.routing.batch(&request)?);
        let requests = request.into_inner().requests;
        let elements = Elements { right: Right::Read, namespace: |r: &pb::LookupRequest| r.namespace.as_str() };
        let checked = self.check_batch(&who, &route, requests, elements, lookup_from_pb, Cache::check_lookup)?;
        let responses = answer_all(checked, |r| self.lookup_one(r)).await?;
        Ok(Response::new(pb::BatchLookupResponse { responses }))
    }

    async fn batch_store(
        &self,
        request: Request<pb::BatchStoreRequest>,
    ) -> Result<Response<pb::BatchStoreResponse>, Status> {
        let (who, route) = (caller(&request), self.routing.batch(&request)?);
        let requests = request.into_inner().requests;
        let elements = Elements { right: Right::Write, namespace: |r: &pb::StoreRequest| r.namespace.as_str() };
        let checked = self.check_batch(&who, &route, requests, elements, store_from_pb, Cache::check_store)?;
        let responses = answer_all(checked, |r| self.store_one(r)).await?;
        Ok(Response::new(pb::BatchStoreResponse { responses }))
    }

    async fn feedback(&self, request: Request<pb::FeedbackRequest>) -> Result<Response<pb::FeedbackResponse>, Status> {
        let who = caller(&request);
        self.routing.namespace(&request, &request.get_ref().namespace)?;
        let r = request.into_inner();
        // Feedback changes what the namespace serves: a write.
        who.check(Right::Write, &r.namespace)?;
        let namespace = r.namespace.clone();
        let outcome = self
            .cache
            .feedback(cache::FeedbackRequest {
                namespace: r.namespace,
                entry_id: r.entry_id,
                query: r.query,
                correct: r.correct,
            })
            .await
            .inspect_err(|e| tracing::debug!(rpc = "Feedback", %namespace, error = %e, "refused"))?;
        tracing::debug!(rpc = "Feedback", %namespace, correct = r.correct, deleted = outcome.deleted);
        Ok(Response::new(pb::FeedbackResponse { observations: outcome.observations, deleted: outcome.deleted }))
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let who = caller(&request);
        self.routing.namespace(&request, &request.get_ref().namespace)?;
        let r = request.into_inner();
        who.check(Right::Write, &r.namespace)?;
        let target = match r.target {
            Some(pb::delete_request::Target::Id(id)) => DeleteTarget::Id(id),
            Some(pb::delete_request::Target::Scope(s)) => DeleteTarget::Scope(s.scope),
            Some(pb::delete_request::Target::All(true)) => DeleteTarget::All,
            Some(pb::delete_request::Target::All(false)) | None => {
                return Err(Status::invalid_argument(
                    "target is required: set id, scope, or all = true to say what to delete",
                ))
            }
        };
        let namespace = r.namespace.clone();
        let deleted = self.cache.delete(r.namespace, target).await?;
        tracing::debug!(rpc = "Delete", %namespace, deleted);
        Ok(Response::new(pb::DeleteResponse { deleted }))
    }

    async fn configure_namespace(
        &self,
        request: Request<pb::ConfigureNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let who = caller(&request);
        self.routing.namespace(&request, &request.get_ref().name)?;
        let r = request.into_inner();
        who.check(Right::Write, &r.name)?;
        let view = self
            .cache
            .configure_namespace(cache::NamespaceUpdate {
                name: r.name,
                similarity_threshold: r.similarity_threshold,
                ttl_seconds: r.ttl_seconds,
                max_entries: r.max_entries,
                threshold_floor: r.threshold_floor,
                hit_guards: r.hit_guards,
                error_bound: r.error_bound,
            })
            .await?;
        Ok(Response::new(namespace_to_pb(view)))
    }

    async fn get_namespace(
        &self,
        request: Request<pb::GetNamespaceRequest>,
    ) -> Result<Response<pb::Namespace>, Status> {
        let who = caller(&request);
        self.routing.namespace(&request, &request.get_ref().name)?;
        let name = request.into_inner().name;
        who.check(Right::Read, &name)?;
        let view = self.cache.get_namespace(&name)?;
        Ok(Response::new(namespace_to_pb(view)))
    }

    async fn list_namespaces(
        &self,
        request: Request<pb::ListNamespacesRequest>,
    ) -> Result<Response<pb::ListNamespacesResponse>, Status> {
        // A token sees the namespaces it has a grant on, not what other tenants named theirs.
        let who = caller(&request);
        self.routing.span(&request)?;
        let namespaces = self
            .cache
            .list_namespaces()
            .into_iter()
            .filter(|v| who.sees(&v.settings.name))
            .map(namespace_to_pb)
            .collect();
        Ok(Response::new(pb::ListNamespacesResponse { namespaces }))
    }

    async fn stats(&self, request: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let who = caller(&request);
        self.route(&request, &request.get_ref().namespace)?;
        let namespace = request.into_inner().namespace;
        who.check(Right::Read, &namespace)?;
        let s = self.cache.stats(&namespace)?;
        Ok(Response::new(pb::StatsResponse {
            lookups: s.lookups,
            hits: s.hits,
            misses: s.misses,
            stores: s.stores,
            entries: s.entries,
            evictions: s.evictions,
            expirations: s.expirations,
            saved_input_tokens: s.saved_input_tokens,
            saved_output_tokens: s.saved_output_tokens,
            saved_cost_usd: s.saved_cost_usd,
            explores: s.explores,
            probes_correct: s.probes_correct,
            probes_wrong: s.probes_wrong,
            feedback_correct: s.feedback_correct,
            feedback_wrong: s.feedback_wrong,
            estimated_error_rate: s.estimated_error_rate,
            node_id: self.routing.node_id.clone().unwrap_or_default(),
        }))
    }

    async fn drop_namespace(
        &self,
        request: Request<pb::DropNamespaceRequest>,
    ) -> Result<Response<pb::DropNamespaceResponse>, Status> {
        let who = caller(&request);
        self.routing.namespace(&request, &request.get_ref().name)?;
        let name = request.into_inner().name;
        who.check(Right::Write, &name)?;
        let deleted = self.cache.drop_namespace(name.clone()).await?;
        tracing::debug!(rpc = "DropNamespace", namespace = %name, deleted);
        Ok(Response::new(pb::DropNamespaceResponse { deleted }))
    }
}
