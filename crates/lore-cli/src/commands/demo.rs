//! `lore demo`: the whole experiment on a built-in population, with no input and no download.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Args;
use lore_core::{FeatureRows, Method};
use lore_experiment::synthetic_responses;
use lore_experiment::{OwnedSets, SweepParams};
use lore_io::OutputFolder;
use serde::{Deserialize, Serialize};

use super::common::{
    prune_note, run_sweep, simulate_population, sweep_params, write_results, PopulationArgs,
    PopulationConfig, TrainingArgs, TrainingConfig,
};
use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;

/// The whole experiment on a built-in population, in under a minute, with no input.
///
/// Simulates users who mix J = 4 planted reward directions (seen and unseen users, training
/// and test prompts), fits bases of rank 1 to 6 on the seen users, personalizes the unseen
/// users from 10 pairs each, compares with the reference head ("ref", the population's
/// average reward), and reports the four accuracies.
///
/// Prints the table and writes into --out: demo.png (accuracy against rank), results.json,
/// results.csv and config.toml. Expect the unseen users' test accuracy to climb from about 0.8
/// (ref, K = 1: one reward for everyone) to about 0.98 at K = 4, the planted rank, and to stay
/// there.
///
/// Every option of `lore simulate` and `lore sweep` can be changed (e.g. --rewards 6
/// --ranks 0,1,2,4,6,8); options can also come from a TOML file (--config).
///
/// Example: lore demo --out lore-demo
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
#[serde(rename_all = "kebab-case")]
pub struct DemoArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    #[command(flatten)]
    #[serde(flatten)]
    population: PopulationArgs,

    /// Ranks K, comma-separated; 0 = the reference head
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ranks: Option<Vec<usize>>,

    /// Seeds of the fits, comma-separated; several add mean and std over seeds
    #[arg(long, value_delimiter = ',', value_name = "S,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seeds: Option<Vec<u64>>,

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

/// The resolved options of `lore demo`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct DemoConfig {
    #[serde(flatten)]
    population: PopulationConfig,
    ranks: Vec<usize>,
    seeds: Vec<u64>,
    #[serde(flatten)]
    training: TrainingConfig,
    #[serde(with = "crate::config::path::required")]
    out: PathBuf,
    json: bool,
    /// --force: never written into config.toml, so that a rerun from it does not force.
    #[serde(default, skip_serializing)]
    force: bool,
}

impl Default for DemoConfig {
    /// The built-in population, ranks ref and 1 to 6, the reference's hyperparameters.
    fn default() -> Self {
        Self {
            population: PopulationConfig::default(),
            ranks: (0..=6).collect(),
            seeds: SweepParams::reference(Method::default()).seeds,
            training: TrainingConfig::default(),
            out: "lore-demo".into(),
            json: false,
            force: false,
        }
    }
}

impl Configurable for DemoArgs {
    type Options = DemoConfig;
    fn defaults() -> DemoConfig {
        DemoConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
    fn default_notes() -> Vec<(&'static str, String)> {
        vec![prune_note()]
    }
}

pub fn run(args: DemoArgs, ui: &Ui) -> Result<()> {
    let started = Instant::now();
    let options = config::options(&args)?;
    let params = sweep_params(&options.training, &options.ranks, &[0.0], &options.seeds)?;
    let folder = OutputFolder::create(&options.out, "demo", options.force, &[])?;

    let p = &options.population;
    if let Some(&k) = options.ranks.iter().max().filter(|&&k| k > p.features) {
        anyhow::bail!(
            "invalid --ranks: {k} exceeds --features {} (the basis V [F x K] has rank at most F)",
            p.features
        );
    }
    crate::sizes::check_simulate(
        &p.population()?,
        Some(&p.synthetic()),
        [p.prompts, p.per_prompt, p.features, p.rewards],
    )?;
    ui.note(format!(
        "simulating {} seen and {} unseen users who mix J = {} planted reward directions \
         (F = {}, {} prompts of {} responses)",
        p.seen_users, p.unseen_users, p.rewards, p.features, p.prompts, p.per_prompt
    ));
    let responses = synthetic_responses(&p.synthetic())?;
    let population = simulate_population(&responses.view(), &p.population()?, None, ui)?;
    ui.note(population.split.describe());
    let owned = OwnedSets::gather(
        FeatureRows::F32(&population.features),
        population.n_features,
        &population.split,
    )?;
    let sets = owned.sets()?;
    crate::sizes::check_sweep(&sets, &params)?;
    let results = run_sweep(&sets, Some(&population.v_ref), &params, ui)?;

    config::write_effective_in(folder.path(), &options.out, "demo", &options)?;
    write_results(
        folder.path(),
        &options.out,
        "demo",
        &results,
        &options.seeds,
        options.json,
        ui,
    )?;
    folder.commit()?;
    let unseen = |k: usize| {
        results
            .rows
            .iter()
            .find(|r| r.rank == k)
            .map(|r| r.unseen_test.mean)
    };
    if let (Some(one), Some(planted)) = (unseen(1), unseen(p.rewards)) {
        ui.note(format!(
            "the population's true rank is {}: unseen users' test accuracy goes from {one:.3} \
             with one shared reward (K = 1) to {planted:.3} at K = {}",
            p.rewards, p.rewards
        ));
    }
    ui.note(format!("demo done in {:.1?}", started.elapsed()));
    Ok(())
}
