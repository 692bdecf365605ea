//! Non-finite results are never written and numbers read from files are checked as strictly as
//! flags: a run that diverges (a huge learning rate or prior strength, features near f32's
//! limit) stops with one line naming the step and what to change, leaves no output and an
//! existing output untouched; users and model files with NaN, negative or all-zero weights or
//! a non-positive logit scale are refused; a learning rate too small to train is refused.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

mod common;
use common::{lore_stderr as lore, one_line_error, path};

use lore_io::TensorWriter;
use tempfile::TempDir;

/// Features of the simulated population.
const F: usize = 8;

/// A small simulated population (F = 8, 12 seen and 6 unseen users) in `dir/pop`.
fn simulate(dir: &Path) -> PathBuf {
    let out = dir.join("pop");
    lore(&[
        "simulate",
        "--quiet",
        "--seen-users",
        "12",
        "--unseen-users",
        "6",
        "--features",
        &F.to_string(),
        "--prompts",
        "60",
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

/// A population and a model fitted on its seen users (K = 2).
fn population_and_model(dir: &Path) -> (PathBuf, String) {
    let pop = simulate(dir);
    let model = path(dir, "model.safetensors");
    lore(&[
        "fit",
        "--quiet",
        "--data",
        &path(&pop, "seen_train.safetensors"),
        "--rank",
        "2",
        "--iterations",
        "30",
        "--lr",
        "0.1",
        "--out",
        &model,
    ]);
    (pop, model)
}

/// The names in `dir`, sorted.
fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// `lore COMMAND --quiet ARGS...`: only an error is printed.
fn quiet<'a>(args: &[&'a str]) -> Vec<&'a str> {
    let mut quiet = vec![args[0], "--quiet"];
    quiet.extend(&args[1..]);
    quiet
}

/// Runs a command that must be refused: one `error:` line, non-zero exit, `out` as before
/// (absent, or the same bytes) and nothing new in its folder. Returns the line.
fn refused(args: &[&str], out: &str) -> String {
    let out = Path::new(out);
    let folder = out.parent().unwrap();
    let (before, names) = (std::fs::read(out).ok(), listing(folder));
    let started = Instant::now();
    let err = one_line_error(&quiet(args));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "lore {args:?} took {:?} to refuse",
        started.elapsed()
    );
    assert_eq!(std::fs::read(out).ok(), before, "{} changed", out.display());
    assert_eq!(listing(folder), names, "lore {args:?} left a file behind");
    err
}

/// As [`refused`] twice: with `out` absent, then over an existing `out` that must survive.
fn refused_absent_and_existing(args: &[&str], out: &str) -> String {
    let err = refused(args, out);
    std::fs::write(out, b"an earlier result").unwrap();
    assert_eq!(refused(args, out), err);
    std::fs::remove_file(out).unwrap();
    err
}

/// A preference file of 4 users x 4 pairs in F = 8 whose features are `value` with
/// alternating signs.
fn huge_features(dir: &Path, value: f32) -> String {
    let rows = 16;
    let x: Vec<f32> = (0..rows * F)
        .map(|i| if i % 3 == 0 { -value } else { value })
        .collect();
    let users: Vec<i64> = (0..rows as i64).map(|i| i / 4).collect();
    let p = path(dir, "huge.safetensors");
    TensorWriter::new()
        .add_f32("x", &[rows, F], &x)
        .add_i64("user", &[rows], &users)
        .write_atomic(&p)
        .unwrap();
    p
}

#[test]
fn personalize_with_a_huge_learning_rate_stops_at_the_divergence() {
    let dir = TempDir::new().unwrap();
    let (pop, model) = population_and_model(dir.path());
    let out = path(dir.path(), "users.safetensors");
    let unseen = path(&pop, "unseen_train.safetensors");
    let args = [
        "personalize",
        "--model",
        &model,
        "--data",
        &unseen,
        "--lr",
        "1e300",
        "--out",
        &out,
    ];
    let err = refused_absent_and_existing(&args, &out);
    assert!(err.contains("training diverged at step 1 of 500"), "{err}");
    assert!(err.contains("logits became"), "{err}");
    assert!(err.contains("lower the learning rate (now 1e300)"), "{err}");
}

