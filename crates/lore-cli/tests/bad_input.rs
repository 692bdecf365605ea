//! Every class of bad input gets one clear line on stderr naming the file and the problem, a
//! non-zero exit, and no output file (nor a temporary one).

use std::path::{Path, PathBuf};
use std::process::Command;

use lore_io::TensorWriter;
use tempfile::TempDir;

fn fixture(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference")
        .join(name)
        .to_str()
        .unwrap()
        .to_string()
}

/// Runs lore expecting failure; returns stderr after checking it is one line and that the
/// folder holds nothing but the inputs listed.
fn fails(dir: &TempDir, inputs: &[&str], args: &[&str]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_lore"))
        .args(args)
        .output()
        .unwrap();
    assert!(!out.status.success(), "lore {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected, got:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let mut left: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected: Vec<String> = inputs.iter().map(|s| s.to_string()).collect();
    expected.sort();
    assert_eq!(left, expected, "no output file may appear");
    stderr
}

fn path(dir: &TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_string()
}

/// A small valid preference file: 3 users x 4 rows, F = 32 (the fixtures' F).
fn write_data(
    dir: &TempDir,
    name: &str,
    edit: impl FnOnce(&mut Vec<f32>, &mut Vec<i64>),
) -> String {
    let mut x: Vec<f32> = (0..12 * 32)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
        .collect();
    let mut users: Vec<i64> = (0..12).map(|i| i / 4).collect();
    edit(&mut x, &mut users);
    let p = path(dir, name);
    TensorWriter::new()
        .add_f32("x", &[x.len() / 32, 32], &x)
        .add_i64("user", &[users.len()], &users)
        .write_atomic(&p)
        .unwrap();
    p
}

fn fit_args<'a>(data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "fit",
        "--data",
        data,
        "--rank",
        "2",
        "--iterations",
        "3",
        "--out",
        out,
    ]
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(&dir, "nope.safetensors");
    let out = path(&dir, "m.safetensors");
    let err = fails(&dir, &[], &fit_args(&data, &out));
    assert!(
        err.contains("cannot open") && err.contains("nope.safetensors"),
        "{err}"
    );
}

#[test]
fn missing_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(&dir, "d.safetensors");
    TensorWriter::new()
        .add_i64("user", &[2], &[0, 0])
        .write_atomic(&data)
        .unwrap();
    let out = path(&dir, "m.safetensors");
    let err = fails(&dir, &["d.safetensors"], &fit_args(&data, &out));
    assert!(
        err.contains("d.safetensors") && err.contains("missing tensor `x`"),
        "{err}"
    );
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let good = std::fs::read(fixture("lore_alpha0.safetensors")).unwrap();
    let data = path(&dir, "cut.safetensors");
    std::fs::write(&data, &good[..good.len() / 2]).unwrap();
    let out = path(&dir, "m.safetensors");
    let err = fails(&dir, &["cut.safetensors"], &fit_args(&data, &out));
    assert!(
        err.contains("cut.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn unreadable_garbage() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(&dir, "junk.safetensors");
    std::fs::write(&data, b"this is not a tensor file at all").unwrap();
    let out = path(&dir, "m.safetensors");
    let err = fails(&dir, &["junk.safetensors"], &fit_args(&data, &out));
    assert!(
        err.contains("junk.safetensors") && err.contains("not a valid safetensors file"),
        "{err}"
    );
}

#[test]
fn shape_mismatch_of_user() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(&dir, "d.safetensors", |_, users| {
        users.pop();
    });
    let out = path(&dir, "m.safetensors");
    let err = fails(&dir, &["d.safetensors"], &fit_args(&data, &out));
    assert!(
        err.contains("d.safetensors") && err.contains("`user`") && err.contains("shape"),
        "{err}"
    );
}

#[test]
fn feature_dimension_of_model_and_data_differ() {
    let dir = tempfile::tempdir().unwrap();
    // personalize_paper has F = 64; the data has F = 32.
    let data = write_data(&dir, "d.safetensors", |_, _| {});
    let out = path(&dir, "u.safetensors");
    let model = fixture("personalize_paper.safetensors");
    let err = fails(
        &dir,
        &["d.safetensors"],
        &[
            "personalize",
            "--model",
            &model,
            "--data",
            &data,
            "--out",
            &out,
        ],
    );
    assert!(
        err.contains("feature dimension mismatch")
            && err.contains("F = 64")
            && err.contains("F = 32"),
        "{err}"
    );
    let err = fails(
        &dir,
        &["d.safetensors"],
        &["eval", "--model", &model, "--data", &data],
    );
    assert!(err.contains("feature dimension mismatch"), "{err}");
}

#[test]
fn non_finite_features() {
    let dir = tempfile::tempdir().unwrap();
    let nan = write_data(&dir, "nan.safetensors", |x, _| x[40] = f32::NAN);
    let inf = write_data(&dir, "inf.safetensors", |x, _| x[40] = f32::INFINITY);
    let out = path(&dir, "m.safetensors");
    for (name, data) in [("nan.safetensors", nan), ("inf.safetensors", inf)] {
        let err = fails(
            &dir,
            &["nan.safetensors", "inf.safetensors"],
            &fit_args(&data, &out),
        );
        assert!(
            err.contains(name) && err.contains("row 1, column 8") && err.contains("finite"),
            "{err}"
        );
    }
}

