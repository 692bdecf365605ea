//! One test per error class: each message names the file and says what is wrong.

mod common;

use std::path::Path;

use common::*;
use lore_io::{IoError, PreferenceFile, TensorFile};

/// The message of loading `path` as a preference file, which must fail.
fn load_error(path: &Path) -> (IoError, String) {
    let err = PreferenceFile::load(path).unwrap_err();
    let msg = err.to_string();
    assert!(!msg.contains('\n'), "multi-line message: {msg}");
    // The message is complete: no source for a chain printer (`{:#}`) to repeat.
    assert!(std::error::Error::source(&err).is_none(), "{msg}");
    assert!(
        msg.contains(&path.display().to_string()),
        "message does not name the file: {msg}"
    );
    (err, msg)
}

#[test]
fn missing_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.safetensors");
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::Open { .. }));
    assert!(
        msg.starts_with(&format!("cannot open {}: ", path.display())),
        "{msg}"
    );
    assert!(msg.contains("No such file or directory"), "{msg}");
}

#[test]
fn truncated_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "data.safetensors");
    let bytes = std::fs::read(&path).unwrap();
    // Cut in half, in the data, in the header, and inside the length prefix.
    for cut in [bytes.len() / 2, bytes.len() - 4, 20, 3, 0] {
        std::fs::write(&path, &bytes[..cut]).unwrap();
        let (err, msg) = load_error(&path);
        assert!(matches!(err, IoError::Invalid { .. }), "{msg}");
        assert!(
            msg.starts_with(&format!(
                "{} is not a valid safetensors file: ",
                path.display()
            )),
            "{msg}"
        );
        assert!(msg.contains("truncated"), "{msg}");
    }
}

#[test]
fn garbage_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("data.safetensors");
    let garbage: Vec<u8> = (0..1000u32).map(|i| (i * 7919 % 251) as u8).collect();
    std::fs::write(&path, &garbage).unwrap();
    let (_, msg) = load_error(&path);
    assert!(msg.contains("is not a valid safetensors file"), "{msg}");

    // A plausible length followed by something that is not JSON.
    let mut bytes = 16u64.to_le_bytes().to_vec();
    bytes.extend(b"not json at all!");
    std::fs::write(&path, &bytes).unwrap();
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains("is not a valid safetensors file: invalid JSON"),
        "{msg}"
    );

    // A header length past the end of the file.
    let mut bytes = 1_000u64.to_le_bytes().to_vec();
    bytes.extend(b"{}");
    std::fs::write(&path, &bytes).unwrap();
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains("is not a valid safetensors file: header length 1000 runs past the end"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_x() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "data.safetensors",
        &[i64s("user", &[2], &[0, 1]), f32s("w", &[2], &[1.0, 2.0])],
        &[],
    );
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::MissingTensor { .. }));
    assert!(
        msg.ends_with("data.safetensors: missing tensor `x` (found: user, w)"),
        "{msg}"
    );
}

#[test]
fn missing_tensor_user_and_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "a.safetensors",
        &[f32s("x", &[1, 1], &[1.0])],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.ends_with("a.safetensors: missing tensor `user` (found: x)"),
        "{msg}"
    );

    let path = write_raw(
        dir.path(),
        "b.safetensors",
        &[f32s("chosen", &[1, 1], &[1.0]), i64s("user", &[1], &[0])],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.ends_with("b.safetensors: missing tensor `rejected` (found: chosen, user)"),
        "{msg}"
    );
}

#[test]
fn wrong_dtype_for_user_and_x() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "data.safetensors",
        &[
            f32s("x", &[2, 1], &[1.0, 2.0]),
            f32s("user", &[2], &[0.0, 1.0]),
        ],
        &[],
    );
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::Dtype { .. }));
    assert!(
        msg.ends_with(
            "data.safetensors: tensor `user` has dtype F32, expected one of I64, I32, U32"
        ),
        "{msg}"
    );

    let path = write_raw(
        dir.path(),
        "x.safetensors",
        &[i64s("x", &[2, 1], &[1, 2]), i64s("user", &[2], &[0, 1])],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.ends_with("x.safetensors: tensor `x` has dtype I64, expected one of F32, F16, BF16"),
        "{msg}"
    );
}

#[test]
fn user_length_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "data.safetensors",
        &[
            f32s("x", &[5, 1], &[1.0; 5]),
            i64s("user", &[3, 2], &[0; 6]),
        ],
        &[],
    );
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::Shape { .. }));
    assert!(
        msg.contains("data.safetensors: tensor `user` has shape [3, 2], expected [P] with P = 5"),
        "{msg}"
    );

    let path = write_raw(
        dir.path(),
        "short.safetensors",
        &[f32s("x", &[5, 1], &[1.0; 5]), i64s("user", &[4], &[0; 4])],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains("tensor `user` has shape [4], expected [P] with P = 5"),
        "{msg}"
    );
}

#[test]
fn x_not_2d() {
    let dir = tempfile::tempdir().unwrap();
    for (file, shape) in [
        ("one.safetensors", vec![6]),
        ("three.safetensors", vec![1, 2, 3]),
    ] {
        let path = write_raw(
            dir.path(),
            file,
            &[f32s("x", &shape, &[1.0; 6]), i64s("user", &[1], &[0])],
            &[],
        );
        let (err, msg) = load_error(&path);
        assert!(matches!(err, IoError::Shape { .. }));
        assert!(
            msg.contains(&format!(
                "{file}: tensor `x` has shape {shape:?}, expected 2-D [P, F]"
            )),
            "{msg}"
        );
    }
}

