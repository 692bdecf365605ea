//! Data that lies, end to end: `lore check-data` lists the signs of leakage and broken
//! preparation; `embed`, `fit`, `personalize` and `split` warn about them as they run; a split
//! folder whose test users cannot be matched is refused; folders and FIFOs given as input files
//! are named as such.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::{one_line_error, path, run, run_ok};
use lore_io::{SplitFolder, TensorFile, TensorWriter};
use serde_json::{json, Value};

/// Writes a preference file: `x` [P, F], `user` [P], and metadata.
fn write_prefs(file: &Path, x: &[f32], f: usize, users: &[i64], meta: &[(&str, Value)]) {
    let mut w = TensorWriter::new();
    w.add_f32("x", &[users.len(), f], x)
        .add_i64("user", &[users.len()], users);
    for (key, value) in meta {
        w.metadata(*key, value);
    }
    w.write_atomic(file).unwrap();
}

/// Distinct, non-zero rows of `f` features.
fn rows(p: usize, f: usize) -> Vec<f32> {
    (0..p * f)
        .map(|i| ((i * 37 % 101) as f32 - 50.5) / 10.0)
        .collect()
}

/// A file with every defect of a preference file: 12 rows of 4 users where user 1 holds 7
/// rows, rows 2 and 5 are all zeros, and pair id "p3" appears twice.
fn lying_prefs(dir: &Path) -> String {
    let f = 4;
    let mut x = rows(12, f);
    for row in [2, 5] {
        x[row * f..(row + 1) * f].fill(0.0);
    }
    let users = [0, 1, 1, 1, 1, 1, 1, 1, 2, 2, 3, 3];
    let ids: Vec<String> = (0..12)
        .map(|i| format!("p{}", if i == 7 { 3 } else { i }))
        .collect();
    let file = path(dir, "lying.safetensors");
    write_prefs(
        Path::new(&file),
        &x,
        f,
        &users,
        &[
            ("pair_ids", json!(ids)),
            ("user_ids", json!(["ann", "bob", "cy", "dee"])),
        ],
    );
    file
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).unwrap()
}

/// The findings of `lore check-data ARGS --json` (which must exit with `success`).
fn findings(args: &[&str], success: bool) -> Value {
    let mut all = args.to_vec();
    all.push("--json");
    let out = run(&all);
    assert_eq!(
        out.status.success(),
        success,
        "lore {all:?}: {}",
        stderr(&out)
    );
    serde_json::from_str(stdout(&out).trim()).expect("--json prints one JSON object")
}

fn kinds(report: &Value) -> Vec<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

fn finding<'a>(report: &'a Value, kind: &str) -> &'a Value {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["kind"] == kind)
        .unwrap_or_else(|| panic!("no {kind} in {report}"))
}

#[test]
fn preference_file_zero_rows_duplicate_ids_and_dominant_user() {
    let dir = tempfile::tempdir().unwrap();
    let data = lying_prefs(dir.path());

    let report = findings(&["check-data", "--data", &data], true);
    assert_eq!(
        kinds(&report),
        ["zero-rows", "duplicate-pair-ids", "dominant-user"]
    );
    assert_eq!(report["warnings"], 3);
    assert_eq!(report["kind"], "preferences");
    let zero = finding(&report, "zero-rows");
    assert_eq!(
        (zero["count"].as_u64(), zero["total"].as_u64()),
        (Some(2), Some(12))
    );
    let dup = finding(&report, "duplicate-pair-ids");
    assert!(
        dup["message"]
            .as_str()
            .unwrap()
            .contains("\"p3\" at rows 3 and 7"),
        "{dup}"
    );
    let dominant = finding(&report, "dominant-user");
    assert!(
        dominant["message"]
            .as_str()
            .unwrap()
            .contains("\"bob\" holds 7 of 12"),
        "{dominant}"
    );

    // The table, and exit 0 with warnings only.
    let table = stdout(&run_ok(&["check-data", "--data", &data]));
    assert!(table.contains("12 rows of 4 users, F = 4"), "{table}");
    for kind in ["zero-rows", "duplicate-pair-ids", "dominant-user"] {
        assert!(table.contains(kind), "{table}");
    }
    // --strict turns the warnings into exit 1, with one error line.
    let err = one_line_error(&["check-data", "--strict", "--data", &data]);
    assert!(
        err.contains("3 warning(s)") && err.contains("--strict"),
        "{err}"
    );

    // A clean file: no findings, --strict passes.
    let clean = path(dir.path(), "clean.safetensors");
    write_prefs(Path::new(&clean), &rows(6, 4), 4, &[0, 0, 1, 1, 2, 2], &[]);
    let report = findings(&["check-data", "--strict", "--data", &clean], true);
    assert_eq!(kinds(&report), Vec::<String>::new());
    assert!(stdout(&run_ok(&["check-data", "--data", &clean])).contains("no findings"));
}

