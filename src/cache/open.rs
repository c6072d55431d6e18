//! Opening the cache at start: the namespaces, the catalog (into the ledger) and the index,
//! restored from graph checkpoints plus RocksDB.

use super::ledger::{Ledger, Meta};
use super::namespaces::{default_record, NamespaceState};
use super::verified::Learning;
use super::{Cache, CacheError, Defaults, Limits, STRIPES};
use crate::clock::Clock;
use crate::embed::Embed;
use crate::index::{Index, IndexParams, Items, ScopeId};
use crate::store::{Store, StoreError};
use parking_lot::{Mutex, RwLock};
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

/// Ids are reserved on disk in blocks, so an id is never handed out twice (even after a
/// crash) at the cost of one extra synced write per block.
const ID_BLOCK: u64 = 1024;

/// How the cache is set up: the index's tuning, what new namespaces get, what requests may
/// carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct Settings {
    pub index: IndexParams,
    pub defaults: Defaults,
    pub limits: Limits,
}

pub(super) struct IdAllocator {
    next: AtomicU64,
    reserved: Mutex<u64>,
}

impl IdAllocator {
    fn starting_at(first: u64) -> Self {
        Self { next: AtomicU64::new(first), reserved: Mutex::new(first) }
    }

    pub fn next(&self, store: &Store) -> Result<u64, StoreError> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let mut reserved = self.reserved.lock();
        if id >= *reserved {
            let mark = id + ID_BLOCK;
            store.set_id_high_water(mark)?;
            *reserved = mark;
        }
        Ok(id)
    }
}

impl Cache {
    /// Opens the cache over a store: loads the namespaces and the catalog, and restores the
    /// index from graph checkpoints plus RocksDB. Blocking; run it off the async threads.
    pub fn open(
        store: Store,
        embedder: Arc<dyn Embed>,
        settings: Settings,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, CacheError> {
        let started = Instant::now();
        let Settings { index: params, defaults, limits } = settings;
        let info = embedder.info().clone();
        let now = clock.now_unix_ms();
        let mut namespaces: HashMap<String, Arc<NamespaceState>> = HashMap::new();
        for record in store.namespaces()? {
            let stale = (!info.matches(&record.embedding_model)).then(|| record.embedding_model.clone());
            if let Some(stored) = &stale {
                tracing::warn!(
                    namespace = %record.name, stored = %stored, current = %info.fingerprint,
                    "namespace was embedded with another model; its lookups are refused until `semcache reembed`"
                );
            }
            namespaces.insert(record.name.clone(), NamespaceState::new(record, stale));
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
                namespaces.insert(namespace.clone(), NamespaceState::new(record, None));
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

        let learning = Learning::open(&store, &namespaces, defaults.probe_ttl_seconds)?;
        let first = store.id_high_water()?.max(max_id + 1).max(1);
        Ok(Self {
            learning,
            ids: IdAllocator::starting_at(first),
            store,
            index,
            embedder,
            clock,
            ledger,
            namespaces: RwLock::new(namespaces),
            configure: Mutex::new(()),
            totals: Default::default(),
            stripes: (0..STRIPES).map(|_| Mutex::new(())).collect(),
            deleting: RwLock::new(()),
            defaults,
            limits,
            restore_report,
        })
    }
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
