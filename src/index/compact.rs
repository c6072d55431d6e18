//! A partition's HNSW graph in a compact layout: int8 codes in one array, links as u32 slots in
//! fixed-width rows, dead points as a bitset. About 530 bytes a point at 384 dimensions and
//! M=16, against ~3.9 KB in hnsw_rs's own layout (an f32 `Vec` per point, and an `Arc` plus a
//! separate heap allocation per link: the links alone cost ~1.8 KB a point there).
//!
//! hnsw_rs still builds every graph in bulk (its parallel insertion is the hard part of HNSW);
//! the built graph is then converted into this layout ([`Compact::from_hnsw`]) and hnsw_rs's
//! copy dropped. Points added afterwards are inserted here, one at a time, with HNSW's own
//! algorithm (Malkov & Yashunin 2016: greedy descent, a beam of `ef_construction` per layer,
//! the neighbour-selection heuristic, pruned reverse links). A checkpoint is this layout
//! written out as it is in memory, so a start reads it back at disk speed.

use super::quant::{dot_codes, quantize, unpack, DistQ8};
use crate::rng::SplitMix64;
use hnsw_rs::prelude::Hnsw;
use std::cmp::{Ordering, Reverse};
use std::collections::{BinaryHeap, HashMap};
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

/// Highest layer a point can reach; with M=16 a layer holds 1/16 of the one below, so 1M
/// points reach layer 4 or 5.
const MAX_LEVEL: usize = 15;
const MAGIC: &[u8; 8] = b"SCGRAPH1";

pub struct Compact {
    /// Tells graphs apart, so that a plan made on one is never applied to another (a rebuild
    /// may swap the graph between the two steps of an insert).
    generation: u64,
    dim: usize,
    /// Links per point above layer 0 (M); layer 0 takes twice as many.
    m: usize,
    ef_construction: usize,
    ids: Vec<u64>,
    slot_of: HashMap<u64, u32>,
    scales: Vec<f32>,
    /// `dim` codes per slot.
    codes: Vec<i8>,
    levels: Vec<u8>,
    /// Layer 0: `2 * m` slots per point, the first `counts0[slot]` of them used.
    links0: Vec<u32>,
    counts0: Vec<u8>,
    /// Layers 1..: `upper[l - 1]` holds the links of the few points that reach layer `l`.
    upper: Vec<HashMap<u32, Vec<u32>>>,
    entry: Option<u32>,
    dead: Vec<u64>,
    dead_count: usize,
}

/// A query, quantised once per search.
pub struct Query {
    codes: Vec<i8>,
    scale: f32,
}

impl Query {
    pub fn new(v: &[f32]) -> Self {
        let mut codes = Vec::with_capacity(v.len());
        let scale = quantize(v, &mut codes);
        Self { codes, scale }
    }

    /// Approximate cosine to a row of codes.
    pub fn similarity(&self, codes: &[i8], scale: f32) -> f32 {
        self.scale * scale * dot_codes(&self.codes, codes) as f32
    }
}

#[derive(Clone, Copy, PartialEq)]
struct Scored(f32, u32);

impl Eq for Scored {}
impl PartialOrd for Scored {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Scored {
    fn cmp(&self, other: &Self) -> Ordering {
        self.0.total_cmp(&other.0).then(self.1.cmp(&other.1))
    }
}

/// Where an insert goes, found under a read lock; linked in under the write lock.
pub struct Plan {
    generation: u64,
    id: u64,
    codes: Vec<i8>,
    scale: f32,
    level: usize,
    /// Per layer from 0 up, the candidates found for it, most similar first.
    layers: Vec<Vec<Scored>>,
}

impl Compact {
    pub fn new(dim: usize, m: usize, ef_construction: usize) -> Self {
        static GENERATION: AtomicU64 = AtomicU64::new(0);
        Self {
            generation: GENERATION.fetch_add(1, AtomicOrdering::Relaxed),
            dim,
            m,
            ef_construction,
            ids: Vec::new(),
            slot_of: HashMap::new(),
            scales: Vec::new(),
            codes: Vec::new(),
            levels: Vec::new(),
            links0: Vec::new(),
            counts0: Vec::new(),
            upper: Vec::new(),
            entry: None,
            dead: Vec::new(),
            dead_count: 0,
        }
    }

