//! The cache policy: what a Lookup, Store or Delete means. Validation, namespaces and their
//! settings, scopes, thresholds and expiry live here; the model, the index and RocksDB are
//! reached only through this module.

pub mod context;
pub mod guard;
mod ledger;
mod maintenance;
pub mod reembed;
pub mod validate;

pub use crate::store::EntryRecord as Entry;
pub use guard::Veto;
pub use maintenance::{Maintenance, MaintenanceSettings};
pub use validate::{Limits, ValidationError};

use crate::clock::now_unix_ms;
use crate::embed::{EmbedError, Embedder};
use crate::index::{Candidate, Index, IndexParams, Items, RestoreReport, ScopeId};
use crate::store::{keys, NamespaceRecord, Store, StoreError};
use crate::text::normalize;
use ledger::{Ledger, Meta, Victim};
use prost::Message;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Instant;

/// Similarity threshold of a namespace created without one: with hit guards on, the threshold
/// that maximises F0.5 (precision weighted over recall, since a wrong answer costs more than a
/// miss) on MeanCache's Quora validation split with all-MiniLM-L6-v2; see the README's hit
/// quality section for the curve and the held-out figures.
pub const DEFAULT_THRESHOLD: f32 = 0.86;

/// Candidates taken from the index per lookup: the first live one wins, the rest cover
/// entries that expired but are not purged yet.
const CANDIDATES: usize = 8;

/// Ids are reserved on disk in blocks, so an id is never handed out twice (even after a
/// crash) at the cost of one extra synced write per block.
const ID_BLOCK: u64 = 1024;

/// Store/Delete of the same exact key are serialised by one of these locks.
const STRIPES: usize = 64;

/// Entries removed per synced batch by Delete, the sweeper and eviction: bounded so that a
/// big purge never holds locks or builds a batch for long.
const DELETE_CHUNK: usize = 512;

/// Bytes an entry costs beyond its record: catalog row, exact key and RocksDB keys.
const ENTRY_OVERHEAD_BYTES: u64 = 128;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error(transparent)]
    InvalidArgument(ValidationError),
    #[error("namespace {0:?} does not exist")]
    NamespaceNotFound(String),
    #[error("no entry with id {id} in namespace {namespace:?}")]
    EntryNotFound { namespace: String, id: u64 },
    #[error(
        "namespace {namespace:?} was embedded with model {stored}, but this server runs {current}; \
         run `semcache reembed --namespace {namespace}` (server stopped) to re-embed it with this \
         model, start with the model it was made with, or drop the namespace"
    )]
    ModelMismatch { namespace: String, stored: String, current: String },
    /// An operator's limit on what the server holds (not on one request's size).
    #[error("{reason} ({limit})")]
    LimitReached { limit: &'static str, reason: String },
    /// A well-formed Store of something this server is configured not to cache.
    #[error(transparent)]
    NotCacheable(ValidationError),
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// Settings given to namespaces that are created implicitly or without a value, and the
/// global capacity.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub similarity_threshold: f32,
    pub ttl_seconds: u64,
    /// Bytes the whole data set may hold (0 = unbounded); beyond, the least recently used
    /// entries of any namespace are evicted.
    pub max_bytes: u64,
    /// Whether namespaces that never chose have hit guards on.
    pub hit_guards: bool,
}

#[derive(Debug, Clone, Default)]
pub struct LookupRequest {
    pub namespace: String,
    pub query: String,
    pub scope: BTreeMap<String, String>,
    pub similarity_threshold: Option<f32>,
    /// Earlier turns of the conversation, or the caller's own `context_key` (not both).
    pub context: Vec<String>,
    pub context_key: String,
}

/// Why a lookup missed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum MissReason {
    /// A hit.
    #[default]
    None,
    /// Nothing live in this namespace, scope and context.
    Empty,
    BelowThreshold,
    /// The nearest entry cleared the threshold but a hit guard refused it.
    Vetoed,
    /// A generic follow-up ("why?") without a context to give it a meaning.
    NeedsContext,
}

/// The nearest entry, which cleared the threshold and was refused by a guard.
#[derive(Debug, Clone, PartialEq)]
pub struct GuardVeto {
    pub id: u64,
    pub similarity: f32,
    pub veto: Veto,
}

#[derive(Debug, Clone, Default)]
pub struct LookupOutcome {
    pub entry: Option<Entry>,
    /// Best live candidate's similarity, hit or miss (0 when there was none).
    pub similarity: f32,
    pub nearest_id: Option<u64>,
    /// The threshold this lookup used (the namespace's, or the request's raised to the floor).
    pub threshold: f32,
    /// Set when the nearest entry cleared the threshold and a hit guard refused it.
    pub veto: Option<GuardVeto>,
    pub miss_reason: MissReason,
    /// Whether the answer came from the exact-repeat path without running the model.
    pub exact: bool,
    /// Hits of the returned entry, this one included.
    pub hit_count: u64,
}

impl LookupOutcome {
    pub fn hit(&self) -> bool {
        self.entry.is_some()
    }
}

#[derive(Debug, Clone, Copy, Default)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Default)]
pub struct StoreRequest {
    pub namespace: String,
    pub query: String,
    pub response: String,
    pub scope: BTreeMap<String, String>,
    pub metadata: BTreeMap<String, String>,
    pub ttl_seconds: Option<u64>,
    pub usage: Usage,
    pub context: Vec<String>,
    pub context_key: String,
}

