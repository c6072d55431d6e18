//! In-process embedding time: one short query, and batches of 8 and 32 realistic queries
//! (sharded across all cores, as the server runs them), and the batch of 32 on one thread.
//! `matmul_int8` times the encoder's three matrix products at a batch of 32 (640 tokens) in f32
//! and through candle's int8 path (weights quantised to Q8_0 at load, activations at run
//! time), and prints how far the int8 product is from the f32 one: part of the measurement
//! behind keeping f32 (README, "int8 encoder: measured, not kept").
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

/// The encoder's matrix products (BERT-small, 384 hidden, 1536 intermediate) on 640 tokens.
fn int8(c: &mut Criterion) {
    use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
    use candle_core::{Device, Module, Tensor};
    let dev = Device::Cpu;
    let mut group = c.benchmark_group("matmul_int8");
    for (name, k, n) in
        [("qkv_out_384x384", 384usize, 384usize), ("ffn_up_384x1536", 384, 1536), ("ffn_down_1536x384", 1536, 384)]
    {
        let x = Tensor::randn(0f32, 1.0, (640, k), &dev).unwrap();
        // Linear's layout: weights (out, in), multiplied transposed.
        let w = Tensor::randn(0f32, 0.05, (n, k), &dev).unwrap();
        let q = QMatMul::from_qtensor(QTensor::quantize(&w, GgmlDType::Q8_0).unwrap()).unwrap();
        let (exact, approx) = (x.matmul(&w.t().unwrap()).unwrap(), q.forward(&x).unwrap());
        let cosine = |a: &Tensor, b: &Tensor| -> f32 {
            let dot = (a * b).unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            let norm = |t: &Tensor| t.sqr().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap().sqrt();
            dot / (norm(a) * norm(b))
        };
        println!("matmul_int8/{name}: cosine of the Q8_0 product to the f32 one {:.5}", cosine(&exact, &approx));
        group.bench_function(BenchmarkId::new("f32", name), |b| b.iter(|| x.matmul(&w.t().unwrap()).unwrap()));
        group.bench_function(BenchmarkId::new("q8_0", name), |b| b.iter(|| q.forward(&x).unwrap()));
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().sample_size(30);
    targets = bench, int8
}
criterion_main!(benches);
