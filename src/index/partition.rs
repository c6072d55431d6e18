//! One namespace+scope partition of the vector index.
//!
//! Small partitions are scanned in full: below a few thousand vectors a scan is as fast as a
//! graph walk and misses nothing. Past `flat_limit` the partition is rebuilt, in the
//! background, as an HNSW graph (built by hnsw_rs, kept in the compact layout of
//! [`super::compact`]). Removed points are marked dead and filtered out at search time, and a
//! graph whose dead share grows is rebuilt without them.
//!
//! Vectors are held as int8 codes (see [`super::quant`]), so the similarities returned here
//! are approximate (within a few thousandths): ask for a few more candidates than needed and
//! re-rank them with the exact vectors, which RocksDB keeps.

use super::compact::{Compact, Query};
use super::quant::{packed, quantize, DistQ8};
use super::{checkpoint, ScopeId};
use hnsw_rs::prelude::Hnsw;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
// parking_lot: a panic inside an hnsw_rs insert must not poison the partition for every later
// search, as std's locks would.
use parking_lot::{Mutex, RwLock, RwLockReadGuard, RwLockWriteGuard};
use rayon::prelude::*;
use std::sync::Arc;

/// Tuning of the graphs; see `IndexParams::default` for the reasoning behind each value.
#[derive(Debug, Clone, Copy)]
pub struct IndexParams {
    /// Up to this many vectors a partition is scanned exactly.
    pub flat_limit: usize,
    /// Links per node (HNSW's M).
    pub max_connections: usize,
    pub ef_construction: usize,
    pub ef_search: usize,
}

impl Default for IndexParams {
    fn default() -> Self {
        Self {
            // A 384-d scan of 4096 vectors is ~1.6M multiply-adds, well under a millisecond.
            flat_limit: 4096,
            max_connections: 16,
            ef_construction: 200,
            // At 1M real-structure vectors, 128 finds the true nearest for 98.0% of reworded
            // paraphrase queries at p99 1.3 ms (64: 96.8% at 0.7 ms); a lookup's cost is the
            // model's ~8 ms either way (README, "The index").
            ef_search: 128,
        }
    }
}

/// A nearest neighbour: the entry id and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u64,
    pub similarity: f32,
}

/// The share of dead points past which a graph is rebuilt without them: they still cost
/// memory and search time (a filtered walk visits them), and hnsw_rs cannot delete.
const MAX_DEAD_SHARE: f64 = 0.25;

/// Vectors per `parallel_insert` call when building a graph; progress is logged between them.
const BUILD_SLICE: usize = 50_000;

/// Inserts planned in parallel before they are linked in (catch-up after a checkpoint).
const INSERT_CHUNK: usize = 64;

pub struct Partition {
    namespace: Arc<str>,
    scope: ScopeId,
    dim: usize,
    params: IndexParams,
    inner: RwLock<Inner>,
    /// While a background rebuild runs, the changes made meanwhile, replayed onto the new
    /// structure just before it is swapped in.
    journal: Mutex<Option<Vec<Change>>>,
    /// Vectors inserted since the last checkpoint (removals do not change the graph file).
    changed: AtomicBool,
    /// While a checkpoint reads the graph (seconds, for a large one), changes wait here
    /// instead of blocking Stores on the graph's lock; searches see them, and they are
    /// applied once the dump is done. Lock order: `staged` before `inner`.
    staged: Mutex<Option<Staged>>,
}

#[derive(Default)]
struct Staged {
    inserts: Flat,
    /// Ids of the graph removed meanwhile.
    removes: HashSet<u64>,
}

enum Change {
    Insert(u64, Vec<f32>),
    Remove(u64),
}

enum Inner {
    Flat(Flat),
    Graph(Compact),
}

#[derive(Default)]
struct Flat {
    ids: Vec<u64>,
    /// Row-major, `dim` codes per id, in the order of `ids`.
    codes: Vec<i8>,
    scales: Vec<f32>,
    position: HashMap<u64, usize>,
}

impl Partition {
    pub fn new(namespace: Arc<str>, scope: ScopeId, dim: usize, params: IndexParams) -> Self {
        Self::with_inner(namespace, scope, dim, params, Inner::Flat(Flat::default()))
    }

