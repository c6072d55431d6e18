//! Sentence embeddings. The model is owned by one dedicated OS thread fed by a bounded
//! channel; callers await a oneshot reply. The thread tokenises whatever requests are waiting,
//! takes the oldest that fit the batch limits and runs them as one batch, sharded across the
//! model's thread pool, so concurrent lookups share forward passes. The bound on the channel is
//! the admission control: a full queue is refused at once, never waited on.

mod bert;
mod model;

pub use model::{check_model_dir, device, mean_pool_normalize, ModelInfo, SentenceModel, REQUIRED_FILES};

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use tokenizers::Encoding;
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

/// Where the sentence model runs. (The CLI's spelling of it lives in `config`, so this layer
/// knows nothing of flags.)
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeviceKind {
    #[default]
    Cpu,
    /// An NVIDIA GPU; needs a build with `--features cuda`.
    Cuda,
}

/// What the cache needs of a sentence model: the seam that lets the policy be tested with a
/// stand-in, as TEI's `Backend` trait does. [`Embedder`] (the batching model thread) is the
/// real one.
#[async_trait::async_trait]
pub trait Embed: Send + Sync {
    /// The model's identity: its fingerprint decides which stored vectors are comparable.
    fn info(&self) -> &ModelInfo;
    /// Whether `embed` can answer (the model has loaded and warmed up).
    fn is_ready(&self) -> bool;
    /// Texts waiting for the model right now.
    fn queue_depth(&self) -> usize;
    /// The unit-length embedding of one text.
    async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError>;
}

/// Told the size of every batch the model thread runs (for a metric), on that thread.
pub type BatchObserver = Box<dyn Fn(usize) + Send>;

/// The variable that sizes candle's pool for element-wise ops.
pub const CANDLE_THREADS_VAR: &str = "CANDLE_NUM_THREADS";

/// Turns off candle's own element-wise thread pool unless the user sized it, because the
/// model's shards already keep every core busy: that pool's workers spin-wait between ops, and
/// two shards sharing it serialise on its lock. Measured on 2 cores, batch of 32: 216
/// sentences/s with it, 336/s without. candle reads the variable once, at its first large op.
///
/// Call it at the very start of `main`, before any other thread exists: changing the
/// environment while another thread reads it is undefined behaviour in C.
pub fn configure_cpu_threads() {
    if std::env::var_os(CANDLE_THREADS_VAR).is_none() {
        std::env::set_var(CANDLE_THREADS_VAR, "1");
    }
}

/// How the model thread batches and admits work.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Requests allowed to wait for the model; beyond it they are refused at once.
    pub max_queue: usize,
    /// Most texts in one batch.
    pub max_batch: usize,
    /// Most padded tokens (texts x longest text) in one batch, so a few long texts do not
    /// stall everything behind one huge pass. A single text over it still runs, alone.
    pub max_batch_tokens: usize,
    /// Threads the model runs on (0 = one per core).
    pub threads: usize,
    /// Forward passes before the model reports ready (the first ones allocate).
    pub warmup_rounds: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self { max_queue: 1024, max_batch: 32, max_batch_tokens: 2048, threads: 0, warmup_rounds: 1 }
    }
}

struct Job {
    text: String,
    reply: oneshot::Sender<Result<Vec<f32>, EmbedError>>,
}

/// A request tokenised and waiting for its batch.
struct Tokenised {
    encoding: Encoding,
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
    /// loaded and answered its warm-up requests (or failed to); until then `embed` answers
    /// [`EmbedError::NotReady`]. `on_batch` hears the size of every batch.
    pub fn spawn(
        dir: &Path,
        info: ModelInfo,
        device: DeviceKind,
        config: BatchConfig,
        on_batch: BatchObserver,
    ) -> (Self, oneshot::Receiver<Result<(), EmbedError>>) {
        let capacity = config.max_queue.max(1);
        let (tx, rx) = mpsc::channel(capacity);
        let (ready_tx, ready_rx) = oneshot::channel();
        let ready = Arc::new(AtomicBool::new(false));
        let handle = Self { tx, ready: ready.clone(), info: Arc::new(info.clone()), capacity };
        let dir = dir.to_owned();
        std::thread::Builder::new()
            .name("semcache-model".into())
            .spawn(move || {
                let started = model_pool(config.threads).and_then(|pool| {
                    let model = model::device(device).and_then(|dev| SentenceModel::load(&dir, info, dev))?;
                    // Enough texts that every thread of the pool gets a shard to warm up.
                    let warm = vec!["warm up the model before serving"; pool.current_num_threads()];
                    for _ in 0..config.warmup_rounds.max(1) {
                        pool.install(|| model.embed(&warm))?;
                    }
                    Ok((pool, model))
                });
                let (pool, model) = match started {
                    Ok(started) => started,
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                tracing::info!(threads = pool.current_num_threads(), "model ready");
                if pool.current_num_threads() > 1 && std::env::var(CANDLE_THREADS_VAR).as_deref() != Ok("1") {
                    tracing::warn!("{CANDLE_THREADS_VAR} is not 1: candle's element-wise pool will compete with the model's shards");
                }
                ready.store(true, Ordering::Release);
                let _ = ready_tx.send(Ok(()));
                Batcher { model: &model, pool: &pool, config, pending: VecDeque::new(), on_batch }.run(rx);
            })
            .expect("spawn the model thread");
        (handle, ready_rx)
    }
}

#[async_trait::async_trait]
impl Embed for Embedder {
    fn info(&self) -> &ModelInfo {
        &self.info
    }

    fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    fn queue_depth(&self) -> usize {
        self.capacity - self.tx.capacity()
    }

