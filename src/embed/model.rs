//! A BERT-family sentence-transformers model on candle: tokenizer, encoder, masked mean
//! pooling and L2 normalisation, as sentence-transformers computes them.

use super::bert::Bert;
use super::{DeviceKind, EmbedError};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::Config;
use rayon::prelude::*;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenizers::{Encoding, Tokenizer, TruncationParams};

/// The files a model directory must hold.
pub const REQUIRED_FILES: [&str; 3] = ["config.json", "tokenizer.json", "model.safetensors"];

/// sentence-transformers' default window for this family when the folder does not say.
const DEFAULT_MAX_SEQ_LENGTH: usize = 256;

/// What identifies a model's vector space: vectors from two models with different
/// fingerprints must never be compared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelInfo {
    pub name: String,
    pub dim: usize,
    /// `name/dim/sha256-prefix-of-weights`.
    pub fingerprint: String,
    pub max_seq_length: usize,
}

impl ModelInfo {
    /// Whether vectors recorded under `fingerprint` live in this model's vector space. The
    /// folder name is only a label: the dimension and the weights decide.
    pub fn matches(&self, fingerprint: &str) -> bool {
        let space = |fp: &str| fp.split_once('/').map(|(_, rest)| rest.to_owned());
        space(fingerprint).is_some() && space(fingerprint) == space(&self.fingerprint)
    }

    /// Reads the model's identity without loading it: the config and a hash of the weights.
    pub fn read(dir: &Path) -> Result<Self, EmbedError> {
        check_model_dir(dir)?;
        let config = read_config(dir)?;
        let mut file = std::fs::File::open(dir.join("model.safetensors")).map_err(|e| io(dir, e))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| io(dir, e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        let digest = hasher.finalize();
        let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".to_string());
        Ok(Self {
            fingerprint: format!("{name}/{}/{hex}", config.hidden_size),
            name,
            dim: config.hidden_size,
            max_seq_length: max_seq_length(dir),
        })
    }
}

fn io(dir: &Path, e: std::io::Error) -> EmbedError {
    EmbedError::Load { dir: dir.to_owned(), reason: e.to_string() }
}

/// Fails with a message that says how to get the default model when files are missing.
pub fn check_model_dir(dir: &Path) -> Result<(), EmbedError> {
    let missing: Vec<&str> = REQUIRED_FILES.iter().copied().filter(|f| !dir.join(f).is_file()).collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(EmbedError::MissingModel { dir: dir.to_owned(), missing: missing.join(", ") })
    }
}

fn read_config(dir: &Path) -> Result<Config, EmbedError> {
    let text = std::fs::read_to_string(dir.join("config.json")).map_err(|e| io(dir, e))?;
    serde_json::from_str(&text)
        .map_err(|e| EmbedError::Load { dir: dir.to_owned(), reason: format!("config.json: {e}") })
}

/// The window sentence-transformers uses (`sentence_bert_config.json`), not the tokenizer's.
fn max_seq_length(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("sentence_bert_config.json"))
        .ok()
        .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
        .and_then(|v| v.get("max_seq_length")?.as_u64())
        .map_or(DEFAULT_MAX_SEQ_LENGTH, |n| n as usize)
}

pub fn device(kind: DeviceKind) -> Result<Device, EmbedError> {
    match kind {
        DeviceKind::Cpu => Ok(Device::Cpu),
        DeviceKind::Cuda => Device::new_cuda(0).map_err(|e| {
            EmbedError::Device(format!(
                "cannot use CUDA device 0 ({e}); CUDA needs a build with `cargo build --release --features cuda`"
            ))
        }),
    }
}

pub struct SentenceModel {
    model: Bert,
    tokenizer: Tokenizer,
    device: Device,
    info: ModelInfo,
    pad_id: u32,
}

