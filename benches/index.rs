//! Index search: latency (p50/p99 of single searches) and recall@1 against brute force, at
//! several partition sizes and HNSW search breadths (ef). Not criterion: each size needs a
//! graph built first (minutes at 100k) and the figures wanted are percentiles and recall.
//!
//! `cargo bench --bench index` runs 10k and 100k. `SEMCACHE_INDEX_SIZES=10000,1000000` picks
//! sizes; `SEMCACHE_INDEX_GRAPHS=<dir>` keeps each built graph there (as a server checkpoint)
//! and reloads it next time, which makes repeated 1M runs take seconds instead of an hour.
//!
//! `SEMCACHE_INDEX_PAIRS=<similiar_qqp_full.json>` adds a run on real sentence vectors (see
//! `real_sentences`); it needs the model.
//!
//! Vectors are seeded random unit vectors (384-d, the default model's size). Two query sets:
//! - `near`: a stored vector moved to cosine ~0.9 from it, as a paraphrase of a cached query
//!   is; the true neighbour is that vector. This is the case a cache hit depends on.
//! - `random`: fresh random vectors, whose nearest neighbour is barely nearer than the rest.
//!   The hardest case for a graph, and in a cache a miss either way (similarity ~0.2).

mod realdata;

use rayon::prelude::*;
use semcache::embed::{ModelInfo, SentenceModel};
use semcache::index::{checkpoint, dot, IndexParams, Partition};
use semcache::loadgen::Latencies;
use semcache::store::keys;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

const DIM: usize = 384;
const QUERIES: usize = 500;
const EFS: [usize; 5] = [16, 32, 64, 128, 256];
const MODEL: &str = "index-bench/384/seeded";

fn near_query(seed: u64, of: &[f32]) -> Vec<f32> {
    // A random direction, nearly orthogonal to `of` in 384-d, at 0.484 of its length: the
    // result has cosine 1/sqrt(1 + 0.484^2) ~= 0.9 with `of`.
    let noise = semcache::rng::unit_vector(seed, DIM);
    let mut q: Vec<f32> = of.iter().zip(&noise).map(|(a, b)| a + 0.484 * b).collect();
    let n = dot(&q, &q).sqrt();
    q.iter_mut().for_each(|x| *x /= n);
    q
}

