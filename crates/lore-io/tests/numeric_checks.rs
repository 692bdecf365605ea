//! Numbers are checked on the way out and on the way in: no file of fitted values is written
//! with NaN or infinite values, and weights, logit scales and reference heads read back are
//! validated as strictly as the flags, with messages naming the file, tensor or key, and user.

use std::path::Path;

use lore_core::{FitInit, FitParams, FittedModel, Method, RewardBasis, UserWeights};
use lore_io::{
    read_v_ref, FitInitFile, FitProvenance, IoError, ModelFile, TensorWriter, UserInitFile,
    UsersFile,
};

fn provenance() -> FitProvenance<'static> {
    FitProvenance {
        data: Path::new("train.safetensors"),
        user_ids: None,
        v_ref: None,
        v_ref_from_bt: false,
        initialized_from: None,
        early_stopping: None,
        embedder: None,
    }
}

/// A model of F = 2, K = 2 and two users whose logits are `logits`.
fn model(logits: Vec<f32>) -> FittedModel {
    let basis = RewardBasis::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], 0.01).unwrap();
    FittedModel {
        basis: basis.clone(),
        users: UserWeights::from_parts(2, 2, logits.clone(), vec![0.5; 4]).unwrap(),
        kept: vec![0, 1],
        unpruned_basis: basis.values().to_vec(),
        unpruned_logits: logits,
        steps: 1,
    }
}

#[test]
fn non_finite_parameters_are_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let params = FitParams::new(Method::Lore, 2).check().unwrap();
    ModelFile::write(&path, &model(vec![0.0; 4]), &params, &provenance()).unwrap();
    let before = std::fs::read(&path).unwrap();
    let err = ModelFile::write(
        &path,
        &model(vec![0.0, 1.0, f32::NAN, 0.0]),
        &params,
        &provenance(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, IoError::Encode { .. }), "{text}");
    assert!(
        text.contains("tensor `W_logits` holds NaN at [1, 0]"),
        "{text}"
    );
    assert_eq!(
        std::fs::read(&path).unwrap(),
        before,
        "the earlier model survives"
    );
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);

    let init = FitInitFile {
        n_users: 1,
        n_features: 1,
        rank: 1,
        init: FitInit {
            logits: vec![f32::INFINITY],
            basis: vec![0.0],
        },
    };
    let err = init.write(dir.path().join("init.safetensors")).unwrap_err();
    assert!(
        err.to_string().contains("`W0` holds inf at [0, 0]"),
        "{err}"
    );
}

/// Writes a file with tensors `W` [3, 2] (user 1's row replaced by `row`), optionally
/// `W_logits`, and metadata.
fn users_file(dir: &Path, row: [f32; 2], logits: bool, scale: &str) -> std::path::PathBuf {
    let mut w = vec![0.5, 0.5, 0.2, 0.8, 0.9, 0.1];
    w[2..4].copy_from_slice(&row);
    let path = dir.join("users.safetensors");
    let mut out = TensorWriter::new();
    out.add_f32("W", &[3, 2], &w)
        .add_f32("V", &[2, 2], &[1.0, 0.0, 0.0, 1.0])
        .metadata_raw("logit_scale", scale)
        .metadata("user_ids", &["ann", "bob", "cy"]);
    if logits {
        out.add_f32("W_logits", &[3, 2], &[0.0; 6]);
    }
    out.write_atomic(&path).unwrap();
    path
}

#[test]
fn weights_read_back_are_probabilities() {
    let dir = tempfile::tempdir().unwrap();
    let refusal = |row: [f32; 2], logits: bool| {
        let path = users_file(dir.path(), row, logits, "0.01");
        UsersFile::open(&path)
            .unwrap()
            .users()
            .unwrap_err()
            .to_string()
    };
    let err = refusal([f32::NAN, 0.5], true);
    assert!(
        err.contains("tensor `W`: user 1 (\"bob\") has weight NaN in column 0"),
        "{err}"
    );
    let err = refusal([0.5, -0.1], true);
    assert!(
        err.contains("weight -0.1 in column 1 (weights are probabilities"),
        "{err}"
    );
    let err = refusal([0.0, 0.0], false);
    assert!(
        err.contains("user 1 (\"bob\")'s weights sum to 0, not 1"),
        "{err}"
    );
    let err = refusal([0.6, 0.6], false);
    assert!(err.contains("sum to 1.2"), "{err}");
    // Pruned models: rows below 1 are fine with `W_logits`.
    let path = users_file(dir.path(), [0.0, 0.0], true, "0.01");
    UsersFile::open(&path).unwrap().users().unwrap();
    let path = users_file(dir.path(), [0.3, 0.7], false, "0.01");
    UsersFile::open(&path).unwrap().users().unwrap();
}

#[test]
fn a_logit_scale_read_back_is_positive_and_finite() {
    let dir = tempfile::tempdir().unwrap();
    for scale in ["-1", "0", "1e300"] {
        let path = users_file(dir.path(), [0.3, 0.7], false, scale);
        let model = ModelFile::open(&path).unwrap();
        let err = model.logit_scale().unwrap_err().to_string();
        assert!(err.contains("metadata `logit_scale`"), "{err}");
        assert!(
            err.contains(&format!(": {scale} (the logit scale must be")),
            "{err}"
        );
        assert!(model.basis(None).is_err());
        // An explicit scale (the flag) takes the place of the file's.
        assert_eq!(model.basis(Some(0.5)).unwrap().logit_scale(), 0.5);
    }
}

#[test]
fn reference_heads_and_starting_values_are_finite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("v_ref.safetensors");
    TensorWriter::new()
        .add_f32("v_ref", &[3], &[0.5, f32::NEG_INFINITY, 1.0])
        .write_atomic(&path)
        .unwrap();
    let err = read_v_ref(&path).unwrap_err().to_string();
    assert!(
        err.contains("tensor `v_ref`: feature 1 (column 0) is -inf"),
        "{err}"
    );

    let path = dir.path().join("w0.safetensors");
    TensorWriter::new()
        .add_f32("w0", &[2, 2], &[0.5, 0.0, 1.0, f32::NAN])
        .write_atomic(&path)
        .unwrap();
    let err = UserInitFile::read(&path).unwrap_err().to_string();
    assert!(
        err.contains("tensor `w0`: user 1 (column 1) is NaN"),
        "{err}"
    );

    let path = dir.path().join("init.safetensors");
    TensorWriter::new()
        .add_f32("W0", &[1, 1], &[0.0])
        .add_f32("V0", &[1, 1], &[f32::NAN])
        .write_atomic(&path)
        .unwrap();
    let err = FitInitFile::read(&path).unwrap_err().to_string();
    assert!(
        err.contains("tensor `V0`: feature 0 (column 0) is NaN"),
        "{err}"
    );
}
