//! `lore.fit`, `lore.load`, `Model`, `Model.personalize`, `Users`, `lore.load_users`,
//! `Model.rewards` and `lore.accuracy`.
//!
//! A `Model` is a model file held in memory: `lore.fit` builds exactly the file `lore fit`
//! writes (same code, same bytes but for the metadata naming the data, which here is arrays),
//! `lore.load` reads one, and `.save` writes its bytes atomically. `Users` is the same for
//! users files. Files are therefore interchangeable with the CLI's both ways.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use lore_core::{
    check_fit_size, evaluate, fit_bradley_terry, hold_out_rows, EarlyStopping, FitInit, FitOptions,
    FitParams, HeldOutRows, LoreError, Method, PersonalizeOptions, PersonalizeParams, Precision,
    Preferences, RewardBasis, StoppingReport, UserWeights,
};
use lore_io::{
    read_v_ref, EmbedderIdentity, FitInitFile, FitProvenance, ModelFile, NamedUsers, TensorFile,
    UsersFile, UsersProvenance,
};
use numpy::{PyArray1, PyArray2};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyString};
use serde_json::{json, Value};

use crate::arrays::{
    asarray, check_finite, count, f32_matrix, f32_vector, matrix_out, path_of, read_user_ids,
    vector_out, PairsInput,
};
use crate::errors::to_py;
use crate::progress::{run_detached, steps, thread_pool};
use lore_io::Trace;

/// What the metadata `data` (and `init`, for arrays) of a file made from Python says: the
/// inputs were arrays, not files.
const ARRAYS: &str = "(arrays)";

/// The name of a model or users file made in memory, in messages and in a users file's
/// metadata `model` when the model was never loaded from a file.
const IN_MEMORY: &str = "(in memory)";

/// The keyword `v_ref="bt"`: fit one shared Bradley-Terry reward first and use its direction.
const BT_V_REF: &str = "bt";

/// Adds this module's classes and functions to `lore._lore`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Model>()?;
    m.add_class::<Users>()?;
    m.add_function(wrap_pyfunction!(fit, m)?)?;
    m.add_function(wrap_pyfunction!(load, m)?)?;
    m.add_function(wrap_pyfunction!(load_users, m)?)?;
    m.add_function(wrap_pyfunction!(accuracy, m)?)?;
    Ok(())
}

/// A fitted LoRe model: the basis V [F, K], the fitted users' weights W [N, K], their prior,
/// the reference head and the run's settings; what `lore fit` writes to a model file.
#[pyclass(module = "lore._lore", frozen)]
pub struct Model {
    file: ModelFile,
    basis: RewardBasis,
    users: NamedUsers,
    prior_logits: Vec<f32>,
    v_ref: Option<Vec<f32>>,
    kept: Vec<usize>,
    steps: usize,
    method: String,
    embedder: Option<EmbedderIdentity>,
}

impl Model {
    /// Reads everything the Python side shows from a model file (held in memory).
    pub(crate) fn from_file(file: ModelFile) -> anyhow::Result<Self> {
        let basis = file.basis(None)?;
        let users = file.users()?;
        if users.weights.rank() != basis.rank() {
            bail!(
                "{}: `W` has K = {} columns but `V` has K = {}",
                file.path().display(),
                users.weights.rank(),
                basis.rank()
            );
        }
        let prior_logits = match file.prior_logits()? {
            Some(prior) => prior,
            None => users.weights.prior_logits(),
        };
        let v_ref = file.v_ref()?;
        let meta = file.file();
        let kept = meta
            .metadata_json::<Vec<usize>>("kept_columns")?
            .unwrap_or_else(|| (0..basis.rank()).collect());
        let steps = meta.metadata_json::<usize>("steps_run")?.unwrap_or(0);
        let method = file.method()?.unwrap_or_default();
        let embedder = file.embedder()?;
        Ok(Self {
            file,
            basis,
            users,
            prior_logits,
            v_ref,
            kept,
            steps,
            method,
            embedder,
        })
    }

