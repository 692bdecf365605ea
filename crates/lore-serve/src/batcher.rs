//! The batching embed queue: the texts of concurrent requests embedded in shared forward passes.
//!
//! As text-embeddings-inference does, each request's texts are tokenized on arrival (so input
//! errors are answered at once and every queued text has a known token count) and queued in a
//! bounded queue ([`BatchError::Full`] when it would overflow: the server answers 429/503). One
//! dispatcher thread (not tokio's, so the runtime keeps answering while the model computes) takes
//! the queue in rounds: the oldest queued texts, up to [`ROUND_BATCHES_PER_WORKER`] batches per
//! worker, sorted by token count and cut into batches of at most
//! [`BatcherOptions::max_batch_texts`] texts and [`BatcherOptions::max_batch_tokens`] padded
//! tokens, which the batcher's own rayon pool of [`BatcherOptions::workers`] threads embeds side
//! by side, costliest first, each in one call of [`Embedder::embed_tokens`]. This is the offline
//! path of `lore embed` ([`lore_embed::embed_pairs`]) applied to what is queued: sorting keeps
//! padding small, work stealing keeps every core busy, and taking the oldest texts first keeps
//! the queue first-in first-out overall, so no request starves. Each request is answered through
//! a oneshot channel once all its texts are done.
//!
//! The defaults reuse `lore embed`'s choices ([`lore_embed::EmbedOptions`]): batches of 8 texts
//! and one batch per core at a time (`parallel_batches`), which is fastest on the CPU when
//! candle's element-wise operations run on the calling thread: call
//! [`lore_embed::prefer_batch_parallelism`] before loading the model, as `lore embed` does.
//!
//! A batch that fails is retried one text at a time, so a text that breaks the model fails only
//! its own request; a panic in the model is caught and answered as [`BatchError::Failed`], and the
//! batcher goes on.

use std::collections::VecDeque;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::thread;
use std::time::Instant;

use lore_embed::{EmbedOptions, Embedder};
use tokio::sync::oneshot;

/// How the queue batches and how much it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatcherOptions {
    /// Most padded tokens in one batch (texts × the longest text's tokens), bounding the memory
    /// and time of one forward pass; a single longer text is still embedded, alone.
    pub max_batch_tokens: usize,
    /// Most texts in one batch (default: `lore embed`'s batch size, 8).
    pub max_batch_texts: usize,
    /// Most texts waiting in the queue; a request that would overflow it gets
    /// [`BatchError::Full`].
    pub max_queued_texts: usize,
    /// Threads of the batcher's pool, each embedding one batch at a time (default: one per
    /// core).
    pub workers: usize,
}

/// A round takes at most this many full batches per worker from the queue: enough texts to
/// sort into batches that pad little and for work stealing to even out their costs, few
/// enough that requests are answered as their round ends rather than after the whole queue
/// (4 and 16 measured the same within the benchmark's noise on 2 cores: 84-93% of offline
/// at 16 and 64 clients; BENCHMARKS.md).
pub const ROUND_BATCHES_PER_WORKER: usize = 16;

impl Default for BatcherOptions {
    fn default() -> Self {
        Self {
            max_batch_tokens: 16_384,
            max_batch_texts: EmbedOptions::default().batch_size,
            max_queued_texts: 4096,
            workers: thread::available_parallelism().map_or(1, |n| n.get()),
        }
    }
}

/// Why texts were not embedded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// The queue cannot take the request's texts now; retry later (HTTP 429/503).
    #[error("the embedding queue is full; retry later")]
    Full,
    /// The request's texts are not usable (a text the tokenizer refuses or that has no tokens,
    /// more texts than the queue holds); the message names the text's index (HTTP 4xx).
    #[error("{0}")]
    Input(String),
    /// The model failed on a text, returned a non-finite feature, or the workers stopped
    /// (HTTP 500).
    #[error("embedding failed: {0}")]
    Failed(String),
}

/// One batch the workers embedded, as reported to an observer (see [`Batcher::on_batch`]).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchDone {
    /// Texts in the batch.
    pub texts: usize,
    /// Tokens of the texts.
    pub tokens: usize,
    /// Tokens after padding to the longest text (what the forward pass computed).
    pub padded_tokens: usize,
    /// Seconds the forward pass took.
    pub seconds: f64,
    /// Whether the batch failed as a whole (its texts were then retried one at a time).
    pub failed: bool,
}

/// Totals since the batcher started (see [`Batcher::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BatcherStats {
    /// Forward passes run (single-text retries included).
    pub batches: u64,
    /// Texts embedded.
    pub texts: u64,
    /// Tokens of the embedded texts.
    pub tokens: u64,
    /// Tokens computed after padding.
    pub padded_tokens: u64,
    /// Seconds spent in forward passes, summed over the workers.
    pub busy_seconds: f64,
    /// Texts waiting in the queue now.
    pub queued_texts: usize,
}

