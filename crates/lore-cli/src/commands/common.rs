//! Plumbing shared by several commands: flag groups (early stopping, training, population),
//! the output checks, the `--v-ref bt` keyword, and the sweep's progress and result files.
//! Commands import this module, never each other.

use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Result};
use clap::Args;
use lore_core::{
    hold_out_rows, EarlyStopping, FitParams, HeldOutRows, LoreError, Method, PersonalizeParams,
    Preferences, StoppingReport, DEFAULT_PRUNE_THRESHOLD,
};
use lore_experiment::{
    simulate, sweep, sweep_bt, CheckedSweepParams, ExperimentSets, PairRange, Population,
    PopulationParams, Progress, ResponseSet, SweepParams, SweepResults, SyntheticParams,
};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::choice;
use crate::config;
use crate::progress::Ui;
use crate::report;

/// The value of --v-ref that fits the reference direction first (one shared Bradley-Terry
/// reward, K = 1) instead of reading it from a file.
pub const BT_V_REF: &str = "bt";

/// Whether a --v-ref value is the keyword `bt` rather than a file.
pub fn is_bt(v_ref: &Path) -> bool {
    v_ref == Path::new(BT_V_REF)
}

/// Early stopping on held-out pairs, shared by `lore fit` and `lore personalize`: the flags and,
/// resolved, the options.
#[derive(Args, Serialize, Deserialize, Debug, Default, Clone, Copy)]
#[serde(rename_all = "kebab-case")]
pub struct StoppingArgs {
    /// Hold out this share (0 < P < 1) of each user's pairs and stop early on their loss,
    /// keeping the best state: round(P * n) of n pairs, at least one and at most n - 1 (users
    /// with one pair hold none out).
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    validation_fraction: Option<f64>,

    /// Early stopping: steps between scores of the held-out pairs.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_every: Option<usize>,

    /// Early stopping: scores without a new best validation loss before stopping.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    patience: Option<usize>,
}

/// The early-stopping defaults for --help (they apply with --validation-fraction only).
pub fn stopping_notes() -> Vec<(&'static str, String)> {
    let rule = EarlyStopping::default();
    vec![
        ("eval-every", rule.eval_every.to_string()),
        ("patience", rule.patience.to_string()),
    ]
}

/// The pruning default for --help (it depends on the method).
pub fn prune_note() -> (&'static str, String) {
    (
        "prune-threshold",
        format!("{DEFAULT_PRUNE_THRESHOLD} for regularized, 0 = keep all for lore"),
    )
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
        lore_io::early_stopping_metadata(self.fraction, &self.rule, report, holdout)
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

/// The fit's and personalization's hyperparameters, shared by `sweep`, `shots` and `demo`.
#[derive(Args, Serialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
pub struct TrainingArgs {
    /// Training method: `lore` (joint Adam, L2 pull toward v_ref) or `regularized`
    /// (alternating steps, cosine pull with warm-up, pruning)
    #[arg(long, value_name = "METHOD", value_parser = choice::parser::<Method>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    method: Option<Method>,

    /// Fit: optimizer steps per rank and seed
    #[arg(long, short = 't', value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    iterations: Option<usize>,

    /// Fit: Adam learning rate (the default is the paper's)
    #[arg(long, value_name = "LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,

    /// c in P(chosen > rejected) = sigmoid(c * x . V w)
    #[arg(long, value_name = "C")]
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_scale: Option<f64>,

    /// Drop basis columns whose largest user weight is below P
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prune_threshold: Option<f64>,

    /// Few-shot personalization: Adam steps
    #[arg(long, value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    personalize_iterations: Option<usize>,

    /// Few-shot personalization: Adam learning rate
    #[arg(long, value_name = "LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    personalize_lr: Option<f64>,
}

/// The resolved training options.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct TrainingConfig {
    #[serde(with = "choice::name")]
    pub method: Method,
    pub iterations: usize,
    pub lr: f64,
    pub logit_scale: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_threshold: Option<f64>,
    pub personalize_iterations: usize,
    pub personalize_lr: f64,
}

impl Default for TrainingConfig {
    /// The paper's runs: [`SweepParams::reference`] with the default method.
    fn default() -> Self {
        let p = SweepParams::reference(Method::default());
        Self {
            method: p.fit.method,
            iterations: p.fit.iterations,
            lr: p.fit.learning_rate,
            logit_scale: p.fit.logit_scale,
            prune_threshold: p.fit.prune_threshold,
            personalize_iterations: p.personalize.iterations,
            personalize_lr: p.personalize.learning_rate,
        }
    }
}

impl TrainingConfig {
    /// The fit's parameters for rank 1 (the experiment sets rank, alpha and seed per run).
    pub fn fit_params(&self) -> FitParams {
        FitParams::new(self.method, 1)
            .iterations(self.iterations)
            .learning_rate(self.lr)
            .logit_scale(self.logit_scale)
            .prune_threshold(self.prune_threshold)
    }

