//! SIGKILL at seeded pseudo-random moments never leaves a mixed output folder.
//!
//! For each folder-writing command (`simulate`, `split`, `sweep`, `shots`, `auto`, `demo`) an
//! older output is written into the folder first; then the command is run with other options
//! into the same folder and killed (`Child::kill`, SIGKILL on Unix) at 20 moments spread over
//! its normal run time. Each time, the folder must hold exactly the old output or exactly the
//! complete new one (same files, same bytes), whatever a killed run left beside it must be a
//! hidden staging sibling, and the next complete run must clean those up.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use tempfile::TempDir;

mod common;
use common::{folder_files, path, run_ok};

/// Kills per command.
const KILLS: usize = 20;

/// Puts `files` back as the whole content of `dir`.
fn restore(dir: &Path, files: &BTreeMap<String, Vec<u8>>) {
    if dir.exists() {
        std::fs::remove_dir_all(dir).unwrap();
    }
    for (rel, bytes) in files {
        let p = dir.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, bytes).unwrap();
    }
}

/// A small xorshift generator: the kill moments are the same on every run of the test.
struct Moments(u64);

impl Moments {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
}

/// The entries of `parent` other than `keep` that are not hidden staging or set-aside folders
/// of `out`.
fn strangers(parent: &Path, out: &str, keep: &[&str]) -> Vec<String> {
    let staging = format!(".{out}.lore-staging-");
    let aside = format!(".{out}.lore-old-");
    std::fs::read_dir(parent)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n != out && !keep.contains(&n.as_str()))
        .filter(|n| !n.starts_with(&staging) && !n.starts_with(&aside))
        .collect()
}

/// Writes the old output (`old` args), measures a complete run of `new`, then kills `new` at
/// [`KILLS`] seeded moments over the old folder and checks the folder each time.
/// `out` is the output folder's name in `dir`; `keep` the other entries of `dir` (inputs).
fn kill_and_check(dir: &Path, out: &str, keep: &[&str], old: &[&str], new: &[&str], seed: u64) {
    let folder = dir.join(out);
    run_ok(old);
    let old_files = folder_files(&folder);
    let started = Instant::now();
    run_ok(new);
    let took = started.elapsed();
    let new_files = folder_files(&folder);
    assert_ne!(old_files, new_files, "{out}: the two runs must differ");

    let mut moments = Moments(seed);
    let span = took.as_micros() as u64 * 3 / 2 + 1;
    let (mut saw_old, mut saw_new) = (0, 0);
    for kill in 0..KILLS {
        restore(&folder, &old_files);
        let delay = Duration::from_micros(moments.next() % span);
        let mut child = Command::new(env!("CARGO_BIN_EXE_lore"))
            .args(new)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        let _ = child.kill();
        child.wait().unwrap();
        let now = folder_files(&folder);
        if now == old_files {
            saw_old += 1;
        } else if now == new_files {
            saw_new += 1;
        } else {
            let (names, old_names, new_names): (Vec<_>, Vec<_>, Vec<_>) = (
                now.keys().collect(),
                old_files.keys().collect(),
                new_files.keys().collect(),
            );
            panic!(
                "{out}: kill {kill} after {delay:?} left a folder that is neither the old \
                 nor the new output: {names:?} (old {old_names:?}, new {new_names:?})"
            );
        }
        let left = strangers(dir, out, keep);
        assert!(left.is_empty(), "{out}: kill {kill} left {left:?}");
    }
    eprintln!(
        "{out}: run took {took:?}; {KILLS} kills left the old folder {saw_old} times, the new \
         one {saw_new} times"
    );

    // A complete run after the kills: the new output, and no leftover beside it.
    restore(&folder, &old_files);
    run_ok(new);
    assert_eq!(
        folder_files(&folder),
        new_files,
        "{out}: the run after the kills"
    );
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let mut expected: Vec<String> = keep.iter().map(|s| s.to_string()).collect();
    expected.push(out.to_string());
    expected.sort();
    assert_eq!(
        names, expected,
        "{out}: leftovers of killed runs are cleaned"
    );
}

/// A tiny population as a split folder `dir/pop`, returned as a path string.
fn population(dir: &Path) -> String {
    let pop = path(dir, "pop");
    run_ok(&[
        "simulate",
        "-q",
        "--seen-users",
        "16",
        "--unseen-users",
        "8",
        "--features",
        "6",
        "--rewards",
        "2",
        "--prompts",
        "60",
        "--seed",
        "3",
        "--out",
        &pop,
    ]);
    pop
}