    /// Opens a model file: read into memory (so that later changes to the file do not
    /// matter) and checked.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let file = in_memory(path)?;
        Self::from_file(ModelFile::from_file(file))
    }

    /// The basis V and the logit scale c.
    pub(crate) fn basis(&self) -> &RewardBasis {
        &self.basis
    }

    /// The fitted users' weights.
    pub(crate) fn user_weights(&self) -> &UserWeights {
        &self.users.weights
    }
}

/// A file read whole into memory, with the messages of `TensorFile::open` when it cannot be.
fn in_memory(path: &Path) -> anyhow::Result<TensorFile> {
    let opened = TensorFile::open(path)?;
    Ok(TensorFile::from_bytes(path, opened.as_bytes())?)
}

/// The file's metadata with each value parsed as JSON (kept as a string when it is not).
fn metadata_dict<'py>(py: Python<'py>, file: &TensorFile) -> PyResult<Bound<'py, PyDict>> {
    let json = py.import("json")?;
    let dict = PyDict::new(py);
    for (key, raw) in file.metadata() {
        let value = match json.call_method1("loads", (raw,)) {
            Ok(value) => value,
            Err(_) => PyString::new(py, raw).into_any(),
        };
        dict.set_item(key, value)?;
    }
    Ok(dict)
}

/// Writes a file held in memory to `path` atomically.
fn save_bytes(file: &TensorFile, path: PathBuf) -> PyResult<()> {
    lore_io::write_bytes_atomic(&path, file.as_bytes()).map_err(|e| to_py(e.into()))
}