#[test]
fn fit_and_personalize_warn() {
    let dir = tempfile::tempdir().unwrap();
    let data = lying_prefs(dir.path());
    let model = path(dir.path(), "model.safetensors");
    let fit = run_ok(&[
        "fit",
        "--data",
        &data,
        "--rank",
        "2",
        "--iterations",
        "3",
        "--out",
        &model,
    ]);
    let notes = stderr(&fit);
    for expected in [
        "warning: ",
        "2 of 12 rows are all zeros",
        "repeat an earlier pair id",
        "\"bob\" holds 7 of 12 rows",
    ] {
        assert!(
            notes.contains(expected),
            "fit: {expected:?} missing in:\n{notes}"
        );
    }
    let users = path(dir.path(), "users.safetensors");
    let personalize = run_ok(&[
        "personalize",
        "--model",
        &model,
        "--data",
        &data,
        "--iterations",
        "3",
        "--out",
        &users,
    ]);
    let notes = stderr(&personalize);
    assert!(
        notes.contains("warning: ") && notes.contains("all zeros"),
        "{notes}"
    );
    // Warnings are notes: --quiet silences them.
    let quiet = run_ok(&[
        "fit",
        "-q",
        "--data",
        &data,
        "--rank",
        "2",
        "--iterations",
        "3",
        "--out",
        &model,
    ]);
    assert!(stderr(&quiet).is_empty(), "{}", stderr(&quiet));
}

/// A source whose rows are each written twice for the same user (a duplicated export): 6
/// users of 8 rows (4 distinct).
fn duplicated_source(dir: &Path) -> String {
    let f = 3;
    let distinct = rows(24, f);
    let mut x = Vec::new();
    let mut users = Vec::new();
    for u in 0..6 {
        for k in 0..4 {
            let r = u * 4 + k;
            for _ in 0..2 {
                x.extend_from_slice(&distinct[r * f..(r + 1) * f]);
                users.push(u as i64);
            }
        }
    }
    let ids: Vec<String> = (0..6).map(|u| format!("user{u}")).collect();
    let file = path(dir, "dup.safetensors");
    write_prefs(Path::new(&file), &x, f, &users, &[("user_ids", json!(ids))]);
    file
}

#[test]
fn split_warns_about_the_same_pair_in_train_and_test() {
    let dir = tempfile::tempdir().unwrap();
    let data = duplicated_source(dir.path());
    let splits = path(dir.path(), "splits");
    let out = run_ok(&[
        "split",
        "--data",
        &data,
        "--unseen-fraction",
        "0.34",
        "--shots",
        "4",
        "--out",
        &splits,
    ]);
    let notes = stderr(&out);
    assert!(
        notes.contains("warning: ") && notes.contains("repeat a training row of the same user"),
        "{notes}"
    );
    let report = findings(&["check-data", "--splits", &splits], true);
    let overlap = finding(&report, "train-test-overlap");
    assert!(overlap["count"].as_u64().unwrap() > 0, "{overlap}");
    assert_eq!(report["kind"], "split folder");
    let err = one_line_error(&["check-data", "--strict", "--splits", &splits]);
    assert!(err.contains("warning(s)"), "{err}");

    // Without duplicates, a split is clean.
    let clean = path(dir.path(), "clean.safetensors");
    let users: Vec<i64> = (0..48).map(|i| i / 8).collect();
    write_prefs(Path::new(&clean), &rows(48, 3), 3, &users, &[]);
    let clean_splits = path(dir.path(), "clean_splits");
    let out = run_ok(&[
        "split",
        "--data",
        &clean,
        "--unseen-fraction",
        "0.34",
        "--shots",
        "4",
        "--out",
        &clean_splits,
    ]);
    assert!(!stderr(&out).contains("warning"), "{}", stderr(&out));
    let report = findings(&["check-data", "--strict", "--splits", &clean_splits], true);
    assert_eq!(kinds(&report), Vec::<String>::new());
}

