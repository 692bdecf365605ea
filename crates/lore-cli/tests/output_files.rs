//! Single-file outputs can destroy nothing: an output that is an input or another output (by
//! any spelling: `./d`, a link, a hard link), a FIFO, a read-only file or an unwritable folder
//! is refused before any work, in one line, and leaves every file as it was; a link at the
//! output path has its target written; an interrupt or a rewritten input leaves nothing
//! half-done.
#![cfg(unix)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{one_line_error, path, run_ok};
use lore_io::TensorWriter;
use tempfile::TempDir;

/// Features per row of the test data.
const F: usize = 8;

/// A small preference file: 3 users x 4 pairs, F = 8.
fn write_data(dir: &Path, name: &str) -> String {
    let x: Vec<f32> = (0..12 * F)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
        .collect();
    let users: Vec<i64> = (0..12).map(|i| i / 4).collect();
    let p = path(dir, name);
    TensorWriter::new()
        .add_f32("x", &[12, F], &x)
        .add_i64("user", &[12], &users)
        .write_atomic(&p)
        .unwrap();
    p
}

/// A larger preference file, for runs that must last a moment: 50 users x 40 pairs, F = 256.
fn write_big_data(dir: &Path, name: &str) -> String {
    let (users, pairs, f) = (50, 40, 256);
    let x: Vec<f32> = (0..users * pairs * f)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
        .collect();
    let user: Vec<i64> = (0..users * pairs).map(|i| (i / pairs) as i64).collect();
    let p = path(dir, name);
    TensorWriter::new()
        .add_f32("x", &[users * pairs, f], &x)
        .add_i64("user", &[users * pairs], &user)
        .write_atomic(&p)
        .unwrap();
    p
}

/// `lore fit` on `data` into `out` with a few steps, plus `extra` flags.
fn fit_args<'a>(data: &'a str, out: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    fit_steps(data, out, "3", extra)
}

/// `lore fit` on `data` into `out` with `steps` steps, plus `extra` flags.
fn fit_steps<'a>(data: &'a str, out: &'a str, steps: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "fit",
        "--data",
        data,
        "--rank",
        "2",
        "--iterations",
        steps,
        "--out",
        out,
    ];
    args.extend_from_slice(extra);
    args
}

/// The bytes of every file in `dir` (links read through), by name.
fn snapshot(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.path().is_file())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

/// Runs `args`, expecting a one-line refusal that names every word of `names`, and every file
/// of `dir` byte-identical afterwards (nothing created, nothing left behind).
fn refused(dir: &Path, args: &[&str], names: &[&str]) -> String {
    let before = snapshot(dir);
    let err = one_line_error(args);
    for name in names {
        assert!(err.contains(name), "`{name}` expected in: {err}");
    }
    assert_eq!(snapshot(dir), before, "lore {args:?} changed a file");
    err
}

/// Other spellings of `file` (in `dir`): `./file`, a link and a hard link to it.
fn spellings(dir: &Path, file: &str) -> Vec<String> {
    let name = Path::new(file).file_name().unwrap().to_str().unwrap();
    let dotted = dir.join(".").join(name);
    let link = dir.join(format!("link-to-{name}"));
    std::os::unix::fs::symlink(file, &link).unwrap();
    let hard = dir.join(format!("hard-{name}"));
    std::fs::hard_link(file, &hard).unwrap();
    [PathBuf::from(file), dotted, link, hard]
        .iter()
        .map(|p| p.to_str().unwrap().to_string())
        .collect()
}

/// A valid model for `personalize`, fitted on `data`.
fn fit_model(dir: &Path, data: &str) -> String {
    let model = path(dir, "model.safetensors");
    run_ok(&fit_args(data, &model, &["--quiet"]));
    model
}

#[test]
fn fit_out_equal_to_data_by_any_spelling_is_refused() {
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    for out in spellings(dir.path(), &data) {
        refused(
            dir.path(),
            &fit_args(&data, &out, &[]),
            &["--out", "--data", "same file"],
        );
    }
}

