//! The server's settings: each flag of `semcache serve` with its environment variable and
//! default, and the model settings that `semcache reembed` shares. (How a client command reaches
//! a server is [`crate::client::ClientArgs`]; each client command's own flags live beside it in
//! the binary's `cli` module.)
//!
//! A setting of `semcache serve` comes from, in order: its flag, its environment variable, the
//! `--config` file, its default; [`file`] applies the file to what clap parsed.

mod file;

pub use file::{resolve, serve_args, ConfigError, Resolved};

use crate::cache::{Limits, NamespaceUpdate};
use crate::grpc::auth::TokenSpec;
use clap::{Args, ValueEnum};
use std::{net::SocketAddr, path::PathBuf};

pub use crate::embed::DeviceKind;

/// The CLI's spelling of the model's device, kept here so that `embed` knows nothing of
/// flags (TEI derives its CLI enums behind a feature for the same reason).
impl ValueEnum for DeviceKind {
    fn value_variants<'a>() -> &'a [Self] {
        &[DeviceKind::Cpu, DeviceKind::Cuda]
    }

    fn to_possible_value(&self) -> Option<clap::builder::PossibleValue> {
        use clap::builder::PossibleValue;
        Some(match self {
            DeviceKind::Cpu => PossibleValue::new("cpu"),
            DeviceKind::Cuda => PossibleValue::new("cuda").help("An NVIDIA GPU; needs a build with `--features cuda`"),
        })
    }
}