    fn with_inner(namespace: Arc<str>, scope: ScopeId, dim: usize, params: IndexParams, inner: Inner) -> Self {
        Self {
            namespace,
            scope,
            dim,
            params,
            inner: RwLock::new(inner),
            journal: Mutex::new(None),
            changed: AtomicBool::new(false),
            staged: Mutex::new(None),
        }
    }

    /// Builds a partition from many vectors at once, using parallel insertion when the
    /// partition is large enough to need a graph.
    pub fn from_vectors(
        namespace: Arc<str>,
        scope: ScopeId,
        dim: usize,
        params: IndexParams,
        items: Vec<(u64, Vec<f32>)>,
    ) -> Self {
        let graph = items.len() > params.flat_limit;
        let p = Self::with_inner(namespace, scope, dim, params, Inner::build(&params, items));
        p.changed.store(graph, Ordering::Relaxed);
        p
    }

    /// Wraps a graph reloaded from a checkpoint. Its points that are not in `live` were
    /// deleted since the checkpoint; returns the live ids it lacks, to be inserted.
    pub fn from_checkpoint(
        namespace: Arc<str>,
        scope: ScopeId,
        dim: usize,
        params: IndexParams,
        mut graph: Compact,
        live: &HashSet<u64>,
    ) -> (Self, Vec<u64>) {
        let gone: Vec<u64> = graph.ids().iter().copied().filter(|id| !live.contains(id)).collect();
        for id in gone {
            graph.remove(id);
        }
        let missing = live.iter().copied().filter(|id| !graph.contains_live(*id)).collect();
        (Self::with_inner(namespace, scope, dim, params, Inner::Graph(graph)), missing)
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn scope(&self) -> &ScopeId {
        &self.scope
    }

    fn read(&self) -> RwLockReadGuard<'_, Inner> {
        self.inner.read()
    }

