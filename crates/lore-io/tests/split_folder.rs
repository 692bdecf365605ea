//! The split folder: sets written from row indices read back, users matched by id or index,
//! rows of a file carried along, and the messages for folders that are not split folders.

mod common;

use common::*;
use lore_core::FeatureRows;
use lore_io::{FileRows, MemoryRows, SetRows, SplitFolder, TensorFile};
use serde_json::json;

/// Six rows of F = 2 (row r is [r, -r]) from three source users with ids, prompts per row.
const X: [f32; 12] = [0., 0., 1., -1., 2., -2., 3., -3., 4., -4., 5., -5.];
const PROMPTS: [u32; 6] = [0, 1, 0, 1, 2, 2];

fn ids() -> Vec<String> {
    ["ann", "bob", "cy"].map(String::from).to_vec()
}

/// Writes a folder: seen users are source users 2 and 0, unseen user 1; tests hold the seen
/// users in the other order (matched by id).
fn write_folder(dir: &std::path::Path) {
    let source = MemoryRows {
        features: FeatureRows::F32(&X),
        n_features: 2,
        prompts: Some(&PROMPTS),
    };
    let ids = ids();
    let sets: [(&str, SetRows); 4] = [
        (
            "seen_train",
            SetRows {
                rows: &[4, 0],
                users: &[0, 1],
                owners: &[2, 0],
            },
        ),
        (
            "seen_test",
            SetRows {
                rows: &[1, 5],
                users: &[0, 1],
                owners: &[0, 2],
            },
        ),
        (
            "unseen_train",
            SetRows {
                rows: &[2],
                users: &[0],
                owners: &[1],
            },
        ),
        (
            "unseen_test",
            SetRows {
                rows: &[3],
                users: &[0],
                owners: &[1],
            },
        ),
    ];
    for (name, set) in &sets {
        SplitFolder::write_set(dir, name, set, &source, Some(&ids)).unwrap();
    }
}

#[test]
fn split_folder_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path());
    SplitFolder::write_v_ref(dir.path(), &[0.5, 0.25], "a test").unwrap();
    SplitFolder::write_split_json(dir.path(), &json!({ "counts": { "seen_users": 2 } })).unwrap();

    let folder = SplitFolder::open(dir.path()).unwrap();
    assert_eq!(folder.dir(), dir.path());
    assert_eq!(folder.n_features(), 2);
    assert_eq!(folder.test_user_maps().unwrap(), (vec![1, 0], vec![0]));
    let train = folder.seen_train();
    assert_eq!(train.user_ids().unwrap(), ["cy", "ann"]);
    assert!(matches!(train.features(), FeatureRows::F32(x) if x == [4., -4., 0., 0.]));
    let file = train.file();
    assert_eq!(file.tensor_indices("source_row").unwrap().1, vec![4, 0]);
    assert_eq!(file.tensor_indices("prompt_id").unwrap().1, vec![2, 0]);
    assert_eq!(
        file.metadata_json::<Vec<u32>>("source_users").unwrap(),
        Some(vec![2, 0])
    );
    assert_eq!(
        file.metadata_json::<String>("set").unwrap().as_deref(),
        Some("seen_train")
    );

    let (v_ref, path) = folder.v_ref(None).unwrap().unwrap();
    assert_eq!(v_ref, vec![0.5, 0.25]);
    assert_eq!(path, dir.path().join(SplitFolder::V_REF_FILE));
    assert_eq!(
        folder.describe(),
        "2 seen users (2 training, 2 test pairs), 1 unseen users (1 few-shot, 1 test pairs), F = 2"
    );
    let text = std::fs::read_to_string(dir.path().join(SplitFolder::SPLIT_JSON)).unwrap();
    assert_eq!(text, "{\n  \"counts\": {\n    \"seen_users\": 2\n  }\n}\n");
}

