//! Preference files: feature rows and per-row users, validated once and lent to the core.

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::ops::Range;
use std::path::Path;

use lore_core::{count_rows_per_user, group_rows_by_user, offsets_from_counts};
use lore_core::{FeatureRows, LoreError, Preferences};
use safetensors::Dtype;

use crate::decode;
use crate::embedder_identity::EmbedderIdentity;
use crate::error::{IoError, Result};
use crate::tensor_file::{borrow_rows, Features, OwnedFeatures, TensorFile, FEATURE_DTYPES};

/// Dtypes accepted for the `user` tensor.
const USER_DTYPES: &[&str] = &["I64", "I32", "U32"];

/// Where the validated feature rows live.
enum Rows {
    /// Zero-copy: bytes `range` of the file, of `dtype`, known to be aligned.
    Mapped { dtype: Dtype, range: Range<usize> },
    /// Decoded, gathered into user order, or computed as chosen - rejected.
    Owned(OwnedFeatures),
}

/// A preference file loaded and checked: rows grouped by user, every user with a row, every
/// feature finite. Features stay in the file's map unless a copy was unavoidable.
///
/// Format: `x` [P, F] (F32, F16 or BF16), or `chosen` and `rejected` [P, F] (then
/// x = chosen - rejected in f32); `user` \[P\] (I64, I32 or U32) with indices 0..N-1; optional
/// metadata `user_ids`, a JSON array of N names. Rows need not be sorted by user.
pub struct PreferenceFile {
    file: TensorFile,
    rows: Rows,
    n_features: usize,
    user_offsets: Vec<usize>,
    user_ids: Option<Vec<String>>,
    row_order: Option<Vec<usize>>,
}

impl fmt::Debug for PreferenceFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PreferenceFile")
            .field("path", &self.path())
            .field("n_rows", &self.n_rows())
            .field("n_features", &self.n_features)
            .field("n_users", &self.n_users())
            .field("dtype", &self.dtype_name())
            .field("zero_copy", &self.is_zero_copy())
            .field("grouped", &self.row_order.is_some())
            .finish_non_exhaustive()
    }
}

impl PreferenceFile {
    /// Opens `path` and checks everything the core needs, so that [`Self::view`] cannot fail.
    pub fn load(path: impl AsRef<Path>) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let (shape, features) = load_features(&file)?;
        let (n_rows, n_features) = (shape[0], shape[1]);
        let users = load_users(&file, n_rows)?;

        let n_users = count_users(&users).map_err(|e| file.core_error(e))?;
        let counts = count_rows_per_user(&users, n_users).map_err(|e| file.core_error(e))?;
        let user_offsets = offsets_from_counts(&counts);

        let sorted = users.windows(2).all(|w| w[0] <= w[1]);
        let row_order = (!sorted).then(|| group_rows_by_user(&users));
        drop(users);

        let rows = match (features, &row_order) {
            // Only `x` is ever borrowed: keep its location in the map.
            (Features::Borrowed(_), None) => {
                let info = file.info("x")?;
                Rows::Mapped {
                    dtype: info.dtype,
                    range: file.byte_range(info),
                }
            }
            (features, Some(order)) => {
                Rows::Owned(OwnedFeatures::gather(features.rows(), n_features, order))
            }
            (Features::Owned(owned), None) => Rows::Owned(owned),
        };