#[pymethods]
impl Model {
    /// The basis V [F, K] (float32).
    #[getter(V)]
    fn v<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        matrix_out(
            py,
            self.basis.n_features(),
            self.basis.rank(),
            self.basis.values(),
        )
    }

    /// The fitted users' weights W = softmax(W_logits) [N, K] (float32).
    #[getter(W)]
    fn w<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let w = &self.users.weights;
        matrix_out(py, w.n_users(), w.rank(), w.weights())
    }

    /// The fitted users' logits [N, K] (float32).
    #[getter(W_logits)]
    fn w_logits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let w = &self.users.weights;
        matrix_out(py, w.n_users(), w.rank(), w.logits())
    }

    /// The prior mean of new users' logits [K]: the log of the fitted users' mean weights.
    #[getter]
    fn prior_logits<'py>(&self, py: Python<'py>) -> Bound<'py, PyArray1<f32>> {
        vector_out(py, &self.prior_logits)
    }

    /// The reference head the basis was pulled toward [F], or None.
    #[getter]
    fn v_ref<'py>(&self, py: Python<'py>) -> Option<Bound<'py, PyArray1<f32>>> {
        self.v_ref.as_deref().map(|v| vector_out(py, v))
    }

    /// c in P(chosen > rejected) = sigmoid(c * x . V w).
    #[getter]
    fn logit_scale(&self) -> f64 {
        self.basis.logit_scale()
    }

    /// The training method (`lore` or `regularized`; empty when the file does not say).
    #[getter]
    fn method(&self) -> String {
        self.method.clone()
    }

    /// The number of basis columns K (after pruning).
    #[getter]
    fn rank(&self) -> usize {
        self.basis.rank()
    }

    /// Indices of the kept columns among the fitted ones.
    #[getter]
    fn kept(&self) -> Vec<usize> {
        self.kept.clone()
    }

    /// The fitted users' names, or None.
    #[getter]
    fn user_ids(&self) -> Option<Vec<String>> {
        self.users.user_ids.clone()
    }

    /// The model file's metadata, values parsed from JSON.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        metadata_dict(py, self.file.file())
    }

    /// Optimizer steps run (fewer than `iterations` when early stopping ended the fit).
    #[getter]
    fn steps(&self) -> usize {
        self.steps
    }

    /// Writes the model file (safetensors, as `lore fit --out` writes it) atomically.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        save_bytes(self.file.file(), path)
    }

    /// Rewards r = c * e . V w of feature rows `features` [n, F] for weights `weights` [K]
    /// (one user) or [n, K] (one per row), as float32 [n] (computed in float64).
    fn rewards<'py>(
        &self,
        py: Python<'py>,
        features: &Bound<'py, PyAny>,
        weights: &Bound<'py, PyAny>,
    ) -> PyResult<Bound<'py, PyArray1<f32>>> {
        let (n, f, e) = f32_matrix("features", features)?;
        let (basis, k) = (&self.basis, self.basis.rank());
        if f != basis.n_features() {
            return Err(PyValueError::new_err(format!(
                "feature dimension mismatch: the model has F = {}, features have F = {f}",
                basis.n_features()
            )));
        }
        let weights = asarray(weights)?;
        let rewards: Vec<f32> = if weights.getattr("ndim")?.extract::<usize>()? == 1 {
            let w = f32_vector("weights", &weights, false)?;
            if w.len() != k {
                return Err(PyValueError::new_err(format!(
                    "weights has {} entries, the model has K = {k}",
                    w.len()
                )));
            }
            let direction = basis.direction(&w);
            e.chunks_exact(f.max(1))
                .map(|row| basis.reward_along(row, &direction) as f32)
                .collect()
        } else {
            let (rows, cols, w) = f32_matrix("weights", &weights)?;
            if (rows, cols) != (n, k) {
                return Err(PyValueError::new_err(format!(
                    "weights is [{rows}, {cols}], expected [K] or [n, K] = [{n}, {k}]"
                )));
            }
            e.chunks_exact(f.max(1))
                .zip(w.chunks_exact(k))
                .map(|(row, w)| basis.reward(row, w) as f32)
                .collect()
        };
        Ok(vector_out(py, &rewards))
    }

    /// Fits new users' weights on their pairs with the basis fixed, as `lore personalize`
    /// does: `x` [P, F], `user` [P] (0..N-1); `init` [N, K] starting logits. None means the
    /// library's default (as the CLI's). Releases the GIL; Ctrl-C raises KeyboardInterrupt.
    /// Returns Users.
    #[pyo3(signature = (x, user, *, iterations=None, lr=None, prior_strength=None, seed=None,
        init=None, validation_fraction=None, patience=None, eval_every=None, user_ids=None,
        threads=None, progress=false))]
    #[allow(clippy::too_many_arguments)]
    fn personalize(
        &self,
        py: Python<'_>,
        x: &Bound<'_, PyAny>,
        user: &Bound<'_, PyAny>,
        iterations: Option<i64>,
        lr: Option<f64>,
        prior_strength: Option<f64>,
        seed: Option<u64>,
        init: Option<&Bound<'_, PyAny>>,
        validation_fraction: Option<f64>,
        patience: Option<i64>,
        eval_every: Option<i64>,
        user_ids: Option<Vec<String>>,
        threads: Option<i64>,
        progress: bool,
    ) -> PyResult<Users> {
        let iterations = count("iterations", iterations)?;
        let (patience, eval_every) = (
            count("patience", patience)?,
            count("eval_every", eval_every)?,
        );
        let threads = count("threads", threads)?;
        let mut params = PersonalizeParams::default();
        if let Some(t) = iterations {
            params = params.iterations(t);
        }
        if let Some(lr) = lr {
            params = params.learning_rate(lr);
        }
        if let Some(s) = seed {
            params = params.seed(s);
        }
        if let Some(l) = prior_strength {
            params = params.prior_strength(l);
        }
        let params = params.check().map_err(|e| to_py(e.into()))?;
        let stopping = resolve_stopping(validation_fraction, eval_every, patience)?;
        let basis = &self.basis;
        let prior = if params.prior_strength() > 0.0 {
            match self.file.prior_logits().map_err(|e| to_py(e.into()))? {
                Some(prior) => Some(prior),
                None => {
                    return Err(PyValueError::new_err(format!(
                        "{}: the model has no prior_logits (fit it with this version of lore fit)",
                        self.file.path().display()
                    )))
                }
            }
        } else {
            None
        };
        let input = PairsInput::read(x, user)?;
        let user_ids = read_user_ids(user_ids, input.n_users())?;
        if basis.n_features() != input.n_features() {
            return Err(PyValueError::new_err(format!(
                "feature dimension mismatch: the model has F = {}, x has F = {}",
                basis.n_features(),
                input.n_features()
            )));
        }
        let (n, k) = (input.n_users(), basis.rank());
        let init = match (init, &prior) {
            (Some(init), _) => {
                let (rows, cols, logits) = f32_matrix("init", init)?;
                if (rows, cols) != (n, k) {
                    return Err(PyValueError::new_err(format!(
                        "init is [{rows}, {cols}], expected [N = {n}, K = {k}]"
                    )));
                }
                check_finite("init", &logits, k)?;
                Some(logits)
            }
            // With a prior, every user starts at its mean.
            (None, Some(prior)) => Some(prior.repeat(n)),
            (None, None) => None,
        };
        let data = input.preferences();
        let done = run_detached(
            py,
            thread_pool(threads)?.as_ref(),
            |cancel| -> anyhow::Result<_> {
                let holdout = stopping
                    .map(|s| hold_out(&data, s.fraction, params.seed()))
                    .transpose()?;
                let train = match &holdout {
                    Some(holdout) => holdout.train()?,
                    None => data.clone(),
                };
                let validation = holdout.as_ref().map(HeldOutRows::validation).transpose()?;
                let bar = steps(progress, params.iterations(), "personalize");
                let options = PersonalizeOptions {
                    init_logits: init.as_deref(),
                    prior_logits: prior.as_deref(),
                    validation: validation.as_ref().zip(stopping.map(|s| s.rule)),
                };
                let outcome = lore_core::personalize(&params, basis, &train, &options, |step| {
                    bar.set_position(step.step as u64 + 1);
                    bar.set_message(format!("loss {:.5}", step.loss));
                    cancel.flow()
                })?;
                bar.finish_and_clear();
                let early_stopping = match (&stopping, &outcome.stopping, &holdout) {
                    (Some(stopping), Some(report), Some(holdout)) => {
                        Some(stopping.metadata(report, holdout))
                    }
                    _ => None,
                };
                Ok((outcome.users, early_stopping))
            },
        )?;
        let (users, early_stopping) = done.map_err(to_py)?;
        let writer = UsersFile::writer(
            &users,
            &params,
            basis,
            &UsersProvenance {
                model: self.file.path(),
                data: Path::new(ARRAYS),
                user_ids: user_ids.as_deref(),
                early_stopping: early_stopping.as_ref(),
                embedder: self.embedder.as_ref(),
            },
        );
        let file = writer
            .encode(IN_MEMORY)
            .and_then(|bytes| TensorFile::from_bytes(IN_MEMORY, &bytes))
            .map_err(|e| to_py(e.into()))?;
        Users::from_file(UsersFile::from_file(file)).map_err(to_py)
    }

    fn __repr__(&self) -> String {
        format!(
            "Model(method={:?}, F={}, K={}, N={}, steps={})",
            self.method,
            self.basis.n_features(),
            self.basis.rank(),
            self.users.weights.n_users(),
            self.steps
        )
    }
}

