//! The experiments' result files, shared by the `lore` command and the Python package: a split
//! folder from one preference file ([`split_file`], with split.json's object), results.json's
//! object and results.csv of a sweep ([`sweep_json`], [`sweep_csv`]) and of a search
//! ([`auto_json`], [`candidates_csv`]), and the search's model files ([`write_auto_models`]).

use std::fmt;
use std::path::Path;

use lore_io::{
    read_v_ref, EmbedderIdentity, FileRows, IoError, PreferenceFile, SplitFolder, TensorFile,
    TensorWriter,
};
use serde_json::{json, Value};

use crate::auto::{AutoResults, Candidate, CheckedAutoParams};
use crate::split::{split, CheckedSplitParams, SplitInput};
use crate::sweep::{Summary, SweepResults};

/// File name of a run's results object.
pub const RESULTS_JSON: &str = "results.json";
/// File name of a run's results table.
pub const RESULTS_CSV: &str = "results.csv";
/// File name of the search's candidates table.
pub const CANDIDATES_CSV: &str = "candidates.csv";

/// The four sets' keys, in table order.
pub const SET_KEYS: [&str; 4] = ["seen_train", "seen_test", "unseen_train", "unseen_test"];

/// A summary as `{mean, std, <runs>_std, per_<runs>}` (`runs`: `seed` or `trial`).
pub fn summary_json(s: &Summary, runs: &str) -> Value {
    json!({
        "mean": s.mean,
        "std": s.std,
        format!("{runs}_std"): s.run_std,
        format!("per_{runs}"): s.runs,
    })
}

/// results.json of a sweep: `{"rows": [{alpha, rank, kept_ranks, seen_train: {mean, std,
/// seed_std, per_seed}, ...}], "seeds": [...], "reference_skipped": bool}`.
pub fn sweep_json(results: &SweepResults, seeds: &[u64]) -> Value {
    let rows: Vec<Value> = results
        .rows
        .iter()
        .map(|r| {
            let mut row = json!({
                "alpha": r.alpha,
                "rank": r.rank,
                "kept_ranks": r.kept_ranks,
            });
            for (key, s) in
                SET_KEYS
                    .iter()
                    .zip([&r.seen_train, &r.seen_test, &r.unseen_train, &r.unseen_test])
            {
                row[*key] = summary_json(s, "seed");
            }
            row
        })
        .collect();
    json!({
        "rows": rows,
        "seeds": seeds,
        "reference_skipped": results.reference_skipped,
    })
}

/// results.csv of a sweep: one line per (alpha, rank).
pub fn sweep_csv(results: &SweepResults) -> String {
    let mut out = String::from("alpha,rank,kept_ranks");
    for key in SET_KEYS {
        out.push_str(&format!(",{key}_mean,{key}_std,{key}_seed_std"));
    }
    out.push('\n');
    for r in &results.rows {
        let kept: Vec<String> = r.kept_ranks.iter().map(|k| k.to_string()).collect();
        out.push_str(&format!("{},{},{}", r.alpha, r.rank, kept.join(" ")));
        for s in [&r.seen_train, &r.seen_test, &r.unseen_train, &r.unseen_test] {
            out.push_str(&format!(",{},{},{}", s.mean, s.std, s.run_std));
        }
        out.push('\n');
    }
    out
}