    fn m0(&self) -> usize {
        2 * self.m
    }

    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Points in the graph, dead ones included.
    pub fn points(&self) -> usize {
        self.ids.len()
    }

    pub fn dead_count(&self) -> usize {
        self.dead_count
    }

    pub fn contains_live(&self, id: u64) -> bool {
        self.slot_of.get(&id).is_some_and(|&s| !self.is_dead(s))
    }

    pub fn ids(&self) -> &[u64] {
        &self.ids
    }

    fn is_dead(&self, slot: u32) -> bool {
        self.dead.get(slot as usize / 64).is_some_and(|w| w & (1 << (slot % 64)) != 0)
    }

    /// Marks an id dead: it keeps routing searches but is never returned. Returns whether it
    /// was a live point here.
    pub fn remove(&mut self, id: u64) -> bool {
        let Some(&slot) = self.slot_of.get(&id) else { return false };
        if self.is_dead(slot) {
            return false;
        }
        self.dead[slot as usize / 64] |= 1 << (slot % 64);
        self.dead_count += 1;
        true
    }

    fn row(&self, slot: u32) -> &[i8] {
        let at = slot as usize * self.dim;
        &self.codes[at..at + self.dim]
    }

    fn sim(&self, q: &Query, slot: u32) -> f32 {
        q.similarity(self.row(slot), self.scales[slot as usize])
    }

    fn sim_slots(&self, a: u32, b: u32) -> f32 {
        self.scales[a as usize] * self.scales[b as usize] * dot_codes(self.row(a), self.row(b)) as f32
    }

    fn links(&self, slot: u32, layer: usize) -> &[u32] {
        if layer == 0 {
            let at = slot as usize * self.m0();
            &self.links0[at..at + self.counts0[slot as usize] as usize]
        } else {
            self.upper[layer - 1].get(&slot).map_or(&[], Vec::as_slice)
        }
    }

    fn set_links(&mut self, slot: u32, layer: usize, links: &[u32]) {
        if layer == 0 {
            let m0 = self.m0();
            let links = &links[..links.len().min(m0)];
            let at = slot as usize * m0;
            self.links0[at..at + links.len()].copy_from_slice(links);
            self.counts0[slot as usize] = links.len() as u8;
        } else {
            self.upper[layer - 1].insert(slot, links.to_vec());
        }
    }

    fn top(&self) -> usize {
        self.entry.map_or(0, |e| self.levels[e as usize] as usize)
    }

    /// The `ef` best points of one layer reachable from `entry`, most similar first. With
    /// `live_only`, dead points are walked through but not returned.
    fn search_layer(
        &self,
        q: &Query,
        entry: &[Scored],
        ef: usize,
        layer: usize,
        live_only: bool,
        visited: &mut Visited,
    ) -> Vec<Scored> {
        visited.clear();
        let mut frontier: BinaryHeap<Scored> = BinaryHeap::new();
        let mut best: BinaryHeap<Reverse<Scored>> = BinaryHeap::new();
        for &e in entry {
            if visited.insert(e.1) {
                frontier.push(e);
                if !live_only || !self.is_dead(e.1) {
                    best.push(Reverse(e));
                }
            }
        }
        while let Some(current) = frontier.pop() {
            if best.len() >= ef && best.peek().is_some_and(|w| current.0 < w.0 .0) {
                break;
            }
            for &next in self.links(current.1, layer) {
                if !visited.insert(next) {
                    continue;
                }
                let s = Scored(self.sim(q, next), next);
                let worst = best.peek().map_or(f32::MIN, |w| w.0 .0);
                if best.len() < ef || s.0 > worst {
                    frontier.push(s);
                    if !live_only || !self.is_dead(next) {
                        best.push(Reverse(s));
                        if best.len() > ef {
                            best.pop();
                        }
                    }
                }
            }
        }
        let mut out: Vec<Scored> = best.into_iter().map(|r| r.0).collect();
        out.sort_by(|a, b| b.cmp(a));
        out
    }

    /// Greedy descent from the entry point through the layers above `to`: the start of the
    /// search of layer `to`.
    fn descend(&self, q: &Query, to: usize, visited: &mut Visited) -> Vec<Scored> {
        let Some(entry) = self.entry else { return Vec::new() };
        let mut at = vec![Scored(self.sim(q, entry), entry)];
        for layer in (to + 1..=self.top()).rev() {
            at = self.search_layer(q, &at, 1, layer, false, visited);
        }
        at
    }

