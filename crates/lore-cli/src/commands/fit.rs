//! `lore fit`: learn a shared basis V and per-user weights W.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use lore_core::{
    evaluate, fit, fit_bradley_terry, FitOptions, FitParams, HeldOutRows, Method, Precision,
};
use lore_io::{
    read_v_ref, EmbedderIdentity, FitInitFile, FitProvenance, ModelFile, PreferenceFile,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{check_outputs, hold_out, is_bt, prune_note, stopping_notes, StoppingArgs};
use crate::choice;
use crate::config::{self, ConfigFlag, Configurable};
use crate::progress::Ui;
use crate::sizes;
use lore_io::Trace;

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
/// Early stopping: --validation-fraction P holds out that share of each user's pairs (drawn
/// with --seed; every user keeps at least one training pair), fits on the rest, scores the
/// held-out pairs every --eval-every steps and stops after --patience scores without a new
/// best. --iterations is then the maximum, and the state with the lowest validation loss is
/// the one kept (and pruned). The model's metadata `early_stopping` records what happened.
///
/// --v-ref bt: instead of a reference head from a file, first fit one shared Bradley-Terry
/// reward (K = 1, alpha 0, otherwise the same settings and training pairs, early-stopped too
/// if asked) and pull the basis toward its direction. It is stored as `v_ref`.
///
/// The model file also holds `prior_logits` [K], the log of the users' mean weights: the
/// prior and starting point of `lore personalize --prior-strength`, and, when the data records
/// it (files of `lore embed` and `lore split`), metadata `embedder`: how the features were made,
/// which `lore serve` uses. A --v-ref file that records another embedder is refused.
///
/// Example: lore fit --data train.safetensors --method regularized --rank 8 --alpha 10
///          --v-ref head.safetensors --iterations 2000 --lr 0.05 --out model.safetensors
///          lore fit --data train.safetensors --rank 4 --alpha 1 --v-ref bt --lr 0.5
///          --iterations 5000 --validation-fraction 0.2 --out model.safetensors
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
#[serde(rename_all = "kebab-case")]
pub struct FitArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Preference file: `x` [P,F] (f32, f16 or bf16) or `chosen` and `rejected` [P,F], and
    /// `user` [P] (integer user index 0..N-1); optional metadata `user_ids` [required].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,

    /// Training method.
    #[arg(long, value_name = "METHOD", value_parser = choice::parser::<Method>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    method: Option<Method>,

    /// Number of basis columns K, at most the F features (may be left out with --init, which
    /// fixes K).
    #[arg(long, short = 'k', value_name = "K")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rank: Option<usize>,

    /// Strength of the pull toward v_ref (L2 for lore, cosine for regularized); > 0 needs --v-ref.
    #[arg(long, value_name = "A")]
    #[serde(skip_serializing_if = "Option::is_none")]
    alpha: Option<f64>,

    /// File with a tensor `v_ref` ([F] or [F,1]): the reference reward head; or `bt` to fit one
    /// shared Bradley-Terry reward (K = 1, alpha 0) first and use its direction.
    #[arg(long, value_name = "FILE|bt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    v_ref: Option<PathBuf>,

    /// Number of optimizer steps, run exactly (the maximum with --validation-fraction).
    #[arg(long, short = 't', value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    iterations: Option<usize>,

    /// Adam learning rate (the paper's experiments use `lore sweep`'s default).
    #[arg(long, value_name = "LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,

    /// Seed of the random initialization; the same seed gives the same model, bit for bit.
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,

    /// Drop columns whose largest user weight is below P.
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prune_threshold: Option<f64>,

    /// c in P(chosen > rejected) = sigmoid(c * x . V w) (the default is the reference's).
    #[arg(long, value_name = "C")]
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_scale: Option<f64>,

    /// Arithmetic of the passes over the data: `f32`, or `bf16`: features, V and residuals
    /// rounded to bf16 and their products summed in f32, about twice as fast at K = 25 on CPUs
    /// with AVX512-BF16 (refused on others).
    #[arg(long, value_name = "PRECISION", value_parser = choice::parser::<Precision>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    precision: Option<Precision>,

    /// Start from tensors `W0` [N,K] (logits) and `V0` [F,K] of this file instead of a random draw.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    init: Option<PathBuf>,

    /// Write one JSON line per step: step, nll, reg, alpha (lore) or step, nll_w, nll_v, reg,
    /// alpha (regularized).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    trace: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    stopping: StoppingArgs,

    /// Output model file (safetensors): V, W, W_logits, prior_logits, v_ref and the run's
    /// metadata [required].
    #[arg(long, short = 'o', value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
}