impl SentenceModel {
    pub fn load(dir: &Path, info: ModelInfo, device: Device) -> Result<Self, EmbedError> {
        let load_err = |reason: String| EmbedError::Load { dir: dir.to_owned(), reason };
        let config = read_config(dir)?;
        let mut tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| load_err(format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer pads every input to 128 tokens; `forward` pads each shard to its
        // own longest text instead, and truncation is where sentence-transformers puts it.
        let pad_id = tokenizer.get_padding().map_or(0, |p| p.pad_id);
        tokenizer.with_padding(None);
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: info.max_seq_length, ..Default::default() }))
            .map_err(|e| load_err(format!("truncation: {e}")))?;
        let weights: PathBuf = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; semcache never writes it, and a
        // concurrent writer replacing it in place is outside what any model loader can guard.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device) }
            .map_err(|e| load_err(format!("model.safetensors: {e}")))?;
        let model = Bert::load(vb, &config).map_err(|e| load_err(format!("BERT weights: {e}")))?;
        Ok(Self { model, tokenizer, device, info, pad_id })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Token ids as the model sees them (truncated, no padding), for parity checks.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        Ok(self.tokenize(text)?.get_ids().to_vec())
    }

    /// Tokenises one text as the model reads it: truncated to the model's window, unpadded.
    ///
    /// Only the window's tokens are read, but tokenising all of a 32 KiB query costs about 30
    /// times the time and memory of tokenising what fills the window, so a long text is first
    /// tried cut at a space after [`Self::PREFIX_BYTES_PER_TOKEN`] bytes a token. The
    /// normalisers of BERT-family tokenizers work char by char and their pre-tokenizers split
    /// at every space, so the prefix's tokens are the whole text's first tokens; when they fill
    /// the window, the truncated encodings are the same. Otherwise the whole text is tokenised.
    /// Only ASCII space, tab and newlines count: BERT's normaliser deletes whitespace that is
    /// also a control character (U+000B, U+000C, U+0085), joining the words around it.
    pub fn tokenize(&self, text: &str) -> Result<Encoding, EmbedError> {
        let limit = self.info.max_seq_length.saturating_mul(Self::PREFIX_BYTES_PER_TOKEN);
        if text.len() > limit {
            if let Some(cut) = text[..text.floor_char_boundary(limit)].rfind([' ', '\t', '\n', '\r']) {
                let prefix = self.tokenize_whole(&text[..cut])?;
                if prefix.len() >= self.info.max_seq_length {
                    return Ok(prefix);
                }
            }
        }
        self.tokenize_whole(text)
    }

    /// A generous bound on the bytes of text per token (English averages about 4; a CJK
    /// character is 3 bytes and one token).
    pub const PREFIX_BYTES_PER_TOKEN: usize = 16;

    /// Tokenises all of `text`, then truncates: what [`Self::tokenize`] must equal.
    pub fn tokenize_whole(&self, text: &str) -> Result<Encoding, EmbedError> {
        self.tokenizer.encode(text, true).map_err(|e| EmbedError::Tokenize(e.to_string()))
    }

    /// Unit-length sentence vectors, one per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let encodings: Vec<Encoding> = texts.iter().map(|t| self.tokenize(t)).collect::<Result<_, _>>()?;
        self.embed_tokenized(&encodings.iter().collect::<Vec<_>>())
    }

    /// Vectors for already tokenised texts, in order.
    ///
    /// On the CPU the batch is sorted by length and cut into one shard per thread of the
    /// current rayon pool, and the shards run at once. candle parallelises little beyond the
    /// matrix products, so one padded batch leaves most cores idle between them; shards of
    /// similar lengths keep every core busy and pad less. The weights are shared, not copied.
    pub fn embed_tokenized(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if encodings.is_empty() {
            return Ok(Vec::new());
        }
        let threads = if self.device.is_cpu() { rayon::current_num_threads() } else { 1 };
        let mut order: Vec<usize> = (0..encodings.len()).collect();
        order.sort_by_key(|&i| encodings[i].len());
        let lengths: Vec<usize> = order.iter().map(|&i| encodings[i].len()).collect();
        let shards = shard_ranges(&lengths, threads);
        let sorted: Vec<&Encoding> = order.iter().map(|&i| encodings[i]).collect();
        let results: Vec<Result<Vec<Vec<f32>>, EmbedError>> =
            shards.into_par_iter().map(|range| self.forward(&sorted[range])).collect();
        let mut out = vec![Vec::new(); encodings.len()];
        let mut slot = order.into_iter();
        for shard in results {
            for (v, i) in shard?.into_iter().zip(&mut slot) {
                out[i] = v;
            }
        }
        Ok(out)
    }

    /// One padded forward pass over texts of similar length.
    fn forward(&self, encodings: &[&Encoding]) -> Result<Vec<Vec<f32>>, EmbedError> {
        let (n, len) = (encodings.len(), encodings.iter().map(|e| e.len()).max().unwrap_or(0));
        let mut ids = vec![self.pad_id; n * len];
        let mut types = vec![0u32; n * len];
        let mut mask = vec![0u32; n * len];
        for (row, enc) in encodings.iter().enumerate() {
            let at = row * len;
            ids[at..at + enc.len()].copy_from_slice(enc.get_ids());
            types[at..at + enc.len()].copy_from_slice(enc.get_type_ids());
            mask[at..at + enc.len()].copy_from_slice(enc.get_attention_mask());
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
            let types = Tensor::from_vec(types, (n, len), &self.device)?;
            let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
            let hidden = self.model.forward(&ids, &types, &mask)?;
            mean_pool_normalize(&hidden, &mask)?.to_vec2::<f32>()
        };
        run().map_err(|e| EmbedError::Model(e.to_string()))
    }
}

