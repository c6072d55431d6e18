//! What the cache knows about every live entry without reading RocksDB: its partition,
//! expiry, recency, hit count and size. It answers the lifecycle questions (which entries
//! expired, which are least recently used, how big a namespace is) in O(log n), and keeps
//! recency in memory so that a hit costs no write; changed rows are flushed lazily.

use crate::index::ScopeId;
use crate::store::CatalogRecord;
use parking_lot::{Mutex, MutexGuard};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::Arc;

#[derive(Debug, Clone, PartialEq)]
pub struct Meta {
    pub namespace: Arc<str>,
    pub scope: ScopeId,
    pub created_at_unix_ms: i64,
    /// 0 = never.
    pub expires_at_unix_ms: i64,
    pub last_used_unix_ms: i64,
    pub hit_count: u64,
    pub size_bytes: u64,
    /// Identity of its answer (0 = unknown), for verified mode's agreeing neighbours.
    pub answer: u64,
}

impl Meta {
    pub fn from_record(namespace: Arc<str>, record: &CatalogRecord) -> Self {
        Self {
            namespace,
            scope: record.scope_id.as_slice().try_into().unwrap_or_default(),
            created_at_unix_ms: record.created_at_unix_ms,
            expires_at_unix_ms: record.expires_at_unix_ms,
            last_used_unix_ms: record.last_used_unix_ms,
            hit_count: record.hit_count,
            size_bytes: record.size_bytes,
            answer: record.answer,
        }
    }

    pub fn to_record(&self) -> CatalogRecord {
        CatalogRecord {
            scope_id: self.scope.to_vec(),
            created_at_unix_ms: self.created_at_unix_ms,
            expires_at_unix_ms: self.expires_at_unix_ms,
            last_used_unix_ms: self.last_used_unix_ms,
            hit_count: self.hit_count,
            size_bytes: self.size_bytes,
            answer: self.answer,
        }
    }
}

/// An entry picked for removal by expiry or eviction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Victim {
    pub namespace: Arc<str>,
    pub id: u64,
}

#[derive(Default)]
pub struct Ledger {
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<u64, Meta>,
    /// `(expires, id)` of entries that expire.
    by_expiry: BTreeSet<(i64, u64)>,
    /// `(recency tick, id)` over all namespaces, oldest first, for `--max-bytes`.
    recency: BTreeSet<(u64, u64)>,
    /// The same per namespace, for `max_entries`; its length is the namespace's entry count.
    namespaces: HashMap<Arc<str>, Namespace>,
    /// Recency ticks are unique and increasing: milliseconds would tie under load, and LRU
    /// must be exact within a run. Seeded from persisted last-use times at start.
    ticks: HashMap<u64, u64>,
    clock: u64,
    total_bytes: u64,
    /// Ids whose hit count or recency changed since the last flush.
    dirty: HashSet<u64>,
}

#[derive(Default)]
struct Namespace {
    recency: BTreeSet<(u64, u64)>,
    bytes: u64,
}