/// A handle to the batching queue and its threads; clones share them. The threads stop when the
/// last handle is dropped (no request can be waiting then).
#[derive(Clone)]
pub struct Batcher {
    handle: Arc<Handle>,
}

impl std::fmt::Debug for Batcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Batcher")
            .field("options", &self.handle.shared.options)
            .field("queued_texts", &self.queued_texts())
            .finish()
    }
}

/// Owned by the handles only: dropping the last one stops the dispatcher and the pool.
struct Handle {
    shared: Arc<Shared>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        lock(&self.shared.state).closed = true;
        self.shared.ready.notify_all();
    }
}

/// A callback told of every forward pass.
type Observer = Box<dyn Fn(&BatchDone) + Send + Sync>;

type Reply = oneshot::Sender<Result<Vec<Vec<f32>>, BatchError>>;

/// What the handles and the dispatcher share.
struct Shared {
    embedder: Arc<dyn Embedder>,
    options: BatcherOptions,
    /// The threads that run a round's batches.
    pool: rayon::ThreadPool,
    state: Mutex<State>,
    ready: Condvar,
    batches: AtomicU64,
    texts: AtomicU64,
    tokens: AtomicU64,
    padded_tokens: AtomicU64,
    busy_nanos: AtomicU64,
    /// `sizes[n]`: batches of n texts.
    sizes: Vec<AtomicU64>,
    observer: OnceLock<Observer>,
}

/// The queue, oldest text first.
struct State {
    queue: VecDeque<Entry>,
    closed: bool,
}

/// One queued text.
struct Entry {
    job: Arc<Job>,
    /// The text's index in its request.
    index: usize,
    ids: Vec<u32>,
}

/// One request: its vectors as they arrive, and where to send them.
struct Job {
    state: Mutex<JobState>,
}

struct JobState {
    vectors: Vec<Vec<f32>>,
    remaining: usize,
    /// None once answered (done or failed).
    reply: Option<Reply>,
}

impl Job {
    /// Whether the request still waits for this job (not answered, not cancelled).
    fn waiting(&self) -> bool {
        lock(&self.state)
            .reply
            .as_ref()
            .is_some_and(|r| !r.is_closed())
    }

    fn deliver(&self, index: usize, vector: Vec<f32>) {
        let mut state = lock(&self.state);
        if state.reply.is_none() {
            return;
        }
        state.vectors[index] = vector;
        state.remaining -= 1;
        if state.remaining == 0 {
            let vectors = std::mem::take(&mut state.vectors);
            if let Some(reply) = state.reply.take() {
                // The request may have gone away; nobody to tell then.
                let _ = reply.send(Ok(vectors));
            }
        }
    }

    fn fail(&self, error: BatchError) {
        let mut state = lock(&self.state);
        state.vectors = Vec::new();
        if let Some(reply) = state.reply.take() {
            let _ = reply.send(Err(error));
        }
    }
}

