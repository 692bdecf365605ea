//! `lore bench`: time fit and personalization steps on synthetic data of a given size.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use half::bf16;
use lore_core::{
    fit, personalize, FitInit, FitOptions, FitParams, Method, PersonalizeOptions,
    PersonalizeParams, Precision, Preferences, RewardBasis, DEFAULT_LOGIT_SCALE,
};
use lore_io::PreferenceFile;
use rand::{RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::check_outputs;
use crate::choice::{self, choice_enum, Storage};
use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;
use crate::sizes;

/// Time fit and personalization steps on synthetic data: ms per step, GFLOP/s and GB/s.
///
/// The features are generated in memory, or written to a safetensors file and memory-mapped with
/// --file. Reports ms per step (median, min, max over the timed steps), achieved GFLOP/s and
/// GB/s, and the fraction of this machine's GEMM peak, measured by the same run on a square f32
/// product (faer, all threads).
///
/// A step of fit reads X once; per user it computes v = V w, the scores X_u v (2 n F flops),
/// the row sums g = X_u^T d (2 n F), V^T g and G += g w^T (2 F K each); the regularized method
/// scores again with the updated weights (at K <= 8 it computes S = X V instead, 2 P F K flops,
/// not counted so). The memory floor line times a plain read of the same
/// features with the same threads in the same run, and prints the step as a multiple of it.
///
/// Example (the paper's PRISM size): lore bench --users 1000 --pairs 30 --features 4096 --rank 25
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment, args_conflicts_with_subcommands = true)]
#[serde(rename_all = "kebab-case")]
pub struct BenchArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,
    /// `lore bench serve`: the reward service under load, instead of the fit's steps.
    #[cfg(feature = "serve")]
    #[command(subcommand)]
    #[serde(skip)]
    pub command: Option<BenchCommand>,
    /// What to time: a fit method, or personalization (Z = X V once, then Adam iterations).
    #[arg(long, value_name = "WHAT", value_parser = choice::parser::<Timed>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    method: Option<Timed>,
    /// Number of users N.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<usize>,
    /// Pairs per user.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pairs: Option<usize>,
    /// Feature dimension F.
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<usize>,
    /// Rank K.
    #[arg(long, short = 'k', value_name = "K")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rank: Option<usize>,
    /// Storage precision of the features.
    #[arg(long, value_name = "DTYPE", value_parser = choice::parser::<Storage>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    dtype: Option<Storage>,
    /// Arithmetic of the fit's passes: f32, or bf16 products summed in f32 (needs AVX512-BF16).
    #[arg(long, value_name = "PRECISION", value_parser = choice::parser::<Precision>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    precision: Option<Precision>,
    /// Timed steps (after the warm-up).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    steps: Option<usize>,
    /// Untimed warm-up steps.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    warmup: Option<usize>,
    /// Personalization: the Adam steps whose time after Z = X V is projected.
    #[arg(long, value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    personalize_iterations: Option<usize>,
    /// Write the data to this safetensors file and time the memory-mapped file (else in memory).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    file: Option<PathBuf>,
    /// Skip the square-GEMM peak measurement.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    no_peak: bool,
    /// Print one JSON object instead of a table.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    json: bool,
}

/// The resolved options of `lore bench`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct BenchConfig {
    #[serde(with = "choice::name")]
    method: Timed,
    users: usize,
    pairs: usize,
    features: usize,
    rank: usize,
    #[serde(with = "choice::name")]
    dtype: Storage,
    #[serde(with = "choice::name")]
    precision: Precision,
    steps: usize,
    warmup: usize,
    personalize_iterations: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    file: Option<PathBuf>,
    no_peak: bool,
    json: bool,
}

impl Default for BenchConfig {
    /// The paper's PRISM size (N = 1000, 30 pairs each, F = 4096, K = 25), regularized, f32.
    fn default() -> Self {
        Self {
            method: Timed::Regularized,
            users: 1000,
            pairs: 30,
            features: 4096,
            rank: 25,
            dtype: Storage::F32,
            precision: Precision::default(),
            steps: 10,
            warmup: 2,
            personalize_iterations: PersonalizeParams::default().iterations,
            file: None,
            no_peak: false,
            json: false,
        }
    }
}