    fn write(&self) -> RwLockWriteGuard<'_, Inner> {
        self.inner.write()
    }

    pub fn len(&self) -> usize {
        let staged = self.staged.lock();
        let (added, removed) = staged.as_ref().map_or((0, 0), |s| (s.inserts.ids.len(), s.removes.len()));
        (self.read().len() + added).saturating_sub(removed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes the partition's structure holds (codes, links, ids), for the memory table.
    pub fn memory(&self) -> super::compact::Memory {
        self.read().memory()
    }

    /// Whether a search walks a graph (worth moving off the async threads) rather than
    /// scanning a few thousand vectors.
    pub fn is_graph(&self) -> bool {
        matches!(&*self.read(), Inner::Graph(_))
    }

    pub fn insert(&self, id: u64, vector: &[f32]) {
        debug_assert_eq!(vector.len(), self.dim);
        let mut staged = self.staged.lock();
        if let Some(staged) = staged.as_mut() {
            staged.inserts.push(id, vector);
            self.changed.store(true, Ordering::Relaxed);
            return;
        }
        // A graph insert searches for its neighbours under the read lock, so that searches
        // keep going meanwhile; only linking the point in takes the write lock.
        let plan = match &*self.read() {
            Inner::Graph(graph) => Some(graph.plan(id, vector)),
            Inner::Flat(_) => None,
        };
        let mut inner = self.write();
        match (&mut *inner, plan) {
            (Inner::Graph(graph), Some(plan)) => graph.apply(plan),
            (inner, _) => inner.insert(id, vector),
        }
        self.changed.store(true, Ordering::Relaxed);
        if let Some(journal) = self.journal.lock().as_mut() {
            journal.push(Change::Insert(id, vector.to_vec()));
        }
    }

    /// Inserts many vectors at once (catch-up after a checkpoint), in parallel for a graph.
    pub fn insert_many(&self, items: &[(u64, Vec<f32>)]) {
        if items.is_empty() {
            return;
        }
        self.write().insert_many(items);
        self.changed.store(true, Ordering::Relaxed);
        if let Some(journal) = self.journal.lock().as_mut() {
            journal.extend(items.iter().map(|(id, v)| Change::Insert(*id, v.clone())));
        }
    }

    /// Removes an id; returns whether it was present.
    pub fn remove(&self, id: u64) -> bool {
        let mut staged = self.staged.lock();
        if let Some(staged) = staged.as_mut() {
            if staged.inserts.remove(id) {
                return true;
            }
            // Only the checkpoint holds `inner` now (for reading), and it cannot be waiting
            // for a write lock while we hold `staged`: reading here is safe.
            let present = self.read().contains(id);
            return present && staged.removes.insert(id);
        }
        let mut inner = self.write();
        let removed = inner.remove(id);
        if removed {
            if let Some(journal) = self.journal.lock().as_mut() {
                journal.push(Change::Remove(id));
            }
        }
        removed
    }

    /// The `k` nearest live vectors to a unit-length query, most similar first, with
    /// approximate similarities (int8 codes): re-rank them with the exact vectors.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Candidate> {
        self.search_with_ef(query, k, self.params.ef_search)
    }

    /// [`Partition::search`] with another HNSW search breadth (`ef`), for tuning it.
    pub fn search_with_ef(&self, query: &[f32], k: usize, ef: usize) -> Vec<Candidate> {
        let (recent, removed) = match &*self.staged.lock() {
            None => return self.search_inner(query, k, ef),
            Some(s) => (s.inserts.search(self.dim, &Query::new(query), k), s.removes.clone()),
        };
        let mut found = self.search_inner(query, k + removed.len(), ef);
        found.retain(|c| !removed.contains(&c.id));
        found.extend(recent);
        found.sort_by(|a, b| b.similarity.total_cmp(&a.similarity));
        found.truncate(k);
        found
    }

    fn search_inner(&self, query: &[f32], k: usize, ef: usize) -> Vec<Candidate> {
        let query = Query::new(query);
        match &*self.read() {
            Inner::Flat(flat) => flat.search(self.dim, &query, k),
            Inner::Graph(graph) => {
                graph.search(&query, k, ef).into_iter().map(|(id, similarity)| Candidate { id, similarity }).collect()
            }
        }
    }

    /// Whether the structure no longer fits its contents: an exact scan grown past
    /// `flat_limit`, or a graph with too many dead points.
    pub fn needs_rebuild(&self) -> bool {
        match &*self.read() {
            Inner::Flat(flat) => flat.ids.len() > self.params.flat_limit,
            Inner::Graph(graph) => graph.dead_count() as f64 > graph.points() as f64 * MAX_DEAD_SHARE,
        }
    }

    /// Rebuilds from the live vectors without blocking searches or inserts for the length of
    /// the build: the new structure is made aside, then catches up on the changes made
    /// meanwhile and is swapped in under a short write lock. Call from one thread at a time
    /// per partition (the maintenance thread).
    pub fn rebuild(&self) {
        let live = {
            let inner = self.read();
            // Under the read lock no insert is in progress: every change is either in this
            // snapshot or in the journal.
            *self.journal.lock() = Some(Vec::new());
            inner.live_vectors(self.dim)
        };
        let mut fresh = Inner::build(&self.params, live);
        let mut inner = self.write();
        let changes = self.journal.lock().take().unwrap_or_default();
        for change in changes {
            match change {
                Change::Insert(id, v) => fresh.insert(id, &v),
                Change::Remove(id) => {
                    fresh.remove(id);
                }
            }
        }
        let graph = matches!(fresh, Inner::Graph(_));
        *inner = fresh;
        self.changed.store(graph, Ordering::Relaxed);
    }

    /// Writes this partition's checkpoint if it is a graph that changed since the last one.
    /// Returns whether one was written. Changes made during the dump are staged, then applied.
    pub fn checkpoint(&self, graphs: &Path, model: &str) -> std::io::Result<bool> {
        if !self.is_graph() || !self.changed.swap(false, Ordering::Relaxed) {
            return Ok(false);
        }
        self.start_staging();
        let written = self.dump(graphs, model);
        self.apply_staged();
        if written.is_err() {
            self.changed.store(true, Ordering::Relaxed);
        }
        written.map(|()| true)
    }

    fn start_staging(&self) {
        *self.staged.lock() = Some(Staged::default());
    }

    /// Applies the staged changes and goes back to writing straight into the structure.
    fn apply_staged(&self) {
        let mut staged = self.staged.lock();
        let mut inner = self.write();
        let Staged { inserts, removes } = staged.take().unwrap_or_default();
        inner.insert_many(&inserts.decoded(self.dim));
        for id in removes {
            inner.remove(id);
        }
    }

    fn dump(&self, graphs: &Path, model: &str) -> std::io::Result<()> {
        let inner = self.read();
        let Inner::Graph(graph) = &*inner else { return Ok(()) };
        let meta = checkpoint::Meta {
            format: checkpoint::FORMAT,
            namespace: self.namespace.to_string(),
            scope: checkpoint::scope_hex(&self.scope),
            dim: self.dim,
            model: model.to_owned(),
            points: graph.points(),
            written_unix_ms: crate::clock::now_unix_ms(),
        };
        checkpoint::write(graphs, graph, &meta)
    }
}