#[test]
fn fit_trace_equal_to_data_or_out_is_refused() {
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    let model = path(dir.path(), "m.safetensors");
    refused(
        dir.path(),
        &fit_args(&data, &model, &["--trace", &data]),
        &["--trace", "--data"],
    );
    // Neither exists yet: the two spellings still name one file.
    let dotted = dir.path().join(".").join("m.safetensors");
    let err = refused(
        dir.path(),
        &fit_args(&data, &model, &["--trace", dotted.to_str().unwrap()]),
        &["--trace", "--out"],
    );
    assert!(!Path::new(&model).exists(), "{err}");
}

#[test]
fn fit_out_equal_to_init_or_v_ref_is_refused() {
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    let init = path(dir.path(), "init.safetensors");
    TensorWriter::new()
        .add_f32("W0", &[3, 2], &[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
        .add_f32("V0", &[F, 2], &[0.5; 2 * F])
        .write_atomic(&init)
        .unwrap();
    let v_ref = path(dir.path(), "head.safetensors");
    TensorWriter::new()
        .add_f32("v_ref", &[F], &[1.0; F])
        .write_atomic(&v_ref)
        .unwrap();
    for out in spellings(dir.path(), &init) {
        refused(
            dir.path(),
            &fit_args(&data, &out, &["--init", &init]),
            &["--out", "--init"],
        );
    }
    for out in spellings(dir.path(), &v_ref) {
        refused(
            dir.path(),
            &fit_args(&data, &out, &["--v-ref", &v_ref, "--alpha", "1"]),
            &["--out", "--v-ref"],
        );
    }
    let model = path(dir.path(), "m.safetensors");
    let trace_over_head = fit_args(&data, &model, &["--v-ref", &v_ref, "--trace", &v_ref]);
    refused(dir.path(), &trace_over_head, &["--trace", "--v-ref"]);
}

#[test]
fn personalize_outputs_equal_to_inputs_are_refused() {
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    let model = fit_model(dir.path(), &data);
    let init = path(dir.path(), "w0.safetensors");
    TensorWriter::new()
        .add_f32("w0", &[3, 2], &[0.0; 6])
        .write_atomic(&init)
        .unwrap();
    let users = path(dir.path(), "users.safetensors");
    let personalize = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = [
            "personalize",
            "--model",
            &model,
            "--data",
            &data,
            "--iterations",
            "3",
            "--out",
            out,
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let check = |args: Vec<String>, names: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(dir.path(), &args, names);
    };
    for out in spellings(dir.path(), &model) {
        check(personalize(&out, &[]), &["--out", "--model"]);
    }
    check(personalize(&data, &[]), &["--out", "--data"]);
    check(personalize(&init, &["--init", &init]), &["--out", "--init"]);
    check(
        personalize(&users, &["--trace", &model]),
        &["--trace", "--model"],
    );
    check(
        personalize(&users, &["--trace", &users]),
        &["--trace", "--out"],
    );
    assert!(!Path::new(&users).exists());
}

#[test]
fn a_fifo_at_the_output_is_refused_at_once_and_kept() {
    use std::os::unix::fs::FileTypeExt;
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    let fifo = path(dir.path(), "fifo");
    assert!(Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .unwrap()
        .success());
    let started = Instant::now();
    let err = one_line_error(&fit_args(&data, &fifo, &[]));
    assert!(err.contains("FIFO") && err.contains("--out"), "{err}");
    let model = path(dir.path(), "m.safetensors");
    let err = one_line_error(&fit_args(&data, &model, &["--trace", &fifo]));
    assert!(err.contains("FIFO") && err.contains("--trace"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let kind = std::fs::symlink_metadata(&fifo).unwrap().file_type();
    assert!(kind.is_fifo(), "the FIFO was replaced");
}

#[test]
fn a_folder_at_the_output_is_refused() {
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    let folder = path(dir.path(), "sub");
    std::fs::create_dir(&folder).unwrap();
    let err = refused(dir.path(), &fit_args(&data, &folder, &[]), &["--out"]);
    assert!(err.contains("folder"), "{err}");
}

#[test]
fn a_link_at_the_output_has_its_target_written_and_stays_a_link() {
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir(&elsewhere).unwrap();
    let target = elsewhere.join("model.safetensors");
    std::fs::write(&target, b"old model").unwrap();
    let link = path(dir.path(), "m.safetensors");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = run_ok(&fit_args(&data, &link, &[]));
    let notes = String::from_utf8_lossy(&out.stderr);
    assert!(
        notes.contains("is a link: writing its target"),
        "the note is missing: {notes}"
    );
    assert!(std::fs::symlink_metadata(&link)
        .unwrap()
        .file_type()
        .is_symlink());
    assert_ne!(std::fs::read(&target).unwrap(), b"old model");
    run_ok(&["eval", "--model", &link, "--data", &data]);
    // The temporary file went next to the target and is gone.
    for folder in [dir.path(), elsewhere.as_path()] {
        let hidden: Vec<_> = std::fs::read_dir(folder)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with('.'))
            .collect();
        assert!(hidden.is_empty(), "left behind: {hidden:?}");
    }
}

#[test]
fn a_read_only_output_is_refused_and_unchanged() {
    use std::os::unix::fs::PermissionsExt;
    // Write-protected files are refused even for root (no skip: CI runs as root).
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    let out = path(dir.path(), "m.safetensors");
    std::fs::write(&out, b"keep me").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o444)).unwrap();
    let err = refused(dir.path(), &fit_args(&data, &out, &[]), &["--out"]);
    assert!(err.contains("read-only"), "{err}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o444);
}

#[test]
fn a_replaced_output_keeps_its_mode() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    let data = write_data(dir.path(), "d.safetensors");
    let out = path(dir.path(), "m.safetensors");
    std::fs::write(&out, b"old").unwrap();
    std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o640)).unwrap();
    run_ok(&fit_args(&data, &out, &[]));
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o640);
}

