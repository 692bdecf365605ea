//! `lore score`: rewards computable by hand from a tiny model, for each input kind; unknown
//! users get the population's weights; --users files override (later wins); one-line errors.

mod common;

use std::path::Path;

use common::{fails, path, run_ok};
use lore_io::TensorWriter;

/// Logit scale of the test model.
const C: f64 = 0.5;

/// A model with F = 2, K = 2, V = identity, so r_u(e) = 0.5 * (e0 w0 + e1 w1): users ann
/// (0.25, 0.75) and bob (1, 0); the population (prior_logits 0, 0) is (0.5, 0.5).
fn model(dir: &Path) -> String {
    let model = path(dir, "model.safetensors");
    TensorWriter::new()
        .add_f32("V", &[2, 2], &[1.0, 0.0, 0.0, 1.0])
        .add_f32("W", &[2, 2], &[0.25, 0.75, 1.0, 0.0])
        .add_f32("prior_logits", &[2], &[0.0, 0.0])
        .metadata("user_ids", &["ann", "bob"])
        .metadata("logit_scale", &C)
        .write_atomic(&model)
        .unwrap();
    model
}

/// A users file naming `ids` with weights `w` [ids x 2].
fn users(dir: &Path, name: &str, ids: &[&str], w: &[f32]) -> String {
    let file = path(dir, name);
    TensorWriter::new()
        .add_f32("W", &[ids.len(), w.len() / ids.len()], w)
        .metadata("user_ids", ids)
        .write_atomic(&file)
        .unwrap();
    file
}

/// The reward by hand: 0.5 * e . w (V is the identity), in f64.
fn by_hand(e: [f32; 2], w: [f32; 2]) -> f64 {
    C * (e[0] as f64 * w[0] as f64 + e[1] as f64 * w[1] as f64)
}

fn sigmoid(r: f64) -> f64 {
    1.0 / (1.0 + (-r).exp())
}

/// Tensor `name` of the scores file, with its dtype.
fn read(file: &str, name: &str) -> (safetensors::Dtype, Vec<usize>, Vec<u8>) {
    let bytes = std::fs::read(file).unwrap();
    let tensors = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = tensors.tensor(name).unwrap();
    (t.dtype(), t.shape().to_vec(), t.data().to_vec())
}

/// F64 tensor `name` of the scores file.
fn f64s(file: &str, name: &str) -> Vec<f64> {
    let (dtype, shape, data) = read(file, name);
    assert_eq!(dtype, safetensors::Dtype::F64, "{name}");
    let values: Vec<f64> = data
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect();
    assert_eq!(shape, [values.len()]);
    values
}

/// I64 tensor `name` of the scores file.
fn i64s(file: &str, name: &str) -> Vec<i64> {
    let (dtype, _, data) = read(file, name);
    assert_eq!(dtype, safetensors::Dtype::I64, "{name}");
    data.chunks_exact(8)
        .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

fn assert_close(got: &[f64], expected: &[f64]) {
    assert_eq!(got.len(), expected.len());
    for (i, (g, e)) in got.iter().zip(expected).enumerate() {
        assert!((g - e).abs() <= 1e-12, "row {i}: {g} vs {e}");
    }
}

/// Pairs `x` of ann, bob and carol (unknown to the model).
fn pairs(dir: &Path) -> String {
    let data = path(dir, "pairs.safetensors");
    TensorWriter::new()
        .add_f32("x", &[3, 2], &[2.0, 4.0, 4.0, 0.0, 2.0, 0.0])
        .add_i64("user", &[3], &[0, 1, 2])
        .metadata("user_ids", &["ann", "bob", "carol"])
        .write_atomic(&data)
        .unwrap();
    data
}

#[test]
fn pair_differences_give_reward_and_probability_with_population_for_unknown_users() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (model(dir.path()), pairs(dir.path()));
    let out = path(dir.path(), "scores.safetensors");
    run_ok(&["score", "--model", &model, "--data", &data, "--out", &out]);
    let expected = [
        by_hand([2.0, 4.0], [0.25, 0.75]), // ann: 1.75
        by_hand([4.0, 0.0], [1.0, 0.0]),   // bob: 2.0
        by_hand([2.0, 0.0], [0.5, 0.5]),   // carol: the population, 0.5
    ];
    assert_eq!(expected, [1.75, 2.0, 0.5]);
    let reward = f64s(&out, "reward");
    assert_close(&reward, &expected);
    let p: Vec<f64> = expected.iter().map(|&r| sigmoid(r)).collect();
    assert_close(&f64s(&out, "probability"), &p);
    assert_eq!(i64s(&out, "user_known"), [1, 1, 0]);
    assert_eq!(i64s(&out, "user"), [0, 1, 2]);

    // Bit for bit what the library (and so `lore serve`) computes.
    let file = lore_io::ModelFile::open(&model).unwrap();
    let basis = file.basis(None).unwrap();
    let known = lore_io::KnownUsers::from_model(&file).unwrap();
    let rows = [[2.0f32, 4.0], [4.0, 0.0], [2.0, 0.0]];
    for ((row, id), got) in rows.iter().zip(["ann", "bob", "carol"]).zip(&reward) {
        let (w, _) = known.weights_or_population(id);
        assert_eq!(basis.reward(row, w).to_bits(), got.to_bits(), "{id}");
    }
}

