//! `lore.split`, `lore.sweep` and `lore.auto`: the experiment harness, returning what the CLI
//! writes to split.json / results.json as Python objects (the same library structs, serialized
//! by lore-experiment's `report` module, read back with Python's `json`).

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context};
use lore_core::{EarlyStopping, FitParams, Method, PersonalizeParams};
use lore_experiment::report::{self, SplitFileError};
use lore_experiment::{
    auto, sweep, sweep_bt, AutoParams, ExperimentSets, Phase, SplitParams, SweepParams,
};
use lore_io::{OutputFolder, SplitFolder};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;
use crate::progress::{run_detached_fallible, steps, thread_pool};

/// Adds this module's functions to `lore._lore`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_function(wrap_pyfunction!(split, m)?)?;
    m.add_function(wrap_pyfunction!(sweep_fn, m)?)?;
    m.add_function(wrap_pyfunction!(auto_fn, m)?)?;
    Ok(())
}

/// A JSON value as the Python object `json.loads` makes of it (dicts, lists, floats, ints,
/// strings, bools, None).
pub(crate) fn to_python(py: Python<'_>, value: &serde_json::Value) -> PyResult<Py<PyAny>> {
    let text = serde_json::to_string(value).map_err(|e| PyValueError::new_err(e.to_string()))?;
    Ok(py.import("json")?.call_method1("loads", (text,))?.unbind())
}

/// A method by name (`lore` or `regularized`); None: the library's default.
fn method(name: Option<&str>) -> PyResult<Method> {
    match name {
        None => Ok(Method::default()),
        Some(name) => name
            .parse()
            .map_err(|e: lore_core::LoreError| PyValueError::new_err(e.to_string())),
    }
}

/// A split folder's error as the CLI shows it.
fn split_error(e: SplitFileError) -> anyhow::Error {
    match e {
        SplitFileError::Io(e) => e.into(),
        SplitFileError::Input(message) => anyhow!(message),
    }
}

/// Splits a preference file into the four sets (seen/unseen users, training/test rows) in the
/// folder `out`, as `lore split` does; returns split.json's object. Options left None take the
/// library's defaults.
#[pyfunction]
#[pyo3(signature = (data, out, *, unseen_fraction=None, train_fraction=None, min_rows=None,
    max_train_rows=None, shots=None, by_prompt=false, seed=None, force=false))]
#[allow(clippy::too_many_arguments)]
fn split(
    py: Python<'_>,
    data: PathBuf,
    out: PathBuf,
    unseen_fraction: Option<f64>,
    train_fraction: Option<f64>,
    min_rows: Option<usize>,
    max_train_rows: Option<usize>,
    shots: Option<usize>,
    by_prompt: bool,
    seed: Option<u64>,
    force: bool,
) -> PyResult<Py<PyAny>> {
    let d = SplitParams::default();
    let params = SplitParams {
        unseen_fraction: unseen_fraction.unwrap_or(d.unseen_fraction),
        train_fraction: train_fraction.unwrap_or(d.train_fraction),
        min_rows: min_rows.unwrap_or(d.min_rows),
        max_train_rows: max_train_rows.or(d.max_train_rows),
        shots: shots.unwrap_or(d.shots),
        by_prompt,
        seed: seed.unwrap_or(d.seed),
    }
    .check()
    .map_err(|e| to_py(e.into()))?;
    let summary = run_detached_fallible(py, None, |_cancel| {
        let folder = OutputFolder::create(&out, "split", force, &[("--data", &data)])?;
        let written = report::split_file(&data, folder.path(), &params).map_err(split_error)?;
        folder.commit()?;
        Ok(written.summary)
    })?;
    to_python(py, &summary)
}

/// Accuracy against rank on a split folder, as `lore sweep` does: for each alpha, rank and
/// seed, fit on the seen users, personalize the unseen users and evaluate the four sets.
/// Returns results.json's object; with `out`, writes results.json and results.csv there.
/// `v_ref`: a file with the reference head, or `"bt"` (fit one shared Bradley-Terry reward
/// first); None: the split folder's v_ref.safetensors, if any. Options left None take the
/// library's defaults (the paper's sweep).
#[pyfunction(name = "sweep")]
#[pyo3(signature = (splits, *, ranks=None, alphas=None, seeds=None, v_ref=None, method=None,
    iterations=None, lr=None, logit_scale=None, prune_threshold=None,
    personalize_iterations=None, personalize_lr=None, out=None, force=false, threads=None,
    progress=false))]
