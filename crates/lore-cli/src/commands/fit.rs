//! `lore fit`: learn a shared basis V and per-user weights W.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use lore_core::{
    evaluate, fit, fit_bradley_terry, hold_out_rows, EarlyStopping, FitOptions, FitParams,
    HeldOutRows, LoreError, Method, Precision, Preferences, StoppingReport,
};
use lore_io::{read_v_ref, FitInitFile, FitProvenance, ModelFile, PreferenceFile};
use serde_json::{json, Value};

use super::{check_output_path, parse_precision};
use crate::progress::{Trace, Ui};

/// The value of --v-ref that fits the reference direction first (one shared Bradley-Terry
/// reward, K = 1) instead of reading it from a file.
pub const BT_V_REF: &str = "bt";

/// Whether a --v-ref value is the keyword `bt` rather than a file.
pub fn is_bt(v_ref: &Path) -> bool {
    v_ref == Path::new(BT_V_REF)
}

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
/// prior and starting point of `lore personalize --prior-strength`.
///
/// Example: lore fit --data train.safetensors --method regularized --rank 8 --alpha 10
///          --v-ref head.safetensors --iterations 2000 --lr 0.05 --out model.safetensors
///          lore fit --data train.safetensors --rank 4 --alpha 1 --v-ref bt --lr 0.5
///          --iterations 5000 --validation-fraction 0.2 --out model.safetensors
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

    /// File with a tensor `v_ref` ([F] or [F,1]): the reference reward head; or `bt` to fit one
    /// shared Bradley-Terry reward (K = 1, alpha 0) first and use its direction.
    #[arg(long, value_name = "FILE|bt")]
    v_ref: Option<PathBuf>,

    /// Number of optimizer steps, run exactly (the maximum with --validation-fraction).
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

    /// Arithmetic of the passes over the data: `f32` (default), or `bf16`: features, V and
    /// residuals rounded to bf16 and their products summed in f32, about twice as fast at
    /// K = 25 on CPUs with AVX512-BF16 (refused on others).
    #[arg(long, default_value = "f32", value_name = "PRECISION", value_parser = parse_precision)]
    precision: Precision,

    /// Start from tensors `W0` [N,K] (logits) and `V0` [F,K] of this file instead of a random draw.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,

    /// Write one JSON line per step: step, nll, reg, alpha (lore) or step, nll_w, nll_v, reg,
    /// alpha (regularized).
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,

    #[command(flatten)]
    stopping: StoppingArgs,

    /// Output model file (safetensors): V, W, W_logits, prior_logits, v_ref and the run's
    /// metadata.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
}

// Early stopping on held-out pairs, shared by `lore fit` and `lore personalize`.
#[derive(Args, Debug)]
pub struct StoppingArgs {
    /// Hold out this share (0 < P < 1) of each user's pairs and stop early on their loss,
    /// keeping the best state: round(P * n) of n pairs, at least one and at most n - 1 (users
    /// with one pair hold none out).
    #[arg(long, value_name = "P")]
    validation_fraction: Option<f64>,

    /// Early stopping: steps between scores of the held-out pairs [default: 10].
    #[arg(long, value_name = "N")]
    eval_every: Option<usize>,

    /// Early stopping: scores without a new best validation loss before stopping [default: 5].
    #[arg(long, value_name = "N")]
    patience: Option<usize>,
}

/// Early stopping as asked for: the validation fraction and the rule.
#[derive(Debug, Clone, Copy)]
pub struct Stopping {
    pub fraction: f64,
    pub rule: EarlyStopping,
}

impl StoppingArgs {
    /// The checked early stopping, None without --validation-fraction.
    pub fn resolve(&self) -> Result<Option<Stopping>> {
        let Some(fraction) = self.validation_fraction else {
            if self.eval_every.is_some() || self.patience.is_some() {
                bail!(
                    "--eval-every and --patience set early stopping: give --validation-fraction P too"
                );
            }
            return Ok(None);
        };
        if !(fraction > 0.0 && fraction < 1.0) {
            bail!(
                "invalid --validation-fraction: {fraction} (the share of each user's pairs held \
                 out; must be > 0 and < 1)"
            );
        }
        let default = EarlyStopping::default();
        let rule = EarlyStopping {
            eval_every: self.eval_every.unwrap_or(default.eval_every),
            patience: self.patience.unwrap_or(default.patience),
            min_delta: default.min_delta,
        }
        .check()?;
        Ok(Some(Stopping { fraction, rule }))
    }
}