    /// The `k` most similar live points to a query (approximate similarities from the codes),
    /// most similar first, with a beam of `ef`.
    pub fn search(&self, query: &Query, k: usize, ef: usize) -> Vec<(u64, f32)> {
        if self.entry.is_none() {
            return Vec::new();
        }
        let mut visited = Visited::new(self.ids.len());
        let start = self.descend(query, 0, &mut visited);
        let found = self.search_layer(query, &start, ef.max(k), 0, true, &mut visited);
        found.into_iter().take(k).map(|s| (self.ids[s.1 as usize], s.0)).collect()
    }

    /// A point's top layer, drawn from HNSW's geometric distribution (P(>= l) = M^-l) by a
    /// hash of its id: the same id always lands on the same layer, and planning an insert
    /// needs no mutable state.
    fn level_of(&self, id: u64) -> usize {
        let u = (SplitMix64::new(id ^ 0x005e_ed0f_9aa9).next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let level = -(1.0 - u).ln() / (self.m as f64).ln();
        (level as usize).min(MAX_LEVEL)
    }

    /// HNSW's neighbour-selection heuristic: take candidates most similar first, skipping
    /// one that is more similar to an already chosen neighbour than to the base point, so that
    /// links spread in every direction instead of crowding into one cluster.
    fn select(&self, candidates: &[Scored], m: usize) -> Vec<u32> {
        let mut chosen: Vec<u32> = Vec::with_capacity(m);
        for c in candidates {
            if chosen.len() == m {
                break;
            }
            if chosen.iter().all(|&r| self.sim_slots(c.1, r) < c.0) {
                chosen.push(c.1);
            }
        }
        chosen
    }

    /// Finds where a new point goes; needs only shared access, so a partition plans an insert
    /// under its read lock and holds the write lock only to link the point in.
    pub fn plan(&self, id: u64, v: &[f32]) -> Plan {
        let query = Query::new(v);
        let level = self.level_of(id);
        let mut layers = Vec::new();
        if self.entry.is_some() {
            let start = level.min(self.top());
            let mut visited = Visited::new(self.ids.len());
            let mut at = self.descend(&query, start, &mut visited);
            layers = vec![Vec::new(); start + 1];
            for layer in (0..=start).rev() {
                let found = self.search_layer(&query, &at, self.ef_construction, layer, false, &mut visited);
                at.clone_from(&found);
                layers[layer] = found;
            }
        }
        Plan { generation: self.generation, id, codes: query.codes, scale: query.scale, level, layers }
    }

    /// Inserts a point found by [`Compact::plan`] and links it in.
    pub fn apply(&mut self, mut plan: Plan) {
        let stale = plan.generation != self.generation
            || (self.entry.is_some() && plan.layers.len() < plan.level.min(self.top()) + 1);
        if stale {
            // Planned against another graph, or one that has grown a layer (or its first
            // point) since.
            let v: Vec<f32> = plan.codes.iter().map(|&c| f32::from(c) * plan.scale).collect();
            plan = self.plan(plan.id, &v);
        }
        let Plan { id, codes, scale, level, layers, .. } = plan;
        if let Some(&old) = self.slot_of.get(&id) {
            // An id is never re-inserted with another vector; a replay of the same insert
            // (catch-up after a checkpoint) must not add a second point.
            if !self.is_dead(old) {
                return;
            }
        }
        let slot = self.ids.len() as u32;
        self.ids.push(id);
        self.slot_of.insert(id, slot);
        self.scales.push(scale);
        self.codes.extend_from_slice(&codes);
        self.levels.push(level as u8);
        self.links0.extend(std::iter::repeat_n(0, self.m0()));
        self.counts0.push(0);
        if self.dead.len() * 64 < self.ids.len() {
            self.dead.push(0);
        }
        while self.upper.len() < level {
            self.upper.push(HashMap::new());
        }
        for layer in 1..=level {
            self.upper[layer - 1].insert(slot, Vec::new());
        }
        for (layer, found) in layers.iter().enumerate() {
            let chosen = self.select(found, self.m);
            self.set_links(slot, layer, &chosen);
            let cap = if layer == 0 { self.m0() } else { self.m };
            for &n in &chosen {
                self.link_back(n, slot, layer, cap);
            }
        }
        if self.entry.is_none() || level > self.top() {
            self.entry = Some(slot);
        }
    }

    /// Adds `new` to `n`'s links, pruning them with the heuristic when they are full.
    fn link_back(&mut self, n: u32, new: u32, layer: usize, cap: usize) {
        let current = self.links(n, layer);
        if current.len() < cap {
            let mut links = current.to_vec();
            links.push(new);
            self.set_links(n, layer, &links);
            return;
        }
        let mut candidates: Vec<Scored> =
            current.iter().chain(std::iter::once(&new)).map(|&c| Scored(self.sim_slots(n, c), c)).collect();
        candidates.sort_by(|a, b| b.cmp(a));
        let chosen = self.select(&candidates, cap);
        self.set_links(n, layer, &chosen);
    }

    pub fn insert(&mut self, id: u64, v: &[f32]) {
        let plan = self.plan(id, v);
        self.apply(plan);
    }

    /// Takes over a graph hnsw_rs built over packed int8 rows (`quant::packed`).
    pub fn from_hnsw(hnsw: &Hnsw<'static, i8, DistQ8>, dim: usize, m: usize, ef_construction: usize) -> Self {
        let mut g = Self::new(dim, m, ef_construction);
        if hnsw.get_nb_point() == 0 {
            return g;
        }
        let points: Vec<_> = hnsw.get_point_indexation().into_iter().collect();
        // Sized exactly: grown by doubling, these would hold up to twice their bytes.
        g.ids.reserve_exact(points.len());
        g.scales.reserve_exact(points.len());
        g.levels.reserve_exact(points.len());
        g.codes.reserve_exact(points.len() * dim);
        for p in &points {
            let slot = g.ids.len() as u32;
            g.ids.push(p.get_origin_id() as u64);
            g.slot_of.insert(p.get_origin_id() as u64, slot);
            let (codes, scale) = unpack(p.get_v());
            g.codes.extend_from_slice(codes);
            g.scales.push(scale);
            g.levels.push(p.get_point_id().0);
        }
        let n = g.ids.len();
        g.links0 = vec![0; n * g.m0()];
        g.counts0 = vec![0; n];
        g.dead = vec![0; n.div_ceil(64)];
        let top = g.levels.iter().copied().max().unwrap_or(0) as usize;
        g.upper = vec![HashMap::new(); top];
        for (slot, p) in points.iter().enumerate() {
            for (layer, neighbours) in p.get_neighborhood_id().iter().enumerate().take(top + 1) {
                if layer > g.levels[slot] as usize {
                    break;
                }
                let links: Vec<u32> =
                    neighbours.iter().filter_map(|nb| g.slot_of.get(&(nb.d_id as u64)).copied()).collect();
                g.set_links(slot as u32, layer, &links);
            }
        }
        g.entry = g.levels.iter().position(|&l| l as usize == top).map(|s| s as u32);
        g
    }

    /// Bytes held, by part, for the memory table. The large arrays count by length: past
    /// the allocator's mmap threshold, the capacity a `Vec` doubles into is address space that
    /// is not resident until written.
    pub fn memory(&self) -> Memory {
        let map = hash_table_bytes;
        Memory {
            codes: self.codes.len() + self.scales.len() * 4,
            links: self.links0.len() * 4
                + self.counts0.len()
                + self
                    .upper
                    .iter()
                    .map(|l| map(l.capacity(), 28) + l.values().map(|v| v.capacity() * 4).sum::<usize>())
                    .sum::<usize>(),
            ids: self.ids.len() * 8 + map(self.slot_of.capacity(), 12) + self.levels.len() + self.dead.len() * 8,
        }
    }

    /// Writes the graph in its own layout (little-endian), dead marks excluded: the live set
    /// comes from RocksDB at start.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<()> {
        w.write_all(MAGIC)?;
        for v in [self.dim, self.m, self.ef_construction, self.ids.len()] {
            w.write_all(&(v as u64).to_le_bytes())?;
        }
        w.write_all(&self.entry.map_or(u64::MAX, u64::from).to_le_bytes())?;
        write_pod(w, &self.ids)?;
        write_pod(w, &self.scales)?;
        write_pod(w, &self.levels)?;
        write_pod(w, &self.codes)?;
        write_pod(w, &self.counts0)?;
        write_pod(w, &self.links0)?;
        w.write_all(&(self.upper.len() as u64).to_le_bytes())?;
        for layer in &self.upper {
            let mut slots: Vec<&u32> = layer.keys().collect();
            slots.sort_unstable();
            w.write_all(&(slots.len() as u64).to_le_bytes())?;
            for slot in slots {
                let links = &layer[slot];
                w.write_all(&slot.to_le_bytes())?;
                w.write_all(&(links.len() as u32).to_le_bytes())?;
                write_pod(w, links)?;
            }
        }
        Ok(())
    }

