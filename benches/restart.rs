//! Start-up time and memory of a large data set: from scratch (every graph built from
//! RocksDB) and from checkpoints. Not a criterion benchmark: one run takes minutes.
//!
//! `SEMCACHE_RESTART_ENTRIES=100000 cargo bench --bench restart` (default 100,000). Fills a
//! temporary data dir with that many entries in one namespace, then opens it twice and prints
//! the time, the process RSS after each open and where the bytes go. Vectors have the
//! structure of real traffic (see `realdata`: real sentence vectors and generated paraphrases
//! around them) when `../shared/data` is there, seeded random unit vectors otherwise
//! (`SEMCACHE_RESTART_VECTORS=random` asks for those). Needs the model (`models/fetch.sh`),
//! because `Cache::open` checks the data against it.

mod realdata;

use semcache::cache::{Cache, Defaults, Settings};
use semcache::clock::{now_unix_ms, SystemClock};
use semcache::embed::{BatchConfig, DeviceKind, Embedder, ModelInfo};
use semcache::rng::unit_vector;
use semcache::store::{keys, CatalogRecord, EntryRecord, NamespaceRecord, Store};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn vectors(entries: u64, dim: usize) -> (Vec<Vec<f32>>, &'static str) {
    let random = std::env::var("SEMCACHE_RESTART_VECTORS").is_ok_and(|v| v == "random");
    let limit = std::env::var("SEMCACHE_INDEX_REAL_TEXTS").ok().and_then(|v| v.parse().ok());
    match (random, realdata::RealData::load(limit)) {
        (false, Some(real)) => (real.generate(entries as usize, 42), "real-structure"),
        _ => ((1..=entries).map(|id| unit_vector(id, dim)).collect(), "seeded random"),
    }
}

fn fill(dir: &Path, info: &ModelInfo, entries: u64) {
    let (vectors, kind) = vectors(entries, info.dim);
    println!("{kind} vectors");
    let mut vectors = vectors.into_iter();
    let store = Store::open(dir).unwrap();
    let now = now_unix_ms();
    let mut batch = store.batch();
    batch.put_namespace(&NamespaceRecord {
        name: "bench".into(),
        similarity_threshold: 0.85,
        embedding_model: info.fingerprint.clone(),
        created_at_unix_ms: now,
        ..Default::default()
    });
    store.write(batch).unwrap();
    let scope = keys::scope_id(&Default::default());
    for chunk in (1..=entries).collect::<Vec<_>>().chunks(2_000) {
        let mut batch = store.batch();
        for &id in chunk {
            let query = format!("synthetic question number {id}");
            let entry = EntryRecord {
                id,
                namespace: "bench".into(),
                query: query.clone(),
                response: format!("answer {id}"),
                created_at_unix_ms: now,
                vector: vectors.next().expect("one per entry"),
                ..Default::default()
            };
            let catalog = CatalogRecord {
                scope_id: scope.to_vec(),
                created_at_unix_ms: now,
                last_used_unix_ms: now,
                size_bytes: 1_700,
                ..Default::default()
            };
            batch.put_entry(&entry, &catalog);
            batch.put_exact(&keys::exact_key("bench", &Default::default(), &query), "bench", id);
        }
        store.write(batch).unwrap();
    }
    store.set_id_high_water(entries + 1).unwrap();
}

/// Opens the data dir; returns the cache, the seconds it took and the RSS before it (the model
/// loaded, nothing else).
fn open(dir: &Path, model: &Path, info: &ModelInfo) -> (Cache, f64, f64) {
    let (embedder, ready) =
        Embedder::spawn(model, info.clone(), DeviceKind::Cpu, BatchConfig::default(), Box::new(|_| {}));
    ready.blocking_recv().expect("the model thread").expect("the model loads");
    let base = rss_mib();
    let started = Instant::now();
    let settings =
        Settings { defaults: Defaults { similarity_threshold: 0.85, ..Defaults::default() }, ..Settings::default() };
    let cache = Cache::open(Store::open(dir).unwrap(), Arc::new(embedder), settings, Arc::new(SystemClock)).unwrap();
    (cache, started.elapsed().as_secs_f64(), base)
}

/// Where the RSS goes after a start, one row per part, in MiB and bytes per entry.
fn memory_table(cache: &Cache, base: f64, entries: usize) {
    let m = cache.memory();
    let mib = |b: f64| b / (1 << 20) as f64;
    let total = rss_mib();
    let parts = [
        ("model, runtime (RSS before the open)", base),
        ("graph codes (int8 + scale)", mib(m.index.codes as f64)),
        ("graph links", mib(m.index.links as f64)),
        ("graph ids, id map, levels, dead bits", mib(m.index.ids as f64)),
        ("ledger (catalog in memory, LRU, expiry)", mib(m.ledger as f64)),
        ("RocksDB (block cache, memtables, table readers)", mib(m.rocksdb as f64)),
    ];
    let known: f64 = parts.iter().map(|p| p.1).sum();
    println!("| part | MiB | bytes per entry |");
    println!("| --- | ---: | ---: |");
    for (name, value) in parts.iter().copied().chain([("allocator slack, the rest", total - known), ("RSS", total)]) {
        let per = if name.starts_with("model") {
            String::from("-")
        } else {
            format!("{:.0}", value * (1 << 20) as f64 / entries as f64)
        };
        println!("| {name} | {value:.0} | {per} |");
    }
}

/// One start-up in a fresh process, so that its RSS is its own.
fn child(dir: &Path, label: &str) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .env("SEMCACHE_RESTART_OPEN", dir)
        .env("SEMCACHE_RESTART_LABEL", label)
        .output()
        .unwrap();
    print!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench` probing for criterion-style benchmarks
    }
    let model: PathBuf = std::env::var_os("SEMCACHE_MODEL_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    let info = ModelInfo::read(&model).expect("model missing: run models/fetch.sh");
    if let Some(dir) = std::env::var_os("SEMCACHE_RESTART_OPEN") {
        let label = std::env::var("SEMCACHE_RESTART_LABEL").unwrap_or_default();
        let (cache, secs, base) = open(Path::new(&dir), &model, &info);
        println!("{label:<16} {secs:>7.1} s, RSS {:>6.0} MiB, {:?}", rss_mib(), cache.restore_report);
        memory_table(&cache, base, cache.restore_report.vectors);
        let started = Instant::now();
        if cache.checkpoint() > 0 {
            println!("{:<16} {:>7.1} s", "checkpoint write", started.elapsed().as_secs_f64());
        }
        return;
    }
    let entries: u64 = std::env::var("SEMCACHE_RESTART_ENTRIES").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let dir = tempfile::tempdir().unwrap();
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let started = Instant::now();
    fill(dir.path(), &info, entries);
    println!("filled {entries} entries in {:.1} s ({threads} threads)", started.elapsed().as_secs_f64());
    child(dir.path(), "from scratch");
    child(dir.path(), "from checkpoint");
}
