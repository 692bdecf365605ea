//! `lore bench serve`: the reward service under a bounded load, on loopback, in one process.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::io::{Seek, SeekFrom, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{header, Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::Serialize;
use serde_json::json;

use crate::progress::Ui;

/// Most concurrent clients of one run (each holds one connection).
const MAX_CLIENTS: usize = 1024;
/// Longest run of one workload at one client count, in seconds.
const MAX_SECONDS: f64 = 600.0;
/// Users of the generated model (`user-0` ... `user-99`), whose ids the reward requests name.
const GENERATED_USERS: usize = 100;
/// Pairs each writer posts to one user before moving to the next (users hold at most this many).
const PAIRS_PER_USER: usize = 50;
/// How long the disk's fsync rate is measured.
const FSYNC_SECONDS: f64 = 2.0;

/// Drive `lore serve` with a bounded load generator: throughput and latency on loopback.
///
/// Starts the service in this process (the lore-serve library, on 127.0.0.1 with a free port)
/// with a generated model (F = 384, K = 8, 100 users; --model for another) and a store in a
/// temporary directory (--store for another), then runs each workload at each client count:
/// N clients, each on its own keep-alive connection, sending requests one after the other for
/// --seconds or until --requests requests were sent, whichever comes first (after one
/// untimed request each). The load generator runs on the same cores as the service.
///
/// Workloads:
///   features  POST /v1/rewards with --items feature rows a request (items/s)
///   text      POST /v1/rewards with --items prompt/response texts a request, embedded by the
///             server's text embedder (MiniLM by default; items/s = texts/s); the same texts are
///             also embedded offline, as `lore embed` does (lore_embed::embed_pairs), and the
///             ratio is reported
///   writes    POST /v1/users/{id}/preferences with one feature pair each, every user getting
///             at most 50 pairs (acknowledged writes/s, each durable); beside it the disk's
///             fsync rate (a small file written and fsync'd in a loop for 2 s in the store's
///             directory) and the writes per commit of the store's group commit
///
/// Reports items/s, p50/p99 latency (ms, successful requests) and refusals for each run, as a
/// table or --json, and the goals met or missed.
///
/// Example: lore bench serve --clients 1,16,64 --seconds 5
///          lore bench serve --workloads features --clients 16 --seconds 10 --json
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct BenchServeArgs {
    /// Model file to serve (default: a generated one, F = 384, K = 8, 100 users).
    #[arg(long, value_name = "FILE")]
    model: Option<PathBuf>,
    /// The server's text embedder (`minilm` or a model directory; default: the model's
    /// recorded embedder, else minilm when the text workload runs).
    #[arg(long, value_name = "minilm|DIR")]
    embedder: Option<String>,
    /// Store directory (default: a temporary directory, removed at the end). The writes add
    /// users named `bench-...` to it.
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,
    /// Concurrent clients of each run, comma-separated.
    #[arg(long, value_name = "N,..", value_delimiter = ',', default_values_t = [1, 16, 64])]
    clients: Vec<usize>,
    /// Workloads to run, comma-separated.
    #[arg(long, value_name = "W,..", value_enum, value_delimiter = ',',
          default_values_t = [Workload::Features, Workload::Text, Workload::Writes])]
    workloads: Vec<Workload>,
    /// Seconds of each run (one workload at one client count).
    #[arg(long, value_name = "S", default_value_t = 5.0)]
    seconds: f64,
    /// Most requests of each run.
    #[arg(long, value_name = "N", default_value_t = 200_000)]
    requests: usize,
    /// Items (feature rows or texts) per reward request.
    #[arg(long, value_name = "N", default_value_t = 32)]
    items: usize,
    /// Distinct prompt/response texts of the text workload (generated, cycled through).
    #[arg(long, value_name = "N", default_value_t = 512)]
    texts: usize,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    json: bool,
}

/// What a run sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// Feature-row rewards.
    Features,
    /// Text rewards (server-side embedding).
    Text,
    /// Preference writes, one pair each.
    Writes,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Features => "features",
            Workload::Text => "text",
            Workload::Writes => "writes",
        }
    }
}

