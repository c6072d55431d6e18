//! Every setting of the CLI: each flag with its environment variable and default.
//!
//! A setting of `semcache serve` comes from, in order: its flag, its environment variable, the
//! `--config` file, its default; [`file`] applies the file to what clap parsed.

mod file;

pub use file::{resolve, serve_args, ConfigError, Resolved};

use crate::cache::{Limits, NamespaceUpdate};
use crate::client::ClientArgs;
use crate::grpc::auth::TokenSpec;
use clap::{Args, ValueEnum};
use std::{net::SocketAddr, path::PathBuf};

/// Where the sentence model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    /// An NVIDIA GPU; needs a build with `--features cuda`.
    Cuda,
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
    #[arg(long, env = "SEMCACHE_EF_SEARCH", default_value_t = 64)]
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

/// Settings of `semcache reembed`.
#[derive(Debug, Clone, Args)]
pub struct ReembedArgs {
    /// Data dir to re-embed; the server using it must be stopped.
    #[arg(long, env = "SEMCACHE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    // The model to re-embed with: the one the server will run.
    #[command(flatten)]
    pub model: ModelArgs,

    /// A namespace to re-embed (repeat for several). Default: every namespace whose vectors
    /// came from another model.
    #[arg(long = "namespace")]
    pub namespaces: Vec<String>,

    /// Queries per forward pass.
    #[arg(long, default_value_t = 32)]
    pub batch_size: usize,
}

/// `semcache bench`: load against a running server.
#[derive(Debug, Clone, Args)]
pub struct BenchArgs {
    #[command(flatten)]
    pub server: ClientArgs,

    /// Concurrent clients, each on its own connection with one lookup in flight.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,

    /// Lookups to send in all.
    #[arg(long, default_value_t = 2000)]
    pub requests: u64,

    /// Share of lookups that repeat a stored query word for word (hits); the rest are new
    /// questions (misses, each a forward pass of the model).
    #[arg(long, default_value_t = 0.5, value_parser = ratio)]
    pub hit_ratio: f64,

    /// Queries stored before the run for the repeats to hit.
    #[arg(long, default_value_t = 100)]
    pub entries: u64,

    /// Namespace the run uses; dropped at the end unless --keep.
    #[arg(long, default_value = "semcache-bench")]
    pub namespace: String,

    /// Keep the namespace and its entries after the run.
    #[arg(long)]
    pub keep: bool,
}

fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err(format!("{s:?} is not a ratio between 0 and 1")),
    }
}

/// The pair set and how it is run, shared by `semcache eval` and `semcache calibrate`.
#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    #[command(flatten)]
    pub server: ClientArgs,

    /// Labelled pairs: QQP JSON, MeanCache CSV, GPTCache mock JSON or MeanCache contextual
    /// JSON (see the README); each `a` is stored, each `b` looked up.
    #[arg(long)]
    pub pairs: PathBuf,

    /// The file's format, when its name and first record do not tell.
    #[arg(long, value_enum)]
    pub format: Option<crate::eval::Format>,

    /// Use a random sample of this many pairs (0 = all).
    #[arg(long, default_value_t = 0)]
    pub limit: usize,

    /// Seed of the sample.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,

    /// The lowest threshold of the curve; every lookup is made with it.
    #[arg(long, default_value_t = 0.5, value_parser = threshold)]
    pub from: f32,

    /// Requests in flight at once.
    #[arg(long, default_value_t = 16)]
    pub clients: usize,

    /// Look up each `b` with its `a` as conversation context, as a gateway that tracks
    /// conversations would send a follow-up.
    #[arg(long)]
    pub follow_up_context: bool,

    /// Scratch namespace for the run (must not exist); a unique name by default.
    #[arg(long)]
    pub scratch_namespace: Option<String>,

    /// Keep the scratch namespace afterwards.
    #[arg(long)]
    pub keep: bool,
}

/// Settings of `semcache eval`.
#[derive(Debug, Clone, Args)]
pub struct EvalArgs {
    #[command(flatten)]
    pub pairs: PairsArgs,

    /// Report at this threshold instead of the server's default for new namespaces.
    #[arg(long, value_parser = threshold)]
    pub threshold: Option<f32>,

    /// Write the precision/recall/false-hit curve as a plot (.svg or .png).
    #[arg(long)]
    pub plot: Option<PathBuf>,

    /// Write every lookup (pair, nearest entry, similarity, served entry, veto) as JSON lines.
    #[arg(long)]
    pub lookups: Option<PathBuf>,
}

/// Settings of `semcache calibrate`.
#[derive(Debug, Clone, Args)]
pub struct CalibrateArgs {
    #[command(flatten)]
    pub pairs: PairsArgs,

    /// The namespace to calibrate; its guard setting is used, its entries are not touched.
    #[arg(long)]
    pub namespace: String,

    /// The precision the threshold must reach on the pairs.
    #[arg(long, value_parser = ratio)]
    pub target_precision: f64,

    /// Set the chosen threshold on the namespace.
    #[arg(long)]
    pub apply: bool,
}

fn threshold(s: &str) -> Result<f32, String> {
    match s.parse::<f32>() {
        Ok(t) if t > 0.0 && t <= 1.0 => Ok(t),
        _ => Err(format!("{s:?} is not a similarity threshold in (0, 1]")),
    }
}

/// Settings of `semcache import`.
#[derive(Debug, Clone, Args)]
pub struct ImportArgs {
    /// JSON lines to import, one entry per line ("-" reads stdin): query, response and
    /// optionally namespace, scope, metadata, ttl_seconds, usage, context, context_key.
    pub file: PathBuf,

    #[command(flatten)]
    pub server: ClientArgs,

    /// Namespace of lines that name none.
    #[arg(long, default_value = "")]
    pub namespace: String,

    /// Stores in flight at once; enough to fill the server's batches.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
}

/// Settings of `semcache token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Name of the token in the config file, logs and refusals.
    #[arg(long, default_value = "gateway")]
    pub name: String,

    /// A namespace the token may read (repeat for several; `*` = all). Without --read and
    /// --write the token may read and write everything.
    #[arg(long, value_name = "NAMESPACE")]
    pub read: Vec<String>,

    /// A namespace the token may write (repeat for several; `*` = all).
    #[arg(long, value_name = "NAMESPACE")]
    pub write: Vec<String>,

    /// Requests per second allowed to the token (none when unset).
    #[arg(long)]
    pub requests_per_second: Option<std::num::NonZeroU32>,

    /// Write the token to this new file (mode 0600) instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Print only the digest of the token read from stdin, for a token made elsewhere.
    #[arg(long, conflicts_with_all = ["read", "write", "requests_per_second", "token_file"])]
    pub hash: bool,
}

/// Settings of `semcache export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub server: ClientArgs,

    /// Namespace to export (all when unset).
    #[arg(long, default_value = "")]
    pub namespace: String,

    /// Where to write the JSON lines ("-" = stdout).
    #[arg(long, short, default_value = "-")]
    pub output: PathBuf,
}
