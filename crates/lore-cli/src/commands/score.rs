//! `lore score`: each row's reward for its user, offline: the numbers `lore serve` answers.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use lore_core::{FeatureRows, RewardBasis};
use lore_io::{KnownUsers, ModelFile, TensorFile, TensorWriter, UsersFile};
use serde::{Deserialize, Serialize};

use super::common::check_outputs;
use crate::config::{self, ConfigFlag, Configurable};
use crate::progress::Ui;

/// Score rows with a model: each row's reward for its user, in the model's logit units.
///
/// The reward of features e for user u is r_u(e) = c * e . V w_u (c the model's logit scale),
/// so P(a preferred to b | u) = sigmoid(r_u(a) - r_u(b)), as `lore eval` and `lore serve` use.
/// Each row's user is named by `user` [rows] and metadata `user_ids`; users are the model's own
/// (named by its `user_ids`) and those of the --users files (`lore personalize` outputs, later
/// files win). A user known to neither, or a row without `user`, gets the population's mean
/// weights (softmax of the model's `prior_logits`): what a new user starts from.
///
/// Input (--data), by tensor:
///   - `x` [P,F] (pairs, x = e(chosen) - e(rejected)): writes `reward` [P] = r(chosen) -
///     r(rejected) and `probability` [P] = sigmoid(reward);
///   - `chosen` and `rejected` [P,F] (`lore embed --keep-sides`): writes `reward_chosen`,
///     `reward_rejected` and `probability` [P] = sigmoid(reward_chosen - reward_rejected);
///   - `features` [N,F] (one text's features per row): writes `reward` [N].
///
/// Output (safetensors, f64): those tensors, `user_known` [rows] (i64: 1 if the row's user is
/// known, 0 if scored with the population's weights), `user` and metadata `user_ids` copied
/// from the input when present, and the model, data and users files as metadata.
///
/// Example: lore score --model model.safetensors --users users.safetensors
///          --data test.safetensors --out scores.safetensors
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment)]
#[serde(rename_all = "kebab-case")]
pub struct ScoreArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Model file: `V` [F,K], its users (`W` named by `user_ids`) and `prior_logits` [required].
    #[arg(long, short = 'm', value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    model: Option<PathBuf>,

    /// Users file (`lore personalize` output, matched by its `user_ids`); may be repeated,
    /// later files win.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[serde(with = "paths", default)]
    users: Vec<PathBuf>,

    /// Rows to score: a file with `x`, `chosen`/`rejected` or `features`, and `user` [required].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,

    /// Output scores file (safetensors) [required].
    #[arg(long, short = 'o', value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
}

/// The resolved options of `lore score` (none has a default).
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
pub struct ScoreConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    model: Option<PathBuf>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    #[serde(with = "paths", default)]
    users: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
}

impl Configurable for ScoreArgs {
    type Options = ScoreConfig;
    fn defaults() -> ScoreConfig {
        ScoreConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
}

/// A list of paths in configurations, each as [`crate::config::path`] writes one.
mod paths {
    use std::path::PathBuf;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    #[serde(transparent)]
    struct Entry(#[serde(with = "crate::config::path::required")] PathBuf);

    /// Serializes the paths as a list.
    pub fn serialize<S: Serializer>(paths: &[PathBuf], s: S) -> Result<S::Ok, S::Error> {
        let entries: Vec<Entry> = paths.iter().cloned().map(Entry).collect();
        entries.serialize(s)
    }

    /// Reads a list of paths.
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PathBuf>, D::Error> {
        let entries = Vec::<Entry>::deserialize(d)?;
        Ok(entries.into_iter().map(|e| e.0).collect())
    }
}

/// What the rows of the data file are.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Input {
    /// `x` [P,F]: pair differences.
    Pairs,
    /// `chosen` and `rejected` [P,F]: both sides of each pair.
    Sides,
    /// `features` [N,F]: one text each.
    Rows,
}

impl Input {
    /// The input kind of `file`, by its tensors (`x` first, then both sides, then `features`).
    fn of(file: &TensorFile) -> Result<Self> {
        if file.has("x") {
            Ok(Input::Pairs)
        } else if file.has("chosen") && file.has("rejected") {
            Ok(Input::Sides)
        } else if file.has("features") {
            Ok(Input::Rows)
        } else {
            bail!(
                "{}: nothing to score: no tensor `x` [P,F], `chosen` and `rejected` [P,F], or \
                 `features` [N,F] (found: {})",
                file.path().display(),
                file.names().join(", ")
            )
        }
    }