#[test]
fn users_files_override_and_later_files_win() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = (model(dir.path()), pairs(dir.path()));
    let first = users(
        dir.path(),
        "first.safetensors",
        &["bob", "carol"],
        &[0.0, 1.0, 1.0, 0.0],
    );
    let second = users(dir.path(), "second.safetensors", &["carol"], &[0.2, 0.8]);
    let out = path(dir.path(), "scores.safetensors");
    run_ok(&[
        "score", "--model", &model, "--users", &first, "--data", &data, "--out", &out,
    ]);
    let expected = [
        by_hand([2.0, 4.0], [0.25, 0.75]),
        by_hand([4.0, 0.0], [0.0, 1.0]),
        by_hand([2.0, 0.0], [1.0, 0.0]),
    ];
    assert_close(&f64s(&out, "reward"), &expected);
    assert_eq!(i64s(&out, "user_known"), [1, 1, 1]);

    run_ok(&[
        "score", "--model", &model, "--users", &first, "--users", &second, "--data", &data,
        "--out", &out,
    ]);
    let expected = [expected[0], expected[1], by_hand([2.0, 0.0], [0.2, 0.8])];
    assert_close(&f64s(&out, "reward"), &expected);

    // The same through a configuration file's list of users files.
    let config = path(dir.path(), "score.toml");
    let quoted = |p: &str| format!("{p:?}");
    std::fs::write(
        &config,
        format!(
            "model = {}\ndata = {}\nusers = [{}, {}]\n",
            quoted(&model),
            quoted(&data),
            quoted(&first),
            quoted(&second)
        ),
    )
    .unwrap();
    let out2 = path(dir.path(), "scores2.safetensors");
    run_ok(&["score", "--config", &config, "--out", &out2]);
    assert_close(&f64s(&out2, "reward"), &expected);
}

#[test]
fn both_sides_give_each_reward_and_the_probability_of_their_difference() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let data = path(dir.path(), "sides.safetensors");
    TensorWriter::new()
        .add_f32("chosen", &[2, 2], &[2.0, 4.0, 4.0, 0.0])
        .add_f32("rejected", &[2, 2], &[0.0, 2.0, 1.0, 1.0])
        .add_i64("user", &[2], &[1, 0])
        .metadata("user_ids", &["dan", "ann"])
        .write_atomic(&data)
        .unwrap();
    let out = path(dir.path(), "scores.safetensors");
    run_ok(&["score", "--model", &model, "--data", &data, "--out", &out]);
    // Row 0 is user 1 (ann), row 1 user 0 (dan, unknown: the population).
    let chosen = [
        by_hand([2.0, 4.0], [0.25, 0.75]),
        by_hand([4.0, 0.0], [0.5, 0.5]),
    ];
    let rejected = [
        by_hand([0.0, 2.0], [0.25, 0.75]),
        by_hand([1.0, 1.0], [0.5, 0.5]),
    ];
    assert_close(&f64s(&out, "reward_chosen"), &chosen);
    assert_close(&f64s(&out, "reward_rejected"), &rejected);
    let p = [
        sigmoid(chosen[0] - rejected[0]),
        sigmoid(chosen[1] - rejected[1]),
    ];
    assert_close(&f64s(&out, "probability"), &p);
    assert_eq!(i64s(&out, "user_known"), [1, 0]);
}

#[test]
fn feature_rows_without_users_get_the_population() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let data = path(dir.path(), "rows.safetensors");
    TensorWriter::new()
        .add_f32("features", &[3, 2], &[1.0, 2.0, 3.0, -1.0, -0.5, 0.25])
        .write_atomic(&data)
        .unwrap();
    let out = path(dir.path(), "scores.safetensors");
    run_ok(&["score", "--model", &model, "--data", &data, "--out", &out]);
    let expected = [
        by_hand([1.0, 2.0], [0.5, 0.5]),
        by_hand([3.0, -1.0], [0.5, 0.5]),
        by_hand([-0.5, 0.25], [0.5, 0.5]),
    ];
    assert_close(&f64s(&out, "reward"), &expected);
    assert_eq!(i64s(&out, "user_known"), [0, 0, 0]);
    let bytes = std::fs::read(&out).unwrap();
    let names = safetensors::SafeTensors::deserialize(&bytes)
        .unwrap()
        .names()
        .len();
    assert_eq!(names, 2, "only reward and user_known");
}

