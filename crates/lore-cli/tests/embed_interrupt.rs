//! Ctrl-C during `lore embed` stops the run and leaves no output file, not even a partial or
//! temporary one.
#![cfg(all(feature = "embed", unix))]

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn interrupt_leaves_no_output() {
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama-rm");
    assert!(
        model.join("model.safetensors").is_file(),
        "fixture missing: {}",
        model.display()
    );
    let dir = tempfile::TempDir::new().unwrap();
    let input = dir.path().join("pairs.jsonl");
    // Enough distinct texts that embedding takes far longer than the wait below.
    let mut file = std::io::BufWriter::new(std::fs::File::create(&input).unwrap());
    for i in 0..100_000 {
        writeln!(
            file,
            r#"{{"user_id": "u{}", "prompt": "Question number {i}?", "chosen": "Answer {i} is yes, of course.", "rejected": "Answer {i} is no, not at all."}}"#,
            i % 100
        )
        .unwrap();
    }
    drop(file);
    let out = dir.path().join("prefs.safetensors");
    let mut child = Command::new(env!("CARGO_BIN_EXE_lore"))
        .args(["embed", "--model", model.to_str().unwrap(), "--input"])
        .arg(&input)
        .arg("--out")
        .arg(&out)
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let started = Instant::now();
    let output = loop {
        if child.try_wait().unwrap().is_some() {
            break child.wait_with_output().unwrap();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "lore did not stop after Ctrl-C"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "the run finished before the interrupt: {stderr}"
    );
    assert!(
        stderr.contains("interrupted; nothing was written"),
        "{stderr}"
    );
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["pairs.jsonl"]);
}
