//! Verified mode inside the cache: what each namespace and entry learned, how it is restored at
//! start, judged on a Store with a probe token, taught by Feedback, and forgotten with its
//! entry. The model and the budget themselves are in `learner`, the tokens in `probe`.
//!
//! Learning happens on Store and Feedback only. The Lookup path reads a fit and an offset
//! under read locks and bumps atomics; the refit (a few Newton steps over the namespace's
//! cells) runs after the synced write that made the observation durable.

use super::counters::Counters;
use super::learner::{Budget, Cells, EntryEvidence, Features, Fit, Offset, Source};
use super::namespaces::NamespaceState;
use super::probe::{Probe, Signer};
use super::{validate, Cache, CacheError, Evidence, FeedbackOutcome, FeedbackRequest, Observation};
use crate::index::dot;
use crate::store::{keys, EntryRecord, ObservationRecord, Store};
use crate::text::{normalize, normalize_answer};
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// A namespace's pooled observations, its current fit and its error budget.
pub(super) struct NamespaceModel {
    cells: Mutex<Cells>,
    pub fit: RwLock<Fit>,
    pub budget: Budget,
    /// The audits' calibration factor, as f64 bits (read on every verified lookup).
    calibration: AtomicU64,
}

impl Default for NamespaceModel {
    fn default() -> Self {
        Self {
            cells: Mutex::default(),
            fit: RwLock::default(),
            budget: Budget::default(),
            calibration: AtomicU64::new(1f64.to_bits()),
        }
    }
}

impl NamespaceModel {
    /// Adds and removes observations, then refits.
    fn learn(&self, add: &[ObservationRecord], remove: &[ObservationRecord]) -> Fit {
        let mut cells = self.cells.lock();
        remove.iter().for_each(|o| cells.remove(o));
        add.iter().for_each(|o| cells.add(o));
        let fit = cells.refit(&self.fit.read());
        *self.fit.write() = fit;
        self.calibration.store(cells.calibration().to_bits(), Ordering::Relaxed);
        fit
    }

    pub fn calibration(&self) -> f64 {
        f64::from_bits(self.calibration.load(Ordering::Relaxed))
    }

    /// Forgets an entry's observations; the next observation refits.
    fn forget(&self, observations: impl IntoIterator<Item = ObservationRecord>) {
        let mut cells = self.cells.lock();
        observations.into_iter().for_each(|o| cells.remove(&o));
    }
}

/// Evidence updates of the same entry are serialised by one of these.
const EVIDENCE_STRIPES: usize = 64;

/// What is learned per entry, and the probe tokens.
pub(super) struct Learning {
    pub signer: Signer,
    entries: RwLock<HashMap<u64, EntryEvidence>>,
    /// Taken by entry id from reading its evidence until the batch with the new one is
    /// durable, so two Stores judging one entry cannot lose an observation. Lock order: these
    /// before `deleting` and the exact-key stripes.
    updates: Vec<Mutex<()>>,
}

impl Learning {
    /// Loads every entry's evidence into its namespace's cells and fits each namespace.
    pub fn open(
        store: &Store,
        namespaces: &HashMap<String, Arc<NamespaceState>>,
        probe_ttl_seconds: u64,
    ) -> Result<Self, CacheError> {
        let signer = Signer::new(store.probe_key()?, probe_ttl_seconds, store.used_probes()?);
        let mut entries = HashMap::new();
        let mut by_namespace: HashMap<&str, Vec<u64>> = HashMap::new();
        for row in store.scan_evidence() {
            let (namespace, id, record) = row?;
            let Some((name, ns)) = namespaces.get_key_value(&namespace) else { continue };
            let evidence = EntryEvidence::from_record(record);
            ns.model.count_in(&evidence);
            by_namespace.entry(name.as_str()).or_default().push(id);
            entries.insert(id, evidence);
        }
        for (name, ids) in by_namespace {
            let model = &namespaces[name].model;
            // From the prior, two refits: Newton's few steps each, converged.
            model.learn(&[], &[]);
            let fit = model.learn(&[], &[]);
            for id in ids {
                if let Some(e) = entries.get_mut(&id) {
                    e.refit(&fit);
                }
            }
        }
        Ok(Self {
            signer,
            entries: RwLock::new(entries),
            updates: (0..EVIDENCE_STRIPES).map(|_| Mutex::new(())).collect(),
        })
    }

