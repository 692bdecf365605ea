//! Files kept in memory (the Python package's models and users): `ModelFile::writer` and
//! `UsersFile::writer` encode exactly the bytes `write` puts on disk, and
//! `TensorFile::from_bytes` reads them back as `open` reads the file.

use std::path::Path;

use lore_core::{FitParams, FittedModel, Method, PersonalizeParams, RewardBasis, UserWeights};
use lore_io::{
    FitProvenance, IoError, ModelFile, TensorFile, TensorWriter, UsersFile, UsersProvenance,
};

fn model() -> FittedModel {
    let basis = RewardBasis::new(3, 2, vec![0.5, -1.0, 2.0, 0.0, 1.5, -0.25], 0.02).unwrap();
    FittedModel {
        basis: basis.clone(),
        users: UserWeights::from_logits(2, 2, vec![0.1, -0.3, 1.0, 0.0]).unwrap(),
        kept: vec![0, 1],
        unpruned_basis: basis.values().to_vec(),
        unpruned_logits: vec![0.1, -0.3, 1.0, 0.0],
        steps: 7,
    }
}

#[test]
fn a_model_encoded_in_memory_is_the_file_write_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let (model, params) = (model(), FitParams::new(Method::Lore, 2).check().unwrap());
    let ids = ["ann".to_string(), "bob".to_string()];
    let provenance = FitProvenance {
        data: Path::new("train.safetensors"),
        user_ids: Some(&ids),
        v_ref: Some(&[1.0, 0.0, -1.0]),
        v_ref_from_bt: true,
        initialized_from: None,
        early_stopping: None,
        embedder: None,
    };
    ModelFile::write(&path, &model, &params, &provenance).unwrap();
    let bytes = ModelFile::writer(&path, &model, &params, &provenance)
        .unwrap()
        .encode(&path)
        .unwrap();
    assert_eq!(bytes, std::fs::read(&path).unwrap());

    let in_memory = ModelFile::from_file(TensorFile::from_bytes("(memory)", &bytes).unwrap());
    let on_disk = ModelFile::open(&path).unwrap();
    assert_eq!(in_memory.path(), Path::new("(memory)"));
    assert_eq!(in_memory.basis(None).unwrap(), on_disk.basis(None).unwrap());
    assert_eq!(
        in_memory.users().unwrap().weights,
        on_disk.users().unwrap().weights
    );
    assert_eq!(in_memory.v_ref().unwrap(), Some(vec![1.0, 0.0, -1.0]));
    assert_eq!(in_memory.file().metadata(), on_disk.file().metadata());
}

#[test]
fn users_encoded_in_memory_are_the_file_write_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("users.safetensors");
    let model = model();
    let params = PersonalizeParams::default().check().unwrap();
    let provenance = UsersProvenance {
        model: Path::new("model.safetensors"),
        data: Path::new("new.safetensors"),
        user_ids: None,
        early_stopping: None,
        embedder: None,
    };
    UsersFile::write(&path, &model.users, &params, &model.basis, &provenance).unwrap();
    let bytes = UsersFile::writer(&model.users, &params, &model.basis, &provenance)
        .encode(&path)
        .unwrap();
    assert_eq!(bytes, std::fs::read(&path).unwrap());
    let read = UsersFile::from_file(TensorFile::from_bytes(&path, &bytes).unwrap());
    assert_eq!(read.users().unwrap().weights, model.users);
}

#[test]
fn bad_bytes_and_bad_tensors_are_errors_naming_the_file() {
    let err = TensorFile::from_bytes("(memory)", b"not a safetensors file").unwrap_err();
    assert!(matches!(err, IoError::Invalid { .. }), "{err}");
    assert!(err.to_string().contains("(memory)"), "{err}");
    let mut writer = TensorWriter::new();
    writer.add_parameter_f32("V", &[1], &[f32::NAN]);
    let err = writer.encode("(memory)").unwrap_err();
    assert!(matches!(err, IoError::Encode { .. }), "{err}");
}
