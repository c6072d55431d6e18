//! `semcache export`: a running server's live entries as the JSON lines that `import` reads.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use semcache::client::ClientArgs;
use semcache::transfer;
use std::path::PathBuf;

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

pub async fn run(args: ExportArgs) -> anyhow::Result<()> {
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
