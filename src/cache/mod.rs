//! The cache policy: what a Lookup, Store or Delete means. Validation, namespaces and their
//! settings, scopes, thresholds and expiry live here; the model, the index and RocksDB are
//! reached only through this module.

mod normalize;
pub mod validate;

pub use crate::store::EntryRecord as Entry;
pub use normalize::normalize;
pub use validate::Limits;

use crate::embed::{EmbedError, Embedder};
use crate::index::{Candidate, Index, IndexParams};
use crate::store::{keys, NamespaceRecord, Store, StoreError};
use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// Similarity threshold of a namespace created without one: the highest threshold that still
/// keeps recall >= 60% of true paraphrases on a 3,000-pair sample of MeanCache's Quora
/// validation split with all-MiniLM-L6-v2 (precision 0.73 there); see the README.
pub const DEFAULT_THRESHOLD: f32 = 0.85;

/// Candidates taken from the index per lookup: the first live one wins, the rest cover
/// entries that expired but are not purged yet.
const CANDIDATES: usize = 8;

/// Ids are reserved on disk in blocks, so an id is never handed out twice (even after a
/// crash) at the cost of one extra synced write per block.
const ID_BLOCK: u64 = 1024;

/// Store/Delete of the same exact key are serialised by one of these locks.
const STRIPES: usize = 64;

#[derive(Debug, thiserror::Error)]
pub enum CacheError {
    #[error("{field} {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    #[error("namespace {0:?} does not exist")]
    NamespaceNotFound(String),
    #[error("no entry with id {id} in namespace {namespace:?}")]
    EntryNotFound { namespace: String, id: u64 },
    #[error(
        "data dir {dir} was embedded with model {stored}, but the loaded model is {current}; \
         start with the model it was made with, or use a new data dir"
    )]
    ModelMismatch { dir: PathBuf, stored: String, current: String },
    #[error(transparent)]
    Embed(#[from] EmbedError),
    #[error(transparent)]
    Storage(#[from] StoreError),
}

/// Settings given to namespaces that are created implicitly or without a value.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    pub similarity_threshold: f32,
    pub ttl_seconds: u64,
}

#[derive(Debug, Clone, Default)]
pub struct LookupRequest {
    pub namespace: String,
    pub query: String,
    pub scope: BTreeMap<String, String>,
    pub similarity_threshold: Option<f32>,
}

#[derive(Debug, Clone, Default)]
pub struct LookupOutcome {
    pub entry: Option<Entry>,
    /// Best live candidate's similarity, hit or miss (0 when there was none).
    pub similarity: f32,
    pub nearest_id: Option<u64>,
    /// Whether the answer came from the exact-repeat path without running the model.
    pub exact: bool,
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
}

#[derive(Debug, Clone)]
pub struct NamespaceView {
    pub settings: NamespaceRecord,
    pub entries: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub lookups: u64,
    pub hits: u64,
    pub misses: u64,
    pub stores: u64,
    pub entries: u64,
}

#[derive(Default)]
struct Counters {
    lookups: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    stores: AtomicU64,
}

impl Counters {
    fn bump(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn outcome(&self, hit: bool) {
        Self::bump(if hit { &self.hits } else { &self.misses });
    }
}

struct NamespaceState {
    settings: RwLock<NamespaceRecord>,
    counters: Counters,
}

impl NamespaceState {
    fn new(settings: NamespaceRecord) -> Arc<Self> {
        Arc::new(Self { settings: RwLock::new(settings), counters: Counters::default() })
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
    namespaces: RwLock<HashMap<String, Arc<NamespaceState>>>,
    /// Serialises namespace creation and reconfiguration (each is one synced write).
    configure: Mutex<()>,
    totals: Counters,
    ids: IdAllocator,
    stripes: Vec<Mutex<()>>,
    /// Hits since the last flush, per entry id, added to the stored count when an entry is
    /// returned. Kept in memory so a hit costs no RocksDB write; flushed at shutdown.
    /// Keyed by id (unique across namespaces); the namespace is kept to find the entry.
    hit_counts: Mutex<HashMap<u64, (String, u64)>>,
    defaults: Defaults,
    limits: Limits,
}

pub fn now_unix_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as i64)
}