#[allow(clippy::too_many_arguments)]
fn sweep_fn(
    py: Python<'_>,
    splits: PathBuf,
    ranks: Option<Vec<usize>>,
    alphas: Option<Vec<f64>>,
    seeds: Option<Vec<u64>>,
    v_ref: Option<PathBuf>,
    method: Option<&str>,
    iterations: Option<usize>,
    lr: Option<f64>,
    logit_scale: Option<f64>,
    prune_threshold: Option<f64>,
    personalize_iterations: Option<usize>,
    personalize_lr: Option<f64>,
    out: Option<PathBuf>,
    force: bool,
    threads: Option<usize>,
    progress: bool,
) -> PyResult<Py<PyAny>> {
    // The CLI's defaults: the paper's sweep with the default method, whatever the method.
    let d = SweepParams::reference(Method::default());
    let method = self::method(method)?;
    let c = logit_scale.unwrap_or(d.fit.logit_scale);
    let params = SweepParams {
        fit: FitParams::new(method, 1)
            .iterations(iterations.unwrap_or(d.fit.iterations))
            .learning_rate(lr.unwrap_or(d.fit.learning_rate))
            .logit_scale(c)
            .prune_threshold(prune_threshold.or(d.fit.prune_threshold)),
        personalize: PersonalizeParams::default()
            .iterations(personalize_iterations.unwrap_or(d.personalize.iterations))
            .learning_rate(personalize_lr.unwrap_or(d.personalize.learning_rate))
            .logit_scale(c),
        ranks: ranks.unwrap_or(d.ranks),
        alphas: alphas.unwrap_or(d.alphas),
        seeds: seeds.unwrap_or(d.seeds),
    }
    .check()
    .map_err(|e| to_py(e.into()))?;
    let bt = v_ref.as_deref() == Some(Path::new("bt"));
    let pool = thread_pool(threads)?;
    let value = run_detached_fallible(py, pool.as_ref(), |cancel| {
        let files = SplitFolder::open(&splits)?;
        let sets = ExperimentSets::from_folder(&files)?;
        let mut inputs: Vec<(&str, &Path)> = vec![("--splits", &splits)];
        if let Some(v_ref) = v_ref.as_deref().filter(|_| !bt) {
            inputs.push(("--v-ref", v_ref));
        }
        let folder = out
            .as_deref()
            .map(|out| OutputFolder::create(out, "sweep", force, &inputs))
            .transpose()?;
        let p = params.params();
        let bar = steps(
            progress,
            if bt {
                params.total_steps_bt()
            } else {
                params.total_steps()
            },
            "sweep",
        );
        let mut observer = |s: &lore_experiment::Progress| {
            bar.inc(1);
            cancel.check();
            if s.step.is_multiple_of(10) {
                bar.set_message(format!(
                    "alpha {} K {} seed {} loss {:.5}",
                    s.alpha, s.rank, s.seed, s.loss
                ));
            }
        };
        let results = if bt {
            if p.ranks.iter().all(|&k| k == 0) {
                bail!(
                    "--v-ref bt pulls toward a fitted Bradley-Terry direction, not a reference \
                     head, so K = 0 is skipped: ask for a rank K >= 1"
                );
            }
            sweep_bt(&sets, &params, &mut observer)
        } else {
            let v_ref = files.v_ref(v_ref.as_deref())?;
            let v_ref_values = v_ref.as_ref().map(|(v, _)| v.as_slice());
            params
                .check_inputs(&sets, v_ref_values)
                .with_context(|| format!("sweeping {}", splits.display()))?;
            sweep(&sets, v_ref_values, &params, &mut observer)
        }
        .with_context(|| format!("sweeping {}", splits.display()))?;
        bar.finish_and_clear();
        let value = report::sweep_json(&results, &p.seeds);
        if let Some(folder) = folder {
            write_json(folder.path(), &value)?;
            lore_io::write_bytes_atomic(
                folder.path().join(report::RESULTS_CSV),
                report::sweep_csv(&results).as_bytes(),
            )?;
            folder.commit()?;
        }
        Ok(value)
    })?;
    to_python(py, &value)
}

/// Writes results.json (pretty-printed, a final newline) into `dir`, as the CLI does.
fn write_json(dir: &Path, value: &serde_json::Value) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)? + "\n";
    lore_io::write_bytes_atomic(dir.join(report::RESULTS_JSON), text.as_bytes())?;
    Ok(())
}

