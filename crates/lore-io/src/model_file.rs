//! Model and users files, the reference head `v_ref`, and the `--init` files of fit and
//! personalize: which tensors and metadata they hold, read and written as `lore` does.
//!
//! Model file: `V` [F,K], `W` [N,K] (probabilities), `W_logits` [N,K], `prior_logits` [K] (the
//! prior mean of new users' logits), `v_ref` [F] when used; metadata: method, every
//! hyperparameter, seed, user_ids, kept columns, early stopping when used, format version.
//! Users file: `W`, `W_logits` and metadata. Values of metadata are JSON-encoded strings.

use std::path::Path;

use lore_core::DEFAULT_LOGIT_SCALE;
use lore_core::{
    CheckedFitParams, CheckedPersonalizeParams, FitInit, FittedModel, RewardBasis, UserWeights,
};
use serde_json::Value;

use crate::embedder_identity::EmbedderIdentity;
use crate::error::{IoError, Result};
use crate::tensor_file::TensorFile;
use crate::writer::TensorWriter;

/// Reads a tensor as f32 and checks that it is a matrix; returns (rows, cols, values).
fn matrix(file: &TensorFile, name: &str) -> Result<(usize, usize, Vec<f32>)> {
    let (shape, values) = file.tensor_f32(name)?;
    match shape[..] {
        [rows, cols] => Ok((rows, cols, values)),
        _ => Err(IoError::Shape {
            path: file.path().to_path_buf(),
            name: name.into(),
            shape,
            expected: "a matrix [rows, columns]".into(),
        }),
    }
}

/// Refuses a NaN or infinite value of tensor `name` [rows x `cols`] of `file`, naming its row
/// (`row_name` says what a row is: "user", "feature", ...).
fn check_finite(
    file: &TensorFile,
    name: &str,
    values: &[f32],
    cols: usize,
    row_name: &str,
) -> Result<()> {
    match values.iter().position(|v| !v.is_finite()) {
        None => Ok(()),
        Some(i) => Err(IoError::Value {
            path: file.path().to_path_buf(),
            name: name.into(),
            reason: format!(
                "{row_name} {} (column {}) is {} (values must be finite)",
                i / cols.max(1),
                i % cols.max(1),
                values[i]
            ),
        }),
    }
}

/// How far a row of `W` (probabilities) may sum from 1 when the file has no `W_logits`: f32
/// softmax rows sum to 1 within ~1e-6 K; 1e-3 also admits weights stored in half precision.
const WEIGHT_SUM_TOLERANCE: f32 = 1e-3;

/// Checks `W` [n x k]: finite and >= 0 (they are probabilities) and, without `W_logits` (which
/// pruned models carry, whose rows sum below 1), rows summing to 1; the error names the user.
fn check_weights(
    file: &TensorFile,
    weights: &[f32],
    k: usize,
    has_logits: bool,
    ids: Option<&[String]>,
) -> Result<()> {
    let user = |u: usize| match ids.and_then(|ids| ids.get(u)) {
        Some(id) => format!("user {u} ({id:?})"),
        None => format!("user {u}"),
    };
    let refuse = |reason: String| IoError::Value {
        path: file.path().to_path_buf(),
        name: "W".into(),
        reason,
    };
    for (u, row) in weights.chunks_exact(k.max(1)).enumerate() {
        if let Some(j) = row.iter().position(|w| !w.is_finite()) {
            return Err(refuse(format!(
                "{} has weight {} in column {j} (weights must be finite)",
                user(u),
                row[j]
            )));
        }
        if let Some(j) = row.iter().position(|&w| w < 0.0) {
            return Err(refuse(format!(
                "{} has weight {} in column {j} (weights are probabilities, >= 0)",
                user(u),
                row[j]
            )));
        }
        let sum: f32 = row.iter().sum();
        if !has_logits && (sum - 1.0).abs() > WEIGHT_SUM_TOLERANCE {
            return Err(refuse(format!(
                "{}'s weights sum to {sum}, not 1 (without `W_logits`, `W` must hold each \
                 user's probabilities)",
                user(u)
            )));
        }
    }
    Ok(())
}

