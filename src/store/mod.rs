//! RocksDB, the source of truth. Everything in memory (the graphs, the counters) is derived
//! from what is here and can be rebuilt from it.
//!
//! Column families: `entries` (entry key -> [`EntryRecord`], vector included), `catalog`
//! (entry key -> [`CatalogRecord`]: partition, expiry, recency, size; what start-up reads),
//! `exact` (hash of namespace, scope and normalised query -> entry key), `namespaces` (name ->
//! [`NamespaceRecord`], with the fingerprint of the model its vectors came from) and `meta`
//! (schema version, id high-water mark, the probe-token key), `evidence` (entry key ->
//! [`EvidenceRecord`]: what verified mode learned about the entry) and `probes` (nonce of a
//! used probe token -> its expiry, so a token is honoured once, across restarts too).
//! An entry, its catalog row and its evidence are always deleted in the same batch.
//!
//! Durability: every acknowledged write goes through [`Store::write`] with `sync = true`, so
//! the WAL is fsynced before the caller hears back. RocksDB joins concurrent writers into one
//! write group with a single fsync, which gives group commit under load without a timer.
//!
//! Faults: a write that fails is never acknowledged, and RocksDB applies none of it (the
//! memtable is written only after the WAL is synced). What the failure means for later writes
//! is kept in [`health`]. A start on a full disk opens read-only (RocksDB's read-write open
//! writes new files first) and switches to read-write by itself once there is room. Every
//! SST block is read and its checksum checked at open, so a damaged file refuses the start
//! naming the file, instead of surfacing later as a failed Lookup.

pub mod codec;
pub mod health;
pub mod keys;

pub use codec::{CatalogRecord, EntryRecord, EvidenceRecord, NamespaceRecord, ObservationRecord};
pub use health::Writability;

use health::{Fault, Health, RESUME_HEADROOM_BYTES};
use parking_lot::RwLock;
use prost::Message;
use rocksdb::{
    ColumnFamily, ColumnFamilyDescriptor, DBRecoveryMode, Direction, IteratorMode, Options, ReadOptions, WriteBatch,
    WriteOptions, DB,
};
use std::path::{Path, PathBuf};
use std::time::Instant;

const CF_ENTRIES: &str = "entries";
const CF_CATALOG: &str = "catalog";
const CF_EXACT: &str = "exact";
const CF_NAMESPACES: &str = "namespaces";
const CF_META: &str = "meta";
const CF_EVIDENCE: &str = "evidence";
const CF_PROBES: &str = "probes";
/// All memtables together; see [`Store::open`].
const MEMTABLE_BUDGET_BYTES: usize = 64 << 20;
/// The block cache that every column family shares.
const BLOCK_CACHE_BYTES: usize = 64 << 20;

const COLUMN_FAMILIES: [&str; 7] = [CF_ENTRIES, CF_CATALOG, CF_EXACT, CF_NAMESPACES, CF_META, CF_EVIDENCE, CF_PROBES];
/// What version 2 had; version 3 only added `evidence` and `probes`, so a version-2 data dir
/// is upgraded in place by creating them.
const COLUMN_FAMILIES_V2: [&str; 5] = [CF_ENTRIES, CF_CATALOG, CF_EXACT, CF_NAMESPACES, CF_META];

const META_SCHEMA: &[u8] = b"schema_version";
const META_ID_HIGH_WATER: &[u8] = b"id_high_water";
const META_PROBE_KEY: &[u8] = b"probe_key";
/// Rewritten by [`Store::recheck`] to learn whether writes work again.
const META_WRITE_CHECK: &[u8] = b"write_check";
/// Rows a scan reads per visit to the database; between visits the handle may be swapped.
const SCAN_CHUNK: usize = 1024;