/// Locks a mutex, going on after a panic elsewhere (the data stays consistent: every update
/// under these locks is a single step).
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Batcher {
    /// Starts the dispatcher thread and a pool of `options.workers` threads embedding with
    /// `embedder`. Options of 0 are taken as 1.
    pub fn start(embedder: Arc<dyn Embedder>, options: BatcherOptions) -> Batcher {
        let options = BatcherOptions {
            max_batch_tokens: options.max_batch_tokens.max(1),
            max_batch_texts: options.max_batch_texts.max(1),
            max_queued_texts: options.max_queued_texts.max(1),
            workers: options.workers.max(1),
        };
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(options.workers)
            .thread_name(|i| format!("lore-embed-{i}"))
            .build()
            .expect("cannot start the embedding threads");
        let shared = Arc::new(Shared {
            embedder,
            pool,
            sizes: (0..=options.max_batch_texts)
                .map(|_| AtomicU64::new(0))
                .collect(),
            options,
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            ready: Condvar::new(),
            batches: AtomicU64::new(0),
            texts: AtomicU64::new(0),
            tokens: AtomicU64::new(0),
            padded_tokens: AtomicU64::new(0),
            busy_nanos: AtomicU64::new(0),
            observer: OnceLock::new(),
        });
        let dispatcher = Arc::clone(&shared);
        thread::Builder::new()
            .name("lore-embed-queue".into())
            .spawn(move || dispatcher.work())
            .expect("cannot start the embedding queue's thread");
        Batcher {
            handle: Arc::new(Handle { shared }),
        }
    }

    /// Embeds already-rendered texts, batched with other requests' texts; one vector per text,
    /// in order. [`BatchError::Full`] when the queue cannot take them now,
    /// [`BatchError::Input`] for a text the tokenizer refuses or that has no tokens.
    ///
    /// Tokenization runs on tokio's blocking pool when called inside a tokio runtime.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, BatchError> {
        let shared = &self.handle.shared;
        let n = texts.len();
        if n == 0 {
            return Ok(Vec::new());
        }
        if n > shared.options.max_queued_texts {
            return Err(BatchError::Input(format!(
                "{n} texts in one request; the embedding queue holds at most {}",
                shared.options.max_queued_texts
            )));
        }
        // Shed load before tokenizing.
        if lock(&shared.state).queue.len() + n > shared.options.max_queued_texts {
            return Err(BatchError::Full);
        }
        let embedder = Arc::clone(&shared.embedder);
        let tokens = match tokio::runtime::Handle::try_current() {
            Ok(runtime) => runtime
                .spawn_blocking(move || tokenize(embedder.as_ref(), &texts))
                .await
                .map_err(|e| BatchError::Failed(format!("tokenizing: {e}")))??,
            Err(_) => tokenize(embedder.as_ref(), &texts)?,
        };
        let (reply, answer) = oneshot::channel();
        let job = Arc::new(Job {
            state: Mutex::new(JobState {
                vectors: vec![Vec::new(); n],
                remaining: n,
                reply: Some(reply),
            }),
        });
        {
            let mut state = lock(&shared.state);
            if state.queue.len() + n > shared.options.max_queued_texts {
                return Err(BatchError::Full);
            }
            state
                .queue
                .extend(tokens.into_iter().enumerate().map(|(index, ids)| Entry {
                    job: Arc::clone(&job),
                    index,
                    ids,
                }));
        }
        shared.ready.notify_one();
        answer
            .await
            .map_err(|_| BatchError::Failed("the embedding queue stopped".into()))?
    }

    /// Texts waiting in the queue now (not those being embedded).
    pub fn queued_texts(&self) -> usize {
        lock(&self.handle.shared.state).queue.len()
    }

    /// Batches run so far by size: element n counts the batches of n texts (length
    /// `max_batch_texts + 1`), for a batch-size histogram.
    pub fn batch_sizes(&self) -> Vec<u64> {
        self.handle
            .shared
            .sizes
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }

    /// Totals since start: batches, texts, tokens, padded tokens, busy time, queued texts.
    pub fn stats(&self) -> BatcherStats {
        let shared = &self.handle.shared;
        BatcherStats {
            batches: shared.batches.load(Ordering::Relaxed),
            texts: shared.texts.load(Ordering::Relaxed),
            tokens: shared.tokens.load(Ordering::Relaxed),
            padded_tokens: shared.padded_tokens.load(Ordering::Relaxed),
            busy_seconds: shared.busy_nanos.load(Ordering::Relaxed) as f64 * 1e-9,
            queued_texts: self.queued_texts(),
        }
    }

    /// Calls `observer` after every forward pass (from a worker thread; keep it short), e.g. to
    /// feed a metrics histogram. Only one observer can be set; false when one already was.
    pub fn on_batch(&self, observer: impl Fn(&BatchDone) + Send + Sync + 'static) -> bool {
        self.handle.shared.observer.set(Box::new(observer)).is_ok()
    }

    /// The options in force (zeros raised to 1).
    pub fn options(&self) -> &BatcherOptions {
        &self.handle.shared.options
    }

    /// The embedder the workers run (e.g. to render texts as it expects).
    pub fn embedder(&self) -> &Arc<dyn Embedder> {
        &self.handle.shared.embedder
    }
}

/// What a forward pass over `batch` computes: texts × the longest text's tokens.
fn padded_tokens(batch: &[Entry]) -> usize {
    batch.len() * batch.iter().map(|e| e.ids.len()).max().unwrap_or(0)
}

/// Token ids of each text; an error names the text's index.
fn tokenize(embedder: &dyn Embedder, texts: &[String]) -> Result<Vec<Vec<u32>>, BatchError> {
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let tokens = embedder
                .tokenize(text)
                .map_err(|e| BatchError::Input(format!("text {i}: {e}")))?;
            if tokens.ids.is_empty() {
                return Err(BatchError::Input(format!(
                    "text {i} has no tokens after tokenization"
                )));
            }
            Ok(tokens.ids)
        })
        .collect()
}

impl Shared {
    /// The dispatcher: takes rounds until the last handle is dropped and runs each round's
    /// batches on the pool, costliest first (the cheap ones fill in around them).
    fn work(&self) {
        while let Some(round) = self.next_round() {
            let mut batches = self.plan(round);
            batches.sort_by_key(|batch| std::cmp::Reverse(padded_tokens(batch)));
            self.pool.install(|| {
                use rayon::prelude::*;
                batches
                    .par_iter()
                    .with_max_len(1)
                    .for_each(|batch| self.run(batch));
            });
        }
    }

    /// Waits for queued texts and takes the oldest of them, up to [`ROUND_BATCHES_PER_WORKER`]
    /// full batches per worker (None once closed).
    fn next_round(&self) -> Option<Vec<Entry>> {
        let mut state = lock(&self.state);
        loop {
            if state.closed {
                return None;
            }
            // Texts of requests that went away (or already failed) are not embedded.
            state.queue.retain(|e| e.job.waiting());
            if !state.queue.is_empty() {
                let round =
                    self.options.workers * self.options.max_batch_texts * ROUND_BATCHES_PER_WORKER;
                let take = state.queue.len().min(round);
                return Some(state.queue.drain(..take).collect());
            }
            state = self
                .ready
                .wait(state)
                .unwrap_or_else(PoisonError::into_inner);
        }
    }