/// The error for a core refusal of tensor `name` of `file`.
fn tensor_core(file: &TensorFile, name: &str, cause: lore_core::LoreError) -> IoError {
    IoError::TensorCore {
        path: file.path().to_path_buf(),
        name: name.into(),
        cause,
    }
}

/// An inconsistency within `file`.
fn inconsistent(file: &TensorFile, reason: String) -> IoError {
    IoError::Inconsistent {
        path: file.path().to_path_buf(),
        reason,
    }
}

/// User weights read from a model or users file, with the users' names when the file has them.
#[derive(Debug, Clone)]
pub struct NamedUsers {
    /// The weights: `W` (probabilities) and `W_logits` (log W when the file has none).
    pub weights: UserWeights,
    /// Metadata `user_ids`: one name per user, when present.
    pub user_ids: Option<Vec<String>>,
}

/// `W`, `W_logits` and `user_ids` of `file` (shared by model and users files).
fn read_users(file: &TensorFile) -> Result<NamedUsers> {
    let (n, k, weights) = matrix(file, "W")?;
    let user_ids = file.metadata_json::<Vec<String>>("user_ids")?;
    let ids = user_ids.as_deref().filter(|ids| ids.len() == n);
    check_weights(file, &weights, k, file.has("W_logits"), ids)?;
    let logits = if file.has("W_logits") {
        let (ln, lk, logits) = matrix(file, "W_logits")?;
        if (ln, lk) != (n, k) {
            return Err(IoError::Shape {
                path: file.path().to_path_buf(),
                name: "W_logits".into(),
                shape: vec![ln, lk],
                expected: format!("[{n}, {k}] like `W`"),
            });
        }
        check_finite(file, "W_logits", &logits, k, "user")?;
        logits
    } else {
        weights.iter().map(|w| w.ln()).collect()
    };
    if let Some(ids) = &user_ids {
        if ids.len() != n {
            return Err(inconsistent(
                file,
                format!(
                    "metadata `user_ids` has {} ids but `W` has {n} users",
                    ids.len()
                ),
            ));
        }
    }
    let weights =
        UserWeights::from_parts(n, k, logits, weights).map_err(|e| tensor_core(file, "W", e))?;
    Ok(NamedUsers { weights, user_ids })
}

/// The tensor `v_ref` ([F] or [F, 1]) of `file`.
fn v_ref_of(file: &TensorFile) -> Result<Vec<f32>> {
    let (shape, values) = file.tensor_f32("v_ref")?;
    match shape[..] {
        [_] | [_, 1] => {
            check_finite(file, "v_ref", &values, 1, "feature")?;
            Ok(values)
        }
        _ => Err(IoError::Shape {
            path: file.path().to_path_buf(),
            name: "v_ref".into(),
            shape,
            expected: "[F] or [F, 1]".into(),
        }),
    }
}

/// The reference direction `v_ref` (\[F\] or \[F, 1\]) of any file that has one: a model file, a
/// split folder's `v_ref.safetensors`, a preference or responses file.
///
/// ```
/// # fn main() -> lore_io::Result<()> {
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("v_ref.safetensors");
/// lore_io::TensorWriter::new().add_f32("v_ref", &[3], &[0.5, -1.0, 2.0]).write_atomic(&path)?;
/// assert_eq!(lore_io::read_v_ref(&path)?, vec![0.5, -1.0, 2.0]);
/// # Ok(())
/// # }
/// ```
pub fn read_v_ref(path: impl AsRef<Path>) -> Result<Vec<f32>> {
    v_ref_of(&TensorFile::open(path)?)
}

/// The metadata entry `early_stopping` of a model or users file: what early stopping on
/// held-out rows saw (`lore fit`/`lore personalize --validation-fraction`, and Python's).
pub fn early_stopping_metadata(
    fraction: f64,
    rule: &lore_core::EarlyStopping,
    report: &lore_core::StoppingReport,
    holdout: &lore_core::HeldOutRows,
) -> Value {
    serde_json::json!({
        "best_steps": report.best_steps,
        "stopped_early": report.stopped_early,
        "validation_fraction": fraction,
        "eval_every": rule.eval_every,
        "patience": rule.patience,
        "validation_loss": report.best.loss,
        "validation_accuracy": report.best.accuracy,
        "validation_pairs": holdout.n_held_out_rows(),
        "validation_users": holdout.held_out_users().len(),
    })
}

