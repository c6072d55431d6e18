//! Lookup: the exact-repeat path first (no model), then the nearest live entry of the
//! request's partition, the threshold and the hit guards.

use super::counters::Counters;
use super::namespaces::NamespaceState;
use super::{context, guard, validate, Cache, CacheError, Entry, GuardVeto, LookupOutcome, LookupRequest, MissReason};
use crate::index::{Candidate, Partition};
use crate::store::{keys, EntryRecord};
use crate::text::normalize;
use std::collections::BTreeMap;
use std::sync::Arc;

/// Candidates taken from the index per lookup: the first live one wins, the rest cover
/// entries that expired but are not purged yet.
const CANDIDATES: usize = 8;

/// What the first, model-free step of a lookup found.
enum Before {
    /// The answer, without the model: an exact repeat, or nothing to search.
    Answered(LookupOutcome),
    /// The partition to search once the query is embedded.
    Search(Arc<Partition>),
}

/// The part of a lookup's settings that the blocking steps need.
#[derive(Clone)]
struct Ask {
    namespace: String,
    query: String,
    scope: BTreeMap<String, String>,
    threshold: f32,
    guards: bool,
}

impl Cache {
    pub async fn lookup(self: &Arc<Self>, req: LookupRequest) -> Result<LookupOutcome, CacheError> {
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
        Counters::bump(&self.totals.lookups);
        if let Some(ns) = &ns {
            Counters::bump(&ns.counters.lookups);
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
        ns: &NamespaceState,
        req: LookupRequest,
        normalized: String,
        context: Option<String>,
    ) -> Result<LookupOutcome, CacheError> {
        let (threshold, floor, guards) =
            ns.read(|r| (r.similarity_threshold, r.threshold_floor, r.hit_guards.unwrap_or(self.defaults.hit_guards)));
        let ask = Ask {
            // A per-request threshold may be stricter than the namespace's, never laxer than its floor.
            threshold: req.similarity_threshold.map_or(threshold, |t| t.max(floor)),
            scope: context::scoped(req.scope, context),
            namespace: req.namespace,
            query: req.query,
            guards,
        };
        let first = ask.clone();
        let partition = match self.blocking("Lookup", move |c| c.before_model(&first, &normalized)).await? {
            Before::Answered(outcome) => return Ok(outcome),
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
            return Ok(Before::Answered(self.hit(outcome, entry, now)));
        }
        match self.index.partition(&ask.namespace, &keys::scope_id(&ask.scope)) {
            Some(partition) if !partition.is_empty() => Ok(Before::Search(partition)),
            _ => Ok(Before::Answered(outcome)),
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

    /// The nearest live entry of the partition, served if it clears the threshold and the
    /// guards.
    fn nearest(&self, ask: &Ask, partition: &Partition, vector: &[f32]) -> Result<LookupOutcome, CacheError> {
        let mut outcome =
            LookupOutcome { threshold: ask.threshold, miss_reason: MissReason::Empty, ..Default::default() };
        let now = self.now();
        let candidates: Vec<Candidate> = partition.search(vector, CANDIDATES);
        for c in candidates {
            let Some(entry) = self.store.get_entry(&ask.namespace, c.id)? else { continue };
            // Expired but not yet swept: never served.
            if !entry.is_live(now) || entry.scope != ask.scope {
                continue;
            }
            let similarity = c.similarity.clamp(-1.0, 1.0);
            if outcome.nearest_id.is_none() {
                outcome.similarity = similarity;
                outcome.nearest_id = Some(entry.id);
                outcome.miss_reason = MissReason::BelowThreshold;
            }
            if similarity < ask.threshold {
                break;
            }
            // A vetoed nearest entry is a miss: the candidates behind it are further from the
            // query and, measured on every data set, served more wrong answers than right ones.
            if ask.guards {
                if let Some(veto) = guard::check(&guard::Words::of(&ask.query), &guard::Words::of(&entry.query)) {
                    outcome.veto = Some(GuardVeto { id: entry.id, similarity, veto });
                    outcome.miss_reason = MissReason::Vetoed;
                    break;
                }
            }
            outcome.miss_reason = MissReason::None;
            return Ok(self.hit(outcome, entry, now));
        }
        Ok(outcome)
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