    /// Reads what [`Compact::write_to`] wrote, checking every size and link against the rest.
    pub fn read_from(r: &mut impl Read) -> Result<Self, String> {
        let mut magic = [0u8; 8];
        r.read_exact(&mut magic).map_err(|e| e.to_string())?;
        if &magic != MAGIC {
            return Err("not a semcache graph file".into());
        }
        let mut word = || -> Result<u64, String> {
            let mut b = [0u8; 8];
            r.read_exact(&mut b).map_err(|e| format!("truncated: {e}"))?;
            Ok(u64::from_le_bytes(b))
        };
        let (dim, m, ef, n, entry) = (word()? as usize, word()? as usize, word()? as usize, word()? as usize, word()?);
        if dim == 0 || dim > 65_536 || m == 0 || m > 127 || n > u32::MAX as usize / 2 {
            return Err(format!("implausible header: dim {dim}, m {m}, {n} points"));
        }
        let mut g = Self::new(dim, m, ef);
        g.ids = read_pod(r, n)?;
        g.scales = read_pod(r, n)?;
        g.levels = read_pod(r, n)?;
        g.codes = read_pod(r, n * dim)?;
        g.counts0 = read_pod(r, n)?;
        g.links0 = read_pod(r, n * g.m0())?;
        let layers = read_pod::<u64>(r, 1)?[0] as usize;
        if layers > MAX_LEVEL {
            return Err(format!("{layers} layers"));
        }
        for _ in 0..layers {
            let count = read_pod::<u64>(r, 1)?[0] as usize;
            if count > n {
                return Err(format!("a layer of {count} points in a graph of {n}"));
            }
            let mut layer = HashMap::with_capacity(count);
            for _ in 0..count {
                let head: Vec<u32> = read_pod(r, 2)?;
                if head[1] as usize > m {
                    return Err(format!("{} links where {m} is the most", head[1]));
                }
                layer.insert(head[0], read_pod(r, head[1] as usize)?);
            }
            g.upper.push(layer);
        }
        let bad = |s: u32| s as usize >= n;
        if g.counts0.iter().any(|&c| c as usize > g.m0())
            || g.links0.iter().any(|&s| bad(s))
            || g.upper.iter().flat_map(|l| l.iter()).any(|(s, links)| bad(*s) || links.iter().any(|&x| bad(x)))
            || g.levels.iter().any(|&l| l as usize > layers)
        {
            return Err("a link points outside the graph".into());
        }
        g.entry = match entry {
            u64::MAX if n == 0 => None,
            e if (e as usize) < n => Some(e as u32),
            e => return Err(format!("entry point {e} outside the graph of {n}")),
        };
        g.slot_of = g.ids.iter().enumerate().map(|(s, id)| (*id, s as u32)).collect();
        if g.slot_of.len() != n {
            return Err("an id appears twice".into());
        }
        g.dead = vec![0; n.div_ceil(64)];
        Ok(g)
    }