/// What a fit was run on, for the model file's metadata.
#[derive(Debug, Clone, Copy)]
pub struct FitProvenance<'a> {
    /// The preference file fitted (metadata `data`).
    pub data: &'a Path,
    /// The users' names (metadata `user_ids`), when the data has them.
    pub user_ids: Option<&'a [String]>,
    /// The reference head the basis was pulled toward (tensor `v_ref`), when used.
    pub v_ref: Option<&'a [f32]>,
    /// `v_ref` is the direction of a K = 1 fit (`--v-ref bt`), not a file's.
    pub v_ref_from_bt: bool,
    /// The `--init` file the fit started from (metadata `init`).
    pub initialized_from: Option<&'a Path>,
    /// What early stopping saw, when used (metadata `early_stopping`).
    pub early_stopping: Option<&'a Value>,
    /// How the data's features were made (metadata `embedder`), when the data records it.
    pub embedder: Option<&'a EmbedderIdentity>,
}

/// A model file written by `lore fit`: the basis `V`, the seen users' weights, their prior
/// mean `prior_logits`, the reference head when used, and the fit's settings as metadata.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use lore_core::{FitParams, Method, RewardBasis, UserWeights};
/// use lore_io::{FitProvenance, ModelFile};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("model.safetensors");
/// let model = lore_core::FittedModel {
///     basis: RewardBasis::new(2, 1, vec![1.0, -1.0], 0.01)?,
///     users: UserWeights::single_column(3),
///     kept: vec![0],
///     unpruned_basis: vec![1.0, -1.0],
///     unpruned_logits: vec![0.0; 3],
///     steps: 10,
/// };
/// let params = FitParams::new(Method::Lore, 1).check()?;
/// let provenance = FitProvenance {
///     data: "train.safetensors".as_ref(),
///     user_ids: None,
///     v_ref: None,
///     v_ref_from_bt: false,
///     initialized_from: None,
///     early_stopping: None,
///     embedder: None,
/// };
/// ModelFile::write(&path, &model, &params, &provenance)?;
///
/// let file = ModelFile::open(&path)?;
/// assert_eq!(file.method()?.as_deref(), Some("lore"));
/// assert_eq!(file.basis(None)?, model.basis);
/// assert_eq!(file.users()?.weights.n_users(), 3);
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct ModelFile {
    file: TensorFile,
}

impl ModelFile {
    /// Opens a model file (nothing is required until a reader asks for its tensor).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            file: TensorFile::open(path)?,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The underlying file, for other tensors and metadata.
    pub fn file(&self) -> &TensorFile {
        &self.file
    }

    /// The basis V (only the tensor `V` is required). The logit scale is `logit_scale` if
    /// given, else the file's, else the default 0.01.
    pub fn basis(&self, logit_scale: Option<f64>) -> Result<RewardBasis> {
        let (f, k, values) = matrix(&self.file, "V")?;
        let scale = match logit_scale {
            Some(c) => c,
            None => self.logit_scale()?.unwrap_or(DEFAULT_LOGIT_SCALE),
        };
        RewardBasis::new(f, k, values, scale).map_err(|e| tensor_core(&self.file, "V", e))
    }

    /// The seen users' weights: `W` (required), `W_logits` (log W when absent), `user_ids`.
    pub fn users(&self) -> Result<NamedUsers> {
        read_users(&self.file)
    }

    /// The prior mean of new users' logits, `prior_logits` \[K\] with K the columns of `V`;
    /// `None` when the file has none (written before `lore fit` stored it).
    pub fn prior_logits(&self) -> Result<Option<Vec<f32>>> {
        if !self.file.has("prior_logits") {
            return Ok(None);
        }
        let (_, rank, _) = matrix(&self.file, "V")?;
        let (shape, values) = self.file.tensor_f32("prior_logits")?;
        if shape[..] != [rank] {
            return Err(IoError::Shape {
                path: self.path().to_path_buf(),
                name: "prior_logits".into(),
                shape,
                expected: format!("[{rank}] like the columns of `V`"),
            });
        }
        if let Some(v) = values.iter().find(|v| !v.is_finite()) {
            return Err(inconsistent(
                &self.file,
                format!("tensor `prior_logits` holds {v}"),
            ));
        }
        Ok(Some(values))
    }

