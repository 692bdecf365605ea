//! `lore simulate`: a PersonalLLM-style population written as a split folder.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lore_core::FeatureRows;
use lore_experiment::{synthetic_responses, Population, ResponseSet};
use lore_io::{read_v_ref, MemoryRows, OutputFolder, SplitFolder, TensorFile, TensorWriter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::common::{simulate_population, PopulationArgs, PopulationConfig};
use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;

/// The file with the whole population, beside the four sets.
pub const POPULATION_FILE: &str = "population.safetensors";

/// Simulate users who mix J reward functions (PersonalLLM-style) as a split folder.
///
/// The folder is what `lore sweep` and `lore shots` read.
///
/// Each user draws weights w ~ Dirichlet(alpha 1_J); on a prompt they prefer the response with
/// the highest weighted score w . s over the one with the lowest, giving the row
/// x = e(best) - e(worst). Prompts are split into training and test prompts; seen users answer
/// --seen-fraction of the training prompts, unseen users --unseen-fraction (their few shots),
/// and everyone --test-fraction of the test prompts.
///
/// Responses come from --responses FILE (tensors `embeddings` [M,R,F] and `scores` [M,R,J],
/// optionally `v_ref` [F]) or, without it, are built in: J planted unit reward directions
/// in F dimensions, Gaussian embeddings, scores s_j = e . d_j (a population of true rank J).
///
/// Writes into --out the four sets (seen_train, seen_test, unseen_train, unseen_test
/// .safetensors, with `prompt_id` and `user_ids`), v_ref.safetensors (the file's `v_ref`, else
/// the least-squares direction of the population's average score), population.safetensors
/// (all rows, plus the users' true `weights` [N,J] and, when built in, the `directions` [J,F]),
/// split.json and config.toml. The same options write byte-identical files.
///
/// Example: lore simulate --seen-users 500 --unseen-users 200 --rewards 6 --out population/
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment)]
#[serde(rename_all = "kebab-case")]
pub struct SimulateArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Responses to simulate on: `embeddings` [M,R,F] and `scores` [M,R,J] (optional `v_ref`
    /// [F]) [default: built-in synthetic responses]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    responses: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    population: PopulationArgs,

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

/// The resolved options of `lore simulate`.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
pub struct SimulateConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    responses: Option<PathBuf>,
    #[serde(flatten)]
    population: PopulationConfig,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
    /// --force: never written into config.toml, so that a rerun from it does not force.
    #[serde(default, skip_serializing)]
    force: bool,
}

/// Responses read from a file: embeddings, scores, their sizes and an optional v_ref.
struct FileResponses {
    embeddings: Vec<f32>,
    scores: Vec<f32>,
    dims: [usize; 3],
    n_rewards: usize,
    v_ref: Option<Vec<f32>>,
}

fn read_responses(path: &Path) -> Result<FileResponses> {
    let file = TensorFile::open(path)?;
    let (e_shape, embeddings) = file.tensor_f32("embeddings")?;
    let (s_shape, scores) = file.tensor_f32("scores")?;
    let (&[m, r, f], &[sm, sr, j]) = (&e_shape[..], &s_shape[..]) else {
        bail!(
            "{}: `embeddings` must be [M, R, F] and `scores` [M, R, J] (got {e_shape:?} and \
             {s_shape:?})",
            path.display()
        );
    };
    if (sm, sr) != (m, r) {
        bail!(
            "{}: `scores` is for {sm} prompts x {sr} responses but `embeddings` for {m} x {r}",
            path.display()
        );
    }
    let v_ref = if file.has("v_ref") {
        let v = read_v_ref(path)?;
        if v.len() != f {
            bail!(
                "{}: `v_ref` has {} values, expected F = {f}",
                path.display(),
                v.len()
            );
        }
        Some(v)
    } else {
        None
    };
    Ok(FileResponses {
        embeddings,
        scores,
        dims: [m, r, f],
        n_rewards: j,
        v_ref,
    })
}

