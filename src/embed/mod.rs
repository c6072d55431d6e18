//! Sentence embeddings. The model is owned by one dedicated OS thread fed by a bounded
//! channel; callers await a oneshot reply. The thread drains whatever requests are waiting
//! and runs them as one batch, so concurrent lookups share forward passes. The bound on the
//! channel is the admission control: a full queue is refused at once, never waited on.

mod model;

pub use model::{check_model_dir, device, mean_pool_normalize, ModelInfo, SentenceModel, REQUIRED_FILES};

use crate::config::DeviceKind;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, oneshot};

#[derive(Debug, Clone, thiserror::Error)]
pub enum EmbedError {
    #[error(
        "no model in {dir} (missing {missing}); fetch the default model with `models/fetch.sh`, \
         or point --model-dir at a sentence-transformers folder"
    )]
    MissingModel { dir: PathBuf, missing: String },
    #[error("cannot load the model in {dir}: {reason}")]
    Load { dir: PathBuf, reason: String },
    #[error("{0}")]
    Device(String),
    #[error("tokenizer failed: {0}")]
    Tokenize(String),
    #[error("model failed: {0}")]
    Model(String),
    #[error("the embedding queue is full ({capacity} requests waiting); retry with backoff, or raise --max-queue")]
    QueueFull { capacity: usize },
    #[error("the model is still loading; retry shortly (the health service says SERVING once it is ready)")]
    NotReady,
    #[error("the model thread has stopped")]
    Stopped,
}

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

/// A cheap, cloneable handle to the model thread.
#[derive(Clone)]
pub struct Embedder {
    tx: mpsc::Sender<Job>,
    ready: Arc<AtomicBool>,
    info: Arc<ModelInfo>,
    capacity: usize,
}

impl Embedder {
    /// Starts the model thread and returns at once. The receiver resolves when the model has
    /// loaded and answered a warm-up request (or failed to); until then `embed` answers
    /// [`EmbedError::NotReady`].
    pub fn spawn(
        dir: &Path,
        info: ModelInfo,
        device: DeviceKind,
        max_queue: usize,
        max_batch: usize,
        warmup_rounds: usize,
    ) -> (Self, oneshot::Receiver<Result<(), EmbedError>>) {
        let capacity = max_queue.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let (ready_tx, ready_rx) = oneshot::channel();
        let ready = Arc::new(AtomicBool::new(false));
        let handle = Self { tx, ready: ready.clone(), info: Arc::new(info.clone()), capacity };
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("semcache-model".into())
            .spawn(move || {
                let loaded = model::device(device).and_then(|dev| SentenceModel::load(&dir, info, dev));
                let warm = |m: SentenceModel| {
                    for _ in 0..warmup_rounds.max(1) {
                        m.embed(&["warm up the model before serving"])?;
                    }
                    Ok(m)
                };
                let model = match loaded.and_then(warm) {
                    Ok(m) => m,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                ready.store(true, Ordering::Release);
                let _ = ready_tx.send(Ok(()));
                serve_batches(&model, rx, max_batch.max(1));
            })
            .expect("spawn the model thread");
        (handle, ready_rx)
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// Requests waiting for the model right now.
    pub fn queue_depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Embeds one text, batched with whatever else is waiting.
    pub async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
        if !self.is_ready() {
            return Err(EmbedError::NotReady);
        }
        let (reply, rx) = oneshot::channel();
        self.tx.try_send(Job { text: text.to_owned(), reply }).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => EmbedError::QueueFull { capacity: self.capacity },
            mpsc::error::TrySendError::Closed(_) => EmbedError::Stopped,
        })?;
        rx.await.map_err(|_| EmbedError::Stopped)?
    }
}

fn serve_batches(model: &SentenceModel, mut rx: mpsc::Receiver<Job>, max_batch: usize) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < max_batch {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        // A caller that went away (cancelled RPC) costs no model time.
        jobs.retain(|j| !j.reply.is_closed());
        if jobs.is_empty() {
            continue;
        }
        let texts: Vec<&str> = jobs.iter().map(|j| j.text.as_str()).collect();
        // A panic inside the model must fail this batch, not kill the thread that every later
        // request depends on (the server would stay SERVING with no model behind it).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| model.embed(&texts)))
            .unwrap_or_else(|_| Err(EmbedError::Model("the model panicked on this batch".into())));
        match result {
            Ok(vectors) => {
                for (job, v) in jobs.into_iter().zip(vectors) {
                    let _ = job.reply.send(Ok(v));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = texts.len(), "embedding batch failed");
                for job in jobs {
                    let _ = job.reply.send(Err(e.clone()));
                }
            }
        }
    }
}
