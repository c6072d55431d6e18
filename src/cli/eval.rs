//! `semcache eval`: hit quality on a labelled pair file against a running server. The pair set
//! and how it is run ([`PairsArgs`], [`evaluate`]) are shared with `semcache calibrate`.

use super::values::threshold;
use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use semcache::client::ClientArgs;
use semcache::eval;
use std::path::PathBuf;

/// The pair set and how it is run, shared by `semcache eval` and `semcache calibrate`.
#[derive(Debug, Clone, Args)]
pub struct PairsArgs {
    #[command(flatten)]
    pub server: ClientArgs,

    /// Labelled pairs: QQP JSON, MeanCache CSV, GPTCache mock JSON or MeanCache contextual
    /// JSON (see the README); each `a` is stored, each `b` looked up.
    #[arg(long)]
    pub pairs: Option<PathBuf>,

    /// The file's format, when its name and first record do not tell.
    #[arg(long, value_enum)]
    pub format: Option<eval::Format>,

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

    #[command(flatten)]
    pub stream: StreamArgs,
}

/// `semcache eval --stream`: an intent stream replayed as a gateway would, static thresholds
/// against verified mode.
#[derive(Debug, Clone, Args)]
pub struct StreamArgs {
    /// An intent-labelled stream, JSON lines of {"text", "intent"} (intent "oos" = an answer of
    /// its own): each query is looked up, and stored on a miss with its intent as the answer,
    /// following EXPLORE as a gateway does. Instead of --pairs.
    #[arg(long, conflicts_with_all = ["pairs", "lookups", "threshold", "follow_up_context"])]
    pub stream: Option<PathBuf>,

    /// Only the lines whose "split" is this (e.g. test for Banking77).
    #[arg(long, requires = "stream")]
    pub split: Option<String>,

    /// Seeded random orders to replay (seeds --seed, --seed + 1, ...).
    #[arg(long, default_value_t = 3, requires = "stream")]
    pub orders: u64,

    /// Static thresholds to replay for comparison.
    #[arg(long, value_delimiter = ',', default_values_t = [0.75, 0.8, 0.825, 0.85, 0.86, 0.875, 0.9, 0.925, 0.95], value_parser = threshold)]
    pub thresholds: Vec<f32>,

    /// Verified mode's error bounds to replay.
    #[arg(long, value_delimiter = ',', default_values_t = [0.01, 0.02])]
    pub error_bounds: Vec<f32>,
}

pub async fn run(args: EvalArgs) -> anyhow::Result<()> {
    if let Some(stream) = &args.stream.stream {
        return run_stream(&args, stream).await;
    }
    let (name, result) = evaluate(&args.pairs).await?;
    let threshold = args.threshold.unwrap_or(result.default_threshold).max(args.pairs.from);
    println!("{}", eval::render(&name, &result, args.pairs.from, threshold));
    if let Some(path) = &args.plot {
        let (off, on) = eval::curves(&result, args.pairs.from);
        eval::plot::write(path, &name, &off, &on)?;
        println!("curve written to {}", path.display());
    }
    if let Some(path) = &args.lookups {
        let mut out = String::new();
        for l in &result.lookups {
            out.push_str(&serde_json::to_string(l)?);
            out.push('\n');
        }
        std::fs::write(path, out).with_context(|| format!("cannot write {}", path.display()))?;
        println!("lookups written to {}", path.display());
    }
    Ok(())
}

/// Progress of an evaluation's stores and lookups.
struct EvalProgress {
    stores: ProgressBar,
    lookups: ProgressBar,
}

impl eval::Progress for EvalProgress {
    fn stored(&self, total: u64) {
        self.stores.set_position(total);
    }
    fn looked_up(&self, total: u64) {
        if total == 1 {
            self.stores.finish_and_clear();
        }
        self.lookups.set_position(total);
    }
}

