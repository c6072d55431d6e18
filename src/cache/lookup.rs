//! Lookup: the exact-repeat path first (no model), then the nearest live entry of the
//! request's partition, the threshold and the hit guards.

use super::counters::Counters;
use super::learner::{Decision, Features, Offset, EXPLORE_MIN_SIMILARITY};
use super::namespaces::NamespaceState;
use super::{context, guard, validate, Cache, CacheError, Entry, GuardVeto, LookupOutcome, LookupRequest, MissReason};
use crate::index::{dot, Partition};
use crate::store::{keys, EntryRecord};
use crate::text::normalize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Candidates taken from the index per lookup: the first live one wins, the rest cover
/// entries that expired but are not purged yet.
pub(super) const CANDIDATES: usize = 8;

/// Candidates read from the index before re-ranking. Its similarities come from int8 codes
/// (within a few thousandths), so it is asked for twice as many, and the best `CANDIDATES` are
/// picked by the exact cosine to the stored f32 vectors: what a lookup reports and decides
/// on is the exact similarity, as before the graphs were quantised.
const RERANK: usize = 2 * CANDIDATES;

/// What the first, model-free step of a lookup found.
enum Before {
    /// The answer, without the model: an exact repeat, or nothing to search (boxed: an
    /// outcome with its entries is large, and this is moved across the blocking pool).
    Answered(Box<LookupOutcome>),
    /// The partition to search once the query is embedded.
    Search(Arc<Partition>),
}

/// The part of a lookup's settings that the blocking steps need.
#[derive(Clone)]
struct Ask {
    namespace: String,
    query: String,
    /// `keys::query_id` of the normalised query: what refusals are recorded under.
    query_id: u64,
    scope: BTreeMap<String, String>,
    /// Static mode: the similarity threshold. Verified mode: the floor below which nothing is
    /// served (the namespace's, or the request's threshold if higher).
    threshold: f32,
    guards: bool,
    /// Verified mode: the namespace (its model and budget) and its error bound.
    verified: Option<(Arc<NamespaceState>, f64)>,
}

/// A live candidate of a search.
pub(super) struct Neighbour {
    pub id: u64,
    pub similarity: f32,
    /// Its answer's identity (0 = unknown).
    pub answer: u64,
    /// Its record, as read for the re-rank: the lookup serves from it without a second read.
    pub record: EntryRecord,
}

/// A candidate still worth considering: live, and not refused for this query.
struct Live {
    similarity: f32,
    answer: u64,
    offset: Offset,
    record: EntryRecord,
}

impl Cache {
    /// Whether [`Cache::lookup`] would refuse this request before doing any work: so that a
    /// batch can refuse a bad element before any of it is answered.
    pub fn check_lookup(&self, req: &LookupRequest) -> Result<(), CacheError> {
        self.check_lookup_opening(req).map(|_| ())
    }

    /// The checks of a Lookup, with what they produce: the context key and the namespace.
    fn check_lookup_opening(
        &self,
        req: &LookupRequest,
    ) -> Result<(Option<String>, Option<Arc<NamespaceState>>), CacheError> {
        validate::namespace(&req.namespace)?;
        validate::text("query", &req.query, self.limits.max_query_bytes, "--max-query-bytes")?;
        validate::map("scope", &req.scope, self.limits.scope())?;
        if let Some(t) = req.similarity_threshold {
            validate::threshold("similarity_threshold", t)?;
        }
        let context = context::key(&req.context, &req.context_key)?;
        let ns = self.namespace(&req.namespace);
        if let Some(ns) = &ns {
            self.usable(ns, &req.namespace)?;
        }
        Ok((context, ns))
    }

    pub async fn lookup(self: &Arc<Self>, req: LookupRequest) -> Result<LookupOutcome, CacheError> {
        let (context, ns) = self.check_lookup_opening(&req)?;
        Counters::bump(&self.totals.lookups);
        if let Some(ns) = &ns {
            Counters::bump(&ns.counters.lookups);
            if let Some(delta) = ns.error_bound() {
                ns.model.budget.count_lookup(delta);
            }
        }
        let normalized = normalize(&req.query);
        let outcome = match &ns {
            // A generic follow-up means something only in its conversation.
            Some(_) if context.is_none() && context::is_generic(&normalized) => {
                LookupOutcome { miss_reason: MissReason::NeedsContext, ..Default::default() }
            }
            Some(ns) => self.find(ns, req, normalized, context).await?,
            None => LookupOutcome { miss_reason: MissReason::Empty, ..Default::default() },
        };
        self.totals.outcome(&outcome);
        if let Some(ns) = &ns {
            ns.counters.outcome(&outcome);
        }
        Ok(outcome)
    }