/// results.json of a search: the final run in the layout of [`sweep_json`] (one seed, `seed`),
/// plus `chosen`, `candidates` (each with its paired advantage over BT and corrected
/// interval), `selection` (the rule and why the winner won) and `holdout` (the folds' sizes).
pub fn auto_json(results: &AutoResults, seed: u64) -> Value {
    let mut value = sweep_json(&results.as_sweep(), &[seed]);
    let c = &results.choice;
    value["chosen"] = json!({
        "rank": c.rank,
        "kept_rank": results.run.basis.rank(),
        "alpha_scale": c.alpha_scale,
        "alpha": c.alpha,
        "prior_strength": c.prior_strength,
        "fit_iterations": c.fit_iterations,
        "personalize_iterations": c.personalize_iterations,
        "bt_iterations": c.bt_iterations,
        "candidate": c.candidate,
    });
    value["candidates"] = results
        .candidates
        .iter()
        .map(|c| {
            json!({
                "rank": c.rank,
                "alpha_scale": c.alpha_scale,
                "alpha": c.alpha,
                "prior_strength": c.prior_strength,
                "fit_steps": c.fit_steps,
                "kept_rank": c.kept_rank,
                "personalize_steps": c.personalize_steps,
                "validation_loss": c.validation_loss,
                "validation_accuracy": c.validation_accuracy,
                "fewshot_loss": c.fewshot_loss,
                "fewshot_accuracy": c.fewshot_accuracy,
                "advantage_over_bt": c.advantage,
                "standard_error": c.standard_error,
                "corrected_interval": [c.interval.0, c.interval.1],
                "significant": c.significant,
            })
        })
        .collect();
    let s = &results.selection;
    value["selection"] = json!({
        "rule": s.rule.name(),
        "comparisons": s.comparisons,
        "significance": s.significance,
        "z": s.z,
        "reason": s.reason,
    });
    let h = &results.holdout;
    value["holdout"] = json!({
        "folds": h.folds,
        "stand_in_users": h.stand_in_users,
        "stand_in_fewshot_rows": h.stand_in_fewshot_rows,
        "stand_in_test_rows": h.stand_in_test_rows,
        "fit_rows": h.fit_rows,
        "validation_rows": h.validation_rows,
    });
    value
}

/// The candidates table's column names (terminal table and candidates.csv).
pub const CANDIDATE_HEADER: [&str; 11] = [
    "K",
    "pull",
    "prior",
    "fit steps",
    "few-shot steps",
    "val loss",
    "val acc",
    "stand-in acc",
    "vs BT",
    "corrected interval",
    "significant",
];

/// One candidate's cells under [`CANDIDATE_HEADER`]: the advantage over BT and its interval
/// in accuracy points.
pub fn candidate_cells(c: &Candidate) -> [String; 11] {
    let points = |v: f64| format!("{:+.1}", 100.0 * v);
    // BT is what the others are compared with.
    let [advantage, interval, significant] = if c.rank == 1 {
        ["-".to_string(), "-".into(), "-".into()]
    } else {
        [
            points(c.advantage),
            format!("{} to {}", points(c.interval.0), points(c.interval.1)),
            if c.significant { "yes" } else { "no" }.into(),
        ]
    };
    [
        if c.kept_rank == c.rank {
            c.rank.to_string()
        } else {
            format!("{} ({} kept)", c.rank, c.kept_rank)
        },
        format!("{}", c.alpha_scale),
        format!("{}", c.prior_strength),
        c.fit_steps.to_string(),
        c.personalize_steps.to_string(),
        format!("{:.4}", c.validation_loss),
        format!("{:.3}", c.validation_accuracy),
        format!("{:.3}", c.fewshot_accuracy),
        advantage,
        interval,
        significant,
    ]
}

/// candidates.csv of a search: one line per candidate.
pub fn candidates_csv(results: &AutoResults) -> String {
    let mut out = CANDIDATE_HEADER
        .iter()
        .map(|h| h.replace(' ', "_"))
        .collect::<Vec<_>>()
        .join(",")
        + "\n";
    for c in &results.candidates {
        out += &candidate_cells(c)
            .map(|cell| cell.replace(',', ";"))
            .join(",");
        out.push('\n');
    }
    out
}