    /// The reference head the basis was pulled toward, when the file has `v_ref`.
    pub fn v_ref(&self) -> Result<Option<Vec<f32>>> {
        if !self.file.has("v_ref") {
            return Ok(None);
        }
        v_ref_of(&self.file).map(Some)
    }

    /// Metadata `method` (`lore`, `regularized`, ...), when recorded.
    pub fn method(&self) -> Result<Option<String>> {
        self.file.metadata_json("method")
    }

    /// Metadata `logit_scale`, when recorded: finite, > 0 and within f32 (as the flag), since
    /// a negative scale would silently invert every preference.
    pub fn logit_scale(&self) -> Result<Option<f64>> {
        let scale = self.file.metadata_json::<f64>("logit_scale")?;
        match scale {
            Some(c) if !(c.is_finite() && c > 0.0 && c <= f32::MAX as f64) => {
                Err(IoError::Metadata {
                    path: self.path().to_path_buf(),
                    key: "logit_scale".into(),
                    reason: format!(
                        "{} (the logit scale must be finite, > 0 and at most {:e})",
                        if c == 0.0 || (1e-4..1e6).contains(&c.abs()) {
                            c.to_string()
                        } else {
                            format!("{c:e}")
                        },
                        f32::MAX
                    ),
                })
            }
            _ => Ok(scale),
        }
    }

    /// Metadata `user_ids`: the seen users' names, when recorded.
    pub fn user_ids(&self) -> Result<Option<Vec<String>>> {
        self.file.metadata_json("user_ids")
    }

    /// How the features the model was fitted on were made (metadata `embedder`), when
    /// recorded; its `dim` must be the rows F of `V` (else the file is refused as
    /// inconsistent). `None` for models of simulated features or written before lore recorded
    /// it.
    pub fn embedder(&self) -> Result<Option<EmbedderIdentity>> {
        let identity = EmbedderIdentity::read(&self.file)?;
        if let Some(identity) = &identity {
            if self.file.has("V") {
                let (f, _, _) = matrix(&self.file, "V")?;
                if identity.dim != f {
                    return Err(inconsistent(
                        &self.file,
                        format!(
                            "metadata `embedder` says dim = {} but `V` has F = {f} rows",
                            identity.dim
                        ),
                    ));
                }
            }
        }
        Ok(identity)
    }

    /// A model file held in memory (see [`TensorFile::from_bytes`]).
    pub fn from_file(file: TensorFile) -> Self {
        Self { file }
    }

    /// Writes a fitted model atomically, exactly as `lore fit` does.
    pub fn write(
        path: impl AsRef<Path>,
        model: &FittedModel,
        params: &CheckedFitParams,
        provenance: &FitProvenance,
    ) -> Result<()> {
        let path = path.as_ref();
        Self::writer(path, model, params, provenance)?.write_atomic(path)
    }