impl Cache {
    /// Opens the cache over a store: checks the model, loads the namespaces and rebuilds the
    /// index from every live entry. Blocking; run it off the async threads.
    pub fn open(
        store: Store,
        embedder: Embedder,
        params: IndexParams,
        defaults: Defaults,
        limits: Limits,
    ) -> Result<Self, CacheError> {
        let current = embedder.info().fingerprint.clone();
        match store.model_fingerprint()? {
            None => store.set_model_fingerprint(&current)?,
            Some(stored) if embedder.info().matches(&stored) => {}
            Some(stored) => return Err(CacheError::ModelMismatch { dir: store.path().to_owned(), stored, current }),
        }

        let now = now_unix_ms();
        let mut namespaces: HashMap<String, Arc<NamespaceState>> =
            store.namespaces()?.into_iter().map(|ns| (ns.name.clone(), NamespaceState::new(ns))).collect();
        let mut max_id = 0;
        let mut rows = Vec::new();
        let started = std::time::Instant::now();
        for entry in store.scan_all() {
            let entry = entry?;
            max_id = max_id.max(entry.id);
            if !namespaces.contains_key(&entry.namespace) {
                // Entries are only written after their namespace, so this is a data dir that
                // lost its namespace record; serve the entries under default settings.
                let record = default_record(&entry.namespace, defaults, &current, now);
                let mut batch = store.batch();
                batch.put_namespace(&record);
                store.write(batch)?;
                namespaces.insert(entry.namespace.clone(), NamespaceState::new(record));
            }
            if entry.is_live(now) {
                let scope = keys::scope_id(&entry.scope);
                rows.push((entry.namespace, scope, entry.id, entry.vector));
            }
        }
        let live = rows.len();
        let index = Index::build(embedder.info().dim, params, rows);
        tracing::info!(
            entries = live,
            namespaces = namespaces.len(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "index rebuilt from the store"
        );

        let first = store.id_high_water()?.max(max_id + 1).max(1);
        Ok(Self {
            ids: IdAllocator { next: AtomicU64::new(first), reserved: Mutex::new(first) },
            store,
            index,
            embedder,
            namespaces: RwLock::new(namespaces),
            configure: Mutex::new(()),
            totals: Counters::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            hit_counts: Mutex::default(),
            defaults,
            limits,
        })
    }

    pub fn is_ready(&self) -> bool {
        self.embedder.is_ready()
    }

    fn namespace(&self, name: &str) -> Option<Arc<NamespaceState>> {
        self.namespaces.read().expect("namespaces lock").get(name).cloned()
    }

    fn stripe(&self, exact: &[u8; 32]) -> usize {
        exact[0] as usize % STRIPES
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

    fn record_hit(&self, mut entry: Entry) -> Entry {
        let mut counts = self.hit_counts.lock().expect("hit counts lock");
        let (_, count) = counts.entry(entry.id).or_insert_with(|| (entry.namespace.clone(), 0));
        *count += 1;
        entry.hit_count += *count;
        entry
    }

    pub async fn lookup(self: &Arc<Self>, req: LookupRequest) -> Result<LookupOutcome, CacheError> {
        validate::namespace(&req.namespace)?;
        validate::text("query", &req.query, self.limits.max_query_bytes)?;
        validate::map("scope", &req.scope, validate::MAX_SCOPE_ENTRIES)?;
        if let Some(t) = req.similarity_threshold {
            validate::threshold("similarity_threshold", t)?;
        }
        Counters::bump(&self.totals.lookups);
        let ns = self.namespace(&req.namespace);
        if let Some(ns) = &ns {
            Counters::bump(&ns.counters.lookups);
        }
        let outcome = match &ns {
            Some(ns) => self.find(ns, &req).await?,
            None => LookupOutcome::default(),
        };
        self.totals.outcome(outcome.hit());
        if let Some(ns) = &ns {
            ns.counters.outcome(outcome.hit());
        }
        Ok(outcome)
    }

    async fn find(self: &Arc<Self>, ns: &NamespaceState, req: &LookupRequest) -> Result<LookupOutcome, CacheError> {
        let threshold = req.similarity_threshold.unwrap_or_else(|| ns.read(|r| r.similarity_threshold));
        let now = now_unix_ms();
        let exact = keys::exact_key(&req.namespace, &req.scope, &normalize(&req.query));
        if let Some(entry) = self.exact_entry(&exact, &req.scope, now)? {
            return Ok(LookupOutcome {
                similarity: 1.0,
                nearest_id: Some(entry.id),
                entry: Some(self.record_hit(entry)),
                exact: true,
            });
        }
        // An empty partition is a miss without spending a forward pass.
        let Some(partition) = self.index.partition(&req.namespace, &keys::scope_id(&req.scope)) else {
            return Ok(LookupOutcome::default());
        };
        if partition.is_empty() {
            return Ok(LookupOutcome::default());
        }
        let vector = self.embedder.embed(&req.query).await?;
        let candidates: Vec<Candidate> = if partition.is_graph() {
            tokio::task::spawn_blocking(move || partition.search(&vector, CANDIDATES))
                .await
                .expect("index search panicked")
        } else {
            partition.search(&vector, CANDIDATES)
        };
        for c in candidates {
            let Some(entry) = self.store.get_entry(&req.namespace, c.id)? else { continue };
            if !entry.is_live(now) || entry.scope != req.scope {
                continue;
            }
            let similarity = c.similarity.clamp(-1.0, 1.0);
            let nearest_id = Some(entry.id);
            let entry = (similarity >= threshold).then(|| self.record_hit(entry));
            return Ok(LookupOutcome { entry, similarity, nearest_id, exact: false });
        }
        Ok(LookupOutcome::default())
    }

    /// Caches a response; returns the new entry's id once it is durable.
    pub async fn store(self: &Arc<Self>, req: StoreRequest) -> Result<u64, CacheError> {
        validate::namespace(&req.namespace)?;
        validate::text("query", &req.query, self.limits.max_query_bytes)?;
        validate::text("response", &req.response, self.limits.max_response_bytes)?;
        validate::map("scope", &req.scope, validate::MAX_SCOPE_ENTRIES)?;
        validate::map("metadata", &req.metadata, validate::MAX_METADATA_ENTRIES)?;
        if !req.usage.cost_usd.is_finite() || req.usage.cost_usd < 0.0 {
            return Err(CacheError::InvalidArgument {
                field: "usage.cost_usd",
                reason: format!("is {}; it must be a finite number >= 0", req.usage.cost_usd),
            });
        }
        let vector = self.embedder.embed(&req.query).await?;
        let this = self.clone();
        tokio::task::spawn_blocking(move || this.store_blocking(req, vector)).await.expect("store task panicked")
    }

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
            hit_count: 0,
            vector,
            input_tokens: req.usage.input_tokens,
            output_tokens: req.usage.output_tokens,
            cost_usd: req.usage.cost_usd,
        };

        let _guard = self.stripes[self.stripe(&exact)].lock().expect("stripe lock");
        // The same question in the same scope replaces the older answer, in the same batch.
        let replaced = self.store.get_exact(&exact)?.map(|(_, old)| old);
        let mut batch = self.store.batch();
        batch.put_entry(&entry);
        batch.put_exact(&exact, &entry.namespace, id);
        if let Some(old) = replaced {
            batch.delete_entry(&entry.namespace, old);
        }
        self.store.write(batch)?;
        self.index.insert(&entry.namespace, &scope, id, &entry.vector);
        if let Some(old) = replaced {
            self.index.remove(&entry.namespace, &scope, old);
            self.hit_counts.lock().expect("hit counts lock").remove(&old);
        }
        Counters::bump(&self.totals.stores);
        Counters::bump(&ns.counters.stores);
        Ok(id)
    }

