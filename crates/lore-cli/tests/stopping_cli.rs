//! Early stopping, the MAP prior and `--v-ref bt` through the `lore` binary: `lore fit` and
//! `lore personalize` with --validation-fraction, --prior-strength, `lore fit --v-ref bt`,
//! `lore sweep --v-ref bt`, and their bad values.

use std::path::{Path, PathBuf};

mod common;
use common::{fails, lore_stderr as lore, path};

use lore_io::{TensorFile, TensorWriter};
use serde_json::Value;
use tempfile::TempDir;

/// A small simulated population (F = 16, 40 seen users with 25 training pairs each, 20
/// unseen users with 5 few-shot pairs each) in `dir/pop`.
fn simulate(dir: &Path) -> PathBuf {
    let out = dir.join("pop");
    lore(&[
        "simulate",
        "--quiet",
        "--seen-users",
        "40",
        "--unseen-users",
        "20",
        "--features",
        "16",
        "--prompts",
        "200",
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

fn meta(file: &TensorFile, key: &str) -> Value {
    file.metadata_json::<Value>(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{}: no metadata `{key}`", file.path().display()))
}

fn tensor(file: &TensorFile, name: &str) -> (Vec<usize>, Vec<f32>) {
    file.tensor_f32(name).unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

fn softmax(logits: &[f32]) -> Vec<f64> {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let e: Vec<f64> = logits.iter().map(|&l| (l as f64 - max).exp()).collect();
    let total: f64 = e.iter().sum();
    e.iter().map(|x| x / total).collect()
}

#[test]
fn fit_stops_early_on_held_out_pairs_and_stores_the_prior() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let data = path(&pop, "seen_train.safetensors");
    let model = path(dir.path(), "model.safetensors");
    let notes = lore(&[
        "fit",
        "--data",
        &data,
        "--rank",
        "3",
        "--validation-fraction",
        "0.2",
        "--patience",
        "2",
        "--eval-every",
        "5",
        "--iterations",
        "2000",
        "--lr",
        "0.5",
        "--out",
        &model,
    ]);
    let file = TensorFile::open(&model).unwrap();
    let steps = meta(&file, "steps_run").as_u64().unwrap();
    assert!(steps < 2000, "ran {steps} of 2000 steps:\n{notes}");
    assert!(
        notes.contains(&format!(
            "stopped at step {steps} of 2000 (best validation loss"
        )),
        "{notes}"
    );
    let stopping = meta(&file, "early_stopping");
    let best = stopping["best_steps"].as_u64().unwrap();
    // Patience 2, scored every 5 steps: the best is 10 steps before the stop.
    assert_eq!(best + 10, steps, "{stopping}");
    assert_eq!(stopping["stopped_early"], Value::Bool(true));
    assert_eq!(stopping["validation_fraction"].as_f64(), Some(0.2));
    assert_eq!(stopping["patience"].as_u64(), Some(2));
    assert_eq!(stopping["eval_every"].as_u64(), Some(5));
    // round(0.2 * 25) = 5 of each seen user's 25 pairs.
    assert_eq!(stopping["validation_pairs"].as_u64(), Some(200));
    assert_eq!(stopping["validation_users"].as_u64(), Some(40));
    let loss = stopping["validation_loss"].as_f64().unwrap();
    assert!(loss.is_finite() && loss > 0.0, "{stopping}");

    // prior_logits [K]: the log of the users' mean weights, centered.
    let (shape, prior) = tensor(&file, "prior_logits");
    assert_eq!(shape, [3]);
    let (_, weights) = tensor(&file, "W");
    let mut mean = [0.0f64; 3];
    for row in weights.chunks_exact(3) {
        for (m, &w) in mean.iter_mut().zip(row) {
            *m += w as f64 / 40.0;
        }
    }
    for (p, m) in softmax(&prior).iter().zip(&mean) {
        assert!(
            (p - m).abs() < 1e-5,
            "softmax(prior_logits) {p} vs mean weight {m}"
        );
    }
    assert!(prior.iter().sum::<f32>().abs() < 1e-4, "{prior:?}");

    // The same run without a validation fraction runs every step and records no stopping.
    let plain = path(dir.path(), "plain.safetensors");
    lore(&[
        "fit",
        "--quiet",
        "--data",
        &data,
        "--rank",
        "3",
        "--iterations",
        "50",
        "--lr",
        "0.5",
        "--out",
        &plain,
    ]);
    let plain = TensorFile::open(&plain).unwrap();
    assert_eq!(meta(&plain, "steps_run").as_u64(), Some(50));
    assert!(plain
        .metadata_json::<Value>("early_stopping")
        .unwrap()
        .is_none());
    assert!(plain.has("prior_logits"));
}

#[test]
fn v_ref_bt_is_the_direction_of_a_rank_one_fit() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let data = path(&pop, "seen_train.safetensors");
    for stopping in [
        &[][..],
        &["--validation-fraction", "0.2", "--patience", "3"][..],
    ] {
        let common = [
            "--data",
            &data,
            "--iterations",
            "300",
            "--lr",
            "0.5",
            "--seed",
            "3",
        ];
        let pulled = path(dir.path(), "pulled.safetensors");
        let mut args = vec!["fit", "--rank", "3", "--alpha", "1", "--v-ref", "bt"];
        args.extend(common);
        args.extend(stopping);
        args.extend(["--out", &pulled]);
        let notes = lore(&args);
        assert!(notes.contains("--v-ref bt"), "{notes}");

        let bt = path(dir.path(), "bt.safetensors");
        let mut args = vec!["fit", "--quiet", "--rank", "1"];
        args.extend(common);
        args.extend(stopping);
        args.extend(["--out", &bt]);
        lore(&args);

        let pulled = TensorFile::open(&pulled).unwrap();
        let (shape, v_ref) = tensor(&pulled, "v_ref");
        assert_eq!(shape, [16]);
        assert_eq!(meta(&pulled, "v_ref_from"), Value::String("bt".into()));
        let (_, direction) = tensor(&TensorFile::open(&bt).unwrap(), "V");
        let cos = cosine(&v_ref, &direction);
        assert!(cos > 0.999, "{stopping:?}: cosine {cos}");
        // Same settings, same seed: the very same values.
        assert_eq!(v_ref, direction, "{stopping:?}");
    }
}

#[test]
fn a_strong_prior_keeps_new_users_at_the_population_mix() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let model = path(dir.path(), "model.safetensors");
    lore(&[
        "fit",
        "--quiet",
        "--data",
        &path(&pop, "seen_train.safetensors"),
        "--rank",
        "3",
        "--iterations",
        "300",
        "--lr",
        "0.5",
        "--out",
        &model,
    ]);
    let (_, prior) = tensor(&TensorFile::open(&model).unwrap(), "prior_logits");
    let mix = softmax(&prior);
    let unseen = path(&pop, "unseen_train.safetensors");
    // Largest distance of any user's weights from the population's mix, and the file.
    let personalize = |strength: &str, extra: &[&str]| {
        let out = path(dir.path(), &format!("users_{strength}.safetensors"));
        let mut args = vec![
            "personalize",
            "--model",
            &model,
            "--data",
            &unseen,
            "--prior-strength",
            strength,
            "--out",
            &out,
        ];
        args.extend(extra);
        let notes = lore(&args);
        let file = TensorFile::open(&out).unwrap();
        let (shape, weights) = tensor(&file, "W");
        assert_eq!(shape, [20, 3]);
        let worst = weights
            .chunks_exact(3)
            .flat_map(|row| row.iter().zip(&mix).map(|(&w, m)| (w as f64 - m).abs()))
            .fold(0.0f64, f64::max);
        (worst, file, notes)
    };
    let (worst, file, notes) = personalize("1000", &[]);
    assert!(worst < 1e-2, "prior 1000: a user is {worst} from the mix");
    assert_eq!(meta(&file, "prior_strength").as_f64(), Some(1000.0));
    assert!(notes.contains("prior: strength 1000"), "{notes}");
    let (worst, file, _) = personalize("0", &[]);
    assert!(
        worst > 1e-2,
        "prior 0: every user within {worst} of the mix"
    );
    assert!(file
        .metadata_json::<Value>("prior_strength")
        .unwrap()
        .is_none());

    // With early stopping on the new users' held-out pairs.
    let (_, file, notes) = personalize(
        "0.1",
        &[
            "--validation-fraction",
            "0.4",
            "--eval-every",
            "5",
            "--iterations",
            "2000",
        ],
    );
    let stopping = meta(&file, "early_stopping");
    // round(0.4 * 5) = 2 of each unseen user's 5 pairs.
    assert_eq!(
        stopping["validation_pairs"].as_u64(),
        Some(40),
        "{stopping}"
    );
    assert_eq!(stopping["eval_every"].as_u64(), Some(5));
    assert_eq!(stopping["patience"].as_u64(), Some(5));
    assert!(notes.contains("(best validation loss"), "{notes}");

    // A model without prior_logits cannot give a prior.
    let bare = path(dir.path(), "bare.safetensors");
    let (shape, v) = tensor(&TensorFile::open(&model).unwrap(), "V");
    TensorWriter::new()
        .add_f32("V", &shape, &v)
        .write_atomic(&bare)
        .unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = path(&out_dir, "users.safetensors");
    let err = fails(
        &out_dir,
        &[
            "personalize",
            "--model",
            &bare,
            "--data",
            &unseen,
            "--prior-strength",
            "1",
            "--out",
            &out,
        ],
    );
    assert!(
        err.contains("the model has no prior_logits (fit it with this version of lore fit)"),
        "{err}"
    );
    // Without a prior the same model is fine.
    lore(&[
        "personalize",
        "--quiet",
        "--model",
        &bare,
        "--data",
        &unseen,
        "--out",
        &out,
    ]);
}

#[test]
fn sweep_with_v_ref_bt_skips_the_reference_head() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let out = dir.path().join("sweep");
    let notes = lore(&[
        "sweep",
        "--splits",
        pop.to_str().unwrap(),
        "--ranks",
        "0,1,2",
        "--alphas",
        "0,1",
        "--v-ref",
        "bt",
        "--iterations",
        "100",
        "--personalize-iterations",
        "50",
        "--json",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(notes.contains("K = 0 (ref) skipped"), "{notes}");
    let results: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(results["reference_skipped"], Value::Bool(true));
    let rows = results["rows"].as_array().unwrap();
    let keys: Vec<(f64, u64)> = rows
        .iter()
        .map(|r| (r["alpha"].as_f64().unwrap(), r["rank"].as_u64().unwrap()))
        .collect();
    assert_eq!(keys, [(0.0, 1), (0.0, 2), (1.0, 1), (1.0, 2)], "{results}");

    // Only K = 0 asked for: nothing to run.
    let out_dir = dir.path().join("empty");
    std::fs::create_dir(&out_dir).unwrap();
    let err = fails(
        &out_dir,
        &[
            "sweep",
            "--splits",
            pop.to_str().unwrap(),
            "--ranks",
            "0",
            "--v-ref",
            "bt",
            "--out",
            &path(&out_dir, "sweep"),
        ],
    );
    assert!(err.contains("K >= 1"), "{err}");
}

#[test]
fn bad_stopping_and_prior_values_fail_in_one_line() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let data = path(&pop, "seen_train.safetensors");
    let unseen = path(&pop, "unseen_train.safetensors");
    let model = path(dir.path(), "model.safetensors");
    lore(&[
        "fit",
        "--quiet",
        "--data",
        &data,
        "--rank",
        "2",
        "--iterations",
        "20",
        "--out",
        &model,
    ]);
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = path(&out_dir, "out.safetensors");
    let fit = |extra: &[&str]| {
        let mut args = vec!["fit", "--data", &data, "--rank", "2", "--iterations", "20"];
        args.extend(extra);
        args.extend(["--out", &out]);
        fails(&out_dir, &args)
    };
    let personalize = |extra: &[&str]| {
        let mut args = vec!["personalize", "--model", &model, "--data", &unseen];
        args.extend(extra);
        args.extend(["--out", &out]);
        fails(&out_dir, &args)
    };
    for command in [&fit as &dyn Fn(&[&str]) -> String, &personalize] {
        for fraction in ["1.5", "0", "1", "-0.2", "NaN"] {
            let err = command(&["--validation-fraction", fraction]);
            assert!(err.contains("--validation-fraction"), "{err}");
        }
        let err = command(&["--validation-fraction", "0.2", "--patience", "0"]);
        assert!(err.contains("patience"), "{err}");
        let err = command(&["--validation-fraction", "0.2", "--eval-every", "0"]);
        assert!(err.contains("eval-every"), "{err}");
        let err = command(&["--patience", "3"]);
        assert!(err.contains("--validation-fraction"), "{err}");
    }
    for strength in ["-1", "inf"] {
        let err = personalize(&["--prior-strength", strength]);
        assert!(err.contains("prior strength"), "{err}");
    }
    // A file named by --v-ref must still exist; `bt` is the only keyword.
    let err = fit(&["--alpha", "1", "--v-ref", "BT"]);
    assert!(err.contains("BT"), "{err}");
}
