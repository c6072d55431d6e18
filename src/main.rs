use anyhow::Context;
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use indicatif::{ProgressBar, ProgressStyle};
use semcache::cache::reembed;
use semcache::config::{
    self, BenchArgs, CalibrateArgs, EvalArgs, ExportArgs, ImportArgs, LogFormat, PairsArgs, ReembedArgs, ServeArgs,
    TokenArgs,
};
use semcache::embed::{check_model_dir, device, ModelInfo, SentenceModel};
use semcache::eval;
use semcache::loadgen::{self, LoadConfig};
use semcache::store::Store;
use semcache::transfer;
use std::process::ExitCode;
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
    /// Score hit quality on a labelled pair file against a running server: precision,
    /// recall and false-hit rate at a threshold, with hit guards off and on, and the curve.
    Eval(EvalArgs),
    /// Pick the lowest threshold that reaches a precision on a labelled pair file, and
    /// optionally set it on a namespace.
    Calibrate(CalibrateArgs),
    /// Store entries from a JSON-lines file through a running server (batched through its
    /// model like live traffic), with a progress bar and the rate.
    Import(ImportArgs),
    /// Write a running server's live entries as JSON lines that `import` reads back.
    Export(ExportArgs),
    /// Make a bearer token and print it with the `[tokens.NAME]` table that grants it (the
    /// server's config file keeps only the token's digest).
    Token(TokenArgs),
}