impl Ledger {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock()
    }

    /// Bytes the ledger holds, estimated from its tables' capacities (hash tables as
    /// `index::compact::hash_table_bytes` counts them; B-trees: keys at two-thirds fill).
    pub fn memory_bytes(&self) -> usize {
        let inner = self.lock();
        let hashed = crate::index::compact::hash_table_bytes;
        let btree = |len: usize, key: usize| len * key * 3 / 2;
        hashed(inner.entries.capacity(), 8 + std::mem::size_of::<Meta>())
            + hashed(inner.ticks.capacity(), 16)
            + hashed(inner.dirty.capacity(), 8)
            + btree(inner.by_expiry.len(), 16)
            + btree(inner.recency.len(), 16)
            + inner.namespaces.values().map(|ns| btree(ns.recency.len(), 16)).sum::<usize>()
    }

    /// Adds (or replaces) an entry, as most recently used.
    pub fn insert(&self, id: u64, meta: Meta) {
        let mut inner = self.lock();
        inner.remove(id);
        let tick = inner.tick();
        inner.add(id, meta, tick);
    }

    /// Loads entries at start, ordered by their persisted last use.
    pub fn load(&self, mut rows: Vec<(u64, Meta)>) {
        rows.sort_by_key(|(id, m)| (m.last_used_unix_ms, *id));
        let mut inner = self.lock();
        for (id, meta) in rows {
            let tick = inner.tick();
            inner.add(id, meta, tick);
        }
    }

    pub fn remove(&self, id: u64) -> Option<Meta> {
        self.lock().remove(id)
    }

    pub fn contains(&self, id: u64) -> bool {
        self.lock().entries.contains_key(&id)
    }

    /// Records a hit: the entry becomes most recently used. Returns its hit count, or None
    /// when the entry is gone.
    pub fn touch(&self, id: u64, now_unix_ms: i64) -> Option<u64> {
        let mut inner = self.lock();
        let tick = inner.tick();
        let inner = &mut *inner;
        let meta = inner.entries.get_mut(&id)?;
        meta.hit_count += 1;
        meta.last_used_unix_ms = now_unix_ms;
        let old = inner.ticks.insert(id, tick).expect("every entry has a tick");
        inner.recency.remove(&(old, id));
        inner.recency.insert((tick, id));
        let ns = inner.namespaces.get_mut(&meta.namespace).expect("every entry has a namespace");
        ns.recency.remove(&(old, id));
        ns.recency.insert((tick, id));
        inner.dirty.insert(id);
        Some(meta.hit_count)
    }

    /// For index candidates, in order: `Some((expires_at_unix_ms, answer))` of those still
    /// here. One lock for a whole lookup, and no RocksDB read.
    pub fn candidates(&self, ids: impl IntoIterator<Item = u64>) -> Vec<Option<(i64, u64)>> {
        let inner = self.lock();
        ids.into_iter().map(|id| inner.entries.get(&id).map(|m| (m.expires_at_unix_ms, m.answer))).collect()
    }

    pub fn answer(&self, id: u64) -> Option<u64> {
        self.lock().entries.get(&id).map(|m| m.answer)
    }

    pub fn get_size(&self, id: u64) -> Option<u64> {
        self.lock().entries.get(&id).map(|m| m.size_bytes)
    }

    /// Up to `limit` entries that expired at or before `now`, soonest first.
    pub fn expired(&self, now_unix_ms: i64, limit: usize) -> Vec<Victim> {
        let inner = self.lock();
        inner
            .by_expiry
            .iter()
            .take_while(|(at, _)| *at <= now_unix_ms)
            .take(limit)
            .map(|(_, id)| inner.victim(*id))
            .collect()
    }

    /// The least recently used entries that must go so that `namespace` holds at most
    /// `max_entries` after `incoming` more arrive, skipping `keep`.
    pub fn over_entries(&self, namespace: &str, max_entries: u64, incoming: u64, keep: Option<u64>) -> Vec<Victim> {
        if max_entries == 0 {
            return Vec::new();
        }
        let inner = self.lock();
        let Some(ns) = inner.namespaces.get(namespace) else { return Vec::new() };
        let excess = (ns.recency.len() as u64 + incoming).saturating_sub(max_entries);
        ns.recency
            .iter()
            .filter(|(_, id)| Some(*id) != keep)
            .take(excess as usize)
            .map(|(_, id)| inner.victim(*id))
            .collect()
    }

    /// The least recently used entries, over all namespaces, that must go so that the data
    /// set stays within `max_bytes` after `incoming` more bytes arrive, skipping `keep`.
    pub fn over_bytes(&self, max_bytes: u64, incoming: u64, keep: Option<u64>) -> Vec<Victim> {
        if max_bytes == 0 {
            return Vec::new();
        }
        let inner = self.lock();
        let mut excess = (inner.total_bytes + incoming).saturating_sub(max_bytes);
        let mut victims = Vec::new();
        for (_, id) in &inner.recency {
            if excess == 0 {
                break;
            }
            if Some(*id) == keep {
                continue;
            }
            excess = excess.saturating_sub(inner.entries[id].size_bytes);
            victims.push(inner.victim(*id));
        }
        victims
    }

    pub fn namespace_len(&self, namespace: &str) -> u64 {
        self.lock().namespaces.get(namespace).map_or(0, |ns| ns.recency.len() as u64)
    }

    pub fn len(&self) -> u64 {
        self.lock().entries.len() as u64
    }

    pub fn total_bytes(&self) -> u64 {
        self.lock().total_bytes
    }

    /// Hits of an entry so far (`None` if it is gone).
    pub fn hit_count(&self, id: u64) -> Option<u64> {
        self.lock().entries.get(&id).map(|m| m.hit_count)
    }

    /// Stored bytes of one namespace's entries.
    pub fn namespace_bytes(&self, namespace: &str) -> u64 {
        self.lock().namespaces.get(namespace).map_or(0, |ns| ns.bytes)
    }

    /// Ids of a namespace, optionally only those of one scope.
    pub fn ids(&self, namespace: &str, scope: Option<&ScopeId>) -> Vec<u64> {
        let inner = self.lock();
        let Some(ns) = inner.namespaces.get(namespace) else { return Vec::new() };
        ns.recency.iter().map(|(_, id)| *id).filter(|id| scope.is_none_or(|s| &inner.entries[id].scope == s)).collect()
    }

    /// Takes the rows changed since the last call, for a lazy flush.
    pub fn take_dirty(&self) -> Vec<(u64, Meta)> {
        let mut inner = self.lock();
        let dirty = std::mem::take(&mut inner.dirty);
        dirty.into_iter().filter_map(|id| inner.entries.get(&id).map(|m| (id, m.clone()))).collect()
    }

    /// Puts rows back after a failed flush, so the next one retries them.
    pub fn mark_dirty(&self, ids: impl IntoIterator<Item = u64>) {
        let mut inner = self.lock();
        let inner = &mut *inner;
        inner.dirty.extend(ids.into_iter().filter(|id| inner.entries.contains_key(id)));
    }
}