    /// Cuts a round into batches: its texts sorted by token count (oldest first among equal
    /// counts), then runs of neighbours within the batch bounds; a text longer than the token
    /// bound goes alone.
    fn plan(&self, mut round: Vec<Entry>) -> Vec<Vec<Entry>> {
        round.sort_by_key(|e| e.ids.len());
        let mut batches: Vec<Vec<Entry>> = Vec::new();
        let mut batch: Vec<Entry> = Vec::new();
        for entry in round {
            // Sorted: the newcomer is the batch's longest text.
            let padded = (batch.len() + 1) * entry.ids.len();
            if !batch.is_empty()
                && (batch.len() == self.options.max_batch_texts
                    || padded > self.options.max_batch_tokens)
            {
                batches.push(std::mem::take(&mut batch));
            }
            batch.push(entry);
        }
        if !batch.is_empty() {
            batches.push(batch);
        }
        batches
    }

    /// Embeds a batch and answers its texts; a failed batch of several texts is retried one
    /// text at a time so that the failure stays with the text that caused it.
    fn run(&self, batch: &[Entry]) {
        match self.forward(batch) {
            Ok(vectors) => {
                for (entry, vector) in batch.iter().zip(vectors) {
                    if vector.iter().all(|x| x.is_finite()) {
                        entry.job.deliver(entry.index, vector);
                    } else {
                        entry.job.fail(BatchError::Failed(format!(
                            "text {}: the model returned a non-finite feature",
                            entry.index
                        )));
                    }
                }
            }
            Err(_) if batch.len() > 1 => {
                for entry in batch {
                    if entry.job.waiting() {
                        self.run(std::slice::from_ref(entry));
                    }
                }
            }
            Err(message) => {
                for entry in batch {
                    entry.job.fail(BatchError::Failed(format!(
                        "text {}: {message}",
                        entry.index
                    )));
                }
            }
        }
    }