impl Stopping {
    /// A note on the held-out pairs and the rule.
    pub fn describe(&self, holdout: &HeldOutRows) -> String {
        format!(
            "early stopping: holding out {} of {} pairs ({} users, fraction {}) for validation; \
             scored every {} steps, patience {}",
            holdout.n_held_out_rows(),
            holdout.n_held_out_rows() + holdout.n_train_rows(),
            holdout.held_out_users().len(),
            self.fraction,
            self.rule.eval_every,
            self.rule.patience
        )
    }

    /// The note after a run: where it stopped and the best state kept.
    pub fn outcome(&self, report: &StoppingReport, steps: usize, max_steps: usize) -> String {
        let head = if report.stopped_early {
            format!("stopped at step {steps} of {max_steps}")
        } else {
            format!("ran all {steps} of {max_steps} steps")
        };
        format!(
            "{head} (best validation loss {:.5}, accuracy {:.4} at step {})",
            report.best.loss, report.best.accuracy, report.best_steps
        )
    }

    /// The metadata `early_stopping` of a run.
    pub fn metadata(&self, report: &StoppingReport, holdout: &HeldOutRows) -> Value {
        json!({
            "best_steps": report.best_steps,
            "stopped_early": report.stopped_early,
            "validation_fraction": self.fraction,
            "eval_every": self.rule.eval_every,
            "patience": self.rule.patience,
            "validation_loss": report.best.loss,
            "validation_accuracy": report.best.accuracy,
            "validation_pairs": holdout.n_held_out_rows(),
            "validation_users": holdout.held_out_users().len(),
        })
    }
}

/// Holds out `fraction` of each user's pairs for early stopping (see [`hold_out_rows`]).
pub fn hold_out(data: &Preferences, fraction: f64, seed: u64) -> Result<HeldOutRows> {
    hold_out_rows(data, fraction, seed).map_err(|e| match e {
        LoreError::InvalidParameter { reason, .. } => {
            anyhow::anyhow!("--validation-fraction: {}", reason.replace("rows", "pairs"))
        }
        other => other.into(),
    })
}

pub fn run(args: FitArgs, ui: &Ui) -> Result<()> {
    let method: Method = args.method.parse()?;
    check_output_path(&args.out)?;
    if let Some(trace) = &args.trace {
        check_output_path(trace)?;
    }
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

    let file = PreferenceFile::load(&args.data)?;
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
                args.data.display(),
                data.n_users(),
                data.n_features()
            );
        }
    }
    if let (Some(v), Some(path)) = (&v_ref_file, &args.v_ref) {
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
    let holdout = stopping
        .map(|s| hold_out(&data, s.fraction, args.seed))
        .transpose()?;
    let train = match &holdout {
        Some(holdout) => holdout.train()?,
        None => data.clone(),
    };
    let validation = holdout.as_ref().map(HeldOutRows::validation).transpose()?;
    let early = validation.as_ref().zip(stopping.map(|s| s.rule));

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
                    args.data.display()
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
    let mut trace = Trace::new(args.trace.as_deref());
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
    .with_context(|| format!("fitting {}", args.data.display()))?;
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
    ModelFile::write(
        &args.out,
        &model,
        &params,
        &FitProvenance {
            data: &args.data,
            user_ids: file.user_ids(),
            v_ref: v_ref.as_deref(),
            v_ref_from_bt: bt_params.is_some(),
            initialized_from: args.init.as_deref(),
            early_stopping: early_stopping.as_ref(),
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
    ui.note(format!("wrote {}", args.out.display()));
    Ok(())
}