impl Inner {
    fn build(params: &IndexParams, items: Vec<(u64, Vec<f32>)>) -> Self {
        if items.len() <= params.flat_limit {
            let mut flat = Flat::default();
            for (id, v) in &items {
                flat.push(*id, v);
            }
            return Inner::Flat(flat);
        }
        let dim = items.first().map_or(0, |(_, v)| v.len());
        let hnsw: Hnsw<'static, i8, DistQ8> =
            Hnsw::new(params.max_connections, items.len(), 16, params.ef_construction, DistQ8);
        let rows: Vec<(u64, Vec<i8>)> = items.into_iter().map(|(id, v)| (id, packed(&v))).collect();
        // In slices, so that a build of minutes reports progress.
        let started = std::time::Instant::now();
        let mut done = 0;
        for slice in rows.chunks(BUILD_SLICE) {
            let refs: Vec<(&[i8], usize)> = slice.iter().map(|(id, v)| (v.as_slice(), *id as usize)).collect();
            hnsw.parallel_insert_slice(&refs);
            done += slice.len();
            if rows.len() > BUILD_SLICE {
                tracing::info!(done, total = rows.len(), elapsed_s = started.elapsed().as_secs(), "building graph");
            }
        }
        drop(rows);
        let graph = Compact::from_hnsw(&hnsw, dim, params.max_connections, params.ef_construction);
        drop(hnsw);
        release_freed_memory();
        Inner::Graph(graph)
    }

    fn len(&self) -> usize {
        match self {
            Inner::Flat(f) => f.ids.len(),
            Inner::Graph(g) => g.points() - g.dead_count(),
        }
    }

    fn insert(&mut self, id: u64, vector: &[f32]) {
        match self {
            Inner::Flat(flat) => flat.push(id, vector),
            Inner::Graph(graph) => graph.insert(id, vector),
        }
    }

    fn insert_many(&mut self, items: &[(u64, Vec<f32>)]) {
        match self {
            Inner::Graph(graph) => {
                // Planned in parallel, a chunk at a time, so that each chunk links to the ones
                // before it.
                for chunk in items.chunks(INSERT_CHUNK) {
                    let plans: Vec<_> = {
                        let graph = &*graph;
                        chunk.par_iter().map(|(id, v)| graph.plan(*id, v)).collect()
                    };
                    plans.into_iter().for_each(|plan| graph.apply(plan));
                }
            }
            flat => items.iter().for_each(|(id, v)| flat.insert(*id, v)),
        }
    }

    /// Whether a live vector with this id is here.
    fn contains(&self, id: u64) -> bool {
        match self {
            Inner::Flat(flat) => flat.position.contains_key(&id),
            Inner::Graph(graph) => graph.contains_live(id),
        }
    }

    fn remove(&mut self, id: u64) -> bool {
        match self {
            Inner::Flat(flat) => flat.remove(id),
            Inner::Graph(graph) => graph.remove(id),
        }
    }

    /// The live vectors, decoded from their codes. A rebuild quantises them again to the
    /// same codes (each row's largest code is 127 times its scale), so nothing is lost.
    fn live_vectors(&self, dim: usize) -> Vec<(u64, Vec<f32>)> {
        match self {
            Inner::Flat(flat) => flat.decoded(dim),
            Inner::Graph(graph) => graph.live_decoded(),
        }
    }

    /// Bytes held by the structure, for the memory table.
    pub fn memory(&self) -> super::compact::Memory {
        match self {
            Inner::Graph(graph) => graph.memory(),
            Inner::Flat(flat) => super::compact::Memory {
                codes: flat.codes.capacity() + flat.scales.capacity() * 4,
                links: 0,
                ids: flat.ids.capacity() * 8 + super::compact::hash_table_bytes(flat.position.capacity(), 16),
            },
        }
    }
}