/// The best similarity of each query over all vectors, and the id that has it.
fn brute_force(vectors: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<(u64, f32)> {
    queries
        .par_iter()
        .map(|q| {
            let (best, _) = vectors.iter().enumerate().map(|(i, v)| (i, dot(q, v))).fold((0, f32::MIN), |acc, x| {
                if x.1 > acc.1 {
                    x
                } else {
                    acc
                }
            });
            (best as u64 + 1, dot(q, &vectors[best]))
        })
        .collect()
}

fn partition(name: &str, n: usize, vectors: &[Vec<f32>], graphs: Option<&PathBuf>) -> Partition {
    let namespace: Arc<str> = Arc::from(format!("{name}-{n}").as_str());
    let scope = keys::scope_id(&Default::default());
    let params = IndexParams { flat_limit: 0, ..IndexParams::default() };
    if let Some(dir) = graphs {
        if let Ok((graph, _)) = checkpoint::load(dir, &namespace, &scope, DIM, MODEL) {
            let live: HashSet<u64> = (1..=n as u64).collect();
            let (p, missing) = Partition::from_checkpoint(namespace, scope, DIM, params, graph, &live);
            assert!(missing.is_empty(), "the kept graph in {} is not this data set", dir.display());
            println!("  graph reloaded from {}", dir.display());
            return p;
        }
    }
    let started = Instant::now();
    let items: Vec<(u64, Vec<f32>)> = vectors.iter().enumerate().map(|(i, v)| (i as u64 + 1, v.clone())).collect();
    let p = Partition::from_vectors(namespace, scope, DIM, params, items);
    println!("  graph built in {:.1} s ({} threads)", started.elapsed().as_secs_f64(), rayon::current_num_threads());
    if let Some(dir) = graphs {
        std::fs::create_dir_all(dir).expect("graphs dir");
        p.checkpoint(dir, MODEL).expect("keep the graph");
    }
    p
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo bench -- --list` (used by some tooling) must not start a run.
    }
    let sizes: Vec<usize> = std::env::var("SEMCACHE_INDEX_SIZES")
        .ok()
        .map(|s| {
            s.split(',')
                .filter(|n| !n.trim().is_empty())
                .map(|n| n.trim().parse().expect("SEMCACHE_INDEX_SIZES: numbers"))
                .collect()
        })
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let graphs = std::env::var_os("SEMCACHE_INDEX_GRAPHS").map(PathBuf::from);
    println!("index search, {DIM}-d, M=16, ef_construction=200, {QUERIES} queries per set, 1 thread per search");
    println!("{:>9} {:>7} {:>5} {:>10} {:>10} {:>9}", "vectors", "queries", "ef", "p50 µs", "p99 µs", "recall@1");
    for n in sizes {
        println!("{n} vectors:");
        let vectors: Vec<Vec<f32>> = (1..=n as u64).map(|id| semcache::rng::unit_vector(id, DIM)).collect();
        let p = partition("bench", n, &vectors, graphs.as_ref());
        let near: Vec<Vec<f32>> = (0..QUERIES as u64)
            .map(|i| {
                let target = (i * 7_919) % n as u64;
                near_query(10_000_000 + i, &vectors[target as usize])
            })
            .collect();
        let random: Vec<Vec<f32>> =
            (0..QUERIES as u64).map(|i| semcache::rng::unit_vector(20_000_000 + i, DIM)).collect();
        report(n, &p, &vectors, &[("near", &near), ("random", &random)]);
    }
    if let Some(sizes) = std::env::var_os("SEMCACHE_INDEX_REAL") {
        let sizes: Vec<usize> = sizes.to_string_lossy().split(',').filter_map(|n| n.trim().parse().ok()).collect();
        real_structure(&sizes, graphs.as_ref());
    }
    if let Some(pairs) = std::env::var_os("SEMCACHE_INDEX_PAIRS") {
        real_sentences(PathBuf::from(pairs), graphs.as_ref());
    }
}

/// Candidates re-ranked with the exact vectors, as a lookup does (`cache::lookup::RERANK`).
const RERANK: usize = 16;

fn report(n: usize, p: &Partition, vectors: &[Vec<f32>], sets: &[(&str, &Vec<Vec<f32>>)]) {
    let m = p.memory();
    println!(
        "  index memory: codes {} + links {} + ids {} = {:.0} bytes per vector",
        m.codes,
        m.links,
        m.ids,
        (m.codes + m.links + m.ids) as f64 / n as f64
    );
    for (name, queries) in sets {
        let truth = brute_force(vectors, queries);
        let mut worst_code_error = 0f32;
        for ef in EFS {
            let mut times = Vec::with_capacity(queries.len());
            let mut correct = 0;
            for (q, want) in queries.iter().zip(&truth) {
                let started = Instant::now();
                let found = p.search_with_ef(q, RERANK, ef);
                // The exact vectors are in memory here; a server reads them from RocksDB.
                let best = found
                    .iter()
                    .map(|c| (c.id, c.similarity, dot(q, &vectors[c.id as usize - 1])))
                    .max_by(|a, b| a.2.total_cmp(&b.2));
                times.push(started.elapsed());
                if let Some((_, approx, exact)) = best {
                    worst_code_error = worst_code_error.max((approx - exact).abs());
                }
                // Found if it is as similar as brute force's best: real data holds texts that
                // embed identically (they differ only in case or spacing), and either is right.
                correct += usize::from(best.is_some_and(|b| b.0 == want.0 || b.2 >= want.1 - 1e-6));
            }
            let times = Latencies::new(times);
            let micros = |p: f64| times.quantile(p).expect("samples").as_secs_f64() * 1e6;
            println!(
                "{n:>9} {name:>7} {ef:>5} {:>10.0} {:>10.0} {:>9.3}",
                micros(0.5),
                micros(0.99),
                correct as f64 / queries.len() as f64
            );
        }
        println!("  {name}: the codes' similarity was off the exact cosine by at most {worst_code_error:.4}");
    }
}

#[derive(serde::Deserialize)]
struct Pair {
    text_a: String,
    text_b: String,
    label: u8,
}

/// Real sentence vectors: the distinct first questions of a pair file (GPTCache's QQP sample,
/// `{text_a, text_b, label}` objects) embedded with the default model are stored; the second
/// questions of duplicate pairs are the queries (`para`), as paraphrases reach a cache. The
/// embeddings are kept beside the graphs when `SEMCACHE_INDEX_GRAPHS` is set.
fn real_sentences(path: PathBuf, graphs: Option<&PathBuf>) {
    let pairs: Vec<Pair> = serde_json::from_slice(&std::fs::read(&path).expect("read the pair file")).expect("pairs");
    let mut seen = HashSet::new();
    let stored: Vec<&str> = pairs.iter().map(|p| p.text_a.as_str()).filter(|t| seen.insert(*t)).collect();
    let queries: Vec<&str> =
        pairs.iter().filter(|p| p.label == 1).map(|p| p.text_b.as_str()).step_by(7).take(QUERIES).collect();
    let cache = graphs.map(|d| d.join(format!("qqp-{}-vectors.bin", stored.len())));
    let all: Vec<&str> = stored.iter().chain(&queries).copied().collect();
    let vectors = match cache.as_ref().and_then(|c| std::fs::read(c).ok()) {
        Some(bytes) => bytes
            .chunks_exact(DIM * 4)
            .map(|v| v.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
            .collect(),
        None => {
            let dir = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/models/all-MiniLM-L6-v2"));
            let info = ModelInfo::read(&dir).expect("the model (models/fetch.sh)");
            let model = SentenceModel::load(&dir, info, candle_core::Device::Cpu).expect("load the model");
            let started = Instant::now();
            let mut out: Vec<Vec<f32>> = Vec::with_capacity(all.len());
            for chunk in all.chunks(64) {
                out.extend(model.embed(chunk).expect("embed"));
                if out.len().is_multiple_of(6_400) {
                    println!("  embedded {}/{} ({:.0} s)", out.len(), all.len(), started.elapsed().as_secs_f64());
                }
            }
            if let Some(c) = &cache {
                let bytes: Vec<u8> = out.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
                std::fs::write(c, bytes).expect("keep the vectors");
            }
            out
        }
    };
    let (stored_vectors, query_vectors) = vectors.split_at(stored.len());
    let n = stored_vectors.len();
    println!("{n} real questions ({}), {} paraphrase queries:", path.display(), query_vectors.len());
    let p = partition("qqp", n, stored_vectors, graphs);
    report(n, &p, stored_vectors, &[("para", &query_vectors.to_vec())]);
}

/// Real-structure vectors (see `realdata`): every distinct text of the evaluation data, and
/// up to `n` with generated paraphrases around them. Queries: held-out real paraphrases (`para`,
/// the partner of a stored text) and generated paraphrases of stored vectors (`near`).
fn real_structure(sizes: &[usize], graphs: Option<&PathBuf>) {
    let limit = std::env::var("SEMCACHE_INDEX_REAL_TEXTS").ok().and_then(|v| v.parse().ok());
    let Some(real) = realdata::RealData::load(limit) else {
        println!("real-structure run skipped: no ../shared/data (SEMCACHE_SHARED_DATA)");
        return;
    };
    let cosines = &real.paraphrase_cosines;
    let q = |p: f64| cosines[((cosines.len() - 1) as f64 * p) as usize];
    println!(
        "{} real texts, {} duplicate pairs: paraphrase cosine p10 {:.3} p50 {:.3} p90 {:.3}",
        real.vectors.len(),
        real.paraphrases.len(),
        q(0.1),
        q(0.5),
        q(0.9)
    );
    for &n in sizes {
        println!("{n} real-structure vectors:");
        let vectors = real.generate(n, 42);
        let p = partition("real", n, &vectors, graphs);
        let mut rng = semcache::rng::SplitMix64::new(7);
        let near: Vec<Vec<f32>> =
            (0..QUERIES).map(|_| real.paraphrase_of(&vectors[rng.below(n as u64) as usize], &mut rng)).collect();
        // Both texts of these pairs are stored, so the query is the pair's partner moved on by
        // another paraphrase step: a new rewording of a cached question.
        let para: Vec<Vec<f32>> = real
            .paraphrases
            .iter()
            .filter(|(a, b)| *a < n && *b < n)
            .step_by(7)
            .take(QUERIES)
            .map(|&(_, b)| real.paraphrase_of(&real.vectors[b], &mut rng))
            .collect();
        report(n, &p, &vectors, &[("para", &para), ("near", &near)]);
    }
}