    async fn find(
        self: &Arc<Self>,
        ns: &Arc<NamespaceState>,
        req: LookupRequest,
        normalized: String,
        context: Option<String>,
    ) -> Result<LookupOutcome, CacheError> {
        let (threshold, floor, guards) =
            ns.read(|r| (r.similarity_threshold, r.threshold_floor, r.hit_guards.unwrap_or(self.defaults.hit_guards)));
        let delta = ns.error_bound();
        let verified = delta.is_some();
        let threshold = match (verified, req.similarity_threshold) {
            // A per-request threshold may be stricter than the namespace's, never laxer than its floor.
            (false, requested) => requested.map_or(threshold, |t| t.max(floor)),
            // Verified mode decides by what it learned; a request's threshold only adds a floor.
            (true, requested) => requested.unwrap_or(0.0).max(floor),
        };
        let ask = Ask {
            threshold,
            scope: context::scoped(req.scope, context),
            namespace: req.namespace,
            query: req.query,
            query_id: keys::query_id(&normalized),
            guards,
            verified: delta.map(|d| (ns.clone(), d)),
        };
        let first = ask.clone();
        let partition = match self.blocking("Lookup", move |c| c.before_model(&first, &normalized)).await? {
            Before::Answered(outcome) => return Ok(*outcome),
            Before::Search(partition) => partition,
        };
        let vector = self.embed(&ask.query).await?;
        self.blocking("Lookup", move |c| c.nearest(&ask, &partition, &vector)).await
    }

    /// The exact-repeat path, and whether there is anything to search at all: an empty
    /// partition is a miss without spending a forward pass.
    fn before_model(&self, ask: &Ask, normalized: &str) -> Result<Before, CacheError> {
        let mut outcome =
            LookupOutcome { threshold: ask.threshold, miss_reason: MissReason::Empty, ..Default::default() };
        let now = self.now();
        let exact = keys::exact_key(&ask.namespace, &ask.scope, normalized);
        if let Some(entry) = self.exact_entry(&exact, &ask.scope, now)? {
            outcome.similarity = 1.0;
            outcome.nearest_id = Some(entry.id);
            outcome.exact = true;
            outcome.miss_reason = MissReason::None;
            return Ok(Before::Answered(Box::new(self.hit(outcome, entry, now))));
        }
        match self.index.partition(&ask.namespace, &keys::scope_id(&ask.scope)) {
            Some(partition) if !partition.is_empty() => Ok(Before::Search(partition)),
            _ => Ok(Before::Answered(Box::new(outcome))),
        }
    }