#[test]
fn file_rows_carry_per_row_tensors_and_metadata() {
    let dir = tempfile::tempdir().unwrap();
    let source = write_raw(
        dir.path(),
        "source.safetensors",
        &[
            f32s("x", &[3, 2], &[1., 2., 3., 4., 5., 6.]),
            i64s("user", &[3], &[0, 1, 1]),
            i32s("pair_id", &[3], &[7, 8, 9]),
            f32s("v_ref", &[3], &[0.0; 3]),
            raw("flag", safetensors::Dtype::BOOL, &[3], vec![1, 0, 1]),
        ],
        &[("prompt_ids", "[\"p\", \"q\", \"r\"]")],
    );
    let file = TensorFile::open(&source).unwrap();
    let rows = FileRows::new(&file, 3).unwrap();
    assert_eq!(rows.skipped(), ["flag (BOOL)"]);
    let set = SetRows {
        rows: &[2, 0],
        users: &[0, 1],
        owners: &[1, 0],
    };
    SplitFolder::write_set(dir.path(), "seen_train", &set, &rows, None).unwrap();
    let out = TensorFile::open(SplitFolder::set_path(dir.path(), "seen_train")).unwrap();
    assert_eq!(out.tensor_f32("x").unwrap().1, vec![5., 6., 1., 2.]);
    assert_eq!(out.tensor_indices("pair_id").unwrap().1, vec![9, 7]);
    assert_eq!(out.tensor_indices("user").unwrap().1, vec![0, 1]);
    assert!(!out.has("v_ref") && !out.has("flag"));
    assert_eq!(
        out.metadata_json::<Vec<String>>("prompt_ids").unwrap(),
        Some(vec!["r".to_string(), "p".to_string()])
    );
    assert!(!out.metadata().contains_key("user_ids"));
}

#[test]
fn not_a_split_folder() {
    let dir = tempfile::tempdir().unwrap();
    let file = valid_file(dir.path(), "data.safetensors");
    let msg = SplitFolder::open(&file).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{} is not a folder (give a split folder made by `lore split` or `lore simulate`)",
            file.display()
        )
    );
    let msg = SplitFolder::open(dir.path()).unwrap_err().to_string();
    assert_eq!(
        msg,
        format!(
            "{} is not a split folder: {} is missing (make one with `lore split` or `lore \
             simulate`)",
            dir.path().display(),
            dir.path().join("seen_train.safetensors").display()
        )
    );
}

#[test]
fn mismatched_sets() {
    let dir = tempfile::tempdir().unwrap();
    write_folder(dir.path());
    // A test user who is not among the training users.
    let source = MemoryRows {
        features: FeatureRows::F32(&X),
        n_features: 2,
        prompts: None,
    };
    let ids = ids();
    let set = SetRows {
        rows: &[3],
        users: &[0],
        owners: &[0],
    };
    SplitFolder::write_set(dir.path(), "unseen_test", &set, &source, Some(&ids)).unwrap();
    let folder = SplitFolder::open(dir.path()).unwrap();
    let train = dir.path().join("unseen_train.safetensors");
    let test = dir.path().join("unseen_test.safetensors");
    assert_eq!(
        folder.test_user_maps().unwrap_err().to_string(),
        format!(
            "{}: user `ann` is not in {}",
            test.display(),
            train.display()
        )
    );

    // Ids on one side only: refused (matching by index would ignore the names).
    let set = SetRows {
        rows: &[3, 4],
        users: &[0, 1],
        owners: &[0, 1],
    };
    SplitFolder::write_set(dir.path(), "unseen_test", &set, &source, None).unwrap();
    let folder = SplitFolder::open(dir.path()).unwrap();
    assert_eq!(
        folder.test_user_maps().unwrap_err().to_string(),
        format!(
            "{}: {} has metadata `user_ids` but {} has none: test users cannot be matched to \
             training users by name (give both sets `user_ids`, or neither to match by index)",
            test.display(),
            train.display(),
            test.display()
        )
    );

    // Without ids, more test users than training users.
    let train_set = SetRows {
        rows: &[2],
        users: &[0],
        owners: &[1],
    };
    SplitFolder::write_set(dir.path(), "unseen_train", &train_set, &source, None).unwrap();
    let folder = SplitFolder::open(dir.path()).unwrap();
    assert_eq!(
        folder.test_user_maps().unwrap_err().to_string(),
        format!(
            "{} has 2 users but {} has 1 (without `user_ids`, users are matched by index)",
            test.display(),
            train.display()
        )
    );

    // A set with another feature dimension, and a v_ref of another length.
    let wide = MemoryRows {
        features: FeatureRows::F32(&X),
        n_features: 3,
        prompts: None,
    };
    let set = SetRows {
        rows: &[0],
        users: &[0],
        owners: &[0],
    };
    SplitFolder::write_set(dir.path(), "unseen_test", &set, &wide, None).unwrap();
    let folder = SplitFolder::open(dir.path()).unwrap();
    assert_eq!(
        folder.test_user_maps().unwrap_err().to_string(),
        format!(
            "{} has F = 3 features but {} has F = 2",
            test.display(),
            dir.path().join("seen_train.safetensors").display()
        )
    );
    SplitFolder::write_v_ref(dir.path(), &[1.0; 3], "a test").unwrap();
    let v_ref = dir.path().join("v_ref.safetensors");
    assert_eq!(
        folder.v_ref(None).unwrap_err().to_string(),
        format!(
            "{}: `v_ref` has F = 3, but the sets have F = 2",
            v_ref.display()
        )
    );
}
