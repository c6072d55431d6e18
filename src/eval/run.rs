//! Runs a pair set through a live server, as a gateway would: every `a` is stored in a
//! scratch namespace, every `b` looked up once, over gRPC. What each lookup answered
//! becomes an [`Observation`], from which the curves over thresholds follow.
//!
//! Each `b` is looked up once, at the low end of the curve, with guards on: the response
//! carries the nearest entry and its similarity (what a bare threshold would serve) and
//! whether the guards let it through. [`score`](super::score) explains why that one lookup
//! answers for every higher threshold.

use super::dataset::Pair;
use super::score::{Match, Observation};
use super::EvalError;
use crate::client::routed;
use crate::client::{self, Client, ClientArgs};
use crate::proto::{
    ConfigureNamespaceRequest, DropNamespaceRequest, GetNamespaceRequest, LookupRequest, LookupResponse, StoreRequest,
};
use crate::text::normalize;
use futures_util::{StreamExt, TryStreamExt};
use std::collections::HashMap;
use tonic::Code;

#[derive(Debug, Clone)]
pub struct RunConfig {
    /// Scratch namespace; it must not exist yet.
    pub namespace: String,
    /// Requests in flight at once.
    pub clients: usize,
    /// The lowest threshold of the curve: every lookup is made with it.
    pub from: f32,
    /// Look up each `b` with its `a` as the conversation context (a follow-up sent the way a
    /// gateway that tracks conversations would send it).
    pub follow_up_context: bool,
    /// Leave the scratch namespace in place afterwards.
    pub keep: bool,
}

/// One lookup, in full: for a report of what went wrong.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Lookup {
    pub a: String,
    pub b: String,
    pub duplicate: bool,
    pub nearest: Option<String>,
    pub similarity: f32,
    /// The entry served with guards on at the lookup threshold.
    pub served: Option<String>,
    /// "guard: detail" when a guard refused the nearest entry.
    pub veto: Option<String>,
}

#[derive(Debug, Clone)]
pub struct RunResult {
    pub observations: Vec<Observation>,
    pub lookups: Vec<Lookup>,
    /// The threshold a namespace gets on this server when it does not choose one.
    pub default_threshold: f32,
    /// Distinct `a` texts stored.
    pub stored: usize,
}

/// Progress callbacks: stores done, lookups done.
pub trait Progress: Send + Sync {
    fn stored(&self, total: u64);
    fn looked_up(&self, total: u64);
}

fn observe(pair: &Pair, r: &LookupResponse, texts: &HashMap<String, String>) -> (Observation, Lookup) {
    let own = |query: &str| normalize(query) == normalize(&pair.a);
    let nearest_text = texts.get(&r.nearest_id).cloned();
    let nearest = nearest_text.as_ref().map(|q| Match { similarity: r.similarity, own: own(q) });
    let served = r.entry.as_ref().filter(|_| r.hit).map(|e| e.query.clone());
    let guarded = served.as_ref().map(|q| Match { similarity: r.similarity, own: own(q) });
    let lookup = Lookup {
        a: pair.a.clone(),
        b: pair.b.clone(),
        duplicate: pair.duplicate,
        nearest: nearest_text,
        similarity: r.similarity,
        served,
        veto: r.veto.as_ref().map(|v| format!("{}: {}", v.guard, v.detail)),
    };
    (Observation { duplicate: pair.duplicate, nearest, guarded }, lookup)
}

pub async fn run(
    server: &ClientArgs,
    pairs: Vec<Pair>,
    config: &RunConfig,
    progress: &dyn Progress,
) -> Result<RunResult, EvalError> {
    let mut client = client::connect(server).await?;
    let ns = config.namespace.clone();
    match client.get_namespace(routed(GetNamespaceRequest { name: ns.clone() })).await {
        Err(status) if status.code() == Code::NotFound => {}
        Err(status) => return Err(status.into()),
        Ok(_) => return Err(EvalError::NamespaceExists(ns)),
    }
    // Guards on: the nearest candidate in each response still tells what they changed.
    let created = client
        .configure_namespace(routed(ConfigureNamespaceRequest {
            name: ns.clone(),
            hit_guards: Some(true),
            ..Default::default()
        }))
        .await?
        .into_inner();
    let result = measure(client.clone(), &pairs, config, progress).await;
    if !config.keep {
        client.drop_namespace(routed(DropNamespaceRequest { name: ns })).await?;
    }
    let (observations, lookups, stored) = result?;
    Ok(RunResult { observations, lookups, default_threshold: created.similarity_threshold, stored })
}

type Measured = (Vec<Observation>, Vec<Lookup>, usize);

