//! `semcache eval --stream`: an intent-labelled stream replayed through a live server the way a
//! gateway uses the cache, for static thresholds and verified mode side by side.
//!
//! Every query is looked up; a hit is right iff the cached answer is the query's intent. On a
//! miss the "LLM" answers with the intent (`oos` is out of scope: an answer of its own, so any
//! hit on it is wrong) and the gateway stores it, passing back the probe token of an EXPLORE.
//! Each policy replays the same seeded orders in a scratch namespace of its own, so the figures
//! compare like with like; several replays run at once so the server batches their forward
//! passes.

use super::EvalError;
use crate::client::routed;
use crate::client::{self, Client, ClientArgs};
use crate::proto::{ConfigureNamespaceRequest, DropNamespaceRequest, LookupRequest, MissReason, StoreRequest};
use futures_util::{StreamExt, TryStreamExt};
use std::fmt::Write as _;
use std::path::Path;

/// One line of a stream file.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
pub struct Utterance {
    pub text: String,
    pub intent: String,
    /// E.g. "train" or "test" (Banking77); absent in other files.
    #[serde(default)]
    pub split: Option<String>,
}

/// The intent that means "no cached answer fits": each such query has an answer of its own.
pub const OUT_OF_SCOPE: &str = "oos";

/// Reads a JSON-lines stream of `{"text", "intent"}` (other keys are ignored; `split` filters
/// when `split` is given). Blank lines are skipped.
pub fn read_stream(path: &Path, split: Option<&str>) -> Result<Vec<Utterance>, EvalError> {
    let text = std::fs::read_to_string(path).map_err(|source| EvalError::Io { path: path.to_owned(), source })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let u: Utterance = serde_json::from_str(line).map_err(|e| EvalError::Row {
            path: path.to_owned(),
            at: super::Position::Line(i as u64 + 1),
            what: format!("expected {{\"text\": ..., \"intent\": ...}}: {e}"),
        })?;
        if u.text.trim().is_empty() || u.intent.is_empty() {
            return Err(EvalError::Row {
                path: path.to_owned(),
                at: super::Position::Line(i as u64 + 1),
                what: "text and intent must not be empty".into(),
            });
        }
        if split.is_none_or(|s| u.split.as_deref() == Some(s)) {
            out.push(u);
        }
    }
    if out.is_empty() {
        let what = match split {
            Some(s) => format!("no lines of split {s:?}"),
            None => "no lines".into(),
        };
        return Err(EvalError::File { path: path.to_owned(), what });
    }
    Ok(out)
}

/// How a replay's namespace decides.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Policy {
    Static(f32),
    /// Verified mode with this error bound.
    Verified(f32),
}

impl std::fmt::Display for Policy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Policy::Static(t) => write!(f, "static {t:.3}"),
            Policy::Verified(d) => write!(f, "verified δ={d}"),
        }
    }
}

/// Cumulative counts after some lookups.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Tally {
    pub lookups: u32,
    pub hits: u32,
    pub wrong: u32,
    pub explores: u32,
}

impl Tally {
    pub fn hit_rate(&self) -> f64 {
        ratio(self.hits, self.lookups)
    }
    pub fn error_rate(&self) -> f64 {
        ratio(self.wrong, self.lookups)
    }
    pub fn explore_rate(&self) -> f64 {
        ratio(self.explores, self.lookups)
    }
    pub fn precision(&self) -> f64 {
        if self.hits == 0 {
            1.0
        } else {
            ratio(self.hits - self.wrong, self.hits)
        }
    }
}

fn ratio(a: u32, b: u32) -> f64 {
    if b == 0 {
        0.0
    } else {
        f64::from(a) / f64::from(b)
    }
}

/// One policy over one order.
#[derive(Debug, Clone)]
pub struct Replay {
    pub policy: Policy,
    pub seed: u64,
    pub total: Tally,
    /// The tally after every `curve_step` lookups, for the cumulative curves.
    pub curve: Vec<Tally>,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub policies: Vec<Policy>,
    pub seeds: Vec<u64>,
    /// Prefix of the scratch namespaces (one per replay, dropped afterwards unless `keep`).
    pub namespace: String,
    /// Replays at once.
    pub parallel: usize,
    pub keep: bool,
}

/// The stream in a seeded order.
pub fn order(utterances: &[Utterance], seed: u64) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..utterances.len()).collect();
    crate::rng::shuffle(&mut idx, seed);
    idx
}

/// The answer the "LLM" gives: the intent, or an answer of its own for out-of-scope queries.
fn answer(u: &Utterance, position: usize) -> String {
    if u.intent == OUT_OF_SCOPE {
        format!("{OUT_OF_SCOPE} #{position}")
    } else {
        u.intent.clone()
    }
}