    fn namespace_or_create(&self, name: &str, now: i64) -> Result<Arc<NamespaceState>, CacheError> {
        if let Some(ns) = self.namespace(name) {
            return Ok(ns);
        }
        let _guard = self.configure.lock().expect("configure lock");
        if let Some(ns) = self.namespace(name) {
            return Ok(ns);
        }
        let record = default_record(name, self.defaults, &self.embedder.info().fingerprint, now);
        self.persist_namespace(&record)?;
        let state = NamespaceState::new(record);
        self.namespaces.write().expect("namespaces lock").insert(name.to_owned(), state.clone());
        Ok(state)
    }

    fn persist_namespace(&self, record: &NamespaceRecord) -> Result<(), CacheError> {
        let mut batch = self.store.batch();
        batch.put_namespace(record);
        Ok(self.store.write(batch)?)
    }

    pub async fn delete(self: &Arc<Self>, namespace: String, target: DeleteTarget) -> Result<u64, CacheError> {
        validate::namespace(&namespace)?;
        if let DeleteTarget::Scope(scope) = &target {
            validate::map("scope", scope, validate::MAX_SCOPE_ENTRIES)?;
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
            (DeleteTarget::Scope(scope), _) => this.delete_matching(&namespace, |e| e.scope == scope),
            _ => this.delete_matching(&namespace, |_| true),
        })
        .await
        .expect("delete task panicked")
    }

    fn delete_matching(&self, namespace: &str, matches: impl Fn(&Entry) -> bool) -> Result<u64, CacheError> {
        const CHUNK: usize = 1024;
        let mut deleted = 0;
        let mut chunk = Vec::with_capacity(CHUNK);
        for entry in self.store.scan_namespace(namespace) {
            let entry = entry?;
            if matches(&entry) {
                chunk.push(entry);
            }
            if chunk.len() == CHUNK {
                deleted += self.delete_entries(std::mem::take(&mut chunk))?;
            }
        }
        Ok(deleted + self.delete_entries(chunk)?)
    }

    /// Deletes entries in one durable batch, with their exact keys where those still point
    /// at them (a newer Store of the same text may have taken the key over).
    fn delete_entries(&self, entries: Vec<Entry>) -> Result<u64, CacheError> {
        if entries.is_empty() {
            return Ok(0);
        }
        let exact: Vec<[u8; 32]> =
            entries.iter().map(|e| keys::exact_key(&e.namespace, &e.scope, &normalize(&e.query))).collect();
        let mut stripes: Vec<usize> = exact.iter().map(|k| self.stripe(k)).collect();
        stripes.sort_unstable();
        stripes.dedup();
        // Always taken in ascending order, so two deletes cannot deadlock; a Store takes one.
        let _guards: Vec<_> = stripes.iter().map(|&s| self.stripes[s].lock().expect("stripe lock")).collect();
        let mut batch = self.store.batch();
        for (entry, key) in entries.iter().zip(&exact) {
            batch.delete_entry(&entry.namespace, entry.id);
            if self.store.get_exact(key)?.is_some_and(|(_, id)| id == entry.id) {
                batch.delete_exact(key);
            }
        }
        self.store.write(batch)?;
        let mut counts = self.hit_counts.lock().expect("hit counts lock");
        for entry in &entries {
            self.index.remove(&entry.namespace, &keys::scope_id(&entry.scope), entry.id);
            counts.remove(&entry.id);
        }
        Ok(entries.len() as u64)
    }

    /// Writes the hit counts gathered in memory into their entries (one durable batch). Called
    /// at graceful shutdown, after the last request; counts since the last flush are lost in a
    /// crash, which costs accuracy of a statistic, never an entry.
    pub fn flush_hit_counts(&self) -> Result<usize, CacheError> {
        let counts = std::mem::take(&mut *self.hit_counts.lock().expect("hit counts lock"));
        let mut batch = self.store.batch();
        for (id, (namespace, hits)) in &counts {
            // An entry deleted since its last hit stays deleted.
            if let Some(mut entry) = self.store.get_entry(namespace, *id)? {
                entry.hit_count += hits;
                batch.put_entry(&entry);
            }
        }
        let flushed = batch.len();
        if !batch.is_empty() {
            self.store.write(batch)?;
        }
        Ok(flushed)
    }

    pub async fn configure_namespace(self: &Arc<Self>, update: NamespaceUpdate) -> Result<NamespaceView, CacheError> {
        validate::namespace(&update.name)?;
        if let Some(t) = update.similarity_threshold {
            validate::threshold("similarity_threshold", t)?;
        }
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            let ns = this.namespace_or_create(&update.name, now_unix_ms())?;
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
            this.persist_namespace(&record)?;
            *ns.settings.write().expect("namespace lock") = record;
            Ok(this.view(&update.name, &ns))
        })
        .await
        .expect("configure task panicked")
    }

    fn view(&self, name: &str, ns: &NamespaceState) -> NamespaceView {
        NamespaceView { settings: ns.settings(), entries: self.index.len(name) as u64 }
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

    /// Counters since start; `namespace` empty means all namespaces.
    pub fn stats(&self, namespace: &str) -> Result<Stats, CacheError> {
        let read = |c: &Counters, entries: usize| Stats {
            lookups: c.lookups.load(Ordering::Relaxed),
            hits: c.hits.load(Ordering::Relaxed),
            misses: c.misses.load(Ordering::Relaxed),
            stores: c.stores.load(Ordering::Relaxed),
            entries: entries as u64,
        };
        if namespace.is_empty() {
            return Ok(read(&self.totals, self.index.total()));
        }
        validate::namespace(namespace)?;
        let ns = self.namespace(namespace).ok_or_else(|| CacheError::NamespaceNotFound(namespace.to_owned()))?;
        Ok(read(&ns.counters, self.index.len(namespace)))
    }
}

fn default_record(name: &str, defaults: Defaults, model: &str, now: i64) -> NamespaceRecord {
    NamespaceRecord {
        name: name.to_owned(),
        similarity_threshold: defaults.similarity_threshold,
        ttl_seconds: defaults.ttl_seconds,
        max_entries: 0,
        embedding_model: model.to_owned(),
        created_at_unix_ms: now,
    }
}