fn main() -> ExitCode {
    semcache::embed::configure_cpu_threads();
    let matches = Cli::command().get_matches();
    let mut cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // `serve` reads its config file before logging starts, for the log format it may set; a
    // refused file is reported in the format that the flags and environment chose.
    let mut resolved = Ok(());
    if let (Command::Serve(args), Some(("serve", serve))) = (&mut cli.command, matches.subcommand()) {
        match config::resolve(serve) {
            Ok(r) if r.args.print_config => {
                print!("{}", r.to_toml());
                return ExitCode::SUCCESS;
            }
            Ok(r) => *args = r.args,
            Err(e) => resolved = Err(e),
        }
    }
    let format = match &cli.command {
        Command::Serve(args) => args.log_format,
        _ => LogFormat::Human,
    };
    init_logging(format);
    let result = resolved
        .map_err(anyhow::Error::from)
        .and_then(|()| tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(run(cli.command)));
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

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => {
            let listener = tokio::net::TcpListener::bind(args.listen)
                .await
                .with_context(|| format!("cannot listen on {}", args.listen))?;
            semcache::server::run(args, listener, shutdown_signal()).await?;
        }
        Command::Reembed(args) => tokio::task::spawn_blocking(move || run_reembed(args)).await??,
        Command::Bench(args) => run_bench(args).await?,
        Command::Eval(args) => run_eval(args).await?,
        Command::Calibrate(args) => run_calibrate(args).await?,
        Command::Import(args) => run_import(args).await?,
        Command::Export(args) => run_export(args).await?,
        Command::Token(args) => run_token(args)?,
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
    let mut client = semcache::client::connect(&args.server).await?;
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

/// Loads the pairs and runs them through the server in a scratch namespace.
async fn evaluate(args: &PairsArgs) -> anyhow::Result<(String, eval::RunResult)> {
    let mut pairs = eval::read_pairs(&args.pairs, args.format)?;
    if args.limit > 0 && args.limit < pairs.len() {
        pairs = eval::sample(pairs, args.limit, args.seed);
    }
    let name = args.pairs.file_name().map_or_else(|| args.pairs.display().to_string(), |n| n.to_string_lossy().into());
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

async fn run_eval(args: EvalArgs) -> anyhow::Result<()> {
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

async fn run_calibrate(args: CalibrateArgs) -> anyhow::Result<()> {
    let mut client = semcache::client::connect(&args.pairs.server).await?;
    let namespace = client.get_namespace(semcache::proto::GetNamespaceRequest { name: args.namespace.clone() }).await;
    let (guards, floor) = match namespace {
        Ok(ns) => (ns.get_ref().hit_guards, ns.get_ref().threshold_floor),
        Err(status) if status.code() == tonic::Code::NotFound => (true, 0.0),
        Err(status) => return Err(status.into()),
    };
    let (name, result) = evaluate(&args.pairs).await?;
    let (off, on) = eval::curves(&result, args.pairs.from);
    let curve = if guards { &on } else { &off };
    let guards_said = if guards { "on" } else { "off" };
    let Some(chosen) = eval::lowest_meeting_precision(curve, args.target_precision) else {
        anyhow::bail!(
            "no threshold in [{:.2}, 0.99] reaches precision {} on {name} with guards {guards_said}; \
             check the labels, or accept a lower precision",
            args.pairs.from,
            args.target_precision
        );
    };
    println!(
        "{}: threshold {:.2} with guards {guards_said} reaches precision {:.3} on {name} \
         (recall {:.3}, false-hit rate {:.3}, {} hits); precision stays >= {} above it",
        args.namespace,
        chosen.threshold,
        chosen.precision,
        chosen.recall,
        chosen.false_hit_rate,
        chosen.hits,
        args.target_precision
    );
    if args.apply && chosen.threshold < floor {
        anyhow::bail!(
            "not applied: {:.2} is below namespace {}'s threshold_floor {floor}; lower the floor first if this \
             data is representative",
            chosen.threshold,
            args.namespace
        );
    }
    if args.apply {
        let ns = client
            .configure_namespace(semcache::proto::ConfigureNamespaceRequest {
                name: args.namespace.clone(),
                similarity_threshold: Some(chosen.threshold),
                ..Default::default()
            })
            .await?
            .into_inner();
        println!("applied: namespace {} now has similarity_threshold {}", ns.name, ns.similarity_threshold);
    } else {
        println!("not applied (pass --apply to set it)");
    }
    Ok(())
}

async fn run_import(args: ImportArgs) -> anyhow::Result<()> {
    let path = args.file.display().to_string();
    let (reader, total): (Box<dyn std::io::BufRead + Send>, Option<u64>) = if path == "-" {
        (Box::new(std::io::BufReader::new(std::io::stdin())), None)
    } else {
        let open = || std::fs::File::open(&args.file).with_context(|| format!("cannot open {path}"));
        // One quick pass to count lines, so the bar can show an ETA.
        let lines = std::io::BufRead::lines(std::io::BufReader::new(open()?)).count() as u64;
        (Box::new(std::io::BufReader::with_capacity(1 << 20, open()?)), Some(lines))
    };
    let bar = match total {
        Some(n) => ProgressBar::new(n),
        None => ProgressBar::new_spinner(),
    }
    .with_style(
        ProgressStyle::with_template("[{bar:40}] {pos}/{len} lines, {per_sec}, eta {eta}")?.progress_chars("=> "),
    );
    let config = transfer::ImportConfig { clients: args.clients, namespace: args.namespace.clone() };
    let report = transfer::import(&args.server, &path, reader, &config, &|n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let report = report?;
    println!(
        "imported {} entries from {path} in {:.1} s: {:.0} lines/s",
        report.imported,
        report.elapsed.as_secs_f64(),
        report.lines_per_second()
    );
    if !report.refused.is_empty() {
        for (line, reason) in report.refused.iter().take(10) {
            println!("{path}:{line}: refused: {reason}");
        }
        anyhow::bail!("the server refused {} of the lines (the rest were imported)", report.refused.len());
    }
    Ok(())
}

async fn run_export(args: ExportArgs) -> anyhow::Result<()> {
    let total = transfer::count(&args.server, &args.namespace).await?;
    let to_stdout = args.output.as_os_str() == "-";
    let mut out: Box<dyn std::io::Write + Send> = if to_stdout {
        Box::new(std::io::BufWriter::new(std::io::stdout()))
    } else {
        let file =
            std::fs::File::create(&args.output).with_context(|| format!("cannot create {}", args.output.display()))?;
        Box::new(std::io::BufWriter::new(file))
    };
    // The bar goes to stderr, so stdout stays clean JSON lines.
    let bar = ProgressBar::new(total)
        .with_style(ProgressStyle::with_template("[{bar:40}] {pos}/{len} entries, {per_sec}")?.progress_chars("=> "));
    let written = transfer::export(&args.server, &args.namespace, &mut out, &|n| bar.set_position(n)).await;
    bar.finish_and_clear();
    let written = written?;
    if !to_stdout {
        println!("exported {written} entries to {}", args.output.display());
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

fn run_token(args: TokenArgs) -> anyhow::Result<()> {
    use semcache::grpc::auth;
    if args.hash {
        let mut token = String::new();
        std::io::stdin().read_line(&mut token)?;
        let token = token.trim_end_matches(['\n', '\r']);
        anyhow::ensure!(!token.is_empty(), "no token on stdin (`--hash` digests the token given on stdin)");
        println!("{}", auth::hash_token(token));
        return Ok(());
    }
    semcache::cache::validate::namespace(&args.name)
        .map_err(|e| anyhow::anyhow!("--name must be usable as a TOML key like a namespace name: {e}"))?;
    for n in args.read.iter().chain(&args.write).filter(|n| n.as_str() != "*") {
        semcache::cache::validate::namespace(n).map_err(|e| anyhow::anyhow!("--read/--write: {e}"))?;
    }
    let (read, write) = if args.read.is_empty() && args.write.is_empty() {
        (vec!["*".to_string()], vec!["*".to_string()])
    } else {
        (args.read, args.write)
    };
    let token = auth::new_token().map_err(|e| anyhow::anyhow!("no randomness from the OS: {e}"))?;
    let list = |l: &[String]| l.iter().map(|n| format!("{n:?}")).collect::<Vec<_>>().join(", ");
    // The table (safe to append to the config file) on stdout; the secret apart from it.
    match &args.token_file {
        Some(path) => {
            use std::io::Write;
            let mut file = std::fs::OpenOptions::new();
            std::os::unix::fs::OpenOptionsExt::mode(file.create_new(true).write(true), 0o600);
            file.open(path)
                .and_then(|mut f| writeln!(f, "{token}"))
                .with_context(|| format!("cannot write the token to {} (it must not exist)", path.display()))?;
        }
        None => eprintln!("token for the client (shown only now; the server keeps its digest): {token}"),
    }
    println!("[tokens.{}]", args.name);
    println!("sha256 = {:?}", auth::hash_token(&token));
    println!("read = [{}]", list(&read));
    println!("write = [{}]", list(&write));
    if let Some(rps) = args.requests_per_second {
        println!("requests_per_second = {rps}");
    }
    Ok(())
}
