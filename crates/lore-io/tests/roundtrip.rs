//! Writing then reading: tensors, metadata, grouping of unsorted rows, precisions.

mod common;

use common::*;
use half::{bf16, f16};
use lore_core::FeatureRows;
use lore_io::{Features, PreferenceFile, TensorFile, TensorWriter};
use safetensors::{Dtype, SafeTensors};

#[test]
fn f32_i64_and_metadata_roundtrip() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("out.safetensors");
    let v: Vec<f32> = (0..12).map(|i| i as f32 * 0.5 - 1.0).collect();
    TensorWriter::new()
        .add_f32("V", &[4, 3], &v)
        .add_i64("kept", &[3], &[1, 0, -7])
        .add_f32("empty", &[0, 3], &[])
        .metadata("method", "lore")
        .metadata("alpha", &0.01)
        .metadata("user_names", &["alice", "bob"])
        .metadata_raw("note", "plain text")
        .write_atomic(&path)
        .unwrap();

    let file = TensorFile::open(&path).unwrap();
    assert_eq!(file.names(), ["V", "empty", "kept"]);
    assert_eq!(file.tensor_f32("V").unwrap(), (vec![4, 3], v));
    assert_eq!(
        file.tensor_indices("kept").unwrap(),
        (vec![3], vec![1, 0, -7])
    );
    assert_eq!(file.tensor_f32("empty").unwrap(), (vec![0, 3], vec![]));
    assert_eq!(file.dtype_name("kept").unwrap(), "I64");
    assert_eq!(file.metadata()["method"], "\"lore\"");
    assert_eq!(file.metadata()["alpha"], "0.01");
    assert_eq!(file.metadata()["format"], "\"lore\"");
    assert_eq!(file.metadata()["format_version"], "1");
    assert_eq!(
        file.metadata_json::<String>("format").unwrap().unwrap(),
        "lore"
    );
    assert_eq!(
        file.metadata_json::<u32>("format_version").unwrap(),
        Some(1)
    );
    assert_eq!(
        file.metadata_json::<Vec<String>>("user_names")
            .unwrap()
            .unwrap(),
        ["alice", "bob"]
    );
    // Not JSON, but accepted as a string.
    assert_eq!(
        file.metadata_json::<String>("note").unwrap().unwrap(),
        "plain text"
    );
    let err = file.metadata_json::<f64>("note").unwrap_err().to_string();
    assert!(
        err.ends_with("out.safetensors: metadata `note`: cannot read \"plain text\": expected value at line 1 column 1"),
        "{err}"
    );

    // The safetensors crate reads the file too; the header is padded to 8 bytes with spaces.
    let bytes = std::fs::read(&path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    assert_eq!(n % 8, 0);
    let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
    assert!(header.trim_end().ends_with('}'));
    assert!(header[header.trim_end().len()..].bytes().all(|b| b == b' '));
    let st = SafeTensors::deserialize(&bytes).unwrap();
    assert_eq!(st.tensor("kept").unwrap().dtype(), Dtype::I64);
    assert_eq!(st.tensor("V").unwrap().shape(), [4, 3]);
}

#[test]
fn output_is_deterministic_and_format_can_be_overridden() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str| {
        let path = dir.path().join(name);
        TensorWriter::new()
            .add_f32("b", &[1], &[1.0])
            .add_f32("a", &[1], &[2.0])
            .metadata("z", &1)
            .metadata("a", &2)
            .metadata("format", "other")
            .write_atomic(&path)
            .unwrap();
        std::fs::read(path).unwrap()
    };
    let (one, two) = (write("1.safetensors"), write("2.safetensors"));
    assert_eq!(one, two);
    let file = TensorFile::open(dir.path().join("1.safetensors")).unwrap();
    assert_eq!(file.metadata()["format"], "\"other\"");
}

#[test]
fn overwrite_replaces_the_file_while_an_old_map_stays_valid() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    TensorWriter::new()
        .add_f32("w", &[2], &[1.0, 2.0])
        .write_atomic(&path)
        .unwrap();
    let old = TensorFile::open(&path).unwrap();
    TensorWriter::new()
        .add_f32("w", &[3], &[3.0, 4.0, 5.0])
        .write_atomic(&path)
        .unwrap();
    assert_eq!(old.tensor_f32("w").unwrap().1, [1.0, 2.0]);
    assert_eq!(
        TensorFile::open(&path).unwrap().tensor_f32("w").unwrap().1,
        [3.0, 4.0, 5.0]
    );
}

