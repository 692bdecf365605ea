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
//! per-row metadata (`prompt_ids`, `pair_ids`) are carried along, and so is the source's
//! embedder identity (metadata `embedder`): a folder whose sets disagree on it is refused.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lore_core::FeatureRows;
use serde_json::Value;

use crate::embedder_identity::EmbedderIdentity;
use crate::error::{IoError, Result};
use crate::model_file::read_v_ref;
use crate::preference::PreferenceFile;
use crate::tensor_file::{OwnedFeatures, TensorFile};
use crate::writer::{write_bytes_atomic, TensorWriter};

/// Tensors never carried row by row: `user` and `source_row` are rewritten, the others are
/// not per row even when their first dimension happens to equal the number of rows.
const NOT_PER_ROW: [&str; 5] = ["user", "source_row", "v_ref", "weights", "directions"];
/// Per-row metadata keys carried into the sets.
const ROW_METADATA: [&str; 2] = ["prompt_ids", "pair_ids"];

/// Where a split's rows come from: it adds the per-row tensors and metadata of some rows.
pub trait RowSource {
    /// Adds the rows `rows` (source indices, in order) of every per-row tensor to `out`.
    fn add_rows(&self, out: &mut TensorWriter, rows: &[usize]) -> Result<()>;
}

/// Rows held in memory: features x [P, F] and optionally a prompt per row (`prompt_id`).
#[derive(Debug, Clone, Copy)]
pub struct MemoryRows<'a> {
    /// The features, P rows of `n_features` values.
    pub features: FeatureRows<'a>,
    /// Feature dimension F.
    pub n_features: usize,
    /// Each row's prompt index, written as the I64 tensor `prompt_id`.
    pub prompts: Option<&'a [u32]>,
}

impl RowSource for MemoryRows<'_> {
    fn add_rows(&self, out: &mut TensorWriter, rows: &[usize]) -> Result<()> {
        let f = self.n_features;
        let x = OwnedFeatures::gather(self.features, f, rows);
        out.add_features("x", &[rows.len(), f], x.rows());
        if let Some(prompts) = self.prompts {
            let ids: Vec<i64> = rows.iter().map(|&r| prompts[r] as i64).collect();
            out.add_i64("prompt_id", &[rows.len()], &ids);
        }
        Ok(())
    }
}

/// Rows of a preference file: every tensor whose first dimension is the number of rows (but
/// `user`, `source_row`, `v_ref`, `weights` and `directions`), the per-row metadata arrays
/// `prompt_ids` and `pair_ids`, and the file's embedder identity (written into every set).
#[derive(Debug)]
pub struct FileRows<'a> {
    file: &'a TensorFile,
    /// (name, values per row, is a float tensor).
    tensors: Vec<(String, Vec<usize>, bool)>,
    metadata: Vec<(String, Vec<Value>)>,
    skipped: Vec<String>,
    embedder: Option<EmbedderIdentity>,
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
        let embedder = EmbedderIdentity::read(file)?;
        Ok(Self {
            file,
            tensors,
            metadata,
            skipped,
            embedder,
        })
    }

    /// Tensors with a row per preference that cannot be carried (unsupported dtype), as
    /// `name (DTYPE)`.
    pub fn skipped(&self) -> &[String] {
        &self.skipped
    }

    /// How the source's features were made (its `embedder` entry, or the separate keys of
    /// older `lore embed`), carried into every set as metadata `embedder`.
    pub fn embedder(&self) -> Option<&EmbedderIdentity> {
        self.embedder.as_ref()
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
        if let Some(embedder) = &self.embedder {
            embedder.write_to(out);
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
        _ => Err(IoError::Inconsistent {
            path: file.path().to_path_buf(),
            reason: format!(
                "metadata `{key}` must be a JSON array of one id per row ({n_rows} rows)"
            ),
        }),
    }
}

/// One set to write: which source rows, in order, and which users own them.
#[derive(Debug, Clone, Copy)]
pub struct SetRows<'a> {
    /// Source row indices, grouped by user.
    pub rows: &'a [usize],
    /// The set's user index of each row (non-decreasing, 0..N-1).
    pub users: &'a [u32],
    /// The source's user index of each of the set's users (metadata `source_users`).
    pub owners: &'a [u32],
}