    /// Serialises evidence updates of entry `id`.
    pub fn lock(&self, id: u64) -> parking_lot::MutexGuard<'_, ()> {
        self.updates[(id % EVIDENCE_STRIPES as u64) as usize].lock()
    }

    /// For a lookup of `query`: per candidate, `None` where it is refused for this query, else
    /// its learned offset.
    pub fn screen(&self, query: u64, ids: impl Iterator<Item = u64>) -> Vec<Option<Offset>> {
        let entries = self.entries.read();
        ids.map(|id| match entries.get(&id) {
            None => Some(Offset::default()),
            Some(e) if e.refuses(query) => None,
            Some(e) => Some(e.offset),
        })
        .collect()
    }

    fn get(&self, id: u64) -> EntryEvidence {
        self.entries.read().get(&id).cloned().unwrap_or_default()
    }

    /// What an entry has learned, as callers see it.
    pub fn evidence(&self, id: u64) -> Evidence {
        self.entries.read().get(&id).map(to_domain).unwrap_or_default()
    }

    pub fn forget(&self, id: u64, ns: Option<&NamespaceState>) {
        if let Some(e) = self.entries.write().remove(&id) {
            if let Some(ns) = ns {
                ns.model.forget(e.observations);
            }
        }
    }

    fn put(&self, id: u64, evidence: EntryEvidence) {
        self.entries.write().insert(id, evidence);
    }
}

impl NamespaceModel {
    /// Counts an entry's observations in at start (the fit follows once all are in).
    fn count_in(&self, evidence: &EntryEvidence) {
        let mut cells = self.cells.lock();
        evidence.observations.iter().for_each(|o| cells.add(o));
    }
}

fn to_domain(e: &EntryEvidence) -> Evidence {
    Evidence {
        observations: e
            .observations
            .iter()
            .map(|o| Observation {
                features: Features::of_observation(o),
                correct: o.correct,
                source: if o.source == Source::Feedback as u32 { Source::Feedback } else { Source::Probe },
                audit_p_wrong: o.audit_p_wrong,
            })
            .collect(),
        refused_queries: e.refused.clone(),
    }
}

pub(super) fn from_domain(e: &Evidence) -> EntryEvidence {
    let mut evidence = EntryEvidence::default();
    for o in &e.observations {
        let audit_p_wrong = if o.audit_p_wrong.is_finite() { o.audit_p_wrong.clamp(0.0, 1.0) } else { 0.0 };
        evidence.observe(ObservationRecord { audit_p_wrong, ..o.features.observation(o.correct, o.source) });
    }
    for q in &e.refused_queries {
        evidence.refuse(*q);
    }
    evidence
}

/// What a probe token taught, ready to be written with the Store that returned it.
pub(super) struct Judged {
    pub probe: Probe,
    /// `None` when the probed entry has gone since the Lookup.
    pub learned: Option<Learned>,
}

pub(super) struct Learned {
    pub entry: u64,
    pub correct: bool,
    pub observation: ObservationRecord,
    pub dropped: Option<ObservationRecord>,
    pub evidence: EntryEvidence,
    /// The probed entry's answer: a Store judged right shares it.
    pub answer: u64,
}

impl Cache {
    /// Checks a Store's probe token before the model's work (it does not use it yet).
    pub(super) fn open_probe(&self, namespace: &str, query: &str, token: &str) -> Result<Probe, CacheError> {
        let query = keys::query_id(&normalize(query));
        self.learning.signer.open(namespace, query, token, self.now()).map_err(CacheError::Probe)
    }

    /// Claims the token and judges the probed entry's answer against the fresh `response`
    /// (or takes the caller's `verdict`). The claim is released if the Store then fails.
    pub(super) fn judge(
        &self,
        namespace: &str,
        probe: Probe,
        response: &str,
        verdict: Option<bool>,
    ) -> Result<Judged, CacheError> {
        self.learning.signer.claim(&probe).map_err(CacheError::Probe)?;
        let probed = match self.store.get_entry(namespace, probe.entry) {
            Ok(entry) => entry.filter(|e| e.is_live(self.now())),
            Err(e) => {
                self.learning.signer.release(&probe);
                return Err(e.into());
            }
        };
        let learned = probed.and_then(|entry| {
            let answer = self.ledger.answer(entry.id)?;
            let correct = verdict.unwrap_or_else(|| normalize_answer(response) == normalize_answer(&entry.response));
            let observation = ObservationRecord {
                audit_p_wrong: probe.audit_p_wrong,
                ..probe.features.observation(correct, Source::Probe)
            };
            let mut evidence = self.learning.get(entry.id);
            let dropped = evidence.observe(observation);
            Some(Learned { entry: entry.id, correct, observation, dropped, evidence, answer })
        });
        Ok(Judged { probe, learned })
    }

    /// After the Store's batch is durable: the probed entry's evidence and the namespace's fit.
    pub(super) fn apply_judged(&self, ns: &NamespaceState, judged: Judged) {
        let Some(mut l) = judged.learned else { return };
        // Evicted or replaced by the same batch: its evidence went with it.
        if !self.ledger.contains(l.entry) {
            return;
        }
        let fit = ns.model.learn(&[l.observation], l.dropped.as_slice());
        l.evidence.refit(&fit);
        self.learning.put(l.entry, l.evidence);
        for counters in [&self.totals, &ns.counters] {
            Counters::bump(if l.correct { &counters.probes_correct } else { &counters.probes_wrong });
        }
    }