#[test]
fn chosen_minus_rejected_gives_x() {
    let dir = tempfile::tempdir().unwrap();
    let chosen = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
    let rejected = [0.5f32, 0.0, -1.0, 4.0, 1.0, 1.0];
    let path = write_raw(
        dir.path(),
        "cr.safetensors",
        &[
            f32s("chosen", &[3, 2], &chosen),
            f32s("rejected", &[3, 2], &rejected),
            i64s("user", &[3], &[0, 1, 1]),
        ],
        &[],
    );
    let prefs = PreferenceFile::load(&path).unwrap();
    assert_eq!(
        (prefs.n_rows(), prefs.n_features(), prefs.n_users()),
        (3, 2, 2)
    );
    assert!(prefs.row_order().is_none());
    assert!(!prefs.is_zero_copy());
    let FeatureRows::F32(x) = prefs.view().features() else {
        panic!("x is not f32")
    };
    assert_eq!(x, [0.5, 2.0, 4.0, 0.0, 4.0, 5.0]);
}

#[test]
fn unsorted_users_are_grouped_stably() {
    let dir = tempfile::tempdir().unwrap();
    // Row i has features [i, 10 i].
    let x: Vec<f32> = (0..6).flat_map(|i| [i as f32, 10.0 * i as f32]).collect();
    let path = dir.path().join("u.safetensors");
    TensorWriter::new()
        .add_f32("x", &[6, 2], &x)
        .add_i64("user", &[6], &[2, 0, 1, 0, 2, 1])
        .metadata("user_ids", &["ann", "bo", "cy"])
        .write_atomic(&path)
        .unwrap();
    let prefs = PreferenceFile::load(&path).unwrap();
    assert_eq!(prefs.row_order(), Some(&[1, 3, 2, 5, 0, 4][..]));
    assert!(!prefs.is_zero_copy());
    assert_eq!(prefs.user_ids().unwrap(), ["ann", "bo", "cy"]);
    let view = prefs.view();
    assert_eq!(view.user_offsets(), [0, 2, 4, 6]);
    let mut scratch = Vec::new();
    assert_eq!(
        view.rows_f32(0..6, &mut scratch),
        [1.0, 10.0, 3.0, 30.0, 2.0, 20.0, 5.0, 50.0, 0.0, 0.0, 4.0, 40.0]
    );
}

#[test]
fn bf16_and_f16_features_keep_their_precision() {
    let dir = tempfile::tempdir().unwrap();
    let values = [1.5f32, -2.0, 0.25, 3.0];
    let b: Vec<bf16> = values.iter().map(|&v| bf16::from_f32(v)).collect();
    let h: Vec<f16> = values.iter().map(|&v| f16::from_f32(v)).collect();

    let path = dir.path().join("b.safetensors");
    TensorWriter::new()
        .add_bf16("x", &[2, 2], &b)
        .add_i64("user", &[2], &[0, 1])
        .write_atomic(&path)
        .unwrap();
    let prefs = PreferenceFile::load(&path).unwrap();
    assert_eq!(prefs.dtype_name(), "bf16");
    assert!(prefs.is_zero_copy());
    assert_eq!(prefs.file().dtype_name("x").unwrap(), "BF16");
    let FeatureRows::Bf16(stored) = prefs.view().features() else {
        panic!("not bf16")
    };
    assert_eq!(stored, b.as_slice());
    assert_eq!(prefs.file().tensor_f32("x").unwrap().1, values);

    // Unsorted bf16 rows are gathered in bf16.
    let path = dir.path().join("b2.safetensors");
    TensorWriter::new()
        .add_features("x", &[2, 2], FeatureRows::Bf16(&b))
        .add_i64("user", &[2], &[1, 0])
        .write_atomic(&path)
        .unwrap();
    let prefs = PreferenceFile::load(&path).unwrap();
    assert_eq!(prefs.dtype_name(), "bf16");
    assert_eq!(prefs.row_order(), Some(&[1, 0][..]));
    let FeatureRows::Bf16(stored) = prefs.features() else {
        panic!("not bf16")
    };
    assert_eq!(stored, [b[2], b[3], b[0], b[1]]);

    let path = dir.path().join("h.safetensors");
    TensorWriter::new()
        .add_f16("x", &[2, 2], &h)
        .add_i64("user", &[2], &[0, 0])
        .write_atomic(&path)
        .unwrap();
    let prefs = PreferenceFile::load(&path).unwrap();
    assert_eq!(prefs.dtype_name(), "f16");
    assert_eq!(prefs.n_users(), 1);
    assert!(prefs.is_zero_copy());
}