    /// The points' vectors as decoded from their codes, live ones only (for a rebuild).
    pub fn live_decoded(&self) -> Vec<(u64, Vec<f32>)> {
        (0..self.ids.len() as u32)
            .filter(|&s| !self.is_dead(s))
            .map(|s| {
                let scale = self.scales[s as usize];
                (self.ids[s as usize], self.row(s).iter().map(|&c| f32::from(c) * scale).collect())
            })
            .collect()
    }
}

/// Bytes of a compact graph, by what they hold.
#[derive(Debug, Default, Clone, Copy)]
pub struct Memory {
    pub codes: usize,
    pub links: usize,
    pub ids: usize,
}

impl std::iter::Sum for Memory {
    fn sum<I: Iterator<Item = Memory>>(parts: I) -> Memory {
        parts.fold(Memory::default(), |a, m| Memory {
            codes: a.codes + m.codes,
            links: a.links + m.links,
            ids: a.ids + m.ids,
        })
    }
}

/// Bytes of a hash table of `capacity` slots of `slot` bytes each: hashbrown keeps one control
/// byte per slot beside it (an estimate: it ignores the load-factor slack).
pub fn hash_table_bytes(capacity: usize, slot: usize) -> usize {
    capacity * (slot + 1)
}

/// A visited set for one search: a bitset over the graph's slots (1M points: 125 KB), cleared
/// between layers by resetting only the words it touched.
struct Visited {
    bits: Vec<u64>,
    touched: Vec<u32>,
}

impl Visited {
    fn new(n: usize) -> Self {
        Self { bits: vec![0; n.div_ceil(64)], touched: Vec::new() }
    }