async fn measure(
    client: Client,
    pairs: &[Pair],
    config: &RunConfig,
    progress: &dyn Progress,
) -> Result<Measured, EvalError> {
    let clients = config.clients.max(1);
    // The same `a` often stands in several pairs; it is stored once.
    let mut distinct: HashMap<String, String> = HashMap::new();
    for p in pairs {
        distinct.entry(normalize(&p.a)).or_insert_with(|| p.a.clone());
    }
    let texts: Vec<String> = distinct.into_values().collect();
    let mut stored = futures_util::stream::iter(&texts)
        .map(|query| {
            let mut client = client.clone();
            let request = StoreRequest {
                namespace: config.namespace.clone(),
                response: format!("cached answer to: {query}"),
                query: query.clone(),
                ..Default::default()
            };
            async move { Ok::<_, EvalError>((client.store(routed(request)).await?.into_inner().id, query.clone())) }
        })
        .buffer_unordered(clients);
    // Entry id -> its query: a lookup names only the id of the nearest entry.
    let (mut ids, mut done) = (HashMap::with_capacity(texts.len()), 0);
    while let Some((id, query)) = stored.try_next().await? {
        ids.insert(id, query);
        done += 1;
        progress.stored(done);
    }

    let (from, with_context) = (config.from, config.follow_up_context);
    let mut answers = futures_util::stream::iter(pairs.iter().enumerate())
        .map(|(i, pair)| {
            let mut client = client.clone();
            let request = LookupRequest {
                namespace: config.namespace.clone(),
                query: pair.b.clone(),
                similarity_threshold: Some(from),
                context: if with_context { vec![pair.a.clone()] } else { Vec::new() },
                ..Default::default()
            };
            async move { Ok::<_, EvalError>((i, client.lookup(routed(request)).await?.into_inner())) }
        })
        .buffer_unordered(clients);
    // Answers come in any order; the results keep the pairs' order.
    let mut slots: Vec<Option<(Observation, Lookup)>> = vec![None; pairs.len()];
    let mut done = 0;
    while let Some((i, answer)) = answers.try_next().await? {
        slots[i] = Some(observe(&pairs[i], &answer, &ids));
        done += 1;
        progress.looked_up(done);
    }
    let (observations, lookups) = slots.into_iter().map(|s| s.expect("every pair looked up")).unzip();
    Ok((observations, lookups, texts.len()))
}

/// Thresholds of the printed table: a coarse grid plus the one reported.
pub fn table_rows(from: f32, threshold: f32) -> Vec<f32> {
    let mut rows: Vec<f32> = super::thresholds(0.70, 0.95, 0.05).into_iter().filter(|&t| t >= from).collect();
    if !rows.iter().any(|&t| (t - threshold).abs() < 5e-4) {
        rows.push(threshold);
        rows.sort_by(f32::total_cmp);
    }
    rows
}

/// The curves of a run, with guards off and on, from `from` to 0.99 by 0.01.
pub fn curves(result: &RunResult, from: f32) -> (Vec<super::Point>, Vec<super::Point>) {
    let grid = super::thresholds(from, 0.99, 0.01);
    (super::curve(&result.observations, false, &grid), super::curve(&result.observations, true, &grid))
}

/// The false-hit rate DESIGN.md sets as the target, for the "best recall" line.
pub const TARGET_FALSE_HIT_RATE: f64 = 0.02;

/// The text `semcache eval` prints.
pub fn render(name: &str, result: &RunResult, from: f32, threshold: f32) -> String {
    use std::fmt::Write as _;
    let (off, on) = curves(result, from);
    let mut out = super::render_summary(
        name,
        from,
        &super::at(&result.observations, false, threshold),
        &super::at(&result.observations, true, threshold),
    );
    let has_duplicates = result.observations.iter().any(|o| o.duplicate);
    for (label, curve) in [("guards off", &off), ("guards on ", &on)].into_iter().filter(|_| has_duplicates) {
        let _ = match super::best_recall_within_false_hits(curve, TARGET_FALSE_HIT_RATE).filter(|p| p.correct > 0) {
            Some(p) => writeln!(
                out,
                "  {label}: best recall with false-hit rate <= {TARGET_FALSE_HIT_RATE}: {:.3} at {:.2} (precision {:.3}, false-hit rate {:.3})",
                p.recall, p.threshold, p.precision, p.false_hit_rate
            ),
            None => writeln!(out, "  {label}: no threshold in [{from:.2}, 0.99] keeps the false-hit rate <= {TARGET_FALSE_HIT_RATE} with recall"),
        };
    }
    out.push('\n');
    out.push_str(&super::render_table(&off, &on, &table_rows(from, threshold)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::{Entry, GuardVeto};

    #[test]
    fn observations_tell_the_nearest_from_what_was_served() {
        let texts: HashMap<String, String> = [
            ("1".to_string(), "Convert 50 miles to km".to_string()),
            ("2".to_string(), "convert 5 MILES to km".to_string()),
        ]
        .into();
        let pair = Pair { a: "Convert 5 miles to km".into(), b: "How many km are 5 miles?".into(), duplicate: true };
        let hit = LookupResponse {
            hit: true,
            similarity: 0.93,
            nearest_id: "2".into(),
            entry: Some(Entry { id: "2".into(), query: texts["2"].clone(), ..Default::default() }),
            ..Default::default()
        };
        let (o, l) = observe(&pair, &hit, &texts);
        assert_eq!(o.nearest.map(|m| (m.similarity, m.own)), Some((0.93, true)), "own by normalised text");
        assert_eq!(o.guarded, o.nearest);
        assert_eq!((l.served.as_deref(), l.veto.as_deref()), (Some("convert 5 MILES to km"), None));

        let vetoed = LookupResponse {
            similarity: 0.95,
            nearest_id: "1".into(),
            veto: Some(GuardVeto {
                id: "1".into(),
                similarity: 0.95,
                guard: "number".into(),
                detail: "5 vs 50".into(),
            }),
            ..Default::default()
        };
        let (o, l) = observe(&pair, &vetoed, &texts);
        assert_eq!(o.nearest.map(|m| (m.similarity, m.own)), Some((0.95, false)));
        assert!(o.guarded.is_none());
        assert_eq!(l.veto.as_deref(), Some("number: 5 vs 50"));

        let miss = LookupResponse { similarity: 0.4, nearest_id: "1".into(), ..Default::default() };
        let (o, _) = observe(&pair, &miss, &texts);
        assert!(o.guarded.is_none() && o.nearest.is_some_and(|m| !m.own));
        let (o, _) = observe(&pair, &LookupResponse::default(), &texts);
        assert!(o.nearest.is_none() && o.guarded.is_none());
    }
}
