//! `semcache import`: entries from JSON lines, stored through a running server (batched through
//! its model like live traffic), with a progress bar and the rate.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use semcache::client::ClientArgs;
use semcache::transfer;
use std::path::PathBuf;

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

pub async fn run(args: ImportArgs) -> anyhow::Result<()> {
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
