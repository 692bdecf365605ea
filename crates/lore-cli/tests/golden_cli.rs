//! The golden reference runs through the `lore` binary, with --init and --trace: traces within
//! 1e-4 relative, final parameters within 1e-3 absolute, accuracies and kept columns exactly.

use std::path::{Path, PathBuf};

use lore_io::TensorFile;
use serde_json::Value;

mod common;
use common::lore_stdout as lore;

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference")
        .join(name)
}

fn meta(file: &TensorFile, key: &str) -> String {
    let value: Value = file.metadata_json(key).unwrap().unwrap();
    match value {
        Value::String(s) => s,
        other => other.to_string(),
    }
}

fn trace(path: &Path, key: &str) -> Vec<f64> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|line| {
            serde_json::from_str::<Value>(line).unwrap()[key]
                .as_f64()
                .unwrap()
        })
        .collect()
}

fn assert_trace(key: &str, got: &[f64], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{key}: steps");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let w = w as f64;
        assert!(
            (g - w).abs() <= 1e-4 * w.abs().max(1e-6),
            "{key}[{i}]: got {g}, want {w}"
        );
    }
}

fn assert_tensor(name: &str, got: &TensorFile, got_name: &str, want: &TensorFile, want_name: &str) {
    let (gs, g) = got.tensor_f32(got_name).unwrap();
    let (ws, w) = want.tensor_f32(want_name).unwrap();
    assert_eq!(gs, ws, "{name}: shape");
    let worst = g
        .iter()
        .zip(&w)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0f32, f32::max);
    assert!(worst <= 1e-3, "{name}: max abs error {worst}");
}

fn assert_accuracy(eval_json: &str, want: &TensorFile) {
    let value: Value = serde_json::from_str(eval_json).unwrap();
    let got: Vec<f64> = value["per_user"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let (_, want) = want.tensor_f32("accuracy").unwrap();
    assert_eq!(got.len(), want.len());
    for (u, (g, w)) in got.iter().zip(&want).enumerate() {
        assert!(
            (g - *w as f64).abs() < 1e-6,
            "accuracy of user {u}: got {g}, want {w}"
        );
    }
}

fn run_fit(name: &str, method: &str) {
    let golden_path = fixture(name);
    let golden = TensorFile::open(&golden_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    let trace_path = dir.path().join("trace.jsonl");
    let g = golden_path.to_str().unwrap();
    lore(&[
        "fit",
        "--quiet",
        "--data",
        g,
        "--v-ref",
        g,
        "--init",
        g,
        "--method",
        method,
        "--alpha",
        &meta(&golden, "alpha"),
        "--iterations",
        &meta(&golden, "iterations"),
        "--lr",
        &meta(&golden, "learning_rate"),
        "--trace",
        trace_path.to_str().unwrap(),
        "--out",
        model.to_str().unwrap(),
    ]);
    let fitted = TensorFile::open(&model).unwrap();
    if method == "lore" {
        assert_trace(
            "nll",
            &trace(&trace_path, "nll"),
            &golden.tensor_f32("nll").unwrap().1,
        );
        assert_trace(
            "reg",
            &trace(&trace_path, "reg"),
            &golden.tensor_f32("reg").unwrap().1,
        );
    } else {
        for key in ["nll_w", "nll_v", "reg"] {
            assert_trace(
                key,
                &trace(&trace_path, key),
                &golden.tensor_f32(key).unwrap().1,
            );
        }
        assert_trace(
            "alpha",
            &trace(&trace_path, "alpha"),
            &golden.tensor_f32("alpha_at_step").unwrap().1,
        );
        let kept: Vec<usize> = fitted.metadata_json("kept_columns").unwrap().unwrap();
        let (_, flags) = golden.tensor_indices("kept").unwrap();
        let want: Vec<usize> = flags
            .iter()
            .enumerate()
            .filter(|(_, &f)| f == 1)
            .map(|(j, _)| j)
            .collect();
        assert_eq!(kept, want, "kept columns");
    }
    assert_tensor("V", &fitted, "V", &golden, "V");
    assert_tensor("W", &fitted, "W", &golden, "W");
    let eval = lore(&[
        "eval",
        "--model",
        model.to_str().unwrap(),
        "--data",
        g,
        "--json",
    ]);
    assert_accuracy(&eval, &golden);
}

fn run_personalize(name: &str) {
    let golden_path = fixture(name);
    let golden = TensorFile::open(&golden_path).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let users = dir.path().join("users.safetensors");
    let trace_path = dir.path().join("trace.jsonl");
    let g = golden_path.to_str().unwrap();
    lore(&[
        "personalize",
        "--quiet",
        "--model",
        g,
        "--data",
        g,
        "--init",
        g,
        "--iterations",
        &meta(&golden, "iterations"),
        "--lr",
        &meta(&golden, "learning_rate"),
        "--trace",
        trace_path.to_str().unwrap(),
        "--out",
        users.to_str().unwrap(),
    ]);
    assert_trace(
        "loss",
        &trace(&trace_path, "loss"),
        &golden.tensor_f32("loss").unwrap().1,
    );
    let fitted = TensorFile::open(&users).unwrap();
    assert_tensor("W", &fitted, "W", &golden, "W");
    let u = users.to_str().unwrap();
    let eval = lore(&["eval", "--model", g, "--users", u, "--data", g, "--json"]);
    assert_accuracy(&eval, &golden);
}

#[test]
fn cli_lore_alpha0() {
    run_fit("lore_alpha0.safetensors", "lore");
}

#[test]
fn cli_lore_l2() {
    run_fit("lore_l2.safetensors", "lore");
}

#[test]
fn cli_lore_paper_lr() {
    run_fit("lore_paper_lr.safetensors", "lore");
}

#[test]
fn cli_regularized_warmup() {
    run_fit("regularized_warmup.safetensors", "regularized");
}

#[test]
fn cli_regularized_paper_lr() {
    run_fit("regularized_paper_lr.safetensors", "regularized");
}

#[test]
fn cli_personalize() {
    run_personalize("personalize.safetensors");
}

#[test]
fn cli_personalize_paper_lr() {
    run_personalize("personalize_paper.safetensors");
}