    fn insert(&mut self, slot: u32) -> bool {
        let (w, b) = (slot as usize / 64, 1u64 << (slot % 64));
        let word = &mut self.bits[w];
        if *word & b != 0 {
            return false;
        }
        if *word == 0 {
            self.touched.push(w as u32);
        }
        *word |= b;
        true
    }

    fn clear(&mut self) {
        for w in self.touched.drain(..) {
            self.bits[w as usize] = 0;
        }
    }
}

/// Plain old data written as its little-endian bytes.
trait Pod: Copy + Default {
    const SIZE: usize;
    fn put(self, out: &mut Vec<u8>);
    fn get(b: &[u8]) -> Self;
}

macro_rules! pod {
    ($($t:ty),*) => {$(
        impl Pod for $t {
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn get(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("sized chunk"))
            }
        }
    )*};
}
pod!(u8, i8, u32, u64, f32);

fn write_pod<T: Pod>(w: &mut impl Write, items: &[T]) -> io::Result<()> {
    // In chunks, so that a 400 MB array is not copied whole.
    let mut buf = Vec::with_capacity(64 * 1024);
    for chunk in items.chunks(64 * 1024 / T::SIZE) {
        buf.clear();
        chunk.iter().for_each(|x| x.put(&mut buf));
        w.write_all(&buf)?;
    }
    Ok(())
}