/// Layout version of the data directory. Bump on any change an older reader would misread.
/// 2: the `catalog` column family (version 1 was the unreleased vertical slice).
/// 3: the `evidence` and `probes` column families (verified mode).
pub const SCHEMA_VERSION: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("RocksDB failed on data dir {path}: {source}")]
    Rocks { path: PathBuf, source: rocksdb::Error },
    #[error(
        "data dir {path} is not empty and holds no semcache database; \
         pass an empty directory or an existing semcache data dir with --data-dir"
    )]
    Foreign { path: PathBuf },
    #[error(
        "data dir {path} has schema version {found}, but this semcache reads version {expected}; \
         use a semcache release that matches it, or a new data dir"
    )]
    Schema { path: PathBuf, found: String, expected: u32 },
    #[error("data dir {path} holds a corrupt record in `{cf}` under key {key:?}: {reason}")]
    Corrupt { path: PathBuf, cf: &'static str, key: String, reason: String },
    #[error(
        "data dir {path} is full ({detail}); nothing of this write was kept. Lookups are still \
         served. Free space on that file system: writes resume by themselves once {} MiB are free",
        RESUME_HEADROOM_BYTES >> 20
    )]
    Full { path: PathBuf, detail: String },
    #[error(
        "a write to data dir {path} failed ({detail}); nothing of it was acknowledged. Lookups are \
         still served; writes are refused until the disk's fault is dealt with and semcache restarted"
    )]
    WriteFailed { path: PathBuf, detail: String },
    #[error(
        "data dir {path} is damaged: {detail}. Nothing damaged is served. Restore the data dir from \
         a backup, or start on a new --data-dir (empty, or filled by `semcache import` from an \
         export taken earlier)"
    )]
    Damaged { path: PathBuf, detail: String },
    #[error(
        "data dir {path} cannot be written ({source}); semcache writes every Store there: mount it \
         read-write, give the user running semcache write access to it, or pass another --data-dir"
    )]
    NotWritable { path: PathBuf, source: std::io::Error },
}

pub struct Store {
    /// Behind a lock only so that a store opened read-only can be swapped for a read-write
    /// one; every operation holds the read side for one RocksDB call.
    db: RwLock<DB>,
    path: PathBuf,
    health: Health,
}

/// The options of every open: the same for a read-only and a read-write handle.
fn db_options(create: bool) -> Options {
    let mut opts = Options::default();
    opts.create_if_missing(create);
    // Only a new data dir gets column families: an existing database without ours is not
    // a semcache data dir, and must be refused untouched rather than extended.
    opts.create_missing_column_families(create);
    opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
    // A fixed memory budget. By default every column family may hold two 64 MiB memtables
    // and gets its own 32 MiB block cache: about 1 GiB for our six under a write load,
    // reached slowly enough to look like a leak in a soak. Instead the memtables share
    // one cap (the largest is flushed when they reach it) and the CFs share one cache.
    opts.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
    // A torn last record (power lost during a write) can only hold a write that was never
    // acknowledged, because a Store is acknowledged after its record and all before it are
    // synced. Point-in-time recovery replays up to that record and opens; absolute
    // consistency would refuse the whole data dir for it.
    opts.set_wal_recovery_mode(DBRecoveryMode::PointInTime);
    opts
}

fn cf_descriptors() -> impl Iterator<Item = ColumnFamilyDescriptor> {
    let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
    // `default` (unused, but always open) too: RocksDB's full-disk headroom is the largest
    // memtable of any column family, and left out it would get the default 64 MiB.
    COLUMN_FAMILIES.into_iter().chain([rocksdb::DEFAULT_COLUMN_FAMILY_NAME]).map(move |name| {
        let mut table = rocksdb::BlockBasedOptions::default();
        table.set_block_cache(&cache);
        let mut cf = Options::default();
        cf.set_block_based_table_factory(&table);
        // RocksDB resumes writes after a full disk once one memtable's worth is free; a
        // smaller memtable than the default 64 MiB makes that headroom small too.
        cf.set_write_buffer_size(RESUME_HEADROOM_BYTES as usize);
        ColumnFamilyDescriptor::new(name, cf)
    })
}

fn cf<'a>(db: &'a DB, name: &'static str) -> &'a ColumnFamily {
    db.cf_handle(name).expect("column family created at open")
}

impl StoreError {
    fn from_rocks(path: &Path, source: rocksdb::Error) -> Self {
        match health::classify(&source) {
            Fault::Corruption => StoreError::Damaged { path: path.to_owned(), detail: source.into_string() },
            _ => StoreError::Rocks { path: path.to_owned(), source },
        }
    }

    /// A write refused because the disk is full: worth a client's retry later, not an alarm.
    pub fn is_full(&self) -> bool {
        matches!(self, StoreError::Full { .. })
    }
}