/// Writes the search's model files into `dir`: model.safetensors (the final basis with the seen
/// users), unseen_users.safetensors and v_ref_bt.safetensors (the BT direction). The users are
/// named (`user_ids`) as in the split's training sets, and the model and users files record the
/// sets' embedder (metadata `embedder`) like `lore fit` and `lore personalize`.
pub fn write_auto_models(
    dir: &Path,
    results: &AutoResults,
    params: &CheckedAutoParams,
    files: &SplitFolder,
) -> lore_io::Result<()> {
    let p = params.params();
    let run = &results.run;
    let (f, k) = (run.basis.n_features(), run.basis.rank());
    let c = &results.choice;
    let mut model = TensorWriter::new();
    model
        .add_parameter_f32("V", &[f, k], run.basis.values())
        .add_parameter_f32(
            "W",
            &[run.seen_users.n_users(), k],
            run.seen_users.weights(),
        )
        .add_parameter_f32(
            "W_logits",
            &[run.seen_users.n_users(), k],
            run.seen_users.logits(),
        )
        .add_parameter_f32("prior_logits", &[k], &run.seen_users.prior_logits())
        .metadata("kind", "model")
        .metadata("method", p.fit.method.name())
        .metadata("rank", &c.rank)
        .metadata("kept_rank", &k)
        .metadata("alpha", &c.alpha)
        .metadata("iterations", &c.fit_iterations)
        .metadata("learning_rate", &p.fit.learning_rate)
        .metadata("logit_scale", &run.basis.logit_scale())
        .metadata("seed", &p.seed)
        .metadata("n_users", &run.seen_users.n_users())
        .metadata("n_features", &f)
        .metadata("chosen_by", "lore auto");
    if c.alpha > 0.0 {
        model.add_parameter_f32("v_ref", &[f], &results.bt_direction);
    }
    if let Some(ids) = named(files.seen_train().user_ids(), run.seen_users.n_users()) {
        model.metadata("user_ids", ids);
    }
    if let Some(embedder) = files.embedder() {
        embedder.write_to(&mut model);
    }
    model.write_atomic(dir.join("model.safetensors"))?;
    let unseen = &run.unseen_users;
    let mut users = TensorWriter::new();
    users
        .add_parameter_f32("W", &[unseen.n_users(), k], unseen.weights())
        .add_parameter_f32("W_logits", &[unseen.n_users(), k], unseen.logits())
        .metadata("kind", "users")
        .metadata("method", "personalize")
        .metadata("rank", &k)
        .metadata("iterations", &c.personalize_iterations)
        .metadata("prior_strength", &c.prior_strength)
        .metadata("learning_rate", &p.personalize.learning_rate)
        .metadata("logit_scale", &run.basis.logit_scale())
        .metadata("n_users", &unseen.n_users());
    if let Some(ids) = named(files.unseen_train().user_ids(), unseen.n_users()) {
        users.metadata("user_ids", ids);
    }
    if let Some(embedder) = files.embedder() {
        embedder.write_to(&mut users);
    }
    users.write_atomic(dir.join("unseen_users.safetensors"))?;
    let mut bt = TensorWriter::new();
    bt.add_parameter_f32("v_ref", &[f], &results.bt_direction)
        .metadata("kind", "v_ref")
        .metadata("iterations", &c.bt_iterations);
    bt.write_atomic(dir.join("v_ref_bt.safetensors"))?;
    Ok(())
}

/// `ids` when they name exactly `n` users.
fn named(ids: Option<&[String]>, n: usize) -> Option<&[String]> {
    ids.filter(|ids| ids.len() == n)
}

/// Why [`split_file`] failed: a file error (lore-io's, naming the file), or the input or the
/// options refused (one line naming the file).
#[derive(Debug)]
pub enum SplitFileError {
    /// Reading the preference file or writing a set failed.
    Io(IoError),
    /// The input cannot be split as asked.
    Input(String),
}

impl fmt::Display for SplitFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Io(e) => e.fmt(f),
            Self::Input(message) => f.write_str(message),
        }
    }
}

impl std::error::Error for SplitFileError {}

impl From<IoError> for SplitFileError {
    fn from(e: IoError) -> Self {
        Self::Io(e)
    }
}

/// What [`split_file`] wrote.
#[derive(Debug, Clone)]
pub struct SplitFileReport {
    /// split.json's object: `source`, `options` (the split's options by their long flag names),
    /// `counts` and, when the input records one, `embedder`.
    pub summary: Value,
    /// One line describing the sets.
    pub description: String,
    /// Per-row tensors of the input not carried into the sets (unsupported dtype).
    pub skipped: Vec<String>,
    /// Whether the input's `v_ref` was written as v_ref.safetensors.
    pub wrote_v_ref: bool,
}

/// The split's options as split.json records them: keyed by their long flag names.
pub fn split_options_json(params: &CheckedSplitParams) -> Value {
    let p = params.params();
    let mut options = json!({
        "unseen-fraction": p.unseen_fraction,
        "train-fraction": p.train_fraction,
        "min-rows": p.min_rows,
        "shots": p.shots,
        "by-prompt": p.by_prompt,
        "seed": p.seed,
    });
    if let Some(max) = p.max_train_rows {
        options["max-train-rows"] = json!(max);
    }
    options
}

