//! `semcache token`: a new bearer token and the `[tokens.NAME]` table that grants it (the
//! server's config file keeps only the token's digest).

use anyhow::Context;
use clap::Args;
use semcache::grpc::auth;
use std::path::PathBuf;

/// Settings of `semcache token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// Name of the token in the config file, logs and refusals.
    #[arg(long, default_value = "gateway")]
    pub name: String,

    /// A namespace the token may read (repeat for several; `*` = all). Without --read and
    /// --write the token may read and write everything.
    #[arg(long, value_name = "NAMESPACE")]
    pub read: Vec<String>,

    /// A namespace the token may write (repeat for several; `*` = all).
    #[arg(long, value_name = "NAMESPACE")]
    pub write: Vec<String>,

    /// Requests per second allowed to the token (none when unset).
    #[arg(long)]
    pub requests_per_second: Option<std::num::NonZeroU32>,

    /// Write the token to this new file (mode 0600) instead of stderr.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,

    /// Print only the digest of the token read from stdin, for a token made elsewhere.
    #[arg(long, conflicts_with_all = ["read", "write", "requests_per_second", "token_file"])]
    pub hash: bool,
}

pub fn run(args: TokenArgs) -> anyhow::Result<()> {
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