impl Store {
    /// Opens (or creates) the data directory, checks its schema version and every checksum.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        // A missing dir is created by RocksDB, which says why if it cannot be.
        let checked = if path.exists() { health::check_writable_dir(path) } else { Ok(()) };
        if let Err(source) = checked {
            // A full disk still takes an empty file; anything else that refuses one (a
            // read-only mount, no permission) is an operator's mistake to name now.
            if source.raw_os_error() != Some(rustix::io::Errno::NOSPC.raw_os_error()) {
                return Err(StoreError::NotWritable { path: path.to_owned(), source });
            }
        }
        let is_new = !path.join("CURRENT").exists();
        if is_new && path.read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
            return Err(StoreError::Foreign { path: path.to_owned() });
        }
        let mut opts = db_options(is_new);
        let mut upgrade = false;
        if !is_new {
            let existing = DB::list_cf(&opts, path).map_err(|source| StoreError::from_rocks(path, source))?;
            if !existing.iter().any(|e| e == CF_META) {
                return Err(StoreError::Foreign { path: path.to_owned() });
            }
            let has = |cfs: &[&str]| cfs.iter().all(|cf| existing.iter().any(|e| e == cf));
            if !has(&COLUMN_FAMILIES)
                && has(&COLUMN_FAMILIES_V2)
                && Self::read_schema_readonly(path).as_deref() == Some("2")
            {
                upgrade = true;
                opts.create_missing_column_families(true);
            } else if !has(&COLUMN_FAMILIES) {
                // Ours, but from another layout: read its version to say which.
                return Err(StoreError::Schema {
                    path: path.to_owned(),
                    found: Self::read_schema_readonly(path).unwrap_or_else(|| "unknown".into()),
                    expected: SCHEMA_VERSION,
                });
            }
        }
        let (db, state) = match DB::open_cf_descriptors(&opts, path, cf_descriptors()) {
            Ok(db) => (db, Writability::Writable),
            // Reads need nothing written: serve them, and take writes once there is room.
            Err(e) if health::classify(&e) == Fault::NoSpace && !is_new && !upgrade => {
                let db = DB::open_cf_descriptors_read_only(&opts, path, cf_descriptors(), false)
                    .map_err(|source| StoreError::from_rocks(path, source))?;
                (db, Writability::ReadOnly)
            }
            Err(source) => return Err(StoreError::from_rocks(path, source)),
        };
        let store = Store { db: RwLock::new(db), path: path.to_owned(), health: Health::new(Writability::Writable) };
        if state != Writability::Writable {
            store.health.set(path, state, "the read-write open found no space to write its files");
        }
        store.verify()?;

        if upgrade {
            store.put_meta(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?;
            tracing::info!(path = %path.display(), "data dir upgraded from schema version 2 to 3");
        }
        match store.meta(META_SCHEMA)? {
            None if is_new => store.put_meta(META_SCHEMA, &SCHEMA_VERSION.to_be_bytes())?,
            Some(v) if v.as_slice() == SCHEMA_VERSION.to_be_bytes() => {}
            found => {
                let found = match found {
                    Some(v) if v.len() == 4 => u32::from_be_bytes(v.try_into().expect("4 bytes")).to_string(),
                    Some(v) => format!("unreadable ({} bytes)", v.len()),
                    None => "missing".to_string(),
                };
                return Err(StoreError::Schema { path: path.to_owned(), found, expected: SCHEMA_VERSION });
            }
        }
        Ok(store)
    }

    /// Reads every row of every column family with checksums checked, bypassing the block
    /// cache: a damaged SST is found here, by its file name, rather than by a Lookup later.
    fn verify(&self) -> Result<(), StoreError> {
        let started = Instant::now();
        let db = self.db.read();
        let mut bytes = 0u64;
        for name in COLUMN_FAMILIES {
            let mut read = ReadOptions::default();
            read.set_verify_checksums(true);
            read.fill_cache(false);
            read.set_readahead_size(4 << 20);
            for item in db.iterator_cf_opt(cf(&db, name), read, IteratorMode::Start) {
                let (k, v) = item.map_err(|e| self.rocks(e))?;
                bytes += (k.len() + v.len()) as u64;
            }
        }
        tracing::info!(
            mib = bytes >> 20,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "data dir checksums verified"
        );
        Ok(())
    }

    /// The schema version of a semcache data dir of another layout, opened read-only so that
    /// it is left exactly as it was.
    fn read_schema_readonly(path: &Path) -> Option<String> {
        let cfs = DB::list_cf(&Options::default(), path).ok()?;
        let db = DB::open_cf_for_read_only(&Options::default(), path, cfs, false).ok()?;
        let v = db.get_cf(db.cf_handle(CF_META)?, META_SCHEMA).ok()??;
        Some(u32::from_be_bytes(v.as_slice().try_into().ok()?).to_string())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the graph checkpoints live: beside RocksDB's files, inside the data dir, so that
    /// one directory is the whole data set.
    pub fn graphs_dir(&self) -> PathBuf {
        self.path.join("graphs")
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::from_rocks(&self.path, source)
    }

    /// Whether writes are taken now.
    pub fn writability(&self) -> Writability {
        self.health.get()
    }

    /// For a store that refuses writes, checks (at most once a second) whether they would
    /// work again: a probe write, or a read-write reopen of a store opened read-only. Returns
    /// the state after the check. Cheap when writes work.
    pub fn recheck(&self) -> Writability {
        let state = self.health.get();
        if !self.health.due() {
            return state;
        }
        if state == Writability::Writable {
            // A failed background flush or compaction stops writes without any Store having
            // failed yet; RocksDB counts them, and a new one is worth a probe write.
            let errors = self.db.read().property_int_value("rocksdb.background-errors").ok().flatten().unwrap_or(0);
            if !self.health.new_background_errors(errors) {
                return state;
            }
            tracing::warn!(data_dir = %self.path.display(), "RocksDB reported a background error; checking writes");
        }
        if state == Writability::ReadOnly {
            if let Err(e) = self.reopen_writable() {
                tracing::debug!(error = %e, "data dir still cannot be opened for writing");
            }
        } else {
            let stamp = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let _ = self.put_meta(META_WRITE_CHECK, &stamp.to_be_bytes());
        }
        self.health.get()
    }

    /// Replaces the read-only handle with a read-write one, if the disk has room for what
    /// the open writes: the WAL flushed into tables, plus RocksDB's own headroom.
    fn reopen_writable(&self) -> Result<(), StoreError> {
        let io = |source: std::io::Error| StoreError::NotWritable { path: self.path.clone(), source };
        let wal_bytes: u64 = std::fs::read_dir(&self.path)
            .map_err(io)?
            .filter_map(Result::ok)
            .filter(|e| e.path().extension().is_some_and(|x| x == "log"))
            .filter_map(|e| e.metadata().ok())
            .map(|m| m.len())
            .sum();
        let free = health::free_bytes(&self.path).map_err(io)?;
        if free < wal_bytes + RESUME_HEADROOM_BYTES {
            return Err(StoreError::Full {
                path: self.path.clone(),
                detail: format!("{free} bytes free, {} needed to reopen", wal_bytes + RESUME_HEADROOM_BYTES),
            });
        }
        // A read-only handle holds no lock, so the read-write one opens beside it and
        // readers move over when the pointer is swapped.
        let db =
            DB::open_cf_descriptors(&db_options(false), &self.path, cf_descriptors()).map_err(|e| self.rocks(e))?;
        *self.db.write() = db;
        self.health.set(&self.path, Writability::Writable, "");
        Ok(())
    }

    /// What a failed write means, recorded for the writes after it.
    fn write_failed(&self, source: rocksdb::Error) -> StoreError {
        let state = match health::classify(&source) {
            Fault::NoSpace => Writability::Full,
            Fault::Io => Writability::Failed,
            // Not the disk's doing (a damaged table met by the write, a refused argument):
            // later writes are not affected.
            Fault::Corruption | Fault::Other => return self.rocks(source),
        };
        let (path, detail) = (self.path.clone(), source.into_string());
        self.health.set(&path, state, &detail);
        match state {
            Writability::Full => StoreError::Full { path, detail },
            _ => StoreError::WriteFailed { path, detail },
        }
    }

    fn corrupt(&self, cf: &'static str, key: &[u8], reason: impl ToString) -> StoreError {
        StoreError::Corrupt {
            path: self.path.clone(),
            cf,
            key: String::from_utf8_lossy(key).into_owned(),
            reason: reason.to_string(),
        }
    }

    fn meta(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let db = self.db.read();
        db.get_cf(cf(&db, CF_META), key).map_err(|e| self.rocks(e))
    }

    fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = self.batch();
        batch.put(CF_META, key, value);
        self.write(batch)
    }

    /// Ids below this mark may have been handed out; ids at or above it never were.
    pub fn id_high_water(&self) -> Result<u64, StoreError> {
        match self.meta(META_ID_HIGH_WATER)? {
            None => Ok(0),
            Some(v) => v
                .as_slice()
                .try_into()
                .map(u64::from_be_bytes)
                .map_err(|_| self.corrupt(CF_META, META_ID_HIGH_WATER, "expected 8 bytes")),
        }
    }

    pub fn set_id_high_water(&self, mark: u64) -> Result<(), StoreError> {
        self.put_meta(META_ID_HIGH_WATER, &mark.to_be_bytes())
    }

    /// The key that signs probe tokens: drawn from the OS's random source on first use and
    /// kept in the data dir, so tokens stay valid across a restart and die with the data.
    pub fn probe_key(&self) -> Result<[u8; 32], StoreError> {
        if let Some(v) = self.meta(META_PROBE_KEY)? {
            return v.as_slice().try_into().map_err(|_| self.corrupt(CF_META, META_PROBE_KEY, "expected 32 bytes"));
        }
        let mut key = [0u8; 32];
        getrandom::fill(&mut key)
            .map_err(|e| self.corrupt(CF_META, META_PROBE_KEY, format!("no random source: {e}")))?;
        self.put_meta(META_PROBE_KEY, &key)?;
        Ok(key)
    }

    /// Used probe tokens that have not expired: `(nonce, expires_at_unix_ms)`.
    pub fn used_probes(&self) -> Result<Vec<(u64, i64)>, StoreError> {
        self.scan(CF_PROBES, Vec::new())
            .map(|item| {
                let (k, v) = item?;
                let nonce = <[u8; 8]>::try_from(k.as_ref()).map_err(|_| self.corrupt(CF_PROBES, &k, "bad key"))?;
                let at = <[u8; 8]>::try_from(v.as_ref()).map_err(|_| self.corrupt(CF_PROBES, &k, "bad value"))?;
                Ok((u64::from_be_bytes(nonce), i64::from_be_bytes(at)))
            })
            .collect()
    }

    /// Every evidence row: `(namespace, id, record)`.
    pub fn scan_evidence(&self) -> impl Iterator<Item = Result<(String, u64, EvidenceRecord), StoreError>> + '_ {
        self.scan(CF_EVIDENCE, Vec::new()).map(|item| {
            let (k, v) = item?;
            let (ns, id) = keys::parse_entry_key(&k).ok_or_else(|| self.corrupt(CF_EVIDENCE, &k, "bad key"))?;
            let record = EvidenceRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_EVIDENCE, &k, e))?;
            Ok((ns.to_owned(), id, record))
        })
    }

    /// Bytes RocksDB holds in memory (block cache, memtables, index and filter blocks of
    /// open tables), as it reports them, for the memory table.
    pub fn memory_bytes(&self) -> u64 {
        let db = self.db.read();
        let prop = |cf: &ColumnFamily, name: &str| db.property_int_value_cf(cf, name).ok().flatten().unwrap_or(0);
        let entries = cf(&db, CF_ENTRIES);
        // One block cache is shared by every column family: count it once.
        let mut total = prop(entries, "rocksdb.block-cache-usage");
        for name in COLUMN_FAMILIES.into_iter().chain([rocksdb::DEFAULT_COLUMN_FAMILY_NAME]) {
            if let Some(handle) = db.cf_handle(name) {
                total += prop(handle, "rocksdb.cur-size-all-mem-tables")
                    + prop(handle, "rocksdb.estimate-table-readers-mem");
            }
        }
        total
    }

    pub fn get_entry(&self, namespace: &str, id: u64) -> Result<Option<EntryRecord>, StoreError> {
        let key = keys::entry_key(namespace, id);
        let db = self.db.read();
        let value = db.get_pinned_cf(cf(&db, CF_ENTRIES), &key).map_err(|e| self.rocks(e))?;
        value.map(|v| EntryRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_ENTRIES, &key, e))).transpose()
    }

    /// Entries by id within one namespace, in the order asked (`None` where gone).
    pub fn get_entries(&self, namespace: &str, ids: &[u64]) -> Result<Vec<Option<EntryRecord>>, StoreError> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::entry_key(namespace, *id)).collect();
        let db = self.db.read();
        db.batched_multi_get_cf(cf(&db, CF_ENTRIES), &keys, false)
            .into_iter()
            .zip(&keys)
            .map(|(value, key)| match value.map_err(|e| self.rocks(e))? {
                None => Ok(None),
                Some(v) => EntryRecord::decode(v.as_ref()).map(Some).map_err(|e| self.corrupt(CF_ENTRIES, key, e)),
            })
            .collect()
    }

    /// Every catalog row: `(namespace, id, record)` in key order.
    pub fn scan_catalog(&self) -> impl Iterator<Item = Result<(String, u64, CatalogRecord), StoreError>> + '_ {
        self.scan(CF_CATALOG, Vec::new()).map(|item| {
            let (k, v) = item?;
            let (ns, id) = keys::parse_entry_key(&k).ok_or_else(|| self.corrupt(CF_CATALOG, &k, "bad key"))?;
            let record = CatalogRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_CATALOG, &k, e))?;
            if record.scope_id.len() != 16 {
                return Err(self.corrupt(CF_CATALOG, &k, "scope id is not 16 bytes"));
            }
            Ok((ns.to_owned(), id, record))
        })
    }

    /// The namespace and id of the entry stored under an exact key.
    pub fn get_exact(&self, exact: &[u8; 32]) -> Result<Option<(String, u64)>, StoreError> {
        let db = self.db.read();
        let Some(v) = db.get_pinned_cf(cf(&db, CF_EXACT), exact).map_err(|e| self.rocks(e))? else {
            return Ok(None);
        };
        match keys::parse_entry_key(&v) {
            Some((ns, id)) => Ok(Some((ns.to_owned(), id))),
            None => Err(self.corrupt(CF_EXACT, exact, "value is not an entry key")),
        }
    }

    pub fn namespaces(&self) -> Result<Vec<NamespaceRecord>, StoreError> {
        self.scan(CF_NAMESPACES, Vec::new())
            .map(|item| {
                let (k, v) = item?;
                NamespaceRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_NAMESPACES, &k, e))
            })
            .collect()
    }

    /// Every entry of one namespace, in id order.
    pub fn scan_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = Result<EntryRecord, StoreError>> + 'a {
        self.scan(CF_ENTRIES, keys::namespace_prefix(namespace)).map(|item| self.decode_entry(item))
    }

    /// Every entry of every namespace.
    pub fn scan_all(&self) -> impl Iterator<Item = Result<EntryRecord, StoreError>> + '_ {
        self.scan(CF_ENTRIES, Vec::new()).map(|item| self.decode_entry(item))
    }

    /// The rows of `cf` whose keys start with `prefix`, in key order.
    fn scan(&self, cf: &'static str, prefix: Vec<u8>) -> Scan<'_> {
        Scan { store: self, cf, from: Some(prefix.clone()), prefix, chunk: Vec::new().into_iter() }
    }

    fn decode_entry(&self, item: Result<RawPair, StoreError>) -> Result<EntryRecord, StoreError> {
        let (k, v) = item?;
        EntryRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_ENTRIES, &k, e))
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch { store: self, inner: WriteBatch::default() }
    }

    /// Applies a batch atomically and returns only once it is durable (WAL fsynced). A
    /// refused write applies nothing.
    pub fn write(&self, batch: Batch<'_>) -> Result<(), StoreError> {
        if self.health.get() == Writability::ReadOnly && self.recheck() == Writability::ReadOnly {
            return Err(StoreError::Full {
                path: self.path.clone(),
                detail: "it was full when semcache started, so the data dir is open read-only".into(),
            });
        }
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let written = self.db.read().write_opt(batch.inner, &opts);
        match written {
            Ok(()) => {
                if self.health.get() != Writability::Writable {
                    self.health.set(&self.path, Writability::Writable, "");
                }
                Ok(())
            }
            Err(e) => Err(self.write_failed(e)),
        }
    }
}

