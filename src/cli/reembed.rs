//! `semcache reembed`: new vectors for stored queries, so that namespaces made with another
//! model serve again. Offline: it opens the data dir itself, so the server must be stopped.

use anyhow::Context;
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use semcache::cache::reembed;
use semcache::config::ModelArgs;
use semcache::embed::{check_model_dir, device, ModelInfo, SentenceModel};
use semcache::store::Store;
use std::path::PathBuf;

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

/// Blocking throughout (the model and RocksDB): run it off the async threads.
pub fn run(args: ReembedArgs) -> anyhow::Result<()> {
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
