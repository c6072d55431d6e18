//! `semcache store`: one Store through a running server, to seed or fix an entry by hand.

use super::values::{scope, scope_entry};
use clap::Args;
use semcache::client::routed;
use semcache::client::{self, ClientArgs, ClientError};
use semcache::proto::StoreRequest;

/// Settings of `semcache store`.
#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    #[command(flatten)]
    pub server: ClientArgs,

    /// Namespace to store in (created with the server's defaults if missing).
    #[arg(long)]
    pub namespace: String,

    /// Scope of the entry; repeat for each of its entries. Only lookups with exactly this scope
    /// hit it.
    #[arg(long, value_name = "KEY=VALUE", value_parser = scope_entry)]
    pub scope: Vec<(String, String)>,

    /// Lifetime of the entry in seconds (0 = never expires); default: the namespace's.
    #[arg(long)]
    pub ttl_seconds: Option<u64>,

    /// The probe token of the lookup that answered EXPLORE for this query (verified mode):
    /// the server learns whether the cached answer would have been right.
    #[arg(long)]
    pub probe_token: Option<String>,

    /// Your own judgement of the probed answer (default: the server compares the answers).
    #[arg(long, requires = "probe_token", action = clap::ArgAction::Set)]
    pub probe_verdict: Option<bool>,

    /// Print the response as one JSON object instead of a line for people.
    #[arg(long)]
    pub json: bool,

    /// The question, as a lookup will be compared with it.
    pub query: String,

    /// The answer to serve for it.
    pub response: String,
}

#[derive(serde::Serialize)]
struct StoreJson<'a> {
    id: &'a str,
    probe_correct: Option<bool>,
}

pub async fn run(args: StoreArgs) -> anyhow::Result<()> {
    let request = StoreRequest {
        namespace: args.namespace,
        query: args.query,
        response: args.response,
        scope: scope(args.scope)?,
        ttl_seconds: args.ttl_seconds,
        probe_token: args.probe_token.unwrap_or_default(),
        probe_verdict: args.probe_verdict,
        ..Default::default()
    };
    let mut client = client::connect(&args.server).await?;
    let stored = client.store(routed(request)).await.map_err(ClientError::from)?.into_inner();
    if args.json {
        println!("{}", serde_json::to_string(&StoreJson { id: &stored.id, probe_correct: stored.probe_correct })?);
    } else {
        println!("id: {}", stored.id);
        if let Some(correct) = stored.probe_correct {
            println!("probe: the cached answer was {}", if correct { "right" } else { "wrong" });
        }
    }
    Ok(())
}