#[test]
fn bad_inputs_are_one_line_errors_and_write_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outputs = tempfile::tempdir().unwrap();
    let out = path(outputs.path(), "scores.safetensors");
    let model = model(dir.path());
    let data = pairs(dir.path());
    let write = |name: &str, x: &[f32], f: usize, user: Option<&[i64]>, ids: bool| {
        let file = path(dir.path(), name);
        let mut w = TensorWriter::new();
        w.add_f32("x", &[x.len() / f, f], x);
        if let Some(user) = user {
            w.add_i64("user", &[user.len()], user);
        }
        if ids {
            w.metadata("user_ids", &["ann"]);
        }
        w.write_atomic(&file).unwrap();
        file
    };
    let score = |data: &str, extra: &[&str]| {
        let mut args = vec!["score", "--model", &model, "--data", data, "--out", &out];
        args.extend_from_slice(extra);
        fails(outputs.path(), &args)
    };

    let wide = write("wide.safetensors", &[1.0, 2.0, 3.0], 3, None, false);
    let e = score(&wide, &[]);
    assert!(
        e.contains("feature dimension mismatch") && e.contains("F = 3"),
        "{e}"
    );

    let k3 = users(dir.path(), "k3.safetensors", &["ann"], &[0.2, 0.3, 0.5]);
    let e = score(&data, &["--users", &k3]);
    assert!(e.contains("K = 3") && e.contains("K = 2"), "{e}");

    let nan = write(
        "nan.safetensors",
        &[1.0, 2.0, f32::NAN, 0.0],
        2,
        Some(&[0, 0]),
        true,
    );
    let e = score(&nan, &[]);
    assert!(e.contains("row 1 (column 0) is NaN"), "{e}");

    let inf = write("inf.safetensors", &[1.0, f32::INFINITY], 2, None, false);
    let e = score(&inf, &[]);
    assert!(e.contains("row 0 (column 1) is inf"), "{e}");

    let beyond = write("beyond.safetensors", &[1.0, 2.0], 2, Some(&[1]), true);
    let e = score(&beyond, &[]);
    assert!(
        e.contains("row 0 has user 1") && e.contains("names 1 users"),
        "{e}"
    );

    let anonymous = write("anon.safetensors", &[1.0, 2.0], 2, Some(&[0]), false);
    let e = score(&anonymous, &[]);
    assert!(e.contains("user_ids"), "{e}");

    let nothing = path(dir.path(), "nothing.safetensors");
    TensorWriter::new()
        .add_f32("y", &[1, 2], &[1.0, 2.0])
        .write_atomic(&nothing)
        .unwrap();
    let e = score(&nothing, &[]);
    assert!(
        e.contains("nothing to score") && e.contains("found: y"),
        "{e}"
    );

    let e = fails(
        outputs.path(),
        &["score", "--model", &model, "--data", &data],
    );
    assert!(e.contains("--out"), "{e}");
    // The output may not replace an input.
    let e = common::one_line_error(&["score", "--model", &model, "--data", &data, "--out", &data]);
    assert!(e.contains("--data") || e.contains("input"), "{e}");
}

#[test]
fn half_precision_rows_are_scored_from_their_values() {
    let dir = tempfile::tempdir().unwrap();
    let model = model(dir.path());
    let data = path(dir.path(), "bf16.safetensors");
    let x: Vec<half::bf16> = [3.0f32, -1.5, 0.25, 8.0]
        .iter()
        .map(|&v| half::bf16::from_f32(v))
        .collect();
    TensorWriter::new()
        .add_bf16("x", &[2, 2], &x)
        .add_i64("user", &[2], &[0, 0])
        .metadata("user_ids", &["bob"])
        .write_atomic(&data)
        .unwrap();
    let out = path(dir.path(), "scores.safetensors");
    run_ok(&["score", "--model", &model, "--data", &data, "--out", &out]);
    let expected = [
        by_hand([3.0, -1.5], [1.0, 0.0]),
        by_hand([0.25, 8.0], [1.0, 0.0]),
    ];
    assert_eq!(expected, [1.5, 0.125]);
    assert_close(&f64s(&out, "reward"), &expected);
}
