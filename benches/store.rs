//! What durability costs: Store-sized RocksDB batches written with `sync = true` (what every
//! acknowledged Store does) against the same batches without the fsync, from 1, 8 and 32
//! concurrent writers. With concurrent writers RocksDB commits a whole write group with one
//! fsync, so the gap narrows as load grows. `cargo bench --bench store`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use rocksdb::{WriteBatch, WriteOptions, DB};
use semcache::store::{CatalogRecord, EntryRecord, Store};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

fn entry(id: u64) -> EntryRecord {
    EntryRecord {
        id,
        namespace: "bench".into(),
        query: "How long does shipping to Canada usually take for standard orders?".into(),
        response: "Standard orders reach Canada in 5 to 8 business days. ".repeat(8),
        vector: (0..384).map(|i| ((i as u64 * 31 + id) % 97) as f32 / 97.0).collect(),
        ..Default::default()
    }
}

/// Runs `writes` writes over `threads` threads; returns the wall time.
fn run(threads: usize, writes: u64, write: &(dyn Fn(u64) + Sync)) -> Duration {
    let next = AtomicU64::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= writes {
                    break;
                }
                write(id);
            });
        }
    });
    started.elapsed()
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("synced")).unwrap();
    let raw = DB::open_default(dir.path().join("unsynced")).unwrap();
    let catalog = CatalogRecord { scope_id: vec![0; 16], ..Default::default() };
    let base = AtomicU64::new(0);

    let mut group = c.benchmark_group("store_write");
    group.throughput(Throughput::Elements(1)).measurement_time(Duration::from_secs(4)).sample_size(10);
    for threads in [1usize, 8, 32] {
        group.bench_function(BenchmarkId::new("sync", threads), |b| {
            b.iter_custom(|iters| {
                let offset = base.fetch_add(iters, Ordering::Relaxed);
                run(threads, iters, &|i| {
                    let mut batch = store.batch();
                    batch.put_entry(&entry(offset + i), &catalog);
                    store.write(batch).unwrap();
                })
            })
        });
        group.bench_function(BenchmarkId::new("no_sync", threads), |b| {
            b.iter_custom(|iters| {
                let offset = base.fetch_add(iters, Ordering::Relaxed);
                let opts = WriteOptions::default();
                run(threads, iters, &|i| {
                    let e = entry(offset + i);
                    let mut batch = WriteBatch::default();
                    batch.put((offset + i).to_be_bytes(), prost::Message::encode_to_vec(&e));
                    batch.put([(offset + i).to_be_bytes(), [1; 8]].concat(), [0u8; 40]);
                    raw.write_opt(batch, &opts).unwrap();
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