#[test]
fn one_sided_user_ids_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let data = path(dir.path(), "named.safetensors");
    let users: Vec<i64> = (0..48).map(|i| i / 8).collect();
    let ids: Vec<String> = (0..6).map(|u| format!("user{u}")).collect();
    write_prefs(
        Path::new(&data),
        &rows(48, 3),
        3,
        &users,
        &[("user_ids", json!(ids))],
    );
    let splits = path(dir.path(), "splits");
    run_ok(&[
        "split",
        "-q",
        "--data",
        &data,
        "--unseen-fraction",
        "0.34",
        "--shots",
        "4",
        "--out",
        &splits,
    ]);
    // Rewrite seen_test without `user_ids` (as a hand-made set would be).
    let set = SplitFolder::set_path(Path::new(&splits), "seen_test");
    let file = TensorFile::open(&set).unwrap();
    let (shape, x) = file.tensor_f32("x").unwrap();
    let (_, user) = file.tensor_indices("user").unwrap();
    drop(file);
    TensorWriter::new()
        .add_f32("x", &shape, &x)
        .add_i64("user", &[user.len()], &user)
        .write_atomic(&set)
        .unwrap();

    let report = findings(&["check-data", "--splits", &splits], false);
    let one_sided = finding(&report, "one-sided-user-ids");
    assert_eq!(one_sided["severity"], "error");
    assert_eq!(report["errors"], 1);
    let err = one_line_error(&["check-data", "--splits", &splits]);
    assert!(err.contains("cannot be matched"), "{err}");

    // The experiments refuse it rather than matching users by index.
    let out_dir = path(dir.path(), "sweep");
    let err = one_line_error(&[
        "sweep", "--splits", &splits, "--ranks", "1", "--out", &out_dir,
    ]);
    assert!(
        err.contains("has metadata `user_ids` but") && err.contains("cannot be matched"),
        "{err}"
    );
}

/// 24 pairs of 4 users whose chosen response is a Python list written as its string (and so
/// always the longer text); one pair has identical sides, pair id "r1" appears twice.
fn lying_jsonl(dir: &Path) -> String {
    let mut text = String::new();
    for i in 0..24 {
        let chosen = format!("['Sure, here is answer number {i}.']");
        let rejected = if i == 5 {
            chosen.clone()
        } else {
            format!("No {i}.")
        };
        let id = if i == 9 { 1 } else { i };
        let line = json!({
            "user_id": format!("u{}", i % 4), "prompt": format!("question {i}"),
            "chosen": chosen, "rejected": rejected, "pair_id": format!("r{id}"),
        });
        text.push_str(&format!("{line}\n"));
    }
    let file = path(dir, "pairs.jsonl");
    std::fs::write(&file, text).unwrap();
    file
}

#[cfg(feature = "embed")]
#[test]
fn text_pairs_checked_without_a_model() {
    let dir = tempfile::tempdir().unwrap();
    let pairs = lying_jsonl(dir.path());
    let report = findings(&["check-data", "--data", &pairs], true);
    assert_eq!(report["kind"], "text pairs");
    assert_eq!(
        kinds(&report),
        [
            "serialized-text",
            "identical-texts",
            "longer-wins",
            "duplicate-pair-ids"
        ]
    );
    let serialized = finding(&report, "serialized-text");
    assert_eq!(serialized["count"], 24);
    assert!(
        serialized["message"]
            .as_str()
            .unwrap()
            .contains("24 chosen, 1 rejected"),
        "{serialized}"
    );
    // "Longer wins" over the 23 pairs of unequal lengths: always the chosen one.
    let longer = finding(&report, "longer-wins");
    assert_eq!(
        (longer["count"].as_u64(), longer["total"].as_u64()),
        (Some(23), Some(23))
    );
    assert_eq!(longer["value"], 1.0);
    assert_eq!(longer["severity"], "warning");

    let table = stdout(&run_ok(&["check-data", "--data", &pairs]));
    assert!(table.contains("24 pairs of 4 users"), "{table}");
    assert!(table.contains("accuracy 1.000"), "{table}");
    assert!(one_line_error(&["check-data", "--strict", "--data", &pairs]).contains("4 warning(s)"));

    // A balanced file: "longer wins" is only reported (info), and --strict passes.
    let mut text = String::new();
    for i in 0..24 {
        let (chosen, rejected) = if i % 2 == 0 {
            (format!("A long answer {i}"), format!("Short {i}"))
        } else {
            (format!("Short {i}"), format!("A long answer {i}"))
        };
        let line = json!({"user_id": "u", "prompt": "q", "chosen": chosen, "rejected": rejected});
        text.push_str(&format!("{line}\n"));
    }
    let fair = path(dir.path(), "fair.jsonl");
    std::fs::write(&fair, text).unwrap();
    let report = findings(&["check-data", "--strict", "--data", &fair], true);
    assert_eq!(kinds(&report), ["longer-wins"]);
    assert_eq!(finding(&report, "longer-wins")["severity"], "info");
    assert_eq!(finding(&report, "longer-wins")["value"], 0.5);
}