/// Users' weights fitted with a model's basis: what `lore personalize` writes to a users file.
#[pyclass(module = "lore._lore", frozen)]
pub struct Users {
    file: UsersFile,
    users: NamedUsers,
}

impl Users {
    /// Reads the weights of a users file (held in memory).
    pub(crate) fn from_file(file: UsersFile) -> anyhow::Result<Self> {
        let users = file.users()?;
        Ok(Self { file, users })
    }

    /// The users' weights.
    pub(crate) fn user_weights(&self) -> &UserWeights {
        &self.users.weights
    }
}

#[pymethods]
impl Users {
    /// The users' weights W = softmax(W_logits) [N, K] (float32).
    #[getter(W)]
    fn w<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let w = &self.users.weights;
        matrix_out(py, w.n_users(), w.rank(), w.weights())
    }

    /// The users' logits [N, K] (float32).
    #[getter(W_logits)]
    fn w_logits<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyArray2<f32>>> {
        let w = &self.users.weights;
        matrix_out(py, w.n_users(), w.rank(), w.logits())
    }

    /// The users' names, or None.
    #[getter]
    fn user_ids(&self) -> Option<Vec<String>> {
        self.users.user_ids.clone()
    }

    /// The users file's metadata, values parsed from JSON.
    #[getter]
    fn metadata<'py>(&self, py: Python<'py>) -> PyResult<Bound<'py, PyDict>> {
        metadata_dict(py, self.file.file())
    }

    /// Writes the users file (safetensors, as `lore personalize --out` writes it) atomically.
    fn save(&self, path: PathBuf) -> PyResult<()> {
        save_bytes(self.file.file(), path)
    }

    fn __repr__(&self) -> String {
        format!(
            "Users(N={}, K={})",
            self.users.weights.n_users(),
            self.users.weights.rank()
        )
    }
}