/// One run's numbers.
#[derive(Debug, Clone, Serialize)]
struct RunResult {
    workload: Workload,
    clients: usize,
    /// Successful requests in the timed window.
    requests: usize,
    /// Items of the successful requests (feature rows, texts, or pairs written).
    items: usize,
    /// Refused or failed requests, by status (0: connection error; a 200 whose answer was
    /// incomplete counts as 200).
    errors: BTreeMap<u16, usize>,
    /// The first refusal's answer (its first 300 bytes), when any.
    #[serde(skip_serializing_if = "Option::is_none")]
    first_error: Option<String>,
    seconds: f64,
    items_per_s: f64,
    requests_per_s: f64,
    p50_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
    /// Writes: store commits (fsyncs) during the run, warm-up included.
    #[serde(skip_serializing_if = "Option::is_none")]
    commits: Option<u64>,
    /// Writes: acknowledged writes per commit.
    #[serde(skip_serializing_if = "Option::is_none")]
    writes_per_commit: Option<f64>,
    /// Text: items/s over the offline path's texts/s.
    #[serde(skip_serializing_if = "Option::is_none")]
    offline_ratio: Option<f64>,
}

/// The offline `lore embed` path on the text workload's texts.
#[derive(Debug, Clone, Serialize)]
struct OfflineEmbed {
    texts: usize,
    tokens: usize,
    /// Seconds in the model (what `lore embed` reports texts/s over).
    embed_seconds: f64,
    /// Seconds of the whole call (rendering and tokenizing included).
    wall_seconds: f64,
    texts_per_s: f64,
}

/// The disk's fsync rate beside the store.
#[derive(Debug, Clone, Serialize)]
struct FsyncRate {
    fsyncs: usize,
    seconds: f64,
    fsyncs_per_s: f64,
    mean_ms: f64,
}

/// A goal of the issue, met or missed.
#[derive(Debug, Clone, Serialize)]
struct Goal {
    goal: &'static str,
    measured: String,
    met: bool,
}

/// The whole benchmark's report.
#[derive(Debug, Clone, Serialize)]
struct Report {
    model: String,
    features: usize,
    rank: usize,
    embedder: Option<String>,
    items_per_request: usize,
    seconds_per_run: f64,
    max_requests_per_run: usize,
    cores: usize,
    runs: Vec<RunResult>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offline_embed: Option<OfflineEmbed>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fsync: Option<FsyncRate>,
    goals: Vec<Goal>,
}

