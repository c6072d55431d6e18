//! `semcache lookup`: one Lookup against a running server, to see what a gateway would be
//! served (and, on a miss, why not) without writing a client.

use super::values::{scope, scope_entry, threshold};
use clap::Args;
use semcache::client::routed;
use semcache::client::{self, ClientArgs, ClientError};
use semcache::proto::{Entry, GuardVeto, LookupRequest, LookupResponse, MissReason};
use semcache::transfer::LineUsage;
use serde::Serialize;
use std::collections::BTreeMap;

/// Settings of `semcache lookup`.
#[derive(Debug, Clone, Args)]
pub struct LookupArgs {
    #[command(flatten)]
    pub server: ClientArgs,

    /// Namespace to look in.
    #[arg(long)]
    pub namespace: String,

    /// Hit only entries stored with exactly this scope; repeat for each of its entries.
    #[arg(long, value_name = "KEY=VALUE", value_parser = scope_entry)]
    pub scope: Vec<(String, String)>,

    /// Similarity threshold of this lookup instead of the namespace's (raised to its floor).
    #[arg(long, value_parser = threshold)]
    pub threshold: Option<f32>,

    /// Print the response as one JSON object instead of lines for people.
    #[arg(long)]
    pub json: bool,

    /// The question to look up.
    pub query: String,
}

/// A miss is an answer, not a failure: the exit code is 0 either way, so a script tells them
/// apart by the output.
pub async fn run(args: LookupArgs) -> anyhow::Result<()> {
    let request = LookupRequest {
        namespace: args.namespace,
        query: args.query,
        scope: scope(args.scope)?,
        similarity_threshold: args.threshold,
        ..Default::default()
    };
    let mut client = client::connect(&args.server).await?;
    let answer = client.lookup(routed(request)).await.map_err(ClientError::from)?.into_inner();
    if args.json {
        println!("{}", serde_json::to_string(&LookupJson::from(&answer))?);
    } else {
        print!("{}", human(&answer));
    }
    Ok(())
}

fn human(r: &LookupResponse) -> String {
    let mut out = if r.hit { "hit\n".to_string() } else { format!("miss ({})\n", reason(r.miss_reason)) };
    out += &format!("similarity: {:.4}\nthreshold: {}\n", r.similarity, r.threshold);
    if let Some(v) = &r.veto {
        out += &format!("vetoed: the {} guard refused {} at {:.4} ({})\n", v.guard, v.id, v.similarity, v.detail);
    }
    match r.entry.as_ref().filter(|_| r.hit) {
        // The response last: it may run over many lines.
        Some(e) => out += &format!("id: {}\nquery: {}\nresponse: {}\n", e.id, e.query, e.response),
        None if !r.nearest_id.is_empty() => out += &format!("nearest: {}\n", r.nearest_id),
        None => {}
    }
    if !r.probe_token.is_empty() {
        out += &format!("probe token: {}\n", r.probe_token);
    }
    out
}

fn reason(miss_reason: i32) -> String {
    match MissReason::try_from(miss_reason) {
        Ok(MissReason::Empty) => "empty".into(),
        Ok(MissReason::BelowThreshold) => "below threshold".into(),
        Ok(MissReason::Vetoed) => "vetoed".into(),
        Ok(MissReason::NeedsContext) => "needs context".into(),
        Ok(MissReason::Explore) => "explore: pass the probe token to the store".into(),
        Ok(MissReason::Unspecified) => "no reason given".into(),
        // A newer server's reason: its number still tells it apart.
        Err(_) => format!("reason {miss_reason}"),
    }
}

/// `LookupResponse` under its proto field names, the enum by its proto name as proto3's JSON
/// mapping writes it. Unset messages are `null` rather than left out, so that a script can
/// test `.entry` without first testing for the key.
#[derive(Serialize)]
struct LookupJson<'a> {
    hit: bool,
    entry: Option<EntryJson<'a>>,
    similarity: f32,
    nearest_id: &'a str,
    threshold: f32,
    veto: Option<VetoJson<'a>>,
    miss_reason: serde_json::Value,
    probe_token: &'a str,
}

#[derive(Serialize)]
struct EntryJson<'a> {
    id: &'a str,
    namespace: &'a str,
    query: &'a str,
    response: &'a str,
    scope: &'a BTreeMap<String, String>,
    metadata: &'a BTreeMap<String, String>,
    created_at_unix_ms: i64,
    expires_at_unix_ms: i64,
    hit_count: u64,
    context_key: &'a str,
    usage: Option<LineUsage>,
}