fn read_pod<T: Pod>(r: &mut impl Read, n: usize) -> Result<Vec<T>, String> {
    let mut out = Vec::with_capacity(n);
    let mut buf = vec![0u8; 64 * 1024 / T::SIZE * T::SIZE];
    let mut left = n;
    while left > 0 {
        let take = left.min(buf.len() / T::SIZE);
        let bytes = &mut buf[..take * T::SIZE];
        r.read_exact(bytes).map_err(|e| format!("truncated: {e}"))?;
        out.extend(bytes.chunks_exact(T::SIZE).map(T::get));
        left -= take;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::dot;
    use crate::index::quant::packed;

    fn unit(seed: u64, dim: usize) -> Vec<f32> {
        crate::rng::unit_vector(seed, dim)
    }

    fn recall(g: &Compact, items: &[(u64, Vec<f32>)], queries: u64) -> usize {
        (0..queries)
            .filter(|q| {
                let query = unit(q + 90_000, 32);
                let truth = items.iter().max_by(|a, b| dot(&query, &a.1).total_cmp(&dot(&query, &b.1))).unwrap().0;
                // As the cache does: a few candidates from the codes, re-ranked exactly.
                let found = g.search(&Query::new(&query), 8, 64);
                let best = found.iter().max_by(|a, b| {
                    let exact = |id: u64| dot(&query, &items[id as usize].1);
                    exact(a.0).total_cmp(&exact(b.0))
                });
                best.map(|b| b.0) == Some(truth)
            })
            .count()
    }

    #[test]
    fn inserted_one_at_a_time_it_finds_what_brute_force_finds() {
        let items: Vec<_> = (0..2000).map(|i| (i, unit(i, 32))).collect();
        let mut g = Compact::new(32, 16, 200);
        for (id, v) in &items {
            g.insert(*id, v);
        }
        assert_eq!(g.points(), 2000);
        assert!(g.top() >= 1, "some points reach an upper layer");
        assert!(recall(&g, &items, 100) >= 97, "recall@1 {}/100", recall(&g, &items, 100));
        // Every point is linked and found as itself.
        assert!((0..2000u32).all(|s| !g.links(s, 0).is_empty()));
        assert!(items.iter().step_by(97).all(|(id, v)| g.search(&Query::new(v), 1, 64)[0].0 == *id));
        // A second insert of an id is ignored.
        g.insert(5, &unit(5, 32));
        assert_eq!(g.points(), 2000);
    }

    #[test]
    fn dead_points_route_but_are_never_returned() {
        let items: Vec<_> = (0..600).map(|i| (i, unit(i + 5, 16))).collect();
        let mut g = Compact::new(16, 8, 100);
        items.iter().for_each(|(id, v)| g.insert(*id, v));
        assert!(g.remove(3) && !g.remove(3) && !g.remove(10_000));
        assert_eq!(g.dead_count(), 1);
        assert!(!g.contains_live(3) && g.contains_live(4));
        assert!(g.search(&Query::new(&items[3].1), 5, 64).iter().all(|(id, _)| *id != 3));
        for id in 0..500 {
            g.remove(id);
        }
        let found = g.search(&Query::new(&items[550].1), 10, 64);
        assert_eq!(found[0].0, 550);
        assert!(found.iter().all(|(id, _)| *id >= 500));
        assert_eq!(g.live_decoded().len(), 100);
    }

    #[test]
    fn takes_over_an_hnsw_rs_graph_and_round_trips_through_its_file() {
        let items: Vec<_> = (0..1500).map(|i| (i, unit(i + 77, 32))).collect();
        let hnsw: Hnsw<'static, i8, DistQ8> = Hnsw::new(16, items.len(), 16, 200, DistQ8);
        let rows: Vec<(Vec<i8>, usize)> = items.iter().map(|(id, v)| (packed(v), *id as usize)).collect();
        hnsw.parallel_insert_slice(&rows.iter().map(|(r, id)| (r.as_slice(), *id)).collect());
        let mut g = Compact::from_hnsw(&hnsw, 32, 16, 200);
        assert_eq!(g.points(), 1500);
        assert!(recall(&g, &items, 100) >= 97, "recall@1 {}/100", recall(&g, &items, 100));
        // It keeps growing with its own inserts.
        let more: Vec<_> = (1500..1700).map(|i| (i, unit(i + 77, 32))).collect();
        more.iter().for_each(|(id, v)| g.insert(*id, v));
        assert_eq!(g.search(&Query::new(&more[50].1), 1, 64)[0].0, 1550);

        let mut bytes = Vec::new();
        g.write_to(&mut bytes).unwrap();
        let back = Compact::read_from(&mut bytes.as_slice()).unwrap();
        assert_eq!((back.points(), back.dim(), back.top()), (1700, 32, g.top()));
        for (id, v) in items.iter().chain(&more).step_by(61) {
            assert_eq!(back.search(&Query::new(v), 3, 64), g.search(&Query::new(v), 3, 64), "id {id}");
        }
        assert!(Compact::read_from(&mut &bytes[..bytes.len() / 2]).is_err(), "truncated");
        let mut wild = bytes.clone();
        // The header, then ids, scales, levels, codes and counts, then the first layer-0 link.
        let links_at = 48 + 1700 * (8 + 4 + 1 + 32 + 1);
        wild[links_at..links_at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        let err = Compact::read_from(&mut wild.as_slice()).err().unwrap();
        assert!(err.contains("outside"), "a link past the end: {err}");
    }

    #[test]
    fn a_plan_made_on_another_graph_is_made_again() {
        let mut a = Compact::new(8, 4, 50);
        let mut b = Compact::new(8, 4, 50);
        for i in 0..50 {
            a.insert(i, &unit(i, 8));
            b.insert(i + 100, &unit(i + 100, 8));
        }
        let plan = a.plan(1000, &unit(1000, 8));
        b.apply(plan);
        assert_eq!(b.search(&Query::new(&unit(1000, 8)), 1, 16)[0].0, 1000);
        assert!(b.links(50, 0).iter().all(|&s| (s as usize) < b.points()));
    }
}