/// Simulate flags of a tiny population with `seed` and `seen` users into `out`.
fn simulate_args<'a>(seen: &'a str, seed: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "simulate",
        "-q",
        "--seen-users",
        seen,
        "--unseen-users",
        "20",
        "--features",
        "8",
        "--rewards",
        "3",
        "--prompts",
        "200",
        "--seed",
        seed,
        "--out",
        out,
    ]
}

#[test]
fn killed_simulate_leaves_the_old_or_the_new_folder() {
    let dir = TempDir::new().unwrap();
    let out = path(dir.path(), "sim");
    let old = simulate_args("30", "1", &out);
    let new = simulate_args("400", "2", &out);
    kill_and_check(dir.path(), "sim", &[], &old, &new, 0x5151_0001);
}

#[test]
fn killed_split_leaves_the_old_or_the_new_folder() {
    let dir = TempDir::new().unwrap();
    let src = path(dir.path(), "src");
    run_ok(&simulate_args("400", "1", &src));
    let data = path(&dir.path().join("src"), "population.safetensors");
    let out = path(dir.path(), "split");
    let args = |seed: &'static str, fraction: &'static str| {
        vec![
            "split",
            "-q",
            "--data",
            data.as_str(),
            "--unseen-fraction",
            fraction,
            "--shots",
            "3",
            "--seed",
            seed,
            "--out",
            out.as_str(),
        ]
    };
    let (old, new) = (args("1", "0.2"), args("2", "0.3"));
    kill_and_check(dir.path(), "split", &["src"], &old, &new, 0x5151_0002);
}

#[test]
fn killed_sweep_leaves_the_old_or_the_new_folder() {
    let dir = TempDir::new().unwrap();
    let pop = population(dir.path());
    let out = path(dir.path(), "sweep");
    let args = |ranks: &'static str, t: &'static str| {
        vec![
            "sweep",
            "-q",
            "--splits",
            pop.as_str(),
            "--ranks",
            ranks,
            "--iterations",
            t,
            "--personalize-iterations",
            t,
            "--out",
            out.as_str(),
        ]
    };
    let (old, new) = (args("0,1", "20"), args("0,1,2,3", "150"));
    kill_and_check(dir.path(), "sweep", &["pop"], &old, &new, 0x5151_0003);
}

#[test]
fn killed_shots_leaves_the_old_or_the_new_folder() {
    let dir = TempDir::new().unwrap();
    let pop = population(dir.path());
    let out = path(dir.path(), "shots");
    let args = |shots: &'static str, t: &'static str| {
        vec![
            "shots",
            "-q",
            "--splits",
            pop.as_str(),
            "--ranks",
            "1,2",
            "--shots",
            shots,
            "--trials",
            "2",
            "--iterations",
            t,
            "--personalize-iterations",
            t,
            "--out",
            out.as_str(),
        ]
    };
    let (old, new) = (args("1,2", "20"), args("1,2,3", "150"));
    kill_and_check(dir.path(), "shots", &["pop"], &old, &new, 0x5151_0004);
}

#[test]
fn killed_auto_leaves_the_old_or_the_new_folder() {
    let dir = TempDir::new().unwrap();
    let pop = population(dir.path());
    let out = path(dir.path(), "auto");
    let args = |ranks: &'static str, t: &'static str| {
        vec![
            "auto",
            "-q",
            "--splits",
            pop.as_str(),
            "--ranks",
            ranks,
            "--alpha-scales",
            "0",
            "--iterations",
            t,
            "--personalize-iterations",
            t,
            "--out",
            out.as_str(),
        ]
    };
    let (old, new) = (args("1", "20"), args("1,2", "100"));
    kill_and_check(dir.path(), "auto", &["pop"], &old, &new, 0x5151_0005);
}

#[test]
fn killed_demo_leaves_the_old_or_the_new_folder() {
    let dir = TempDir::new().unwrap();
    let out: PathBuf = dir.path().join("demo");
    let out = out.to_str().unwrap().to_string();
    let args = |ranks: &'static str, t: &'static str| {
        vec![
            "demo",
            "-q",
            "--seen-users",
            "40",
            "--unseen-users",
            "10",
            "--features",
            "8",
            "--ranks",
            ranks,
            "--iterations",
            t,
            "--personalize-iterations",
            t,
            "--out",
            out.as_str(),
        ]
    };
    let (old, new) = (args("0,1", "20"), args("0,1,2,4", "150"));
    kill_and_check(dir.path(), "demo", &[], &old, &new, 0x5151_0006);
}