impl Configurable for SimulateArgs {
    type Options = SimulateConfig;
    fn defaults() -> SimulateConfig {
        SimulateConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
}

pub fn run(args: SimulateArgs, ui: &Ui) -> Result<()> {
    let options = config::options(&args)?;
    let out = options
        .out
        .as_deref()
        .ok_or_else(|| anyhow!("give --out DIR (the folder for the four sets)"))?;
    let inputs: Vec<(&str, &Path)> = options
        .responses
        .as_deref()
        .map(|p| ("--responses", p))
        .into_iter()
        .collect();
    let folder = OutputFolder::create(out, "simulate", options.force, &inputs)?;
    let params = options.population.population()?;

    let (population, directions, v_ref_origin) = match &options.responses {
        Some(path) => {
            let read = read_responses(path)?;
            let [m, r, f] = read.dims;
            crate::sizes::check_simulate(&params, None, [m, r, f, read.n_rewards])?;
            let responses =
                ResponseSet::new(&read.embeddings, &read.scores, read.dims, read.n_rewards)
                    .with_context(|| path.display().to_string())?;
            let origin = match read.v_ref {
                Some(_) => format!("`v_ref` of {}", path.display()),
                None => format!(
                    "least-squares direction of the average score of {}",
                    path.display()
                ),
            };
            let population = simulate_population(&responses, &params, read.v_ref, ui)?;
            (population, None, origin)
        }
        None => {
            let p = &options.population;
            crate::sizes::check_simulate(
                &params,
                Some(&p.synthetic()),
                [p.prompts, p.per_prompt, p.features, p.rewards],
            )?;
            let synthetic = synthetic_responses(&p.synthetic())?;
            let population = simulate_population(&synthetic.view(), &params, None, ui)?;
            let origin = "the mean of the planted reward directions".to_string();
            (population, Some(synthetic.directions), origin)
        }
    };

    let dir = folder.path();
    let rows = MemoryRows {
        features: FeatureRows::F32(&population.features),
        n_features: population.n_features,
        prompts: Some(&population.prompts),
    };
    population
        .split
        .write_sets(dir, &rows, Some(&population.user_ids))?;
    SplitFolder::write_v_ref(dir, &population.v_ref, &v_ref_origin)?;
    write_population(
        &dir.join(POPULATION_FILE),
        &population,
        directions.as_deref(),
    )?;
    let mut summary = json!({ "simulation": options.population });
    if let Some(path) = &options.responses {
        summary["responses"] = json!(path.display().to_string());
    }
    summary["counts"] = population.split.counts();
    SplitFolder::write_split_json(dir, &summary)?;
    config::write_effective_in(dir, out, "simulate", &options)?;
    folder.commit()?;
    ui.note(population.split.describe());
    ui.note(format!(
        "wrote the four sets, v_ref.safetensors, {POPULATION_FILE}, split.json and config.toml in {}",
        out.display()
    ));
    Ok(())
}

/// All rows in one preference file (to re-split with `lore split`), with the truth.
fn write_population(
    path: &Path,
    population: &Population,
    directions: Option<&[f32]>,
) -> Result<()> {
    let (p, f) = (population.users.len(), population.n_features);
    let (n, j) = (population.user_ids.len(), population.n_rewards);
    let users: Vec<i64> = population.users.iter().map(|&u| u as i64).collect();
    let prompts: Vec<i64> = population.prompts.iter().map(|&m| m as i64).collect();
    let mut out = TensorWriter::new();
    out.add_f32("x", &[p, f], &population.features)
        .add_i64("user", &[p], &users)
        .add_i64("prompt_id", &[p], &prompts)
        .add_f32("weights", &[n, j], &population.weights)
        .add_f32("v_ref", &[f], &population.v_ref)
        .metadata("kind", "population")
        .metadata("user_ids", &population.user_ids);
    if let Some(d) = directions {
        out.add_f32("directions", &[j, f], d);
    }
    out.write_atomic(path)?;
    Ok(())
}
