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

pub mod codec;
pub mod keys;

pub use codec::{CatalogRecord, EntryRecord, EvidenceRecord, NamespaceRecord, ObservationRecord};

use prost::Message;
use rocksdb::{ColumnFamily, ColumnFamilyDescriptor, Direction, IteratorMode, Options, WriteBatch, WriteOptions, DB};
use std::path::{Path, PathBuf};

/// One raw key/value pair as a RocksDB iterator yields it.
type RawItem = Result<(Box<[u8]>, Box<[u8]>), rocksdb::Error>;

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
}

pub struct Store {
    db: DB,
    path: PathBuf,
}

impl Store {
    /// Opens (or creates) the data directory and checks its schema version.
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let is_new = !path.join("CURRENT").exists();
        if is_new && path.read_dir().map(|mut d| d.next().is_some()).unwrap_or(false) {
            return Err(StoreError::Foreign { path: path.to_owned() });
        }
        let mut opts = Options::default();
        opts.create_if_missing(true);
        // Only a new data dir gets column families: an existing database without ours is not
        // a semcache data dir, and must be refused untouched rather than extended.
        opts.create_missing_column_families(is_new);
        opts.set_compression_type(rocksdb::DBCompressionType::Lz4);
        // A fixed memory budget. By default every column family may hold two 64 MiB memtables
        // and gets its own 32 MiB block cache: about 1 GiB for our six under a write load,
        // reached slowly enough to look like a leak in a soak. Instead the memtables share
        // one cap (the largest is flushed when they reach it) and the CFs share one cache.
        opts.set_db_write_buffer_size(MEMTABLE_BUDGET_BYTES);
        let cache = rocksdb::Cache::new_lru_cache(BLOCK_CACHE_BYTES);
        let cf_options = || {
            let mut table = rocksdb::BlockBasedOptions::default();
            table.set_block_cache(&cache);
            let mut cf = Options::default();
            cf.set_block_based_table_factory(&table);
            cf
        };
        let cfs = COLUMN_FAMILIES.into_iter().map(|name| ColumnFamilyDescriptor::new(name, cf_options()));
        let mut upgrade = false;
        if !is_new {
            let existing =
                DB::list_cf(&opts, path).map_err(|source| StoreError::Rocks { path: path.to_owned(), source })?;
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
        let db = DB::open_cf_descriptors(&opts, path, cfs)
            .map_err(|source| StoreError::Rocks { path: path.to_owned(), source })?;
        let store = Store { db, path: path.to_owned() };

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

    fn cf(&self, name: &'static str) -> &ColumnFamily {
        self.db.cf_handle(name).expect("column family created at open")
    }

    fn rocks(&self, source: rocksdb::Error) -> StoreError {
        StoreError::Rocks { path: self.path.clone(), source }
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
        self.db.get_cf(self.cf(CF_META), key).map_err(|e| self.rocks(e))
    }

    fn put_meta(&self, key: &[u8], value: &[u8]) -> Result<(), StoreError> {
        let mut batch = self.batch();
        batch.inner.put_cf(self.cf(CF_META), key, value);
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
        self.db
            .iterator_cf(self.cf(CF_PROBES), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.map_err(|e| self.rocks(e))?;
                let nonce = <[u8; 8]>::try_from(k.as_ref()).map_err(|_| self.corrupt(CF_PROBES, &k, "bad key"))?;
                let at = <[u8; 8]>::try_from(v.as_ref()).map_err(|_| self.corrupt(CF_PROBES, &k, "bad value"))?;
                Ok((u64::from_be_bytes(nonce), i64::from_be_bytes(at)))
            })
            .collect()
    }

