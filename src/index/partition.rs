//! One namespace+scope partition of the vector index.
//!
//! Small partitions are scanned exactly: below a few thousand vectors a scan is as fast as a
//! graph walk and has perfect recall. Past `flat_limit` the partition becomes an hnsw_rs graph.
//! hnsw_rs cannot delete, so removed ids are remembered and filtered out at search time.

use hnsw_rs::prelude::{DistDot, Hnsw};
use std::collections::{HashMap, HashSet};
use std::sync::RwLock;

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
            ef_search: 64,
        }
    }
}

/// A nearest neighbour: the entry id and its cosine similarity to the query.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Candidate {
    pub id: u64,
    pub similarity: f32,
}

pub struct Partition {
    dim: usize,
    params: IndexParams,
    inner: RwLock<Inner>,
}

enum Inner {
    Flat(Flat),
    Graph(Graph),
}

#[derive(Default)]
struct Flat {
    ids: Vec<u64>,
    /// Row-major, `dim` floats per id, in the order of `ids`.
    vectors: Vec<f32>,
    position: HashMap<u64, usize>,
}

struct Graph {
    hnsw: Hnsw<'static, f32, DistDot>,
    dead: HashSet<u64>,
    inserted: usize,
}

impl Partition {
    pub fn new(dim: usize, params: IndexParams) -> Self {
        Self { dim, params, inner: RwLock::new(Inner::Flat(Flat::default())) }
    }

    /// Builds a partition from many vectors at once (start-up), using parallel insertion when
    /// the partition is large enough to need a graph.
    pub fn from_vectors(dim: usize, params: IndexParams, items: Vec<(u64, Vec<f32>)>) -> Self {
        let inner = if items.len() <= params.flat_limit {
            let mut flat = Flat::default();
            for (id, v) in &items {
                flat.push(*id, v);
            }
            Inner::Flat(flat)
        } else {
            let graph = Graph::new(&params, items.len());
            let refs: Vec<(&[f32], usize)> = items.iter().map(|(id, v)| (v.as_slice(), *id as usize)).collect();
            graph.hnsw.parallel_insert_slice(&refs);
            Inner::Graph(Graph { inserted: items.len(), ..graph })
        };
        Self { dim, params, inner: RwLock::new(inner) }
    }

    pub fn len(&self) -> usize {
        match &*self.inner.read().expect("index lock") {
            Inner::Flat(f) => f.ids.len(),
            Inner::Graph(g) => g.inserted - g.dead.len(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a search walks a graph (worth moving off the async threads) rather than
    /// scanning a few thousand vectors.
    pub fn is_graph(&self) -> bool {
        matches!(&*self.inner.read().expect("index lock"), Inner::Graph(_))
    }

    pub fn insert(&self, id: u64, vector: &[f32]) {
        debug_assert_eq!(vector.len(), self.dim);
        let mut inner = self.inner.write().expect("index lock");
        match &mut *inner {
            Inner::Flat(flat) => {
                flat.push(id, vector);
                if flat.ids.len() > self.params.flat_limit {
                    let graph = Graph::new(&self.params, flat.ids.len() * 2);
                    let refs: Vec<(&[f32], usize)> = flat
                        .ids
                        .iter()
                        .zip(flat.vectors.chunks_exact(self.dim))
                        .map(|(id, v)| (v, *id as usize))
                        .collect();
                    graph.hnsw.parallel_insert_slice(&refs);
                    let inserted = refs.len();
                    *inner = Inner::Graph(Graph { inserted, ..graph });
                }
            }
            Inner::Graph(graph) => {
                graph.hnsw.insert_slice((vector, id as usize));
                graph.inserted += 1;
            }
        }
    }

    /// Removes an id; returns whether it was present.
    pub fn remove(&self, id: u64) -> bool {
        match &mut *self.inner.write().expect("index lock") {
            Inner::Flat(flat) => flat.remove(id),
            Inner::Graph(graph) => graph.dead.insert(id),
        }
    }

    /// The `k` nearest live vectors to a unit-length query, most similar first.
    pub fn search(&self, query: &[f32], k: usize) -> Vec<Candidate> {
        match &*self.inner.read().expect("index lock") {
            Inner::Flat(flat) => flat.search(self.dim, query, k),
            Inner::Graph(graph) => {
                let ef = self.params.ef_search.max(k);
                let found = if graph.dead.is_empty() {
                    graph.hnsw.search(query, k, ef)
                } else {
                    let alive = |id: &usize| !graph.dead.contains(&(*id as u64));
                    graph.hnsw.search_filter(query, k, ef, Some(&alive))
                };
                found.into_iter().map(|n| Candidate { id: n.d_id as u64, similarity: 1.0 - n.distance }).collect()
            }
        }
    }
}

impl Flat {
    fn push(&mut self, id: u64, vector: &[f32]) {
        if let Some(&at) = self.position.get(&id) {
            let dim = vector.len();
            self.vectors[at * dim..(at + 1) * dim].copy_from_slice(vector);
            return;
        }
        self.position.insert(id, self.ids.len());
        self.ids.push(id);
        self.vectors.extend_from_slice(vector);
    }

    fn remove(&mut self, id: u64) -> bool {
        let Some(at) = self.position.remove(&id) else { return false };
        let dim = self.vectors.len() / self.ids.len();
        let last = self.ids.len() - 1;
        self.ids.swap_remove(at);
        if at != last {
            self.vectors.copy_within(last * dim..(last + 1) * dim, at * dim);
            self.position.insert(self.ids[at], at);
        }
        self.vectors.truncate(last * dim);
        true
    }

    fn search(&self, dim: usize, query: &[f32], k: usize) -> Vec<Candidate> {
        let mut best: Vec<Candidate> = Vec::with_capacity(k + 1);
        for (id, v) in self.ids.iter().zip(self.vectors.chunks_exact(dim)) {
            let similarity = dot(query, v);
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

impl Graph {
    fn new(params: &IndexParams, expected: usize) -> Self {
        let hnsw = Hnsw::new(params.max_connections, expected.max(1024), 16, params.ef_construction, DistDot {});
        Graph { hnsw, dead: HashSet::new(), inserted: 0 }
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
        // Deterministic pseudo-random unit vectors (xorshift), no rand dependency needed.
        let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut v: Vec<f32> = (0..dim)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                (s % 2001) as f32 / 1000.0 - 1.0
            })
            .collect();
        let n = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= n);
        v
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
    fn flat_search_ranks_and_removes() {
        let p = Partition::new(16, IndexParams::default());
        let items: Vec<_> = (0..50).map(|i| (i, unit(i, 16))).collect();
        for (id, v) in &items {
            p.insert(*id, v);
        }
        let top = p.search(&items[7].1, 3);
        assert_eq!(top[0].id, 7);
        assert!((top[0].similarity - 1.0).abs() < 1e-5);
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
        let p = Partition::new(32, params);
        let items: Vec<_> = (0..600).map(|i| (i, unit(i + 1000, 32))).collect();
        for (id, v) in &items {
            p.insert(*id, v);
        }
        assert!(p.is_graph());
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
        let p = Partition::from_vectors(24, params, items.clone());
        assert!(p.is_graph());
        assert_eq!(p.search(&items[123].1, 1)[0].id, 123);
        let small = Partition::from_vectors(24, params, items[..10].to_vec());
        assert!(!small.is_graph());
        assert_eq!(small.search(&items[4].1, 1)[0].id, 4);
    }
}
