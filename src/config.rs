//! Command-line and environment settings of `semcache serve`.

use clap::{Args, ValueEnum};
use std::{net::SocketAddr, path::PathBuf};

/// Where the sentence model runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeviceKind {
    Cpu,
    /// An NVIDIA GPU; needs a build with `--features cuda`.
    Cuda,
}

#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Address the gRPC server listens on.
    #[arg(long, env = "SEMCACHE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: SocketAddr,

    /// Directory of the RocksDB data set (created if missing).
    #[arg(long, env = "SEMCACHE_DATA_DIR", default_value = "data")]
    pub data_dir: PathBuf,

    /// Directory of a BERT-family sentence-transformers model
    /// (config.json, tokenizer.json, model.safetensors).
    #[arg(long, env = "SEMCACHE_MODEL_DIR", default_value = "models/all-MiniLM-L6-v2")]
    pub model_dir: PathBuf,

    /// Device the sentence model runs on.
    #[arg(long, env = "SEMCACHE_DEVICE", value_enum, default_value = "cpu")]
    pub device: DeviceKind,

    /// Embedding requests allowed to wait for the model; beyond this, requests are refused
    /// with RESOURCE_EXHAUSTED instead of queueing without bound.
    #[arg(long, env = "SEMCACHE_MAX_QUEUE", default_value_t = 1024)]
    pub max_queue: usize,

    /// Most texts the model embeds in one batch.
    #[arg(long, env = "SEMCACHE_MAX_BATCH", default_value_t = 32)]
    pub max_batch: usize,

    /// Warm-up forward passes before health reports SERVING (the first passes allocate).
    #[arg(long, env = "SEMCACHE_WARMUP_ROUNDS", default_value_t = 3)]
    pub warmup_rounds: usize,

    /// Similarity threshold given to namespaces created without one.
    #[arg(long, env = "SEMCACHE_DEFAULT_THRESHOLD", default_value_t = crate::cache::DEFAULT_THRESHOLD)]
    pub default_threshold: f32,

    /// Entry lifetime in seconds given to namespaces created without one (0 = forever).
    #[arg(long, env = "SEMCACHE_DEFAULT_TTL_SECONDS", default_value_t = 0)]
    pub default_ttl_seconds: u64,

    /// Largest query accepted, in bytes.
    #[arg(long, env = "SEMCACHE_MAX_QUERY_BYTES", default_value_t = 32 * 1024)]
    pub max_query_bytes: usize,

    /// Largest response accepted, in bytes.
    #[arg(long, env = "SEMCACHE_MAX_RESPONSE_BYTES", default_value_t = 1024 * 1024)]
    pub max_response_bytes: usize,
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
        args.model_dir = model_dir.into();
        args
    }
}
