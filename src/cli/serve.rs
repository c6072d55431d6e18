//! `semcache serve`: the settings from flags, environment and config file, then the server
//! until ctrl-c or SIGTERM.

use anyhow::Context;
use clap::ArgMatches;
use semcache::config::{self, ConfigError, ServeArgs};

/// Applies the config file to what clap parsed (`matches`, of the `serve` subcommand, tells a
/// flag or variable that was given from a default, which the file may replace). `None`:
/// `--print-config` printed the effective settings, and there is nothing more to do.
pub fn resolve(matches: &ArgMatches) -> Result<Option<ServeArgs>, Box<ConfigError>> {
    // Boxed: a refusal carries its file, place and the known keys, and is returned once.
    let resolved = config::resolve(matches).map_err(Box::new)?;
    if resolved.args.print_config {
        print!("{}", resolved.to_toml());
        return Ok(None);
    }
    Ok(Some(resolved.args))
}

pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    semcache::server::run(args, listener, shutdown_signal()).await?;
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