/// The reference head of a fit.
enum VRef {
    /// None: no pull.
    None,
    /// `"bt"`: a shared Bradley-Terry fit's direction.
    Bt,
    /// Given (an array, or a file's tensor `v_ref`).
    Given(Vec<f32>),
}

/// Reads `v_ref`: None, `"bt"`, a path of a file with tensor `v_ref`, or an array [F] / [F, 1].
fn read_v_ref_arg(value: Option<&Bound<'_, PyAny>>) -> PyResult<VRef> {
    let Some(value) = value else {
        return Ok(VRef::None);
    };
    if let Ok(s) = value.cast::<PyString>() {
        if s.to_str()? == BT_V_REF {
            return Ok(VRef::Bt);
        }
    }
    if let Some(path) = path_of(value)? {
        return Ok(VRef::Given(read_v_ref(&path).map_err(|e| to_py(e.into()))?));
    }
    let v = f32_vector("v_ref", value, true)?;
    check_finite("v_ref", &v, 1)?;
    Ok(VRef::Given(v))
}

/// Reads `init`: a path (as `lore fit --init`) or a dict of arrays `W0` [N, K] and `V0` [F, K].
fn read_init(value: &Bound<'_, PyAny>) -> PyResult<(FitInitFile, PathBuf)> {
    if let Some(path) = path_of(value)? {
        let file = FitInitFile::read(&path).map_err(|e| to_py(e.into()))?;
        return Ok((file, path));
    }
    let dict = value.cast::<PyDict>().map_err(|_| {
        PyValueError::new_err(
            "init must be a file path or a dict of arrays {\"W0\": [N, K], \"V0\": [F, K]}",
        )
    })?;
    let get = |name: &str| -> PyResult<(usize, usize, Vec<f32>)> {
        let item = dict.get_item(name)?.ok_or_else(|| {
            PyValueError::new_err(format!("init has no {name:?} (it needs \"W0\" and \"V0\")"))
        })?;
        f32_matrix(&format!("init[{name:?}]"), &item)
    };
    let (n, k, logits) = get("W0")?;
    let (f, k_v, basis) = get("V0")?;
    check_finite("init[\"W0\"]", &logits, k)?;
    check_finite("init[\"V0\"]", &basis, k_v)?;
    if k != k_v {
        return Err(PyValueError::new_err(format!(
            "init: \"W0\" has K = {k} columns but \"V0\" has K = {k_v}"
        )));
    }
    let file = FitInitFile {
        n_users: n,
        n_features: f,
        rank: k,
        init: FitInit { logits, basis },
    };
    Ok((file, PathBuf::from(ARRAYS)))
}

/// Early stopping as asked for: the validation fraction and the rule.
#[derive(Debug, Clone, Copy)]
struct Stopping {
    fraction: f64,
    rule: EarlyStopping,
}