    /// The file [`Self::write`] writes, not yet written (`path` names it in messages): for
    /// callers that keep a model in memory, such as the Python package.
    pub fn writer(
        path: impl AsRef<Path>,
        model: &FittedModel,
        params: &CheckedFitParams,
        provenance: &FitProvenance,
    ) -> Result<TensorWriter> {
        let f = model.basis.n_features();
        let k = model.basis.rank();
        let n = model.users.n_users();
        let mut out = TensorWriter::new();
        out.add_parameter_f32("V", &[f, k], model.basis.values())
            .add_parameter_f32("W", &[n, k], model.users.weights())
            .add_parameter_f32("W_logits", &[n, k], model.users.logits())
            .add_parameter_f32("prior_logits", &[k], &model.users.prior_logits());
        if let Some(v_ref) = provenance.v_ref {
            out.add_parameter_f32("v_ref", &[v_ref.len()], v_ref);
        }
        out.metadata("kind", "model")
            .metadata("method", params.method().name())
            .metadata("rank", &params.rank())
            .metadata("kept_rank", &k)
            .metadata("kept_columns", &model.kept)
            .metadata("alpha", &params.alpha())
            .metadata("iterations", &params.iterations())
            .metadata("steps_run", &model.steps)
            .metadata("learning_rate", &params.learning_rate())
            .metadata("logit_scale", &params.logit_scale())
            .metadata("prune_threshold", &params.prune_threshold())
            .metadata("seed", &params.seed())
            .metadata("precision", params.precision().name())
            .metadata("n_users", &n)
            .metadata("n_features", &f)
            .metadata("data", &provenance.data.display().to_string());
        if let Some(init) = provenance.initialized_from {
            out.metadata("init", &init.display().to_string());
        }
        if provenance.v_ref_from_bt {
            out.metadata("v_ref_from", "bt");
        }
        if let Some(stopping) = provenance.early_stopping {
            out.metadata("early_stopping", stopping);
        }
        if let Some(ids) = provenance.user_ids {
            out.metadata("user_ids", ids);
        }
        if let Some(embedder) = provenance.embedder {
            if embedder.dim != f {
                return Err(IoError::Encode {
                    path: path.as_ref().to_path_buf(),
                    reason: format!(
                        "the data's embedder makes F = {} features but the basis has F = {f}",
                        embedder.dim
                    ),
                });
            }
            embedder.write_to(&mut out);
        }
        Ok(out)
    }
}

/// What a personalization was run on, for the users file's metadata.
#[derive(Debug, Clone, Copy)]
pub struct UsersProvenance<'a> {
    /// The model file whose basis was used (metadata `model`).
    pub model: &'a Path,
    /// The preference file personalized on (metadata `data`).
    pub data: &'a Path,
    /// The users' names (metadata `user_ids`), when the data has them.
    pub user_ids: Option<&'a [String]>,
    /// What early stopping saw, when used (metadata `early_stopping`).
    pub early_stopping: Option<&'a Value>,
    /// How the features were made (metadata `embedder`): the model's, when it records one.
    pub embedder: Option<&'a EmbedderIdentity>,
}

/// A users file written by `lore personalize`: new users' `W` and `W_logits`, with metadata.
/// A model file is also read as a users file (its seen users).
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use lore_core::{PersonalizeParams, RewardBasis, UserWeights};
/// use lore_io::{UsersFile, UsersProvenance};
///
/// let dir = tempfile::tempdir()?;
/// let path = dir.path().join("users.safetensors");
/// let users = UserWeights::single_column(2);
/// let basis = RewardBasis::new(2, 1, vec![1.0, -1.0], 0.01)?;
/// let params = PersonalizeParams::default().check()?;
/// let ids = ["ann".to_string(), "bob".to_string()];
/// let provenance = UsersProvenance {
///     model: "model.safetensors".as_ref(),
///     data: "new_users.safetensors".as_ref(),
///     user_ids: Some(&ids),
///     early_stopping: None,
///     embedder: None,
/// };
/// UsersFile::write(&path, &users, &params, &basis, &provenance)?;
///
/// let read = UsersFile::open(&path)?.users()?;
/// assert_eq!(read.weights, users);
/// assert_eq!(read.user_ids.as_deref(), Some(&ids[..]));
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct UsersFile {
    file: TensorFile,
}

impl UsersFile {
    /// Opens a users file (or a model file, for its seen users).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        Ok(Self {
            file: TensorFile::open(path)?,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// The underlying file, for other tensors and metadata.
    pub fn file(&self) -> &TensorFile {
        &self.file
    }

    /// The users' weights: `W` (required), `W_logits` (log W when absent), `user_ids`.
    pub fn users(&self) -> Result<NamedUsers> {
        read_users(&self.file)
    }

    /// How the features behind the weights were made (metadata `embedder`, the model's), when
    /// recorded.
    pub fn embedder(&self) -> Result<Option<EmbedderIdentity>> {
        EmbedderIdentity::read(&self.file)
    }

    /// A users file held in memory (see [`TensorFile::from_bytes`]).
    pub fn from_file(file: TensorFile) -> Self {
        Self { file }
    }

    /// Writes personalized users' weights atomically, exactly as `lore personalize` does. The
    /// prior strength and early stopping are recorded only when used.
    pub fn write(
        path: impl AsRef<Path>,
        users: &UserWeights,
        params: &CheckedPersonalizeParams,
        basis: &RewardBasis,
        provenance: &UsersProvenance,
    ) -> Result<()> {
        Self::writer(users, params, basis, provenance).write_atomic(path)
    }

