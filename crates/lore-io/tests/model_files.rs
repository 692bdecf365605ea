//! Model, users, init and v_ref files: round trips, the exact bytes `lore` wrote before these
//! types existed, files of older versions, and the error messages the CLI prints.

mod common;

use std::path::Path;

use common::*;
use lore_core::{
    FitInit, FitParams, FittedModel, Method, PersonalizeParams, RewardBasis, UserWeights,
};
use lore_io::{
    read_v_ref, FitInitFile, FitProvenance, ModelFile, TensorFile, TensorWriter, UserInitFile,
    UsersFile, UsersProvenance,
};
use serde_json::json;

/// A fitted model with F = 3, K = 2 and N = 2 users (weights from logits).
fn model() -> FittedModel {
    let basis = RewardBasis::new(3, 2, vec![0.5, -1.0, 2.0, 0.25, -0.75, 1.5], 0.02).unwrap();
    let logits = vec![0.3f32, -0.2, 1.0, 0.5];
    let weights: Vec<f32> = logits
        .chunks(2)
        .flat_map(|row| {
            let m = row[0].max(row[1]);
            let e: Vec<f32> = row.iter().map(|v| (v - m).exp()).collect();
            let s: f32 = e.iter().sum();
            e.into_iter().map(move |v| v / s)
        })
        .collect();
    let users = UserWeights::from_parts(2, 2, logits.clone(), weights).unwrap();
    FittedModel {
        basis: basis.clone(),
        users,
        kept: vec![0, 1],
        unpruned_basis: basis.values().to_vec(),
        unpruned_logits: logits,
        steps: 7,
    }
}

fn message(err: lore_io::IoError) -> String {
    let msg = err.to_string();
    assert!(std::error::Error::source(&err).is_none(), "{msg}");
    msg
}

#[test]
fn model_file_round_trip_and_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let model = model();
    let params = FitParams::new(Method::Regularized, 2)
        .alpha(0.5)
        .iterations(7)
        .logit_scale(0.02)
        .seed(3)
        .check()
        .unwrap();
    let ids = ["ann".to_string(), "bob".to_string()];
    let v_ref = [1.0f32, 0.0, -1.0];
    let stopping = json!({ "best_step": 5 });
    let provenance = FitProvenance {
        data: Path::new("train.safetensors"),
        user_ids: Some(&ids),
        v_ref: Some(&v_ref),
        v_ref_from_bt: true,
        initialized_from: Some(Path::new("init.safetensors")),
        early_stopping: Some(&stopping),
        embedder: None,
    };
    ModelFile::write(&path, &model, &params, &provenance).unwrap();

    let file = ModelFile::open(&path).unwrap();
    assert_eq!(file.basis(None).unwrap(), model.basis);
    assert_eq!(file.basis(Some(0.5)).unwrap().logit_scale(), 0.5);
    let users = file.users().unwrap();
    assert_eq!(users.weights, model.users);
    assert_eq!(users.user_ids.as_deref(), Some(&ids[..]));
    assert_eq!(
        file.prior_logits().unwrap(),
        Some(model.users.prior_logits())
    );
    assert_eq!(file.v_ref().unwrap(), Some(v_ref.to_vec()));
    assert_eq!(file.method().unwrap().as_deref(), Some("regularized"));
    assert_eq!(file.logit_scale().unwrap(), Some(0.02));
    assert_eq!(file.user_ids().unwrap(), Some(ids.to_vec()));

    // Byte for byte what `lore fit` wrote before the format moved into lore-io.
    let expected = dir.path().join("expected.safetensors");
    let (f, k, n) = (3, 2, 2);
    let mut out = TensorWriter::new();
    out.add_f32("V", &[f, k], model.basis.values())
        .add_f32("W", &[n, k], model.users.weights())
        .add_f32("W_logits", &[n, k], model.users.logits())
        .add_f32("prior_logits", &[k], &model.users.prior_logits())
        .add_f32("v_ref", &[3], &v_ref)
        .metadata("kind", "model")
        .metadata("method", "regularized")
        .metadata("rank", &2usize)
        .metadata("kept_rank", &k)
        .metadata("kept_columns", &model.kept)
        .metadata("alpha", &0.5f64)
        .metadata("iterations", &7usize)
        .metadata("steps_run", &7usize)
        .metadata("learning_rate", &params.learning_rate())
        .metadata("logit_scale", &0.02f64)
        .metadata("prune_threshold", &params.prune_threshold())
        .metadata("seed", &3u64)
        .metadata("precision", "f32")
        .metadata("n_users", &n)
        .metadata("n_features", &f)
        .metadata("data", "train.safetensors")
        .metadata("init", "init.safetensors")
        .metadata("v_ref_from", "bt")
        .metadata("early_stopping", &stopping)
        .metadata("user_ids", &ids);
    out.write_atomic(&expected).unwrap();
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&expected).unwrap()
    );
}