pub fn run(args: BenchServeArgs, ui: &Ui) -> Result<()> {
    check_args(&args)?;
    let wants = |w| args.workloads.contains(&w);
    #[cfg(not(feature = "embed"))]
    if wants(Workload::Text) {
        bail!("the text workload needs lore built with the `embed` feature (or give --workloads features,writes)");
    }
    // Before any candle work: the offline path and the server's workers run batches side by
    // side with candle's element-wise ops on their own thread, as `lore embed` does.
    #[cfg(feature = "embed")]
    lore_embed::prefer_batch_parallelism();

    let temp = tempfile::Builder::new()
        .prefix("lore-bench-serve")
        .tempdir()
        .context("creating a temporary directory")?;
    let store_dir = match &args.store {
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("creating --store {}", dir.display()))?;
            dir.clone()
        }
        None => temp.path().join("store"),
    };
    let model_path = match &args.model {
        Some(path) => path.clone(),
        None => {
            let path = temp.path().join("model.safetensors");
            // With the text workload the model records MiniLM (or --embedder) as its features'
            // embedder, so that the service embeds texts with it.
            #[cfg(feature = "embed")]
            let identity = if wants(Workload::Text) {
                let name = args.embedder.as_deref().unwrap_or("minilm");
                let dir = lore_embed::resolve_model(name)
                    .with_context(|| format!("finding the embedder {name}"))?;
                let model = lore_embed::Model::load(&dir)
                    .with_context(|| format!("loading {}", dir.display()))?
                    .with_name(lore_embed::recorded_name(name));
                Some(model.embedder().info().identity())
            } else {
                None
            };
            #[cfg(not(feature = "embed"))]
            let identity = None;
            let f = identity.as_ref().map_or(384, |i| i.dim);
            write_generated_model(&path, f, 8, GENERATED_USERS, identity.as_ref())?;
            path
        }
    };
    let model = lore_io::ModelFile::open(&model_path)
        .with_context(|| format!("reading --model {}", model_path.display()))?;
    let basis = model.basis(None)?;
    let (features, rank) = (basis.n_features(), basis.rank());
    let recorded = model.embedder()?;
    let user_ids: Vec<String> = model
        .user_ids()?
        .unwrap_or_default()
        .into_iter()
        .take(GENERATED_USERS)
        .collect();
    drop(model);
    // The service's embedder when texts are sent: --embedder, else the one the model records,
    // else MiniLM.
    let embedder = match (&args.embedder, &recorded) {
        (Some(e), _) => Some(e.clone()),
        _ if !wants(Workload::Text) => None,
        (None, Some(r)) => Some(r.name.clone()),
        (None, None) => Some("minilm".to_string()),
    };

    // The service, on its own runtime (as another process's would be), and the clients on one
    // thread of theirs.
    let server_runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("lore-serve")
        .build()
        .context("starting the server's runtime")?;
    let mut options = lore_serve::ServeOptions::new(&model_path);
    options.bind = SocketAddr::from(([127, 0, 0, 1], 0));
    options.store = Some(store_dir.clone());
    options.embedder = embedder.clone();
    let server = server_runtime
        .block_on(lore_serve::Server::bind(options))
        .context("starting the service")?;
    let addr = server.local_addr();
    let handle = server.handle();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = server_runtime.spawn(server.run(async move {
        let _ = stopped.await;
    }));
    ui.note(format!("serving {} on http://{addr}", model_path.display()));

    let clients_runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("lore-bench-client")
        .build()
        .context("starting the load generator's runtime")?;

    let mut runs = Vec::new();
    let mut offline = None;
    let mut fsync = None;
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    for &workload in &args.workloads {
        let bodies: Arc<Vec<Bytes>> = Arc::new(match workload {
            Workload::Features => reward_bodies(&mut rng, 16, args.items, features, &user_ids),
            Workload::Text => {
                let corpus = Corpus::generate(&mut rng, args.texts);
                #[cfg(feature = "embed")]
                {
                    ui.note(format!(
                        "embedding the {} texts offline (lore embed's path)",
                        corpus.len()
                    ));
                    offline = Some(offline_embed(
                        &corpus,
                        recorded.as_ref(),
                        embedder.as_deref(),
                        features,
                    )?);
                }
                corpus.bodies(args.items, &user_ids)
            }
            Workload::Writes => {
                ui.note(format!("measuring fsync in {}", store_dir.display()));
                fsync = Some(measure_fsync(&store_dir, FSYNC_SECONDS)?);
                write_bodies(&mut rng, 64, features)
            }
        });
        for &clients in &args.clients {
            ui.note(format!("{} with {clients} clients", workload.name()));
            let commits_before = handle.store().commits();
            let spec = RunSpec {
                addr,
                workload,
                clients,
                seconds: args.seconds,
                requests: args.requests,
                items: if workload == Workload::Writes {
                    1
                } else {
                    args.items
                },
                bodies: Arc::clone(&bodies),
                tag: format!("{}", runs.len()),
            };
            let mut result = clients_runtime.block_on(drive(spec))?;
            if workload == Workload::Writes {
                let commits = handle.store().commits() - commits_before;
                result.commits = Some(commits);
                // Every write of the run (warm-up included) went into these commits.
                let writes = result.requests + clients;
                result.writes_per_commit = (commits > 0).then(|| writes as f64 / commits as f64);
            }
            if let (Workload::Text, Some(offline)) = (workload, &offline) {
                result.offline_ratio = Some(result.items_per_s / offline.texts_per_s);
            }
            runs.push(result);
        }
    }

    let _ = stop.send(());
    server_runtime
        .block_on(serving)
        .context("the service stopped")?
        .context("the service failed")?;

    let report = Report {
        model: match &args.model {
            Some(path) => path.display().to_string(),
            None => format!("generated (F = {features}, K = {rank}, {GENERATED_USERS} users)"),
        },
        features,
        rank,
        embedder: embedder.clone(),
        items_per_request: args.items,
        seconds_per_run: args.seconds,
        max_requests_per_run: args.requests,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        goals: goals(&runs, args.items, features),
        runs,
        offline_embed: offline,
        fsync,
    };
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_table(&report);
    }
    Ok(())
}

