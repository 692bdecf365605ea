//! `lore sweep`: accuracy against rank on a split folder, as in the paper's figures.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lore_experiment::{ExperimentSets, SweepParams};
use lore_io::{OutputFolder, SplitFolder};
use serde::{Deserialize, Serialize};

use super::common::{
    is_bt, prune_note, run_sweep, run_sweep_bt, sweep_params, write_results, TrainingArgs,
    TrainingConfig,
};
use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;

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
/// A split folder whose sets record different embedders (metadata `embedder`: files embedded
/// with another model or setting), or a --v-ref made for other features, is refused.
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
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Split folder: seen_train, seen_test, unseen_train, unseen_test .safetensors (as written
    /// by `lore split` or `lore simulate`) [required]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    splits: Option<PathBuf>,

    /// Ranks K, comma-separated; 0 = the reference head
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ranks: Option<Vec<usize>>,

    /// Strengths of the pull toward v_ref, comma-separated; > 0 needs a v_ref
    #[arg(long, value_delimiter = ',', value_name = "A,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    alphas: Option<Vec<f64>>,

    /// Seeds of the random starts, comma-separated; several add mean and std over seeds
    #[arg(long, value_delimiter = ',', value_name = "S,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seeds: Option<Vec<u64>>,

    /// File with the reference head `v_ref` ([F] or [F,1]), or `bt`: per seed, fit K = 1 with
    /// alpha 0 on the seen users first and pull toward its direction (K = 0 is then skipped)
    /// [default: the split folder's v_ref.safetensors, if any]
    #[arg(long, value_name = "FILE|bt")]
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

/// The resolved options of `lore sweep`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct SweepConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    splits: Option<PathBuf>,
    ranks: Vec<usize>,
    alphas: Vec<f64>,
    seeds: Vec<u64>,
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

impl Default for SweepConfig {
    /// The paper's sweep ([`SweepParams::reference`]).
    fn default() -> Self {
        let p = SweepParams::reference(TrainingConfig::default().method);
        Self {
            splits: None,
            ranks: p.ranks,
            alphas: p.alphas,
            seeds: p.seeds,
            v_ref: None,
            training: TrainingConfig::default(),
            out: "lore-sweep".into(),
            json: false,
            force: false,
        }
    }
}

impl Configurable for SweepArgs {
    type Options = SweepConfig;
    fn defaults() -> SweepConfig {
        SweepConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
    fn default_notes() -> Vec<(&'static str, String)> {
        vec![prune_note()]
    }
}

pub fn run(args: SweepArgs, ui: &Ui) -> Result<()> {
    let options = config::options(&args)?;
    let splits = options.splits.as_deref().ok_or_else(|| {
        anyhow!("give --splits DIR (a folder made by `lore split` or `lore simulate`)")
    })?;
    let params = sweep_params(
        &options.training,
        &options.ranks,
        &options.alphas,
        &options.seeds,
    )?;
    let mut inputs: Vec<(&str, &Path)> = vec![("--splits", splits)];
    if let Some(v_ref) = options.v_ref.as_deref().filter(|p| !is_bt(p)) {
        inputs.push(("--v-ref", v_ref));
    }

    let files = SplitFolder::open(splits)?;
    let sets = ExperimentSets::from_folder(&files)?;
    crate::sizes::check_sweep(&sets, &params)?;
    let folder = OutputFolder::create(&options.out, "sweep", options.force, &inputs)?;
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
    config::write_effective_in(folder.path(), &options.out, "sweep", &options)?;
    write_results(
        folder.path(),
        &options.out,
        "accuracy_vs_rank",
        &results,
        &options.seeds,
        options.json,
        ui,
    )?;
    folder.commit()?;
    Ok(())
}