/// Splits the preference file `data` into the four sets and writes them into `dir` (an output
/// folder's staging folder), with v_ref.safetensors when the input has a `v_ref` and
/// split.json; returns what it wrote. Users are sorted by id before any shuffling: the same
/// input, options and seed give byte-identical files.
pub fn split_file(
    data: &Path,
    dir: &Path,
    params: &CheckedSplitParams,
) -> Result<SplitFileReport, SplitFileError> {
    let prefs = PreferenceFile::load(data)?;
    let file = prefs.file();
    let users: Vec<u32> = file
        .tensor_indices("user")?
        .1
        .into_iter()
        .map(|u| u as u32)
        .collect();
    let prompts = prompt_ids(file, users.len())?;
    if params.params().by_prompt && prompts.is_none() {
        return Err(SplitFileError::Input(format!(
            "{}: --by-prompt needs prompt ids (tensor `prompt_id` [P], or metadata `prompt_ids`)",
            data.display()
        )));
    }
    let input = SplitInput {
        users: &users,
        user_ids: prefs.user_ids(),
        prompts: prompts.as_deref(),
    };
    let result = split(&input, params)
        .map_err(|e| SplitFileError::Input(format!("{}: {e}", data.display())))?;
    let rows = FileRows::new(file, users.len())?;
    result.write_sets(dir, &rows, prefs.user_ids())?;
    let wrote_v_ref = file.has("v_ref");
    if wrote_v_ref {
        let v_ref = read_v_ref(data)?;
        SplitFolder::write_v_ref_with(
            dir,
            &v_ref,
            &format!("`v_ref` of {}", data.display()),
            rows.embedder(),
        )?;
    }
    let mut summary = json!({
        "source": data.display().to_string(),
        "options": split_options_json(params),
    });
    summary["counts"] = result.counts();
    if let Some(embedder) = rows.embedder() {
        summary[EmbedderIdentity::METADATA_KEY] = embedder_json(embedder, data)?;
    }
    SplitFolder::write_split_json(dir, &summary)?;
    Ok(SplitFileReport {
        summary,
        description: result.describe(),
        skipped: rows.skipped().to_vec(),
        wrote_v_ref,
    })
}

/// An embedder identity as JSON.
fn embedder_json(embedder: &EmbedderIdentity, data: &Path) -> Result<Value, SplitFileError> {
    serde_json::to_value(embedder).map_err(|e| {
        SplitFileError::Input(format!(
            "{}: metadata `embedder` cannot be encoded: {e}",
            data.display()
        ))
    })
}

/// Each row's prompt as a dense index (prompts sorted by id), from tensor `prompt_id` or
/// metadata `prompt_ids`; `None` when the file has neither.
pub fn prompt_ids(file: &TensorFile, n_rows: usize) -> Result<Option<Vec<u32>>, SplitFileError> {
    let keys: Vec<String> = if file.has("prompt_id") {
        let (shape, ids) = file.tensor_indices("prompt_id")?;
        if shape != [n_rows] {
            return Err(SplitFileError::Input(format!(
                "{}: tensor `prompt_id` has shape {shape:?}, expected [{n_rows}] (one per row)",
                file.path().display()
            )));
        }
        ids.iter().map(|i| i.to_string()).collect()
    } else {
        match file.metadata_json::<Value>("prompt_ids")? {
            None => return Ok(None),
            Some(Value::Array(ids)) if ids.len() == n_rows => ids
                .iter()
                .map(|v| match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                })
                .collect(),
            Some(_) => {
                let path = file.path().display();
                return Err(SplitFileError::Input(format!(
                    "{path}: metadata `prompt_ids` must be a JSON array of one id per row \
                     ({n_rows} rows)"
                )));
            }
        }
    };
    let mut distinct: Vec<&str> = keys.iter().map(String::as_str).collect();
    distinct.sort_unstable();
    distinct.dedup();
    Ok(Some(
        keys.iter()
            .map(|k| distinct.binary_search(&k.as_str()).expect("a distinct key") as u32)
            .collect(),
    ))
}
