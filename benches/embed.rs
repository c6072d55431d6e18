//! In-process embedding time: one short query, and batches of 8 and 32 realistic queries
//! (sharded across all cores, as the server runs them), and the batch of 32 on one thread.
//! Needs the model (`models/fetch.sh`). `cargo bench --bench embed`; the PyTorch reference
//! on the same texts is `benches/torch_embed.py`.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use semcache::embed::{ModelInfo, SentenceModel};
use std::path::Path;

const QUERIES: [&str; 8] = [
    "How do I reset my password if I no longer have access to my email?",
    "What is the capital of France?",
    "Convert 5 miles to kilometers",
    "Explain the difference between TCP and UDP in simple terms",
    "What are the side effects of ibuprofen when taken with alcohol?",
    "python reverse list",
    "How long does shipping to Canada usually take for standard orders?",
    "Is it safe for dogs to eat grapes or raisins?",
];

fn model() -> SentenceModel {
    let dir = std::env::var_os("SEMCACHE_MODEL_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2"));
    let info = ModelInfo::read(&dir).expect("model missing: run models/fetch.sh");
    SentenceModel::load(&dir, info, candle_core::Device::Cpu).expect("load model")
}

fn bench(c: &mut Criterion) {
    let model = model();
    let mut group = c.benchmark_group("embed");
    // 13 words, 19 tokens: the query DESIGN.md's measurements use.
    let short = "How do I reset my password if I no longer have access to my email?";
    group.throughput(Throughput::Elements(1));
    group.bench_function("single_short_query", |b| b.iter(|| model.embed(&[short]).unwrap()));
    for size in [8usize, 32] {
        let batch: Vec<&str> = QUERIES.iter().cycle().take(size).copied().collect();
        group.throughput(Throughput::Elements(size as u64));
        group.bench_with_input(BenchmarkId::new("batch", size), &batch, |b, batch| {
            b.iter(|| model.embed(batch).unwrap())
        });
    }
    // The same batch on one thread: what a core does alone, and so what sharding across
    // threads scales from.
    let one = rayon::ThreadPoolBuilder::new().num_threads(1).build().unwrap();
    let batch: Vec<&str> = QUERIES.iter().cycle().take(32).copied().collect();
    group.bench_with_input(BenchmarkId::new("batch_one_thread", 32), &batch, |b, batch| {
        b.iter(|| one.install(|| model.embed(batch).unwrap()))
    });
    group.finish();

    // A query at the default --max-query-bytes: only the window's tokens are read, so the
    // tokenizer need not see the rest.
    let mut tokenize = c.benchmark_group("tokenize_32k");
    let long: String = QUERIES.iter().cycle().take(1000).copied().collect::<Vec<_>>().join(" ");
    let long = &long[..long.floor_char_boundary(32 * 1024)];
    tokenize.bench_function("window_prefix", |b| b.iter(|| model.tokenize(long).unwrap()));
    tokenize.bench_function("whole_text", |b| b.iter(|| model.tokenize_whole(long).unwrap()));
    tokenize.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench
}
criterion_main!(benches);
