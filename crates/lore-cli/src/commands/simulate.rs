//! `lore simulate`: a PersonalLLM-style population written as a split folder.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use clap::Args;
use lore_core::FeatureRows;
use lore_experiment::{
    simulate, synthetic_responses, Population, PopulationParams, ResponseSet, SyntheticParams,
};
use lore_io::{read_v_ref, MemoryRows, SplitFolder, TensorFile, TensorWriter};
use serde::{Deserialize, Serialize};
use serde_json::json;

use super::{check_output_dir, create_output_dir};
use crate::config::{self};
use crate::progress::Ui;

/// The file with the whole population, beside the four sets.
pub const POPULATION_FILE: &str = "population.safetensors";

/// Who the simulated users are and which prompts they answer (shared with `lore demo`).
#[derive(Args, Serialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
pub struct PopulationArgs {
    /// Number of seen users (the basis is fitted on them) [default: 300]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seen_users: Option<usize>,

    /// Number of unseen users (personalized from their few-shot rows) [default: 100]
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    unseen_users: Option<usize>,

    /// Users' weights are drawn from Dirichlet(A 1_J): small A gives users close to one reward
    /// function, large A users close to the average [default: 0.1]
    #[arg(long, value_name = "A")]
    #[serde(skip_serializing_if = "Option::is_none")]
    dirichlet_alpha: Option<f64>,

    /// Noise on every response's score, drawn afresh per user and prompt (standard deviation;
    /// synthetic scores have std about 1): users then disagree with their own reward at times.
    /// With --rewards 1 every user shares one reward plus this noise [default: 0]
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    score_noise: Option<f64>,

    /// Fraction of the prompts held out as test prompts [default: 0.5]
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_prompts: Option<f64>,

    /// Fraction of the training prompts each seen user answers [default: 0.25]
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seen_fraction: Option<f64>,

    /// Fraction of the training prompts each unseen user answers: their few-shot rows
    /// [default: 0.05]
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    unseen_fraction: Option<f64>,

    /// Fraction of the test prompts each user answers: their test rows [default: 0.25]
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    test_fraction: Option<f64>,

    /// Built-in responses: embedding dimension F [default: 64]
    #[arg(long, value_name = "F")]
    #[serde(skip_serializing_if = "Option::is_none")]
    features: Option<usize>,

    /// Built-in responses: number of planted reward directions J, the true rank [default: 4]
    #[arg(long, value_name = "J")]
    #[serde(skip_serializing_if = "Option::is_none")]
    rewards: Option<usize>,

    /// Built-in responses: number of prompts M [default: 400]
    #[arg(long, value_name = "M")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prompts: Option<usize>,

    /// Built-in responses: responses per prompt R [default: 4]
    #[arg(long, value_name = "R")]
    #[serde(skip_serializing_if = "Option::is_none")]
    per_prompt: Option<usize>,

    /// Seed of the responses, the users and their prompts [default: 0]
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,
}

/// The resolved population options.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq)]
#[serde(rename_all = "kebab-case")]
pub struct PopulationOptions {
    pub seen_users: usize,
    pub unseen_users: usize,
    pub dirichlet_alpha: f64,
    pub test_prompts: f64,
    pub seen_fraction: f64,
    pub unseen_fraction: f64,
    pub test_fraction: f64,
    #[serde(default)]
    pub score_noise: f64,
    pub features: usize,
    pub rewards: usize,
    pub prompts: usize,
    pub per_prompt: usize,
    pub seed: u64,
}

impl Default for PopulationOptions {
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
            features: s.n_features,
            rewards: s.n_rewards,
            prompts: s.n_prompts,
            per_prompt: s.n_responses,
            seed: p.seed,
        }
    }
}

impl PopulationOptions {
    /// The core's population parameters.
    pub fn population(&self) -> PopulationParams {
        PopulationParams {
            n_seen_users: self.seen_users,
            n_unseen_users: self.unseen_users,
            dirichlet_alpha: self.dirichlet_alpha,
            test_prompt_fraction: self.test_prompts,
            seen_fraction: self.seen_fraction,
            unseen_fraction: self.unseen_fraction,
            test_fraction: self.test_fraction,
            score_noise: self.score_noise,
            seed: self.seed,
        }
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
    /// TOML file of options (keys are the long flags); flags given here override it
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    config: Option<PathBuf>,

    /// Responses to simulate on: `embeddings` [M,R,F] and `scores` [M,R,J] (optional `v_ref`
    /// [F]) [default: built-in synthetic responses]
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    responses: Option<PathBuf>,

    #[command(flatten)]
    #[serde(flatten)]
    population: PopulationArgs,

    /// Output folder (created if missing) [required]
    #[arg(long, short = 'o', value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,
}

/// The resolved options of `lore simulate`.
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
struct SimulateOptions {
    #[serde(skip_serializing_if = "Option::is_none")]
    responses: Option<PathBuf>,
    #[serde(flatten)]
    population: PopulationOptions,
    #[serde(skip_serializing_if = "Option::is_none")]
    out: Option<PathBuf>,
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

pub fn run(args: SimulateArgs, ui: &Ui) -> Result<()> {
    let options: SimulateOptions =
        config::resolve(&args, args.config.as_deref(), &SimulateOptions::default())?;
    let out = options
        .out
        .as_deref()
        .ok_or_else(|| anyhow!("give --out DIR (the folder for the four sets)"))?;
    check_output_dir(out)?;
    let params = options.population.population();

    let (population, directions, v_ref_origin) = match &options.responses {
        Some(path) => {
            let read = read_responses(path)?;
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
            let synthetic = synthetic_responses(&options.population.synthetic())?;
            let population = simulate_population(&synthetic.view(), &params, None, ui)?;
            let origin = "the mean of the planted reward directions".to_string();
            (population, Some(synthetic.directions), origin)
        }
    };

    create_output_dir(out)?;
    let rows = MemoryRows {
        features: FeatureRows::F32(&population.features),
        n_features: population.n_features,
        prompts: Some(&population.prompts),
    };
    population
        .split
        .write_sets(out, &rows, Some(&population.user_ids))?;
    SplitFolder::write_v_ref(out, &population.v_ref, &v_ref_origin)?;
    write_population(
        &out.join(POPULATION_FILE),
        &population,
        directions.as_deref(),
    )?;
    let mut summary = json!({ "simulation": options.population });
    if let Some(path) = &options.responses {
        summary["responses"] = json!(path.display().to_string());
    }
    summary["counts"] = population.split.counts();
    SplitFolder::write_split_json(out, &summary)?;
    config::write_effective(out, "simulate", &options)?;
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