/// The resolved options of `lore fit`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct FitConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,
    #[serde(with = "choice::name")]
    method: Method,
    #[serde(skip_serializing_if = "Option::is_none")]
    rank: Option<usize>,
    alpha: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    v_ref: Option<PathBuf>,
    iterations: usize,
    lr: f64,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    prune_threshold: Option<f64>,
    logit_scale: f64,
    #[serde(with = "choice::name")]
    precision: Precision,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    init: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    trace: Option<PathBuf>,
    #[serde(flatten)]
    stopping: StoppingArgs,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
}

impl Default for FitConfig {
    /// The library's defaults ([`FitParams::new`]); no file is named.
    fn default() -> Self {
        let p = FitParams::new(Method::default(), 1);
        Self {
            data: None,
            method: p.method,
            rank: None,
            alpha: p.alpha,
            v_ref: None,
            iterations: p.iterations,
            lr: p.learning_rate,
            seed: p.seed,
            prune_threshold: p.prune_threshold,
            logit_scale: p.logit_scale,
            precision: p.precision,
            init: None,
            trace: None,
            stopping: StoppingArgs::default(),
            out: None,
        }
    }
}

impl Configurable for FitArgs {
    type Options = FitConfig;
    fn defaults() -> FitConfig {
        FitConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
    fn default_notes() -> Vec<(&'static str, String)> {
        let mut notes = stopping_notes();
        notes.push(prune_note());
        notes
    }
}

pub fn run(flags: FitArgs, ui: &Ui) -> Result<()> {
    let args = config::options(&flags)?;
    let data_path = config::required(&args.data, "--data FILE")?;
    let out = config::required(&args.out, "--out FILE")?;
    let method = args.method;
    // Before any work: no output may replace an input or another output, or be unwritable.
    let checked = check_outputs(
        &[("--out", Some(out)), ("--trace", args.trace.as_deref())],
        &[
            ("--data", Some(data_path)),
            ("--init", args.init.as_deref()),
            ("--v-ref", args.v_ref.as_deref().filter(|p| !is_bt(p))),
            ("--config", flags.config.path.as_deref()),
        ],
        ui,
    )?;
    let (given_out, out) = (out, checked.path("--out").unwrap_or(out));
    let stopping = args.stopping.resolve()?;
    let init = args.init.as_deref().map(FitInitFile::read).transpose()?;
    let rank = match (args.rank, &init) {
        (Some(k), Some(FitInitFile { rank: k_init, .. })) if k != *k_init => bail!(
            "--rank {k} does not match the initial values in {} (K = {k_init})",
            args.init.as_ref().unwrap().display()
        ),
        (Some(k), _) => k,
        (None, Some(FitInitFile { rank: k, .. })) => *k,
        (None, None) => bail!("--rank is required (or give --init, whose tensors fix K)"),
    };
    let params = FitParams::new(method, rank)
        .alpha(args.alpha)
        .iterations(args.iterations)
        .learning_rate(args.lr)
        .logit_scale(args.logit_scale)
        .prune_threshold(args.prune_threshold)
        .seed(args.seed)
        .precision(args.precision)
        .check()?;
    // --v-ref bt: the same settings with K = 1 and no pull.
    let bt_params = args
        .v_ref
        .as_deref()
        .is_some_and(is_bt)
        .then(|| params.bradley_terry());
    if params.alpha() > 0.0 && args.v_ref.is_none() {
        bail!(
            "--alpha {} pulls the basis toward a reference head: give --v-ref FILE (or --v-ref bt)",
            params.alpha()
        );
    }

    let file = PreferenceFile::load(data_path)?;
    for finding in lore_io::checks::check_preferences(&file)? {
        ui.note(format!("{}: {finding}", finding.severity.name()));
    }
    let data = file.view();
    let v_ref_file = match (&args.v_ref, &bt_params) {
        (Some(path), None) => Some(read_v_ref(path)?),
        _ => None,
    };
    if let (Some(init), Some(path)) = (&init, &args.init) {
        let (n, f) = (init.n_users, init.n_features);
        if (n, f) != (data.n_users(), data.n_features()) {
            bail!(
                "{}: initial values are for N = {n} users and F = {f} features, but {} has N = {} and F = {}",
                path.display(),
                data_path.display(),
                data.n_users(),
                data.n_features()
            );
        }
    }
    // Features made by one embedder only: the data's, the reference head's when it says.
    let embedder = file.embedder()?;
    if let (Some(path), None) = (&args.v_ref, &bt_params) {
        let head = EmbedderIdentity::read_path(path)?;
        if let Some(conflict) = EmbedderIdentity::first_conflict([
            (data_path.as_ref(), embedder.as_ref()),
            (path.as_ref(), head.as_ref()),
        ]) {
            bail!("{conflict}");
        }
    }
    if let (Some(v), Some(path)) = (&v_ref_file, &args.v_ref) {
        if v.len() != data.n_features() {
            bail!(
                "{}: `v_ref` has F = {}, but {} has F = {}",
                path.display(),
                v.len(),
                data_path.display(),
                data.n_features()
            );
        }
    }
    let holdout = stopping
        .map(|s| hold_out(&data, s.fraction, args.seed))
        .transpose()?;
    let train = match &holdout {
        Some(holdout) => holdout.train()?,
        None => data.clone(),
    };
    let validation = holdout.as_ref().map(HeldOutRows::validation).transpose()?;
    let early = validation.as_ref().zip(stopping.map(|s| s.rule));
    check_fit_sizes(&train, rank, data_path, &args)?;

    ui.note(format!(
        "fitting {} (K = {rank}) on {} users, {} pairs, F = {} ({}{})",
        method.name(),
        train.n_users(),
        train.n_rows(),
        train.n_features(),
        file.dtype_name(),
        match params.precision() {
            Precision::F32 => "",
            Precision::Bf16 => ", bf16 products summed in f32",
        }
    ));
    if let (Some(stopping), Some(holdout)) = (&stopping, &holdout) {
        ui.note(stopping.describe(holdout));
    }

    let v_ref = match &bt_params {
        Some(bt_params) => {
            ui.note(
                "--v-ref bt: fitting one shared Bradley-Terry reward (K = 1, alpha 0) first; its \
                 direction is v_ref",
            );
            let bar = ui.steps(bt_params.iterations(), "bt fit");
            let (direction, bt) = fit_bradley_terry(&params, &train, early, |step| {
                bar.set_position(step.step as u64 + 1);
                bar.set_message(format!("nll {:.5}", step.nll));
                ControlFlow::Continue(())
            })
            .with_context(|| {
                format!(
                    "fitting the Bradley-Terry reward on {}",
                    data_path.display()
                )
            })?;
            bar.finish_and_clear();
            if let (Some(stopping), Some(report)) = (&stopping, &bt.stopping) {
                ui.note(format!(
                    "bt fit: {}",
                    stopping.outcome(report, bt.model.steps, bt_params.iterations())
                ));
            }
            Some(direction)
        }
        None => v_ref_file,
    };

    let started = Instant::now();
    let bar = ui.steps(params.iterations(), "fit");
    let mut trace = Trace::new(checked.path("--trace"));
    let options = FitOptions {
        v_ref: v_ref.as_deref(),
        init: init.as_ref().map(|file| &file.init),
        validation: early,
    };
    let outcome = fit(&params, &train, &options, |step| {
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
    })
    .with_context(|| format!("fitting {}", data_path.display()))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let (model, report) = (outcome.model, outcome.stopping);

    let early_stopping = match (&stopping, &report, &holdout) {
        (Some(stopping), Some(report), Some(holdout)) => {
            ui.note(stopping.outcome(report, model.steps, params.iterations()));
            Some(stopping.metadata(report, holdout))
        }
        _ => None,
    };
    checked.inputs_unchanged()?;
    ModelFile::write(
        out,
        &model,
        &params,
        &FitProvenance {
            data: data_path,
            user_ids: file.user_ids(),
            v_ref: v_ref.as_deref(),
            v_ref_from_bt: bt_params.is_some(),
            initialized_from: args.init.as_deref(),
            early_stopping: early_stopping.as_ref(),
            embedder: embedder.as_ref(),
        },
    )?;
    trace.finish()?;

    let accuracy = evaluate(&model.basis, &model.users, &train)?;
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
    ui.note(format!("wrote {}", given_out.display()));
    Ok(())
}

/// Refuses, before any work, a rank the data cannot carry (K > F) and a fit or trace that
/// would not fit in the memory available.
fn check_fit_sizes(
    train: &lore_core::Preferences,
    rank: usize,
    data_path: &std::path::Path,
    args: &FitConfig,
) -> Result<()> {
    let (n, p, f) = (train.n_users(), train.n_rows(), train.n_features());
    if rank > f {
        bail!(
            "invalid --rank: {rank} exceeds the {f} features of {} (the basis V [F x K] has \
             rank at most F: use --rank {f} or less)",
            data_path.display()
        );
    }
    sizes::ensure_fits(
        &format!("--rank {rank}"),
        &format!(
            "V [{f} x {rank}], W [{n} x {rank}], their Adam moments and the scores of {p} pairs"
        ),
        lore_core::fit_memory(n, p, f, rank),
    )?;
    if args.trace.is_some() {
        sizes::ensure_fits(
            &format!("--iterations {} with --trace", args.iterations),
            "the trace's lines (held until the run ends)",
            (args.iterations as u64).checked_mul(sizes::TRACE_LINE_BYTES),
        )?;
    }
    Ok(())
}
