//! The `semcache` command line: one module per subcommand, each with its flags and its `run`;
//! here the subcommands, logging and the exit code. Part of the binary, not the library: it is
//! presentation (progress bars, printed reports, `anyhow` errors) over the library's modules.

mod bench;
mod calibrate;
mod eval;
mod export;
mod import;
mod lookup;
mod reembed;
mod serve;
mod stats;
mod store;
mod token;
mod values;

use clap::{ArgMatches, FromArgMatches, Parser, Subcommand};
use semcache::config::{LogFormat, ServeArgs};
use std::process::ExitCode;
use tracing_subscriber::EnvFilter;

/// A semantic cache for LLM responses, served over gRPC.
#[derive(Parser)]
#[command(name = "semcache", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Serve the SemanticCache gRPC API (with health and reflection).
    Serve(ServeArgs),
    /// Re-embed stored queries with the given model, so that namespaces made with another
    /// model serve again. Run it with the server stopped.
    Reembed(reembed::ReembedArgs),
    /// Drive a running server with concurrent clients and report throughput and latency
    /// percentiles, to size a deployment.
    Bench(bench::BenchArgs),
    /// Score hit quality on a labelled pair file against a running server: precision,
    /// recall and false-hit rate at a threshold, with hit guards off and on, and the curve.
    Eval(eval::EvalArgs),
    /// Pick the lowest threshold that reaches a precision on a labelled pair file, and
    /// optionally set it on a namespace.
    Calibrate(calibrate::CalibrateArgs),
    /// Store entries from a JSON-lines file through a running server (batched through its
    /// model like live traffic), with a progress bar and the rate.
    Import(import::ImportArgs),
    /// Write a running server's live entries as JSON lines that `import` reads back.
    Export(export::ExportArgs),
    /// Make a bearer token and print it with the `[tokens.NAME]` table that grants it (the
    /// server's config file keeps only the token's digest).
    Token(token::TokenArgs),
    /// Look a query up on a running server: hit or miss (and why), the similarity, the
    /// threshold, and the entry served. Exits 0 on a hit and on a miss.
    Lookup(lookup::LookupArgs),
    /// Store one query and its response through a running server and print the new entry's id.
    Store(store::StoreArgs),
    /// A server's counters, or a cluster's: each node's and their sum (`--cluster URL,...`
    /// directly, or `--nodes n1,n2,...` through the proxy).
    Stats(stats::StatsArgs),
}

/// Runs the command line that `matches` holds (parsed from [`Cli`]).
pub fn run(matches: &ArgMatches) -> ExitCode {
    let mut cli = Cli::from_arg_matches(matches).unwrap_or_else(|e| e.exit());
    // `serve` reads its config file before logging starts, for the log format it may set; a
    // refused file is reported in the format that the flags and environment chose.
    let mut refused = None;
    if let (Command::Serve(args), Some(("serve", serve))) = (&mut cli.command, matches.subcommand()) {
        match serve::resolve(serve) {
            Ok(Some(resolved)) => *args = resolved,
            Ok(None) => return ExitCode::SUCCESS,
            Err(e) => refused = Some(*e),
        }
    }
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Human,
    };
    init_logging(format);
    let result = match refused {
        Some(e) => Err(e.into()),
        None => tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(anyhow::Error::from)
            .and_then(|runtime| runtime.block_on(dispatch(cli.command))),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            match format {
                LogFormat::Human => eprintln!("Error: {e:?}"),
                LogFormat::Json => tracing::error!(error = format!("{e:#}"), "semcache stopped"),
            }
            ExitCode::FAILURE
        }
    }
}

/// Log lines go to stdout, at the level `SEMCACHE_LOG` sets (default `info`).
fn init_logging(format: LogFormat) {
    // Colours only for a person at a terminal, never into a log file or a collector.
    let logs = tracing_subscriber::fmt()
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()))
        .with_env_filter(EnvFilter::try_from_env("SEMCACHE_LOG").unwrap_or_else(|_| EnvFilter::new("info")));
    match format {
        LogFormat::Human => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
}

async fn dispatch(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => serve::run(args).await,
        Command::Reembed(args) => tokio::task::spawn_blocking(move || reembed::run(args)).await?,
        Command::Bench(args) => bench::run(args).await,
        Command::Eval(args) => eval::run(args).await,
        Command::Calibrate(args) => calibrate::run(args).await,
        Command::Import(args) => import::run(args).await,
        Command::Export(args) => export::run(args).await,
        Command::Token(args) => token::run(args),
        Command::Lookup(args) => lookup::run(args).await,
        Command::Store(args) => store::run(args).await,
        Command::Stats(args) => stats::run(args).await,
    }
}