#[test]
fn personalize_with_a_huge_prior_strength_stops_at_the_divergence() {
    let dir = TempDir::new().unwrap();
    let (pop, model) = population_and_model(dir.path());
    let out = path(dir.path(), "users.safetensors");
    let unseen = path(&pop, "unseen_train.safetensors");
    let args = [
        "personalize",
        "--model",
        &model,
        "--data",
        &unseen,
        "--prior-strength",
        "1e308",
        "--out",
        &out,
    ];
    let err = refused_absent_and_existing(&args, &out);
    assert!(err.contains("training diverged at step 1 of 500"), "{err}");
    assert!(
        err.contains("lower the prior strength (now 1e308)"),
        "{err}"
    );
}

#[test]
fn features_near_the_f32_limit_are_named_instead_of_giving_nan_weights() {
    let dir = TempDir::new().unwrap();
    let (_, model) = population_and_model(dir.path());
    let data = huge_features(dir.path(), 3e38);
    let out = path(dir.path(), "out.safetensors");
    let personalize = [
        "personalize",
        "--model",
        &model,
        "--data",
        &data,
        "--out",
        &out,
    ];
    let err = refused_absent_and_existing(&personalize, &out);
    assert!(err.contains("training diverged at step 1 of 500"), "{err}");
    assert!(
        err.contains("the largest feature magnitude is 3e38"),
        "{err}"
    );
    assert!(err.contains("scale the features down"), "{err}");
    let fit = [
        "fit",
        "--data",
        &data,
        "--rank",
        "2",
        "--iterations",
        "50",
        "--out",
        &out,
    ];
    let err = refused_absent_and_existing(&fit, &out);
    assert!(err.contains("training diverged at step 1 of 50"), "{err}");
    assert!(err.contains("scale the features down"), "{err}");
}

#[test]
fn fit_with_a_huge_learning_rate_fails_fast_with_the_divergence() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let out = path(dir.path(), "model.safetensors");
    let seen = path(&pop, "seen_train.safetensors");
    for method in ["lore", "regularized"] {
        let args = [
            "fit",
            "--data",
            &seen,
            "--method",
            method,
            "--rank",
            "2",
            "--iterations",
            "100000",
            "--lr",
            "1e300",
            "--out",
            &out,
        ];
        let err = refused_absent_and_existing(&args, &out);
        assert!(
            err.contains("training diverged at step 1 of 100000"),
            "{err}"
        );
        assert!(err.contains("lower the learning rate (now 1e300)"), "{err}");
        assert!(!err.contains("shape mismatch"), "{err}");
    }
    // The Bradley-Terry anchor fit stops the same way.
    let args = [
        "fit", "--data", &seen, "--rank", "2", "--alpha", "1", "--v-ref", "bt", "--lr", "1e300",
        "--out", &out,
    ];
    let err = refused(&args, &out);
    assert!(err.contains("Bradley-Terry"), "{err}");
    assert!(err.contains("training diverged at step 1"), "{err}");
}

#[test]
fn a_learning_rate_too_small_to_train_is_refused() {
    let dir = TempDir::new().unwrap();
    let (pop, model) = population_and_model(dir.path());
    let out = path(dir.path(), "out.safetensors");
    let seen = path(&pop, "seen_train.safetensors");
    let unseen = path(&pop, "unseen_train.safetensors");
    let fit = [
        "fit", "--data", &seen, "--rank", "2", "--lr", "1e-300", "--out", &out,
    ];
    let err = refused_absent_and_existing(&fit, &out);
    assert!(
        err.contains("invalid learning rate: 1e-300 is below 1e-12"),
        "{err}"
    );
    let personalize = [
        "personalize",
        "--model",
        &model,
        "--data",
        &unseen,
        "--lr",
        "1e-300",
        "--out",
        &out,
    ];
    let err = refused_absent_and_existing(&personalize, &out);
    assert!(
        err.contains("invalid learning rate: 1e-300 is below 1e-12"),
        "{err}"
    );
}

/// A model file of F = 8, K = 2 (V from the fitted one's shape, simple values) with `W` and
/// optional `W_logits` for 6 users, and `logit_scale` metadata.
fn write_model(dir: &Path, name: &str, w: &[f32], logits: bool, logit_scale: &str) -> String {
    let v: Vec<f32> = (0..F * 2).map(|i| (i as f32 - 7.5) / 8.0).collect();
    let p = path(dir, name);
    let mut out = TensorWriter::new();
    out.add_f32("V", &[F, 2], &v).add_f32("W", &[6, 2], w);
    if logits {
        let l: Vec<f32> = w.iter().map(|&x| x.abs().max(1e-6).ln()).collect();
        out.add_f32("W_logits", &[6, 2], &l);
    }
    out.metadata_raw("logit_scale", logit_scale);
    out.write_atomic(&p).unwrap();
    p
}