    /// Personalization's parameters (the experiment sets the seed).
    pub fn personalize_params(&self) -> PersonalizeParams {
        PersonalizeParams::default()
            .iterations(self.personalize_iterations)
            .learning_rate(self.personalize_lr)
            .logit_scale(self.logit_scale)
    }
}

/// The sweep's parameters from the resolved options, checked.
pub fn sweep_params(
    training: &TrainingConfig,
    ranks: &[usize],
    alphas: &[f64],
    seeds: &[u64],
) -> Result<CheckedSweepParams> {
    Ok(SweepParams {
        fit: training.fit_params(),
        personalize: training.personalize_params(),
        ranks: ranks.to_vec(),
        alphas: alphas.to_vec(),
        seeds: seeds.to_vec(),
    }
    .check()?)
}

/// Runs the sweep with a progress bar; prints how long it took.
pub fn run_sweep(
    sets: &ExperimentSets,
    v_ref: Option<&[f32]>,
    params: &CheckedSweepParams,
    ui: &Ui,
) -> Result<SweepResults> {
    with_progress(params.total_steps(), ui, |observer| {
        sweep(sets, v_ref, params, observer)
    })
}

/// The sweep anchored on Bradley-Terry (`--v-ref bt`), with a progress bar.
pub fn run_sweep_bt(
    sets: &ExperimentSets,
    params: &CheckedSweepParams,
    ui: &Ui,
) -> Result<SweepResults> {
    with_progress(params.total_steps_bt(), ui, |observer| {
        sweep_bt(sets, params, observer)
    })
}

/// Runs `work` with a progress bar of `total` steps; prints how long it took.
fn with_progress(
    total: usize,
    ui: &Ui,
    work: impl FnOnce(&mut dyn FnMut(&Progress)) -> lore_core::Result<SweepResults>,
) -> Result<SweepResults> {
    let started = Instant::now();
    let bar = ui.steps(total, "sweep");
    let mut done = 0u64;
    let results = work(&mut |p: &Progress| {
        done += 1;
        bar.set_position(done);
        if p.step.is_multiple_of(10) {
            bar.set_message(report::progress_message(p));
        }
    })?;
    bar.finish_and_clear();
    ui.note(format!("swept in {:.1?}", started.elapsed()));
    Ok(results)
}

/// Writes results.json, results.csv and the charts (`chart_stem`.png) into `dir` (the staging
/// folder of the output folder `shown`), and prints the table (or the JSON object with `json`).
pub fn write_results(
    dir: &Path,
    shown: &Path,
    chart_stem: &str,
    results: &SweepResults,
    seeds: &[u64],
    json: bool,
    ui: &Ui,
) -> Result<()> {
    let value = report::sweep_json(results, seeds);
    let text = serde_json::to_string_pretty(&value)? + "\n";
    lore_io::write_bytes_atomic(dir.join(report::RESULTS_JSON), text.as_bytes())?;
    lore_io::write_bytes_atomic(
        dir.join(report::RESULTS_CSV),
        report::sweep_csv(results).as_bytes(),
    )?;
    let charts = report::sweep_charts(dir, chart_stem, results)?;
    if json {
        println!("{value}");
    } else {
        println!("{}", report::sweep_table(results, seeds.len() > 1));
    }
    let charts: Vec<String> = charts
        .iter()
        .filter_map(|p| p.file_name())
        .map(|name| name.to_string_lossy().into_owned())
        .collect();
    ui.note(format!(
        "wrote {}, {}, {} and {} in {}",
        report::RESULTS_JSON,
        report::RESULTS_CSV,
        charts.join(", "),
        config::CONFIG_FILE,
        shown.display()
    ));
    Ok(())
}

/// Who the simulated users are and which prompts they answer (`lore simulate` and `lore demo`).
#[derive(Args, Serialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
pub struct PopulationArgs {
    /// Number of seen users (the basis is fitted on them)
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seen_users: Option<usize>,

    /// Number of unseen users (personalized from their few-shot rows)
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    unseen_users: Option<usize>,

    /// Users' weights are drawn from Dirichlet(A 1_J): small A gives users close to one reward
    /// function, large A users close to the average
    #[arg(long, value_name = "A")]
    #[serde(skip_serializing_if = "Option::is_none")]
    dirichlet_alpha: Option<f64>,

    /// Noise on every response's score, drawn afresh per user and prompt (standard deviation;
    /// synthetic scores have std about 1): users then disagree with their own reward at times.
    /// With --rewards 1 every user shares one reward plus this noise
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    score_noise: Option<f64>,

    /// Fraction of the prompts held out as test prompts
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_prompts: Option<f64>,

    /// Fraction of the training prompts each seen user answers
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seen_fraction: Option<f64>,

    /// Fraction of the training prompts each unseen user answers: their few-shot rows
    ///
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    unseen_fraction: Option<f64>,

    /// Fraction of the test prompts each user answers: their test rows
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_fraction: Option<f64>,

    /// Training rows of each seen user, N or MIN-MAX (a uniform draw per user), instead of
    /// --seen-fraction
    #[arg(long, value_name = "N|MIN-MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seen_pairs: Option<String>,

