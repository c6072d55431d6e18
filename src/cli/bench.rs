//! `semcache bench`: load against a running server, to size a deployment.

use super::values::ratio;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use semcache::client::{self, ClientArgs};
use semcache::loadgen::{self, LoadConfig};

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

    /// Lookups per call: 1 sends Lookup; more send BatchLookups of that many.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,

    /// Keep the namespace and its entries after the run.
    #[arg(long)]
    pub keep: bool,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let config = LoadConfig {
        clients: args.clients.max(1),
        requests: args.requests,
        hit_ratio: args.hit_ratio,
        entries: args.entries,
        namespace: args.namespace.clone(),
        batch: args.batch.max(1),
    };
    let mut client = client::connect(&args.server).await?;
    println!(
        "{} clients, {} lookups ({:.0}% repeats of {} stored queries) against {}, namespace {:?}",
        config.clients,
        config.requests,
        config.hit_ratio * 100.0,
        config.entries,
        args.server.addr,
        config.namespace
    );
    loadgen::seed(&mut client, &config).await?;
    let bar = ProgressBar::new(config.requests).with_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} lookups, {per_sec}, eta {eta}")?.progress_chars("=> "),
    );
    // New questions start past the stored ones and, very likely, past earlier runs' questions.
    let fresh = 6_400 * (1 + (semcache::clock::now_unix_ms() as u64 / 1_000) % 100_000);
    let report = loadgen::run(&args.server, &config, fresh, &|| bar.inc(1)).await?;
    bar.finish_and_clear();
    println!("{}", loadgen::render(&report));
    if !args.keep {
        loadgen::drop_namespace(&mut client, &config.namespace).await?;
    }
    Ok(())
}