impl Configurable for BenchArgs {
    type Options = BenchConfig;
    fn defaults() -> BenchConfig {
        BenchConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
}

/// What `lore bench` times besides the fit's steps.
#[cfg(feature = "serve")]
#[derive(clap::Subcommand, Debug)]
pub enum BenchCommand {
    Serve(super::bench_serve::BenchServeArgs),
}

choice_enum! {
    /// What `lore bench` times.
    pub enum Timed ("bench method") {
        /// A fit with the regularized method.
        Regularized = "regularized",
        /// A fit with the lore method.
        Lore = "lore",
        /// Personalization with a fixed basis.
        Personalize = "personalize",
    }
}

/// Deterministic synthetic features in [-1, 1) (ChaCha8, the workspace's one random
/// generator family; 24 random bits per value).
fn synthetic_features(len: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..len)
        .map(|_| (rng.next_u32() >> 8) as f32 / (1u32 << 23) as f32 - 1.0)
        .collect()
}

/// Milliseconds since `last`, which moves to now.
fn lap(last: &mut Instant) -> f64 {
    let now = Instant::now();
    let ms = (now - *last).as_secs_f64() * 1e3;
    *last = now;
    ms
}

/// Streams synthetic rows straight into a preference file (`x` and `user`), so that files
/// larger than memory can be made.
fn write_synthetic_file(
    path: &std::path::Path,
    users: &[u32],
    f: usize,
    dtype: Storage,
) -> Result<()> {
    use std::io::Write;
    let p = users.len();
    let (name, width) = match dtype {
        Storage::F32 => ("F32", 4),
        Storage::Bf16 => ("BF16", 2),
    };
    let x_bytes = p * f * width;
    let header = json!({
        "x": {"dtype": name, "shape": [p, f], "data_offsets": [0, x_bytes]},
        "user": {"dtype": "I64", "shape": [p], "data_offsets": [x_bytes, x_bytes + 8 * p]},
        "__metadata__": {"format": "\"lore\"", "format_version": "1", "synthetic": "true"},
    })
    .to_string();
    let mut header = header.into_bytes();
    while !header.len().is_multiple_of(8) {
        header.push(b' ');
    }
    lore_io::write_atomic_with(path, |out| {
        out.write_all(&(header.len() as u64).to_le_bytes())?;
        out.write_all(&header)?;
        let rows_per_batch = (1 << 22) / f + 1;
        let mut bytes = Vec::new();
        for (batch, start) in (0..p).step_by(rows_per_batch).enumerate() {
            let rows = rows_per_batch.min(p - start);
            let values = synthetic_features(rows * f, 1 + batch as u64);
            bytes.clear();
            match dtype {
                Storage::F32 => values
                    .iter()
                    .for_each(|v| bytes.extend_from_slice(&v.to_le_bytes())),
                Storage::Bf16 => values
                    .iter()
                    .for_each(|&v| bytes.extend_from_slice(&bf16::from_f32(v).to_le_bytes())),
            }
            out.write_all(&bytes)?;
        }
        for &u in users {
            out.write_all(&(u as i64).to_le_bytes())?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Median, min and max of a list of timings.
fn summary(mut ms: Vec<f64>) -> (f64, f64, f64) {
    ms.sort_by(f64::total_cmp);
    let median = if ms.len() % 2 == 1 {
        ms[ms.len() / 2]
    } else {
        (ms[ms.len() / 2 - 1] + ms[ms.len() / 2]) / 2.0
    };
    (median, ms[0], ms[ms.len() - 1])
}

/// GFLOP/s of a square f32 product C = A B of size n with faer on the current thread pool.
fn gemm_peak(n: usize) -> f64 {
    use faer::{linalg::matmul::matmul, Accum, Mat, Par};
    let a = Mat::<f32>::from_fn(n, n, |i, j| ((i * 7 + j * 3) % 11) as f32 - 5.0);
    let b = Mat::<f32>::from_fn(n, n, |i, j| ((i * 5 + j) % 13) as f32 - 6.0);
    let mut c = Mat::<f32>::zeros(n, n);
    let par = Par::rayon(rayon::current_num_threads());
    let mut best = f64::INFINITY;
    for _ in 0..4 {
        let t = Instant::now();
        matmul(c.as_mut(), Accum::Replace, a.as_ref(), b.as_ref(), 1.0, par);
        best = best.min(t.elapsed().as_secs_f64());
    }
    2.0 * (n as f64).powi(3) / best / 1e9
}

pub fn run(flags: BenchArgs, ui: &Ui) -> Result<()> {
    let args = config::options(&flags)?;
    if args.users == 0 || args.pairs == 0 || args.features == 0 || args.rank == 0 || args.steps == 0
    {
        bail!("--users, --pairs, --features, --rank and --steps must be at least 1");
    }
    check_bench_sizes(&args)?;
    // Before any work: the data file must be writable and must not replace the config file.
    let checked = check_outputs(
        &[("--file", args.file.as_deref())],
        &[("--config", flags.config.path.as_deref())],
        ui,
    )?;
    let (n, f, k) = (args.users, args.features, args.rank);
    let p = n * args.pairs;
    let users: Vec<u32> = (0..p).map(|i| (i / args.pairs) as u32).collect();
    let in_memory;
    let mapped;
    let data = match &args.file {
        Some(path) => {
            ui.note(format!(
                "writing {p} x {f} synthetic features ({:?}) to {}",
                args.dtype,
                path.display()
            ));
            let path = checked.path("--file").unwrap_or(path);
            write_synthetic_file(path, &users, f, args.dtype)?;
            mapped = PreferenceFile::load(path)?;
            mapped.view()
        }
        None => {
            ui.note(format!(
                "generating {p} x {f} synthetic features ({:?})",
                args.dtype
            ));
            let x = synthetic_features(p * f, 1);
            in_memory = match args.dtype {
                Storage::F32 => lore_io::OwnedFeatures::F32(x),
                Storage::Bf16 => {
                    lore_io::OwnedFeatures::Bf16(x.iter().map(|&v| bf16::from_f32(v)).collect())
                }
            };
            Preferences::from_sorted_users(in_memory.rows(), f, &users)?
        }
    };

    let total = args.warmup + args.steps;
    let mut step_ms = Vec::with_capacity(total);
    let bar = ui.steps(total, "bench");
    let mut setup_ms = 0.0;
    let mut floor_ms = Vec::new();
    match args.method {
        Timed::Regularized | Timed::Lore => {
            let method = if args.method == Timed::Lore {
                Method::Lore
            } else {
                Method::Regularized
            };
            let params = FitParams::new(method, k)
                .iterations(total)
                .precision(args.precision)
                .check()?;
            let init = FitInit::random(method, n, f, k, 0);
            let mut last = Instant::now();
            let options = FitOptions {
                init: Some(&init),
                ..FitOptions::default()
            };
            let bytes = data.row_bytes(0..p);
            fit(&params, &data, &options, |_| {
                step_ms.push(lap(&mut last));
                // The memory floor, read between the steps so that both see the same machine.
                floor_ms.push(stream_ms(bytes));
                bar.inc(1);
                last = Instant::now();
                ControlFlow::Continue(())
            })?;
        }
        Timed::Personalize => {
            let basis = RewardBasis::new(f, k, synthetic_features(f * k, 2), DEFAULT_LOGIT_SCALE)?;
            let params = PersonalizeParams::default().iterations(total).check()?;
            // Steps run in segments, user by user: the observer hears a segment's steps in a
            // burst when it ends, so time whole segments (the first includes Z = X V).
            let segment = lore_core::SEGMENT_STEPS;
            let started = Instant::now();
            let mut bursts = Vec::new();
            personalize(
                &params,
                &basis,
                &data,
                &PersonalizeOptions::default(),
                |step| {
                    if step.step % segment == 0 {
                        bursts.push((step.step, started.elapsed().as_secs_f64() * 1e3));
                    }
                    bar.inc(1);
                    ControlFlow::Continue(())
                },
            )?;
            // A burst at step s comes right after the segment from s is computed.
            setup_ms = bursts[0].1;
            step_ms.push(f64::NAN);
            for pair in bursts.windows(2) {
                let ((s0, t0), (s1, t1)) = (pair[0], pair[1]);
                step_ms.extend(std::iter::repeat_n((t1 - t0) / (s1 - s0) as f64, s1 - s0));
            }
        }
    }
    bar.finish_and_clear();
    // The memory floor: the same bytes streamed with the same threads, after each step.
    let floor_ms = (!floor_ms.is_empty())
        .then(|| summary(floor_ms[args.warmup.min(floor_ms.len() - 1)..].to_vec()).0);
    let timed: Vec<f64> = step_ms[args.warmup.min(step_ms.len() - 1)..]
        .iter()
        .copied()
        .filter(|v| v.is_finite())
        .collect();
    if timed.is_empty() {
        bail!("no timed steps: use --steps >= 1 (and --warmup >= 1 for personalize)");
    }
    let (median, min, max) = summary(timed);
    let bytes_per_value = match args.dtype {
        Storage::F32 => 4.0,
        Storage::Bf16 => 2.0,
    };
    // Per user, a pass of scores (2 n F) and row sums (2 n F) over X_u, and products with V
    // (2 F K each): V w, V^T g and G += g w^T; the regularized method scores again with the
    // updated weights (a second V w and pass).
    let (pf, nfk) = (p as f64 * f as f64, n as f64 * f as f64 * k as f64);
    let (flops, bytes) = match args.method {
        Timed::Personalize => (0.0, 0.0),
        Timed::Lore => (4.0 * pf + 6.0 * nfk, pf * bytes_per_value),
        Timed::Regularized => (8.0 * pf + 8.0 * nfk, pf * bytes_per_value),
    };
    let gflops = flops / (median / 1e3) / 1e9;
    let gbps = bytes / (median / 1e3) / 1e9;
    let peak = (!args.no_peak).then(|| gemm_peak(2048));
    let threads = rayon::current_num_threads();
    if args.json {
        println!(
            "{}",
            json!({
                "method": format!("{:?}", args.method).to_lowercase(), "users": n,
                "pairs_per_user": args.pairs, "features": f, "rank": k,
                "dtype": format!("{:?}", args.dtype).to_lowercase(), "threads": threads,
                "precision": args.precision.name(),
                "mapped_file": args.file.is_some(),
                "ms_per_step": {"median": median, "min": min, "max": max},
                "setup_ms": setup_ms, "gflops": gflops, "gbps": gbps, "gemm_peak_gflops": peak,
                "floor_ms": floor_ms, "floor_multiple": floor_ms.map(|floor| median / floor),
            })
        );
    } else {
        println!(
            "{:?} N={n} P={p} F={f} K={k} {:?} precision={} threads={threads}{}",
            args.method,
            args.dtype,
            args.precision.name(),
            if args.file.is_some() {
                " (mapped file)"
            } else {
                ""
            }
        );
        println!("  ms/step   median {median:.2}  min {min:.2}  max {max:.2}");
        if let Some(floor) = floor_ms {
            println!(
                "  memory floor {floor:.2} ms (one read of the features, same threads): the step is {:.2}x it",
                median / floor
            );
        }
        if args.method == Timed::Personalize {
            let t = args.personalize_iterations;
            println!(
                "  Z = X V and the first {} iterations: {setup_ms:.2} ms; {t} iterations would take {:.1} ms after Z",
                lore_core::SEGMENT_STEPS,
                median * t as f64
            );
        } else if let Some(peak) = peak {
            println!(
                "  {gflops:.1} GFLOP/s ({:.0}% of the square-GEMM peak {peak:.1} GFLOP/s), {gbps:.1} GB/s",
                100.0 * gflops / peak
            );
        } else {
            println!("  {gflops:.1} GFLOP/s, {gbps:.1} GB/s");
        }
    }
    Ok(())
}

/// Milliseconds to read `bytes` once with the current threads (a byte-wise XOR of each
/// chunk, which the compiler turns into vector loads: the time is the memory's).
fn stream_ms(bytes: &[u8]) -> f64 {
    const CHUNK: usize = 1 << 20;
    let started = Instant::now();
    let folded = bytes
        .par_chunks(CHUNK)
        .map(|chunk| chunk.iter().fold(0u8, |a, &b| a ^ b))
        .reduce(|| 0, |a, b| a ^ b);
    std::hint::black_box(folded);
    started.elapsed().as_secs_f64() * 1e3
}

/// Refuses, before generating anything, sizes the machine cannot hold: K > F, more users
/// than the u32 user index holds, and runs whose features, fit and timings exceed the memory
/// available.
fn check_bench_sizes(args: &BenchConfig) -> Result<()> {
    let (n, f, k) = (args.users, args.features, args.rank);
    if k > f {
        bail!(
            "invalid --rank: {k} exceeds --features {f} (the basis V [F x K] has rank at most F)"
        );
    }
    if n > u32::MAX as usize {
        bail!("invalid --users: {n} (at most {})", u32::MAX);
    }
    let flags = format!(
        "--users {n} --pairs {} --features {f} --rank {k} --steps {} --warmup {}",
        args.pairs, args.steps, args.warmup
    );
    let needed = || -> Option<u64> {
        let p = n.checked_mul(args.pairs)?;
        let features = match (&args.file, args.dtype) {
            (Some(_), _) => 0,
            (None, Storage::F32) => (p as u64).checked_mul(f as u64)?.checked_mul(4)?,
            (None, Storage::Bf16) => (p as u64).checked_mul(f as u64)?.checked_mul(6)?,
        };
        let work = match args.method {
            Timed::Personalize => lore_core::personalize_memory(n, p, f, k)?
                .checked_add((f as u64).checked_mul(k as u64)?.checked_mul(4)?)?,
            _ => lore_core::fit_memory(n, p, f, k)?,
        };
        let timings = (args.warmup as u64)
            .checked_add(args.steps as u64)?
            .checked_mul(2 * 8)?;
        features
            .checked_add((p as u64).checked_mul(4)?)?
            .checked_add(work)?
            .checked_add(timings)
    };
    sizes::ensure_fits(
        &flags,
        "the synthetic features, the run's working memory and the step timings",
        needed(),
    )
}