#[derive(Serialize)]
struct VetoJson<'a> {
    id: &'a str,
    similarity: f32,
    guard: &'a str,
    detail: &'a str,
}

impl<'a> From<&'a LookupResponse> for LookupJson<'a> {
    fn from(r: &'a LookupResponse) -> Self {
        Self {
            hit: r.hit,
            entry: r.entry.as_ref().map(EntryJson::from),
            similarity: r.similarity,
            nearest_id: &r.nearest_id,
            threshold: r.threshold,
            veto: r.veto.as_ref().map(|v: &'a GuardVeto| VetoJson {
                id: &v.id,
                similarity: v.similarity,
                guard: &v.guard,
                detail: &v.detail,
            }),
            miss_reason: match MissReason::try_from(r.miss_reason) {
                Ok(reason) => reason.as_str_name().into(),
                Err(_) => r.miss_reason.into(),
            },
            probe_token: &r.probe_token,
        }
    }
}

impl<'a> From<&'a Entry> for EntryJson<'a> {
    fn from(e: &'a Entry) -> Self {
        Self {
            id: &e.id,
            namespace: &e.namespace,
            query: &e.query,
            response: &e.response,
            scope: &e.scope,
            metadata: &e.metadata,
            created_at_unix_ms: e.created_at_unix_ms,
            expires_at_unix_ms: e.expires_at_unix_ms,
            hit_count: e.hit_count,
            context_key: &e.context_key,
            usage: e.usage.as_ref().map(|u| LineUsage {
                input_tokens: u.input_tokens,
                output_tokens: u.output_tokens,
                cost_usd: u.cost_usd,
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use semcache::proto::Usage;

    fn hit() -> LookupResponse {
        LookupResponse {
            hit: true,
            similarity: 0.9313,
            nearest_id: "7".into(),
            threshold: 0.85,
            entry: Some(Entry {
                id: "7".into(),
                namespace: "support".into(),
                query: "How do I reset my password?".into(),
                response: "Settings > Security".into(),
                usage: Some(Usage { input_tokens: 3, output_tokens: 4, cost_usd: 0.5 }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_hit_shows_the_entry_with_the_response_last() {
        let text = human(&hit());
        assert_eq!(
            text,
            "hit\nsimilarity: 0.9313\nthreshold: 0.85\nid: 7\nquery: How do I reset my password?\n\
             response: Settings > Security\n"
        );
    }

    #[test]
    fn a_miss_says_why_and_names_the_nearest_entry() {
        let vetoed = LookupResponse {
            similarity: 0.95,
            nearest_id: "1".into(),
            threshold: 0.85,
            veto: Some(GuardVeto {
                id: "1".into(),
                similarity: 0.95,
                guard: "number".into(),
                detail: "5 vs 50".into(),
            }),
            miss_reason: MissReason::Vetoed as i32,
            ..Default::default()
        };
        let text = human(&vetoed);
        assert!(text.starts_with("miss (vetoed)\nsimilarity: 0.9500\n"), "{text}");
        assert!(text.contains("vetoed: the number guard refused 1 at 0.9500 (5 vs 50)\n"), "{text}");
        assert!(text.ends_with("nearest: 1\n"), "{text}");
        let empty = LookupResponse { miss_reason: MissReason::Empty as i32, ..Default::default() };
        assert_eq!(human(&empty), "miss (empty)\nsimilarity: 0.0000\nthreshold: 0\n");
        assert_eq!(reason(99), "reason 99");
    }

    #[test]
    fn json_keeps_the_proto_names() {
        // Through the text, as a script reads it: f32s are written in their shortest form.
        let json = |r: &LookupResponse| -> serde_json::Value {
            serde_json::from_str(&serde_json::to_string(&LookupJson::from(r)).unwrap()).unwrap()
        };
        let v = json(&hit());
        assert_eq!(v["hit"], true);
        assert_eq!(v["entry"]["id"], "7");
        assert_eq!(v["entry"]["usage"]["output_tokens"], 4);
        assert_eq!(v["threshold"], 0.85);
        assert_eq!(v["miss_reason"], "MISS_REASON_UNSPECIFIED");
        assert!(v["veto"].is_null());
        let miss = LookupResponse { miss_reason: 99, ..Default::default() };
        let v = json(&miss);
        assert!(v["entry"].is_null());
        assert_eq!(v["miss_reason"], 99);
    }
}