    /// Few-shot rows of each unseen user, N or MIN-MAX, instead of --unseen-fraction
    #[arg(long, value_name = "N|MIN-MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    unseen_pairs: Option<String>,

    /// Test rows of each user, N or MIN-MAX, instead of --test-fraction
    #[arg(long, value_name = "N|MIN-MAX")]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_pairs: Option<String>,

    /// Built-in responses: embedding dimension F
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<usize>,

    /// Built-in responses: number of planted reward directions J, the true rank
    #[arg(long, value_name = "J")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rewards: Option<usize>,

    /// Built-in responses: number of prompts M
    #[arg(long, value_name = "M")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prompts: Option<usize>,

    /// Built-in responses: responses per prompt R
    #[arg(long, value_name = "R")]
    #[serde(skip_serializing_if = "Option::is_none")]
    per_prompt: Option<usize>,

    /// Seed of the responses, the users and their prompts
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

/// The resolved population options.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct PopulationConfig {
    pub seen_users: usize,
    pub unseen_users: usize,
    pub dirichlet_alpha: f64,
    pub test_prompts: f64,
    pub seen_fraction: f64,
    pub unseen_fraction: f64,
    pub test_fraction: f64,
    #[serde(default)]
    pub score_noise: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen_pairs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unseen_pairs: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub test_pairs: Option<String>,
    pub features: usize,
    pub rewards: usize,
    pub prompts: usize,
    pub per_prompt: usize,
    pub seed: u64,
}

impl Default for PopulationConfig {
    fn default() -> Self {
        let p = PopulationParams::default();
        let s = SyntheticParams::default();
        Self {
            seen_users: p.n_seen_users,
            unseen_users: p.n_unseen_users,
            dirichlet_alpha: p.dirichlet_alpha,
            test_prompts: p.test_prompt_fraction,
            seen_fraction: p.seen_fraction,
            unseen_fraction: p.unseen_fraction,
            test_fraction: p.test_fraction,
            score_noise: p.score_noise,
            seen_pairs: None,
            unseen_pairs: None,
            test_pairs: None,
            features: s.n_features,
            rewards: s.n_rewards,
            prompts: s.n_prompts,
            per_prompt: s.n_responses,
            seed: p.seed,
        }
    }
}

impl PopulationConfig {
    /// The core's population parameters; a row range that does not parse is an error naming
    /// its flag.
    pub fn population(&self) -> anyhow::Result<PopulationParams> {
        let range = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<PairRange>> {
            text.as_deref()
                .map(|t| t.parse().map_err(|e| anyhow::anyhow!("--{flag}: {e}")))
                .transpose()
        };
        Ok(PopulationParams {
            n_seen_users: self.seen_users,
            n_unseen_users: self.unseen_users,
            dirichlet_alpha: self.dirichlet_alpha,
            test_prompt_fraction: self.test_prompts,
            seen_fraction: self.seen_fraction,
            unseen_fraction: self.unseen_fraction,
            test_fraction: self.test_fraction,
            score_noise: self.score_noise,
            seen_pairs: range("seen-pairs", &self.seen_pairs)?,
            unseen_pairs: range("unseen-pairs", &self.unseen_pairs)?,
            test_pairs: range("test-pairs", &self.test_pairs)?,
            seed: self.seed,
        })
    }

    /// The built-in responses' parameters.
    pub fn synthetic(&self) -> SyntheticParams {
        SyntheticParams {
            n_features: self.features,
            n_rewards: self.rewards,
            n_prompts: self.prompts,
            n_responses: self.per_prompt,
            seed: self.seed,
        }
    }
}

/// Simulates with a progress bar over users.
pub fn simulate_population(
    responses: &ResponseSet,
    params: &PopulationParams,
    v_ref: Option<Vec<f32>>,
    ui: &Ui,
) -> Result<Population> {
    let bar = ui.steps(params.n_seen_users + params.n_unseen_users, "simulate");
    let population = simulate(responses, params, v_ref, |done| {
        bar.set_position(done as u64)
    })?;
    bar.finish_and_clear();
    Ok(population)
}

/// Checks a command's output files (flag, path if given) against each other and its input
/// files before any work ([`lore_io::check_outputs`]): an output that is an input, another
/// output, a special or read-only file, or in a folder where nothing can be created is refused.
/// Notes each output given as a link (its target is written).
pub fn check_outputs(
    outputs: &[(&str, Option<&Path>)],
    inputs: &[(&str, Option<&Path>)],
    ui: &Ui,
) -> Result<lore_io::CheckedOutputs> {
    fn given<'a>(list: &[(&'a str, Option<&'a Path>)]) -> Vec<(&'a str, &'a Path)> {
        list.iter()
            .filter_map(|&(flag, path)| path.map(|p| (flag, p)))
            .collect()
    }
    let checked = lore_io::check_outputs(&given(outputs), &given(inputs))?;
    for note in checked.notes() {
        ui.note(note);
    }
    Ok(checked)
}
