//! Index search: latency (p50/p99 of single searches) and recall@1 against brute force, at
//! several partition sizes and HNSW search breadths (ef). Not criterion: each size needs a
//! graph built first (minutes at 100k) and the figures wanted are percentiles and recall.
//!
//! `cargo bench --bench index` runs 10k and 100k. `SEMCACHE_INDEX_SIZES=10000,1000000` picks
//! sizes; `SEMCACHE_INDEX_GRAPHS=<dir>` keeps each built graph there (as a server checkpoint)
//! and reloads it next time, which makes repeated 1M runs take seconds instead of an hour.
//!
//! Vectors are seeded random unit vectors (384-d, the default model's size). Two query sets:
//! - `near`: a stored vector moved to cosine ~0.9 from it, as a paraphrase of a cached query
//!   is; the true neighbour is that vector. This is the case a cache hit depends on.
//! - `random`: fresh random vectors, whose nearest neighbour is barely nearer than the rest.
//!   The hardest case for a graph, and in a cache a miss either way (similarity ~0.2).

use rayon::prelude::*;
use semcache::index::{checkpoint, dot, seeded_unit_vector, IndexParams, Partition};
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
    let noise = seeded_unit_vector(seed, DIM);
    let mut q: Vec<f32> = of.iter().zip(&noise).map(|(a, b)| a + 0.484 * b).collect();
    let n = dot(&q, &q).sqrt();
    q.iter_mut().for_each(|x| *x /= n);
    q
}

fn brute_force(vectors: &[Vec<f32>], queries: &[Vec<f32>]) -> Vec<u64> {
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
            best as u64 + 1
        })
        .collect()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn partition(n: usize, vectors: &[Vec<f32>], graphs: Option<&PathBuf>) -> Partition {
    let namespace: Arc<str> = Arc::from(format!("bench-{n}").as_str());
    let scope = keys::scope_id(&Default::default());
    let params = IndexParams { flat_limit: 0, ..IndexParams::default() };
    if let Some(dir) = graphs {
        if let Ok((hnsw, _)) = checkpoint::load(dir, &namespace, &scope, DIM, MODEL) {
            let live: HashSet<u64> = (1..=n as u64).collect();
            let (p, missing) = Partition::from_checkpoint(namespace, scope, DIM, params, hnsw, &live);
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
        .map(|s| s.split(',').map(|n| n.trim().parse().expect("SEMCACHE_INDEX_SIZES: numbers")).collect())
        .unwrap_or_else(|| vec![10_000, 100_000]);
    let graphs = std::env::var_os("SEMCACHE_INDEX_GRAPHS").map(PathBuf::from);
    println!("index search, {DIM}-d, M=16, ef_construction=200, {QUERIES} queries per set, 1 thread per search");
    println!("{:>9} {:>7} {:>5} {:>10} {:>10} {:>9}", "vectors", "queries", "ef", "p50 µs", "p99 µs", "recall@1");
    for n in sizes {
        println!("{n} vectors:");
        let vectors: Vec<Vec<f32>> = (1..=n as u64).map(|id| seeded_unit_vector(id, DIM)).collect();
        let p = partition(n, &vectors, graphs.as_ref());
        let near: Vec<Vec<f32>> = (0..QUERIES as u64)
            .map(|i| {
                let target = (i * 7_919) % n as u64;
                near_query(10_000_000 + i, &vectors[target as usize])
            })
            .collect();
        let random: Vec<Vec<f32>> = (0..QUERIES as u64).map(|i| seeded_unit_vector(20_000_000 + i, DIM)).collect();
        for (name, queries) in [("near", &near), ("random", &random)] {
            let truth = brute_force(&vectors, queries);
            for ef in EFS {
                let mut times = Vec::with_capacity(queries.len());
                let mut correct = 0;
                for (q, want) in queries.iter().zip(&truth) {
                    let started = Instant::now();
                    let found = p.search_with_ef(q, 1, ef);
                    times.push(started.elapsed().as_secs_f64() * 1e6);
                    correct += usize::from(found.first().map(|c| c.id) == Some(*want));
                }
                times.sort_by(f64::total_cmp);
                println!(
                    "{n:>9} {name:>7} {ef:>5} {:>10.0} {:>10.0} {:>9.3}",
                    percentile(&times, 0.5),
                    percentile(&times, 0.99),
                    correct as f64 / queries.len() as f64
                );
            }
        }
    }
}
