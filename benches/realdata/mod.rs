//! Vectors with the structure of real traffic, for the index and restart benchmarks.
//!
//! Every distinct text of the evaluation data (`../shared/data`: QQP, MeanCache, GPTCache's
//! mock set and the follow-ups, Banking77) is embedded with the default model once and kept
//! outside the repo (`$SEMCACHE_BENCH_CACHE`, default `~/.cache/semcache/bench`). Larger sets
//! are made by placing generated vectors around those real ones at the distances real
//! paraphrases have: see [`RealData::generate`].

#![allow(dead_code)] // each bench uses part of it

use semcache::embed::{ModelInfo, SentenceModel};
use semcache::eval::dataset::{read_pairs, Pair};
use semcache::index::dot;
use semcache::rng::SplitMix64;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

pub struct RealData {
    pub dim: usize,
    /// Unit vectors of the distinct texts, in a fixed order.
    pub vectors: Vec<Vec<f32>>,
    /// Index pairs (into `vectors`) of the texts of labelled duplicate pairs: real paraphrases.
    pub paraphrases: Vec<(usize, usize)>,
    /// Cosines of those pairs, sorted: the distances at which generated vectors are placed.
    pub paraphrase_cosines: Vec<f32>,
}

/// The evaluation data beside the checkout, if there is any.
pub fn shared_data() -> Option<PathBuf> {
    let dir = std::env::var_os("SEMCACHE_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    dir.join("gptcache_qqp/similiar_qqp_full.json").is_file().then_some(dir)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("SEMCACHE_BENCH_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache/semcache/bench")
    })
}

/// Distinct texts of every data set and the duplicate pairs among them. `limit` keeps the first
/// texts only (for a small run in CI).
fn texts(data: &Path, limit: Option<usize>) -> (Vec<String>, Vec<(usize, usize)>) {
    let mut pairs: Vec<Pair> = Vec::new();
    for file in [
        "gptcache_qqp/similiar_qqp_full.json",
        "meancache_quora/test.csv",
        "meancache_quora/val.csv",
        "gptcache_mock/mock_data.json",
    ] {
        pairs.extend(read_pairs(&data.join(file), None).unwrap_or_else(|e| panic!("{file}: {e}")));
    }
    let mut singles: Vec<String> = Vec::new();
    for file in ["meancache_contextual/contextual_queries.json", "meancache_contextual/Synthetic_Dataset_Diverse.json"]
    {
        let rows: Vec<HashMap<String, serde_json::Value>> =
            serde_json::from_slice(&std::fs::read(data.join(file)).expect(file)).expect(file);
        for row in rows {
            for key in ["Main Query", "Follow-Up Query"] {
                if let Some(text) = row.get(key).and_then(|v| v.as_str()) {
                    singles.push(text.to_owned());
                }
            }
        }
    }
    let stream = semcache::eval::stream::read_stream(&data.join("banking77/banking77.jsonl"), None).expect("banking77");
    singles.extend(stream.into_iter().map(|u| u.text));

    let mut at: HashMap<String, usize> = HashMap::new();
    let mut all: Vec<String> = Vec::new();
    let mut index = |text: &str, all: &mut Vec<String>| -> Option<usize> {
        if let Some(&i) = at.get(text) {
            return Some(i);
        }
        if limit.is_some_and(|l| all.len() >= l) {
            return None;
        }
        at.insert(text.to_owned(), all.len());
        all.push(text.to_owned());
        Some(all.len() - 1)
    };
    let mut duplicates = Vec::new();
    for pair in &pairs {
        let (a, b) = (index(&pair.a, &mut all), index(&pair.b, &mut all));
        if let (Some(a), Some(b), true) = (a, b, pair.duplicate) {
            if a != b {
                duplicates.push((a, b));
            }
        }
    }
    for text in &singles {
        index(text, &mut all);
    }
    (all, duplicates)
}