fn check_args(args: &BenchServeArgs) -> Result<()> {
    if args.clients.is_empty() || args.clients.iter().any(|&c| c == 0 || c > MAX_CLIENTS) {
        bail!("invalid --clients: each count must be 1..={MAX_CLIENTS}");
    }
    if !(args.seconds > 0.0 && args.seconds <= MAX_SECONDS) {
        bail!(
            "invalid --seconds {}: must be in (0, {MAX_SECONDS}]",
            args.seconds
        );
    }
    if args.requests == 0 {
        bail!("invalid --requests 0: must be at least 1");
    }
    if args.items == 0 || args.items > 4096 {
        bail!("invalid --items {}: must be 1..=4096", args.items);
    }
    if args.texts < 2 || args.texts > 1_000_000 {
        bail!("invalid --texts {}: must be 2..=1000000", args.texts);
    }
    if args.workloads.is_empty() {
        bail!("give at least one workload in --workloads");
    }
    Ok(())
}

/// Writes a model of random V [F x K] and `n` users `user-0`, ... with random weights, as
/// `lore fit` writes models.
fn write_generated_model(
    path: &Path,
    f: usize,
    k: usize,
    n: usize,
    embedder: Option<&lore_io::EmbedderIdentity>,
) -> Result<()> {
    use lore_core::{FitParams, FittedModel, Method, RewardBasis, UserWeights};
    let mut rng = ChaCha8Rng::seed_from_u64(384);
    let scale = 1.0 / (f as f32).sqrt();
    let v: Vec<f32> = (0..f * k).map(|_| rng.gen_range(-scale..scale)).collect();
    let logits: Vec<f32> = (0..n * k).map(|_| rng.gen_range(-2.0..2.0)).collect();
    let params = FitParams::new(Method::Lore, k).check()?;
    let model = FittedModel {
        basis: RewardBasis::new(f, k, v.clone(), params.logit_scale())?,
        users: UserWeights::from_logits(n, k, logits.clone())?,
        kept: (0..k).collect(),
        unpruned_basis: v,
        unpruned_logits: logits,
        steps: 0,
    };
    let ids: Vec<String> = (0..n).map(|u| format!("user-{u}")).collect();
    lore_io::ModelFile::write(
        path,
        &model,
        &params,
        &lore_io::FitProvenance {
            data: Path::new("generated by lore bench serve"),
            user_ids: Some(&ids),
            v_ref: None,
            v_ref_from_bt: false,
            initialized_from: None,
            early_stopping: None,
            embedder,
        },
    )?;
    Ok(())
}

/// `count` request bodies of `items` random feature rows each, for the model's users in turn.
fn reward_bodies(
    rng: &mut ChaCha8Rng,
    count: usize,
    items: usize,
    f: usize,
    users: &[String],
) -> Vec<Bytes> {
    (0..count)
        .map(|b| {
            let items: Vec<_> = (0..items)
                .map(|_| {
                    let row: Vec<f32> = (0..f).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
                    json!({ "features": row })
                })
                .collect();
            let mut body = json!({ "items": items });
            if !users.is_empty() {
                body["user_id"] = json!(users[b % users.len()]);
            }
            Bytes::from(body.to_string())
        })
        .collect()
}

/// `count` bodies of one preference pair (a random feature row) each.
fn write_bodies(rng: &mut ChaCha8Rng, count: usize, f: usize) -> Vec<Bytes> {
    (0..count)
        .map(|_| {
            let row: Vec<f32> = (0..f).map(|_| rng.gen_range(-0.1f32..0.1)).collect();
            Bytes::from(json!({ "pairs": [{ "features": row }] }).to_string())
        })
        .collect()
}