/// Chooses rank, BT anchor, prior and iterations on the seen users alone, then fits,
/// personalizes and evaluates the choice, as `lore auto` does. Returns results.json's object
/// (the layout of `sweep`, plus `chosen`, `candidates` and `holdout`); with `out`, writes
/// results.json, results.csv, candidates.csv, model.safetensors, unseen_users.safetensors and
/// v_ref_bt.safetensors there. Options left None take the library's defaults.
#[pyfunction(name = "auto")]
#[pyo3(signature = (splits, *, method=None, ranks=None, alpha_scales=None,
    prior_strengths=None, iterations=None, lr=None, personalize_iterations=None,
    personalize_lr=None, logit_scale=None, folds=None, holdout_rows=None,
    eval_every=None, patience=None, selection=None, significance=None, seed=None, out=None, force=false, threads=None,
    progress=false))]
#[allow(clippy::too_many_arguments)]
fn auto_fn(
    py: Python<'_>,
    splits: PathBuf,
    method: Option<&str>,
    ranks: Option<Vec<usize>>,
    alpha_scales: Option<Vec<f64>>,
    prior_strengths: Option<Vec<f64>>,
    iterations: Option<usize>,
    lr: Option<f64>,
    personalize_iterations: Option<usize>,
    personalize_lr: Option<f64>,
    logit_scale: Option<f64>,
    folds: Option<usize>,
    holdout_rows: Option<f64>,
    eval_every: Option<usize>,
    patience: Option<usize>,
    selection: Option<&str>,
    significance: Option<f64>,
    seed: Option<u64>,
    out: Option<PathBuf>,
    force: bool,
    threads: Option<usize>,
    progress: bool,
) -> PyResult<Py<PyAny>> {
    // The CLI's defaults: those of the default method, whatever the method.
    let d = AutoParams::new(Method::default());
    let mut p = AutoParams::new(self::method(method)?);
    let c = logit_scale.unwrap_or(d.fit.logit_scale);
    p.fit = p
        .fit
        .iterations(iterations.unwrap_or(d.fit.iterations))
        .learning_rate(lr.unwrap_or(d.fit.learning_rate))
        .logit_scale(c);
    p.personalize = p
        .personalize
        .iterations(personalize_iterations.unwrap_or(d.personalize.iterations))
        .learning_rate(personalize_lr.unwrap_or(d.personalize.learning_rate))
        .logit_scale(c);
    p.ranks = ranks.unwrap_or(d.ranks);
    p.alpha_scales = alpha_scales.unwrap_or(d.alpha_scales);
    p.prior_strengths = prior_strengths.unwrap_or(d.prior_strengths);
    p.folds = folds.unwrap_or(d.folds);
    if let Some(rule) = selection {
        p.selection = rule
            .parse()
            .map_err(|e: lore_core::LoreError| to_py(e.into()))?;
    }
    p.significance = significance.unwrap_or(d.significance);
    p.holdout_rows = holdout_rows.unwrap_or(d.holdout_rows);
    p.stopping = EarlyStopping {
        eval_every: eval_every.unwrap_or(d.stopping.eval_every),
        patience: patience.unwrap_or(d.stopping.patience),
        ..p.stopping
    };
    p.seed = seed.unwrap_or(d.seed);
    let params = p.check().map_err(|e| to_py(e.into()))?;
    let pool = thread_pool(threads)?;
    let value = run_detached_fallible(py, pool.as_ref(), |cancel| {
        let files = SplitFolder::open(&splits)?;
        let sets = ExperimentSets::from_folder(&files)?;
        let folder = out
            .as_deref()
            .map(|out| OutputFolder::create(out, "auto", force, &[("--splits", &splits)]))
            .transpose()?;
        let bar = steps(progress, params.n_stages(), "fits");
        let results = auto(&sets, &params, |s| {
            cancel.check();
            bar.set_position(s.stage as u64);
            if s.step.is_multiple_of(10) {
                let phase = match s.phase {
                    Phase::Fit => "fit",
                    Phase::Personalize => "few-shot",
                };
                bar.set_message(format!(
                    "{} {phase} step {} loss {:.4}",
                    s.label, s.step, s.loss
                ));
            }
        })
        .with_context(|| format!("searching on {}", splits.display()))?;
        bar.finish_and_clear();
        let value = report::auto_json(&results, params.params().seed);
        if let Some(folder) = folder {
            let dir = folder.path();
            write_json(dir, &value)?;
            lore_io::write_bytes_atomic(
                dir.join(report::RESULTS_CSV),
                report::sweep_csv(&results.as_sweep()).as_bytes(),
            )?;
            lore_io::write_bytes_atomic(
                dir.join(report::CANDIDATES_CSV),
                report::candidates_csv(&results).as_bytes(),
            )?;
            report::write_auto_models(dir, &results, &params, &files)?;
            folder.commit()?;
        }
        Ok(value)
    })?;
    to_python(py, &value)
}