#[test]
fn user_index_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    // The fixture's model has 8 users; this data has 9.
    let mut x: Vec<f32> = vec![1.0; 9 * 32];
    x[0] = -1.0;
    let users: Vec<i64> = (0..9).collect();
    let data = path(&dir, "d.safetensors");
    TensorWriter::new()
        .add_f32("x", &[9, 32], &x)
        .add_i64("user", &[9], &users)
        .write_atomic(&data)
        .unwrap();
    let model = fixture("lore_alpha0.safetensors");
    let err = fails(
        &dir,
        &["d.safetensors"],
        &["eval", "--model", &model, "--data", &data],
    );
    assert!(
        err.contains("d.safetensors") && err.contains("user index 8 is out of range"),
        "{err}"
    );
}

#[test]
fn negative_user_index() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(&dir, "d.safetensors", |_, users| users[3] = -1);
    let out = path(&dir, "m.safetensors");
    let err = fails(&dir, &["d.safetensors"], &fit_args(&data, &out));
    assert!(
        err.contains("d.safetensors") && err.contains("`user`") && err.contains("-1"),
        "{err}"
    );
}

#[test]
fn empty_user() {
    let dir = tempfile::tempdir().unwrap();
    // Users 0 and 2 only: user 1 has no rows.
    let data = write_data(&dir, "d.safetensors", |_, users| {
        for u in users.iter_mut() {
            if *u == 1 {
                *u = 2;
            }
        }
    });
    let out = path(&dir, "m.safetensors");
    let err = fails(&dir, &["d.safetensors"], &fit_args(&data, &out));
    assert!(
        err.contains("d.safetensors") && err.contains("user 1 has no rows"),
        "{err}"
    );
}

fn invalid_value(flag: &str, value: &str, message: &str) {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(&dir, "d.safetensors", |_, _| {});
    let out = path(&dir, "m.safetensors");
    let mut args = vec!["fit", "--data", &data, "--out", &out];
    for (f, default) in [("--rank", "2"), ("--iterations", "3")] {
        if f != flag {
            args.extend([f, default]);
        }
    }
    args.extend([flag, value]);
    let err = fails(&dir, &["d.safetensors"], &args);
    assert!(err.contains(message), "{err}");
}

#[test]
fn rank_zero() {
    invalid_value("--rank", "0", "invalid rank: 0 (must be at least 1)");
}

#[test]
fn iterations_zero() {
    invalid_value(
        "--iterations",
        "0",
        "invalid iterations: 0 (must be at least 1)",
    );
}

#[test]
fn learning_rate_not_positive() {
    invalid_value(
        "--lr",
        "0",
        "invalid learning rate: 0 (must be finite and > 0)",
    );
    invalid_value(
        "--lr",
        "-0.5",
        "invalid learning rate: -0.5 (must be finite and > 0)",
    );
}

#[test]
fn unknown_method() {
    invalid_value(
        "--method",
        "joint",
        "unknown method `joint` (expected `lore` or `regularized`)",
    );
}

#[test]
fn personalize_iterations_zero() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(&dir, "d.safetensors", |_, _| {});
    let out = path(&dir, "u.safetensors");
    let model = fixture("personalize.safetensors");
    let err = fails(
        &dir,
        &["d.safetensors"],
        &[
            "personalize",
            "--model",
            &model,
            "--data",
            &data,
            "--iterations",
            "0",
            "--out",
            &out,
        ],
    );
    assert!(err.contains("invalid iterations"), "{err}");
}

#[test]
fn missing_v_ref_tensor_and_alpha_without_v_ref() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(&dir, "d.safetensors", |_, _| {});
    let out = path(&dir, "m.safetensors");
    let mut args = fit_args(&data, &out);
    args.extend(["--v-ref", &data]);
    let err = fails(&dir, &["d.safetensors"], &args);
    assert!(err.contains("missing tensor `v_ref`"), "{err}");
    let mut args = fit_args(&data, &out);
    args.extend(["--alpha", "0.1"]);
    let err = fails(&dir, &["d.safetensors"], &args);
    assert!(
        err.contains("--alpha 0.1") && err.contains("--v-ref"),
        "{err}"
    );
}

#[test]
fn output_folder_missing() {
    let dir = tempfile::tempdir().unwrap();
    let data = write_data(&dir, "d.safetensors", |_, _| {});
    let out = Path::new(&path(&dir, "no/such/folder")).join("m.safetensors");
    let err = fails(
        &dir,
        &["d.safetensors"],
        &fit_args(&data, out.to_str().unwrap()),
    );
    assert!(
        err.contains("cannot write") && err.contains("does not exist"),
        "{err}"
    );
}

#[test]
fn usage_errors_are_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let err = fails(&dir, &[], &["fit", "--rank", "two"]);
    assert!(err.contains("--rank"), "{err}");
}