#[test]
fn i32_and_u32_users_are_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let x = [1.0f32; 6];
    let a = write_raw(
        dir.path(),
        "i32.safetensors",
        &[f32s("x", &[3, 2], &x), i32s("user", &[3], &[0, 1, 1])],
        &[],
    );
    let b = write_raw(
        dir.path(),
        "u32.safetensors",
        &[f32s("x", &[3, 2], &x), u32s("user", &[3], &[0, 0, 1])],
        &[],
    );
    assert_eq!(
        PreferenceFile::load(a).unwrap().view().user_offsets(),
        [0, 1, 3]
    );
    assert_eq!(
        PreferenceFile::load(b).unwrap().view().user_offsets(),
        [0, 2, 3]
    );
}

#[test]
fn misaligned_features_are_copied() {
    // A header of odd length puts `x` at an odd address: it must be decoded, not borrowed.
    let dir = tempfile::tempdir().unwrap();
    let header = r#"{"user":{"dtype":"I64","shape":[2],"data_offsets":[0,16]},"x":{"dtype":"F32","shape":[2,2],"data_offsets":[16,32]}}"#;
    let header = if header.len() & 1 == 0 {
        format!("{header} ")
    } else {
        header.to_string()
    };
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend(header.as_bytes());
    for u in [0i64, 1] {
        bytes.extend(u.to_le_bytes());
    }
    for v in [1.0f32, 2.0, 3.0, 4.0] {
        bytes.extend(v.to_le_bytes());
    }
    let path = dir.path().join("odd.safetensors");
    std::fs::write(&path, bytes).unwrap();

    let file = TensorFile::open(&path).unwrap();
    let (shape, features) = file.features("x").unwrap();
    assert_eq!(shape, [2, 2]);
    assert!(matches!(features, Features::Owned(_)));
    assert!(!features.is_borrowed());
    let prefs = PreferenceFile::load(&path).unwrap();
    assert!(!prefs.is_zero_copy());
    assert!(prefs.row_order().is_none());
    let mut scratch = Vec::new();
    assert_eq!(
        prefs.view().rows_f32(0..2, &mut scratch),
        [1.0, 2.0, 3.0, 4.0]
    );
}

#[test]
fn typed_readers_widen_every_supported_dtype() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "t.safetensors",
        &[
            raw(
                "f64",
                Dtype::F64,
                &[2],
                [1.5f64, -2.0]
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect(),
            ),
            raw(
                "f16",
                Dtype::F16,
                &[1],
                f16::from_f32(0.5).to_le_bytes().to_vec(),
            ),
            raw("u8", Dtype::U8, &[2], vec![3, 255]),
            raw("i8", Dtype::I8, &[1], vec![0xff]),
            i32s("i32", &[2], &[-4, 9]),
            raw("bool", Dtype::BOOL, &[1], vec![1]),
        ],
        &[],
    );
    let file = TensorFile::open(&path).unwrap();
    assert_eq!(file.tensor_f32("f64").unwrap().1, [1.5, -2.0]);
    assert_eq!(file.tensor_f32("f16").unwrap().1, [0.5]);
    assert_eq!(file.tensor_indices("u8").unwrap().1, [3, 255]);
    assert_eq!(file.tensor_indices("i8").unwrap().1, [-1]);
    assert_eq!(file.tensor_indices("i32").unwrap().1, [-4, 9]);
    let err = file.tensor_f32("i32").unwrap_err().to_string();
    assert!(
        err.ends_with(
            "t.safetensors: tensor `i32` has dtype I32, expected one of F32, F16, BF16, F64"
        ),
        "{err}"
    );
    let err = file.tensor_indices("bool").unwrap_err().to_string();
    assert!(
        err.contains("tensor `bool` has dtype BOOL, expected one of I64"),
        "{err}"
    );
    let err = file.features("f64").unwrap_err().to_string();
    assert!(
        err.contains("tensor `f64` has dtype F64, expected one of F32, F16, BF16"),
        "{err}"
    );
}
