//! The model and users files: which tensors and metadata they hold, and how flags name them.
//!
//! Model file: `V` [F,K], `W` [N,K] (probabilities), `W_logits` [N,K], `prior_logits` [K] (the
//! prior mean of new users' logits), `v_ref` [F] when used; metadata: method, every
//! hyperparameter, seed, user_ids, kept columns, early stopping when used, format version.
//! Users file: `W`, `W_logits` and metadata. Values of metadata are JSON-encoded strings.

use std::path::Path;

use anyhow::{bail, Context, Result};
use lore_core::DEFAULT_LOGIT_SCALE;
use lore_core::{
    CheckedFitParams, CheckedPersonalizeParams, FittedModel, RewardBasis, UserWeights,
};
use lore_io::{TensorFile, TensorWriter};
use serde_json::Value;

/// Reads a tensor as f32 and checks that it is a matrix; returns (rows, cols, values).
fn matrix(file: &TensorFile, name: &str) -> Result<(usize, usize, Vec<f32>)> {
    let (shape, values) = file.tensor_f32(name)?;
    match shape[..] {
        [rows, cols] => Ok((rows, cols, values)),
        _ => bail!(
            "{}: tensor `{name}` has shape {shape:?}, expected a matrix [rows, columns]",
            file.path().display()
        ),
    }
}

/// The logit scale recorded in a file's metadata, if any.
fn recorded_logit_scale(file: &TensorFile) -> Result<Option<f64>> {
    Ok(file.metadata_json::<f64>("logit_scale")?)
}

/// The basis V of a model file (only the tensor `V` is required). The logit scale is
/// `logit_scale` if given, else the file's, else the default 0.01.
pub fn read_basis(path: &Path, logit_scale: Option<f64>) -> Result<RewardBasis> {
    let file = TensorFile::open(path)?;
    let (f, k, values) = matrix(&file, "V")?;
    let scale = match logit_scale {
        Some(c) => c,
        None => recorded_logit_scale(&file)?.unwrap_or(DEFAULT_LOGIT_SCALE),
    };
    RewardBasis::new(f, k, values, scale).with_context(|| format!("{}: tensor `V`", path.display()))
}

/// User weights from a model or users file: `W` (probabilities, required) and `W_logits`
/// (log W when absent), with the file's `user_ids` metadata if present.
pub fn read_user_weights(path: &Path) -> Result<(UserWeights, Option<Vec<String>>)> {
    let file = TensorFile::open(path)?;
    let (n, k, weights) = matrix(&file, "W")?;
    let logits = if file.has("W_logits") {
        let (ln, lk, logits) = matrix(&file, "W_logits")?;
        if (ln, lk) != (n, k) {
            bail!(
                "{}: tensor `W_logits` has shape [{ln}, {lk}], expected [{n}, {k}] like `W`",
                path.display()
            );
        }
        logits
    } else {
        weights.iter().map(|w| w.ln()).collect()
    };
    let user_ids = file.metadata_json::<Vec<String>>("user_ids")?;
    if let Some(ids) = &user_ids {
        if ids.len() != n {
            bail!(
                "{}: metadata `user_ids` has {} ids but `W` has {n} users",
                path.display(),
                ids.len()
            );
        }
    }
    let users = UserWeights::from_parts(n, k, logits, weights)
        .with_context(|| format!("{}: tensor `W`", path.display()))?;
    Ok((users, user_ids))
}

/// The reference direction `v_ref` ([F] or [F, 1]) of a file.
pub fn read_v_ref(path: &Path) -> Result<Vec<f32>> {
    let file = TensorFile::open(path)?;
    let (shape, values) = file.tensor_f32("v_ref")?;
    match shape[..] {
        [_] | [_, 1] => Ok(values),
        _ => bail!(
            "{}: tensor `v_ref` has shape {shape:?}, expected [F] or [F, 1]",
            path.display()
        ),
    }
}

/// Initial `W0` [N,K] (logits) and `V0` [F,K] for a fit.
pub fn read_fit_init(path: &Path) -> Result<(usize, usize, usize, lore_core::FitInit)> {
    let file = TensorFile::open(path)?;
    let (n, k, logits) = matrix(&file, "W0")?;
    let (f, k_v, basis) = matrix(&file, "V0")?;
    if k != k_v {
        bail!(
            "{}: `W0` has K = {k} columns but `V0` has K = {k_v}",
            path.display()
        );
    }
    Ok((n, f, k, lore_core::FitInit { logits, basis }))
}