    /// Batched with whatever else is waiting.
    async fn embed(&self, text: &str) -> Result<Vec<f32>, EmbedError> {
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

/// The model's own pool, apart from rayon's global one, so that an index rebuild's parallel
/// inserts never queue ahead of a batch.
fn model_pool(threads: usize) -> Result<rayon::ThreadPool, EmbedError> {
    let threads = match threads {
        0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
        n => n,
    };
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("semcache-model-{i}"))
        .build()
        .map_err(|e| EmbedError::Device(format!("cannot start {threads} model threads: {e}")))
}

/// Longest wait for the rest of a batch; see [`Batcher::fill`].
const LINGER: std::time::Duration = std::time::Duration::from_millis(2);

struct Batcher<'a> {
    model: &'a SentenceModel,
    pool: &'a rayon::ThreadPool,
    config: BatchConfig,
    /// Tokenised requests not yet in a batch; never more than `max_batch`, so the channel's
    /// bound stays the bound on waiting work.
    pending: VecDeque<Tokenised>,
    on_batch: BatchObserver,
}

impl Batcher<'_> {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        // Texts in the batch before; its callers are likely to send their next request at once.
        let mut last_batch = 0;
        loop {
            if self.pending.is_empty() {
                match rx.blocking_recv() {
                    Some(job) => self.admit(job),
                    None => return,
                }
            }
            self.fill(&mut rx, last_batch);
            // A caller that went away (cancelled RPC) costs no model time.
            self.pending.retain(|t| !t.reply.is_closed());
            let batch = self.next_batch();
            last_batch = batch.len();
            if !batch.is_empty() {
                self.run_batch(batch);
            }
        }
    }

    /// Takes what is waiting, up to `max_batch`. When the batch before was larger than what
    /// has arrived so far, its callers are most likely sending their next requests right now:
    /// waiting up to [`LINGER`] for them makes one full batch instead of a batch of one
    /// followed by the rest (32 clients on 2 cores: batches of 1 were 9% of model time). After
    /// a batch of one (a lone client) nothing waits, so a single caller never pays for it.
    fn fill(&mut self, rx: &mut mpsc::Receiver<Job>, last_batch: usize) {
        let max = self.config.max_batch.max(1);
        let want = last_batch.min(max);
        let deadline = std::time::Instant::now() + LINGER;
        loop {
            while self.pending.len() < max {
                match rx.try_recv() {
                    Ok(job) => self.admit(job),
                    Err(_) => break,
                }
            }
            if self.pending.len() >= want || std::time::Instant::now() >= deadline {
                return;
            }
            std::thread::sleep(LINGER / 20);
        }
    }

    /// Tokenises on this thread: it costs about 1% of the forward pass (measured), well below
    /// what a hand-off to another thread would save.
    fn admit(&mut self, job: Job) {
        if job.reply.is_closed() {
            return;
        }
        match self.model.tokenize(&job.text) {
            Ok(encoding) => self.pending.push_back(Tokenised { encoding, reply: job.reply }),
            Err(e) => {
                let _ = job.reply.send(Err(e));
            }
        }
    }

    /// The oldest requests that fit the batch limits (at least one).
    fn next_batch(&mut self) -> Vec<Tokenised> {
        let lengths = self.pending.iter().map(|t| t.encoding.len());
        let take = batch_len(lengths, self.config.max_batch, self.config.max_batch_tokens);
        self.pending.drain(..take).collect()
    }

    fn run_batch(&self, batch: Vec<Tokenised>) {
        let encodings: Vec<&Encoding> = batch.iter().map(|t| &t.encoding).collect();
        let started = std::time::Instant::now();
        // A panic inside the model must fail this batch, not kill the thread that every later
        // request depends on (the server would stay SERVING with no model behind it).
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            self.pool.install(|| self.model.embed_tokenized(&encodings))
        }))
        .unwrap_or_else(|_| Err(EmbedError::Model("the model panicked on this batch".into())));
        (self.on_batch)(batch.len());
        tracing::debug!(
            texts = batch.len(),
            tokens = encodings.iter().map(|e| e.len()).sum::<usize>(),
            waiting = self.pending.len(),
            ms = started.elapsed().as_secs_f64() * 1e3,
            "batch embedded"
        );
        match result {
            Ok(vectors) => {
                for (t, v) in batch.into_iter().zip(vectors) {
                    let _ = t.reply.send(Ok(v));
                }
            }
            Err(e) => {
                tracing::error!(error = %e, batch = batch.len(), "embedding batch failed");
                for t in batch {
                    let _ = t.reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// How many of the waiting texts (by token count, oldest first) make the next batch: at most
/// `max_batch`, and no more than `max_tokens` once padded to the longest, but always one.
fn batch_len(lengths: impl Iterator<Item = usize>, max_batch: usize, max_tokens: usize) -> usize {
    let (mut take, mut longest) = (0usize, 0usize);
    for len in lengths {
        let padded_longest = longest.max(len);
        if take == max_batch.max(1) || (take > 0 && (take + 1) * padded_longest > max_tokens) {
            break;
        }
        take += 1;
        longest = padded_longest;
    }
    take
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batches_stop_at_the_count_or_the_padded_token_budget() {
        assert_eq!(batch_len([].into_iter(), 32, 2048), 0);
        assert_eq!(batch_len([20; 100].into_iter(), 32, 2048), 32);
        assert_eq!(batch_len([20; 100].into_iter(), 32, 200), 10);
        // One long text raises every row's padded length.
        assert_eq!(batch_len([10, 10, 10, 100, 10].into_iter(), 32, 300), 3);
        // A text longer than the budget still runs, alone.
        assert_eq!(batch_len([5000, 10].into_iter(), 32, 2048), 1);
        assert_eq!(batch_len([20; 4].into_iter(), 0, 2048), 1);
    }
}