/// A split folder loaded: its four preference sets, checked.
///
/// ```
/// # fn main() -> lore_io::Result<()> {
/// use lore_core::FeatureRows;
/// use lore_io::{MemoryRows, SetRows, SplitFolder};
///
/// let dir = tempfile::tempdir().unwrap();
/// // Four rows of F = 2 features from two users (source users 0 and 1); ids match users.
/// let x = [1.0f32, 0.0, 0.5, 0.5, -1.0, 2.0, 0.0, 1.0];
/// let source = MemoryRows { features: FeatureRows::F32(&x), n_features: 2, prompts: None };
/// let ids = ["ann".to_string(), "bob".to_string()];
/// for name in SplitFolder::SET_NAMES {
///     let set = SetRows { rows: &[0, 2], users: &[0, 1], owners: &[0, 1] };
///     SplitFolder::write_set(dir.path(), name, &set, &source, Some(&ids))?;
/// }
/// let folder = SplitFolder::open(dir.path())?;
/// assert_eq!(folder.seen_train().n_users(), 2);
/// assert_eq!(folder.test_user_maps()?, (vec![0, 1], vec![0, 1]));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct SplitFolder {
    dir: PathBuf,
    sets: [PreferenceFile; 4],
    embedder: Option<EmbedderIdentity>,
}

