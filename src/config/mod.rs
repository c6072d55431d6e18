//! Every setting of the CLI: each flag with its environment variable and default.
//!
//! A setting of `semcache serve` comes from, in order: its flag, its environment variable, the
//! `--config` file, its default; [`file`] applies the file to what clap parsed.

mod file;

pub use file::{resolve, serve_args, ConfigError, Resolved};

use crate::cache::NamespaceUpdate;
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

    /// Address the gRPC server listens on.
    #[arg(long, env = "SEMCACHE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

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
    #[arg(long, env = "SEMCACHE_MAX_QUERY_BYTES", default_value_t = 32 * 1024)]
    pub max_query_bytes: usize,

    /// Largest response accepted, in bytes.
    #[arg(long, env = "SEMCACHE_MAX_RESPONSE_BYTES", default_value_t = 1024 * 1024)]
    pub max_response_bytes: usize,

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
    /// The server, as a URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,

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
    /// The server, as a URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,

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

    /// The server, as a URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,

    /// Namespace of lines that name none.
    #[arg(long, default_value = "")]
    pub namespace: String,

    /// Stores in flight at once; enough to fill the server's batches.
    #[arg(long, default_value_t = 64)]
    pub clients: usize,
}

/// Settings of `semcache export`.
#[derive(Debug, Clone, Args)]
pub struct ExportArgs {
    /// The server, as a URL.
    #[arg(long, default_value = "http://127.0.0.1:50051")]
    pub addr: String,

    /// Namespace to export (all when unset).
    #[arg(long, default_value = "")]
    pub namespace: String,

    /// Where to write the JSON lines ("-" = stdout).
    #[arg(long, short, default_value = "-")]
    pub output: PathBuf,
}
