//! Background upkeep, on two plain threads (never the async runtime's):
//! - lifecycle: purge expired entries, enforce capacity, flush hit counts and recency;
//! - index: rebuild partitions that outgrew their structure, write graph checkpoints.
//!
//! They are separate so that a long graph build never delays expiry or a flush. On stop,
//! each finishes its current step, then the last flush and checkpoint are written.

use super::{Cache, CacheError};
use crate::store::Writability;
use parking_lot::{Condvar, Mutex};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Expired entries purged per tick at most, so a mass expiry is spread over ticks.
const SWEEP_PER_TICK: usize = 20_000;

#[derive(Debug, Clone, Copy)]
pub struct MaintenanceSettings {
    /// How often expiry, capacity and rebuild needs are checked.
    pub tick: Duration,
    /// How often hit counts and recency are written to RocksDB.
    pub flush_every: Duration,
    /// How often changed graphs are checkpointed (also at shutdown).
    pub checkpoint_every: Duration,
}

impl Default for MaintenanceSettings {
    fn default() -> Self {
        Self {
            tick: Duration::from_secs(1),
            flush_every: Duration::from_secs(10),
            checkpoint_every: Duration::from_secs(300),
        }
    }
}

#[derive(Default)]
struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

impl Stop {
    /// Sleeps for `d` unless stopped; returns whether to go on.
    fn wait(&self, d: Duration) -> bool {
        let mut stopped = self.stopped.lock();
        self.wake.wait_while_for(&mut stopped, |s| !*s, d);
        !*stopped
    }
}

pub struct Maintenance {
    stop: Arc<Stop>,
    threads: Vec<JoinHandle<()>>,
}

impl Maintenance {
    pub fn start(cache: Arc<Cache>, settings: MaintenanceSettings) -> Self {
        let stop = Arc::new(Stop::default());
        let lifecycle = {
            let (cache, stop) = (cache.clone(), stop.clone());
            std::thread::Builder::new()
                .name("semcache-lifecycle".into())
                .spawn(move || lifecycle(&cache, &stop, settings))
                .expect("spawn lifecycle thread")
        };
        let index = {
            let stop = stop.clone();
            std::thread::Builder::new()
                .name("semcache-index".into())
                .spawn(move || index(&cache, &stop, settings))
                .expect("spawn index thread")
        };
        Self { stop, threads: vec![lifecycle, index] }
    }

    /// Stops both threads after their final flush and checkpoint; blocking.
    pub fn stop(mut self) {
        *self.stop.stopped.lock() = true;
        self.stop.wake.notify_all();
        for t in self.threads.drain(..) {
            if t.join().is_err() {
                tracing::error!("a maintenance thread panicked");
            }
        }
    }
}

fn lifecycle(cache: &Cache, stop: &Stop, settings: MaintenanceSettings) {
    let mut last_flush = Instant::now();
    while stop.wait(settings.tick) {
        // Every task below writes; while the data dir refuses writes they would only fail
        // (and log) once a tick. The store reports the state once and is rechecked here.
        if cache.recheck_storage() != Writability::Writable {
            continue;
        }
        match cache.sweep_expired(SWEEP_PER_TICK) {
            Ok(0) => {}
            Ok(n) => tracing::debug!(entries = n, "expired entries purged"),
            Err(e) => tracing::error!(error = %e, "expiry sweep failed"),
        }
        if let Err(e) = cache.sweep_probes() {
            tracing::error!(error = %e, "could not forget expired probe tokens");
        }
        match cache.enforce_capacity() {
            Ok(0) => {}
            Ok(n) => tracing::info!(entries = n, "entries evicted to stay within capacity"),
            Err(e) => tracing::error!(error = %e, "capacity enforcement failed"),
        }
        if last_flush.elapsed() >= settings.flush_every {
            flush(cache);
            last_flush = Instant::now();
        }
    }
    flush(cache);
}

fn flush(cache: &Cache) {
    match cache.flush_catalog() {
        Ok(0) => {}
        Ok(n) => tracing::debug!(entries = n, "hit counts and recency flushed"),
        Err(e) => tracing::error!(error = %e, "could not flush hit counts and recency"),
    }
}

fn index(cache: &Cache, stop: &Stop, settings: MaintenanceSettings) {
    let mut last_checkpoint = Instant::now();
    while stop.wait(settings.tick) {
        cache.rebuild_partitions();
        // A checkpoint on a disk that refuses writes fails; the previous one stays in place.
        if last_checkpoint.elapsed() >= settings.checkpoint_every && cache.writability() == Writability::Writable {
            cache.checkpoint();
            last_checkpoint = Instant::now();
        }
    }
    if cache.writability() == Writability::Writable {
        cache.checkpoint();
    }
}

impl Cache {
    /// Writes hit counts and recency changed since the last flush into the catalog (one
    /// durable batch). Called periodically and at shutdown; a crash loses at most the
    /// changes since the last flush, which costs statistics and recency, never an entry.
    pub fn flush_catalog(&self) -> Result<usize, CacheError> {
        let _exclusive = self.deleting.write();
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

    /// Whether the data dir takes writes now.
    pub fn writability(&self) -> Writability {
        self.store.writability()
    }

    /// Whether the data dir takes writes, checking again (at most once a second) if it did
    /// not: a full disk that has room again takes writes from here on.
    pub fn recheck_storage(&self) -> Writability {
        self.store.recheck()
    }

    /// Checkpoints the graphs that changed; see `Index::checkpoint`.
    pub fn checkpoint(&self) -> usize {
        self.index.checkpoint()
    }
}