/// The checked early stopping, None without `validation_fraction` (as the CLI resolves its
/// flags).
fn resolve_stopping(
    fraction: Option<f64>,
    eval_every: Option<usize>,
    patience: Option<usize>,
) -> PyResult<Option<Stopping>> {
    let Some(fraction) = fraction else {
        if eval_every.is_some() || patience.is_some() {
            return Err(PyValueError::new_err(
                "eval_every and patience set early stopping: give validation_fraction too",
            ));
        }
        return Ok(None);
    };
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(PyValueError::new_err(format!(
            "invalid validation_fraction: {fraction} (the share of each user's pairs held out; \
             must be > 0 and < 1)"
        )));
    }
    let default = EarlyStopping::default();
    let rule = EarlyStopping {
        eval_every: eval_every.unwrap_or(default.eval_every),
        patience: patience.unwrap_or(default.patience),
        min_delta: default.min_delta,
    }
    .check()
    .map_err(|e| to_py(e.into()))?;
    Ok(Some(Stopping { fraction, rule }))
}

impl Stopping {
    /// The metadata `early_stopping` of a run (as the CLI records it).
    fn metadata(&self, report: &StoppingReport, holdout: &HeldOutRows) -> Value {
        lore_io::early_stopping_metadata(self.fraction, &self.rule, report, holdout)
    }
}

/// Holds out `fraction` of each user's pairs for early stopping, as the CLI does.
fn hold_out(data: &Preferences, fraction: f64, seed: u64) -> anyhow::Result<HeldOutRows> {
    hold_out_rows(data, fraction, seed).map_err(|e| match e {
        LoreError::InvalidParameter { reason, .. } => {
            anyhow!("validation_fraction: {}", reason.replace("rows", "pairs"))
        }
        other => other.into(),
    })
}

/// Fits a LoRe model: a shared basis V [F, K] and per-user weights W [N, K] on many users'
/// pairs `x` [P, F] (x = e(chosen) - e(rejected); float32 or float16, read without a copy when
/// C-contiguous with `user` sorted) of users `user` [P] (0..N-1), exactly as `lore fit` does:
/// the same options and seed give the same V and W, bit for bit. Every option is `lore fit`'s;
/// None means the library's default. `v_ref`: an array [F], a file with tensor `v_ref`, or
/// "bt". `init`: a file (as `--init`) or {"W0": [N, K], "V0": [F, K]}. `trace`: a JSON-lines
/// file of the steps. `threads`: threads for this call (None: all cores). Releases the GIL;
/// Ctrl-C raises KeyboardInterrupt. Returns a Model.
#[pyfunction]
#[pyo3(signature = (x, user, rank=None, *, method=None, lr=None, iterations=None, alpha=None,
    v_ref=None, seed=None, init=None, precision=None, validation_fraction=None, patience=None,
    eval_every=None, prune_threshold=None, logit_scale=None, trace=None, threads=None,
    progress=false, user_ids=None))]