        let user_ids = load_user_ids(&file, n_users)?;
        let loaded = Self {
            file,
            rows,
            n_features,
            user_offsets,
            user_ids,
            row_order,
        };
        if let Err(e) = Preferences::new(
            loaded.features(),
            loaded.n_features,
            loaded.user_offsets.clone(),
        ) {
            return Err(loaded.file.core_error(loaded.original_row(e)));
        }
        Ok(loaded)
    }

    /// The core's view of the rows, borrowing them (cheap: the values were checked by `load`).
    pub fn view(&self) -> Preferences<'_> {
        Preferences::with_checked_values(
            self.features(),
            self.n_features,
            self.user_offsets.clone(),
        )
        .expect("preference data was validated by PreferenceFile::load")
    }

    /// The feature rows, grouped by user, in their storage precision (no check, no copy).
    pub fn features(&self) -> FeatureRows<'_> {
        match &self.rows {
            Rows::Mapped { dtype, range } => {
                borrow_rows(*dtype, &self.file.as_bytes()[range.clone()])
                    .expect("alignment of mapped features was checked by PreferenceFile::load")
            }
            Rows::Owned(owned) => owned.rows(),
        }
    }

    /// The N + 1 row offsets of the users in [`Self::features`].
    pub fn user_offsets(&self) -> &[usize] {
        &self.user_offsets
    }

    /// The path the file was loaded from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The underlying file, for its other tensors and metadata.
    pub fn file(&self) -> &TensorFile {
        &self.file
    }

    /// Names of the users from metadata `user_ids`, when present (one per user).
    pub fn user_ids(&self) -> Option<&[String]> {
        self.user_ids.as_deref()
    }

    /// Number of users N.
    pub fn n_users(&self) -> usize {
        self.user_offsets.len() - 1
    }

    /// Number of preference rows P.
    pub fn n_rows(&self) -> usize {
        *self.user_offsets.last().expect("offsets hold at least 0")
    }

    /// Feature dimension F.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Storage precision of the features as the core names it (`f32`, `f16` or `bf16`).
    pub fn dtype_name(&self) -> &'static str {
        self.features().dtype_name()
    }

    /// When the rows were not sorted by user: the original row index of each grouped row.
    pub fn row_order(&self) -> Option<&[usize]> {
        self.row_order.as_deref()
    }

    /// True when the features are read straight from the file's map, without a copy.
    pub fn is_zero_copy(&self) -> bool {
        matches!(self.rows, Rows::Mapped { .. })
    }

    /// The file's metadata.
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        self.file.metadata()
    }

    /// How the features were made (metadata `embedder`, or the separate keys older `lore
    /// embed` wrote), when recorded; its `dim` must be the file's F (else the file is refused
    /// as inconsistent).
    pub fn embedder(&self) -> Result<Option<EmbedderIdentity>> {
        let identity = EmbedderIdentity::read(&self.file)?;
        if let Some(identity) = &identity {
            if identity.dim != self.n_features {
                return Err(IoError::Inconsistent {
                    path: self.path().to_path_buf(),
                    reason: format!(
                        "its embedder makes F = {} features but the rows have F = {}",
                        identity.dim, self.n_features
                    ),
                });
            }
        }
        Ok(identity)
    }

    /// Reports a non-finite value at its row in the file rather than in the grouped order.
    fn original_row(&self, error: LoreError) -> LoreError {
        match (error, &self.row_order) {
            (LoreError::NonFinite { row, col, value }, Some(order)) => LoreError::NonFinite {
                row: order[row],
                col,
                value,
            },
            (error, _) => error,
        }
    }
}

/// Shape [P, F] and rows of the features: `x` (borrowed when aligned), or `chosen - rejected`.
fn load_features(file: &TensorFile) -> Result<([usize; 2], Features<'_>)> {
    if file.has("x") || !(file.has("chosen") || file.has("rejected")) {
        let info = file.info("x")?;
        if !FEATURE_DTYPES.contains(&info.dtype.to_string().as_str()) {
            return Err(file.dtype_error("x", info.dtype, FEATURE_DTYPES));
        }
        let shape = matrix_shape(file, "x", &info.shape)?;
        let (_, features) = file.features("x")?;
        return Ok((shape, features));
    }
    let (chosen_shape, chosen) = file.tensor_f32("chosen")?;
    let (rejected_shape, rejected) = file.tensor_f32("rejected")?;
    let shape = matrix_shape(file, "chosen", &chosen_shape)?;
    if rejected_shape != chosen_shape {
        return Err(IoError::Shape {
            path: file.path().to_path_buf(),
            name: "rejected".into(),
            shape: rejected_shape,
            expected: format!("{chosen_shape:?} like `chosen`"),
        });
    }
    let x: Vec<f32> = chosen.iter().zip(&rejected).map(|(c, r)| c - r).collect();
    Ok((shape, Features::Owned(OwnedFeatures::F32(x))))
}

