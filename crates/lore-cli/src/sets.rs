//! The split folder: four preference files, the split's options, and the reference head.
//!
//! ```text
//! DIR/seen_train.safetensors     seen users' training rows
//! DIR/seen_test.safetensors      seen users' held-out rows (same users, same indices)
//! DIR/unseen_train.safetensors   unseen users' few-shot rows
//! DIR/unseen_test.safetensors    unseen users' held-out rows (same users, same indices)
//! DIR/split.json                 the options and counts that made them
//! DIR/v_ref.safetensors          `v_ref` [F], the reference head (when known)
//! ```
//!
//! Each set is a preference file (`x`, `user`; metadata `user_ids` when the source had ids)
//! whose rows are grouped by user, with `source_row` [P] (the row's index in the source) and
//! `source_users` metadata (each user's index in the source). Other per-row tensors of the
//! source (`prompt_id`, `pair_id`, `chosen`, ...; not `v_ref`, `weights` or `directions`) and
//! per-row metadata (`prompt_ids`, `pair_ids`) are carried along.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use lore_experiment::ExperimentSets;
use lore_experiment::{Split, SplitSet};
use lore_io::{OwnedFeatures, PreferenceFile, TensorFile, TensorWriter};
use serde_json::Value;

/// The four sets' names, in the order of [`Split::sets`].
pub const SET_NAMES: [&str; 4] = ["seen_train", "seen_test", "unseen_train", "unseen_test"];
/// The reference head's file in a split folder.
pub const V_REF_FILE: &str = "v_ref.safetensors";
/// The split's options and counts.
pub const SPLIT_JSON: &str = "split.json";
/// Tensors never carried row by row: `user` and `source_row` are rewritten, the others are
/// not per row even when their first dimension happens to equal the number of rows.
const NOT_PER_ROW: [&str; 5] = ["user", "source_row", "v_ref", "weights", "directions"];
/// Per-row metadata keys carried into the sets.
const ROW_METADATA: [&str; 2] = ["prompt_ids", "pair_ids"];

/// Path of set `name` in `dir`.
pub fn set_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.safetensors"))
}

/// Where a split's rows come from: it adds the per-row tensors and metadata of `rows`.
pub trait RowSource {
    /// Adds the rows `rows` (source indices, in order) of every per-row tensor to `out`.
    fn add_rows(&self, out: &mut TensorWriter, rows: &[usize]) -> Result<()>;
}

/// Rows held in memory: features x [P, F] (f32) and optionally a prompt per row.
pub struct MemoryRows<'a> {
    pub features: &'a [f32],
    pub n_features: usize,
    pub prompts: Option<&'a [u32]>,
}

impl RowSource for MemoryRows<'_> {
    fn add_rows(&self, out: &mut TensorWriter, rows: &[usize]) -> Result<()> {
        let f = self.n_features;
        let x = OwnedFeatures::gather(lore_core::FeatureRows::F32(self.features), f, rows);
        out.add_features("x", &[rows.len(), f], x.rows());
        if let Some(prompts) = self.prompts {
            let ids: Vec<i64> = rows.iter().map(|&r| prompts[r] as i64).collect();
            out.add_i64("prompt_id", &[rows.len()], &ids);
        }
        Ok(())
    }
}

/// Rows of a preference file: every tensor whose first dimension is the number of rows (but
/// those of [`NOT_PER_ROW`]), and the per-row metadata arrays.
pub struct FileRows<'a> {
    file: &'a TensorFile,
    /// (name, values per row, is a float tensor).
    tensors: Vec<(String, Vec<usize>, bool)>,
    metadata: Vec<(String, Vec<Value>)>,
    /// Tensors with a row per preference that cannot be carried (unsupported dtype).
    pub skipped: Vec<String>,
}

impl<'a> FileRows<'a> {
    /// The per-row tensors and metadata of `file`, which has `n_rows` rows.
    pub fn new(file: &'a TensorFile, n_rows: usize) -> Result<Self> {
        let mut names = file.names();
        names.sort();
        let mut tensors = Vec::new();
        let mut skipped = Vec::new();
        for name in names {
            if NOT_PER_ROW.contains(&name.as_str()) {
                continue;
            }
            let shape = file.shape(&name)?;
            if shape.first() != Some(&n_rows) {
                continue;
            }
            let dtype = file.dtype_name(&name)?;
            let is_float = matches!(dtype.as_str(), "F32" | "F16" | "BF16");
            let is_index = matches!(
                dtype.as_str(),
                "I64" | "I32" | "U32" | "I16" | "U16" | "U8" | "I8"
            );
            if is_float || is_index {
                tensors.push((name, shape[1..].to_vec(), is_float));
            } else {
                skipped.push(format!("{name} ({dtype})"));
            }
        }
        let mut metadata = Vec::new();
        for key in ROW_METADATA {
            if let Some(values) = row_metadata(file, key, n_rows)? {
                metadata.push((key.to_string(), values));
            }
        }
        Ok(Self {
            file,
            tensors,
            metadata,
            skipped,
        })
    }
}