impl RealData {
    /// Loads (or embeds once, then caches) the real vectors. `None` without the data.
    pub fn load(limit: Option<usize>) -> Option<Self> {
        let data = shared_data()?;
        let (texts, paraphrases) = texts(&data, limit);
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
        let info = ModelInfo::read(&dir).expect("the model (models/fetch.sh)");
        let dim = info.dim;
        let cache = cache_dir().join(format!(
            "real-{}-{}.f32",
            texts.len(),
            info.fingerprint.rsplit('/').next().unwrap_or_default()
        ));
        let vectors = match std::fs::read(&cache) {
            Ok(bytes) if bytes.len() == texts.len() * dim * 4 => bytes
                .chunks_exact(dim * 4)
                .map(|v| v.chunks_exact(4).map(|b| f32::from_le_bytes(b.try_into().unwrap())).collect())
                .collect(),
            _ => {
                let vectors = embed(&dir, info, &texts);
                std::fs::create_dir_all(cache.parent().unwrap()).expect("bench cache dir");
                let bytes: Vec<u8> = vectors.iter().flatten().flat_map(|x| x.to_le_bytes()).collect();
                std::fs::write(&cache, bytes).expect("keep the vectors");
                println!("  kept in {}", cache.display());
                vectors
            }
        };
        let mut paraphrase_cosines: Vec<f32> =
            paraphrases.iter().map(|&(a, b)| dot(&vectors[a], &vectors[b])).collect();
        paraphrase_cosines.sort_by(f32::total_cmp);
        Some(Self { dim, vectors, paraphrases, paraphrase_cosines })
    }

    /// A cosine drawn from the real paraphrases' distribution.
    fn paraphrase_cosine(&self, rng: &mut SplitMix64) -> f32 {
        self.paraphrase_cosines[rng.below(self.paraphrase_cosines.len() as u64) as usize]
    }

    /// A vector at a real paraphrase distance from `base`, in a direction real sentences vary
    /// in: the difference of two other real vectors, made orthogonal to `base`. (An isotropic
    /// random direction would leave the narrow cone sentence embeddings occupy and make the
    /// set look more like uniform noise than traffic.)
    pub fn paraphrase_of(&self, base: &[f32], rng: &mut SplitMix64) -> Vec<f32> {
        let n = self.vectors.len() as u64;
        let (j, k) = (rng.below(n) as usize, rng.below(n) as usize);
        let mut d: Vec<f32> = self.vectors[j].iter().zip(&self.vectors[k]).map(|(x, y)| x - y).collect();
        let along = dot(&d, base);
        d.iter_mut().zip(base).for_each(|(x, b)| *x -= along * b);
        let norm = dot(&d, &d).sqrt();
        if norm < 1e-6 {
            return self.paraphrase_of(base, rng);
        }
        let c = self.paraphrase_cosine(rng).clamp(0.3, 0.999);
        let s = (1.0 - c * c).sqrt();
        let mut v: Vec<f32> = base.iter().zip(&d).map(|(b, x)| c * b + s * x / norm).collect();
        let norm = dot(&v, &v).sqrt();
        v.iter_mut().for_each(|x| *x /= norm);
        v
    }

    /// `n` vectors: the real ones first, then generated ones, each a paraphrase (at a distance
    /// drawn from the real paraphrase pairs) of a real vector picked at random, so that each
    /// real question gathers rewordings around it as a cache's entries do.
    pub fn generate(&self, n: usize, seed: u64) -> Vec<Vec<f32>> {
        let mut rng = SplitMix64::new(seed);
        let mut out: Vec<Vec<f32>> = self.vectors.iter().take(n).cloned().collect();
        let real = out.len() as u64;
        while out.len() < n {
            let base = rng.below(real) as usize;
            let v = self.paraphrase_of(&out[base], &mut rng);
            out.push(v);
        }
        out
    }
}

fn embed(dir: &Path, info: ModelInfo, texts: &[String]) -> Vec<Vec<f32>> {
    let model = SentenceModel::load(dir, info, candle_core::Device::Cpu).expect("load the model");
    // Batches of similar length pad least.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&i| texts[i].len());
    let mut out: Vec<Vec<f32>> = vec![Vec::new(); texts.len()];
    let started = Instant::now();
    let mut done = 0;
    for chunk in order.chunks(64) {
        let batch: Vec<&str> = chunk.iter().map(|&i| texts[i].as_str()).collect();
        for (&i, v) in chunk.iter().zip(model.embed(&batch).expect("embed")) {
            out[i] = v;
        }
        done += chunk.len();
        if done % 12_800 < 64 {
            println!("  embedded {done}/{} ({:.0} s)", texts.len(), started.elapsed().as_secs_f64());
        }
    }
    println!("  embedded {} texts in {:.0} s", texts.len(), started.elapsed().as_secs_f64());
    out
}