impl Inner {
    fn tick(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    fn victim(&self, id: u64) -> Victim {
        Victim { namespace: self.entries[&id].namespace.clone(), id }
    }

    fn add(&mut self, id: u64, meta: Meta, tick: u64) {
        if meta.expires_at_unix_ms != 0 {
            self.by_expiry.insert((meta.expires_at_unix_ms, id));
        }
        self.recency.insert((tick, id));
        let ns = self.namespaces.entry(meta.namespace.clone()).or_default();
        ns.recency.insert((tick, id));
        ns.bytes += meta.size_bytes;
        self.total_bytes += meta.size_bytes;
        self.ticks.insert(id, tick);
        self.entries.insert(id, meta);
    }

    fn remove(&mut self, id: u64) -> Option<Meta> {
        let meta = self.entries.remove(&id)?;
        let tick = self.ticks.remove(&id).expect("every entry has a tick");
        self.by_expiry.remove(&(meta.expires_at_unix_ms, id));
        self.recency.remove(&(tick, id));
        self.total_bytes -= meta.size_bytes;
        if let Some(ns) = self.namespaces.get_mut(&meta.namespace) {
            ns.recency.remove(&(tick, id));
            ns.bytes -= meta.size_bytes;
            if ns.recency.is_empty() {
                self.namespaces.remove(&meta.namespace);
            }
        }
        self.dirty.remove(&id);
        Some(meta)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(ns: &str, expires: i64, size: u64) -> Meta {
        Meta {
            namespace: ns.into(),
            scope: [0; 16],
            created_at_unix_ms: 0,
            expires_at_unix_ms: expires,
            last_used_unix_ms: 0,
            hit_count: 0,
            size_bytes: size,
            answer: 0,
        }
    }

    fn ids(victims: Vec<Victim>) -> Vec<u64> {
        victims.into_iter().map(|v| v.id).collect()
    }

    #[test]
    fn least_recently_used_go_first_and_hits_refresh_recency() {
        let ledger = Ledger::default();
        for id in 1..=4 {
            ledger.insert(id, meta("a", 0, 10));
        }
        ledger.insert(9, meta("b", 0, 10));
        assert_eq!(ids(ledger.over_entries("a", 4, 1, None)), vec![1]);
        assert_eq!(ledger.touch(1, 5), Some(1));
        assert_eq!(ids(ledger.over_entries("a", 4, 2, None)), vec![2, 3]);
        assert_eq!(ids(ledger.over_entries("a", 4, 1, Some(2))), vec![3], "the kept id is skipped");
        assert!(ledger.over_entries("a", 0, 100, None).is_empty(), "0 = unbounded");
        assert!(ledger.over_entries("a", 5, 1, None).is_empty());
        // Bytes are global: b's entry is older than a's touched one.
        assert_eq!(ids(ledger.over_bytes(50, 15, None)), vec![2, 3]);
        assert_eq!(ledger.total_bytes(), 50);
        assert_eq!((ledger.namespace_bytes("a"), ledger.namespace_bytes("b")), (40, 10));
        assert_eq!(ledger.namespace_len("a"), 4);
    }

    #[test]
    fn expiry_is_ordered_and_removal_forgets_everything() {
        let ledger = Ledger::default();
        ledger.insert(1, meta("a", 300, 1));
        ledger.insert(2, meta("a", 100, 1));
        ledger.insert(3, meta("a", 0, 1));
        ledger.insert(4, meta("b", 200, 1));
        assert_eq!(ids(ledger.expired(250, 10)), vec![2, 4]);
        assert_eq!(ids(ledger.expired(250, 1)), vec![2]);
        assert!(ledger.expired(99, 10).is_empty());
        ledger.touch(2, 1);
        assert_eq!(ledger.remove(2).map(|m| m.hit_count), Some(1));
        assert_eq!(ledger.remove(2), None);
        assert_eq!(ids(ledger.expired(i64::MAX, 10)), vec![4, 1], "never-expiring entries never show");
        assert!(ledger.take_dirty().is_empty(), "a removed entry is not flushed");
        ledger.remove(4);
        assert_eq!(ledger.namespace_len("b"), 0);
        assert_eq!(ledger.len(), 2);
    }

    #[test]
    fn load_orders_by_persisted_recency_and_dirty_rows_are_taken_once() {
        let ledger = Ledger::default();
        let mut a = meta("a", 0, 1);
        a.last_used_unix_ms = 50;
        let mut b = meta("a", 0, 1);
        b.last_used_unix_ms = 10;
        ledger.load(vec![(1, a), (2, b)]);
        assert_eq!(ids(ledger.over_entries("a", 1, 0, None)), vec![2]);
        ledger.touch(2, 60);
        let dirty = ledger.take_dirty();
        assert_eq!(dirty.len(), 1);
        assert_eq!((dirty[0].0, dirty[0].1.last_used_unix_ms, dirty[0].1.hit_count), (2, 60, 1));
        assert!(ledger.take_dirty().is_empty());
        ledger.mark_dirty([2, 77]);
        assert_eq!(ledger.take_dirty().len(), 1, "unknown ids are not marked");
    }
}