/// Loads the pairs and runs them through the server in a scratch namespace; returns the file's
/// name, for the report, and what the lookups saw.
pub async fn evaluate(args: &PairsArgs) -> anyhow::Result<(String, eval::RunResult)> {
    let Some(path) = &args.pairs else {
        anyhow::bail!("say what to evaluate on: --pairs FILE (labelled pairs) or, for semcache eval, --stream FILE (an intent stream)");
    };
    let mut pairs = eval::read_pairs(path, args.format)?;
    if args.limit > 0 && args.limit < pairs.len() {
        pairs = eval::sample(pairs, args.limit, args.seed);
    }
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
    let scratch = args
        .scratch_namespace
        .clone()
        .unwrap_or_else(|| format!("semcache-eval-{}-{}", std::process::id(), semcache::clock::now_unix_ms()));
    let config = eval::RunConfig {
        namespace: scratch,
        clients: args.clients.max(1),
        from: args.from,
        follow_up_context: args.follow_up_context,
        keep: args.keep,
    };
    let style = |what: &str| {
        ProgressStyle::with_template(&format!("{what:>9} [{{bar:40}}] {{pos}}/{{len}}, {{per_sec}}, eta {{eta}}"))
            .map(|s| s.progress_chars("=> "))
    };
    let lookups = pairs.len() as u64;
    let distinct = pairs.iter().map(|p| semcache::text::normalize(&p.a)).collect::<std::collections::HashSet<_>>();
    let progress = EvalProgress {
        stores: ProgressBar::new(distinct.len() as u64).with_style(style("storing")?),
        lookups: ProgressBar::new(lookups).with_style(style("looking up")?),
    };
    let started = std::time::Instant::now();
    let result = eval::run(&args.server, pairs, &config, &progress).await?;
    progress.lookups.finish_and_clear();
    println!(
        "{name}: stored {} distinct queries and looked up {lookups} in {:.1} s{}",
        result.stored,
        started.elapsed().as_secs_f64(),
        if args.follow_up_context { ", each with its pair's first query as context" } else { "" }
    );
    Ok((name, result))
}

/// Replays the stream under every policy and seed; prints the table, writes the curves.
async fn run_stream(args: &EvalArgs, path: &std::path::Path) -> anyhow::Result<()> {
    use eval::stream::{self, Policy};
    let pairs = &args.pairs;
    let s = &args.stream;
    let mut utterances = stream::read_stream(path, s.split.as_deref())?;
    if pairs.limit > 0 {
        // A seeded sample, in file order (the replays shuffle it).
        utterances = eval::sample(utterances, pairs.limit, pairs.seed);
    }
    for d in &s.error_bounds {
        anyhow::ensure!(*d > 0.0 && *d < 0.5, "--error-bounds: {d} is not in (0, 0.5)");
    }
    let policies: Vec<Policy> = s
        .thresholds
        .iter()
        .map(|t| Policy::Static(*t))
        .chain(s.error_bounds.iter().map(|d| Policy::Verified(*d)))
        .collect();
    let seeds: Vec<u64> = (0..s.orders.max(1)).map(|i| pairs.seed + i).collect();
    let config = stream::StreamConfig {
        policies: policies.clone(),
        seeds: seeds.clone(),
        namespace: pairs
            .scratch_namespace
            .clone()
            .unwrap_or_else(|| format!("semcache-stream-{}-{}", std::process::id(), semcache::clock::now_unix_ms())),
        parallel: pairs.clients.max(1),
        keep: pairs.keep,
    };
    let bar = ProgressBar::new((policies.len() * seeds.len()) as u64).with_style(
        ProgressStyle::with_template("replaying [{bar:40}] {pos}/{len} replays, eta {eta}")?.progress_chars("=> "),
    );
    let started = std::time::Instant::now();
    let replays = stream::run(&pairs.server, &utterances, &config, &|_| bar.inc(1)).await?;
    bar.finish_and_clear();
    let name = path.file_name().map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into());
    let name = match &s.split {
        Some(split) => format!("{name} ({split})"),
        None => name,
    };
    println!("{}", stream::render(&name, utterances.len(), seeds.len(), &replays));
    println!("{} replays in {:.1} s", replays.len(), started.elapsed().as_secs_f64());
    if let Some(plot) = &args.plot {
        stream::plot(plot, &name, &replays)?;
        println!("cumulative curves written to {}", plot.display());
    }
    Ok(())
}