/// Six users' weights, all valid, with user 3's row replaced by `row`.
fn weights_with(row: [f32; 2]) -> Vec<f32> {
    let mut w = vec![0.25, 0.75, 0.5, 0.5, 0.9, 0.1, 0.3, 0.7, 0.6, 0.4, 0.2, 0.8];
    w[6..8].copy_from_slice(&row);
    w
}

#[test]
fn weights_read_from_files_are_checked_like_flags() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let data = path(&pop, "unseen_test.safetensors");
    let good = write_model(
        dir.path(),
        "good.safetensors",
        &weights_with([0.3, 0.7]),
        false,
        "0.01",
    );
    lore(&["eval", "--model", &good, "--data", &data]);

    let cases: [(&str, [f32; 2], bool, &str); 5] = [
        (
            "nan.safetensors",
            [f32::NAN, 0.5],
            true,
            "user 3 has weight NaN in column 0",
        ),
        (
            "inf.safetensors",
            [0.5, f32::INFINITY],
            false,
            "user 3 has weight inf in column 1",
        ),
        (
            "negative.safetensors",
            [-0.5, 1.5],
            true,
            "user 3 has weight -0.5 in column 0",
        ),
        (
            "negative_no_logits.safetensors",
            [1.5, -0.5],
            false,
            "weights are probabilities",
        ),
        (
            "zero.safetensors",
            [0.0, 0.0],
            false,
            "user 3's weights sum to 0, not 1",
        ),
    ];
    for (name, row, logits, expected) in cases {
        let model = write_model(dir.path(), name, &weights_with(row), logits, "0.01");
        let err = one_line_error(&["eval", "--model", &model, "--data", &data]);
        assert!(err.contains(name), "{err}");
        assert!(err.contains("tensor `W`"), "{err}");
        assert!(err.contains(expected), "{name}: {err}");
        // The same weights as a users file next to a valid model.
        let err = one_line_error(&["eval", "--model", &good, "--users", &model, "--data", &data]);
        assert!(err.contains(expected), "{name}: {err}");
    }
    // All-zero weights are fine where `W_logits` says what the user is (a pruned model).
    let zero_with_logits = write_model(
        dir.path(),
        "zero_logits.safetensors",
        &weights_with([0.0, 0.0]),
        true,
        "0.01",
    );
    lore(&["eval", "--model", &zero_with_logits, "--data", &data]);
}

#[test]
fn a_logit_scale_read_from_a_model_must_be_positive() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let data = path(&pop, "unseen_test.safetensors");
    let unseen = path(&pop, "unseen_train.safetensors");
    let out = path(dir.path(), "users.safetensors");
    for scale in ["-1", "0", "1e300"] {
        let model = write_model(
            dir.path(),
            &format!("scale{scale}.safetensors"),
            &weights_with([0.3, 0.7]),
            false,
            scale,
        );
        let err = one_line_error(&["eval", "--model", &model, "--data", &data]);
        assert!(err.contains("metadata `logit_scale`"), "{err}");
        assert!(
            err.contains(&format!(": {scale} (the logit scale must be")),
            "{err}"
        );
        let args = [
            "personalize",
            "--model",
            &model,
            "--data",
            &unseen,
            "--out",
            &out,
        ];
        let err = refused_absent_and_existing(&args, &out);
        assert!(err.contains("metadata `logit_scale`"), "{err}");
    }
}

#[test]
fn a_sweep_with_a_diverging_run_names_it_and_writes_no_results() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let out = dir.path().join("sweep");
    // K = 0 (the reference head) needs no training; K = 2 diverges at its first step.
    let args = [
        "sweep",
        "--splits",
        pop.to_str().unwrap(),
        "--ranks",
        "0,2",
        "--iterations",
        "50",
        "--personalize-iterations",
        "20",
        "--lr",
        "1e300",
        "--out",
        out.to_str().unwrap(),
    ];
    let err = one_line_error(&quiet(&args));
    assert!(err.contains("training diverged at step 1 of 50"), "{err}");
    assert!(err.contains("K = 2, alpha = 0, seed = "), "{err}");
    assert!(err.contains("lower the learning rate (now 1e300)"), "{err}");
    assert!(!out.exists(), "a diverged sweep wrote {}", out.display());
}