#[test]
fn chosen_and_rejected_shapes_differ() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "data.safetensors",
        &[
            f32s("chosen", &[2, 2], &[1.0; 4]),
            f32s("rejected", &[2, 1], &[1.0; 2]),
            i64s("user", &[2], &[0, 1]),
        ],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains(
            "data.safetensors: tensor `rejected` has shape [2, 1], expected [2, 2] like `chosen`"
        ),
        "{msg}"
    );
}

#[test]
fn nan_in_x() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "data.safetensors",
        &[
            f32s("x", &[3, 2], &[1.0, 2.0, 3.0, 4.0, 5.0, f32::NAN]),
            i64s("user", &[3], &[0, 0, 1]),
        ],
        &[],
    );
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::Core { .. }));
    assert!(
        msg.contains("data.safetensors: feature value at row 2, column 1 is NaN"),
        "{msg}"
    );

    // After grouping, the row is still the row of the file.
    let path = write_raw(
        dir.path(),
        "unsorted.safetensors",
        &[
            f32s("x", &[3, 1], &[f32::INFINITY, 2.0, 3.0]),
            i64s("user", &[3], &[1, 0, 0]),
        ],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains("unsorted.safetensors: feature value at row 0, column 0 is inf"),
        "{msg}"
    );
}

#[test]
fn empty_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "data.safetensors",
        &[
            f32s("x", &[3, 1], &[1.0; 3]),
            i64s("user", &[3], &[0, 2, 2]),
        ],
        &[],
    );
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::Core { .. }));
    assert!(
        msg.contains("data.safetensors: user 1 has no rows"),
        "{msg}"
    );

    // An index far beyond P is reported the same way, without a huge allocation.
    let path = write_raw(
        dir.path(),
        "far.safetensors",
        &[
            f32s("x", &[2, 1], &[1.0; 2]),
            i64s("user", &[2], &[0, 4_000_000_000]),
        ],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(msg.contains("far.safetensors: user 1 has no rows"), "{msg}");
}

#[test]
fn negative_or_huge_user() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "data.safetensors",
        &[
            f32s("x", &[3, 1], &[1.0; 3]),
            i64s("user", &[3], &[0, -1, 1]),
        ],
        &[],
    );
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::Value { .. }));
    assert!(
        msg.contains("data.safetensors: tensor `user`: row 1 has negative user index -1"),
        "{msg}"
    );

    let path = write_raw(
        dir.path(),
        "huge.safetensors",
        &[f32s("x", &[1, 1], &[1.0]), i64s("user", &[1], &[1 << 40])],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains("huge.safetensors: tensor `user`: row 0 has user index"),
        "{msg}"
    );
}

#[test]
fn user_ids_of_wrong_length_or_type() {
    let dir = tempfile::tempdir().unwrap();
    let tensors = [
        f32s("x", &[3, 1], &[1.0; 3]),
        i64s("user", &[3], &[0, 1, 1]),
    ];
    let path = write_raw(
        dir.path(),
        "data.safetensors",
        &tensors,
        &[("user_ids", r#"["alice","bob","carol"]"#)],
    );
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::Metadata { .. }));
    assert!(
        msg.contains("data.safetensors: metadata `user_ids`: has 3 names but the file has 2 users"),
        "{msg}"
    );

    let path = write_raw(
        dir.path(),
        "num.safetensors",
        &tensors,
        &[("user_ids", "[1, 2]")],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains("num.safetensors: metadata `user_ids`: expected a JSON array of N user names: invalid type: integer `1`"),
        "{msg}"
    );

    let path = write_raw(
        dir.path(),
        "dup.safetensors",
        &tensors,
        &[("user_ids", r#"["a","a"]"#)],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains("dup.safetensors: metadata `user_ids`: name \"a\" appears more than once"),
        "{msg}"
    );
}

#[test]
fn no_rows_or_no_features() {
    let dir = tempfile::tempdir().unwrap();
    let path = write_raw(
        dir.path(),
        "empty.safetensors",
        &[f32s("x", &[0, 3], &[]), i64s("user", &[0], &[])],
        &[],
    );
    let (err, msg) = load_error(&path);
    assert!(matches!(err, IoError::Core { .. }));
    assert!(
        msg.contains("empty.safetensors: shape mismatch: no preference rows"),
        "{msg}"
    );

    let path = write_raw(
        dir.path(),
        "nofeat.safetensors",
        &[f32s("x", &[2, 0], &[]), i64s("user", &[2], &[0, 0])],
        &[],
    );
    let (_, msg) = load_error(&path);
    assert!(
        msg.contains("nofeat.safetensors: shape mismatch: features have 0 columns"),
        "{msg}"
    );
}

#[test]
fn tensor_file_lookups_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let path = valid_file(dir.path(), "data.safetensors");
    let file = TensorFile::open(&path).unwrap();
    for err in [
        file.shape("nope").unwrap_err(),
        file.dtype_name("nope").unwrap_err(),
        file.tensor_f32("nope").unwrap_err(),
    ] {
        assert!(
            err.to_string()
                .ends_with("data.safetensors: missing tensor `nope` (found: user, x)"),
            "{err}"
        );
    }
}
