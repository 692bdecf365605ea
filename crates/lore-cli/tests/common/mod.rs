//! Helpers shared by the CLI's integration tests: running the `lore` binary.
#![allow(dead_code)] // each test binary uses its own part

pub mod http;

use std::path::Path;
use std::process::{Command, Output};

/// Runs `lore` with `args`.
pub fn run(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_lore"))
        .args(args)
        .output()
        .unwrap()
}

/// Runs `lore` expecting success.
pub fn run_ok(args: &[&str]) -> Output {
    let out = run(args);
    assert!(
        out.status.success(),
        "lore {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs `lore` expecting success; returns stdout.
pub fn lore_stdout(args: &[&str]) -> String {
    String::from_utf8(run_ok(args).stdout).unwrap()
}

/// Runs `lore` expecting success; returns stderr (the notes).
pub fn lore_stderr(args: &[&str]) -> String {
    String::from_utf8(run_ok(args).stderr).unwrap()
}

/// Runs `lore` expecting failure with one `error:` line on stderr; returns the line.
pub fn one_line_error(args: &[&str]) -> String {
    let out = run(args);
    assert!(!out.status.success(), "lore {args:?} should fail");
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        stderr.trim_end().lines().count(),
        1,
        "lore {args:?}: one line expected, got:\n{stderr}"
    );
    assert!(
        stderr.starts_with("error: ") && !stderr.contains("panicked"),
        "{stderr}"
    );
    stderr
}

/// As [`one_line_error`], and nothing written into `out_dir`.
pub fn fails(out_dir: &Path, args: &[&str]) -> String {
    let stderr = one_line_error(args);
    let left: Vec<_> = std::fs::read_dir(out_dir).unwrap().collect();
    assert!(left.is_empty(), "lore {args:?} left {left:?}");
    stderr
}

/// `dir/name` as a string argument.
pub fn path(dir: &Path, name: &str) -> String {
    dir.join(name).to_str().unwrap().to_string()
}

/// Every file under `dir` (relative path, bytes).
pub fn folder_files(dir: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    let mut files = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_string_lossy().into_owned();
                files.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    files
}

/// A runner of `lore` without root's right to write anywhere: `lore` itself, or, when this
/// process is root (as in CI), `lore` as the user `nobody` through `setpriv`. `None` where root
/// cannot run it as `nobody` here. Files it must read have to be readable by others.
pub fn lore_without_root() -> Option<impl Fn(&[&str]) -> Output> {
    use std::os::unix::fs::PermissionsExt;
    let probe_dir = tempfile::tempdir().unwrap();
    let probe = probe_dir.path().join("read-only");
    std::fs::write(&probe, b"").unwrap();
    std::fs::set_permissions(&probe, std::fs::Permissions::from_mode(0o444)).unwrap();
    let root = std::fs::OpenOptions::new().write(true).open(&probe).is_ok();
    let lore = move |args: &[&str]| {
        let mut command = if root {
            let mut c = Command::new("setpriv");
            c.args(["--reuid=65534", "--regid=65534", "--clear-groups"])
                .arg(env!("CARGO_BIN_EXE_lore"));
            c
        } else {
            Command::new(env!("CARGO_BIN_EXE_lore"))
        };
        command.args(args).output()
    };
    lore(&["--version"])
        .is_ok_and(|o| o.status.success())
        .then_some(move |args: &[&str]| lore(args).unwrap())
}