/// Generated prompt/response texts of varied length: items 2i and 2i+1 share prompt i, so the
/// offline path sees the same texts as pairs.
struct Corpus {
    prompts: Vec<String>,
    responses: Vec<String>,
}

const WORDS: &[&str] = &[
    "the",
    "model",
    "answer",
    "explains",
    "why",
    "a",
    "reward",
    "should",
    "follow",
    "what",
    "people",
    "prefer",
    "when",
    "they",
    "read",
    "short",
    "clear",
    "replies",
    "with",
    "sources",
    "and",
    "examples",
    "instead",
    "of",
    "long",
    "vague",
    "lists",
    "user",
    "asked",
    "about",
    "cooking",
    "rice",
    "travel",
    "plans",
    "taxes",
    "poetry",
    "gardening",
    "in",
    "spring",
    "winter",
    "history",
    "music",
    "code",
    "review",
    "safety",
    "kindness",
    "humor",
    "detail",
    "budget",
    "health",
    "sleep",
    "running",
    "books",
    "science",
    "space",
    "ocean",
    "city",
];

impl Corpus {
    fn generate(rng: &mut ChaCha8Rng, n: usize) -> Corpus {
        let n = n + n % 2;
        let mut sentence = |words: usize, serial: usize| -> String {
            let mut s: Vec<&str> = (0..words)
                .map(|_| WORDS[rng.gen_range(0..WORDS.len())])
                .collect();
            s.push("#");
            format!("{} {serial}", s.join(" "))
        };
        let prompts = (0..n / 2)
            .map(|i| {
                let words = 5 + i % 20;
                sentence(words, i)
            })
            .collect();
        let responses = (0..n)
            .map(|i| {
                let words = 10 + (i * 37) % 110;
                sentence(words, i)
            })
            .collect();
        Corpus { prompts, responses }
    }

    fn len(&self) -> usize {
        self.responses.len()
    }

    /// Request bodies of `items` consecutive texts each, cycling through the corpus.
    fn bodies(&self, items: usize, users: &[String]) -> Vec<Bytes> {
        let count = self.len().div_ceil(items).max(1);
        (0..count)
            .map(|b| {
                let items: Vec<_> = (0..items)
                    .map(|j| {
                        let t = (b * items + j) % self.len();
                        json!({ "prompt": self.prompts[t / 2], "response": self.responses[t] })
                    })
                    .collect();
                let mut body = json!({ "items": items });
                if !users.is_empty() {
                    body["user_id"] = json!(users[b % users.len()]);
                }
                Bytes::from(body.to_string())
            })
            .collect()
    }
}

/// The offline path of `lore embed` (lore_embed::embed_pairs, default options) on the corpus,
/// with the embedder the service loads for the model.
#[cfg(feature = "embed")]
fn offline_embed(
    corpus: &Corpus,
    recorded: Option<&lore_io::EmbedderIdentity>,
    choice: Option<&str>,
    features: usize,
) -> Result<OfflineEmbed> {
    use lore_embed::{embed_pairs, EmbedOptions, Location, PairRecord, Text};
    let model = lore_embed::load_matching(recorded, choice, features)
        .context("loading the text embedder")?;
    let records: Vec<PairRecord> = (0..corpus.prompts.len())
        .map(|i| PairRecord {
            user_id: "bench".into(),
            prompt: Text::Plain(corpus.prompts[i].clone()),
            chosen: Text::Plain(corpus.responses[2 * i].clone()),
            rejected: Text::Plain(corpus.responses[2 * i + 1].clone()),
            prompt_id: None,
            pair_id: None,
            split: None,
            at: Location::Line(i + 1),
        })
        .collect();
    let started = Instant::now();
    let embedded = embed_pairs(
        model.embedder(),
        &records,
        &EmbedOptions::default(),
        &|_| {},
        None,
    )?;
    let wall_seconds = started.elapsed().as_secs_f64();
    let stats = embedded.stats;
    Ok(OfflineEmbed {
        texts: stats.n_texts,
        tokens: stats.n_tokens,
        embed_seconds: stats.embed_seconds,
        wall_seconds,
        texts_per_s: stats.n_texts as f64 / stats.embed_seconds.max(1e-9),
    })
}