/// One key/value pair as a scan yields it.
type RawPair = (Box<[u8]>, Box<[u8]>);

/// A scan that reads [`SCAN_CHUNK`] rows per visit, so that it never holds the handle
/// across the caller's work (a long start-up scan would otherwise block a reopen).
struct Scan<'a> {
    store: &'a Store,
    cf: &'static str,
    prefix: Vec<u8>,
    /// Where the next chunk starts; `None` once the scan is done.
    from: Option<Vec<u8>>,
    chunk: std::vec::IntoIter<Result<RawPair, StoreError>>,
}

impl Iterator for Scan<'_> {
    type Item = Result<RawPair, StoreError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(item) = self.chunk.next() {
            return Some(item);
        }
        let from = self.from.take()?;
        let db = self.store.db.read();
        let mut chunk = Vec::with_capacity(SCAN_CHUNK);
        for item in db.iterator_cf(cf(&db, self.cf), IteratorMode::From(&from, Direction::Forward)) {
            match item {
                Ok((k, _)) if !k.starts_with(&self.prefix) => break,
                Ok(pair) => chunk.push(Ok(pair)),
                Err(e) => {
                    chunk.push(Err(self.store.rocks(e)));
                    break;
                }
            }
            if chunk.len() == SCAN_CHUNK {
                if let Some(Ok((last, _))) = chunk.last() {
                    // The smallest key after `last`.
                    self.from = Some([last.as_ref(), &[0]].concat());
                }
                break;
            }
        }
        self.chunk = chunk.into_iter();
        self.chunk.next()
    }
}