    /// The file [`Self::write`] writes, not yet written: for callers that keep users' weights
    /// in memory, such as the Python package.
    pub fn writer(
        users: &UserWeights,
        params: &CheckedPersonalizeParams,
        basis: &RewardBasis,
        provenance: &UsersProvenance,
    ) -> TensorWriter {
        let (n, k) = (users.n_users(), users.rank());
        let mut out = TensorWriter::new();
        out.add_parameter_f32("W", &[n, k], users.weights())
            .add_parameter_f32("W_logits", &[n, k], users.logits())
            .metadata("kind", "users")
            .metadata("method", "personalize")
            .metadata("rank", &k)
            .metadata("iterations", &params.iterations())
            .metadata("learning_rate", &params.learning_rate())
            .metadata("logit_scale", &basis.logit_scale())
            .metadata("seed", &params.seed())
            .metadata("n_users", &n)
            .metadata("model", &provenance.model.display().to_string())
            .metadata("data", &provenance.data.display().to_string());
        if params.prior_strength() > 0.0 {
            out.metadata("prior_strength", &params.prior_strength());
        }
        if let Some(stopping) = provenance.early_stopping {
            out.metadata("early_stopping", stopping);
        }
        if let Some(ids) = provenance.user_ids {
            out.metadata("user_ids", ids);
        }
        if let Some(embedder) = provenance.embedder {
            embedder.write_to(&mut out);
        }
        out
    }
}

/// The initial values of a fit (`lore fit --init`): `W0` \[N,K\] (logits) and `V0` \[F,K\].
#[derive(Debug, Clone, PartialEq)]
pub struct FitInitFile {
    /// Users N (rows of `W0`).
    pub n_users: usize,
    /// Features F (rows of `V0`).
    pub n_features: usize,
    /// Rank K (columns of both).
    pub rank: usize,
    /// The values, as the core's fit takes them.
    pub init: FitInit,
}

impl FitInitFile {
    /// Reads `W0` and `V0` and checks that they have the same number of columns K.
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let (n, k, logits) = matrix(&file, "W0")?;
        let (f, k_v, basis) = matrix(&file, "V0")?;
        check_finite(&file, "W0", &logits, k, "user")?;
        check_finite(&file, "V0", &basis, k_v, "feature")?;
        if k != k_v {
            return Err(inconsistent(
                &file,
                format!("`W0` has K = {k} columns but `V0` has K = {k_v}"),
            ));
        }
        Ok(Self {
            n_users: n,
            n_features: f,
            rank: k,
            init: FitInit { logits, basis },
        })
    }

    /// Writes `W0` and `V0` atomically (a file that [`Self::read`] reads back).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        let (n, f, k) = (self.n_users, self.n_features, self.rank);
        TensorWriter::new()
            .add_parameter_f32("W0", &[n, k], &self.init.logits)
            .add_parameter_f32("V0", &[f, k], &self.init.basis)
            .write_atomic(path)
    }
}

/// The initial logits of a personalization (`lore personalize --init`): `w0` \[N,K\].
#[derive(Debug, Clone, PartialEq)]
pub struct UserInitFile {
    /// Users N (rows of `w0`).
    pub n_users: usize,
    /// Rank K (columns of `w0`).
    pub rank: usize,
    /// The logits [N x K], row-major.
    pub logits: Vec<f32>,
}

impl UserInitFile {
    /// Reads `w0` (a matrix).
    pub fn read(path: impl AsRef<Path>) -> Result<Self> {
        let file = TensorFile::open(path)?;
        let (n_users, rank, logits) = matrix(&file, "w0")?;
        check_finite(&file, "w0", &logits, rank, "user")?;
        Ok(Self {
            n_users,
            rank,
            logits,
        })
    }

    /// Writes `w0` atomically (a file that [`Self::read`] reads back).
    pub fn write(&self, path: impl AsRef<Path>) -> Result<()> {
        TensorWriter::new()
            .add_parameter_f32("w0", &[self.n_users, self.rank], &self.logits)
            .write_atomic(path)
    }
}