/// Writes 4 KiB at the start of a file and fsyncs it (fdatasync), in a loop for `seconds`,
/// in `dir`: how many durable commits a second this disk allows one writer.
fn measure_fsync(dir: &Path, seconds: f64) -> Result<FsyncRate> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let path = dir.join(".lore-bench-fsync");
    let mut file = OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("creating {}", path.display()))?;
    let page = [0x5au8; 4096];
    let started = Instant::now();
    let mut fsyncs = 0;
    let result = (|| -> std::io::Result<()> {
        while started.elapsed().as_secs_f64() < seconds {
            file.seek(SeekFrom::Start(0))?;
            file.write_all(&page)?;
            file.sync_data()?;
            fsyncs += 1;
        }
        Ok(())
    })();
    let elapsed = started.elapsed().as_secs_f64();
    drop(file);
    let _ = std::fs::remove_file(&path);
    result.with_context(|| format!("writing and fsyncing {}", path.display()))?;
    Ok(FsyncRate {
        fsyncs,
        seconds: elapsed,
        fsyncs_per_s: fsyncs as f64 / elapsed,
        mean_ms: elapsed * 1e3 / fsyncs.max(1) as f64,
    })
}

/// One run: a workload at a client count.
struct RunSpec {
    addr: SocketAddr,
    workload: Workload,
    clients: usize,
    seconds: f64,
    requests: usize,
    items: usize,
    bodies: Arc<Vec<Bytes>>,
    /// Distinguishes the writers' user ids between runs.
    tag: String,
}

/// What one client saw.
#[derive(Default)]
struct ClientLog {
    /// Latencies of successful requests, microseconds.
    latencies: Vec<u32>,
    errors: BTreeMap<u16, usize>,
    first_error: Option<String>,
}

impl ClientLog {
    fn error(&mut self, (status, answer): (u16, String)) {
        *self.errors.entry(status).or_default() += 1;
        self.first_error.get_or_insert(answer);
    }
}