/// Which sentence model, and where it runs.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Directory of a BERT-family sentence-transformers model
    /// (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "SEMCACHE_MODEL_DIR", default_value = "models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,

    /// Device the sentence model runs on.
    #[arg(long, env = "SEMCACHE_DEVICE", value_enum, default_value = "cpu")]
    pub device: DeviceKind,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Text lines for people.
    #[default]
    Human,
    /// One JSON object per line (timestamp, level, fields, target).
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// TOML file of settings: `[server]` takes any flag below by its long name (`max_queue` or
    /// `max-queue`), `[namespaces.NAME]` the settings of a namespace, applied at start. Flags
    /// and environment variables override the file.
    #[arg(long, env = "SEMCACHE_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Print the effective settings as TOML, each with where it came from, and exit.
    #[arg(long)]
    pub print_config: bool,

    /// Log lines as text (`human`) or as one JSON object each (`json`); `SEMCACHE_LOG` sets the
    /// level.
    #[arg(long, env = "SEMCACHE_LOG_FORMAT", value_enum, default_value = "human")]
    pub log_format: LogFormat,

    /// Address the gRPC server listens on. Without tokens in the config file only a loopback
    /// address is accepted, unless --insecure-listen-any.
    #[arg(long, env = "SEMCACHE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Listen on a non-loopback address although no tokens are configured, so that anyone who
    /// can reach the port can read and write every namespace.
    #[arg(long, env = "SEMCACHE_INSECURE_LISTEN_ANY")]
    pub insecure_listen_any: bool,

    /// PEM certificate chain for TLS (with --tls-key); plaintext when unset.
    #[arg(long, env = "SEMCACHE_TLS_CERT", value_name = "PEM", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,

    /// PEM private key of --tls-cert.
    #[arg(long, env = "SEMCACHE_TLS_KEY", value_name = "PEM", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,

    /// PEM CA certificates that client certificates must chain to (mutual TLS: a client
    /// without such a certificate cannot connect). Needs --tls-cert.
    #[arg(long, env = "SEMCACHE_TLS_CLIENT_CA", value_name = "PEM", requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,

    /// Address of the Prometheus endpoint (HTTP `GET /metrics`); off when unset.
    #[arg(long, env = "SEMCACHE_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,

    /// Directory of the RocksDB data set (created if missing).
    #[arg(long, env = "SEMCACHE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    #[command(flatten)]
    pub model: ModelArgs,

    /// Embedding requests allowed to wait for the model; beyond this, requests are refused
    /// with RESOURCE_EXHAUSTED instead of queueing without bound.
    #[arg(long, env = "SEMCACHE_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,

    /// Most texts the model embeds in one batch. Throughput on 2 cores levels off at 32
    /// short queries; larger batches add latency for little more.
    #[arg(long, env = "SEMCACHE_MAX_BATCH", default_value_t = 32)]
    pub max_batch: usize,

    /// Most padded tokens (texts x longest text) in one batch, so that a burst of long texts
    /// is split into several passes instead of one that everything waits behind.
    #[arg(long, env = "SEMCACHE_MAX_BATCH_TOKENS", default_value_t = 2048)]
    pub max_batch_tokens: usize,

    /// Threads that run the model; a batch is cut into one shard per thread (0 = one per core).
    #[arg(long, env = "SEMCACHE_MODEL_THREADS", default_value_t = 0)]
    pub model_threads: usize,

    /// Warm-up forward passes before health reports SERVING (the first passes allocate).
    #[arg(long, env = "SEMCACHE_WARMUP_ROUNDS", default_value_t = 3)]
    pub warmup_rounds: usize,

    /// Similarity threshold given to namespaces created without one.
    #[arg(long, env = "SEMCACHE_DEFAULT_THRESHOLD", default_value_t = crate::cache::DEFAULT_THRESHOLD)]
    pub default_threshold: f32,

    /// Whether namespaces that did not choose have hit guards on: the nearest entry is refused
    /// when it differs from the query in a number, a negation or one swapped word.
    #[arg(long, env = "SEMCACHE_HIT_GUARDS", default_value_t = true, action = clap::ArgAction::Set)]
    pub hit_guards: bool,

    /// Entry lifetime in seconds given to namespaces created without one (0 = forever).
    #[arg(long, env = "SEMCACHE_DEFAULT_TTL_SECONDS", default_value_t = 0)]
    pub default_ttl_seconds: u64,

    /// How long a verified-mode probe token (a Lookup's EXPLORE) may be sent back with a Store,
    /// in seconds: longer than the slowest LLM call the gateway waits for.
    #[arg(long, env = "SEMCACHE_PROBE_TTL_SECONDS", default_value_t = crate::cache::DEFAULT_PROBE_TTL_SECONDS,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub probe_ttl_seconds: u64,

    /// Largest query accepted, in bytes.
    #[arg(long, env = "SEMCACHE_MAX_QUERY_BYTES", default_value_t = Limits::default().max_query_bytes)]
    pub max_query_bytes: usize,

    /// Largest response accepted, in bytes.
    #[arg(long, env = "SEMCACHE_MAX_RESPONSE_BYTES", default_value_t = Limits::default().max_response_bytes)]
    pub max_response_bytes: usize,

    /// Largest request message accepted, in bytes, refused (RESOURCE_EXHAUSTED) from its
    /// length prefix before it is read.
    #[arg(long, env = "SEMCACHE_MAX_REQUEST_BYTES", default_value_t = 4 * 1024 * 1024)]
    pub max_request_bytes: usize,

    /// Most scope entries in a request.
    #[arg(long, env = "SEMCACHE_MAX_SCOPE_ENTRIES", default_value_t = Limits::default().max_scope_entries)]
    pub max_scope_entries: usize,

    /// Most metadata entries in a Store.
    #[arg(long, env = "SEMCACHE_MAX_METADATA_ENTRIES", default_value_t = Limits::default().max_metadata_entries)]
    pub max_metadata_entries: usize,

    /// Largest scope or metadata value, in bytes (a scope value may be a whole system prompt).
    #[arg(long, env = "SEMCACHE_MAX_MAP_VALUE_BYTES", default_value_t = Limits::default().max_map_value_bytes)]
    pub max_map_value_bytes: usize,

    /// Most namespaces; a Store or ConfigureNamespace that would create one more is refused.
    #[arg(long, env = "SEMCACHE_MAX_NAMESPACES", default_value_t = Limits::default().max_namespaces)]
    pub max_namespaces: usize,

    /// Cache API calls in progress at once, across all connections; beyond this, calls are
    /// refused at once with RESOURCE_EXHAUSTED (health checks are not counted).
    #[arg(long, env = "SEMCACHE_MAX_IN_FLIGHT", default_value_t = 1024)]
    pub max_in_flight: usize,

    /// Most elements of one BatchLookup or BatchStore; a larger batch is refused with
    /// INVALID_ARGUMENT.
    #[arg(long, env = "SEMCACHE_MAX_BATCH_REQUESTS", default_value_t = 256)]
    pub max_batch_requests: usize,

    /// This node's name in a cluster (e.g. `n1`): returned in Stats and in an `x-semcache-node`
    /// response header, and what an `x-semcache-node` request header must name.
    #[arg(long, env = "SEMCACHE_NODE_ID")]
    pub node_id: Option<String>,

    /// Refuse calls about a namespace that carry neither the routing header
    /// `x-semcache-namespace` nor `x-semcache-node`, for a node that serves only behind the proxy.
    #[arg(long, env = "SEMCACHE_REQUIRE_ROUTING_HEADER")]
    pub require_routing_header: bool,

    /// The proxy's ring: every node's `ip:port` as nginx's upstream lists them (comma-separated).
    /// A namespace the ring gives another node is refused with FAILED_PRECONDITION, so a caller
    /// that bypasses the proxy, or a proxy with another server list, cannot leave stray copies.
    #[arg(long, env = "SEMCACHE_RING", value_delimiter = ',', value_name = "IP:PORT")]
    pub ring: Vec<std::net::SocketAddr>,

    /// This node's entry in --ring (default: --listen).
    #[arg(long, env = "SEMCACHE_RING_SELF", value_name = "IP:PORT")]
    pub ring_self: Option<std::net::SocketAddr>,

    /// Cache responses that the gateway marks `semcache.incomplete` (truncated or error) in
    /// their metadata; refused with FAILED_PRECONDITION otherwise.
    #[arg(long, env = "SEMCACHE_CACHE_INCOMPLETE")]
    pub cache_incomplete: bool,

    /// Bytes the whole data set may hold (entries as stored: texts, metadata, vector); beyond
    /// it the least recently used entries of any namespace are evicted. 0 = unbounded.
    #[arg(long, env = "SEMCACHE_MAX_BYTES", default_value_t = 0)]
    pub max_bytes: u64,

    /// Seconds between graph checkpoints (changed graphs only; also written at shutdown).
    /// Shorter means faster restarts after a crash, at the cost of background disk writes.
    #[arg(long, env = "SEMCACHE_CHECKPOINT_INTERVAL_SECONDS", default_value_t = 300)]
    pub checkpoint_interval_seconds: u64,

    /// Partitions (namespace + scope) up to this many entries are searched by an exact scan;
    /// larger ones get an HNSW graph, built in the background and checkpointed.
    #[arg(long, env = "SEMCACHE_EXACT_SCAN_LIMIT", default_value_t = 4096)]
    pub exact_scan_limit: usize,

    /// Breadth of an HNSW graph search (ef): higher finds the true nearest entry more often
    /// and costs proportionally more time (`cargo bench --bench index` measures both).
    #[arg(long, env = "SEMCACHE_EF_SEARCH", default_value_t = 128)]
    pub ef_search: usize,

    /// Milliseconds between expiry sweeps and capacity checks. Expired entries are never
    /// served even before a sweep purges them.
    #[arg(long, env = "SEMCACHE_SWEEP_INTERVAL_MS", default_value_t = 1000)]
    pub sweep_interval_ms: u64,

    /// Namespace settings from the config file's `[namespaces.NAME]` tables, sorted by name;
    /// applied when the server starts (namespaces missing are created).
    #[arg(skip)]
    pub namespaces: Vec<NamespaceUpdate>,

    /// Bearer tokens from the config file's `[tokens.NAME]` tables; none = no authentication.
    #[arg(skip)]
    pub tokens: Vec<TokenSpec>,
}

impl ServeArgs {
    /// What requests may carry, from the limit flags.
    pub fn limits(&self) -> Limits {
        Limits {
            max_query_bytes: self.max_query_bytes,
            max_response_bytes: self.max_response_bytes,
            max_scope_entries: self.max_scope_entries,
            max_metadata_entries: self.max_metadata_entries,
            max_map_value_bytes: self.max_map_value_bytes,
            max_namespaces: self.max_namespaces,
            cache_incomplete: self.cache_incomplete,
        }
    }
}

impl ServeArgs {
    /// The settings with every default, for tests and embedding in other programs.
    pub fn with_dirs(data_dir: impl Into<PathBuf>, model_dir: impl Into<PathBuf>) -> Self {
        #[derive(clap::Parser)]
        struct Wrapper {
            #[command(flatten)]
            args: ServeArgs,
        }
        let mut args = <Wrapper as clap::Parser>::parse_from(["semcache"]).args;
        args.data_dir = data_dir.into();
        args.model.model_dir = model_dir.into();
        args
    }
}