#[allow(clippy::too_many_arguments)]
fn fit(
    py: Python<'_>,
    x: &Bound<'_, PyAny>,
    user: &Bound<'_, PyAny>,
    rank: Option<i64>,
    method: Option<&str>,
    lr: Option<f64>,
    iterations: Option<i64>,
    alpha: Option<f64>,
    v_ref: Option<&Bound<'_, PyAny>>,
    seed: Option<u64>,
    init: Option<&Bound<'_, PyAny>>,
    precision: Option<&str>,
    validation_fraction: Option<f64>,
    patience: Option<i64>,
    eval_every: Option<i64>,
    prune_threshold: Option<f64>,
    logit_scale: Option<f64>,
    trace: Option<PathBuf>,
    threads: Option<i64>,
    progress: bool,
    user_ids: Option<Vec<String>>,
) -> PyResult<Model> {
    let (rank, iterations) = (count("rank", rank)?, count("iterations", iterations)?);
    let (patience, eval_every) = (
        count("patience", patience)?,
        count("eval_every", eval_every)?,
    );
    let threads = count("threads", threads)?;
    let method = match method {
        Some(name) => name.parse().map_err(|e: LoreError| to_py(e.into()))?,
        None => Method::default(),
    };
    let precision = match precision {
        Some(name) => name.parse().map_err(|e: LoreError| to_py(e.into()))?,
        None => Precision::default(),
    };
    let stopping = resolve_stopping(validation_fraction, eval_every, patience)?;
    let init = init.map(read_init).transpose()?;
    let rank = match (rank, &init) {
        (Some(k), Some((file, path))) if k != file.rank => {
            return Err(PyValueError::new_err(format!(
                "rank {k} does not match the initial values in {} (K = {})",
                path.display(),
                file.rank
            )))
        }
        (Some(k), _) => k,
        (None, Some((file, _))) => file.rank,
        (None, None) => {
            return Err(PyValueError::new_err(
                "rank is required (or give init, whose arrays fix K)",
            ))
        }
    };
    let mut params = FitParams::new(method, rank).precision(precision);
    if let Some(a) = alpha {
        params = params.alpha(a);
    }
    if let Some(t) = iterations {
        params = params.iterations(t);
    }
    if let Some(lr) = lr {
        params = params.learning_rate(lr);
    }
    if let Some(c) = logit_scale {
        params = params.logit_scale(c);
    }
    if let Some(p) = prune_threshold {
        params = params.prune_threshold(Some(p));
    }
    if let Some(s) = seed {
        params = params.seed(s);
    }
    let params = params.check().map_err(|e| to_py(e.into()))?;
    let v_ref = read_v_ref_arg(v_ref)?;
    let bt_params = matches!(v_ref, VRef::Bt).then(|| params.bradley_terry());
    if params.alpha() > 0.0 && matches!(v_ref, VRef::None) {
        return Err(PyValueError::new_err(format!(
            "alpha {} pulls the basis toward a reference head: give v_ref (an array, a file, or \
             \"bt\")",
            params.alpha()
        )));
    }

    let input = PairsInput::read(x, user)?;
    let user_ids = read_user_ids(user_ids, input.n_users())?;
    let (n, f) = (input.n_users(), input.n_features());
    if let Some((file, path)) = &init {
        if (file.n_users, file.n_features) != (n, f) {
            return Err(PyValueError::new_err(format!(
                "{}: initial values are for N = {} users and F = {} features, but x has N = {n} \
                 and F = {f}",
                path.display(),
                file.n_users,
                file.n_features
            )));
        }
    }
    if let VRef::Given(v) = &v_ref {
        if v.len() != f {
            return Err(PyValueError::new_err(format!(
                "v_ref has F = {}, but x has F = {f}",
                v.len()
            )));
        }
    }
    let data = input.preferences();
    check_fit_size(n, data.n_rows(), f, rank).map_err(|e| to_py(e.into()))?;

    let given_v_ref = match &v_ref {
        VRef::Given(v) => Some(v.as_slice()),
        _ => None,
    };
    let trace_path = trace.as_deref();
    let init_values = init.as_ref().map(|(file, _)| &file.init);
    let done = run_detached(
        py,
        thread_pool(threads)?.as_ref(),
        |cancel| -> anyhow::Result<_> {
            let holdout = stopping
                .map(|s| hold_out(&data, s.fraction, params.seed()))
                .transpose()?;
            let train = match &holdout {
                Some(holdout) => holdout.train()?,
                None => data.clone(),
            };
            let validation = holdout.as_ref().map(HeldOutRows::validation).transpose()?;
            let early = validation.as_ref().zip(stopping.map(|s| s.rule));
            let bt_direction = match &bt_params {
                Some(bt_params) => {
                    let bar = steps(progress, bt_params.iterations(), "bt fit");
                    let (direction, _) = fit_bradley_terry(&params, &train, early, |step| {
                        bar.set_position(step.step as u64 + 1);
                        bar.set_message(format!("nll {:.5}", step.nll));
                        cancel.flow()
                    })
                    .context("fitting the Bradley-Terry reward")?;
                    bar.finish_and_clear();
                    if cancel.flow().is_break() {
                        // Interrupted: the caller raises; nothing more to do.
                        return Ok(None);
                    }
                    Some(direction)
                }
                None => None,
            };
            let bar = steps(progress, params.iterations(), "fit");
            let mut trace = Trace::new(trace_path);
            let options = FitOptions {
                v_ref: bt_direction.as_deref().or(given_v_ref),
                init: init_values,
                validation: early,
            };
            let outcome = lore_core::fit(&params, &train, &options, |step| {
                match step.nll_after_weights {
                    None => trace.record(json!({
                        "step": step.step, "nll": step.nll, "reg": step.reg, "alpha": step.alpha,
                    })),
                    Some(nll_v) => trace.record(json!({
                        "step": step.step, "nll_w": step.nll, "nll_v": nll_v, "reg": step.reg,
                        "alpha": step.alpha,
                    })),
                }
                bar.set_position(step.step as u64 + 1);
                bar.set_message(format!("nll {:.5}", step.nll));
                cancel.flow()
            })?;
            bar.finish_and_clear();
            let early_stopping = match (&stopping, &outcome.stopping, &holdout) {
                (Some(stopping), Some(report), Some(holdout)) => {
                    Some(stopping.metadata(report, holdout))
                }
                _ => None,
            };
            Ok(Some((outcome.model, bt_direction, early_stopping, trace)))
        },
    )?;
    let Some((model, bt_direction, early_stopping, trace)) = done.map_err(to_py)? else {
        // Only an interrupted run ends without a model, and that returned above.
        return Err(PyValueError::new_err("the fit was interrupted"));
    };
    let provenance = FitProvenance {
        data: Path::new(ARRAYS),
        user_ids: user_ids.as_deref(),
        v_ref: bt_direction.as_deref().or(given_v_ref),
        v_ref_from_bt: bt_params.is_some(),
        initialized_from: init.as_ref().map(|(_, path)| path.as_path()),
        early_stopping: early_stopping.as_ref(),
        embedder: None,
    };
    let file = ModelFile::writer(IN_MEMORY, &model, &params, &provenance)
        .and_then(|writer| writer.encode(IN_MEMORY))
        .and_then(|bytes| TensorFile::from_bytes(IN_MEMORY, &bytes))
        .map_err(|e| to_py(e.into()))?;
    let model = Model::from_file(ModelFile::from_file(file)).map_err(to_py)?;
    trace.finish().map_err(|e| to_py(e.into()))?;
    Ok(model)
}

