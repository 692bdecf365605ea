//! `lore split`: the four sets of the paper's evaluation from one preference file.

use std::path::PathBuf;

use anyhow::{anyhow, Result};
use clap::Args;
use lore_experiment::report::split_file;
use lore_experiment::SplitParams;
use lore_io::{OutputFolder, SplitFolder};
use serde::{Deserialize, Serialize};

use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;

/// Split preferences into the four sets: seen/unseen users, training/test rows.
///
/// Users are divided into seen and unseen users, and each user's rows into training and test
/// rows; the four sets are written into a folder:
///
///   seen_train.safetensors     seen users' training rows (the basis is fitted on them)
///   seen_test.safetensors      seen users' held-out rows (same users, same indices)
///   unseen_train.safetensors   unseen users' few-shot rows (--shots each)
///   unseen_test.safetensors    unseen users' held-out rows (same users, same indices)
///   split.json                 the options and counts; config.toml: the effective options
///   v_ref.safetensors          the input's `v_ref` tensor, when it has one
///
/// Users with fewer than --min-rows rows are left out. Unseen users are drawn from the users
/// with more than --shots rows. With --by-prompt, prompts (tensor `prompt_id` [P], or metadata
/// `prompt_ids`, a JSON array of one id per row) are split instead of rows, so that test
/// prompts never appear in training. Users are sorted by id (metadata `user_ids`, else by
/// index) before any shuffling: the same input, options and seed give byte-identical files.
///
/// Each set keeps the input's per-row tensors (`x` in its precision, `prompt_id`, ...), adds
/// `source_row` (each row's index in the input) and metadata `source_users`, and carries
/// `user_ids` and the embedder that made the features (metadata `embedder`, also in
/// split.json) when the input has them.
///
/// Example: lore split --data prefs.safetensors --unseen-fraction 0.3 --shots 10 --out splits/
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment)]
#[serde(rename_all = "kebab-case")]
pub struct SplitArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Preference file: `x` [P,F] or `chosen`/`rejected`, `user` [P]; optional `prompt_id`
    /// [P] and metadata `user_ids`, `prompt_ids`, `pair_ids` [required]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,

    /// Fraction of the users held out as unseen users
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    unseen_fraction: Option<f64>,

    /// Fraction of a seen user's rows for training (with --by-prompt: of the prompts)
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    train_fraction: Option<f64>,

    /// Leave out users with fewer rows
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    min_rows: Option<usize>,

    /// At most N training rows per seen user [default: no limit]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_train_rows: Option<usize>,

    /// Few-shot rows per unseen user
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    shots: Option<usize>,

    /// Split prompts rather than rows, so that test prompts are unseen in training
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    by_prompt: bool,

    /// Seed of the shuffles
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,

    /// Output folder (created if missing; a folder lore wrote is replaced whole) [required]
    #[arg(long, short = 'o', value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,

    /// Replace --out even when it is a non-empty folder that lore did not write (or that holds
    /// another command's output); it is replaced whole, never merged. Inputs are never replaced
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    force: bool,
}

/// The resolved options of `lore split`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct SplitConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,
    unseen_fraction: f64,
    train_fraction: f64,
    min_rows: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_train_rows: Option<usize>,
    shots: usize,
    by_prompt: bool,
    seed: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
    /// --force: never written into config.toml, so that a rerun from it does not force.
    #[serde(default, skip_serializing)]
    force: bool,
}

impl Default for SplitConfig {
    fn default() -> Self {
        let p = SplitParams::default();
        Self {
            data: None,
            unseen_fraction: p.unseen_fraction,
            train_fraction: p.train_fraction,
            min_rows: p.min_rows,
            max_train_rows: p.max_train_rows,
            shots: p.shots,
            by_prompt: p.by_prompt,
            seed: p.seed,
            out: None,
            force: false,
        }
    }
}

impl Configurable for SplitArgs {
    type Options = SplitConfig;
    fn defaults() -> SplitConfig {
        SplitConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
}

pub fn run(args: SplitArgs, ui: &Ui) -> Result<()> {
    let options = config::options(&args)?;
    let data = options
        .data
        .as_deref()
        .ok_or_else(|| anyhow!("give --data FILE (the preference file to split)"))?;
    let out = options
        .out
        .as_deref()
        .ok_or_else(|| anyhow!("give --out DIR (the folder for the four sets)"))?;
    let params = SplitParams {
        unseen_fraction: options.unseen_fraction,
        train_fraction: options.train_fraction,
        min_rows: options.min_rows,
        max_train_rows: options.max_train_rows,
        shots: options.shots,
        by_prompt: options.by_prompt,
        seed: options.seed,
    }
    .check()?;
    let folder = OutputFolder::create(out, "split", options.force, &[("--data", data)])?;

    let dir = folder.path();
    let written = split_file(data, dir, &params)?;
    if !written.skipped.is_empty() {
        ui.note(format!(
            "not carried into the sets (unsupported dtype): {}",
            written.skipped.join(", ")
        ));
    }
    config::write_effective_in(dir, out, "split", &options)?;
    folder.commit()?;
    ui.note(written.description);
    ui.note(format!(
        "wrote the four sets, {}{} and {} in {}",
        SplitFolder::SPLIT_JSON,
        if written.wrote_v_ref {
            format!(", {}", SplitFolder::V_REF_FILE)
        } else {
            String::new()
        },
        config::CONFIG_FILE,
        out.display()
    ));
    // The same pair in training and test (duplicated rows of the input), read back as written.
    for finding in lore_io::checks::check_split(&SplitFolder::open(out)?)? {
        ui.note(format!("{}: {finding}", finding.severity.name()));
    }
    Ok(())
}
