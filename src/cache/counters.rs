//! Counts since start, per namespace and in total: what `Stats` and the metrics report.

use super::validate;
use super::{Cache, CacheError, LookupOutcome, NamespaceState, Stats};
use std::sync::atomic::{AtomicU64, Ordering};

#[derive(Default)]
pub(super) struct Counters {
    pub lookups: AtomicU64,
    pub hits: AtomicU64,
    pub exact_hits: AtomicU64,
    pub misses: AtomicU64,
    pub stores: AtomicU64,
    pub evictions: AtomicU64,
    pub expirations: AtomicU64,
    pub saved_input_tokens: AtomicU64,
    pub saved_output_tokens: AtomicU64,
    /// An f64 in its bit pattern, added to by compare-and-swap.
    pub saved_cost_usd: AtomicU64,
    pub explores: AtomicU64,
    pub probes_correct: AtomicU64,
    pub probes_wrong: AtomicU64,
    pub feedback_correct: AtomicU64,
    pub feedback_wrong: AtomicU64,
}

impl Counters {
    pub fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn outcome(&self, outcome: &LookupOutcome) {
        let Some(entry) = &outcome.entry else {
            Self::bump(&self.misses);
            if outcome.miss_reason == super::MissReason::Explore {
                Self::bump(&self.explores);
            }
            return;
        };
        Self::bump(&self.hits);
        if outcome.exact {
            Self::bump(&self.exact_hits);
        }
        self.saved_input_tokens.fetch_add(entry.usage.input_tokens, Ordering::Relaxed);
        self.saved_output_tokens.fetch_add(entry.usage.output_tokens, Ordering::Relaxed);
        let add = |bits: u64| Some((f64::from_bits(bits) + entry.usage.cost_usd).to_bits());
        let _ = self.saved_cost_usd.fetch_update(Ordering::Relaxed, Ordering::Relaxed, add);
    }

    pub fn read(&self, entries: u64, bytes: u64) -> Stats {
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        Stats {
            lookups: load(&self.lookups),
            hits: load(&self.hits),
            exact_hits: load(&self.exact_hits),
            misses: load(&self.misses),
            stores: load(&self.stores),
            entries,
            bytes,
            evictions: load(&self.evictions),
            expirations: load(&self.expirations),
            saved_input_tokens: load(&self.saved_input_tokens),
            saved_output_tokens: load(&self.saved_output_tokens),
            saved_cost_usd: f64::from_bits(load(&self.saved_cost_usd)),
            explores: load(&self.explores),
            probes_correct: load(&self.probes_correct),
            probes_wrong: load(&self.probes_wrong),
            feedback_correct: load(&self.feedback_correct),
            feedback_wrong: load(&self.feedback_wrong),
            estimated_error_rate: 0.0,
        }
    }
}

impl Cache {
    /// Bumps a counter of the totals and of the namespace.
    pub(super) fn count(&self, namespace: &str, counter: impl Fn(&Counters) -> &AtomicU64) {
        Counters::bump(counter(&self.totals));
        if let Some(ns) = self.namespace(namespace) {
            Counters::bump(counter(&ns.counters));
        }
    }

    /// Counters since start; `namespace` empty means all namespaces. `entries` is what the
    /// index holds (expired entries count until the sweeper purges them).
    pub fn stats(&self, namespace: &str) -> Result<Stats, CacheError> {
        if namespace.is_empty() {
            let mut stats = self.totals.read(self.index.total() as u64, self.ledger.total_bytes());
            // Over all verified namespaces, weighted by their lookups.
            let (mut wrong, mut lookups) = (0.0, 0.0);
            for ns in self.namespaces.read().values() {
                let n = ns.model.budget.verified_lookups() as f64;
                wrong += ns.model.budget.estimated_error_rate() * n;
                lookups += n;
            }
            stats.estimated_error_rate = if lookups > 0.0 { wrong / lookups } else { 0.0 };
            return Ok(stats);
        }
        validate::namespace(namespace)?;
        let ns = self.namespace(namespace).ok_or_else(|| CacheError::NamespaceNotFound(namespace.to_owned()))?;
        Ok(self.namespace_stats(namespace, &ns))
    }

    fn namespace_stats(&self, name: &str, ns: &NamespaceState) -> Stats {
        let mut stats = ns.counters.read(self.index.len(name) as u64, self.ledger.namespace_bytes(name));
        stats.estimated_error_rate = ns.model.budget.estimated_error_rate();
        stats
    }

    /// Every namespace's counters, by name: what the metrics endpoint reports.
    pub fn all_stats(&self) -> Vec<(String, Stats)> {
        let map = self.namespaces.read();
        let mut all: Vec<_> = map.iter().map(|(name, ns)| (name.clone(), self.namespace_stats(name, ns))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }
}
