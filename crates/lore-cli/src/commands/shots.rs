//! `lore shots`: unseen users' accuracy against the number of few-shot pairs.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use lore_experiment::{shots_curve, ExperimentSets, ShotsParams};
use lore_io::{OutputFolder, SplitFolder};
use serde::{Deserialize, Serialize};

use super::common::{prune_note, TrainingArgs, TrainingConfig};
use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;
use crate::report;

/// Unseen users' accuracy against the number of few-shot pairs (the basis fixed).
///
/// How many pairs does a new user need? For each rank K the basis is fitted once on the seen
/// users; then for each shots count and trial, that many pairs are drawn afresh from each
/// unseen user's few-shot rows (all of them when they have fewer), the unseen users are
/// personalized on them and evaluated on their test rows.
///
/// K = 0 (the reference head) and K = 1 (one shared reward) need no personalization: their
/// curves are flat baselines. Make the split with enough few-shot rows for the largest count
/// (e.g. `lore split --shots 50`).
///
/// Writes into --out: results.json, results.csv, shots.png and config.toml; prints a table of
/// unseen users' test accuracy (mean ± std over users, mean over trials [std over trials]).
/// Options can also come from a TOML file (--config) under their long names.
///
/// Example: lore shots --splits splits/ --ranks 1,4 --shots 5,10,20,50 --trials 5 --out shots/
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
#[serde(rename_all = "kebab-case")]
pub struct ShotsArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Split folder (as written by `lore split` or `lore simulate`) [required]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    splits: Option<PathBuf>,

    /// Ranks K, comma-separated, one curve each; 0 = the reference head
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ranks: Option<Vec<usize>>,

    /// Few-shot pairs per unseen user, comma-separated
    #[arg(long, value_delimiter = ',', value_name = "N,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    shots: Option<Vec<usize>>,

    /// Draws of the few-shot pairs per count
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    trials: Option<usize>,

    /// Seed of the fit, the draws and the personalization
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,

    /// Strength of the pull toward v_ref; > 0 needs a v_ref
    #[arg(long, value_name = "A")]
    #[serde(skip_serializing_if = "Option::is_none")]
    alpha: Option<f64>,

    /// File with the reference head `v_ref` ([F] or [F,1]) [default: the split folder's
    /// v_ref.safetensors, if any]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    v_ref: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    training: TrainingArgs,

    /// Output folder (created if missing; a folder lore wrote is replaced whole)
    #[arg(long, short = 'o', value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,

    /// Replace --out even when it is a non-empty folder that lore did not write (or that holds
    /// another command's output); it is replaced whole, never merged. Inputs are never replaced
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    force: bool,

    /// Print results.json's object on stdout instead of the table
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    json: bool,
}

/// The resolved options of `lore shots`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct ShotsConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    splits: Option<PathBuf>,
    ranks: Vec<usize>,
    shots: Vec<usize>,
    trials: usize,
    seed: u64,
    alpha: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    v_ref: Option<PathBuf>,
    #[serde(flatten)]
    training: TrainingConfig,
    #[serde(with = "crate::config::path::required")]
    out: PathBuf,
    json: bool,
    /// --force: never written into config.toml, so that a rerun from it does not force.
    #[serde(default, skip_serializing)]
    force: bool,
}

impl Default for ShotsConfig {
    /// The paper's few-shot study ([`ShotsParams::reference`]).
    fn default() -> Self {
        let p = ShotsParams::reference(TrainingConfig::default().method);
        Self {
            splits: None,
            ranks: p.ranks,
            shots: p.shots,
            trials: p.trials,
            seed: p.fit.seed,
            alpha: p.fit.alpha,
            v_ref: None,
            training: TrainingConfig::default(),
            out: "lore-shots".into(),
            json: false,
            force: false,
        }
    }
}

impl Configurable for ShotsArgs {
    type Options = ShotsConfig;
    fn defaults() -> ShotsConfig {
        ShotsConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
    fn default_notes() -> Vec<(&'static str, String)> {
        vec![prune_note()]
    }
}

pub fn run(args: ShotsArgs, ui: &Ui) -> Result<()> {
    let options = config::options(&args)?;
    let splits = options.splits.as_deref().ok_or_else(|| {
        anyhow!("give --splits DIR (a folder made by `lore split` or `lore simulate`)")
    })?;
    let params = ShotsParams {
        fit: options
            .training
            .fit_params()
            .alpha(options.alpha)
            .seed(options.seed),
        personalize: options.training.personalize_params(),
        ranks: options.ranks.clone(),
        shots: options.shots.clone(),
        trials: options.trials,
    }
    .check()?;
    let mut inputs: Vec<(&str, &Path)> = vec![("--splits", splits)];
    if let Some(v_ref) = options.v_ref.as_deref() {
        inputs.push(("--v-ref", v_ref));
    }

    let files = SplitFolder::open(splits)?;
    let sets = ExperimentSets::from_folder(&files)?;
    crate::sizes::check_shots(&sets, &params)?;
    let folder = OutputFolder::create(&options.out, "shots", options.force, &inputs)?;
    let v_ref = files.v_ref(options.v_ref.as_deref())?;
    let v_ref_values = v_ref.as_ref().map(|(v, _)| v.as_slice());
    params
        .check_inputs(&sets, v_ref_values)
        .with_context(|| format!("few-shot curve on {}", splits.display()))?;
    ui.note(format!("{}: {}", splits.display(), files.describe()));
    if v_ref.is_none() && options.ranks.contains(&0) {
        ui.note("K = 0 (ref) skipped: no v_ref (give --v-ref FILE, or put v_ref.safetensors in the split folder)");
    }
    let unseen = sets.unseen_train();
    let fewest = (0..unseen.n_users())
        .map(|u| unseen.user_rows(u).len())
        .min()
        .unwrap_or(0);
    if let Some(&most) = options.shots.iter().max() {
        if most > fewest {
            ui.note(format!(
                "note: some unseen users have only {fewest} few-shot pairs; at {most} shots (and any count above {fewest}) they use all they have (make the split with a larger --shots for the full curve)"
            ));
        }
    }
    let started = Instant::now();
    let bar = ui.steps(params.total_steps(), "shots");
    let mut done = 0u64;
    let results = shots_curve(&sets, v_ref_values, &params, |p| {
        done += 1;
        bar.set_position(done);
        if p.step % 10 == 0 {
            bar.set_message(report::progress_message(p));
        }
    })
    .with_context(|| format!("few-shot curve on {}", splits.display()))?;
    bar.finish_and_clear();
    ui.note(format!("done in {:.1?}", started.elapsed()));

    let dir = folder.path();
    let value = report::shots_json(&results, options.trials);
    let text = serde_json::to_string_pretty(&value)? + "\n";
    lore_io::write_bytes_atomic(dir.join(report::RESULTS_JSON), text.as_bytes())?;
    lore_io::write_bytes_atomic(
        dir.join(report::RESULTS_CSV),
        report::shots_csv(&results).as_bytes(),
    )?;
    report::shots_chart(&dir.join("shots.png"), &results)?;
    config::write_effective_in(dir, &options.out, "shots", &options)?;
    folder.commit()?;
    if options.json {
        println!("{value}");
    } else {
        println!("{}", report::shots_table(&results));
    }
    ui.note(format!(
        "wrote {}, {}, shots.png and {} in {}",
        report::RESULTS_JSON,
        report::RESULTS_CSV,
        config::CONFIG_FILE,
        options.out.display()
    ));
    Ok(())
}