#[derive(Debug, Clone)]
pub enum DeleteTarget {
    Id(String),
    Scope(BTreeMap<String, String>),
    All,
}

#[derive(Debug, Clone, Default)]
pub struct NamespaceUpdate {
    pub name: String,
    pub similarity_threshold: Option<f32>,
    pub ttl_seconds: Option<u64>,
    pub max_entries: Option<u64>,
    pub threshold_floor: Option<f32>,
    pub hit_guards: Option<bool>,
}

#[derive(Debug, Clone)]
pub struct NamespaceView {
    pub settings: NamespaceRecord,
    pub entries: u64,
    /// Whether hit guards are on (its own choice, or the server default).
    pub hit_guards: bool,
}

#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Stats {
    pub lookups: u64,
    pub hits: u64,
    /// Hits answered by the exact-repeat path (included in `hits`).
    pub exact_hits: u64,
    pub misses: u64,
    pub stores: u64,
    pub entries: u64,
    /// Stored size of the entries (texts, metadata, vector and per-entry overhead).
    pub bytes: u64,
    pub evictions: u64,
    pub expirations: u64,
    /// What the hits would have cost, from the `usage` each served entry was stored with.
    pub saved_input_tokens: u64,
    pub saved_output_tokens: u64,
    pub saved_cost_usd: f64,
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    hits: AtomicU64,
    exact_hits: AtomicU64,
    misses: AtomicU64,
    stores: AtomicU64,
    evictions: AtomicU64,
    expirations: AtomicU64,
    saved_input_tokens: AtomicU64,
    saved_output_tokens: AtomicU64,
    /// An f64 in its bit pattern, added to by compare-and-swap.
    saved_cost_usd: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn outcome(&self, outcome: &LookupOutcome) {
        let Some(entry) = &outcome.entry else {
            Self::bump(&self.misses);
            return;
        };
        Self::bump(&self.hits);
        if outcome.exact {
            Self::bump(&self.exact_hits);
        }
        self.saved_input_tokens.fetch_add(entry.input_tokens, Ordering::Relaxed);
        self.saved_output_tokens.fetch_add(entry.output_tokens, Ordering::Relaxed);
        let add = |bits: u64| Some((f64::from_bits(bits) + entry.cost_usd).to_bits());
        let _ = self.saved_cost_usd.fetch_update(Ordering::Relaxed, Ordering::Relaxed, add);
    }

    fn read(&self, entries: u64, bytes: u64) -> Stats {
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
        }
    }
}

struct NamespaceState {
    settings: RwLock<NamespaceRecord>,
    counters: Counters,
    /// Set when its vectors came from another model than the one loaded: its partitions
    /// are not loaded and Lookup/Store are refused until `semcache reembed`.
    stale_model: Option<String>,
}

impl NamespaceState {
    fn new(settings: NamespaceRecord) -> Arc<Self> {
        Arc::new(Self { settings: RwLock::new(settings), counters: Counters::default(), stale_model: None })
    }

    fn settings(&self) -> NamespaceRecord {
        self.settings.read().expect("namespace lock").clone()
    }

    /// One setting without cloning the record (the lookup path reads this every time).
    fn read<T>(&self, f: impl FnOnce(&NamespaceRecord) -> T) -> T {
        f(&self.settings.read().expect("namespace lock"))
    }
}

struct IdAllocator {
    next: AtomicU64,
    reserved: Mutex<u64>,
}

impl IdAllocator {
    fn next(&self, store: &Store) -> Result<u64, StoreError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut reserved = self.reserved.lock().expect("id lock");
        if id >= *reserved {
            let mark = id + ID_BLOCK;
            store.set_id_high_water(mark)?;
            *reserved = mark;
        }
        Ok(id)
    }
}

pub struct Cache {
    store: Store,
    index: Index,
    embedder: Embedder,
    ledger: Ledger,
    namespaces: RwLock<HashMap<String, Arc<NamespaceState>>>,
    /// Serialises namespace creation and reconfiguration (each is one synced write).
    configure: Mutex<()>,
    totals: Counters,
    ids: IdAllocator,
    /// Taken by exact key. Lock order: stripes (ascending) before `configure`.
    stripes: Vec<Mutex<()>>,
    /// Readers: anything that deletes entries; writer: the catalog flush. A flush therefore
    /// never re-creates the catalog row of an entry deleted while it was being written.
    deleting: RwLock<()>,
    defaults: Defaults,
    limits: Limits,
    /// How the index came back at start.
    pub restore_report: RestoreReport,
}

impl From<ValidationError> for CacheError {
    fn from(e: ValidationError) -> Self {
        if e.refused_by_config {
            Self::NotCacheable(e)
        } else {
            Self::InvalidArgument(e)
        }
    }
}