/// The tensor `prior_logits` [K] of a model file, None when the file has none (written before
/// `lore fit` stored it).
pub fn read_prior_logits(path: &Path, rank: usize) -> Result<Option<Vec<f32>>> {
    let file = TensorFile::open(path)?;
    if !file.has("prior_logits") {
        return Ok(None);
    }
    let (shape, values) = file.tensor_f32("prior_logits")?;
    if shape[..] != [rank] {
        bail!(
            "{}: tensor `prior_logits` has shape {shape:?}, expected [{rank}] like the columns of `V`",
            path.display()
        );
    }
    if let Some(v) = values.iter().find(|v| !v.is_finite()) {
        bail!("{}: tensor `prior_logits` holds {v}", path.display());
    }
    Ok(Some(values))
}

/// Initial `w0` [N,K] (logits) for personalization.
pub fn read_user_init(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let file = TensorFile::open(path)?;
    matrix(&file, "w0")
}

/// What a fit was run on, for the model file's metadata.
pub struct FitProvenance<'a> {
    pub data: &'a Path,
    pub user_ids: Option<&'a [String]>,
    pub v_ref: Option<&'a [f32]>,
    /// `v_ref` is the direction of a K = 1 fit (--v-ref bt), not a file's.
    pub v_ref_from_bt: bool,
    pub initialized_from: Option<&'a Path>,
    /// What early stopping saw, when used.
    pub early_stopping: Option<&'a Value>,
}

/// Writes a fitted model atomically.
pub fn write_model(
    path: &Path,
    model: &FittedModel,
    params: &CheckedFitParams,
    provenance: &FitProvenance,
) -> Result<()> {
    let f = model.basis.n_features();
    let k = model.basis.rank();
    let n = model.users.n_users();
    let mut out = TensorWriter::new();
    out.add_f32("V", &[f, k], model.basis.values())
        .add_f32("W", &[n, k], model.users.weights())
        .add_f32("W_logits", &[n, k], model.users.logits())
        .add_f32("prior_logits", &[k], &model.users.prior_logits());
    if let Some(v_ref) = provenance.v_ref {
        out.add_f32("v_ref", &[v_ref.len()], v_ref);
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
    out.write_atomic(path)?;
    Ok(())
}

/// What a personalization was run on, for the users file's metadata.
pub struct UsersProvenance<'a> {
    pub model: &'a Path,
    pub data: &'a Path,
    pub user_ids: Option<&'a [String]>,
    /// What early stopping saw, when used.
    pub early_stopping: Option<&'a Value>,
}

/// Writes personalized users' weights atomically. The prior strength and early stopping are
/// recorded only when used.
pub fn write_users(
    path: &Path,
    users: &UserWeights,
    params: &CheckedPersonalizeParams,
    basis: &RewardBasis,
    provenance: &UsersProvenance,
) -> Result<()> {
    let UsersProvenance {
        model,
        data,
        user_ids,
        early_stopping,
    } = provenance;
    let (n, k) = (users.n_users(), users.rank());
    let mut out = TensorWriter::new();
    out.add_f32("W", &[n, k], users.weights())
        .add_f32("W_logits", &[n, k], users.logits())
        .metadata("kind", "users")
        .metadata("method", "personalize")
        .metadata("rank", &k)
        .metadata("iterations", &params.iterations())
        .metadata("learning_rate", &params.learning_rate())
        .metadata("logit_scale", &basis.logit_scale())
        .metadata("seed", &params.seed())
        .metadata("n_users", &n)
        .metadata("model", &model.display().to_string())
        .metadata("data", &data.display().to_string());
    if params.prior_strength() > 0.0 {
        out.metadata("prior_strength", &params.prior_strength());
    }
    if let Some(stopping) = early_stopping {
        out.metadata("early_stopping", stopping);
    }
    if let Some(ids) = user_ids {
        out.metadata("user_ids", ids);
    }
    out.write_atomic(path)?;
    Ok(())
}
