use anyhow::Context;
use clap::{Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use semcache::cache::reembed;
use semcache::config::{BenchArgs, ReembedArgs, ServeArgs};
use semcache::embed::{check_model_dir, device, ModelInfo, SentenceModel};
use semcache::load::{self, LoadConfig};
use semcache::store::Store;
use tracing_subscriber::EnvFilter;

/// A semantic cache for LLM responses, served over gRPC.
#[derive(Parser)]
#[command(name = "semcache", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the SemanticCache gRPC API (with health and reflection).
    Serve(ServeArgs),
    /// Re-embed stored queries with the given model, so that namespaces made with another
    /// model serve again. Run it with the server stopped.
    Reembed(ReembedArgs),
    /// Drive a running server with concurrent clients and report throughput and latency
    /// percentiles, to size a deployment.
    Bench(BenchArgs),
}

fn main() -> anyhow::Result<()> {
    semcache::embed::configure_cpu_threads();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_env("SEMCACHE_LOG").unwrap_or_else(|_| EnvFilter::new("info")))
        .init();
    match Cli::parse().command {
        Command::Serve(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            tracing::info!(addr = %listener.local_addr()?, data_dir = %args.data_dir.display(), "listening");
            semcache::server::run(args, listener, shutdown_signal()).await?;
        }
        Command::Reembed(args) => tokio::task::spawn_blocking(move || run_reembed(args)).await??,
        Command::Bench(args) => run_bench(args).await?,
    }
    Ok(())
}

fn run_reembed(args: ReembedArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.data_dir.join("CURRENT").is_file(),
        "{} is not a semcache data dir (pass the server's --data-dir)",
        args.data_dir.display()
    );
    check_model_dir(&args.model.model_dir)?;
    let info = ModelInfo::read(&args.model.model_dir)?;
    let model = SentenceModel::load(&args.model.model_dir, info, device(args.model.device)?)?;
    let store = Store::open(&args.data_dir)
        .with_context(|| format!("cannot open {} (is a server still using it?)", args.data_dir.display()))?;
    let plan = reembed::plan(&store, &model, &args.namespaces)?;
    if plan.is_empty() {
        println!("nothing to re-embed: every namespace was embedded with {}", model.info().fingerprint);
        return Ok(());
    }
    let style = ProgressStyle::with_template("{msg:>20} [{bar:40}] {pos}/{len} queries, {per_sec}, eta {eta}")?
        .progress_chars("=> ");
    for (namespace, entries) in plan {
        let bar = ProgressBar::new(entries).with_style(style.clone()).with_message(namespace.clone());
        let done = reembed::run(&store, &model, &namespace, args.batch_size, |n| bar.set_position(n))?;
        bar.finish();
        println!("{namespace}: {done} entries re-embedded with {}", model.info().fingerprint);
    }
    Ok(())
}

async fn run_bench(args: BenchArgs) -> anyhow::Result<()> {
    let config = LoadConfig {
        clients: args.clients.max(1),
        requests: args.requests,
        hit_ratio: args.hit_ratio,
        entries: args.entries,
        namespace: args.namespace.clone(),
    };
    let mut client = load::connect(&args.addr).await?;
    println!(
        "{} clients, {} lookups ({:.0}% repeats of {} stored queries) against {}, namespace {:?}",
        config.clients,
        config.requests,
        config.hit_ratio * 100.0,
        config.entries,
        args.addr,
        config.namespace
    );
    load::seed(&mut client, &config).await?;
    let bar = ProgressBar::new(config.requests).with_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} lookups, {per_sec}, eta {eta}")?.progress_chars("=> "),
    );
    let progress_bar = bar.clone();
    // New questions start past the stored ones and, very likely, past earlier runs' questions.
    let fresh = 6_400 * (1 + (semcache::cache::now_unix_ms() as u64 / 1_000) % 100_000);
    let report = load::run(&args.addr, &config, fresh, std::sync::Arc::new(move || progress_bar.inc(1))).await?;
    bar.finish_and_clear();
    println!("{}", load::render(&report));
    if !args.keep {
        load::drop_namespace(&mut client, &config.namespace).await?;
    }
    Ok(())
}

/// Resolves on ctrl-c or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
