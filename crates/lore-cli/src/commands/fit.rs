//! `lore fit`: learn a shared basis V and per-user weights W.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use lore_core::{evaluate, fit, FitParams, Method};
use lore_io::PreferenceFile;
use serde_json::json;

use super::check_output_path;
use crate::files::{read_fit_init, read_v_ref, write_model, FitProvenance};
use crate::progress::{Trace, Ui};

/// Fit a shared reward basis V [F x K] and per-user weights W [N x K] on many users' pairs.
///
/// Two methods follow the reference implementation exactly:
///
/// `lore` (class LoRe): one Adam over W and V on the sum over users of each user's mean
/// -log sigmoid(c x . V softmax(W_u)), plus alpha * sum_j ||V_j - v_ref||^2. W ~ N(0,1).
///
/// `regularized` (class LoRe_regularized): per step a W-step on the mean NLL over all pairs,
/// then a V-step on that NLL plus alpha_t * mean_j (1 - cos(V_j, v_ref)), with alpha_t ramping
/// from 0 (before 20% of the steps) to alpha (from 80% on). W ~ U[0,1). Afterwards columns no
/// user weighs at least --prune-threshold are dropped.
///
/// Example: lore fit --data train.safetensors --method regularized --rank 8 --alpha 10
///          --v-ref head.safetensors --iterations 2000 --lr 0.05 --out model.safetensors
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct FitArgs {
    /// Preference file: `x` [P,F] (f32, f16 or bf16) or `chosen` and `rejected` [P,F], and
    /// `user` [P] (integer user index 0..N-1); optional metadata `user_ids`.
    #[arg(long, value_name = "FILE")]
    data: PathBuf,

    /// Training method: `lore` or `regularized`.
    #[arg(long, default_value = "lore", value_name = "METHOD")]
    method: String,

    /// Number of basis columns K (may be left out with --init, which fixes K).
    #[arg(long, short = 'k', value_name = "K")]
    rank: Option<usize>,

    /// Strength of the pull toward v_ref (L2 for lore, cosine for regularized); > 0 needs --v-ref.
    #[arg(long, default_value_t = 0.0, value_name = "A")]
    alpha: f64,

    /// File with a tensor `v_ref` ([F] or [F,1]): the reference reward head.
    #[arg(long, value_name = "FILE")]
    v_ref: Option<PathBuf>,

    /// Number of optimizer steps, run exactly.
    #[arg(long, short = 't', default_value_t = 1000, value_name = "T")]
    iterations: usize,

    /// Adam learning rate (the paper uses 0.5).
    #[arg(long, default_value_t = 0.01, value_name = "LR")]
    lr: f64,

    /// Seed of the random initialization; the same seed gives the same model, bit for bit.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,

    /// Drop columns whose largest user weight is below P (default 0.01 for regularized, 0 =
    /// keep all for lore).
    #[arg(long, value_name = "P")]
    prune_threshold: Option<f64>,

    /// c in P(chosen > rejected) = sigmoid(c * x . V w); the reference uses 1/100.
    #[arg(long, default_value_t = 0.01, value_name = "C")]
    logit_scale: f64,

    /// Start from tensors `W0` [N,K] (logits) and `V0` [F,K] of this file instead of a random draw.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,

    /// Write one JSON line per step: step, nll, reg, alpha (lore) or step, nll_w, nll_v, reg,
    /// alpha (regularized).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,

    /// Output model file (safetensors): V, W, W_logits, v_ref and the run's metadata.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: FitArgs, ui: &Ui) -> Result<()> {
    let method: Method = args.method.parse()?;
    check_output_path(&args.out)?;
    if let Some(trace) = &args.trace {
        check_output_path(trace)?;
    }
    let init = args.init.as_deref().map(read_fit_init).transpose()?;
    let rank = match (args.rank, &init) {
        (Some(k), Some((_, _, k_init, _))) if k != *k_init => bail!(
            "--rank {k} does not match the initial values in {} (K = {k_init})",
            args.init.as_ref().unwrap().display()
        ),
        (Some(k), _) => k,
        (None, Some((_, _, k, _))) => *k,
        (None, None) => bail!("--rank is required (or give --init, whose tensors fix K)"),
    };
    let mut params = FitParams::new(method, rank)
        .alpha(args.alpha)
        .iterations(args.iterations)
        .learning_rate(args.lr)
        .logit_scale(args.logit_scale)
        .seed(args.seed);
    params.prune_threshold = args.prune_threshold;
    let params = params.check()?;
    if params.alpha() > 0.0 && args.v_ref.is_none() {
        bail!(
            "--alpha {} pulls the basis toward a reference head: give --v-ref FILE",
            params.alpha()
        );
    }

    let file = PreferenceFile::load(&args.data)?;
    let data = file.view();
    let v_ref = args.v_ref.as_deref().map(read_v_ref).transpose()?;
    if let (Some((n, f, _, _)), Some(path)) = (&init, &args.init) {
        if (*n, *f) != (data.n_users(), data.n_features()) {
            bail!(
                "{}: initial values are for N = {n} users and F = {f} features, but {} has N = {} and F = {}",
                path.display(),
                args.data.display(),
                data.n_users(),
                data.n_features()
            );
        }
    }
    if let (Some(v), Some(path)) = (&v_ref, &args.v_ref) {
        if v.len() != data.n_features() {
            bail!(
                "{}: `v_ref` has F = {}, but {} has F = {}",
                path.display(),
                v.len(),
                args.data.display(),
                data.n_features()
            );
        }
    }

    ui.note(format!(
        "fitting {} (K = {rank}) on {} users, {} pairs, F = {} ({})",
        method.name(),
        data.n_users(),
        data.n_rows(),
        data.n_features(),
        file.dtype_name()
    ));
    let started = Instant::now();
    let bar = ui.steps(params.iterations(), "fit");
    let mut trace = Trace::new(args.trace.as_deref());
    let model = fit(
        &params,
        &data,
        v_ref.as_deref(),
        init.as_ref().map(|(_, _, _, init)| init),
        |step| {
            match step.nll_after_weights {
                None => trace.record(json!({
                    "step": step.step, "nll": step.nll, "reg": step.reg, "alpha": step.alpha,
                })),
                Some(nll_v) => trace.record(json!({
                    "step": step.step, "nll_w": step.nll, "nll_v": nll_v, "reg": step.reg,
                    "alpha": step.alpha,
                })),
            }
            bar.set_position(step.step as u64 + 1);
            bar.set_message(format!("nll {:.5}", step.nll));
            ControlFlow::Continue(())
        },
    )
    .with_context(|| format!("fitting {}", args.data.display()))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    write_model(
        &args.out,
        &model,
        &params,
        &FitProvenance {
            data: &args.data,
            user_ids: file.user_ids(),
            v_ref: v_ref.as_deref(),
            initialized_from: args.init.as_deref(),
        },
    )?;
    trace.finish()?;

    let accuracy = evaluate(&model.basis, &model.users, &data)?;
    ui.note(format!(
        "{} steps in {:.2?} ({:.2} ms/step); kept {} of {} columns; training accuracy {:.4} ± {:.4} over users",
        model.steps,
        elapsed,
        elapsed.as_secs_f64() * 1e3 / model.steps.max(1) as f64,
        model.kept.len(),
        rank,
        accuracy.mean,
        accuracy.std
    ));
    ui.note(format!("wrote {}", args.out.display()));
    Ok(())
}