/// Cuts `lengths` (sorted ascending) into at most `parts` contiguous, non-empty ranges of about
/// equal token count.
fn shard_ranges(lengths: &[usize], parts: usize) -> Vec<std::ops::Range<usize>> {
    let parts = parts.clamp(1, lengths.len().max(1));
    let total: usize = lengths.iter().map(|&l| l.max(1)).sum();
    let mut ranges = Vec::with_capacity(parts);
    let (mut start, mut acc) = (0, 0);
    for (i, &l) in lengths.iter().enumerate() {
        acc += l.max(1);
        let remaining_items = lengths.len() - i - 1;
        let remaining_parts = parts - ranges.len() - 1;
        // Close the shard once it has its share, or when every later item must open a shard.
        let share = total * (ranges.len() + 1) / parts;
        if remaining_parts > 0 && (acc >= share || remaining_items == remaining_parts) {
            ranges.push(start..i + 1);
            start = i + 1;
        }
    }
    if start < lengths.len() {
        ranges.push(start..lengths.len());
    }
    ranges
}

/// Masked mean over the token axis, then L2 normalisation (sentence-transformers' Pooling with
/// `pooling_mode_mean_tokens` followed by Normalize).
pub fn mean_pool_normalize(hidden: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
    let mask = mask.to_dtype(hidden.dtype())?.unsqueeze(2)?;
    let summed = hidden.broadcast_mul(&mask)?.sum(1)?;
    let counts = mask.sum(1)?.clamp(1e-9, f64::MAX)?;
    let mean = summed.broadcast_div(&counts)?;
    let norm = mean.sqr()?.sum_keepdim(1)?.sqrt()?.clamp(1e-12, f64::MAX)?;
    mean.broadcast_div(&norm)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pooling_ignores_padding_and_normalises() {
        // Two sequences of 3 tokens, 2-d hidden states; the second has one padding token whose
        // huge values must not leak into its mean.
        let hidden =
            Tensor::new(&[[[1f32, 0.], [3., 0.], [2., 0.]], [[0., 1.], [0., 3.], [100., 100.]]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1], [1, 1, 0]], &Device::Cpu).unwrap();
        let out = mean_pool_normalize(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert_eq!(out[0], vec![1.0, 0.0]);
        assert_eq!(out[1], vec![0.0, 1.0]);
    }

    #[test]
    fn pooling_is_a_mean_before_normalising() {
        let hidden = Tensor::new(&[[[3f32, 0.], [0., 4.]]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1]], &Device::Cpu).unwrap();
        let out = mean_pool_normalize(&hidden, &mask).unwrap().to_vec2::<f32>().unwrap();
        assert!((out[0][0] - 0.6).abs() < 1e-6 && (out[0][1] - 0.8).abs() < 1e-6);
    }

    #[test]
    fn shards_cover_the_batch_in_order_with_similar_token_counts() {
        assert_eq!(shard_ranges(&[], 2), Vec::<std::ops::Range<usize>>::new());
        assert_eq!(shard_ranges(&[7], 4), vec![0..1]);
        assert_eq!(shard_ranges(&[5, 5, 5, 5], 2), vec![0..2, 2..4]);
        assert_eq!(shard_ranges(&[5, 5, 5, 5], 1), vec![0..4]);
        // One long text weighs as much as the short ones together.
        assert_eq!(shard_ranges(&[3, 3, 3, 3, 12], 2), vec![0..4, 4..5]);
        // More parts than texts: one text each, none empty.
        assert_eq!(shard_ranges(&[1, 2, 3], 8), vec![0..1, 1..2, 2..3]);
        for parts in 1..6 {
            let lengths: Vec<usize> = (0..23).map(|i| 4 + i * 3).collect();
            let ranges = shard_ranges(&lengths, parts);
            assert_eq!(ranges.len(), parts);
            assert!(ranges.iter().all(|r| !r.is_empty()));
            assert_eq!(ranges.first().unwrap().start, 0);
            assert_eq!(ranges.last().unwrap().end, lengths.len());
            assert!(ranges.windows(2).all(|w| w[0].end == w[1].start));
        }
    }

    #[test]
    fn fingerprints_compare_weights_not_folder_names() {
        let info = ModelInfo { name: "a".into(), dim: 384, fingerprint: "a/384/00ff".into(), max_seq_length: 256 };
        assert!(info.matches("renamed/384/00ff"));
        assert!(!info.matches("a/384/00fe"));
        assert!(!info.matches("a/768/00ff"));
        assert!(!info.matches("garbage"));
    }

    #[test]
    fn a_missing_model_names_the_fetch_script() {
        let dir = tempfile::tempdir().unwrap();
        let err = check_model_dir(dir.path()).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("models/fetch.sh") && msg.contains("model.safetensors"), "{msg}");
    }
}