    /// An imported entry's evidence, after the batch that wrote it.
    pub(super) fn apply_imported(&self, ns: &NamespaceState, id: u64, mut evidence: EntryEvidence) {
        let observations: Vec<ObservationRecord> = evidence.observations.iter().copied().collect();
        let fit = ns.model.learn(&observations, &[]);
        evidence.refit(&fit);
        self.learning.put(id, evidence);
    }

    /// Forgets used probe tokens that have expired (their expiry refuses them from now on).
    pub fn sweep_probes(&self) -> Result<usize, CacheError> {
        let gone = self.learning.signer.expired(self.now());
        if gone.is_empty() {
            return Ok(0);
        }
        let mut batch = self.store.batch();
        gone.iter().for_each(|nonce| batch.delete_used_probe(*nonce));
        self.store.write(batch)?;
        Ok(gone.len())
    }

    /// Reports whether an entry's answer was right for a query.
    pub async fn feedback(self: &Arc<Self>, req: FeedbackRequest) -> Result<FeedbackOutcome, CacheError> {
        validate::namespace(&req.namespace)?;
        validate::text("query", &req.query, self.limits.max_query_bytes, "--max-query-bytes")?;
        let id = validate::entry_id(&req.entry_id)?;
        let ns = self.namespace(&req.namespace).ok_or_else(|| CacheError::NamespaceNotFound(req.namespace.clone()))?;
        self.usable(&ns, &req.namespace)?;
        if !self.ledger.contains(id) {
            return Err(CacheError::EntryNotFound { namespace: req.namespace, id });
        }
        let vector = self.embed(&req.query).await?;
        self.blocking("Feedback", move |this| this.feedback_blocking(&ns, req, id, vector)).await
    }

    fn feedback_blocking(
        &self,
        ns: &NamespaceState,
        req: FeedbackRequest,
        id: u64,
        vector: Vec<f32>,
    ) -> Result<FeedbackOutcome, CacheError> {
        let _update = self.learning.lock(id);
        let now = self.now();
        let not_found = || CacheError::EntryNotFound { namespace: req.namespace.clone(), id };
        let entry = self.store.get_entry(&req.namespace, id)?.filter(|e| e.is_live(now)).ok_or_else(not_found)?;
        let features = self.features_for(&entry, &vector, now)?;
        let normalized = normalize(&req.query);
        let mut evidence = self.learning.get(id);
        let observation = features.observation(req.correct, Source::Feedback);
        let dropped = evidence.observe(observation);
        // Wrong for its own question, or for more queries than an entry may be refused for:
        // no query should get this answer again.
        let refusable = req.correct || evidence.refuse(keys::query_id(&normalized));
        if !req.correct && (!refusable || normalized == normalize(&entry.query)) {
            let observations = evidence.observations.len() as u32;
            self.count(&req.namespace, |c| &c.feedback_wrong);
            // Its evidence goes with it, as it would after a restart.
            self.delete_entries(vec![entry])?;
            return Ok(FeedbackOutcome { observations, deleted: true });
        }
        let _deleting = self.deleting.read();
        let _stripes = self.lock_stripes([&super::exact_key_of(&entry)]);
        if !self.ledger.contains(id) {
            return Err(not_found());
        }
        let mut batch = self.store.batch();
        batch.put_evidence(&req.namespace, id, &evidence.to_record());
        self.store.write(batch)?;
        let fit = ns.model.learn(&[observation], dropped.as_slice());
        evidence.refit(&fit);
        let observations = evidence.observations.len() as u32;
        self.learning.put(id, evidence);
        self.count(&req.namespace, |c| if req.correct { &c.feedback_correct } else { &c.feedback_wrong });
        Ok(FeedbackOutcome { observations, deleted: false })
    }

    /// The features a lookup of `vector` would have seen with `entry` as the nearest entry.
    fn features_for(&self, entry: &EntryRecord, vector: &[f32], now: i64) -> Result<Features, CacheError> {
        let similarity = dot(vector, &entry.vector).clamp(-1.0, 1.0);
        let answer = self.ledger.answer(entry.id).unwrap_or(0);
        let mut neighbours = vec![(similarity, answer)];
        let mut full = false;
        if let Some(partition) = self.index.partition(&entry.namespace, &keys::scope_id(&entry.scope)) {
            let (others, searched_full) = self.live_neighbours(&partition, vector, now)?;
            full = searched_full;
            // Nearest first already; the entry itself is put in front, wherever it ranked.
            neighbours.extend(others.iter().filter(|n| n.id != entry.id).map(|n| (n.similarity, n.answer)));
        }
        Ok(Features::of(&neighbours, full).expect("the entry itself is there"))
    }
}