impl Flat {
    fn push(&mut self, id: u64, vector: &[f32]) {
        let dim = vector.len();
        if let Some(&at) = self.position.get(&id) {
            let mut codes = Vec::with_capacity(dim);
            self.scales[at] = quantize(vector, &mut codes);
            self.codes[at * dim..(at + 1) * dim].copy_from_slice(&codes);
            return;
        }
        self.position.insert(id, self.ids.len());
        self.ids.push(id);
        let scale = quantize(vector, &mut self.codes);
        self.scales.push(scale);
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(at) = self.position.remove(&id) else { return false };
        let dim = self.codes.len() / self.ids.len();
        let last = self.ids.len() - 1;
        self.ids.swap_remove(at);
        self.scales.swap_remove(at);
        if at != last {
            self.codes.copy_within(last * dim..(last + 1) * dim, at * dim);
            self.position.insert(self.ids[at], at);
        }
        self.codes.truncate(last * dim);
        true
    }

    fn decoded(&self, dim: usize) -> Vec<(u64, Vec<f32>)> {
        self.ids
            .iter()
            .zip(self.codes.chunks_exact(dim.max(1)))
            .zip(&self.scales)
            .map(|((id, codes), scale)| (*id, codes.iter().map(|&c| f32::from(c) * scale).collect()))
            .collect()
    }

    fn search(&self, dim: usize, query: &Query, k: usize) -> Vec<Candidate> {
        let mut best: Vec<Candidate> = Vec::with_capacity(k + 1);
        for ((id, codes), scale) in self.ids.iter().zip(self.codes.chunks_exact(dim.max(1))).zip(&self.scales) {
            let similarity = query.similarity(codes, *scale);
            if best.len() == k && best.last().is_some_and(|c| c.similarity >= similarity) {
                continue;
            }
            let at = best.partition_point(|c| c.similarity >= similarity);
            best.insert(at, Candidate { id: *id, similarity });
            best.truncate(k);
        }
        best
    }
}