    /// The tensors holding the rows.
    fn tensors(self) -> &'static [&'static str] {
        match self {
            Input::Pairs => &["x"],
            Input::Sides => &["chosen", "rejected"],
            Input::Rows => &["features"],
        }
    }
}

/// Each row's weights: the user's if known, else the population's, as a reward direction.
struct RowUsers {
    /// Per row: index into `directions`.
    row_direction: Vec<usize>,
    /// Per row: whether the row's user is known.
    known: Vec<bool>,
    /// Reward directions V w: `[0]` the population's, then one per known user used.
    directions: Vec<Vec<f64>>,
    /// `user` [rows] and metadata `user_ids`, when the data has them.
    user: Option<(Vec<i64>, Vec<String>)>,
}

impl RowUsers {
    /// Reads `user` [rows] and `user_ids` of `data` and resolves each row's user in `known`.
    fn resolve(
        data: &TensorFile,
        rows: usize,
        known: &KnownUsers,
        basis: &RewardBasis,
    ) -> Result<Self> {
        let path = data.path().display();
        let mut directions = vec![basis.direction(known.population())];
        if !data.has("user") {
            return Ok(Self {
                row_direction: vec![0; rows],
                known: vec![false; rows],
                directions,
                user: None,
            });
        }
        let (shape, user) = data.tensor_indices("user")?;
        if shape[..] != [rows] {
            bail!("{path}: tensor `user` has shape {shape:?}, expected [{rows}] (one per row)");
        }
        let Some(ids) = data.metadata_json::<Vec<String>>("user_ids")? else {
            bail!(
                "{path}: metadata `user_ids` is missing (rows' users are matched to the model's \
                 and --users files' users by name)"
            );
        };
        // Per user index: index into `directions` and whether known, resolved once.
        let mut slot: Vec<Option<(usize, bool)>> = vec![None; ids.len()];
        let mut row_direction = Vec::with_capacity(rows);
        let mut row_known = Vec::with_capacity(rows);
        for (i, &u) in user.iter().enumerate() {
            let Some(id) = usize::try_from(u).ok().and_then(|u| ids.get(u)) else {
                bail!(
                    "{path}: tensor `user`: row {i} has user {u}, but metadata `user_ids` names \
                     {} users",
                    ids.len()
                );
            };
            let u = u as usize;
            let (d, is_known) = match slot[u] {
                Some(resolved) => resolved,
                None => {
                    let resolved = match known.get(id) {
                        Some(weights) => {
                            directions.push(basis.direction(weights));
                            (directions.len() - 1, true)
                        }
                        None => (0, false),
                    };
                    slot[u] = Some(resolved);
                    resolved
                }
            };
            row_direction.push(d);
            row_known.push(is_known);
        }
        Ok(Self {
            row_direction,
            known: row_known,
            directions,
            user: Some((user, ids)),
        })
    }
}

/// The rows [rows, F] of tensor `name` of `data`, checked against the model's F.
fn read_rows<'f>(
    data: &'f TensorFile,
    name: &str,
    n_features: usize,
    model: &Path,
) -> Result<(usize, lore_io::Features<'f>)> {
    let (shape, rows) = data.features(name)?;
    let path = data.path().display();
    let [n, f] = shape[..] else {
        bail!("{path}: tensor `{name}` has shape {shape:?}, expected a matrix [rows, F]");
    };
    if f != n_features {
        bail!(
            "feature dimension mismatch: {} has F = {n_features}, tensor `{name}` of {path} has \
             F = {f}",
            model.display()
        );
    }
    Ok((n, rows))
}

/// The rewards of every row of `rows` [n, F], each along its row's direction; refuses a NaN
/// or infinite value, naming the tensor, row and column.
fn rewards(
    rows: FeatureRows<'_>,
    name: &str,
    data: &Path,
    basis: &RewardBasis,
    users: &RowUsers,
) -> Result<Vec<f64>> {
    let f = basis.n_features();
    let mut scratch = Vec::new();
    let mut out = Vec::with_capacity(users.row_direction.len());
    for (i, &d) in users.row_direction.iter().enumerate() {
        let row = rows.slice_f32(i * f..(i + 1) * f, &mut scratch);
        if let Some(j) = row.iter().position(|v| !v.is_finite()) {
            bail!(
                "{}: tensor `{name}`: row {i} (column {j}) is {} (values must be finite)",
                data.display(),
                row[j]
            );
        }
        out.push(basis.reward_along(row, &users.directions[d]));
    }
    Ok(out)
}

