//! `semcache serve`: opens the data dir, starts the model thread and the gRPC server, and
//! flips health to SERVING once the model has loaded and answered a warm-up request.

use crate::cache::{validate, Cache, CacheError, Defaults, Maintenance, MaintenanceSettings, Settings};
use crate::clock::SystemClock;
use crate::config::ServeArgs;
use crate::embed::{check_model_dir, BatchConfig, EmbedError, Embedder, ModelInfo};
use crate::grpc::admission::AdmissionLayer;
use crate::grpc::auth::Auth;
use crate::grpc::routing::{NodeHeaderLayer, Ring, Routing};
use crate::grpc::{SemanticCacheServer, SemanticCacheService};
use crate::index::IndexParams;
use crate::metrics::Metrics;
use crate::store::Store;
use parking_lot::Mutex;
use prometheus_client::metrics::histogram::Histogram;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("invalid setting: {0}")]
    Config(String),
    /// A start-up step that panicked (a bug), reported instead of re-panicking.
    #[error("{0}")]
    Startup(String),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Cache(#[from] CacheError),
    #[error("cannot create data dir {path}: {source}")]
    DataDir { path: std::path::PathBuf, source: std::io::Error },
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("gRPC server: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("cannot listen for metrics on {addr}: {source}")]
    MetricsListen { addr: std::net::SocketAddr, source: std::io::Error },
    #[error("cannot read {what} {}: {source}", .path.display())]
    TlsFile { what: &'static str, path: std::path::PathBuf, source: std::io::Error },
    #[error(
        "refusing to listen on {0}: no tokens are configured, so anyone who can reach it could read and \
         write every namespace. Add [tokens.NAME] tables to the config file (`semcache token` makes one), \
         listen on a loopback address, or pass --insecure-listen-any"
    )]
    Exposed(std::net::SocketAddr),
}

/// How often the info-level summary of traffic is logged (when there was any).
const SUMMARY_EVERY: Duration = Duration::from_secs(60);

/// One info line of what the cache did since start.
fn log_summary(cache: &Cache, what: &str) {
    let Ok(s) = cache.stats("") else { return };
    let hit_rate = if s.lookups == 0 { 0.0 } else { s.hits as f64 / s.lookups as f64 };
    tracing::info!(
        lookups = s.lookups,
        hits = s.hits,
        exact_hits = s.exact_hits,
        hit_rate = format!("{hit_rate:.3}"),
        stores = s.stores,
        entries = s.entries,
        bytes = s.bytes,
        evictions = s.evictions,
        expirations = s.expirations,
        saved_usd = format!("{:.4}", s.saved_cost_usd),
        "{what}"
    );
}

fn check_args(args: &ServeArgs) -> Result<(), ServeError> {
    validate::threshold("--default-threshold", args.default_threshold)
        .map_err(|e| ServeError::Config(e.to_string()))?;
    if args.max_batch == 0 || args.max_queue == 0 || args.max_batch_tokens == 0 {
        return Err(ServeError::Config("--max-batch, --max-batch-tokens and --max-queue must be at least 1".into()));
    }
    if args.ef_search == 0 {
        return Err(ServeError::Config("--ef-search must be at least 1".into()));
    }
    if args.max_in_flight == 0 || args.max_namespaces == 0 || args.max_batch_requests == 0 {
        return Err(ServeError::Config(
            "--max-in-flight, --max-namespaces and --max-batch-requests must be at least 1".into(),
        ));
    }
    if let Some(id) = &args.node_id {
        if id.is_empty() || !id.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b)) {
            return Err(ServeError::Config(format!(
                "--node-id {id:?}: use letters, digits, '.', '_' or '-' (it travels in a header)"
            )));
        }
    }
    if args.max_request_bytes < 1024 {
        return Err(ServeError::Config("--max-request-bytes must be at least 1024".into()));
    }
    if args.sweep_interval_ms == 0 || args.checkpoint_interval_seconds == 0 {
        return Err(ServeError::Config(
            "--sweep-interval-ms and --checkpoint-interval-seconds must be at least 1".into(),
        ));
    }
    Ok(())
}

/// The TLS settings, when `--tls-cert` is given: the files are read here so that a missing one
/// is refused at start, naming it.
fn tls_config(args: &ServeArgs) -> Result<Option<tonic::transport::ServerTlsConfig>, ServeError> {
    use tonic::transport::{Certificate, Identity, ServerTlsConfig};
    let read = |what, path: &std::path::PathBuf| {
        std::fs::read(path).map_err(|source| ServeError::TlsFile { what, path: path.clone(), source })
    };
    let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) else { return Ok(None) };
    let mut tls =
        ServerTlsConfig::new().identity(Identity::from_pem(read("--tls-cert", cert)?, read("--tls-key", key)?));
    if let Some(ca) = &args.tls_client_ca {
        tls = tls.client_ca_root(Certificate::from_pem(read("--tls-client-ca", ca)?));
    }
    Ok(Some(tls))
}