/// Runs the clients: each connects and sends one untimed request, then all send requests one
/// after the other until the deadline or the request budget.
async fn drive(spec: RunSpec) -> Result<RunResult> {
    let spec = Arc::new(spec);
    let sent = Arc::new(AtomicUsize::new(0));
    let warmed = Arc::new(tokio::sync::Barrier::new(spec.clients + 1));
    let (start_tx, start_rx) = tokio::sync::watch::channel(None::<Instant>);
    let mut tasks = Vec::with_capacity(spec.clients);
    for c in 0..spec.clients {
        let (spec, sent, warmed, mut start) = (
            Arc::clone(&spec),
            Arc::clone(&sent),
            Arc::clone(&warmed),
            start_rx.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let mut sender = connect(spec.addr).await;
            let mut n = 0usize;
            // Warm-up: one request, not timed (its failure is reported by the timed ones).
            if let Ok(s) = sender.as_mut() {
                let _ = send(s, &spec, c, n).await;
                n += 1;
            }
            warmed.wait().await;
            let started = loop {
                if let Some(at) = *start.borrow_and_update() {
                    break at;
                }
                if start.changed().await.is_err() {
                    return ClientLog::default();
                }
            };
            let deadline = started + Duration::from_secs_f64(spec.seconds);
            let mut log = ClientLog {
                latencies: Vec::with_capacity((spec.requests / spec.clients).min(1 << 16)),
                errors: BTreeMap::new(),
                first_error: None,
            };
            let sender = match sender.as_mut() {
                Ok(sender) => sender,
                Err(e) => {
                    log.error((0, format!("{e:#}")));
                    return log;
                }
            };
            while Instant::now() < deadline && sent.fetch_add(1, Ordering::Relaxed) < spec.requests
            {
                let t = Instant::now();
                match send(sender, &spec, c, n).await {
                    Ok(()) => {
                        let micros = t.elapsed().as_micros();
                        log.latencies
                            .push(u32::try_from(micros).unwrap_or(u32::MAX));
                    }
                    Err((status, answer)) => {
                        log.error((status, answer));
                        if status == 0 {
                            break;
                        }
                    }
                }
                n += 1;
            }
            log
        }));
    }
    warmed.wait().await;
    let started = Instant::now();
    let _ = start_tx.send(Some(started));
    let mut latencies = Vec::new();
    let mut errors: BTreeMap<u16, usize> = BTreeMap::new();
    let mut first_error = None;
    for task in tasks {
        let log = task.await.context("a client failed")?;
        latencies.extend(log.latencies);
        for (status, n) in log.errors {
            *errors.entry(status).or_default() += n;
        }
        first_error = first_error.or(log.first_error);
    }
    let seconds = started.elapsed().as_secs_f64();
    latencies.sort_unstable();
    let requests = latencies.len();
    let items = requests * spec.items;
    let ms = |q: f64| -> Option<f64> {
        if latencies.is_empty() {
            return None;
        }
        // Nearest rank.
        let rank = ((q * latencies.len() as f64).ceil() as usize).clamp(1, latencies.len());
        Some(latencies[rank - 1] as f64 / 1e3)
    };
    Ok(RunResult {
        workload: spec.workload,
        clients: spec.clients,
        requests,
        items,
        errors,
        first_error,
        seconds,
        items_per_s: items as f64 / seconds,
        requests_per_s: requests as f64 / seconds,
        p50_ms: ms(0.5),
        p99_ms: ms(0.99),
        max_ms: ms(1.0),
        commits: None,
        writes_per_commit: None,
        offline_ratio: None,
    })
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// A keep-alive HTTP/1.1 connection to `addr`.
async fn connect(addr: SocketAddr) -> Result<Sender> {
    let stream = tokio::net::TcpStream::connect(addr)
        .await
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    let (sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    Ok(sender)
}

/// Client `c`'s request number `n`; Err((status, answer)) when refused (status 0: the
/// connection failed).
async fn send(
    sender: &mut Sender,
    spec: &RunSpec,
    c: usize,
    n: usize,
) -> Result<(), (u16, String)> {
    let lost = |e: &dyn std::fmt::Display| (0u16, format!("connection: {e}"));
    let body = spec.bodies[(c * 7 + n) % spec.bodies.len()].clone();
    let path = match spec.workload {
        Workload::Features | Workload::Text => "/v1/rewards".to_string(),
        // Each writer has its own users, each getting PAIRS_PER_USER pairs at most.
        Workload::Writes => format!(
            "/v1/users/bench-{}-{c}-{}/preferences",
            spec.tag,
            n / PAIRS_PER_USER
        ),
    };
    let request = Request::builder()
        .method(Method::POST)
        .uri(path)
        .header(header::HOST, spec.addr.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(body))
        .map_err(|e| lost(&e))?;
    sender.ready().await.map_err(|e| lost(&e))?;
    let response = sender.send_request(request).await.map_err(|e| lost(&e))?;
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(|e| lost(&e))?
        .to_bytes();
    if status != StatusCode::OK || !answer_is_complete(spec, &body) {
        let answer = String::from_utf8_lossy(&body[..body.len().min(300)]).into_owned();
        return Err((status.as_u16(), answer));
    }
    Ok(())
}

/// Whether a 200 answer holds what was asked: `items` finite rewards, or the written user.
fn answer_is_complete(spec: &RunSpec, body: &[u8]) -> bool {
    #[derive(serde::Deserialize)]
    struct Rewards {
        rewards: Vec<f64>,
    }
    #[derive(serde::Deserialize)]
    struct Written {
        pairs: u64,
        weights: Vec<f64>,
    }
    match spec.workload {
        Workload::Features | Workload::Text => {
            serde_json::from_slice::<Rewards>(body).is_ok_and(|r| {
                r.rewards.len() == spec.items && r.rewards.iter().all(|x| x.is_finite())
            })
        }
        Workload::Writes => serde_json::from_slice::<Written>(body)
            .is_ok_and(|w| w.pairs >= 1 && !w.weights.is_empty()),
    }
}

/// The goals, for the runs that measure them.
fn goals(runs: &[RunResult], items: usize, features: usize) -> Vec<Goal> {
    let find = |w: Workload, c: usize| runs.iter().find(|r| r.workload == w && r.clients == c);
    let ms = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.1} ms"));
    let mut goals = Vec::new();
    if items == 32 && features == 384 {
        if let Some(r) = find(Workload::Features, 16) {
            goals.push(Goal {
                goal: "features-in rewards >= 20,000 items/s with p99 <= 20 ms at 16 clients",
                measured: format!("{:.0} items/s, p99 {}", r.items_per_s, ms(r.p99_ms)),
                met: r.items_per_s >= 20_000.0 && r.p99_ms.is_some_and(|p| p <= 20.0),
            });
        }
        if let Some(r) = runs
            .iter()
            .filter(|r| r.workload == Workload::Text && r.offline_ratio.is_some())
            .max_by(|a, b| a.items_per_s.total_cmp(&b.items_per_s))
        {
            let ratio = r.offline_ratio.unwrap_or(0.0);
            goals.push(Goal {
                goal: "text rewards >= 90% of lore embed's offline texts/s",
                measured: format!(
                    "{:.0}% ({:.1} texts/s at {} clients)",
                    ratio * 100.0,
                    r.items_per_s,
                    r.clients
                ),
                met: ratio >= 0.9,
            });
        }
    }
    if let Some(r) = find(Workload::Writes, 64) {
        goals.push(Goal {
            goal: "preference writes >= 2,000 acknowledged/s with p99 <= 25 ms at 64 writers",
            measured: format!("{:.0} writes/s, p99 {}", r.items_per_s, ms(r.p99_ms)),
            met: r.items_per_s >= 2_000.0 && r.p99_ms.is_some_and(|p| p <= 25.0),
        });
    }
    goals
}

