//! Atomic writing: no temporary file survives, a failed write creates nothing.

use lore_io::{write_bytes_atomic, IoError, TensorFile, TensorWriter};

fn entries(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn no_temporary_file_remains() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("model.safetensors");
    let mut writer = TensorWriter::new();
    writer.add_f32("V", &[2, 2], &[1.0, 2.0, 3.0, 4.0]);
    writer.write_atomic(&path).unwrap();
    writer.write_atomic(&path).unwrap();
    assert_eq!(entries(dir.path()), ["model.safetensors"]);
    assert_eq!(TensorFile::open(&path).unwrap().shape("V").unwrap(), [2, 2]);
}

#[test]
fn missing_directory_is_a_write_error_and_creates_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("absent").join("out.safetensors");
    let err = TensorWriter::new()
        .add_i64("kept", &[1], &[1])
        .write_atomic(&path)
        .unwrap_err();
    assert!(matches!(err, IoError::Write { .. }));
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!("cannot write {}: ", path.display())),
        "{msg}"
    );
    assert!(msg.contains("No such file or directory"), "{msg}");
    assert!(entries(dir.path()).is_empty());
}

#[test]
fn failed_rename_removes_the_temporary_file() {
    // The target is a directory: the rename fails after the temporary file was written.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("taken.safetensors");
    std::fs::create_dir(&target).unwrap();
    std::fs::write(target.join("keep"), b"x").unwrap();
    let err = TensorWriter::new()
        .add_f32("w", &[1], &[1.0])
        .write_atomic(&target)
        .unwrap_err();
    assert!(err.to_string().starts_with("cannot write "), "{err}");
    assert_eq!(entries(dir.path()), ["taken.safetensors"]);
}

#[test]
#[cfg_attr(
    debug_assertions,
    should_panic(expected = "does not hold the 3 values")
)]
fn shape_mismatch_is_reported_by_write() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.safetensors");
    let err = TensorWriter::new()
        .add_f32("w", &[2, 2], &[1.0, 2.0, 3.0])
        .write_atomic(&path)
        .unwrap_err();
    assert!(matches!(err, IoError::Encode { .. }));
    assert!(
        err.to_string().ends_with(
            "bad.safetensors: tensor `w`: shape [2, 2] does not hold the 3 values given"
        ),
        "{err}"
    );
    assert!(entries(dir.path()).is_empty());
}

#[test]
#[cfg_attr(debug_assertions, should_panic(expected = "added twice"))]
fn duplicate_name_is_reported_by_write() {
    let dir = tempfile::tempdir().unwrap();
    let err = TensorWriter::new()
        .add_f32("w", &[1], &[1.0])
        .add_i64("w", &[1], &[1])
        .write_atomic(dir.path().join("dup.safetensors"))
        .unwrap_err();
    assert!(
        err.to_string().contains("tensor `w` was added twice"),
        "{err}"
    );
}

#[test]
fn bytes_are_written_atomically() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.jsonl");
    write_bytes_atomic(&path, b"{\"step\":1}\n").unwrap();
    write_bytes_atomic(&path, b"{\"step\":2}\n").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"{\"step\":2}\n");
    assert_eq!(entries(dir.path()), ["trace.jsonl"]);

    let missing = dir.path().join("nope").join("trace.jsonl");
    let err = write_bytes_atomic(&missing, b"x").unwrap_err().to_string();
    assert!(
        err.starts_with(&format!("cannot write {}: ", missing.display())),
        "{err}"
    );
    assert_eq!(entries(dir.path()), ["trace.jsonl"]);
}