impl SplitFolder {
    /// The four sets' names, in the order of [`Self::sets`].
    pub const SET_NAMES: [&'static str; 4] =
        ["seen_train", "seen_test", "unseen_train", "unseen_test"];
    /// The reference head's file in a split folder.
    pub const V_REF_FILE: &'static str = "v_ref.safetensors";
    /// The split's options and counts.
    pub const SPLIT_JSON: &'static str = "split.json";

    /// Path of set `name` in `dir`.
    pub fn set_path(dir: &Path, name: &str) -> PathBuf {
        dir.join(format!("{name}.safetensors"))
    }

    /// Loads and checks the four sets of `dir`.
    pub fn open(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = dir.as_ref();
        if !dir.is_dir() {
            return Err(IoError::NotSplitFolder {
                dir: dir.to_path_buf(),
                missing: None,
            });
        }
        let load = |name: &str| -> Result<PreferenceFile> {
            let path = Self::set_path(dir, name);
            if !path.is_file() {
                return Err(IoError::NotSplitFolder {
                    dir: dir.to_path_buf(),
                    missing: Some(path),
                });
            }
            PreferenceFile::load(&path)
        };
        if crate::output_folder::is_unfinished_output(dir) {
            return Err(IoError::Inconsistent {
                path: dir.to_path_buf(),
                reason: "this is the unfinished output of an interrupted lore run, not a split \
                         folder (give the folder it was written for)"
                    .into(),
            });
        }
        let names = Self::SET_NAMES;
        let sets = [
            load(names[0])?,
            load(names[1])?,
            load(names[2])?,
            load(names[3])?,
        ];
        let embedder = common_embedder(&sets)?;
        let folder = Self {
            dir: dir.to_path_buf(),
            sets,
            embedder,
        };
        folder.check_counts()?;
        Ok(folder)
    }

    /// How the sets' features were made (metadata `embedder` of the sets, which all agree:
    /// checked on open), when recorded; `None` for simulated features and older folders.
    pub fn embedder(&self) -> Option<&EmbedderIdentity> {
        self.embedder.as_ref()
    }

    /// Checks the sets against the counts split.json records, when it does: a folder whose
    /// files come from different runs (written by older versions of lore, or by hand) is
    /// refused rather than read as one split.
    fn check_counts(&self) -> Result<()> {
        let path = self.dir.join(Self::SPLIT_JSON);
        let Ok(text) = std::fs::read_to_string(&path) else {
            return Ok(());
        };
        let Ok(summary) = serde_json::from_str::<Value>(&text) else {
            return Ok(());
        };
        let counts = &summary["counts"];
        let mixed = |found: String, expected: String| IoError::Inconsistent {
            path: path.clone(),
            reason: format!(
                "it records {expected} but the folder holds {found}: its files come from \
                 different runs (write the folder again with `lore split` or `lore simulate`)"
            ),
        };
        for (name, set) in Self::SET_NAMES.iter().zip(&self.sets) {
            if let Some(n) = counts["rows"][name].as_u64() {
                if n != set.n_rows() as u64 {
                    return Err(mixed(
                        format!("{} rows in {name}", set.n_rows()),
                        format!("{n} rows in {name}"),
                    ));
                }
            }
        }
        for (key, set) in [
            ("seen_users", &self.sets[0]),
            ("unseen_users", &self.sets[2]),
        ] {
            if let Some(n) = counts[key].as_u64() {
                if n != set.n_users() as u64 {
                    return Err(mixed(
                        format!("{} {}", set.n_users(), key.replace('_', " ")),
                        format!("{n} {}", key.replace('_', " ")),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The folder.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The four sets, in the order of [`Self::SET_NAMES`].
    pub fn sets(&self) -> &[PreferenceFile; 4] {
        &self.sets
    }

    /// Seen users' training rows.
    pub fn seen_train(&self) -> &PreferenceFile {
        &self.sets[0]
    }

    /// Seen users' held-out rows.
    pub fn seen_test(&self) -> &PreferenceFile {
        &self.sets[1]
    }

    /// Unseen users' few-shot rows.
    pub fn unseen_train(&self) -> &PreferenceFile {
        &self.sets[2]
    }

    /// Unseen users' held-out rows.
    pub fn unseen_test(&self) -> &PreferenceFile {
        &self.sets[3]
    }

    /// Feature dimension F of the seen training set.
    pub fn n_features(&self) -> usize {
        self.sets[0].n_features()
    }

    /// Checks that all sets have the same F, then maps each test user to a training user:
    /// returns (for each user of `seen_test`, their index in `seen_train`; likewise unseen).
    /// Users are matched by id when both files have `user_ids`, by index when neither has;
    /// a pair of sets where only one has `user_ids` is refused.
    pub fn test_user_maps(&self) -> Result<(Vec<usize>, Vec<usize>)> {
        let [seen_train, seen_test, unseen_train, unseen_test] = &self.sets;
        let f = seen_train.n_features();
        for file in &self.sets[1..] {
            if file.n_features() != f {
                return Err(IoError::Mismatch {
                    path: file.path().to_path_buf(),
                    found: format!("F = {} features", file.n_features()),
                    other: seen_train.path().to_path_buf(),
                    expected: format!("F = {f}"),
                });
            }
        }
        Ok((
            match_users(seen_train, seen_test)?,
            match_users(unseen_train, unseen_test)?,
        ))
    }

    /// The reference head: from `flag` (a file with `v_ref`) if given, else the folder's
    /// `v_ref.safetensors` if present. Returns the values and where they came from.
    pub fn v_ref(&self, flag: Option<&Path>) -> Result<Option<(Vec<f32>, PathBuf)>> {
        let path = match flag {
            Some(path) => path.to_path_buf(),
            None => {
                let path = self.dir.join(Self::V_REF_FILE);
                if !path.is_file() {
                    return Ok(None);
                }
                path
            }
        };
        let v_ref = read_v_ref(&path)?;
        if let (Some(ours), Some(theirs)) = (&self.embedder, EmbedderIdentity::read_path(&path)?) {
            if let Some(reason) = theirs.mismatch(ours) {
                return Err(IoError::Inconsistent {
                    path,
                    reason: format!(
                        "its reference head is for other features than the split's sets                          ({reason})"
                    ),
                });
            }
        }
        let f = self.n_features();
        if v_ref.len() != f {
            return Err(IoError::Inconsistent {
                path,
                reason: format!("`v_ref` has F = {}, but the sets have F = {f}", v_ref.len()),
            });
        }
        Ok(Some((v_ref, path)))
    }

    /// Users and rows of the four sets, in one line for summaries.
    pub fn describe(&self) -> String {
        let [a, b, c, d] = &self.sets;
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

    /// Writes set `name` of a split into `dir` atomically: the rows `set.rows` of `source`,
    /// `user`, `source_row`, and metadata (`set`, `n_users`, `source_users`, and `user_ids`
    /// named from the source's `user_ids` when given, so that matching goes by id).
    pub fn write_set(
        dir: &Path,
        name: &str,
        set: &SetRows,
        source: &dyn RowSource,
        user_ids: Option<&[String]>,
    ) -> Result<()> {
        let mut out = TensorWriter::new();
        source.add_rows(&mut out, set.rows)?;
        let users: Vec<i64> = set.users.iter().map(|&u| u as i64).collect();
        let source_rows: Vec<i64> = set.rows.iter().map(|&r| r as i64).collect();
        out.add_i64("user", &[users.len()], &users)
            .add_i64("source_row", &[source_rows.len()], &source_rows)
            .metadata("kind", "preferences")
            .metadata("set", name)
            .metadata("n_users", &set.owners.len())
            .metadata("source_users", set.owners);
        if let Some(ids) = user_ids {
            let names: Vec<&str> = set
                .owners
                .iter()
                .map(|&u| ids[u as usize].as_str())
                .collect();
            out.metadata("user_ids", &names);
        }
        out.write_atomic(Self::set_path(dir, name))
    }

    /// Writes `v_ref` \[F\] as `v_ref.safetensors` in `dir`, with where it came from.
    pub fn write_v_ref(dir: &Path, v_ref: &[f32], origin: &str) -> Result<()> {
        Self::write_v_ref_with(dir, v_ref, origin, None)
    }

    /// [`Self::write_v_ref`], recording the embedder whose feature space `v_ref` lives in
    /// (metadata `embedder`, checked against the sets' by [`Self::v_ref`]).
    pub fn write_v_ref_with(
        dir: &Path,
        v_ref: &[f32],
        origin: &str,
        embedder: Option<&EmbedderIdentity>,
    ) -> Result<()> {
        let mut out = TensorWriter::new();
        out.add_f32("v_ref", &[v_ref.len()], v_ref)
            .metadata("kind", "reference head")
            .metadata("origin", origin);
        if let Some(embedder) = embedder {
            embedder.write_to(&mut out);
        }
        out.write_atomic(dir.join(Self::V_REF_FILE))
    }

    /// Writes split.json (`value`, pretty-printed, with a final newline) into `dir`.
    pub fn write_split_json(dir: &Path, value: &Value) -> Result<()> {
        let path = dir.join(Self::SPLIT_JSON);
        let text = serde_json::to_string_pretty(value).map_err(|e| IoError::Encode {
            path: path.clone(),
            reason: e.to_string(),
        })? + "\n";
        write_bytes_atomic(path, text.as_bytes())
    }
}

/// The embedder identity all four sets record, refusing sets that disagree (on the identity,
/// or on having one at all: a folder mixing sets of different files).
fn common_embedder(sets: &[PreferenceFile; 4]) -> Result<Option<EmbedderIdentity>> {
    let identities = sets
        .iter()
        .map(PreferenceFile::embedder)
        .collect::<Result<Vec<_>>>()?;
    let first = &identities[0];
    for (set, identity) in sets.iter().zip(&identities).skip(1) {
        let reason = match (first, identity) {
            (Some(a), Some(b)) => b.mismatch(a),
            (None, None) => None,
            (Some(_), None) => Some("it records no embedder".to_string()),
            (None, Some(b)) => Some(format!("it records embedder {b} and the other none")),
        };
        if let Some(reason) = reason {
            return Err(IoError::Inconsistent {
                path: set.path().to_path_buf(),
                reason: format!(
                    "its features were made differently from {}'s ({reason}): the split                      folder mixes sets of different files (write it again with `lore split`)",
                    sets[0].path().display()
                ),
            });
        }
    }
    Ok(identities.into_iter().next().flatten())
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
                    index
                        .get(id.as_str())
                        .copied()
                        .ok_or_else(|| IoError::Inconsistent {
                            path: test.path().to_path_buf(),
                            reason: format!("user `{id}` is not in {}", train.path().display()),
                        })
                })
                .collect()
        }
        // One side names its users, the other does not: matching by index would ignore the
        // names and may score test users with another user's weights.
        (Some(_), None) => Err(IoError::Inconsistent {
            path: test.path().to_path_buf(),
            reason: crate::checks::one_sided_message(train, test),
        }),
        (None, Some(_)) => Err(IoError::Inconsistent {
            path: train.path().to_path_buf(),
            reason: crate::checks::one_sided_message(test, train),
        }),
        (None, None) => {
            if test.n_users() > train.n_users() {
                return Err(IoError::Mismatch {
                    path: test.path().to_path_buf(),
                    found: format!("{} users", test.n_users()),
                    other: train.path().to_path_buf(),
                    expected: format!(
                        "{} (without `user_ids`, users are matched by index)",
                        train.n_users()
                    ),
                });
            }
            Ok((0..test.n_users()).collect())
        }
    }
}
