//! `lore sweep`: accuracy against rank on a split folder, as in the paper's figures.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lore_core::DEFAULT_LOGIT_SCALE;
use lore_core::{FitParams, Method, PersonalizeParams};
use lore_experiment::{sweep, sweep_bt, ExperimentSets, Progress, SweepParams, SweepResults};
use lore_io::SplitFolder;
use serde::{Deserialize, Serialize};

use super::fit::is_bt;
use super::{check_output_dir, create_output_dir};
use crate::config::{self, is_false};
use crate::progress::Ui;
use crate::report;

/// The fit's and personalization's hyperparameters, shared by `sweep`, `shots` and `demo`.
#[derive(Args, Serialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
pub struct TrainingArgs {
    /// Training method: `lore` (joint Adam, L2 pull toward v_ref) or `regularized`
    /// (alternating steps, cosine pull with warm-up, pruning) [default: lore]
    #[arg(long, value_name = "METHOD")]
    #[serde(skip_serializing_if = "Option::is_none")]
    method: Option<String>,

    /// Fit: optimizer steps per rank and seed [default: 1000]
    #[arg(long, short = 't', value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    iterations: Option<usize>,

    /// Fit: Adam learning rate [default: 0.5, the paper's]
    #[arg(long, value_name = "LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,

    /// c in P(chosen > rejected) = sigmoid(c * x . V w) [default: 0.01]
    #[arg(long, value_name = "C")]
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_scale: Option<f64>,

    /// Drop basis columns whose largest user weight is below P [default: 0.01 for
    /// regularized, 0 = keep all for lore]
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prune_threshold: Option<f64>,

    /// Few-shot personalization: Adam steps [default: 500]
    #[arg(long, value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    personalize_iterations: Option<usize>,

    /// Few-shot personalization: Adam learning rate [default: 0.1]
    #[arg(long, value_name = "LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    personalize_lr: Option<f64>,
}

/// The resolved training options.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct TrainingOptions {
    pub method: String,
    pub iterations: usize,
    pub lr: f64,
    pub logit_scale: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub prune_threshold: Option<f64>,
    pub personalize_iterations: usize,
    pub personalize_lr: f64,
}

impl Default for TrainingOptions {
    /// The reference's `run`: lore, lr 0.5 for 1000 steps; personalization lr 0.1 for 500.
    fn default() -> Self {
        Self {
            method: "lore".into(),
            iterations: 1000,
            lr: 0.5,
            logit_scale: DEFAULT_LOGIT_SCALE,
            prune_threshold: None,
            personalize_iterations: 500,
            personalize_lr: 0.1,
        }
    }
}

impl TrainingOptions {
    /// The fit's parameters for rank 1 (the experiment sets rank, alpha and seed per run).
    pub fn fit_params(&self) -> Result<FitParams> {
        let method: Method = self.method.parse()?;
        let mut fit = FitParams::new(method, 1)
            .iterations(self.iterations)
            .learning_rate(self.lr)
            .logit_scale(self.logit_scale);
        fit.prune_threshold = self.prune_threshold;
        Ok(fit)
    }

    /// Personalization's parameters (the experiment sets the seed).
    pub fn personalize_params(&self) -> PersonalizeParams {
        PersonalizeParams::default()
            .iterations(self.personalize_iterations)
            .learning_rate(self.personalize_lr)
            .logit_scale(self.logit_scale)
    }
}

/// Accuracy against rank K: the reference head, one shared reward, LoRe bases.
///
/// For each alpha, rank K and seed: fit on the seen users, personalize the unseen users from
/// their few-shot rows, and evaluate all four sets.
///
/// K = 0 evaluates the reference head v_ref (from --v-ref, else the split folder's
/// v_ref.safetensors; skipped with a note when there is none). K = 1 fits one shared
/// Bradley-Terry reward; unseen users get w = [1]. K >= 2 fits a basis of K columns and
/// personalizes each unseen user with the basis fixed.
///
/// --v-ref bt: for each seed, first fit one shared Bradley-Terry reward (K = 1, alpha 0, the
/// sweep's other fit settings) on the seen users; the runs with alpha > 0 pull toward its
/// direction. It is not a reference head, so K = 0 is skipped (with a note).
///
/// Reports each set's pairwise accuracy, mean and std over users (with several --seeds, also
/// mean and std over seeds): a table on the terminal, and in --out: results.csv, results.json,
/// accuracy_vs_rank.png (the paper's figure) and config.toml (the effective options).
///
/// Every option can also be set in a TOML file given with --config, under its long name
/// (`ranks = [0, 1, 2, 4]`, `personalize-lr = 0.1`); flags override the file.
///
/// Example: lore sweep --splits splits/ --ranks 0,1,2,4,8 --seeds 0,1,2 --out sweep/
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
#[serde(rename_all = "kebab-case")]
pub struct SweepArgs {
    /// TOML file of options (keys are the long flags); flags given here override it
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,

    /// Split folder: seen_train, seen_test, unseen_train, unseen_test .safetensors (as written
    /// by `lore split` or `lore simulate`) [required]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    splits: Option<PathBuf>,

    /// Ranks K, comma-separated; 0 = the reference head [default: 0,1,2,4]
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ranks: Option<Vec<usize>>,

    /// Strengths of the pull toward v_ref, comma-separated; > 0 needs a v_ref [default: 0]
    #[arg(long, value_delimiter = ',', value_name = "A,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    alphas: Option<Vec<f64>>,