    /// One forward pass over the batch, panics caught, output shape checked; counts it.
    fn forward(&self, batch: &[Entry]) -> Result<Vec<Vec<f32>>, String> {
        let ids: Vec<&[u32]> = batch.iter().map(|e| e.ids.as_slice()).collect();
        let dim = self.embedder.dim();
        let started = Instant::now();
        let result = match catch_unwind(AssertUnwindSafe(|| self.embedder.embed_tokens(&ids))) {
            Ok(Ok(vectors))
                if vectors.len() == ids.len() && vectors.iter().all(|v| v.len() == dim) =>
            {
                Ok(vectors)
            }
            Ok(Ok(_)) => Err(format!(
                "the model returned vectors of the wrong count or size (expected {} of {dim})",
                ids.len()
            )),
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err("the model panicked".to_string()),
        };
        let elapsed = started.elapsed();
        let tokens: usize = ids.iter().map(|t| t.len()).sum();
        let padded = ids.len() * ids.iter().map(|t| t.len()).max().unwrap_or(0);
        self.batches.fetch_add(1, Ordering::Relaxed);
        if result.is_ok() {
            self.texts.fetch_add(ids.len() as u64, Ordering::Relaxed);
            self.tokens.fetch_add(tokens as u64, Ordering::Relaxed);
        }
        self.padded_tokens
            .fetch_add(padded as u64, Ordering::Relaxed);
        self.busy_nanos.fetch_add(
            u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
        if let Some(count) = self.sizes.get(ids.len()) {
            count.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(observer) = self.observer.get() {
            observer(&BatchDone {
                texts: ids.len(),
                tokens,
                padded_tokens: padded,
                seconds: elapsed.as_secs_f64(),
                failed: result.is_err(),
            });
        }
        result
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::path::PathBuf;
    use std::time::Duration;

    use lore_embed::{EmbedError, EmbedderInfo, Text, Tokens};

    /// A model whose vector of a text depends on its token ids only: one token per word, the
    /// id being the word's length (and special words that fail in chosen ways). It records
    /// each batch's token counts and can hold every forward pass at a gate.
    struct Fake {
        info: EmbedderInfo,
        batches: Mutex<Vec<Vec<usize>>>,
        gate: Mutex<bool>,
        opened: Condvar,
        entered: AtomicU64,
        delay: Duration,
    }

    const NAN_ID: u32 = 1000;
    const ERR_ID: u32 = 1001;
    const PANIC_ID: u32 = 1002;

    impl Fake {
        fn new(open: bool, delay: Duration) -> Arc<Fake> {
            Arc::new(Fake {
                info: EmbedderInfo {
                    name: "fake".into(),
                    path: PathBuf::from("fake"),
                    architecture: "bert",
                    pooling: "mean",
                    normalized: false,
                    max_length: 512,
                    dim: 4,
                    text_format: "fake",
                    weights_dtype: "F32".into(),
                },
                batches: Mutex::new(Vec::new()),
                gate: Mutex::new(open),
                opened: Condvar::new(),
                entered: AtomicU64::new(0),
                delay,
            })
        }

        fn open(&self) {
            *lock(&self.gate) = true;
            self.opened.notify_all();
        }

        /// Waits until `n` forward passes have started.
        fn wait_entered(&self, n: u64) {
            let deadline = Instant::now() + Duration::from_secs(10);
            while self.entered.load(Ordering::SeqCst) < n {
                assert!(Instant::now() < deadline, "no forward pass started");
                thread::sleep(Duration::from_millis(1));
            }
        }

        fn batches(&self) -> Vec<Vec<usize>> {
            lock(&self.batches).clone()
        }

        fn vector(ids: &[u32]) -> Vec<f32> {
            let sum: u32 = ids.iter().sum();
            vec![
                ids.len() as f32,
                sum as f32,
                ids[0] as f32,
                *ids.last().unwrap() as f32,
            ]
        }
    }

    impl Embedder for Fake {
        fn info(&self) -> &EmbedderInfo {
            &self.info
        }

        fn render(&self, prompt: &Text, response: &Text) -> lore_embed::Result<String> {
            Ok(format!("{prompt:?} {response:?}"))
        }

        fn tokenize(&self, text: &str) -> lore_embed::Result<Tokens> {
            if text.contains("REFUSE") {
                return Err(EmbedError::Tokenizer("refused".into()));
            }
            let ids = text
                .split_whitespace()
                .map(|w| match w {
                    "NAN" => NAN_ID,
                    "ERR" => ERR_ID,
                    "PANIC" => PANIC_ID,
                    w => w.len() as u32,
                })
                .collect();
            Ok(Tokens {
                ids,
                truncated: false,
            })
        }

        fn embed_tokens(&self, batch: &[&[u32]]) -> lore_embed::Result<Vec<Vec<f32>>> {
            self.entered.fetch_add(1, Ordering::SeqCst);
            {
                let mut open = lock(&self.gate);
                while !*open {
                    open = self.opened.wait(open).unwrap();
                }
            }
            thread::sleep(self.delay);
            lock(&self.batches).push(batch.iter().map(|t| t.len()).collect());
            if batch.iter().any(|t| t.contains(&PANIC_ID)) {
                panic!("fake model panic");
            }
            if batch.iter().any(|t| t.contains(&ERR_ID)) {
                return Err(EmbedError::Compute("fake model error".into()));
            }
            Ok(batch
                .iter()
                .map(|t| {
                    let mut v = Fake::vector(t);
                    if t.contains(&NAN_ID) {
                        v[1] = f32::NAN;
                    }
                    v
                })
                .collect())
        }
    }

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    }

    fn options(texts: usize, tokens: usize, queued: usize, workers: usize) -> BatcherOptions {
        BatcherOptions {
            max_batch_tokens: tokens,
            max_batch_texts: texts,
            max_queued_texts: queued,
            workers,
        }
    }

    /// A text of `n` words of lengths drawn from `seed`.
    fn text(n: usize, seed: usize) -> String {
        (0..n)
            .map(|j| "x".repeat(1 + (seed * 7 + j * 3) % 9))
            .collect::<Vec<_>>()
            .join(" ")
    }

    #[test]
    fn concurrent_requests_share_batches_and_get_their_own_vectors() {
        let fake = Fake::new(true, Duration::from_millis(5));
        let batcher = Batcher::start(fake.clone(), options(8, 10_000, 1000, 2));
        let requests: Vec<Vec<String>> = (0..24)
            .map(|r| {
                (0..1 + r % 5)
                    .map(|i| text(1 + (r + i) % 13, r * 5 + i))
                    .collect()
            })
            .collect();
        let results = runtime().block_on(async {
            let tasks: Vec<_> = requests
                .iter()
                .cloned()
                .map(|texts| {
                    let batcher = batcher.clone();
                    tokio::spawn(async move { batcher.embed(texts).await })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            results
        });
        let batched: Vec<usize> = fake.batches().iter().map(Vec::len).collect();
        for (texts, result) in requests.iter().zip(results) {
            let vectors = result.unwrap();
            // One text at a time through the model itself.
            let alone: Vec<Vec<f32>> = texts
                .iter()
                .map(|t| fake.embed(&[t.as_str()]).unwrap().remove(0))
                .collect();
            assert_eq!(vectors, alone);
        }
        let total: usize = requests.iter().map(Vec::len).sum();
        assert_eq!(batched.iter().sum::<usize>(), total);
        assert!(batched.iter().all(|&n| (1..=8).contains(&n)));
        assert!(
            batched.len() < total,
            "no two texts shared a forward pass: {batched:?}"
        );
        let stats = batcher.stats();
        assert_eq!(stats.texts, total as u64);
        assert_eq!(stats.batches, batched.len() as u64);
        let sizes = batcher.batch_sizes();
        assert_eq!(sizes.len(), 9);
        assert_eq!(
            sizes
                .iter()
                .enumerate()
                .map(|(n, c)| n as u64 * c)
                .sum::<u64>(),
            total as u64
        );
        assert_eq!(batcher.queued_texts(), 0);
    }

    #[test]
    fn batches_group_similar_lengths_within_the_token_bound() {
        // One worker held at the gate by a first request while 16 single-text requests of
        // lengths 1..=16 (shuffled) queue up.
        let fake = Fake::new(false, Duration::ZERO);
        let batcher = Batcher::start(fake.clone(), options(4, 40, 100, 1));
        let rt = runtime();
        let first = {
            let batcher = batcher.clone();
            rt.spawn(async move { batcher.embed(vec!["aa".into()]).await })
        };
        fake.wait_entered(1);
        let lengths = [9, 3, 14, 1, 7, 16, 5, 11, 2, 13, 8, 4, 15, 6, 12, 10];
        let tasks: Vec<_> = lengths
            .iter()
            .map(|&n| {
                let batcher = batcher.clone();
                let t = text(n, n);
                rt.spawn(async move { batcher.embed(vec![t]).await })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while batcher.queued_texts() < lengths.len() {
            assert!(Instant::now() < deadline, "requests did not queue");
            thread::sleep(Duration::from_millis(1));
        }
        fake.open();
        rt.block_on(async {
            assert_eq!(first.await.unwrap().unwrap().len(), 1);
            for task in tasks {
                assert_eq!(task.await.unwrap().unwrap().len(), 1);
            }
        });
        let batches = fake.batches();
        assert_eq!(batches[0], vec![1]);
        // Every length came through once, and each batch is a run of neighbours in length
        // among the texts still queued when it was taken (all 16 were queued at the gate).
        let mut queued: Vec<usize> = (1..=16).collect();
        for batch in &batches[1..] {
            let longest = *batch.iter().max().unwrap();
            // Padded tokens within the bound unless the batch is one text.
            assert!(batch.len() == 1 || batch.len() * longest <= 40, "{batch:?}");
            assert!(batch.len() <= 4, "{batch:?}");
            let start = queued.iter().position(|n| batch.contains(n)).unwrap();
            let mut run = queued[start..start + batch.len()].to_vec();
            let mut sorted = batch.clone();
            sorted.sort_unstable();
            run.sort_unstable();
            assert_eq!(sorted, run, "not neighbours in length: {batches:?}");
            queued.retain(|n| !batch.contains(n));
        }
        assert!(queued.is_empty(), "not embedded: {queued:?}");
    }

    #[test]
    fn one_requests_batches_run_side_by_side_on_the_pool() {
        // 16 texts of one request, batches of 8, two threads: both batches enter the model
        // before either leaves it (the gate holds them).
        let fake = Fake::new(false, Duration::ZERO);
        let batcher = Batcher::start(fake.clone(), options(8, 10_000, 100, 2));
        let rt = runtime();
        let texts: Vec<String> = (0..16).map(|i| text(1 + i % 5, i)).collect();
        let task = {
            let batcher = batcher.clone();
            let texts = texts.clone();
            rt.spawn(async move { batcher.embed(texts).await })
        };
        fake.wait_entered(2);
        fake.open();
        let vectors = rt.block_on(task).unwrap().unwrap();
        let alone: Vec<Vec<f32>> = texts
            .iter()
            .map(|t| fake.embed(&[t.as_str()]).unwrap().remove(0))
            .collect();
        assert_eq!(vectors, alone);
        assert_eq!(batcher.batch_sizes()[8], 2);
    }

    #[test]
    fn rounds_take_the_oldest_texts_first() {
        // One thread, one text a batch: a round is ROUND_BATCHES_PER_WORKER texts. Two rounds'
        // worth of requests queue behind a held pass, shortest first; the oldest round is
        // embedded before any text of the newest (costliest first would reverse them).
        let round = ROUND_BATCHES_PER_WORKER;
        let fake = Fake::new(false, Duration::ZERO);
        let batcher = Batcher::start(fake.clone(), options(1, 1000, 1000, 1));
        let rt = runtime();
        let first = {
            let batcher = batcher.clone();
            rt.spawn(async move { batcher.embed(vec!["held".into()]).await })
        };
        fake.wait_entered(1);
        let mut tasks = Vec::new();
        for n in 1..=2 * round {
            let handle = batcher.clone();
            let t = text(n, n);
            tasks.push(rt.spawn(async move { handle.embed(vec![t]).await }));
            let deadline = Instant::now() + Duration::from_secs(10);
            while batcher.queued_texts() < n {
                assert!(Instant::now() < deadline, "request did not queue");
                thread::sleep(Duration::from_millis(1));
            }
        }
        fake.open();
        rt.block_on(async {
            assert!(first.await.unwrap().is_ok());
            for task in tasks {
                assert!(task.await.unwrap().is_ok());
            }
        });
        let mut order: Vec<usize> = fake.batches()[1..].iter().map(|b| b[0]).collect();
        assert_eq!(order.len(), 2 * round);
        let (older, newer) = order.split_at_mut(round);
        older.sort_unstable();
        newer.sort_unstable();
        assert_eq!(older.to_vec(), (1..=round).collect::<Vec<_>>());
        assert_eq!(newer.to_vec(), (round + 1..=2 * round).collect::<Vec<_>>());
    }

    #[test]
    fn a_text_longer_than_the_token_bound_is_embedded_alone() {
        let fake = Fake::new(true, Duration::ZERO);
        let batcher = Batcher::start(fake.clone(), options(8, 5, 100, 1));
        let long = text(12, 1);
        let vectors = runtime()
            .block_on(batcher.embed(vec![long.clone(), "a b".into()]))
            .unwrap();
        assert_eq!(vectors[0], fake.embed(&[long.as_str()]).unwrap()[0]);
        assert_eq!(vectors[1], fake.embed(&["a b"]).unwrap()[0]);
        assert!(fake.batches()[..2].iter().all(|b| b.len() == 1));
    }

    #[test]
    fn full_queue_refuses_then_recovers() {
        let fake = Fake::new(false, Duration::ZERO);
        let batcher = Batcher::start(fake.clone(), options(8, 1000, 4, 1));
        let rt = runtime();
        let first = {
            let batcher = batcher.clone();
            rt.spawn(async move { batcher.embed(vec!["held".into()]).await })
        };
        fake.wait_entered(1);
        let queued = {
            let batcher = batcher.clone();
            rt.spawn(async move {
                batcher
                    .embed(vec!["a".into(), "b c".into(), "d".into()])
                    .await
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while batcher.queued_texts() < 3 {
            assert!(Instant::now() < deadline, "request did not queue");
            thread::sleep(Duration::from_millis(1));
        }
        // 3 queued + 2 > 4: refused at once; 3 + 1 fits.
        let full = rt.block_on(batcher.embed(vec!["e".into(), "f".into()]));
        assert_eq!(full, Err(BatchError::Full));
        let fits = {
            let batcher = batcher.clone();
            rt.spawn(async move { batcher.embed(vec!["g".into()]).await })
        };
        // More than the queue can ever hold: an input error, not Full.
        let huge = rt.block_on(batcher.embed(vec!["h".into(); 5]));
        assert!(matches!(huge, Err(BatchError::Input(ref m)) if m.contains("at most 4")));
        fake.open();
        rt.block_on(async {
            assert_eq!(first.await.unwrap().unwrap().len(), 1);
            assert_eq!(queued.await.unwrap().unwrap().len(), 3);
            assert_eq!(fits.await.unwrap().unwrap().len(), 1);
        });
        let again = rt.block_on(batcher.embed(vec!["e".into(), "f".into()]));
        assert_eq!(again.unwrap().len(), 2);
        assert_eq!(batcher.queued_texts(), 0);
    }

    #[test]
    fn errors_stay_with_their_request() {
        // Requests with bad texts queue behind a held pass, so good and bad texts share batches.
        let fake = Fake::new(false, Duration::ZERO);
        let batcher = Batcher::start(fake.clone(), options(8, 1000, 100, 1));
        let rt = runtime();
        let first = {
            let batcher = batcher.clone();
            rt.spawn(async move { batcher.embed(vec!["held".into()]).await })
        };
        fake.wait_entered(1);
        let requests: Vec<Vec<String>> = vec![
            vec!["good one".into(), "fine".into()],
            vec!["ok".into(), "x ERR y".into()],
            vec!["also good".into()],
            vec!["NAN z".into(), "q".into()],
            vec!["PANIC".into()],
            vec!["last good one".into()],
        ];
        let tasks: Vec<_> = requests
            .iter()
            .cloned()
            .map(|texts| {
                let batcher = batcher.clone();
                rt.spawn(async move { batcher.embed(texts).await })
            })
            .collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        while batcher.queued_texts() < 9 {
            assert!(Instant::now() < deadline, "requests did not queue");
            thread::sleep(Duration::from_millis(1));
        }
        // Refused by the tokenizer, or no tokens: answered at once, nothing queued.
        let refused = rt.block_on(batcher.embed(vec!["fine".into(), "REFUSE me".into()]));
        assert!(matches!(refused, Err(BatchError::Input(ref m)) if m.starts_with("text 1:")));
        let empty = rt.block_on(batcher.embed(vec!["   ".into()]));
        assert!(
            matches!(empty, Err(BatchError::Input(ref m)) if m.contains("text 0 has no tokens"))
        );
        assert_eq!(batcher.queued_texts(), 9);
        fake.open();
        let results: Vec<_> = rt.block_on(async {
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap());
            }
            results
        });
        assert!(rt.block_on(first).unwrap().is_ok());
        for i in [0, 2, 5] {
            let alone: Vec<Vec<f32>> = requests[i]
                .iter()
                .map(|t| Fake::vector(&fake.tokenize(t).unwrap().ids))
                .collect();
            assert_eq!(results[i].as_ref().unwrap(), &alone, "request {i}");
        }
        assert!(
            matches!(&results[1], Err(BatchError::Failed(m)) if m.starts_with("text 1:") && m.contains("fake model error")),
            "{:?}",
            results[1]
        );
        assert!(
            matches!(&results[3], Err(BatchError::Failed(m)) if m.starts_with("text 0:") && m.contains("non-finite")),
            "{:?}",
            results[3]
        );
        assert!(
            matches!(&results[4], Err(BatchError::Failed(m)) if m.contains("panicked")),
            "{:?}",
            results[4]
        );
        // The worker survived the panic.
        let after = rt.block_on(batcher.embed(vec!["still here".into()]));
        assert_eq!(after.unwrap().len(), 1);
    }

    #[test]
    fn a_cancelled_request_is_not_embedded() {
        let fake = Fake::new(false, Duration::ZERO);
        let batcher = Batcher::start(fake.clone(), options(8, 1000, 100, 1));
        let rt = runtime();
        let first = {
            let batcher = batcher.clone();
            rt.spawn(async move { batcher.embed(vec!["held".into()]).await })
        };
        fake.wait_entered(1);
        let cancelled = {
            let batcher = batcher.clone();
            rt.spawn(async move { batcher.embed(vec!["never embedded here".into()]).await })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while batcher.queued_texts() < 1 {
            assert!(Instant::now() < deadline, "request did not queue");
            thread::sleep(Duration::from_millis(1));
        }
        cancelled.abort();
        assert!(rt.block_on(cancelled).unwrap_err().is_cancelled());
        fake.open();
        assert!(rt.block_on(first).unwrap().is_ok());
        assert_eq!(
            rt.block_on(batcher.embed(vec!["z".into()])).unwrap().len(),
            1
        );
        // Only the held text and "z" reached the model.
        assert_eq!(fake.batches(), vec![vec![1], vec![1]]);
    }

    #[test]
    fn workers_stop_when_the_last_handle_is_dropped() {
        let fake = Fake::new(true, Duration::ZERO);
        let batcher = Batcher::start(fake.clone(), options(8, 1000, 100, 2));
        assert_eq!(
            runtime()
                .block_on(batcher.embed(vec!["a".into()]))
                .unwrap()
                .len(),
            1
        );
        let shared = Arc::downgrade(&batcher.handle.shared);
        drop(batcher);
        let deadline = Instant::now() + Duration::from_secs(10);
        while shared.strong_count() > 0 {
            assert!(Instant::now() < deadline, "workers did not stop");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// all-MiniLM-L6-v2 through the batcher, concurrent requests of texts of mixed lengths,
    /// gives the vectors of embedding each text alone.
    #[test]
    fn minilm_batched_equals_unbatched() {
        let dir = lore_embed::find_minilm().expect("all-MiniLM-L6-v2 is installed here and in CI");
        let encoder = Arc::new(lore_embed::SentenceEncoder::load(&dir).unwrap());
        let batcher = Batcher::start(encoder.clone(), options(8, 16_384, 1000, 2));
        let words = [
            "the", "reward", "model", "prefers", "short", "answers", "that", "cite", "sources",
            "and", "explain", "each", "step", "clearly", "without", "jargon",
        ];
        let requests: Vec<Vec<String>> = (0..6)
            .map(|r| {
                (0..4)
                    .map(|i| {
                        let n = 1 + (r * 11 + i * 7) % 40;
                        (0..n)
                            .map(|j| words[(r + i * 3 + j * 5) % words.len()])
                            .collect::<Vec<_>>()
                            .join(" ")
                    })
                    .collect()
            })
            .collect();
        let results = runtime().block_on(async {
            let tasks: Vec<_> = requests
                .iter()
                .cloned()
                .map(|texts| {
                    let batcher = batcher.clone();
                    tokio::spawn(async move { batcher.embed(texts).await })
                })
                .collect();
            let mut results = Vec::new();
            for task in tasks {
                results.push(task.await.unwrap().unwrap());
            }
            results
        });
        assert!(
            batcher.batch_sizes()[2..].iter().any(|&c| c > 0),
            "no batch held several texts: {:?}",
            batcher.batch_sizes()
        );
        let mut worst = 0f32;
        for (texts, vectors) in requests.iter().zip(&results) {
            for (t, v) in texts.iter().zip(vectors) {
                let alone = encoder.embed(&[t.as_str()]).unwrap().remove(0);
                assert_eq!(v.len(), 384);
                for (a, b) in v.iter().zip(&alone) {
                    worst = worst.max((a - b).abs());
                }
            }
        }
        assert!(
            worst < 1e-5,
            "batched and unbatched vectors differ by {worst}"
        );
    }
}