#[test]
fn users_file_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.safetensors");
    let model = model();
    let params = PersonalizeParams {
        prior_strength: 0.5,
        ..PersonalizeParams::default()
    }
    .check()
    .unwrap();
    let provenance = UsersProvenance {
        model: Path::new("model.safetensors"),
        data: Path::new("new.safetensors"),
        user_ids: None,
        early_stopping: None,
        embedder: None,
    };
    UsersFile::write(&path, &model.users, &params, &model.basis, &provenance).unwrap();
    let file = UsersFile::open(&path).unwrap();
    let users = file.users().unwrap();
    assert_eq!(users.weights, model.users);
    assert_eq!(users.user_ids, None);
    let meta = TensorFile::open(&path).unwrap();
    assert_eq!(
        meta.metadata_json::<String>("kind").unwrap().unwrap(),
        "users"
    );
    assert_eq!(
        meta.metadata_json::<f64>("logit_scale").unwrap(),
        Some(0.02)
    );
    assert_eq!(
        meta.metadata_json::<f64>("prior_strength").unwrap(),
        Some(0.5)
    );
    assert_eq!(
        meta.metadata_json::<String>("model").unwrap().unwrap(),
        "model.safetensors"
    );
    assert!(!meta.metadata().contains_key("early_stopping"));
}

/// A model file of an older `lore fit`: no `W_logits`, no `prior_logits`, metadata as written
/// by another serializer.
#[test]
fn older_model_file_still_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "old.safetensors",
        &[
            f32s("V", &[2, 1], &[1.0, -1.0]),
            f32s("W", &[2, 1], &[1.0, 1.0]),
        ],
        &[("method", "\"lore\""), ("logit_scale", "0.05")],
    );
    let file = ModelFile::open(&path).unwrap();
    assert_eq!(file.basis(None).unwrap().logit_scale(), 0.05);
    let users = file.users().unwrap();
    assert_eq!(users.weights.logits(), &[0.0, 0.0]);
    assert_eq!(file.prior_logits().unwrap(), None);
    assert_eq!(file.v_ref().unwrap(), None);
    assert_eq!(file.method().unwrap().as_deref(), Some("lore"));
}

#[test]
fn init_files_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("init.safetensors");
    let init = FitInitFile {
        n_users: 2,
        n_features: 3,
        rank: 1,
        init: FitInit {
            logits: vec![0.0, 1.0],
            basis: vec![1.0, 2.0, 3.0],
        },
    };
    init.write(&path).unwrap();
    assert_eq!(FitInitFile::read(&path).unwrap(), init);

    let path = dir.path().join("w0.safetensors");
    let w0 = UserInitFile {
        n_users: 2,
        rank: 2,
        logits: vec![0.0, 1.0, 2.0, 3.0],
    };
    w0.write(&path).unwrap();
    assert_eq!(UserInitFile::read(&path).unwrap(), w0);
}

