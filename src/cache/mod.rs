//! The cache policy: what a Lookup, Store or Delete means. Validation, namespaces and their
//! settings, scopes, thresholds and expiry live here; the model, the index and RocksDB are
//! reached only through this module.
//!
//! One type, [`Cache`], split by operation across files the way qdrant splits its
//! `Collection`: `open` (restore at start), `lookup`, `write` (Store and eviction), `delete`
//! (Delete, DropNamespace, expiry), `namespaces` (creation and configuration), `export`,
//! `counters` (Stats) and `maintenance` (the background threads).
//!
//! Every operation that touches RocksDB or searches the index runs on tokio's blocking pool
//! ([`Cache::blocking`]), never on a runtime thread, and a panic there becomes
//! [`CacheError::Internal`]: the locks (parking_lot) do not poison, so the server goes on.

pub mod context;
mod counters;
mod delete;
mod error;
mod export;
pub mod guard;
pub mod learner;
mod ledger;
mod lookup;
mod maintenance;
mod namespaces;
mod open;
pub mod probe;
pub mod reembed;
mod types;
pub mod validate;
mod verified;
mod write;

#[cfg(test)]
mod tests;

pub use error::CacheError;
pub use maintenance::{Maintenance, MaintenanceSettings};
pub use open::Settings;
pub use types::{
    Defaults, DeleteTarget, Entry, Evidence, Features, FeedbackOutcome, FeedbackRequest, GuardVeto, LookupOutcome,
    LookupRequest, MissReason, NamespaceUpdate, NamespaceView, Observation, Source, Stats, StoreRequest, Stored, Usage,
    Veto, DEFAULT_PROBE_TTL_SECONDS,
};
pub use validate::{Limits, ValidationError};

use crate::clock::Clock;
use crate::embed::{Embed, EmbedError};
use crate::index::{Index, RestoreReport};
use crate::store::{keys, EntryRecord, Store};
use crate::text::normalize;
use counters::Counters;
use ledger::Ledger;
use namespaces::NamespaceState;
use open::IdAllocator;
use parking_lot::{Mutex, MutexGuard, RwLock};
use std::collections::HashMap;
use std::sync::Arc;
use verified::Learning;

/// Similarity threshold of a namespace created without one: with hit guards on, the threshold
/// that maximises F0.5 (precision weighted over recall, since a wrong answer costs more than a
/// miss) on MeanCache's Quora validation split with all-MiniLM-L6-v2; see the README's hit
/// quality section for the curve and the held-out figures.
pub const DEFAULT_THRESHOLD: f32 = 0.86;

/// Store/Delete of the same exact key are serialised by one of these locks.
const STRIPES: usize = 64;

/// Entries removed per synced batch by Delete, the sweeper and eviction: bounded so that a
/// big purge never holds locks or builds a batch for long.
const DELETE_CHUNK: usize = 512;

pub struct Cache {
    store: Store,
    index: Index,
    embedder: Arc<dyn Embed>,
    clock: Arc<dyn Clock>,
    ledger: Ledger,
    /// Verified mode: per-entry evidence and the probe tokens.
    learning: Learning,
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

/// Where the cache's memory goes, by part (see `Cache::memory`).
#[derive(Debug, Clone, Copy)]
pub struct MemoryReport {
    pub index: crate::index::compact::Memory,
    pub ledger: usize,
    pub rocksdb: u64,
}

impl Cache {
    /// Bytes held by the index (codes, links, ids), the ledger (estimated) and RocksDB (as it
    /// reports them): the memory table of the README.
    pub fn memory(&self) -> MemoryReport {
        MemoryReport {
            index: self.index.memory(),
            ledger: self.ledger.memory_bytes(),
            rocksdb: self.store.memory_bytes(),
        }
    }

    pub fn is_ready(&self) -> bool {
        self.embedder.is_ready()
    }

    /// Texts waiting for the model.
    pub fn embed_queue_depth(&self) -> usize {
        self.embedder.queue_depth()
    }

    /// The cache's notion of now (injected, so tests can move it).
    pub fn now(&self) -> i64 {
        self.clock.now_unix_ms()
    }

    /// Runs `work` on tokio's blocking pool: RocksDB reads and writes, index searches and
    /// anything that takes locks held across them. It is skipped when the caller has gone (a
    /// cancelled RPC) before a thread was free, and a panic in it is an `Internal` error,
    /// never a panic in the handler.
    async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        what: &'static str,
        work: impl FnOnce(&Cache) -> Result<T, CacheError> + Send + 'static,
    ) -> Result<T, CacheError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let this = self.clone();
        tokio::task::spawn_blocking(move || {
            if !tx.is_closed() {
                let _ = tx.send(work(&this));
            }
        });
        // The sender is dropped without a value only when `work` panicked (it unwinds through
        // the closure); the panic message has already gone to the log through the hook.
        rx.await.unwrap_or_else(|_| Err(CacheError::Internal(format!("{what} failed unexpectedly"))))
    }

    /// The query's vector, checked against the model's dimension: a vector of another size
    /// must never reach the index (which would panic) or RocksDB (which would then refuse
    /// to restore).
    async fn embed(&self, text: &str) -> Result<Vec<f32>, CacheError> {
        let vector = self.embedder.embed(text).await?;
        let dim = self.embedder.info().dim;
        if vector.len() != dim {
            return Err(
                EmbedError::Model(format!("the model returned {} dimensions instead of {dim}", vector.len())).into()
            );
        }
        Ok(vector)
    }

    fn namespace(&self, name: &str) -> Option<Arc<NamespaceState>> {
        self.namespaces.read().get(name).cloned()
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

    /// Locks the stripes of these exact keys, always in ascending order so that two
    /// multi-key operations cannot deadlock.
    fn lock_stripes<'a>(&self, keys: impl IntoIterator<Item = &'a [u8; 32]>) -> Vec<MutexGuard<'_, ()>> {
        let mut stripes: Vec<usize> = keys.into_iter().map(|k| k[0] as usize % STRIPES).collect();
        stripes.sort_unstable();
        stripes.dedup();
        stripes.iter().map(|&s| self.stripes[s].lock()).collect()
    }

    /// Drops a deleted entry from the index, the ledger and what was learned about it.
    fn forget(&self, entry: &EntryRecord) {
        self.index.remove(&entry.namespace, &keys::scope_id(&entry.scope), entry.id);
        self.ledger.remove(entry.id);
        self.learning.forget(entry.id, self.namespace(&entry.namespace).as_deref());
    }

    /// Entries in RocksDB's catalog as the ledger counts them (for checks against the index).
    pub fn stored_entries(&self) -> u64 {
        self.ledger.len()
    }
}

/// The exact-repeat key of a stored entry (its scope holds the context key).
fn exact_key_of(entry: &EntryRecord) -> [u8; 32] {
    keys::exact_key(&entry.namespace, &entry.scope, &normalize(&entry.query))
}