/// The writes of one operation, applied all together or not at all.
pub struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
}

impl Batch<'_> {
    /// One put, its column family looked up on the current handle (ids survive a reopen).
    fn put(&mut self, name: &'static str, key: impl AsRef<[u8]>, value: impl AsRef<[u8]>) {
        let db = self.store.db.read();
        self.inner.put_cf(cf(&db, name), key, value);
    }

    fn delete(&mut self, name: &'static str, key: impl AsRef<[u8]>) {
        let db = self.store.db.read();
        self.inner.delete_cf(cf(&db, name), key);
    }

    /// An entry with its catalog row; the two are only ever written together.
    pub fn put_entry(&mut self, entry: &EntryRecord, catalog: &CatalogRecord) {
        let key = keys::entry_key(&entry.namespace, entry.id);
        self.put(CF_CATALOG, &key, catalog.encode_to_vec());
        self.put(CF_ENTRIES, key, entry.encode_to_vec());
    }

    /// Rewrites an existing entry's record (a new vector after `semcache reembed`), leaving its
    /// catalog row as it is.
    pub fn replace_entry(&mut self, entry: &EntryRecord) {
        self.put(CF_ENTRIES, keys::entry_key(&entry.namespace, entry.id), entry.encode_to_vec());
    }

    /// Rewrites the catalog row of an entry (recency and hit count flushes).
    pub fn put_catalog(&mut self, namespace: &str, id: u64, catalog: &CatalogRecord) {
        self.put(CF_CATALOG, keys::entry_key(namespace, id), catalog.encode_to_vec());
    }

    /// What verified mode learned about an entry (replacing what was there).
    pub fn put_evidence(&mut self, namespace: &str, id: u64, evidence: &EvidenceRecord) {
        self.put(CF_EVIDENCE, keys::entry_key(namespace, id), evidence.encode_to_vec());
    }

    /// Marks a probe token used until it expires.
    pub fn put_used_probe(&mut self, nonce: u64, expires_at_unix_ms: i64) {
        self.put(CF_PROBES, nonce.to_be_bytes(), expires_at_unix_ms.to_be_bytes());
    }

    /// Forgets a used token once it has expired (it is refused as expired from then on).
    pub fn delete_used_probe(&mut self, nonce: u64) {
        self.delete(CF_PROBES, nonce.to_be_bytes());
    }

    pub fn delete_entry(&mut self, namespace: &str, id: u64) {
        let key = keys::entry_key(namespace, id);
        self.delete(CF_EVIDENCE, &key);
        self.delete(CF_CATALOG, &key);
        self.delete(CF_ENTRIES, key);
    }

    pub fn put_exact(&mut self, exact: &[u8; 32], namespace: &str, id: u64) {
        self.put(CF_EXACT, exact, keys::entry_key(namespace, id));
    }

    pub fn delete_exact(&mut self, exact: &[u8; 32]) {
        self.delete(CF_EXACT, exact);
    }

    pub fn put_namespace(&mut self, ns: &NamespaceRecord) {
        self.put(CF_NAMESPACES, ns.name.as_bytes(), ns.encode_to_vec());
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.delete(CF_NAMESPACES, name.as_bytes());
    }

    pub fn len(&self) -> usize {
        self.inner.len()
    }

    pub fn is_empty(&self) -> bool {
        self.inner.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(ns: &str, id: u64) -> EntryRecord {
        EntryRecord { id, namespace: ns.into(), query: format!("q{id}"), ..Default::default() }
    }

    #[test]
    fn writes_survive_reopen_and_scans_stay_in_their_namespace() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            let mut b = store.batch();
            for (ns, id) in [("a", 1), ("a", 3), ("ab", 2), ("b", 4)] {
                b.put_entry(&entry(ns, id), &CatalogRecord { scope_id: vec![0; 16], ..Default::default() });
            }
            b.put_exact(&[7; 32], "a", 3);
            store.write(b).unwrap();
            store.set_id_high_water(1024).unwrap();
        }
        let store = Store::open(dir.path()).unwrap();
        let ids: Vec<u64> = store.scan_namespace("a").map(|e| e.unwrap().id).collect();
        assert_eq!(ids, vec![1, 3]);
        assert_eq!(store.scan_all().count(), 4);
        assert_eq!(store.get_exact(&[7; 32]).unwrap(), Some(("a".to_string(), 3)));
        assert_eq!(store.get_entry("ab", 2).unwrap().unwrap().query, "q2");
        assert_eq!(store.get_entry("a", 2).unwrap(), None);
        assert_eq!(store.id_high_water().unwrap(), 1024);
        let catalog: Vec<(String, u64)> =
            store.scan_catalog().map(|r| r.map(|(ns, id, _)| (ns, id)).unwrap()).collect();
        assert_eq!(catalog.len(), 4);
        assert!(catalog.contains(&("ab".to_string(), 2)));
        let got = store.get_entries("a", &[3, 2, 1]).unwrap();
        assert_eq!(got.iter().map(|e| e.as_ref().map(|e| e.id)).collect::<Vec<_>>(), vec![Some(3), None, Some(1)]);

        let mut b = store.batch();
        b.delete_entry("a", 3);
        store.write(b).unwrap();
        assert_eq!(store.scan_catalog().count(), 3, "entry and catalog row go together");
        assert_eq!(store.scan_all().count(), 3);
    }

    #[test]
    fn scans_read_in_chunks_see_every_row_once_in_order_and_stop_at_the_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let rows = 2 * SCAN_CHUNK as u64 + 7;
        let mut b = store.batch();
        for id in 1..=rows {
            b.put_entry(&entry("a", id), &CatalogRecord { scope_id: vec![0; 16], ..Default::default() });
        }
        for (ns, id) in [("ab", 1), ("b", 2)] {
            b.put_entry(&entry(ns, id), &CatalogRecord { scope_id: vec![0; 16], ..Default::default() });
        }
        store.write(b).unwrap();
        let ids: Vec<u64> = store.scan_namespace("a").map(|e| e.unwrap().id).collect();
        assert_eq!(ids, (1..=rows).collect::<Vec<_>>());
        assert_eq!(store.scan_all().count() as u64, rows + 2);
        assert_eq!(store.scan_catalog().count() as u64, rows + 2);
        assert_eq!(store.writability(), Writability::Writable);
    }

    #[test]
    fn a_corrupt_record_is_an_error_naming_the_dir_and_key_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.batch();
        b.put(CF_CATALOG, keys::entry_key("a", 7), b"\xff\xff not protobuf");
        store.write(b).unwrap();
        let err = store.scan_catalog().next().unwrap().expect_err("corrupt");
        let msg = err.to_string();
        assert!(matches!(err, StoreError::Corrupt { cf: "catalog", .. }), "{msg}");
        assert!(msg.contains(&dir.path().display().to_string()), "{msg}");
    }

    #[test]
    fn refuses_a_foreign_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), "hello").unwrap();
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        assert!(err.to_string().contains(&dir.path().display().to_string()));
    }

    #[test]
    fn refuses_another_rocksdb_database_without_touching_it() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut opts = Options::default();
            opts.create_if_missing(true);
            DB::open(&opts, dir.path()).unwrap().put(b"k", b"v").unwrap();
        }
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StoreError::Foreign { .. }), "{err}");
        let cfs = DB::list_cf(&Options::default(), dir.path()).unwrap();
        assert_eq!(cfs, vec!["default".to_string()], "no column family was added");
    }

    #[test]
    fn refuses_another_schema_version() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path()).unwrap();
            store.put_meta(META_SCHEMA, &99u32.to_be_bytes()).unwrap();
        }
        let err = Store::open(dir.path()).err().expect("must refuse");
        assert!(matches!(err, StoreError::Schema { .. }), "{err}");
        assert!(err.to_string().contains("schema version 99"), "{err}");
    }
}