/// Hands memory freed on the heap back to the OS. hnsw_rs's build allocates an `Arc` and a
/// `Vec` per link (~3.5 KB a point); freed, those millions of small chunks stay in glibc's heap
/// as free but resident pages, and RSS would stay at its build-time peak (measured at 100k:
/// 737 MiB after a build, 197 MiB for the same graph loaded from its checkpoint).
fn release_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages of the allocator's own heap to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Dot product in eight independent lanes, so the compiler can vectorise it without
/// reassociating floating-point sums itself.
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca.remainder().iter().zip(cb.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    acc.iter().sum::<f32>() + tail
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        crate::rng::unit_vector(seed, dim)
    }

    fn brute_force(items: &[(u64, Vec<f32>)], q: &[f32]) -> u64 {
        items.iter().max_by(|a, b| dot(q, &a.1).total_cmp(&dot(q, &b.1))).map(|(id, _)| *id).unwrap()
    }

    #[test]
    fn dot_matches_naive_sum() {
        let (a, b) = (unit(1, 19), unit(2, 19));
        let naive: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - naive).abs() < 1e-6);
    }

    #[test]
    fn a_panic_under_the_lock_leaves_the_partition_serving() {
        let params = IndexParams { flat_limit: 8, ..IndexParams::default() };
        let items: Vec<_> = (0..40).map(|i| (i, unit(i, 16))).collect();
        let p = Partition::from_vectors("ns".into(), [0; 16], 16, params, items.clone());
        assert!(p.is_graph());
        // What a panicking hnsw_rs insert does: unwind while holding the graph's write lock
        // (and the staging lock, taken first by every insert).
        let crashed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _staged = p.staged.lock();
            let _graph = p.write();
            panic!("an insert panicked inside the graph");
        }));
        assert!(crashed.is_err());
        assert_eq!(p.search(&items[3].1, 1)[0].id, 3, "searches go on");
        p.insert(100, &unit(100, 16));
        assert!(p.remove(5));
        assert_eq!(p.search(&unit(100, 16), 1)[0].id, 100, "and so do inserts");
        assert_eq!(p.len(), 40);
    }

    #[test]
    fn flat_search_ranks_and_removes() {
        let p = Partition::new("ns".into(), [0; 16], 16, IndexParams::default());
        let items: Vec<_> = (0..50).map(|i| (i, unit(i, 16))).collect();
        for (id, v) in &items {
            p.insert(*id, v);
        }
        let top = p.search(&items[7].1, 3);
        assert_eq!(top[0].id, 7);
        assert!((top[0].similarity - 1.0).abs() < 5e-3, "codes are within a few thousandths");
        assert!(top[0].similarity >= top[1].similarity && top[1].similarity >= top[2].similarity);
        assert!(p.remove(7));
        assert!(!p.remove(7));
        assert_eq!(p.len(), 49);
        assert!(p.search(&items[7].1, 5).iter().all(|c| c.id != 7));
        // The last row moved into the hole must still be found as itself.
        assert_eq!(p.search(&items[49].1, 1)[0].id, 49);
    }

    #[test]
    fn graph_agrees_with_brute_force_and_filters_dead_ids() {
        let params = IndexParams { flat_limit: 64, ..IndexParams::default() };
        let p = Partition::new("ns".into(), [0; 16], 32, params);
        let items: Vec<_> = (0..600).map(|i| (i, unit(i + 1000, 32))).collect();
        for (id, v) in &items[..300] {
            p.insert(*id, v);
        }
        assert!(!p.is_graph(), "an exact scan until the background rebuild");
        assert!(p.needs_rebuild());
        p.rebuild();
        assert!(p.is_graph() && !p.needs_rebuild());
        for (id, v) in &items[300..] {
            p.insert(*id, v);
        }
        assert_eq!(p.len(), 600);
        let mut agree = 0;
        for q in 0..100 {
            let query = unit(q + 50_000, 32);
            if p.search(&query, 1)[0].id == brute_force(&items, &query) {
                agree += 1;
            }
        }
        assert!(agree >= 95, "recall@1 {agree}/100");
        assert!(p.remove(3));
        assert_eq!(p.len(), 599);
        assert!(p.search(&items[3].1, 5).iter().all(|c| c.id != 3));
    }

    #[test]
    fn bulk_build_matches_incremental() {
        let params = IndexParams { flat_limit: 64, ..IndexParams::default() };
        let items: Vec<_> = (0..300).map(|i| (i, unit(i, 24))).collect();
        let p = Partition::from_vectors("ns".into(), [0; 16], 24, params, items.clone());
        assert!(p.is_graph());
        assert_eq!(p.search(&items[123].1, 1)[0].id, 123);
        let small = Partition::from_vectors("ns".into(), [0; 16], 24, params, items[..10].to_vec());
        assert!(!small.is_graph());
        assert_eq!(small.search(&items[4].1, 1)[0].id, 4);
    }

    #[test]
    fn a_graph_with_many_dead_points_is_rebuilt_without_them() {
        let params = IndexParams { flat_limit: 64, ..IndexParams::default() };
        let items: Vec<_> = (0..400).map(|i| (i, unit(i + 7, 24))).collect();
        let p = Partition::from_vectors("ns".into(), [0; 16], 24, params, items.clone());
        for id in 0..150 {
            assert!(p.remove(id));
        }
        assert!(p.needs_rebuild());
        assert_eq!(p.len(), 250);
        p.rebuild();
        assert!(!p.needs_rebuild());
        assert_eq!(p.len(), 250);
        assert!(p.is_graph());
        assert_eq!(p.search(&items[399].1, 1)[0].id, 399);
        assert!(p.search(&items[3].1, 5).iter().all(|c| c.id >= 150));
        // Shrunk below the limit: back to an exact scan.
        for id in 150..380 {
            p.remove(id);
        }
        p.rebuild();
        assert!(!p.is_graph());
        assert_eq!(p.len(), 20);
    }

    #[test]
    fn changes_made_during_a_rebuild_are_kept() {
        let params = IndexParams { flat_limit: 64, ..IndexParams::default() };
        let items: Vec<_> = (0..3000).map(|i| (i, unit(i + 3, 24))).collect();
        let p = Partition::new("ns".into(), [0; 16], 24, params);
        for (id, v) in &items[..2000] {
            p.insert(*id, v);
        }
        std::thread::scope(|s| {
            s.spawn(|| p.rebuild());
            // Writers keep going while the graph is built aside.
            for (id, v) in &items[2000..] {
                p.insert(*id, v);
            }
            for id in 0..100 {
                p.remove(id);
            }
        });
        assert!(p.is_graph());
        assert_eq!(p.len(), 2900);
        for probe in [150u64, 1999, 2000, 2999] {
            assert_eq!(p.search(&items[probe as usize].1, 1)[0].id, probe);
        }
        assert!(p.search(&items[50].1, 5).iter().all(|c| c.id >= 100));
    }

    #[test]
    fn writes_during_a_checkpoint_are_staged_searchable_and_then_applied() {
        let params = IndexParams { flat_limit: 64, ..IndexParams::default() };
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<_> = (0..2600).map(|i| (i, unit(i + 11, 24))).collect();
        let p = Partition::from_vectors("ns".into(), [0; 16], 24, params, items[..2000].to_vec());
        // What `checkpoint` does, with writes in the middle of it.
        p.start_staging();
        for (id, v) in &items[2000..2300] {
            p.insert(*id, v);
            assert_eq!(p.search(v, 1)[0].id, *id, "a staged insert is found at once");
        }
        p.dump(dir.path(), "m").unwrap();
        for (id, v) in &items[2300..] {
            p.insert(*id, v);
        }
        for id in (0..50).chain(2290..2300) {
            assert!(p.remove(id));
            assert!(p.search(&items[id as usize].1, 3).iter().all(|c| c.id != id), "a staged remove hides {id}");
        }
        assert!(!p.remove(7), "already removed");
        assert_eq!(p.len(), 2540);
        p.apply_staged();
        assert_eq!(p.len(), 2540);
        assert_eq!(p.search(&items[2500].1, 1)[0].id, 2500);
        assert!(p.search(&items[10].1, 5).iter().all(|c| c.id >= 50));
        let (_, meta) = checkpoint::load(dir.path(), "ns", &[0; 16], 24, "m").unwrap();
        assert_eq!(meta.points, 2000, "the dump holds the graph as it was when it began");

        // The same through `checkpoint` on another thread, writes racing it.
        std::thread::scope(|s| {
            let dumper = s.spawn(|| p.checkpoint(dir.path(), "m").unwrap());
            p.insert(5000, &unit(5000, 24));
            assert!(dumper.join().unwrap());
        });
        assert_eq!(p.search(&unit(5000, 24), 1)[0].id, 5000);
        assert_eq!(p.len(), 2541);
    }

    #[test]
    fn checkpoint_reloads_and_catches_up_with_the_live_set() {
        let params = IndexParams { flat_limit: 64, ..IndexParams::default() };
        let dir = tempfile::tempdir().unwrap();
        let items: Vec<_> = (0..300).map(|i| (i, unit(i + 99, 24))).collect();
        let p = Partition::from_vectors("ns".into(), [5; 16], 24, params, items[..200].to_vec());
        assert!(p.checkpoint(dir.path(), "model-a").unwrap());
        assert!(!p.checkpoint(dir.path(), "model-a").unwrap(), "unchanged since: nothing to write");

        // Since the checkpoint: 0..10 deleted, 200..300 added.
        let live: HashSet<u64> = (10..300).collect();
        let (hnsw, meta) = checkpoint::load(dir.path(), "ns", &[5; 16], 24, "model-a").unwrap();
        assert_eq!(meta.points, 200);
        let (q, mut missing) = Partition::from_checkpoint("ns".into(), [5; 16], 24, params, hnsw, &live);
        missing.sort_unstable();
        assert_eq!(missing, (200..300).collect::<Vec<_>>());
        q.insert_many(&items[200..]);
        assert_eq!(q.len(), 290);
        assert_eq!(q.search(&items[250].1, 1)[0].id, 250);
        assert_eq!(q.search(&items[150].1, 1)[0].id, 150);
        assert!(q.search(&items[5].1, 5).iter().all(|c| c.id >= 10));

        assert!(checkpoint::load(dir.path(), "ns", &[5; 16], 24, "model-b").is_err(), "other model");
        assert!(checkpoint::load(dir.path(), "ns", &[6; 16], 24, "model-a").is_err(), "other scope");
        // A damaged graph file is refused, not a panic: one flipped bit in a code (which no
        // structural check could see) fails the checksum, and garbage fails to parse.
        let file = dir.path().join(checkpoint::key("ns", &[5; 16])).join("graph.bin");
        let mut bytes = std::fs::read(&file).unwrap();
        // Past the 48-byte header and the 200 points' ids, scales and levels: a code.
        bytes[48 + 200 * (8 + 4 + 1) + 5] ^= 1;
        std::fs::write(&file, &bytes).unwrap();
        let err = checkpoint::load(dir.path(), "ns", &[5; 16], 24, "model-a").err().unwrap();
        assert!(err.to_string().contains("checksum"), "{err}");
        std::fs::write(&file, b"garbage").unwrap();
        let err = checkpoint::load(dir.path(), "ns", &[5; 16], 24, "model-a").err().unwrap();
        assert!(matches!(err, checkpoint::LoadError::Unusable { .. }), "{err}");
    }
}