#[test]
fn messages_name_file_and_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let d = |name: &str| dir.path().join(name).display().to_string();

    let path = write_raw(
        dir.path(),
        "no_v.safetensors",
        &[f32s("W", &[1, 1], &[1.0])],
        &[],
    );
    let msg = message(ModelFile::open(&path).unwrap().basis(None).unwrap_err());
    assert_eq!(
        msg,
        format!("{}: missing tensor `V` (found: W)", d("no_v.safetensors"))
    );

    let path = write_raw(
        dir.path(),
        "v1d.safetensors",
        &[f32s("V", &[2], &[1.0, 2.0])],
        &[],
    );
    let msg = message(ModelFile::open(&path).unwrap().basis(None).unwrap_err());
    assert_eq!(
        msg,
        format!(
            "{}: tensor `V` has shape [2], expected a matrix [rows, columns]",
            d("v1d.safetensors")
        )
    );

    let path = write_raw(
        dir.path(),
        "nan.safetensors",
        &[f32s("V", &[1, 1], &[f32::NAN])],
        &[],
    );
    let msg = message(ModelFile::open(&path).unwrap().basis(None).unwrap_err());
    assert!(
        msg.starts_with(&format!("{}: tensor `V`: ", d("nan.safetensors"))),
        "{msg}"
    );

    let path = write_raw(
        dir.path(),
        "logits.safetensors",
        &[
            f32s("W", &[2, 1], &[1.0, 1.0]),
            f32s("W_logits", &[1, 2], &[0.0, 0.0]),
        ],
        &[("user_ids", "[\"a\"]")],
    );
    let msg = message(UsersFile::open(&path).unwrap().users().unwrap_err());
    assert_eq!(
        msg,
        format!(
            "{}: tensor `W_logits` has shape [1, 2], expected [2, 1] like `W`",
            d("logits.safetensors")
        )
    );

    let path = write_raw(
        dir.path(),
        "ids.safetensors",
        &[f32s("W", &[2, 1], &[1.0, 1.0])],
        &[("user_ids", "[\"a\"]")],
    );
    let msg = message(UsersFile::open(&path).unwrap().users().unwrap_err());
    assert_eq!(
        msg,
        format!(
            "{}: metadata `user_ids` has 1 ids but `W` has 2 users",
            d("ids.safetensors")
        )
    );

    let path = write_raw(
        dir.path(),
        "prior.safetensors",
        &[
            f32s("V", &[2, 2], &[1.0; 4]),
            f32s("prior_logits", &[3], &[0.0; 3]),
        ],
        &[],
    );
    let msg = message(ModelFile::open(&path).unwrap().prior_logits().unwrap_err());
    assert_eq!(
        msg,
        format!(
            "{}: tensor `prior_logits` has shape [3], expected [2] like the columns of `V`",
            d("prior.safetensors")
        )
    );

    let path = write_raw(
        dir.path(),
        "prior_inf.safetensors",
        &[
            f32s("V", &[1, 1], &[1.0]),
            f32s("prior_logits", &[1], &[f32::INFINITY]),
        ],
        &[],
    );
    let msg = message(ModelFile::open(&path).unwrap().prior_logits().unwrap_err());
    assert_eq!(
        msg,
        format!(
            "{}: tensor `prior_logits` holds inf",
            d("prior_inf.safetensors")
        )
    );

    let path = write_raw(
        dir.path(),
        "init.safetensors",
        &[
            f32s("W0", &[2, 2], &[0.0; 4]),
            f32s("V0", &[3, 1], &[0.0; 3]),
        ],
        &[],
    );
    let msg = message(FitInitFile::read(&path).unwrap_err());
    assert_eq!(
        msg,
        format!(
            "{}: `W0` has K = 2 columns but `V0` has K = 1",
            d("init.safetensors")
        )
    );

    let path = write_raw(
        dir.path(),
        "vref.safetensors",
        &[f32s("v_ref", &[2, 2], &[0.0; 4])],
        &[],
    );
    let msg = message(read_v_ref(&path).unwrap_err());
    assert_eq!(
        msg,
        format!(
            "{}: tensor `v_ref` has shape [2, 2], expected [F] or [F, 1]",
            d("vref.safetensors")
        )
    );
    let path = write_raw(
        dir.path(),
        "none.safetensors",
        &[f32s("x", &[1], &[0.0])],
        &[],
    );
    let msg = message(read_v_ref(&path).unwrap_err());
    assert_eq!(
        msg,
        format!(
            "{}: missing tensor `v_ref` (found: x)",
            d("none.safetensors")
        )
    );
}
