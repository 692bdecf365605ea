//! `lore personalize`: fit new users' weights from a few pairs with a fixed basis.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use lore_core::{evaluate, personalize, HeldOutRows, PersonalizeOptions, PersonalizeParams};
use lore_io::{
    EmbedderIdentity, ModelFile, PreferenceFile, UserInitFile, UsersFile, UsersProvenance,
};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{check_outputs, hold_out, stopping_notes, StoppingArgs};
use crate::config::{self, ConfigFlag, Configurable};
use crate::progress::Ui;
use lore_io::Trace;

/// Fit weights w_u = softmax(W_u) for new users from their few pairs, with the basis V fixed.
///
/// Follows the reference class PersonalizeBatch: the loss is the sum over users of each user's
/// mean -log sigmoid(c x . V w_u), minimized by one Adam over all users' logits (w ~ N(0,1)).
/// X V is computed once, so each iteration costs O(pairs x K), not O(pairs x F).
///
/// Prior: --prior-strength L > 0 adds L * |W_u - prior_logits|^2 to each user's loss (MAP
/// instead of maximum likelihood), where prior_logits is the model's tensor of that name (the
/// log of the fitted users' mean weights), and starts every user there instead of at a random
/// draw (unless --init). A user with few pairs then stays near the population's mix.
///
/// Early stopping: --validation-fraction P holds out that share of each new user's pairs,
/// scores them every --eval-every steps, stops after --patience scores without a new best and
/// keeps the users' logits with the lowest validation loss (--iterations is the maximum).
///
/// The users file records the model's embedder (metadata `embedder`); data whose features were
/// made by another embedder or setting is refused.
///
/// Example: lore personalize --model model.safetensors --data new_users.safetensors
///          --out users.safetensors
///          lore personalize --model model.safetensors --data new_users.safetensors
///          --prior-strength 0.1 --validation-fraction 0.25 --out users.safetensors
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
#[serde(rename_all = "kebab-case")]
pub struct PersonalizeArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Model file: its tensor `V` [F,K] (and logit scale, if recorded); `prior_logits` [K]
    /// with --prior-strength [required].
    #[arg(long, short = 'm', value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    model: Option<PathBuf>,

    /// Preference file of the new users (same layout as for `lore fit`) [required].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,

    /// Number of Adam steps, run exactly (the maximum with --validation-fraction).
    #[arg(long, short = 't', value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    iterations: Option<usize>,

    /// Adam learning rate.
    #[arg(long, value_name = "LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,

    /// Seed of the random initialization of the users' logits.
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,

    /// Start from the tensor `w0` [N,K] (logits) of this file instead of a random draw (or,
    /// with --prior-strength > 0, instead of the model's prior_logits).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    init: Option<PathBuf>,

    /// Strength L of a prior L * |W_u - prior_logits|^2 toward the model's mean user; > 0 also
    /// starts every user at prior_logits (0 = plain maximum likelihood).
    #[arg(long, value_name = "L")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prior_strength: Option<f64>,

    /// Override the logit scale c.
    #[arg(long, value_name = "C")]
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_scale: Option<f64>,

    /// Write one JSON line per step: step, loss.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    trace: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    stopping: StoppingArgs,

    /// Output users file (safetensors): W [N,K] (weights), W_logits and metadata [required].
    #[arg(long, short = 'o', value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
}

/// The resolved options of `lore personalize`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct PersonalizeConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    model: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,
    iterations: usize,
    lr: f64,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    init: Option<PathBuf>,
    prior_strength: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_scale: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    trace: Option<PathBuf>,
    #[serde(flatten)]
    stopping: StoppingArgs,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
}

impl Default for PersonalizeConfig {
    /// The library's defaults ([`PersonalizeParams::default`]); no file is named, and the
    /// logit scale is the model's.
    fn default() -> Self {
        let p = PersonalizeParams::default();
        Self {
            model: None,
            data: None,
            iterations: p.iterations,
            lr: p.learning_rate,
            seed: p.seed,
            init: None,
            prior_strength: p.prior_strength,
            logit_scale: None,
            trace: None,
            stopping: StoppingArgs::default(),
            out: None,
        }
    }
}