impl RowSource for FileRows<'_> {
    fn add_rows(&self, out: &mut TensorWriter, rows: &[usize]) -> Result<()> {
        for (name, rest, is_float) in &self.tensors {
            let width: usize = rest.iter().product();
            let shape: Vec<usize> = std::iter::once(rows.len())
                .chain(rest.iter().copied())
                .collect();
            if *is_float {
                let (_, features) = self.file.features(name)?;
                let gathered = OwnedFeatures::gather(features.rows(), width, rows);
                out.add_features(name.clone(), &shape, gathered.rows());
            } else {
                let (_, values) = self.file.tensor_indices(name)?;
                let gathered: Vec<i64> = rows
                    .iter()
                    .flat_map(|&r| values[r * width..(r + 1) * width].iter().copied())
                    .collect();
                out.add_i64(name.clone(), &shape, &gathered);
            }
        }
        for (key, values) in &self.metadata {
            let picked: Vec<&Value> = rows.iter().map(|&r| &values[r]).collect();
            out.metadata(key.clone(), &picked);
        }
        Ok(())
    }
}

/// Metadata `key` of `file` as a JSON array of one value per row, when present.
fn row_metadata(file: &TensorFile, key: &str, n_rows: usize) -> Result<Option<Vec<Value>>> {
    let Some(values) = file.metadata_json::<Value>(key)? else {
        return Ok(None);
    };
    match values {
        Value::Array(values) if values.len() == n_rows => Ok(Some(values)),
        _ => bail!(
            "{}: metadata `{key}` must be a JSON array of one id per row ({n_rows} rows)",
            file.path().display()
        ),
    }
}

/// Writes the four sets of `split` into `dir`, each atomically. `user_ids` names the source's
/// users (written for the sets' users, so that matching goes by id).
pub fn write_sets(
    dir: &Path,
    split: &Split,
    source: &dyn RowSource,
    user_ids: Option<&[String]>,
) -> Result<()> {
    for (name, set) in split.sets() {
        let owners = if name.starts_with("seen") {
            &split.seen_users
        } else {
            &split.unseen_users
        };
        let mut out = TensorWriter::new();
        write_set(&mut out, name, set, owners, source, user_ids)?;
        out.write_atomic(set_path(dir, name))?;
    }
    Ok(())
}

fn write_set(
    out: &mut TensorWriter,
    name: &str,
    set: &SplitSet,
    owners: &[u32],
    source: &dyn RowSource,
    user_ids: Option<&[String]>,
) -> Result<()> {
    source.add_rows(out, &set.rows)?;
    let users: Vec<i64> = set.users.iter().map(|&u| u as i64).collect();
    let source_rows: Vec<i64> = set.rows.iter().map(|&r| r as i64).collect();
    out.add_i64("user", &[users.len()], &users)
        .add_i64("source_row", &[source_rows.len()], &source_rows)
        .metadata("kind", "preferences")
        .metadata("set", name)
        .metadata("n_users", &owners.len())
        .metadata("source_users", owners);
    if let Some(ids) = user_ids {
        let names: Vec<&str> = owners.iter().map(|&u| ids[u as usize].as_str()).collect();
        out.metadata("user_ids", &names);
    }
    Ok(())
}

/// Writes `v_ref` [F] as `v_ref.safetensors` in `dir`.
pub fn write_v_ref(dir: &Path, v_ref: &[f32], origin: &str) -> Result<()> {
    let mut out = TensorWriter::new();
    out.add_f32("v_ref", &[v_ref.len()], v_ref)
        .metadata("kind", "reference head")
        .metadata("origin", origin);
    out.write_atomic(dir.join(V_REF_FILE))?;
    Ok(())
}

/// Fails early (before any work) when `dir` exists and is not a folder.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "cannot write into {}: it is a file, not a folder",
            dir.display()
        );
    }
    Ok(())
}

/// Creates `dir` (and its parents) for outputs, refusing a path that is a file.
pub fn create_output_dir(dir: &Path) -> Result<()> {
    check_output_dir(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))
}

/// A split folder loaded: its four preference files.
pub struct SplitFiles {
    dir: PathBuf,
    files: [PreferenceFile; 4],
}