/// Replays every policy over every seed; `progress` hears of each finished replay.
pub async fn run(
    server: &ClientArgs,
    utterances: &[Utterance],
    config: &StreamConfig,
    progress: &(dyn Fn(&Replay) + Sync),
) -> Result<Vec<Replay>, EvalError> {
    let client = client::connect(server).await?;
    let jobs: Vec<(Policy, u64)> =
        config.seeds.iter().flat_map(|&s| config.policies.iter().map(move |&p| (p, s))).collect();
    futures_util::stream::iter(jobs.into_iter().enumerate())
        .map(|(i, (policy, seed))| {
            let client = client.clone();
            let namespace = format!("{}-{i}", config.namespace);
            async move {
                let replay = replay(client, utterances, policy, seed, &namespace, config.keep).await?;
                progress(&replay);
                Ok::<_, EvalError>(replay)
            }
        })
        .buffered(config.parallel.max(1))
        .try_collect()
        .await
}

async fn replay(
    mut client: Client,
    utterances: &[Utterance],
    policy: Policy,
    seed: u64,
    namespace: &str,
    keep: bool,
) -> Result<Replay, EvalError> {
    let configure = match policy {
        Policy::Static(t) => ConfigureNamespaceRequest {
            name: namespace.into(),
            similarity_threshold: Some(t),
            error_bound: Some(0.0),
            ..Default::default()
        },
        Policy::Verified(d) => {
            ConfigureNamespaceRequest { name: namespace.into(), error_bound: Some(d), ..Default::default() }
        }
    };
    let _ = client.drop_namespace(routed(DropNamespaceRequest { name: namespace.into() })).await;
    client.configure_namespace(routed(configure)).await?;
    let result = replay_in(&mut client, utterances, policy, seed, namespace).await;
    if !keep {
        client.drop_namespace(routed(DropNamespaceRequest { name: namespace.into() })).await?;
    }
    result
}

async fn replay_in(
    client: &mut Client,
    utterances: &[Utterance],
    policy: Policy,
    seed: u64,
    namespace: &str,
) -> Result<Replay, EvalError> {
    let order = order(utterances, seed);
    let step = (order.len() / 100).max(1);
    let mut total = Tally::default();
    let mut curve = Vec::with_capacity(101);
    for (position, &i) in order.iter().enumerate() {
        let u = &utterances[i];
        let want = answer(u, position);
        let r = client
            .lookup(routed(LookupRequest { namespace: namespace.into(), query: u.text.clone(), ..Default::default() }))
            .await?
            .into_inner();
        total.lookups += 1;
        let explored = r.miss_reason() == MissReason::Explore;
        match r.entry.filter(|_| r.hit) {
            Some(entry) => {
                total.hits += 1;
                total.wrong += u32::from(entry.response != want);
            }
            None => {
                total.explores += u32::from(explored);
                let store = StoreRequest {
                    namespace: namespace.into(),
                    query: u.text.clone(),
                    response: want,
                    probe_token: r.probe_token,
                    ..Default::default()
                };
                client.store(routed(store)).await?;
            }
        }
        if (position + 1) % step == 0 || position + 1 == order.len() {
            curve.push(total);
        }
    }
    Ok(Replay { policy, seed, total, curve })
}

/// A bound as it was written: 0.01f32 widened to f64 is 0.00999999977, under 1 in 100.
fn decimal(bound: f32) -> f64 {
    bound.to_string().parse().unwrap_or(f64::from(bound))
}

/// Mean and spread (min, max) of one figure over a policy's replays.
fn spread(replays: &[&Replay], f: impl Fn(&Tally) -> f64) -> (f64, f64, f64) {
    let values: Vec<f64> = replays.iter().map(|r| f(&r.total)).collect();
    let mean = values.iter().sum::<f64>() / values.len().max(1) as f64;
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    (mean, min, max)
}

/// Per policy, in the order given: its replays.
fn by_policy(replays: &[Replay]) -> Vec<(Policy, Vec<&Replay>)> {
    let mut out: Vec<(Policy, Vec<&Replay>)> = Vec::new();
    for r in replays {
        match out.iter_mut().find(|(p, _)| *p == r.policy) {
            Some((_, rs)) => rs.push(r),
            None => out.push((r.policy, vec![r])),
        }
    }
    out
}

/// The static threshold with the most hits whose mean error rate stays within `bound`, chosen
/// in hindsight on the same replays.
pub fn best_static(replays: &[Replay], bound: f64) -> Option<(f32, f64, f64)> {
    by_policy(replays)
        .into_iter()
        .filter_map(|(p, rs)| match p {
            Policy::Static(t) => Some((t, spread(&rs, Tally::hit_rate).0, spread(&rs, Tally::error_rate).0)),
            Policy::Verified(_) => None,
        })
        .filter(|(_, _, err)| *err <= bound)
        .max_by(|a, b| a.1.total_cmp(&b.1))
}

