//! Folder outputs (`simulate`, `split`, `sweep`, `shots`, `auto`, `demo`) are built whole and
//! put into place in one step: a folder lore wrote is replaced whole (no stale file survives),
//! a folder lore did not write is refused unless --force, and an input is never an output.

use std::path::Path;

use tempfile::TempDir;

mod common;
use common::{folder_files, one_line_error, path, run_ok};

/// The names in `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// A tiny simulated population in `out` (built-in responses, seed `seed`).
fn simulate(out: &str, seed: &str) {
    run_ok(&[
        "simulate",
        "-q",
        "--seen-users",
        "12",
        "--unseen-users",
        "6",
        "--features",
        "6",
        "--rewards",
        "2",
        "--prompts",
        "40",
        "--seed",
        seed,
        "--out",
        out,
    ]);
}

#[test]
fn a_split_folder_written_again_is_replaced_whole() {
    let dir = TempDir::new().unwrap();
    let pop = path(dir.path(), "pop");
    simulate(&pop, "1");
    let folder = dir.path().join("pop");
    assert!(folder.join("v_ref.safetensors").is_file());
    assert!(
        folder.join(".lore-output").is_file(),
        "lore marks its folders"
    );

    // `split` into the simulated folder: the old v_ref and population must not survive (the
    // split's input has no `v_ref`, so a sweep must not find one).
    let data = dir.path().join("prefs.safetensors");
    std::fs::copy(folder.join("seen_train.safetensors"), &data).unwrap();
    run_ok(&[
        "split",
        "-q",
        "--data",
        data.to_str().unwrap(),
        "--unseen-fraction",
        "0.3",
        "--shots",
        "2",
        "--out",
        &pop,
    ]);
    let left = names(&folder);
    assert!(
        !left.contains(&"v_ref.safetensors".to_string())
            && !left.contains(&"population.safetensors".to_string()),
        "stale files of the simulation survived: {left:?}"
    );
    let err = one_line_error(&[
        "sweep",
        "-q",
        "--splits",
        &pop,
        "--ranks",
        "0",
        "--out",
        &path(dir.path(), "sweep"),
    ]);
    assert!(err.contains("v_ref"), "{err}");

    // Simulating again with other options gives exactly what a fresh folder gets.
    simulate(&pop, "2");
    let fresh = path(dir.path(), "fresh");
    simulate(&fresh, "2");
    let (again, fresh) = (
        folder_files(&folder),
        folder_files(&dir.path().join("fresh")),
    );
    assert_eq!(
        again.keys().collect::<Vec<_>>(),
        fresh.keys().collect::<Vec<_>>()
    );
    for (name, bytes) in &again {
        if name != "config.toml" {
            assert_eq!(bytes, &fresh[name], "{name}");
        }
    }
    assert_eq!(names(dir.path()), ["fresh", "pop", "prefs.safetensors"]);
}

#[test]
fn split_into_its_own_input_folder_is_refused_and_the_input_kept() {
    let dir = TempDir::new().unwrap();
    let pop = path(dir.path(), "pop");
    simulate(&pop, "1");
    let before = folder_files(&dir.path().join("pop"));
    let data = path(&dir.path().join("pop"), "seen_train.safetensors");
    for out in [pop.clone(), format!("{}/./pop/", dir.path().display())] {
        for force in [false, true] {
            let mut args = vec!["split", "-q", "--data", &data, "--out", &out];
            if force {
                args.push("--force");
            }
            let err = one_line_error(&args);
            assert!(err.contains("input") && err.contains("--data"), "{err}");
        }
    }
    #[cfg(unix)]
    {
        let link = path(dir.path(), "link");
        std::os::unix::fs::symlink(dir.path().join("pop"), &link).unwrap();
        let err = one_line_error(&["split", "-q", "--data", &data, "--out", &link, "--force"]);
        assert!(err.contains("input"), "{err}");
        std::fs::remove_file(&link).unwrap();
    }
    assert_eq!(
        folder_files(&dir.path().join("pop")),
        before,
        "input intact"
    );
    assert_eq!(names(dir.path()), ["pop"], "nothing left beside it");
}

#[test]
fn a_folder_lore_did_not_write_is_refused_unless_forced() {
    let dir = TempDir::new().unwrap();
    let mine = dir.path().join("mine");
    std::fs::create_dir(&mine).unwrap();
    std::fs::write(mine.join("thesis.tex"), "precious").unwrap();
    let out = mine.to_str().unwrap();
    let started = std::time::Instant::now();
    let err = one_line_error(&[
        "simulate",
        "-q",
        "--seen-users",
        "12",
        "--unseen-users",
        "6",
        "--features",
        "6",
        "--out",
        out,
    ]);
    assert!(
        err.contains("is not empty and was not written by lore") && err.contains("--force"),
        "{err}"
    );
    assert!(started.elapsed().as_secs() < 10);
    assert_eq!(names(&mine), ["thesis.tex"]);
    assert_eq!(names(dir.path()), ["mine"], "no staging folder left");

    // An empty folder is fine; --force replaces a foreign one whole.
    let empty = path(dir.path(), "empty");
    std::fs::create_dir(&empty).unwrap();
    simulate(&empty, "1");
    run_ok(&[
        "simulate",
        "-q",
        "--seen-users",
        "12",
        "--unseen-users",
        "6",
        "--features",
        "6",
        "--out",
        out,
        "--force",
    ]);
    assert!(!mine.join("thesis.tex").exists(), "replaced whole");
    assert!(mine.join("seen_train.safetensors").is_file());

    // A folder of another kind of lore output is not replaced silently either.
    let err = one_line_error(&["demo", "-q", "--out", out]);
    assert!(err.contains("holds the output of `lore simulate`"), "{err}");
    // An output path that is a file is refused.
    let file = path(dir.path(), "file");
    std::fs::write(&file, "x").unwrap();
    let err = one_line_error(&["demo", "-q", "--out", &file, "--force"]);
    assert!(err.contains("not a folder"), "{err}");
}