    /// A live entry through the exact-repeat key.
    fn exact_entry(
        &self,
        exact: &[u8; 32],
        scope: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<Option<EntryRecord>, CacheError> {
        let Some((ns, id)) = self.store.get_exact(exact)? else { return Ok(None) };
        Ok(self.store.get_entry(&ns, id)?.filter(|e| e.is_live(now) && &e.scope == scope))
    }

    /// The nearest live entry of the partition that is not refused for this query, served if
    /// it clears the threshold (static mode) or the error budget (verified mode) and the guards.
    fn nearest(&self, ask: &Ask, partition: &Partition, vector: &[f32]) -> Result<LookupOutcome, CacheError> {
        let mut outcome =
            LookupOutcome { threshold: ask.threshold, miss_reason: MissReason::Empty, ..Default::default() };
        let now = self.now();
        let (neighbours, full) = self.live_neighbours(partition, vector, now)?;
        let screened = self.learning.screen(ask.query_id, neighbours.iter().map(|n| n.id));
        let mut live: Vec<Live> = neighbours
            .into_iter()
            .zip(screened)
            .filter_map(|(n, offset)| {
                Some(Live { similarity: n.similarity, answer: n.answer, offset: offset?, record: n.record })
            })
            .collect();
        for i in 0..live.len() {
            let entry = std::mem::take(&mut live[i].record);
            let candidate = &live[i];
            if !entry.is_live(now) || entry.scope != ask.scope {
                continue;
            }
            outcome.similarity = candidate.similarity;
            outcome.nearest_id = Some(entry.id);
            outcome.miss_reason = MissReason::BelowThreshold;
            if candidate.similarity < ask.threshold {
                return Ok(outcome);
            }
            // A vetoed nearest entry is a miss: the candidates behind it are further from the
            // query and, measured on every data set, served more wrong answers than right ones.
            if ask.guards {
                if let Some(veto) = guard::check(&guard::Words::of(&ask.query), &guard::Words::of(&entry.query)) {
                    outcome.veto = Some(GuardVeto { id: entry.id, similarity: candidate.similarity, veto });
                    outcome.miss_reason = MissReason::Vetoed;
                    return Ok(outcome);
                }
            }
            if let Some((ns, delta)) = &ask.verified {
                if candidate.similarity < EXPLORE_MIN_SIMILARITY {
                    return Ok(outcome);
                }
                let neighbours: Vec<(f32, u64)> = live[i..].iter().map(|c| (c.similarity, c.answer)).collect();
                let features = Features::of(&neighbours, full).expect("the nearest is among them");
                let prediction = ns.model.fit.read().predict(&features, candidate.offset, ns.model.calibration());
                let audit = match ns.model.budget.decide(prediction, *delta) {
                    Decision::Serve => None,
                    Decision::Explore => Some(0.0),
                    // Recorded with what the model expected, so the audits can be scored.
                    Decision::Audit => Some((prediction.model_p_wrong as f32).max(f32::MIN_POSITIVE)),
                };
                if let Some(audit_p_wrong) = audit {
                    outcome.miss_reason = MissReason::Explore;
                    let signer = &self.learning.signer;
                    let token = signer.issue(&ask.namespace, entry.id, ask.query_id, features, audit_p_wrong, now);
                    outcome.probe_token = Some(token);
                    let hits = self.ledger.hit_count(entry.id).unwrap_or(0);
                    outcome.probe_entry = Some(Entry::from_record(entry, hits));
                    return Ok(outcome);
                }
            }
            outcome.miss_reason = MissReason::None;
            return Ok(self.hit(outcome, entry, now));
        }
        Ok(outcome)
    }

    /// The live candidates of a search, nearest first by exact cosine (the vectors are read
    /// from RocksDB, liveness from the ledger), and whether the search returned as many as it
    /// was asked for.
    pub(super) fn live_neighbours(
        &self,
        partition: &Partition,
        vector: &[f32],
        now: i64,
    ) -> Result<(Vec<Neighbour>, bool), CacheError> {
        let approximate = partition.search(vector, RERANK);
        let full = approximate.len() >= CANDIDATES;
        let ids: Vec<u64> = approximate.iter().map(|c| c.id).collect();
        let records = self.store.get_entries(partition.namespace(), &ids)?;
        // An id without a record was deleted since the search.
        let mut exact: Vec<(f32, EntryRecord)> = records
            .into_iter()
            .flatten()
            .filter(|r| r.vector.len() == vector.len())
            .map(|r| (dot(vector, &r.vector), r))
            .collect();
        exact.sort_by(|a, b| b.0.total_cmp(&a.0));
        exact.truncate(CANDIDATES);
        let known = self.ledger.candidates(exact.iter().map(|c| c.1.id));
        let live = exact
            .into_iter()
            .zip(known)
            .filter_map(|((similarity, record), known)| {
                let (expires_at, answer) = known?;
                // Expired but not yet swept: never served.
                (expires_at == 0 || expires_at > now).then_some(Neighbour {
                    id: record.id,
                    similarity: similarity.clamp(-1.0, 1.0),
                    answer,
                    record,
                })
            })
            .collect();
        Ok((live, full))
    }

    /// A hit: counted and made most recently used in memory only (flushed lazily). An entry
    /// removed between the read and now is not served.
    fn hit(&self, mut outcome: LookupOutcome, entry: EntryRecord, now: i64) -> LookupOutcome {
        match self.ledger.touch(entry.id, now) {
            Some(hit_count) => outcome.entry = Some(Entry::from_record(entry, hit_count)),
            None => outcome.miss_reason = MissReason::Empty,
        }
        outcome
    }
}