/// `[P, F]` from a 2-D shape, or the shape error for tensor `name`.
fn matrix_shape(file: &TensorFile, name: &str, shape: &[usize]) -> Result<[usize; 2]> {
    match *shape {
        [p, f] => Ok([p, f]),
        _ => Err(IoError::Shape {
            path: file.path().to_path_buf(),
            name: name.into(),
            shape: shape.to_vec(),
            expected: "2-D [P, F] (one row of F features per preference)".into(),
        }),
    }
}

/// The `user` tensor as u32 indices, one per row.
fn load_users(file: &TensorFile, n_rows: usize) -> Result<Vec<u32>> {
    let info = file.info("user")?;
    if !USER_DTYPES.contains(&info.dtype.to_string().as_str()) {
        return Err(file.dtype_error("user", info.dtype, USER_DTYPES));
    }
    if info.shape != [n_rows] {
        return Err(IoError::Shape {
            path: file.path().to_path_buf(),
            name: "user".into(),
            shape: info.shape.clone(),
            expected: format!("[P] with P = {n_rows} (the rows of the features)"),
        });
    }
    let bytes = file.tensor_bytes("user")?;
    let users = decode::to_i64(info.dtype, bytes).expect("user dtype was checked");
    users
        .iter()
        .enumerate()
        .map(|(row, &u)| {
            u32::try_from(u).map_err(|_| IoError::Value {
                path: file.path().to_path_buf(),
                name: "user".into(),
                reason: if u < 0 {
                    format!("row {row} has negative user index {u} (indices must run 0..N-1)")
                } else {
                    format!("row {row} has user index {u}, above the largest supported (2^32 - 1)")
                },
            })
        })
        .collect()
}

/// N = largest index + 1, after checking cheaply that no index is so large that a user below
/// it must be empty (so the per-user counts never allocate more than P slots).
fn count_users(users: &[u32]) -> std::result::Result<usize, LoreError> {
    let n_users = users.iter().max().map_or(0, |&u| u as usize + 1);
    if n_users > users.len() {
        let mut seen = vec![false; users.len()];
        for &u in users {
            if let Some(s) = seen.get_mut(u as usize) {
                *s = true;
            }
        }
        let user = seen.iter().position(|&s| !s).unwrap_or(users.len());
        return Err(LoreError::EmptyUser { user });
    }
    Ok(n_users)
}

/// Metadata `user_ids`: N distinct names, when present.
fn load_user_ids(file: &TensorFile, n_users: usize) -> Result<Option<Vec<String>>> {
    let err = |reason: String| IoError::Metadata {
        path: file.path().to_path_buf(),
        key: "user_ids".into(),
        reason,
    };
    let Some(raw) = file.metadata().get("user_ids") else {
        return Ok(None);
    };
    let ids: Vec<String> = serde_json::from_str(raw)
        .map_err(|e| err(format!("expected a JSON array of N user names: {e}")))?;
    if ids.len() != n_users {
        return Err(err(format!(
            "has {} names but the file has {n_users} users{}",
            ids.len(),
            match n_users {
                0 => String::new(),
                n => format!(" (indices 0..{})", n - 1),
            }
        )));
    }
    let mut seen = HashSet::with_capacity(ids.len());
    if let Some(dup) = ids.iter().find(|id| !seen.insert(id.as_str())) {
        return Err(err(format!("name {dup:?} appears more than once")));
    }
    Ok(Some(ids))
}