#[test]
fn an_unwritable_folder_is_refused_before_any_work() {
    use std::os::unix::fs::PermissionsExt;
    let dir = TempDir::new().unwrap();
    // Root may write anywhere: lore then runs as `nobody` (CI runs as root).
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let Some(lore) = common::lore_without_root() else {
        eprintln!("skipped: running as root, and lore cannot be run as the user nobody here");
        return;
    };
    let data = write_data(dir.path(), "d.safetensors");
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o644)).unwrap();
    let locked = dir.path().join("locked");
    std::fs::create_dir(&locked).unwrap();
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
    let out = locked.join("m.safetensors");
    let started = Instant::now();
    // A million steps would take minutes: the refusal comes first.
    let output = lore(&fit_steps(&data, out.to_str().unwrap(), "1000000", &[]));
    assert!(started.elapsed() < Duration::from_secs(10));
    let err = String::from_utf8_lossy(&output.stderr).into_owned();
    assert!(!output.status.success(), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(
        err.contains("--out") && err.contains("no file can be created"),
        "{err}"
    );
    std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(std::fs::read_dir(&locked).unwrap().count(), 0);
}

#[test]
fn bench_file_equal_to_its_config_is_refused() {
    let dir = TempDir::new().unwrap();
    let config = path(dir.path(), "bench.toml");
    std::fs::write(&config, "users = 2\npairs = 2\nfeatures = 4\nrank = 1\n").unwrap();
    refused(
        dir.path(),
        &["bench", "--config", &config, "--file", &config, "--no-peak"],
        &["--file", "--config"],
    );
}

/// A running `lore fit` and the thread collecting the rest of its stderr.
struct Running {
    child: std::process::Child,
    stderr: std::thread::JoinHandle<String>,
}

/// Starts `lore fit` on `data` with `steps` steps and returns once it has loaded its
/// data and started fitting (its note `fitting ...`).
fn start_fit(data: &str, out: &str, steps: &str) -> Running {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_lore"))
        .args(fit_steps(data, out, steps, &[]))
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reader = std::io::BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    while !seen.contains("fitting") {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap() == 0 {
            break;
        }
        seen.push_str(&line);
    }
    let stderr = std::thread::spawn(move || {
        use std::io::Read;
        let mut rest = String::new();
        let _ = reader.read_to_string(&mut rest);
        seen + &rest
    });
    Running { child, stderr }
}