impl SplitFiles {
    /// Loads and checks the four sets of `dir`.
    pub fn load(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            bail!(
                "{} is not a folder (give a split folder made by `lore split` or `lore simulate`)",
                dir.display()
            );
        }
        let load = |name: &str| -> Result<PreferenceFile> {
            let path = set_path(dir, name);
            if !path.is_file() {
                bail!(
                    "{} is not a split folder: {} is missing (make one with `lore split` or \
                     `lore simulate`)",
                    dir.display(),
                    path.display()
                );
            }
            Ok(PreferenceFile::load(&path)?)
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            files: [
                load(SET_NAMES[0])?,
                load(SET_NAMES[1])?,
                load(SET_NAMES[2])?,
                load(SET_NAMES[3])?,
            ],
        })
    }

    /// The sets as the core's views; test users are matched to training users by id when both
    /// files have `user_ids`, else by index.
    pub fn sets(&self) -> Result<ExperimentSets<'_>> {
        let [seen_train, seen_test, unseen_train, unseen_test] = &self.files;
        let f = seen_train.n_features();
        for file in &self.files[1..] {
            if file.n_features() != f {
                bail!(
                    "{} has F = {} features but {} has F = {f}",
                    file.path().display(),
                    file.n_features(),
                    seen_train.path().display()
                );
            }
        }
        let seen_map = match_users(seen_train, seen_test)?;
        let unseen_map = match_users(unseen_train, unseen_test)?;
        Ok(ExperimentSets::with_user_maps(
            seen_train.view(),
            seen_test.view(),
            seen_map,
            unseen_train.view(),
            unseen_test.view(),
            unseen_map,
        )?)
    }

    /// The reference head: from `flag` (a file with `v_ref`) if given, else the folder's
    /// `v_ref.safetensors` if present. Returns the values and where they came from.
    pub fn v_ref(&self, flag: Option<&Path>) -> Result<Option<(Vec<f32>, PathBuf)>> {
        let path = match flag {
            Some(path) => path.to_path_buf(),
            None => {
                let path = self.dir.join(V_REF_FILE);
                if !path.is_file() {
                    return Ok(None);
                }
                path
            }
        };
        let v_ref = crate::files::read_v_ref(&path)?;
        let f = self.files[0].n_features();
        if v_ref.len() != f {
            bail!(
                "{}: `v_ref` has F = {}, but the sets have F = {f}",
                path.display(),
                v_ref.len()
            );
        }
        Ok(Some((v_ref, path)))
    }

    /// Users of each set, for summaries: (seen, unseen) users and rows of the four sets.
    pub fn describe(&self) -> String {
        let [a, b, c, d] = &self.files;
        format!(
            "{} seen users ({} training, {} test pairs), {} unseen users ({} few-shot, {} test \
             pairs), F = {}",
            a.n_users(),
            a.n_rows(),
            b.n_rows(),
            c.n_users(),
            c.n_rows(),
            d.n_rows(),
            a.n_features()
        )
    }
}

/// For each user of `test`, their index in `train`: by id when both have ids, else by index.
fn match_users(train: &PreferenceFile, test: &PreferenceFile) -> Result<Vec<usize>> {
    match (train.user_ids(), test.user_ids()) {
        (Some(train_ids), Some(test_ids)) => {
            let index: HashMap<&str, usize> = train_ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            test_ids
                .iter()
                .map(|id| {
                    index.get(id.as_str()).copied().with_context(|| {
                        format!(
                            "{}: user `{id}` is not in {}",
                            test.path().display(),
                            train.path().display()
                        )
                    })
                })
                .collect()
        }
        _ => {
            if test.n_users() > train.n_users() {
                bail!(
                    "{} has {} users but {} has {} (without `user_ids`, users are matched by \
                     index)",
                    test.path().display(),
                    test.n_users(),
                    train.path().display(),
                    train.n_users()
                );
            }
            Ok((0..test.n_users()).collect())
        }
    }
}

/// The counts of a split, for split.json and summaries.
pub fn split_counts(split: &Split) -> Value {
    let mut counts = serde_json::json!({
        "seen_users": split.seen_users.len(),
        "unseen_users": split.unseen_users.len(),
        "dropped_users": split.dropped_users.len(),
        "rows": {
            "seen_train": split.seen_train.rows.len(),
            "seen_test": split.seen_test.rows.len(),
            "unseen_train": split.unseen_train.rows.len(),
            "unseen_test": split.unseen_test.rows.len(),
        },
    });
    if let Some((train, test)) = split.prompt_counts {
        counts["prompts"] = serde_json::json!({ "train": train, "test": test });
    }
    counts
}

/// Writes split.json (`value`, pretty-printed) into `dir`.
pub fn write_split_json(dir: &Path, value: &Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    lore_io::write_bytes_atomic(dir.join(SPLIT_JSON), text.as_bytes())?;
    Ok(())
}

/// One line describing a split's sets.
pub fn describe_split(split: &Split) -> String {
    format!(
        "{} seen users ({} training, {} test pairs), {} unseen users ({} few-shot, {} test \
         pairs){}",
        split.seen_users.len(),
        split.seen_train.rows.len(),
        split.seen_test.rows.len(),
        split.unseen_users.len(),
        split.unseen_train.rows.len(),
        split.unseen_test.rows.len(),
        match split.dropped_users.len() {
            0 => String::new(),
            n => format!(", {n} users dropped"),
        }
    )
}