impl Configurable for PersonalizeArgs {
    type Options = PersonalizeConfig;
    fn defaults() -> PersonalizeConfig {
        PersonalizeConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
    fn default_notes() -> Vec<(&'static str, String)> {
        let mut notes = stopping_notes();
        notes.push((
            "logit-scale",
            format!(
                "the model's, else {}",
                PersonalizeParams::default().logit_scale
            ),
        ));
        notes
    }
}

pub fn run(flags: PersonalizeArgs, ui: &Ui) -> Result<()> {
    let args = config::options(&flags)?;
    let model = config::required(&args.model, "--model FILE")?;
    let data_path = config::required(&args.data, "--data FILE")?;
    let out = config::required(&args.out, "--out FILE")?;
    let mut params = PersonalizeParams::default()
        .iterations(args.iterations)
        .learning_rate(args.lr)
        .seed(args.seed)
        .prior_strength(args.prior_strength);
    if let Some(c) = args.logit_scale {
        params = params.logit_scale(c);
    }
    let params = params.check()?;
    if args.trace.is_some() {
        crate::sizes::ensure_fits(
            &format!("--iterations {} with --trace", params.iterations()),
            "the trace's lines (held until the run ends)",
            (params.iterations() as u64).checked_mul(crate::sizes::TRACE_LINE_BYTES),
        )?;
    }
    let stopping = args.stopping.resolve()?;
    // Before any work: no output may replace an input or another output, or be unwritable.
    let checked = check_outputs(
        &[("--out", Some(out)), ("--trace", args.trace.as_deref())],
        &[
            ("--model", Some(model)),
            ("--data", Some(data_path)),
            ("--init", args.init.as_deref()),
            ("--config", flags.config.path.as_deref()),
        ],
        ui,
    )?;
    let (given_out, out) = (out, checked.path("--out").unwrap_or(out));
    let model_file = ModelFile::open(model)?;
    let basis = model_file.basis(args.logit_scale)?;
    let prior = if params.prior_strength() > 0.0 {
        match model_file.prior_logits()? {
            Some(prior) => Some(prior),
            None => bail!(
                "{}: the model has no prior_logits (fit it with this version of lore fit)",
                model.display()
            ),
        }
    } else {
        None
    };
    let file = PreferenceFile::load(data_path)?;
    for finding in lore_io::checks::check_preferences(&file)? {
        ui.note(format!("{}: {finding}", finding.severity.name()));
    }
    let data = file.view();
    if basis.n_features() != data.n_features() {
        bail!(
            "feature dimension mismatch: {} has F = {}, {} has F = {}",
            model.display(),
            basis.n_features(),
            data_path.display(),
            data.n_features()
        );
    }
    // The users file records how the model's features are made; data made otherwise would
    // give weights for another feature space.
    let embedder = model_file.embedder()?;
    let data_embedder = file.embedder()?;
    if let Some(conflict) = EmbedderIdentity::first_conflict([
        (model.as_ref(), embedder.as_ref()),
        (data_path.as_ref(), data_embedder.as_ref()),
    ]) {
        bail!("{conflict}");
    }
    let init = match (&args.init, &prior) {
        (Some(path), _) => {
            let UserInitFile {
                n_users: n,
                rank: k,
                logits,
            } = UserInitFile::read(path)?;
            if (n, k) != (data.n_users(), basis.rank()) {
                bail!(
                    "{}: `w0` is [{n}, {k}], expected [N = {}, K = {}]",
                    path.display(),
                    data.n_users(),
                    basis.rank()
                );
            }
            Some(logits)
        }
        // With a prior, every user starts at its mean.
        (None, Some(prior)) => Some(prior.repeat(data.n_users())),
        (None, None) => None,
    };
    let holdout = stopping
        .map(|s| hold_out(&data, s.fraction, args.seed))
        .transpose()?;
    let train = match &holdout {
        Some(holdout) => holdout.train()?,
        None => data.clone(),
    };
    let validation = holdout.as_ref().map(HeldOutRows::validation).transpose()?;

    ui.note(format!(
        "personalizing {} users ({} pairs) with K = {}",
        train.n_users(),
        train.n_rows(),
        basis.rank()
    ));
    if prior.is_some() {
        // 1e308, not 309 digits.
        let strength = match params.prior_strength() {
            s if s >= 1e6 => format!("{s:e}"),
            s => s.to_string(),
        };
        ui.note(format!(
            "prior: strength {strength} toward the model's prior_logits{}",
            if args.init.is_none() {
                ", where every user starts"
            } else {
                ""
            }
        ));
    }
    if let (Some(stopping), Some(holdout)) = (&stopping, &holdout) {
        ui.note(stopping.describe(holdout));
    }
    let started = Instant::now();
    let bar = ui.steps(params.iterations(), "personalize");
    let mut trace = Trace::new(checked.path("--trace"));
    let options = PersonalizeOptions {
        init_logits: init.as_deref(),
        prior_logits: prior.as_deref(),
        validation: validation.as_ref().zip(stopping.map(|s| s.rule)),
    };
    let mut steps = 0;
    let outcome = personalize(&params, &basis, &train, &options, |step| {
        trace.record(json!({ "step": step.step, "loss": step.loss }));
        steps = step.step + 1;
        bar.set_position(step.step as u64 + 1);
        bar.set_message(format!("loss {:.5}", step.loss));
        ControlFlow::Continue(())
    })
    .with_context(|| format!("personalizing {}", data_path.display()))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();
    let (users, report) = (outcome.users, outcome.stopping);

    let early_stopping = match (&stopping, &report, &holdout) {
        (Some(stopping), Some(report), Some(holdout)) => {
            ui.note(stopping.outcome(report, steps, params.iterations()));
            Some(stopping.metadata(report, holdout))
        }
        _ => None,
    };
    checked.inputs_unchanged()?;
    UsersFile::write(
        out,
        &users,
        &params,
        &basis,
        &UsersProvenance {
            model,
            data: data_path,
            user_ids: file.user_ids(),
            early_stopping: early_stopping.as_ref(),
            embedder: embedder.as_ref().or(data_embedder.as_ref()),
        },
    )?;
    trace.finish()?;
    let accuracy = evaluate(&basis, &users, &train)?;
    ui.note(format!(
        "{} steps in {elapsed:.2?}; accuracy on these pairs {:.4} ± {:.4} over users",
        if report.is_some() {
            steps
        } else {
            params.iterations()
        },
        accuracy.mean,
        accuracy.std
    ));
    ui.note(format!("wrote {}", given_out.display()));
    Ok(())
}