fn print_table(report: &Report) {
    println!(
        "lore serve on loopback: model {} (F = {}, K = {}), {} items a request, {} cores shared by server and clients",
        report.model, report.features, report.rank, report.items_per_request, report.cores
    );
    println!(
        "{:<9} {:>7} {:>9} {:>11} {:>9} {:>9} {:>9}  notes",
        "workload", "clients", "requests", "items/s", "p50 ms", "p99 ms", "max ms"
    );
    let ms = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{x:.2}"));
    for r in &report.runs {
        let mut notes = Vec::new();
        if let Some(ratio) = r.offline_ratio {
            notes.push(format!("{:.0}% of offline", ratio * 100.0));
        }
        if let (Some(commits), Some(per)) = (r.commits, r.writes_per_commit) {
            notes.push(format!("{commits} commits, {per:.1} writes/commit"));
        }
        for (status, n) in &r.errors {
            notes.push(match status {
                0 => format!("{n} connection errors"),
                s => format!("{n} answered {s}"),
            });
        }
        if let Some(answer) = &r.first_error {
            notes.push(format!("first: {}", answer.trim()));
        }
        println!(
            "{:<9} {:>7} {:>9} {:>11.1} {:>9} {:>9} {:>9}  {}",
            r.workload.name(),
            r.clients,
            r.requests,
            r.items_per_s,
            ms(r.p50_ms),
            ms(r.p99_ms),
            ms(r.max_ms),
            notes.join("; ")
        );
    }
    if let Some(o) = &report.offline_embed {
        println!(
            "offline (lore embed's path): {} texts, {} tokens, {:.1} texts/s in the model ({:.2} s; {:.2} s with tokenizing)",
            o.texts, o.tokens, o.texts_per_s, o.embed_seconds, o.wall_seconds
        );
    }
    if let Some(f) = &report.fsync {
        println!(
            "fsync beside the store: {:.0} fsyncs/s ({:.2} ms each, {} in {:.1} s)",
            f.fsyncs_per_s, f.mean_ms, f.fsyncs, f.seconds
        );
    }
    for g in &report.goals {
        println!(
            "goal {}: {} ({})",
            if g.met { "met" } else { "MISSED" },
            g.goal,
            g.measured
        );
    }
}