impl Cache {
    /// Opens the cache over a store: loads the namespaces and the catalog, and restores the
    /// index from graph checkpoints plus RocksDB. Blocking; run it off the async threads.
    pub fn open(
        store: Store,
        embedder: Embedder,
        params: IndexParams,
        defaults: Defaults,
        limits: Limits,
    ) -> Result<Self, CacheError> {
        let started = Instant::now();
        let info = embedder.info().clone();
        let now = now_unix_ms();
        let mut namespaces: HashMap<String, Arc<NamespaceState>> = HashMap::new();
        for record in store.namespaces()? {
            let stale = (!info.matches(&record.embedding_model)).then(|| record.embedding_model.clone());
            if let Some(stored) = &stale {
                tracing::warn!(
                    namespace = %record.name, stored = %stored, current = %info.fingerprint,
                    "namespace was embedded with another model; its lookups are refused until `semcache reembed`"
                );
            }
            let mut state = NamespaceState::new(record.clone());
            Arc::get_mut(&mut state).expect("new").stale_model = stale;
            namespaces.insert(record.name, state);
        }

        let ledger = Ledger::default();
        let mut rows = Vec::new();
        let mut partitions: HashMap<(Arc<str>, ScopeId), HashSet<u64>> = HashMap::new();
        let mut names: HashMap<String, Arc<str>> = HashMap::new();
        let mut max_id = 0;
        for row in store.scan_catalog() {
            let (namespace, id, record) = row?;
            max_id = max_id.max(id);
            if !namespaces.contains_key(&namespace) {
                // Entries are written after their namespace, so this data dir lost its
                // namespace record; serve the entries under default settings.
                let record = default_record(&namespace, defaults, &info.fingerprint, now);
                let mut batch = store.batch();
                batch.put_namespace(&record);
                store.write(batch)?;
                namespaces.insert(namespace.clone(), NamespaceState::new(record));
            }
            let name = names.entry(namespace).or_insert_with_key(|n| n.as_str().into()).clone();
            let meta = Meta::from_record(name.clone(), &record);
            if namespaces[&*name].stale_model.is_none() {
                partitions.entry((name, meta.scope)).or_default().insert(id);
            }
            rows.push((id, meta));
        }
        let catalog_rows = rows.len();
        ledger.load(rows);
        let ledger_bytes = ledger.total_bytes();

        let index = Index::new(info.dim, params, Some(store.graphs_dir()), info.fingerprint.clone());
        let partitions: Vec<_> = partitions.into_iter().map(|((ns, scope), ids)| (ns, scope, ids)).collect();
        let dim = info.dim;
        let restore_report = index.restore(partitions, |namespace, ids| fetch_vectors(&store, namespace, ids, dim))?;
        tracing::info!(
            entries = catalog_rows,
            bytes = ledger_bytes,
            namespaces = namespaces.len(),
            partitions = restore_report.partitions,
            from_checkpoint = restore_report.from_checkpoint,
            caught_up = restore_report.caught_up,
            rebuilt = restore_report.rebuilt,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index restored"
        );

        let first = store.id_high_water()?.max(max_id + 1).max(1);
        Ok(Self {
            ids: IdAllocator { next: AtomicU64::new(first), reserved: Mutex::new(first) },
            store,
            index,
            embedder,
            ledger,
            namespaces: RwLock::new(namespaces),
            configure: Mutex::new(()),
            totals: Counters::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            deleting: RwLock::new(()),
            defaults,
            limits,
            restore_report,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.embedder.is_ready()
    }

    /// Texts waiting for the model.
    pub fn embed_queue_depth(&self) -> usize {
        self.embedder.queue_depth()
    }

    /// The model thread's histogram of texts per forward pass.
    pub fn embed_batch_sizes(&self) -> prometheus_client::metrics::histogram::Histogram {
        self.embedder.batch_sizes()
    }

    fn namespace(&self, name: &str) -> Option<Arc<NamespaceState>> {
        self.namespaces.read().expect("namespaces lock").get(name).cloned()
    }

    /// A namespace that Lookup and Store may use: refused when made with another model.
    fn usable(&self, ns: &NamespaceState, name: &str) -> Result<(), CacheError> {
        match &ns.stale_model {
            None => Ok(()),
            Some(stored) => Err(CacheError::ModelMismatch {
                namespace: name.to_owned(),
                stored: stored.clone(),
                current: self.embedder.info().fingerprint.clone(),
            }),
        }
    }

    fn stripe(&self, exact: &[u8; 32]) -> usize {
        exact[0] as usize % STRIPES
    }

    /// Locks the stripes of these exact keys, always in ascending order so that two
    /// multi-key operations cannot deadlock.
    fn lock_stripes<'a>(&self, keys: impl IntoIterator<Item = &'a [u8; 32]>) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.into_iter().map(|k| self.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.iter().map(|&s| self.stripes[s].lock().expect("stripe lock")).collect()
    }

    /// Finds a live entry through the exact-repeat key.
    fn exact_entry(
        &self,
        exact: &[u8; 32],
        scope: &BTreeMap<String, String>,
        now: i64,
    ) -> Result<Option<Entry>, CacheError> {
        let Some((ns, id)) = self.store.get_exact(exact)? else { return Ok(None) };
        Ok(self.store.get_entry(&ns, id)?.filter(|e| e.is_live(now) && &e.scope == scope))
    }

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
            Some(ns) => {
                let scope = context::scoped(req.scope.clone(), context);
                self.find(ns, &req, &normalized, &scope).await?
            }
            None => LookupOutcome { miss_reason: MissReason::Empty, ..Default::default() },
        };
        self.totals.outcome(&outcome);
        if let Some(ns) = &ns {
            ns.counters.outcome(&outcome);
        }
        Ok(outcome)
    }

    /// A hit: counted and made most recently used in memory only (flushed lazily). An entry
    /// removed between the read and now is not served.
    fn hit(&self, mut outcome: LookupOutcome, entry: Entry, now: i64) -> LookupOutcome {
        match self.ledger.touch(entry.id, now) {
            Some(hit_count) => {
                outcome.hit_count = hit_count;
                outcome.entry = Some(entry);
            }
            None => outcome.miss_reason = MissReason::Empty,
        }
        outcome
    }

    async fn find(
        self: &Arc<Self>,
        ns: &NamespaceState,
        req: &LookupRequest,
        normalized: &str,
        scope: &BTreeMap<String, String>,
    ) -> Result<LookupOutcome, CacheError> {
        let (threshold, floor, guards) =
            ns.read(|r| (r.similarity_threshold, r.threshold_floor, r.hit_guards.unwrap_or(self.defaults.hit_guards)));
        // A per-request threshold may be stricter than the namespace's, never laxer than its floor.
        let threshold = req.similarity_threshold.map_or(threshold, |t| t.max(floor));
        let mut outcome = LookupOutcome { threshold, miss_reason: MissReason::Empty, ..Default::default() };
        let now = now_unix_ms();
        let exact = keys::exact_key(&req.namespace, scope, normalized);
        if let Some(entry) = self.exact_entry(&exact, scope, now)? {
            outcome.similarity = 1.0;
            outcome.nearest_id = Some(entry.id);
            outcome.exact = true;
            outcome.miss_reason = MissReason::None;
            return Ok(self.hit(outcome, entry, now));
        }
        // An empty partition is a miss without spending a forward pass.
        let Some(partition) = self.index.partition(&req.namespace, &keys::scope_id(scope)) else {
            return Ok(outcome);
        };
        if partition.is_empty() {
            return Ok(outcome);
        }
        let vector = self.embedder.embed(&req.query).await?;
        let candidates: Vec<Candidate> = if partition.is_graph() {
            // A graph search is CPU work of a millisecond or more: off the async workers, and
            // skipped if the caller has gone (its RPC was cancelled) by the time a thread is free.
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::task::spawn_blocking(move || {
                if !tx.is_closed() {
                    let _ = tx.send(partition.search(&vector, CANDIDATES));
                }
            });
            rx.await.expect("index search panicked")
        } else {
            partition.search(&vector, CANDIDATES)
        };
        for c in candidates {
            let Some(entry) = self.store.get_entry(&req.namespace, c.id)? else { continue };
            // Expired but not yet swept: never served.
            if !entry.is_live(now) || &entry.scope != scope {
                continue;
            }
            let similarity = c.similarity.clamp(-1.0, 1.0);
            if outcome.nearest_id.is_none() {
                outcome.similarity = similarity;
                outcome.nearest_id = Some(entry.id);
                outcome.miss_reason = MissReason::BelowThreshold;
            }
            if similarity < threshold {
                break;
            }
            // A vetoed nearest entry is a miss: the candidates behind it are further from the
            // query and, measured on every data set, served more wrong answers than right ones.
            if guards {
                if let Some(veto) = guard::check(&guard::Words::of(&req.query), &guard::Words::of(&entry.query)) {
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

    /// Caches a response; returns the new entry's id once it is durable.
    pub async fn store(self: &Arc<Self>, mut req: StoreRequest) -> Result<u64, CacheError> {
        validate::namespace(&req.namespace)?;
        validate::text("query", &req.query, self.limits.max_query_bytes, "--max-query-bytes")?;
        validate::text("response", &req.response, self.limits.max_response_bytes, "--max-response-bytes")?;
        validate::map("scope", &req.scope, self.limits.scope())?;
        validate::map("metadata", &req.metadata, self.limits.metadata())?;
        validate::incomplete(&req.metadata, self.limits.cache_incomplete)?;
        let context = context::key(&req.context, &req.context_key)?;
        if !req.usage.cost_usd.is_finite() || req.usage.cost_usd < 0.0 {
            return Err(ValidationError::new(
                "usage.cost_usd",
                format!("is {}", req.usage.cost_usd),
                "it must be a finite number >= 0",
            )
            .into());
        }
        match self.namespace(&req.namespace) {
            Some(ns) => self.usable(&ns, &req.namespace)?,
            // Refused before the model's work; checked again when the namespace is created.
            None => self.room_for_namespace(&req.namespace)?,
        }
        let vector = self.embedder.embed(&req.query).await?;
        let this = self.clone();
        req.scope = context::scoped(std::mem::take(&mut req.scope), context);
        tokio::task::spawn_blocking(move || this.store_blocking(req, vector)).await.expect("store task panicked")
    }

    /// `req.scope` here already holds the context key.
    fn store_blocking(&self, req: StoreRequest, vector: Vec<f32>) -> Result<u64, CacheError> {
        let now = now_unix_ms();
        let ns = self.namespace_or_create(&req.namespace, now)?;
        let ttl = req.ttl_seconds.unwrap_or_else(|| ns.read(|r| r.ttl_seconds));
        let expires_at_unix_ms = match ttl {
            0 => 0,
            ttl => now.saturating_add(i64::try_from(ttl.saturating_mul(1000)).unwrap_or(i64::MAX)),
        };
        let id = self.ids.next(&self.store)?;
        let exact = keys::exact_key(&req.namespace, &req.scope, &normalize(&req.query));
        let scope = keys::scope_id(&req.scope);
        let entry = Entry {
            id,
            namespace: req.namespace,
            query: req.query,
            response: req.response,
            scope: req.scope,
            metadata: req.metadata,
            created_at_unix_ms: now,
            expires_at_unix_ms,
            vector,
            input_tokens: req.usage.input_tokens,
            output_tokens: req.usage.output_tokens,
            cost_usd: req.usage.cost_usd,
        };
        let size_bytes = entry.encoded_len() as u64 + ENTRY_OVERHEAD_BYTES;
        let meta = Meta {
            namespace: entry.namespace.as_str().into(),
            scope,
            created_at_unix_ms: now,
            expires_at_unix_ms,
            last_used_unix_ms: now,
            hit_count: 0,
            size_bytes,
        };

        // Capacity is made room for in the same batch as the new entry, so that no reader
        // ever sees the namespace over its limit and no crash leaves it there.
        let replaced_hint = self.store.get_exact(&exact)?.map(|(_, old)| old);
        let max_entries = ns.read(|r| r.max_entries);
        let mut victims = self.ledger.over_entries(&entry.namespace, max_entries, 1, replaced_hint);
        let freed = replaced_hint.and_then(|id| self.ledger.get_size(id)).unwrap_or(0);
        for v in self.ledger.over_bytes(self.defaults.max_bytes, size_bytes.saturating_sub(freed), replaced_hint) {
            if !victims.contains(&v) {
                victims.push(v);
            }
        }
        let victims = self.victim_entries(victims)?;
        let victim_keys: Vec<[u8; 32]> = victims.iter().map(exact_key_of).collect();

        let _deleting = self.deleting.read().expect("deleting lock");
        let _stripes = self.lock_stripes(victim_keys.iter().chain([&exact]));
        // A Drop of this namespace may have run since it was looked up (Drop holds every
        // stripe); if so this Store creates it afresh.
        let ns = match self.namespace(&entry.namespace) {
            Some(current) if Arc::ptr_eq(&current, &ns) => ns,
            _ => self.namespace_or_create(&entry.namespace, now)?,
        };
        // The same question in the same scope replaces the older answer, in the same batch.
        let replaced = self.store.get_exact(&exact)?.map(|(_, old)| old);
        let mut batch = self.store.batch();
        batch.put_entry(&entry, &meta.to_record());
        batch.put_exact(&exact, &entry.namespace, id);
        if let Some(old) = replaced {
            batch.delete_entry(&entry.namespace, old);
        }
        let mut evicted = Vec::new();
        for (victim, key) in victims.iter().zip(&victim_keys) {
            if Some(victim.id) == replaced || !self.ledger.contains(victim.id) {
                continue;
            }
            batch.delete_entry(&victim.namespace, victim.id);
            if self.store.get_exact(key)?.is_some_and(|(_, id)| id == victim.id) && key != &exact {
                batch.delete_exact(key);
            }
            evicted.push(victim);
        }
        self.store.write(batch)?;

        self.index.insert(&entry.namespace, &scope, id, &entry.vector);
        self.ledger.insert(id, meta);
        if let Some(old) = replaced {
            self.index.remove(&entry.namespace, &scope, old);
            self.ledger.remove(old);
        }
        for victim in &evicted {
            self.forget(victim);
            self.count(&victim.namespace, |c| &c.evictions);
        }
        Counters::bump(&self.totals.stores);
        Counters::bump(&ns.counters.stores);
        Ok(id)
    }

    /// Bumps a counter of the totals and of the namespace.
    fn count(&self, namespace: &str, counter: impl Fn(&Counters) -> &AtomicU64) {
        Counters::bump(counter(&self.totals));
        if let Some(ns) = self.namespace(namespace) {
            Counters::bump(counter(&ns.counters));
        }
    }

    /// Drops a deleted entry from the index and the ledger.
    fn forget(&self, entry: &Entry) {
        self.index.remove(&entry.namespace, &keys::scope_id(&entry.scope), entry.id);
        self.ledger.remove(entry.id);
    }

    /// The stored entries of victims, skipping those already gone.
    fn victim_entries(&self, victims: Vec<Victim>) -> Result<Vec<Entry>, CacheError> {
        let mut by_namespace: BTreeMap<Arc<str>, Vec<u64>> = BTreeMap::new();
        for v in victims {
            by_namespace.entry(v.namespace).or_default().push(v.id);
        }
        let mut entries = Vec::new();
        for (namespace, ids) in by_namespace {
            entries.extend(self.store.get_entries(&namespace, &ids)?.into_iter().flatten());
        }
        Ok(entries)
    }

    fn namespace_or_create(&self, name: &str, now: i64) -> Result<Arc<NamespaceState>, CacheError> {
        if let Some(ns) = self.namespace(name) {
            return Ok(ns);
        }
        let _guard = self.configure.lock().expect("configure lock");
        if let Some(ns) = self.namespace(name) {
            return Ok(ns);
        }
        self.room_for_namespace(name)?;
        let record = default_record(name, self.defaults, &self.embedder.info().fingerprint, now);
        self.persist_namespace(&record)?;
        let state = NamespaceState::new(record);
        self.namespaces.write().expect("namespaces lock").insert(name.to_owned(), state.clone());
        Ok(state)
    }

    fn room_for_namespace(&self, name: &str) -> Result<(), CacheError> {
        let count = self.namespaces.read().expect("namespaces lock").len();
        if count >= self.limits.max_namespaces {
            return Err(CacheError::LimitReached {
                limit: "--max-namespaces",
                reason: format!(
                    "cannot create namespace {name:?}: {count} namespaces exist and at most {} are allowed; \
                     drop unused ones or raise the limit",
                    self.limits.max_namespaces
                ),
            });
        }
        Ok(())
    }

    fn persist_namespace(&self, record: &NamespaceRecord) -> Result<(), CacheError> {
        let mut batch = self.store.batch();
        batch.put_namespace(record);
        Ok(self.store.write(batch)?)
    }

    pub async fn delete(self: &Arc<Self>, namespace: String, target: DeleteTarget) -> Result<u64, CacheError> {
        validate::namespace(&namespace)?;
        if let DeleteTarget::Scope(scope) = &target {
            validate::map("scope", scope, self.limits.scope())?;
        }
        let id = match &target {
            DeleteTarget::Id(id) => Some(validate::entry_id(id)?),
            _ => None,
        };
        if self.namespace(&namespace).is_none() {
            return Err(CacheError::NamespaceNotFound(namespace));
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || match (target, id) {
            (_, Some(id)) => match this.store.get_entry(&namespace, id)? {
                Some(entry) => this.delete_entries(vec![entry]),
                None => Err(CacheError::EntryNotFound { namespace, id }),
            },
            // A scope's entries live in one partition per conversation context, so every
            // entry of the namespace is a candidate.
            (DeleteTarget::Scope(scope), _) => {
                let ids = this.ledger.ids(&namespace, None);
                this.delete_ids(&namespace, &ids, |e| {
                    e.scope.len() - usize::from(e.scope.contains_key(context::SCOPE_KEY)) == scope.len()
                        && scope.iter().all(|(k, v)| e.scope.get(k) == Some(v))
                })
            }
            _ => {
                let ids = this.ledger.ids(&namespace, None);
                this.delete_ids(&namespace, &ids, |_| true)
            }
        })
        .await
        .expect("delete task panicked")
    }

    /// Deletes the entries of `ids` that `matches` accepts, in bounded batches.
    fn delete_ids(&self, namespace: &str, ids: &[u64], matches: impl Fn(&Entry) -> bool) -> Result<u64, CacheError> {
        let mut deleted = 0;
        for chunk in ids.chunks(DELETE_CHUNK) {
            let entries = self.store.get_entries(namespace, chunk)?.into_iter().flatten().filter(&matches).collect();
            deleted += self.delete_entries(entries)?;
        }
        Ok(deleted)
    }

    /// Deletes entries in one durable batch, with their exact keys where those still point
    /// at them (a newer Store of the same text may have taken the key over).
    fn delete_entries(&self, entries: Vec<Entry>) -> Result<u64, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let keys: Vec<[u8; 32]> = entries.iter().map(exact_key_of).collect();
        let _deleting = self.deleting.read().expect("deleting lock");
        let _stripes = self.lock_stripes(&keys);
        Ok(self.delete_locked(&entries, &keys)?.len() as u64)
    }

    /// `delete_entries` with the stripes of `keys` held by the caller (and `deleting` read).
    /// Returns the positions of the entries it removed.
    fn delete_locked(&self, entries: &[Entry], keys: &[[u8; 32]]) -> Result<Vec<usize>, CacheError> {
        let mut batch = self.store.batch();
        let mut gone = Vec::new();
        for (i, (entry, key)) in entries.iter().zip(keys).enumerate() {
            // Another delete (or a replacing Store) may have got there first.
            if !self.ledger.contains(entry.id) {
                continue;
            }
            batch.delete_entry(&entry.namespace, entry.id);
            if self.store.get_exact(key)?.is_some_and(|(_, id)| id == entry.id) {
                batch.delete_exact(key);
            }
            gone.push(i);
        }
        if gone.is_empty() {
            return Ok(gone);
        }
        self.store.write(batch)?;
        for &i in &gone {
            self.forget(&entries[i]);
        }
        Ok(gone)
    }

    /// Removes a namespace: its entries, its settings, its partitions and checkpoints.
    /// Returns how many entries went with it.
    pub async fn drop_namespace(self: &Arc<Self>, name: String) -> Result<u64, CacheError> {
        validate::namespace(&name)?;
        if self.namespace(&name).is_none() {
            return Err(CacheError::NamespaceNotFound(name));
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.drop_blocking(&name)).await.expect("drop task panicked")
    }

    fn drop_blocking(&self, name: &str) -> Result<u64, CacheError> {
        let _deleting = self.deleting.read().expect("deleting lock");
        // Every stripe, so that no Store of this namespace commits half-way through.
        let _stripes: Vec<_> = self.stripes.iter().map(|s| s.lock().expect("stripe lock")).collect();
        let _configure = self.configure.lock().expect("configure lock");
        let ids = self.ledger.ids(name, None);
        let mut deleted = 0;
        for chunk in ids.chunks(DELETE_CHUNK) {
            let entries: Vec<Entry> = self.store.get_entries(name, chunk)?.into_iter().flatten().collect();
            let keys: Vec<[u8; 32]> = entries.iter().map(exact_key_of).collect();
            deleted += self.delete_locked(&entries, &keys)?.len() as u64;
        }
        let mut batch = self.store.batch();
        batch.delete_namespace(name);
        self.store.write(batch)?;
        self.namespaces.write().expect("namespaces lock").remove(name);
        self.index.drop_namespace(name);
        tracing::info!(namespace = name, entries = deleted, "namespace dropped");
        Ok(deleted)
    }

    /// Purges up to `limit` expired entries in bounded batches; returns how many went.
    pub fn sweep_expired(&self, now: i64, limit: usize) -> Result<u64, CacheError> {
        let mut purged = 0;
        let mut seen = 0;
        while seen < limit {
            let victims = self.ledger.expired(now, DELETE_CHUNK.min(limit - seen));
            if victims.is_empty() {
                break;
            }
            seen += victims.len();
            for namespace in self.remove_victims(victims)? {
                self.count(&namespace, |c| &c.expirations);
                purged += 1;
            }
        }
        Ok(purged)
    }

    /// Evicts least recently used entries until every namespace is within `max_entries` and
    /// the data set within `--max-bytes` (after a limit was lowered, or at start).
    pub fn enforce_capacity(&self) -> Result<u64, CacheError> {
        let limits: Vec<(String, u64)> = {
            let map = self.namespaces.read().expect("namespaces lock");
            map.iter().map(|(n, ns)| (n.clone(), ns.read(|r| r.max_entries))).collect()
        };
        let mut evicted = 0;
        for (name, max) in &limits {
            evicted += self.evict_while(|| self.ledger.over_entries(name, *max, 0, None))?;
        }
        evicted += self.evict_while(|| self.ledger.over_bytes(self.defaults.max_bytes, 0, None))?;
        Ok(evicted)
    }

    /// Evicts, a bounded batch at a time, whatever `over` names until it names nothing.
    fn evict_while(&self, over: impl Fn() -> Vec<Victim>) -> Result<u64, CacheError> {
        let mut evicted = 0;
        loop {
            let mut victims = over();
            victims.truncate(DELETE_CHUNK);
            if victims.is_empty() {
                return Ok(evicted);
            }
            for namespace in self.remove_victims(victims)? {
                self.count(&namespace, |c| &c.evictions);
                evicted += 1;
            }
        }
    }

    /// Deletes victims (expired or evicted); returns the namespace of each one removed.
    fn remove_victims(&self, victims: Vec<Victim>) -> Result<Vec<String>, CacheError> {
        let entries = self.victim_entries(victims.clone())?;
        if entries.len() < victims.len() {
            // A ledger row whose entry is gone (deleted meanwhile) must not be picked again.
            let found: HashSet<u64> = entries.iter().map(|e| e.id).collect();
            for v in victims.iter().filter(|v| !found.contains(&v.id)) {
                self.ledger.remove(v.id);
            }
        }
        let keys: Vec<[u8; 32]> = entries.iter().map(exact_key_of).collect();
        let _deleting = self.deleting.read().expect("deleting lock");
        let _stripes = self.lock_stripes(&keys);
        let gone = self.delete_locked(&entries, &keys)?;
        Ok(gone.into_iter().map(|i| entries[i].namespace.clone()).collect())
    }

    /// Writes hit counts and recency changed since the last flush into the catalog (one
    /// durable batch). Called periodically and at shutdown; a crash loses at most the
    /// changes since the last flush, which costs statistics and recency, never an entry.
    pub fn flush_catalog(&self) -> Result<usize, CacheError> {
        let _exclusive = self.deleting.write().expect("deleting lock");
        let dirty = self.ledger.take_dirty();
        if dirty.is_empty() {
            return Ok(0);
        }
        let mut batch = self.store.batch();
        for (id, meta) in &dirty {
            batch.put_catalog(&meta.namespace, *id, &meta.to_record());
        }
        if let Err(e) = self.store.write(batch) {
            self.ledger.mark_dirty(dirty.iter().map(|(id, _)| *id));
            return Err(e.into());
        }
        Ok(dirty.len())
    }

    /// Rebuilds partitions that outgrew their structure; see `Index::rebuild_where_needed`.
    pub fn rebuild_partitions(&self) -> usize {
        self.index.rebuild_where_needed()
    }

    /// Checkpoints the graphs that changed; see `Index::checkpoint`.
    pub fn checkpoint(&self) -> usize {
        self.index.checkpoint()
    }

    pub async fn configure_namespace(self: &Arc<Self>, update: NamespaceUpdate) -> Result<NamespaceView, CacheError> {
        validate::namespace(&update.name)?;
        if let Some(t) = update.similarity_threshold {
            validate::threshold("similarity_threshold", t)?;
        }
        if let Some(f) = update.threshold_floor {
            validate::floor(f)?;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let ns = this.namespace_or_create(&update.name, now_unix_ms())?;
            {
                let _guard = this.configure.lock().expect("configure lock");
                let mut record = ns.settings();
                if let Some(t) = update.similarity_threshold {
                    record.similarity_threshold = t;
                }
                if let Some(ttl) = update.ttl_seconds {
                    record.ttl_seconds = ttl;
                }
                if let Some(max) = update.max_entries {
                    record.max_entries = max;
                }
                if let Some(floor) = update.threshold_floor {
                    record.threshold_floor = floor;
                }
                if let Some(on) = update.hit_guards {
                    record.hit_guards = Some(on);
                }
                validate::threshold_above_floor(
                    &record.name,
                    record.similarity_threshold,
                    record.threshold_floor,
                    update.threshold_floor.is_some(),
                )?;
                this.persist_namespace(&record)?;
                *ns.settings.write().expect("namespace lock") = record;
            }
            // A lowered limit applies at once, not at the next Store.
            if update.max_entries.is_some_and(|m| m > 0) {
                this.enforce_capacity()?;
            }
            Ok(this.view(&update.name, &ns))
        })
        .await
        .expect("configure task panicked")
    }

    fn view(&self, name: &str, ns: &NamespaceState) -> NamespaceView {
        let settings = ns.settings();
        let hit_guards = settings.hit_guards.unwrap_or(self.defaults.hit_guards);
        NamespaceView { settings, entries: self.ledger.namespace_len(name), hit_guards }
    }

    pub fn get_namespace(&self, name: &str) -> Result<NamespaceView, CacheError> {
        validate::namespace(name)?;
        let ns = self.namespace(name).ok_or_else(|| CacheError::NamespaceNotFound(name.to_owned()))?;
        Ok(self.view(name, &ns))
    }

    pub fn list_namespaces(&self) -> Vec<NamespaceView> {
        let map = self.namespaces.read().expect("namespaces lock");
        let mut views: Vec<_> = map.iter().map(|(name, ns)| self.view(name, ns)).collect();
        views.sort_by(|a, b| a.settings.name.cmp(&b.settings.name));
        views
    }

    /// Counters since start; `namespace` empty means all namespaces. `entries` is what the
    /// index holds (expired entries count until the sweeper purges them).
    pub fn stats(&self, namespace: &str) -> Result<Stats, CacheError> {
        if namespace.is_empty() {
            return Ok(self.totals.read(self.index.total() as u64, self.ledger.total_bytes()));
        }
        validate::namespace(namespace)?;
        let ns = self.namespace(namespace).ok_or_else(|| CacheError::NamespaceNotFound(namespace.to_owned()))?;
        Ok(self.namespace_stats(namespace, &ns))
    }

    fn namespace_stats(&self, name: &str, ns: &NamespaceState) -> Stats {
        ns.counters.read(self.index.len(name) as u64, self.ledger.namespace_bytes(name))
    }

    /// Every namespace's counters, by name: what the metrics endpoint reports.
    pub fn all_stats(&self) -> Vec<(String, Stats)> {
        let map = self.namespaces.read().expect("namespaces lock");
        let mut all: Vec<_> = map.iter().map(|(name, ns)| (name.clone(), self.namespace_stats(name, ns))).collect();
        all.sort_by(|a, b| a.0.cmp(&b.0));
        all
    }

    /// Hands every live entry of a namespace (all when empty), oldest use first, with its hit
    /// count, to `out`, reading RocksDB in bounded chunks; stops early when `out` returns
    /// false. Blocking. Returns how many were handed over.
    pub fn export(&self, namespace: &str, mut out: impl FnMut(Entry, u64) -> bool) -> Result<u64, CacheError> {
        let names: Vec<String> = if namespace.is_empty() {
            self.list_namespaces().into_iter().map(|v| v.settings.name).collect()
        } else {
            validate::namespace(namespace)?;
            if self.namespace(namespace).is_none() {
                return Err(CacheError::NamespaceNotFound(namespace.to_owned()));
            }
            vec![namespace.to_owned()]
        };
        let mut sent = 0;
        for name in names {
            for chunk in self.ledger.ids(&name, None).chunks(DELETE_CHUNK) {
                let now = now_unix_ms();
                for entry in self.store.get_entries(&name, chunk)?.into_iter().flatten().filter(|e| e.is_live(now)) {
                    let hits = self.ledger.hit_count(entry.id).unwrap_or(0);
                    if !out(entry, hits) {
                        return Ok(sent);
                    }
                    sent += 1;
                }
            }
        }
        Ok(sent)
    }

    /// Entries in RocksDB's catalog as the ledger counts them (for checks against the index).
    pub fn stored_entries(&self) -> u64 {
        self.ledger.len()
    }
}

fn exact_key_of(entry: &Entry) -> [u8; 32] {
    keys::exact_key(&entry.namespace, &entry.scope, &normalize(&entry.query))
}

/// Vectors of some entries of a namespace, for the index; entries gone are skipped.
fn fetch_vectors(store: &Store, namespace: &str, ids: &[u64], dim: usize) -> Result<Items, CacheError> {
    let mut items = Vec::with_capacity(ids.len());
    for chunk in ids.chunks(4096) {
        for entry in store.get_entries(namespace, chunk)?.into_iter().flatten() {
            if entry.vector.len() != dim {
                return Err(CacheError::Storage(StoreError::Corrupt {
                    path: store.path().to_owned(),
                    cf: "entries",
                    key: format!("{namespace}/{}", entry.id),
                    reason: format!("vector has {} dimensions, the model has {dim}", entry.vector.len()),
                }));
            }
            items.push((entry.id, entry.vector));
        }
    }
    Ok(items)
}

fn default_record(name: &str, defaults: Defaults, model: &str, now: i64) -> NamespaceRecord {
    NamespaceRecord {
        name: name.to_owned(),
        similarity_threshold: defaults.similarity_threshold,
        ttl_seconds: defaults.ttl_seconds,
        max_entries: 0,
        embedding_model: model.to_owned(),
        created_at_unix_ms: now,
        threshold_floor: 0.0,
        hit_guards: None,
    }
}