/// The report: a markdown table of every policy (mean over the seeds, min-max in brackets),
/// then verified mode against the best static threshold in hindsight at its own bound.
pub fn render(name: &str, lookups: usize, seeds: usize, replays: &[Replay]) -> String {
    let pct = |(mean, min, max): (f64, f64, f64)| {
        if seeds > 1 {
            format!("{:.2}% [{:.2}-{:.2}]", mean * 100.0, min * 100.0, max * 100.0)
        } else {
            format!("{:.2}%", mean * 100.0)
        }
    };
    let mut out = format!("{name}: {lookups} lookups per replay, {seeds} seeded order(s)\n\n");
    out.push_str("| policy | hit rate | error rate (wrong / lookups) | explore rate | precision |\n");
    out.push_str("| --- | --- | --- | --- | --- |\n");
    for (policy, rs) in by_policy(replays) {
        let _ = writeln!(
            out,
            "| {policy} | {} | {} | {} | {} |",
            pct(spread(&rs, Tally::hit_rate)),
            pct(spread(&rs, Tally::error_rate)),
            pct(spread(&rs, Tally::explore_rate)),
            pct(spread(&rs, Tally::precision)),
        );
    }
    for (policy, rs) in by_policy(replays) {
        let Policy::Verified(delta) = policy else { continue };
        let (hits, _, _) = spread(&rs, Tally::hit_rate);
        let (errors, _, _) = spread(&rs, Tally::error_rate);
        let bound = decimal(delta);
        let verdict = if errors <= bound { "within" } else { "OVER" };
        let _ = write!(out, "\nverified δ={delta}: error rate {:.2}% ({verdict} the bound)", errors * 100.0);
        match best_static(replays, bound) {
            Some((t, static_hits, static_errors)) => {
                let _ = write!(
                    out,
                    "; hit rate {:.2}% vs {:.2}% for the best static threshold within δ in hindsight ({t:.3}, \
                     error rate {:.2}%): {:.2}x",
                    hits * 100.0,
                    static_hits * 100.0,
                    static_errors * 100.0,
                    if static_hits > 0.0 { hits / static_hits } else { f64::INFINITY }
                );
            }
            None => {
                let _ = write!(out, "; hit rate {:.2}%; no static threshold tried stays within δ", hits * 100.0);
            }
        }
    }
    out.push('\n');
    out
}

/// Cumulative hit and error rate over the stream, one line per policy (first seed), as an SVG
/// or PNG.
pub fn plot(path: &Path, title: &str, replays: &[Replay]) -> Result<(), EvalError> {
    let first = replays.iter().map(|r| r.seed).min().unwrap_or(0);
    let series: Vec<super::plot::Cumulative> = replays
        .iter()
        .filter(|r| r.seed == first)
        .map(|r| {
            let points = r.curve.iter().map(|t| (f64::from(t.lookups), t.hit_rate(), t.error_rate())).collect();
            (r.policy.to_string(), points)
        })
        .collect();
    super::plot::cumulative(path, title, &series)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(text: &str, intent: &str) -> Utterance {
        Utterance { text: text.into(), intent: intent.into(), split: None }
    }

    #[test]
    fn streams_read_with_their_split_and_refuse_bad_lines() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.jsonl");
        std::fs::write(&path, "{\"text\": \"a\", \"intent\": \"x\", \"split\": \"train\"}\n\n{\"text\": \"b\", \"intent\": \"y\", \"split\": \"test\"}\n").unwrap();
        assert_eq!(read_stream(&path, None).unwrap().len(), 2);
        assert_eq!(read_stream(&path, Some("test")).unwrap()[0].text, "b");
        assert!(read_stream(&path, Some("dev")).unwrap_err().to_string().contains("no lines of split"));
        std::fs::write(&path, "{\"text\": \"a\"}\n").unwrap();
        let e = read_stream(&path, None).unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("intent"), "{e}");
    }

    #[test]
    fn orders_are_seeded_permutations_and_out_of_scope_answers_are_unique() {
        let s: Vec<Utterance> = (0..50).map(|i| u(&format!("q{i}"), "x")).collect();
        let a = order(&s, 1);
        assert_eq!(a, order(&s, 1));
        assert_ne!(a, order(&s, 2));
        let mut sorted = a.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..50).collect::<Vec<_>>());
        assert_ne!(answer(&u("a", OUT_OF_SCOPE), 1), answer(&u("b", OUT_OF_SCOPE), 2));
        assert_eq!(answer(&u("a", "card_arrival"), 1), "card_arrival");
    }

    #[test]
    fn the_best_static_threshold_is_chosen_within_the_bound() {
        let replay = |policy, hits, wrong| Replay {
            policy,
            seed: 1,
            total: Tally { lookups: 100, hits, wrong, explores: 0 },
            curve: Vec::new(),
        };
        let replays = [
            replay(Policy::Static(0.8), 50, 5),
            replay(Policy::Static(0.9), 30, 1),
            replay(Policy::Static(0.95), 10, 0),
            replay(Policy::Verified(0.01), 40, 1),
        ];
        assert_eq!(best_static(&replays, 0.01).map(|b| b.0), Some(0.9));
        assert_eq!(best_static(&replays, 0.05).map(|b| b.0), Some(0.8));
        let report = render("s", 100, 1, &replays);
        assert!(report.contains("verified δ=0.01: error rate 1.00% (within the bound)"), "{report}");
        assert!(report.contains("1.33x"), "{report}");
    }
}