/// Waits (at most 30 s) for the run to end: its status and whole stderr.
fn wait(mut run: Running) -> (std::process::ExitStatus, String) {
    let started = Instant::now();
    let status = loop {
        if let Some(status) = run.child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > Duration::from_secs(30) {
            let _ = run.child.kill();
            panic!("lore did not stop");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status, run.stderr.join().unwrap())
}

/// The names of `dir`'s entries, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn an_interrupted_fit_exits_130_in_one_line_and_leaves_nothing() {
    let dir = TempDir::new().unwrap();
    let data = write_big_data(dir.path(), "d.safetensors");
    let out = path(dir.path(), "m.safetensors");
    for signal in ["-INT", "-TERM"] {
        let run = start_fit(&data, &out, "100000000");
        let pid = run.child.id().to_string();
        assert!(Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap()
            .success());
        let (status, stderr) = wait(run);
        assert_eq!(status.code(), Some(130), "{signal}: {stderr}");
        let last = stderr.trim_end().lines().last().unwrap_or_default();
        assert!(last.starts_with("error: interrupted"), "{signal}: {stderr}");
        assert_eq!(names(dir.path()), ["d.safetensors"], "{signal}");
    }
}

#[test]
fn an_input_touched_during_the_run_stops_it_before_writing() {
    let dir = TempDir::new().unwrap();
    let data = write_big_data(dir.path(), "d.safetensors");
    let out = path(dir.path(), "m.safetensors");
    let run = start_fit(&data, &out, "3000");
    // Same bytes, a new modification time: as a program rewriting the file in place leaves it.
    let file = std::fs::OpenOptions::new().write(true).open(&data).unwrap();
    file.set_modified(std::time::SystemTime::now() + Duration::from_secs(60))
        .unwrap();
    drop(file);
    let (status, stderr) = wait(run);
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("changed during the run"), "{stderr}");
    assert_eq!(names(dir.path()), ["d.safetensors"]);
}

#[test]
fn an_input_truncated_under_the_run_is_reported_in_one_line() {
    let dir = TempDir::new().unwrap();
    let data = write_big_data(dir.path(), "d.safetensors");
    let out = path(dir.path(), "m.safetensors");
    let run = start_fit(&data, &out, "100000000");
    std::fs::OpenOptions::new()
        .write(true)
        .open(&data)
        .unwrap()
        .set_len(0)
        .unwrap();
    let (status, stderr) = wait(run);
    assert!(!status.success(), "{stderr}");
    let last = stderr.trim_end().lines().last().unwrap_or_default();
    assert!(
        last.starts_with("error: an input file changed while lore was reading it"),
        "{stderr}"
    );
    assert_eq!(names(dir.path()), ["d.safetensors"]);
}

/// A copy of the tiny reward model fixture in `dir/model`, and a two-pair input file.
#[cfg(feature = "embed")]
fn embed_inputs(dir: &Path) -> (String, String) {
    let fixture =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama-rm");
    let model = dir.join("model");
    std::fs::create_dir(&model).unwrap();
    for entry in std::fs::read_dir(&fixture).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), model.join(entry.file_name())).unwrap();
    }
    let input = path(dir, "pairs.jsonl");
    std::fs::write(
        &input,
        "{\"user_id\": \"u\", \"prompt\": \"p\", \"chosen\": \"a\", \"rejected\": \"b\"}\n\
         {\"user_id\": \"v\", \"prompt\": \"q\", \"chosen\": \"c\", \"rejected\": \"d\"}\n",
    )
    .unwrap();
    (model.to_str().unwrap().to_string(), input)
}

#[cfg(feature = "embed")]
#[test]
fn embed_outputs_equal_to_its_inputs_or_each_other_are_refused() {
    let dir = TempDir::new().unwrap();
    let (model, input) = embed_inputs(dir.path());
    let weights = Path::new(&model).join("model.safetensors");
    let weights = weights.to_str().unwrap();
    let before = snapshot(Path::new(&model));
    let embed = |out: &str, extra: &[&str]| -> Vec<String> {
        let mut args: Vec<String> = ["embed", "--model", &model, "--input", &input, "--out", out]
            .iter()
            .map(|s| s.to_string())
            .collect();
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let check = |args: Vec<String>, names: &[&str]| {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        refused(dir.path(), &args, names);
    };
    check(embed(weights, &[]), &["--out", "--model"]);
    let prefs = path(dir.path(), "prefs.safetensors");
    check(
        embed(&prefs, &["--export-head", &prefs]),
        &["--export-head", "--out"],
    );
    check(
        embed(&prefs, &["--export-head", weights]),
        &["--export-head", "--model"],
    );
    for out in spellings(dir.path(), &input) {
        check(embed(&out, &[]), &["--out", "--input"]);
    }
    assert_eq!(snapshot(Path::new(&model)), before, "the model was changed");
}