#[test]
fn sweep_shots_and_auto_never_write_into_the_split_folder() {
    let dir = TempDir::new().unwrap();
    let pop = path(dir.path(), "pop");
    simulate(&pop, "1");
    let before = folder_files(&dir.path().join("pop"));
    let inside = path(&dir.path().join("pop"), "results");
    let v_ref = path(&dir.path().join("pop"), "v_ref.safetensors");
    for out in [&pop, &inside] {
        for force in [false, true] {
            let f = if force { "--force" } else { "--json" };
            for args in [
                vec![
                    "sweep", "-q", "--splits", &pop, "--ranks", "0", "--out", out, f,
                ],
                vec![
                    "shots", "-q", "--splits", &pop, "--ranks", "0", "--out", out, f,
                ],
                vec![
                    "auto", "-q", "--splits", &pop, "--ranks", "1", "--out", out, f,
                ],
            ] {
                let err = one_line_error(&args);
                assert!(err.contains("--splits") && err.contains("input"), "{err}");
            }
        }
    }
    // --v-ref is an input too.
    let other = dir.path().join("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::copy(&v_ref, other.join("v.safetensors")).unwrap();
    let v = path(&other, "v.safetensors");
    let err = one_line_error(&[
        "sweep",
        "-q",
        "--splits",
        &pop,
        "--ranks",
        "0",
        "--v-ref",
        &v,
        "--out",
        other.to_str().unwrap(),
        "--force",
    ]);
    assert!(err.contains("--v-ref"), "{err}");
    assert_eq!(
        folder_files(&dir.path().join("pop")),
        before,
        "config.toml and all intact"
    );
}

#[test]
fn demo_twice_into_the_same_folder_works_and_replaces_it_whole() {
    let dir = TempDir::new().unwrap();
    let out = path(dir.path(), "demo");
    let args = |ranks: &'static str| {
        vec![
            "demo",
            "-q",
            "--seen-users",
            "12",
            "--unseen-users",
            "6",
            "--features",
            "6",
            "--ranks",
            ranks,
            "--iterations",
            "20",
            "--personalize-iterations",
            "20",
            "--out",
            &out,
        ]
    };
    run_ok(&args("0,1"));
    let first = folder_files(&dir.path().join("demo"));
    std::fs::write(dir.path().join("demo").join("stale.txt"), "x").unwrap();
    run_ok(&args("0,1"));
    assert_eq!(
        folder_files(&dir.path().join("demo")),
        first,
        "rerun: same bytes, no stale file"
    );
    assert_eq!(names(dir.path()), ["demo"]);
    let config = String::from_utf8(first[&"config.toml".to_string()].clone()).unwrap();
    assert!(
        config.contains(&format!(
            "--config {}",
            path(&dir.path().join("demo"), "config.toml")
        )) && !config.contains("lore-staging"),
        "config.toml names the folder, not its staging folder:\n{config}"
    );
}

#[test]
fn an_unwritable_parent_is_found_before_any_work() {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let dir = TempDir::new().unwrap();
        let locked = dir.path().join("locked");
        std::fs::create_dir(&locked).unwrap();
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o555)).unwrap();
        // Root may write anywhere: lore then runs as `nobody` (CI runs as root).
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let Some(lore) = common::lore_without_root() else {
            eprintln!("skipped: running as root, and lore cannot be run as the user nobody here");
            return;
        };
        let out = path(&locked, "demo");
        let started = std::time::Instant::now();
        let out = lore(&["demo", "-q", "--ranks", "0,1,2,3,4,5,6,7,8", "--out", &out]);
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error: ") && err.contains("locked"),
            "{err}"
        );
        assert!(started.elapsed().as_secs() < 10, "refused before the work");
        std::fs::set_permissions(&locked, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
}

#[test]
fn an_unfinished_staging_folder_is_never_read_as_a_split_folder() {
    let dir = TempDir::new().unwrap();
    let staging = path(dir.path(), ".pop.lore-staging-4194305");
    simulate(&staging, "1");
    let err = one_line_error(&[
        "sweep",
        "-q",
        "--splits",
        &staging,
        "--ranks",
        "0",
        "--out",
        &path(dir.path(), "s"),
    ]);
    assert!(err.contains("unfinished output"), "{err}");
}

#[test]
fn a_mixed_split_folder_is_refused() {
    // A folder mixed by hand (or by an older lore that wrote file by file): one set of
    // another run of other size.
    let dir = TempDir::new().unwrap();
    let (a, b) = (path(dir.path(), "a"), path(dir.path(), "b"));
    simulate(&a, "1");
    run_ok(&[
        "simulate",
        "-q",
        "--seen-users",
        "20",
        "--unseen-users",
        "6",
        "--features",
        "6",
        "--rewards",
        "2",
        "--prompts",
        "40",
        "--seed",
        "1",
        "--out",
        &b,
    ]);
    std::fs::copy(
        dir.path().join("b/seen_test.safetensors"),
        dir.path().join("a/seen_test.safetensors"),
    )
    .unwrap();
    let err = one_line_error(&[
        "sweep",
        "-q",
        "--splits",
        &a,
        "--ranks",
        "0",
        "--out",
        &path(dir.path(), "s"),
    ]);
    assert!(err.contains("different runs"), "{err}");
}