    /// Every evidence row: `(namespace, id, record)`.
    pub fn scan_evidence(&self) -> impl Iterator<Item = Result<(String, u64, EvidenceRecord), StoreError>> + '_ {
        self.db.iterator_cf(self.cf(CF_EVIDENCE), IteratorMode::Start).map(|item| {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
            let (ns, id) = keys::parse_entry_key(&k).ok_or_else(|| self.corrupt(CF_EVIDENCE, &k, "bad key"))?;
            let record = EvidenceRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_EVIDENCE, &k, e))?;
            Ok((ns.to_owned(), id, record))
        })
    }

    pub fn get_entry(&self, namespace: &str, id: u64) -> Result<Option<EntryRecord>, StoreError> {
        let key = keys::entry_key(namespace, id);
        self.db
            .get_pinned_cf(self.cf(CF_ENTRIES), &key)
            .map_err(|e| self.rocks(e))?
            .map(|v| EntryRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_ENTRIES, &key, e)))
            .transpose()
    }

    /// Entries by id within one namespace, in the order asked (`None` where gone).
    pub fn get_entries(&self, namespace: &str, ids: &[u64]) -> Result<Vec<Option<EntryRecord>>, StoreError> {
        let keys: Vec<Vec<u8>> = ids.iter().map(|id| keys::entry_key(namespace, *id)).collect();
        let cf = self.cf(CF_ENTRIES);
        self.db
            .batched_multi_get_cf(cf, &keys, false)
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
        self.db.iterator_cf(self.cf(CF_CATALOG), IteratorMode::Start).map(|item| {
            let (k, v) = item.map_err(|e| self.rocks(e))?;
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
        let Some(v) = self.db.get_pinned_cf(self.cf(CF_EXACT), exact).map_err(|e| self.rocks(e))? else {
            return Ok(None);
        };
        match keys::parse_entry_key(&v) {
            Some((ns, id)) => Ok(Some((ns.to_owned(), id))),
            None => Err(self.corrupt(CF_EXACT, exact, "value is not an entry key")),
        }
    }

    pub fn namespaces(&self) -> Result<Vec<NamespaceRecord>, StoreError> {
        self.db
            .iterator_cf(self.cf(CF_NAMESPACES), IteratorMode::Start)
            .map(|item| {
                let (k, v) = item.map_err(|e| self.rocks(e))?;
                NamespaceRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_NAMESPACES, &k, e))
            })
            .collect()
    }

    /// Every entry of one namespace, in id order.
    pub fn scan_namespace<'a>(&'a self, namespace: &str) -> impl Iterator<Item = Result<EntryRecord, StoreError>> + 'a {
        let prefix = keys::namespace_prefix(namespace);
        self.db
            .iterator_cf(self.cf(CF_ENTRIES), IteratorMode::From(&prefix, Direction::Forward))
            .take_while(move |item| item.as_ref().map(|(k, _)| k.starts_with(&prefix)).unwrap_or(true))
            .map(|item| self.decode_entry(item))
    }

    /// Every entry of every namespace.
    pub fn scan_all(&self) -> impl Iterator<Item = Result<EntryRecord, StoreError>> + '_ {
        self.db.iterator_cf(self.cf(CF_ENTRIES), IteratorMode::Start).map(|item| self.decode_entry(item))
    }

    fn decode_entry(&self, item: RawItem) -> Result<EntryRecord, StoreError> {
        let (k, v) = item.map_err(|e| self.rocks(e))?;
        EntryRecord::decode(v.as_ref()).map_err(|e| self.corrupt(CF_ENTRIES, &k, e))
    }

    pub fn batch(&self) -> Batch<'_> {
        Batch { store: self, inner: WriteBatch::default() }
    }

    /// Applies a batch atomically and returns only once it is durable (WAL fsynced).
    pub fn write(&self, batch: Batch<'_>) -> Result<(), StoreError> {
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        self.db.write_opt(batch.inner, &opts).map_err(|e| self.rocks(e))
    }
}

/// The writes of one operation, applied all together or not at all.
pub struct Batch<'a> {
    store: &'a Store,
    inner: WriteBatch,
}

impl Batch<'_> {
    /// An entry with its catalog row; the two are only ever written together.
    pub fn put_entry(&mut self, entry: &EntryRecord, catalog: &CatalogRecord) {
        let key = keys::entry_key(&entry.namespace, entry.id);
        self.inner.put_cf(self.store.cf(CF_CATALOG), &key, catalog.encode_to_vec());
        self.inner.put_cf(self.store.cf(CF_ENTRIES), key, entry.encode_to_vec());
    }

    /// Rewrites an existing entry's record (a new vector after `semcache reembed`), leaving its
    /// catalog row as it is.
    pub fn replace_entry(&mut self, entry: &EntryRecord) {
        let key = keys::entry_key(&entry.namespace, entry.id);
        self.inner.put_cf(self.store.cf(CF_ENTRIES), key, entry.encode_to_vec());
    }

    /// Rewrites the catalog row of an entry (recency and hit count flushes).
    pub fn put_catalog(&mut self, namespace: &str, id: u64, catalog: &CatalogRecord) {
        self.inner.put_cf(self.store.cf(CF_CATALOG), keys::entry_key(namespace, id), catalog.encode_to_vec());
    }

    /// What verified mode learned about an entry (replacing what was there).
    pub fn put_evidence(&mut self, namespace: &str, id: u64, evidence: &EvidenceRecord) {
        self.inner.put_cf(self.store.cf(CF_EVIDENCE), keys::entry_key(namespace, id), evidence.encode_to_vec());
    }

    /// Marks a probe token used until it expires.
    pub fn put_used_probe(&mut self, nonce: u64, expires_at_unix_ms: i64) {
        self.inner.put_cf(self.store.cf(CF_PROBES), nonce.to_be_bytes(), expires_at_unix_ms.to_be_bytes());
    }

    /// Forgets a used token once it has expired (it is refused as expired from then on).
    pub fn delete_used_probe(&mut self, nonce: u64) {
        self.inner.delete_cf(self.store.cf(CF_PROBES), nonce.to_be_bytes());
    }

    pub fn delete_entry(&mut self, namespace: &str, id: u64) {
        let key = keys::entry_key(namespace, id);
        self.inner.delete_cf(self.store.cf(CF_EVIDENCE), &key);
        self.inner.delete_cf(self.store.cf(CF_CATALOG), &key);
        self.inner.delete_cf(self.store.cf(CF_ENTRIES), key);
    }

    pub fn put_exact(&mut self, exact: &[u8; 32], namespace: &str, id: u64) {
        self.inner.put_cf(self.store.cf(CF_EXACT), exact, keys::entry_key(namespace, id));
    }

    pub fn delete_exact(&mut self, exact: &[u8; 32]) {
        self.inner.delete_cf(self.store.cf(CF_EXACT), exact);
    }

    pub fn put_namespace(&mut self, ns: &NamespaceRecord) {
        self.inner.put_cf(self.store.cf(CF_NAMESPACES), ns.name.as_bytes(), ns.encode_to_vec());
    }

    pub fn delete_namespace(&mut self, name: &str) {
        self.inner.delete_cf(self.store.cf(CF_NAMESPACES), name.as_bytes());
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
    fn a_corrupt_record_is_an_error_naming_the_dir_and_key_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut b = store.batch();
        b.inner.put_cf(store.cf(CF_CATALOG), keys::entry_key("a", 7), b"\xff\xff not protobuf");
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