/// sigmoid(r): the probability a reward difference r (in logits) stands for.
fn sigmoid(r: f64) -> f64 {
    1.0 / (1.0 + (-r).exp())
}

pub fn run(flags: ScoreArgs, ui: &Ui) -> Result<()> {
    let args = config::options(&flags)?;
    let model = config::required(&args.model, "--model FILE")?;
    let data_path = config::required(&args.data, "--data FILE")?;
    let out = config::required(&args.out, "--out FILE")?;
    let mut inputs = vec![
        ("--model", Some(model.as_path())),
        ("--data", Some(data_path.as_path())),
        ("--config", flags.config.path.as_deref()),
    ];
    inputs.extend(args.users.iter().map(|p| ("--users", Some(p.as_path()))));
    // Before any work: the output may not replace an input, nor be unwritable.
    let checked = check_outputs(&[("--out", Some(out))], &inputs, ui)?;
    let (given_out, out) = (out, checked.path("--out").unwrap_or(out));

    let model_file = ModelFile::open(model)?;
    let basis = model_file.basis(None)?;
    let mut known = KnownUsers::from_model(&model_file)?;
    for path in &args.users {
        let n = known.import(&UsersFile::open(path)?)?;
        ui.note(format!("{}: {n} users", path.display()));
    }
    let data = TensorFile::open(data_path)?;
    let input = Input::of(&data)?;
    let names = input.tensors();
    let mut tensors = Vec::with_capacity(names.len());
    for name in names {
        tensors.push(read_rows(&data, name, basis.n_features(), model)?);
    }
    let n = tensors[0].0;
    if let Some((other, _)) = tensors.iter().find(|(rows, _)| *rows != n) {
        bail!(
            "{}: tensor `chosen` has {n} rows but `rejected` has {other}",
            data_path.display()
        );
    }
    let users = RowUsers::resolve(&data, n, &known, &basis)?;
    let mut scores = Vec::with_capacity(names.len());
    for (name, (_, rows)) in names.iter().zip(&tensors) {
        scores.push(rewards(rows.rows(), name, data_path, &basis, &users)?);
    }

    let shape = [n];
    let known_rows = users.known.iter().filter(|&&k| k).count();
    let user_known: Vec<i64> = users.known.iter().map(|&k| i64::from(k)).collect();
    let mut writer = TensorWriter::new();
    match input {
        Input::Pairs => {
            let probability: Vec<f64> = scores[0].iter().map(|&r| sigmoid(r)).collect();
            writer.add_f64("reward", &shape, &scores[0]).add_f64(
                "probability",
                &shape,
                &probability,
            );
        }
        Input::Sides => {
            let probability: Vec<f64> = scores[0]
                .iter()
                .zip(&scores[1])
                .map(|(&c, &r)| sigmoid(c - r))
                .collect();
            writer
                .add_f64("reward_chosen", &shape, &scores[0])
                .add_f64("reward_rejected", &shape, &scores[1])
                .add_f64("probability", &shape, &probability);
        }
        Input::Rows => {
            writer.add_f64("reward", &shape, &scores[0]);
        }
    }
    writer.add_i64("user_known", &shape, &user_known);
    if let Some((user, ids)) = &users.user {
        writer
            .add_i64("user", &shape, user)
            .metadata("user_ids", ids);
    }
    let users_files: Vec<String> = args.users.iter().map(|p| p.display().to_string()).collect();
    writer
        .metadata("kind", "scores")
        .metadata("input", &names.join(", "))
        .metadata("n_rows", &n)
        .metadata("n_known_rows", &known_rows)
        .metadata("logit_scale", &basis.logit_scale())
        .metadata("model", &model.display().to_string())
        .metadata("users", &users_files)
        .metadata("data", &data_path.display().to_string());
    checked.inputs_unchanged()?;
    writer.write_atomic(out)?;
    ui.note(format!(
        "scored {n} rows of `{}`: {known_rows} of known users, {} with the population's weights",
        names.join("` and `"),
        n - known_rows
    ));
    ui.note(format!("wrote {}", given_out.display()));
    Ok(())
}