/// A model that is already loaded and warmed up, for several servers in one process (the
/// integration tests start dozens): loading it once saves hashing and reading the weights and
/// the warm-up for each.
#[derive(Clone)]
pub struct SharedModel {
    embedder: Embedder,
    batch_sizes: Histogram,
}

impl SharedModel {
    /// Loads the model that `args` names, with its batching settings, and waits until it is ready.
    pub async fn load(args: &ServeArgs) -> Result<Self, ServeError> {
        let (embedder, batch_sizes, ready) = spawn_model(args).await?;
        ready.await.map_err(|_| EmbedError::Stopped)??;
        Ok(Self { embedder, batch_sizes })
    }
}

type Ready = tokio::sync::oneshot::Receiver<Result<(), EmbedError>>;

/// Starts the model thread of `args`; the receiver says when it is ready.
async fn spawn_model(args: &ServeArgs) -> Result<(Embedder, Histogram, Ready), ServeError> {
    check_model_dir(&args.model.model_dir)?;
    let model_dir = args.model.model_dir.clone();
    let info = tokio::task::spawn_blocking(move || ModelInfo::read(&model_dir))
        .await
        .map_err(|e| ServeError::Startup(format!("reading the model failed unexpectedly: {e}")))??;
    tracing::info!(model = %info.fingerprint, dim = info.dim, "model found");
    let batching = BatchConfig {
        max_queue: args.max_queue,
        max_batch: args.max_batch,
        max_batch_tokens: args.max_batch_tokens,
        threads: args.model_threads,
        warmup_rounds: args.warmup_rounds,
    };
    let batch_sizes = crate::metrics::batch_size_histogram();
    let observed = batch_sizes.clone();
    let (embedder, ready) = Embedder::spawn(
        &args.model.model_dir,
        info,
        args.model.device,
        batching,
        Box::new(move |texts| observed.observe(texts as f64)),
    );
    Ok((embedder, batch_sizes, ready))
}

/// Serves on `listener` until `shutdown` resolves (then in-flight requests finish) or the
/// model fails to load (then the error is returned).
pub async fn run(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), ServeError> {
    serve(args, listener, shutdown, None).await
}

/// [`run`] with a model already loaded; the model settings of `args` are not used.
pub async fn run_with_model(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    model: SharedModel,
) -> Result<(), ServeError> {
    serve(args, listener, shutdown, Some(model)).await
}