/// Reads a model file (as `lore fit` writes it).
#[pyfunction]
fn load(path: PathBuf) -> PyResult<Model> {
    Model::open(&path).map_err(to_py)
}

/// Reads a users file (as `lore personalize` writes it; a model file gives its fitted users).
#[pyfunction]
fn load_users(path: PathBuf) -> PyResult<Users> {
    let file = in_memory(&path).map_err(to_py)?;
    Users::from_file(UsersFile::from_file(file)).map_err(to_py)
}

/// Pairwise accuracy per user of `model` on pairs `x` [P, F] of users `user` [P]: the share of
/// each user's pairs with x . V w_u > 0, with `users`' weights (the model's own without).
/// Returns {"mean": float, "std": float, "per_user": float32 [N]}.
#[pyfunction]
#[pyo3(signature = (model, x, user, users=None))]
fn accuracy<'py>(
    py: Python<'py>,
    model: PyRef<'py, Model>,
    x: &Bound<'py, PyAny>,
    user: &Bound<'py, PyAny>,
    users: Option<PyRef<'py, Users>>,
) -> PyResult<Bound<'py, PyDict>> {
    let input = PairsInput::read(x, user)?;
    let data = input.preferences();
    let weights = users
        .as_deref()
        .map_or(model.user_weights(), Users::user_weights);
    let basis = model.basis();
    let evaluation = py
        .detach(|| evaluate(basis, weights, &data))
        .map_err(|e| to_py(e.into()))?;
    let per_user: Vec<f32> = evaluation.per_user.iter().map(|&a| a as f32).collect();
    let dict = PyDict::new(py);
    dict.set_item("mean", evaluation.mean)?;
    dict.set_item("std", evaluation.std)?;
    dict.set_item("per_user", vector_out(py, &per_user))?;
    Ok(dict)
}
