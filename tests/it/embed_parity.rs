//! The embeddings match sentence-transformers on the same weights: identical token ids and
//! cosine >= 0.9999 per text, one at a time and in batches (padding must not leak).
//! Reference vectors: tests/fixtures/all-MiniLM-L6-v2.reference.json, produced by
//! tests/fixtures/make_reference.py.

use crate::harness as common;

use semcache::embed::{ModelInfo, SentenceModel};

#[derive(serde::Deserialize)]
struct Reference {
    max_seq_length: usize,
    items: Vec<Item>,
}

#[derive(serde::Deserialize)]
struct Item {
    text: String,
    input_ids: Vec<u32>,
    embedding: Vec<f32>,
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

fn load() -> (SentenceModel, Reference) {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/all-MiniLM-L6-v2.reference.json"))
            .unwrap();
    let reference: Reference = serde_json::from_str(&text).unwrap();
    let dir = common::model_dir();
    let info = ModelInfo::read(&dir).unwrap();
    assert_eq!(info.max_seq_length, reference.max_seq_length);
    assert_eq!(info.dim, 384);
    (SentenceModel::load(&dir, info, candle_core::Device::Cpu).unwrap(), reference)
}

#[test]
fn token_ids_and_vectors_match_sentence_transformers() {
    let (model, reference) = load();
    assert!(reference.items.len() >= 20);
    for item in &reference.items {
        assert_eq!(model.token_ids(&item.text).unwrap(), item.input_ids, "token ids of {:?}", item.text);
        let v = &model.embed(&[&item.text]).unwrap()[0];
        let norm: f32 = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        assert!((norm - 1.0).abs() < 1e-4, "not unit length: {norm}");
        let cos = cosine(v, &item.embedding);
        assert!(cos >= 0.9999, "cosine {cos} for {:?}", item.text);
    }
}

#[test]
fn batches_match_the_reference_and_single_runs() {
    let (model, reference) = load();
    let texts: Vec<&str> = reference.items.iter().map(|i| i.text.as_str()).collect();
    // The longest text sits in the batch, so every other one is padded heavily.
    let batch = model.embed(&texts).unwrap();
    for (item, v) in reference.items.iter().zip(&batch) {
        let cos = cosine(v, &item.embedding);
        assert!(cos >= 0.9999, "batched cosine {cos} for {:?}", item.text);
        let single = &model.embed(&[&item.text]).unwrap()[0];
        let max_diff = v.iter().zip(single).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(max_diff < 1e-5, "batch and single differ by {max_diff} for {:?}", item.text);
    }
}

/// Through the server's batching queue: concurrent requests are tokenised, batched under the
/// token budget, sharded across threads by length and handed back; each caller must get the
/// vector of its own text, equal to a one-at-a-time run within 1e-5.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_get_their_own_vectors_from_shared_batches() {
    use semcache::embed::{BatchConfig, DeviceKind, Embed, Embedder};

    let (model, reference) = load();
    let dir = common::model_dir();
    // A small token budget as well, so that some batches are cut by it rather than by count.
    let config = BatchConfig { max_batch: 16, max_batch_tokens: 160, threads: 2, ..BatchConfig::default() };
    let (embedder, ready) =
        Embedder::spawn(&dir, ModelInfo::read(&dir).unwrap(), DeviceKind::Cpu, config, Box::new(|_| {}));
    ready.await.unwrap().unwrap();
    let texts: Vec<String> = reference.items.iter().map(|i| i.text.clone()).collect();
    for round in 0..3 {
        let calls: Vec<_> = texts
            .iter()
            .cycle()
            .skip(round * 7)
            .take(48)
            .map(|t| {
                let (e, t) = (embedder.clone(), t.clone());
                tokio::spawn(async move { (e.embed(&t).await.unwrap(), t) })
            })
            .collect();
        for call in calls {
            let (v, text) = call.await.unwrap();
            let single = &model.embed(&[&text]).unwrap()[0];
            let max_diff = v.iter().zip(single).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(max_diff < 1e-5, "batched and single differ by {max_diff} for {text:?}");
        }
    }
}

#[test]
fn long_texts_tokenise_as_if_whole() {
    let (model, _) = load();
    let window = model.info().max_seq_length;
    let words =
        ["password", "réinitialiser", "密码重置", "don't", "U.S.A.", "x".repeat(150).leak(), "🙂", "naïve", "3.14"];
    let mut cases = Vec::new();
    // Ordinary prose, mixed scripts, punctuation runs, long whitespace gaps, words over the
    // tokenizer's 100-character limit, and a text whose prefix does not fill the window.
    for seed in 0..6usize {
        let mut text = String::new();
        for i in 0..3000 {
            text.push_str(words[(i * 7 + seed * 3 + i / 5) % words.len()]);
            text.push_str(match (i + seed) % 11 {
                0 => ",\t",
                3 => "  \n ",
                7 => "!?",
                _ => " ",
            });
        }
        cases.push(text);
    }
    cases.push(format!("{}{}", " ".repeat(window * 20), "after a long gap ".repeat(400)));
    cases.push(format!("{} tail words here", "y".repeat(window * 40)));
    // Whitespace that BERT's normaliser deletes (it is also a control character) joins words.
    cases.push("ab\u{b}cd\u{85}ef\u{c}gh ".repeat(window * 3));
    for (i, text) in cases.iter().enumerate() {
        assert!(text.len() > window * SentenceModel::PREFIX_BYTES_PER_TOKEN);
        let fast = model.tokenize(text).unwrap();
        let whole = model.tokenize_whole(text).unwrap();
        assert_eq!(fast.get_ids(), whole.get_ids(), "{}", &text[..80]);
        assert_eq!(fast.get_attention_mask(), whole.get_attention_mask());
        // The prose fills the window (the short cut is taken); the long word does not.
        assert_eq!(fast.get_ids().len() == window, i != 7, "case {i}");
    }
}