async fn serve(
    args: ServeArgs,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
    model: Option<SharedModel>,
) -> Result<(), ServeError> {
    check_args(&args)?;
    if let Ok(addr) = listener.local_addr() {
        if args.tokens.is_empty() && !addr.ip().is_loopback() && !args.insecure_listen_any {
            return Err(ServeError::Exposed(addr));
        }
    }
    let tls = tls_config(&args)?;
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, data_dir = %args.data_dir.display(), tls = tls.is_some(), "listening");
    }
    // The model loads on its own thread while the index is restored here.
    let (embedder, batch_sizes, ready) = match model {
        Some(SharedModel { embedder, batch_sizes }) => {
            let (ready_tx, ready) = tokio::sync::oneshot::channel();
            let _ = ready_tx.send(Ok(()));
            (embedder, batch_sizes, ready)
        }
        None => spawn_model(&args).await?,
    };
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|source| ServeError::DataDir { path: args.data_dir.clone(), source })?;
    let defaults = Defaults {
        similarity_threshold: args.default_threshold,
        ttl_seconds: args.default_ttl_seconds,
        max_bytes: args.max_bytes,
        hit_guards: args.hit_guards,
        probe_ttl_seconds: args.probe_ttl_seconds,
    };
    let limits = args.limits();
    let data_dir = args.data_dir.clone();
    let exact_scan_limit = args.exact_scan_limit;
    let ef_search = args.ef_search;
    let cache = tokio::task::spawn_blocking(move || {
        let store = Store::open(&data_dir).map_err(CacheError::from)?;
        let index = IndexParams { flat_limit: exact_scan_limit, ef_search, ..IndexParams::default() };
        Cache::open(store, Arc::new(embedder), Settings { index, defaults, limits }, Arc::new(SystemClock))
    })
    .await
    .map_err(|e| ServeError::Startup(format!("opening the data dir failed unexpectedly: {e}")))??;
    let cache = Arc::new(cache);
    // Namespace settings from the config file, applied before the first request.
    for update in &args.namespaces {
        let name = update.name.clone();
        match cache.configure_namespace(update.clone()).await {
            Ok(_) => tracing::info!(namespace = %name, "namespace configured from the config file"),
            // Serving what is stored beats refusing to start; the settings apply next start.
            Err(CacheError::Storage(e)) if e.is_full() => {
                tracing::warn!(namespace = %name, error = %e, "namespace settings from the config file not applied")
            }
            Err(e) => return Err(ServeError::Config(format!("namespaces.{name}: {e}"))),
        }
    }
    let maintenance = Maintenance::start(
        cache.clone(),
        MaintenanceSettings {
            tick: Duration::from_millis(args.sweep_interval_ms),
            checkpoint_every: Duration::from_secs(args.checkpoint_interval_seconds),
            ..MaintenanceSettings::default()
        },
    );

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_not_serving::<SemanticCacheServer<SemanticCacheService>>().await;
    health.set_service_status("", ServingStatus::NotServing).await;
    // Both versions of reflection: grpcurl speaks v1, while grpc_cli, Python's
    // grpc_reflection.v1alpha, older grpcurl and many GUI clients speak only v1alpha.
    let reflection = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(crate::proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let (reflection_v1, reflection_v1alpha) = (reflection().build_v1()?, reflection().build_v1alpha()?);

    let failure: Arc<Mutex<Option<EmbedError>>> = Arc::default();
    let (failed_tx, failed_rx) = tokio::sync::oneshot::channel::<()>();
    {
        let failure = failure.clone();
        let health = health.clone();
        tokio::spawn(async move {
            match ready.await {
                Ok(Ok(())) => {
                    health.set_serving::<SemanticCacheServer<SemanticCacheService>>().await;
                    health.set_service_status("", ServingStatus::Serving).await;
                    tracing::info!("model loaded and warmed up; serving");
                }
                Ok(Err(e)) => {
                    tracing::error!(error = %e, "model failed to load");
                    *failure.lock() = Some(e);
                    let _ = failed_tx.send(());
                }
                Err(_) => {}
            }
        });
    }

    let metrics = Arc::new(Metrics::new(cache.clone(), batch_sizes));
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match args.metrics_listen {
        Some(addr) => {
            let listener =
                TcpListener::bind(addr).await.map_err(|source| ServeError::MetricsListen { addr, source })?;
            tracing::info!(addr = %listener.local_addr().unwrap_or(addr), "metrics at http://{addr}/metrics");
            let stopped = async {
                let _ = metrics_stopped.await;
            };
            Some(tokio::spawn(crate::metrics::serve(listener, metrics.clone(), stopped)))
        }
        None => None,
    };
    let summary = {
        let cache = cache.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(SUMMARY_EVERY);
            tick.tick().await;
            let mut last = (0, 0);
            loop {
                tick.tick().await;
                let now = cache.stats("").map(|s| (s.lookups, s.stores)).unwrap_or_default();
                if now != last {
                    log_summary(&cache, "traffic since start");
                    last = now;
                }
            }
        })
    };

    let stop = async move {
        tokio::select! {
            _ = shutdown => tracing::info!("shutting down: finishing in-flight requests"),
            Ok(()) = failed_rx => {}
        }
    };
    let auth = Auth::new(&args.tokens);
    match (auth.enabled(), tls.is_some()) {
        (true, _) => tracing::info!(tokens = args.tokens.len(), tls = tls.is_some(), "bearer tokens required"),
        (false, true) => tracing::info!(tls = true, "no tokens configured: every caller may read and write"),
        (false, false) => tracing::warn!("no tokens and no TLS: every caller may read and write"),
    }
    let ring = match args.ring.as_slice() {
        [] => None,
        servers => {
            let me = args.ring_self.unwrap_or(args.listen);
            Some(Arc::new(Ring::new(servers, me).map_err(ServeError::Config)?))
        }
    };
    let routing = Routing { node_id: args.node_id.clone(), require_header: args.require_routing_header, ring };
    if let Some(id) = &args.node_id {
        tracing::info!(node = %id, require_routing_header = args.require_routing_header, "cluster node");
    }
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .layer(NodeHeaderLayer::new(args.node_id.as_deref()))
        .layer(AdmissionLayer::new(args.max_in_flight, args.max_request_bytes))
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha)
        .add_service(
            SemanticCacheService::new(cache.clone(), metrics, routing, args.max_batch_requests)
                .into_server(auth, args.max_request_bytes),
        )
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await?;
    // Awaited, not just aborted: the task holds the cache, and the data dir is released only
    // when the last holder lets go.
    summary.abort();
    let _ = summary.await;
    let _ = metrics_stop.send(());
    if let Some(task) = metrics_task {
        if let Ok(Err(e)) = task.await {
            tracing::warn!(error = %e, "metrics endpoint stopped with an error");
        }
    }
    log_summary(&cache, "stopped; traffic since start");
    // Every request has finished: flush hit counts and recency, checkpoint changed graphs.
    if tokio::task::spawn_blocking(move || maintenance.stop()).await.is_err() {
        tracing::error!("the final flush and checkpoint failed unexpectedly; the next start catches up from RocksDB");
    }
    drop(cache);
    let failed = failure.lock().take();
    match failed {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}