#[cfg(feature = "embed")]
#[test]
fn embed_warns_about_serialized_text() {
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama-rm");
    assert!(model.join("model.safetensors").is_file(), "fixture missing");
    let dir = tempfile::tempdir().unwrap();
    let pairs = lying_jsonl(dir.path());
    let out = path(dir.path(), "prefs.safetensors");
    let run = run_ok(&[
        "embed",
        "--model",
        model.to_str().unwrap(),
        "--input",
        &pairs,
        "--limit",
        "6",
        "--out",
        &out,
    ]);
    let notes = stderr(&run);
    assert!(
        notes.contains("warning: ") && notes.contains("looks like a serialized list or dict"),
        "{notes}"
    );
    assert!(notes.contains("chosen identical to rejected"), "{notes}");
    assert!(notes.contains("\"longer wins\" predicts 5 of 5"), "{notes}");
    // The all-zero row of the identical pair is then found in the preference file.
    let report = findings(&["check-data", "--data", &out], true);
    assert_eq!(finding(&report, "zero-rows")["count"], 1);
}

/// Runs lore, killing it after 10 s (a command that opens a FIFO may wait for a writer).
fn run_briefly(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_lore"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while child.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            panic!("lore {args:?} still running after 10 s");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

/// The one `error:` line of a run that must fail.
fn refused(args: &[&str]) -> String {
    let out = run_briefly(args);
    assert!(!out.status.success(), "lore {args:?} should fail");
    let err = stderr(&out);
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.starts_with("error: ") && !err.contains("panicked"),
        "{err}"
    );
    err
}

#[test]
fn folders_and_fifos_are_named_as_such() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = path(dir.path(), "pipe");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success(), "mkfifo failed");
    let folder = path(dir.path(), "folder");
    std::fs::create_dir(&folder).unwrap();
    let out = path(dir.path(), "out.safetensors");

    for args in [
        vec!["fit", "--data", &fifo, "--rank", "1", "--out", &out],
        vec!["eval", "--model", &fifo, "--data", &fifo],
        vec!["check-data", "--data", &fifo],
    ] {
        let err = refused(&args);
        assert!(
            err.contains("is not a regular file (a FIFO)"),
            "{args:?}: {err}"
        );
    }
    let err = refused(&["fit", "--data", &folder, "--rank", "1", "--out", &out]);
    assert!(err.contains("is a folder, not a file"), "{err}");
    assert!(!Path::new(&out).exists());

    #[cfg(feature = "embed")]
    {
        let err = refused(&[
            "embed", "--model", "minilm", "--input", &folder, "--out", &out,
        ]);
        assert!(err.contains("folder: is a folder, not a file"), "{err}");
        let err = refused(&[
            "embed", "--model", "minilm", "--input", &fifo, "--out", &out,
        ]);
        assert!(err.contains("is not a regular file (a FIFO)"), "{err}");
        let named = path(dir.path(), "pairs.jsonl");
        let made = Command::new("mkfifo").arg(&named).status().unwrap();
        assert!(made.success());
        let err = refused(&["check-data", "--data", &named]);
        assert!(err.contains("is not a regular file (a FIFO)"), "{err}");
    }
}
