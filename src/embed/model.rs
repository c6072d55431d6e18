//! A BERT-family sentence-transformers model on candle: tokenizer, encoder, masked mean
//! pooling and L2 normalisation, as sentence-transformers computes them.

use super::EmbedError;
use crate::config::DeviceKind;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config};
use sha2::{Digest, Sha256};
use std::io::Read;
use std::path::{Path, PathBuf};
use tokenizers::{PaddingParams, PaddingStrategy, Tokenizer, TruncationParams};

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
    model: BertModel,
    tokenizer: Tokenizer,
    device: Device,
    info: ModelInfo,
}

impl SentenceModel {
    pub fn load(dir: &Path, info: ModelInfo, device: Device) -> Result<Self, EmbedError> {
        let load_err = |reason: String| EmbedError::Load { dir: dir.to_owned(), reason };
        let config = read_config(dir)?;
        let mut tokenizer =
            Tokenizer::from_file(dir.join("tokenizer.json")).map_err(|e| load_err(format!("tokenizer.json: {e}")))?;
        // The shipped tokenizer pads every input to 128 tokens; pad to the longest in the batch
        // instead, and truncate where sentence-transformers does.
        let padding = PaddingParams {
            strategy: PaddingStrategy::BatchLongest,
            ..tokenizer.get_padding().cloned().unwrap_or_default()
        };
        tokenizer.with_padding(Some(padding));
        tokenizer
            .with_truncation(Some(TruncationParams { max_length: info.max_seq_length, ..Default::default() }))
            .map_err(|e| load_err(format!("truncation: {e}")))?;
        let weights: PathBuf = dir.join("model.safetensors");
        // SAFETY: the weights file is memory-mapped read-only; semcache never writes it, and a
        // concurrent writer replacing it in place is outside what any model loader can guard.
        let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &device) }
            .map_err(|e| load_err(format!("model.safetensors: {e}")))?;
        let model = BertModel::load(vb, &config).map_err(|e| load_err(format!("BERT weights: {e}")))?;
        Ok(Self { model, tokenizer, device, info })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// Token ids as the model sees them (truncated, no padding), for parity checks.
    pub fn token_ids(&self, text: &str) -> Result<Vec<u32>, EmbedError> {
        let enc = self.tokenizer.encode(text, true).map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    }

    /// Unit-length sentence vectors, one per text, in order.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>, EmbedError> {
        if texts.is_empty() {
            return Ok(Vec::new());
        }
        let encodings =
            self.tokenizer.encode_batch(texts.to_vec(), true).map_err(|e| EmbedError::Tokenize(e.to_string()))?;
        let (n, len) = (encodings.len(), encodings[0].len());
        let mut ids = Vec::with_capacity(n * len);
        let mut types = Vec::with_capacity(n * len);
        let mut mask = Vec::with_capacity(n * len);
        for enc in &encodings {
            ids.extend_from_slice(enc.get_ids());
            types.extend_from_slice(enc.get_type_ids());
            mask.extend_from_slice(enc.get_attention_mask());
        }
        let run = || -> candle_core::Result<Vec<Vec<f32>>> {
            let ids = Tensor::from_vec(ids, (n, len), &self.device)?;
            let types = Tensor::from_vec(types, (n, len), &self.device)?;
            let mask = Tensor::from_vec(mask, (n, len), &self.device)?;
            let hidden = self.model.forward(&ids, &types, Some(&mask))?;
            mean_pool_normalize(&hidden, &mask)?.to_vec2::<f32>()
        };
        run().map_err(|e| EmbedError::Model(e.to_string()))
    }
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