    /// Seeds of the random starts, comma-separated; several add mean and std over seeds
    /// [default: 0]
    #[arg(long, value_delimiter = ',', value_name = "S,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seeds: Option<Vec<u64>>,

    /// File with the reference head `v_ref` ([F] or [F,1]), or `bt`: per seed, fit K = 1 with
    /// alpha 0 on the seen users first and pull toward its direction (K = 0 is then skipped)
    /// [default: the split folder's v_ref.safetensors, if any]
    #[arg(long, value_name = "FILE|bt")]
    #[serde(skip_serializing_if = "Option::is_none")]
    v_ref: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    training: TrainingArgs,

    /// Output folder (created if missing) [default: lore-sweep]
    #[arg(long, short = 'o', value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,

    /// Print results.json's object on stdout instead of the table
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    json: bool,
}

/// The resolved options of `lore sweep`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
struct SweepOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    splits: Option<PathBuf>,
    ranks: Vec<usize>,
    alphas: Vec<f64>,
    seeds: Vec<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    v_ref: Option<PathBuf>,
    #[serde(flatten)]
    training: TrainingOptions,
    out: PathBuf,
    json: bool,
}

impl Default for SweepOptions {
    fn default() -> Self {
        Self {
            splits: None,
            ranks: vec![0, 1, 2, 4],
            alphas: vec![0.0],
            seeds: vec![0],
            v_ref: None,
            training: TrainingOptions::default(),
            out: "lore-sweep".into(),
            json: false,
        }
    }
}

/// The sweep's parameters from the resolved options, checked.
pub fn sweep_params(
    training: &TrainingOptions,
    ranks: &[usize],
    alphas: &[f64],
    seeds: &[u64],
) -> Result<lore_experiment::CheckedSweepParams> {
    Ok(SweepParams {
        fit: training.fit_params()?,
        personalize: training.personalize_params(),
        ranks: ranks.to_vec(),
        alphas: alphas.to_vec(),
        seeds: seeds.to_vec(),
    }
    .check()?)
}

pub fn run(args: SweepArgs, ui: &Ui) -> Result<()> {
    let options: SweepOptions =
        config::resolve(&args, args.config.as_deref(), &SweepOptions::default())?;
    let splits = options.splits.as_deref().ok_or_else(|| {
        anyhow!("give --splits DIR (a folder made by `lore split` or `lore simulate`)")
    })?;
    let params = sweep_params(
        &options.training,
        &options.ranks,
        &options.alphas,
        &options.seeds,
    )?;
    check_output_dir(&options.out)?;

    let files = SplitFolder::open(splits)?;
    let sets = ExperimentSets::from_folder(&files)?;
    let results = if options.v_ref.as_deref().is_some_and(is_bt) {
        if options.ranks.iter().all(|&k| k == 0) {
            bail!(
                "--v-ref bt pulls toward a fitted Bradley-Terry direction, not a reference head, \
                 so K = 0 is skipped: ask for a rank K >= 1"
            );
        }
        ui.note(format!("{}: {}", splits.display(), files.describe()));
        ui.note(
            "--v-ref bt: for each seed, one shared Bradley-Terry reward (K = 1, alpha 0) is fitted \
             on the seen users first; the alpha > 0 runs pull toward its direction",
        );
        if options.ranks.contains(&0) {
            ui.note("K = 0 (ref) skipped: a Bradley-Terry direction is not a reference head");
        }
        run_sweep_bt(&sets, &params, ui)
    } else {
        let v_ref = files.v_ref(options.v_ref.as_deref())?;
        let v_ref_values = v_ref.as_ref().map(|(v, _)| v.as_slice());
        params
            .check_inputs(&sets, v_ref_values)
            .with_context(|| format!("sweeping {}", splits.display()))?;
        ui.note(format!("{}: {}", splits.display(), files.describe()));
        match &v_ref {
            Some((_, path)) => ui.note(format!("reference head: {}", path.display())),
            None if options.ranks.contains(&0) => ui.note(
                "K = 0 (ref) skipped: no v_ref (give --v-ref FILE, or put v_ref.safetensors in the \
                 split folder)",
            ),
            None => {}
        }
        run_sweep(&sets, v_ref_values, &params, ui)
    }
    .with_context(|| format!("sweeping {}", splits.display()))?;
    create_output_dir(&options.out)?;
    config::write_effective(&options.out, "sweep", &options)?;
    write_results(
        &options.out,
        "accuracy_vs_rank",
        &results,
        &options.seeds,
        options.json,
        ui,
    )?;
    Ok(())
}

/// Runs the sweep with a progress bar; prints how long it took.
pub fn run_sweep(
    sets: &ExperimentSets,
    v_ref: Option<&[f32]>,
    params: &lore_experiment::CheckedSweepParams,
    ui: &Ui,
) -> Result<SweepResults> {
    with_progress(params.total_steps(), ui, |observer| {
        sweep(sets, v_ref, params, observer)
    })
}

/// The sweep anchored on Bradley-Terry (`--v-ref bt`), with a progress bar.
fn run_sweep_bt(
    sets: &ExperimentSets,
    params: &lore_experiment::CheckedSweepParams,
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

/// Writes results.json, results.csv and the charts (`chart_stem`.png) into `dir`, and prints
/// the table (or the JSON object with `json`).
pub fn write_results(
    dir: &Path,
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
        crate::config::CONFIG_FILE,
        dir.display()
    ));
    Ok(())
}
