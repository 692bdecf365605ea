//! Helpers shared by the CLI's integration tests: running the `lore` binary.
#![allow(dead_code)] // each test binary uses its own part

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
