//! `--config FILE` on `lore fit` and `lore personalize`: a value from the file is used, a flag
//! overrides it, an unknown key or a missing required value is a one-line error; `--help`
//! shows the library's defaults.

use std::path::Path;

mod common;
use common::{fails, lore_stderr as lore, lore_stdout, path};

use lore_io::TensorFile;
use serde_json::Value;
use tempfile::TempDir;

/// A small simulated population (F = 16) in `dir/pop`.
fn simulate(dir: &Path) -> std::path::PathBuf {
    let out = dir.join("pop");
    lore(&[
        "simulate",
        "--quiet",
        "--seen-users",
        "20",
        "--unseen-users",
        "10",
        "--features",
        "16",
        "--prompts",
        "100",
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

fn meta(file: &str, key: &str) -> Value {
    TensorFile::open(file)
        .unwrap()
        .metadata_json::<Value>(key)
        .unwrap()
        .unwrap_or_else(|| panic!("{file}: no metadata `{key}`"))
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = path(dir, name);
    std::fs::write(&p, text).unwrap();
    p
}

#[test]
fn fit_and_personalize_read_the_config_file_and_flags_override_it() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let data = path(&pop, "seen_train.safetensors");
    let model = path(dir.path(), "model.safetensors");
    let fit_config = write(
        dir.path(),
        "fit.toml",
        &format!(
            "data = {data:?}\nrank = 2\niterations = 7\nlr = 0.2\nmethod = \"regularized\"\n\
             out = {model:?}\n"
        ),
    );
    lore(&["fit", "--config", &fit_config, "--iterations", "5"]);
    assert_eq!(meta(&model, "rank"), 2, "from the file");
    assert_eq!(meta(&model, "learning_rate"), 0.2, "from the file");
    assert_eq!(meta(&model, "method"), "regularized", "from the file");
    assert_eq!(meta(&model, "iterations"), 5, "the flag overrides the file");

    let unseen = path(&pop, "unseen_train.safetensors");
    let users = path(dir.path(), "users.safetensors");
    let personalize_config = write(
        dir.path(),
        "personalize.toml",
        &format!(
            "model = {model:?}\ndata = {unseen:?}\niterations = 9\nlr = 0.3\nseed = 4\n\
             out = {users:?}\n"
        ),
    );
    lore(&[
        "personalize",
        "--config",
        &personalize_config,
        "--lr",
        "0.05",
    ]);
    assert_eq!(meta(&users, "iterations"), 9, "from the file");
    assert_eq!(meta(&users, "seed"), 4, "from the file");
    assert_eq!(
        meta(&users, "learning_rate"),
        0.05,
        "the flag overrides the file"
    );
}

#[test]
fn bad_config_files_are_one_line_errors() {
    let dir = TempDir::new().unwrap();
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let model = path(&out_dir, "m.safetensors");

    let config = write(dir.path(), "bad.toml", "learning-rate = 0.5\n");
    let err = fails(&out_dir, &["fit", "--config", &config, "--out", &model]);
    assert!(err.contains("unknown key `learning-rate`"), "{err}");
    assert!(err.contains("lr"), "the known keys are listed: {err}");
    let err = fails(&out_dir, &["personalize", "--config", &config]);
    assert!(err.contains("unknown key `learning-rate`"), "{err}");

    let config = write(dir.path(), "method.toml", "method = \"joint\"\n");
    let err = fails(&out_dir, &["fit", "--config", &config, "--out", &model]);
    assert!(err.contains("unknown method `joint`"), "{err}");

    let config = write(dir.path(), "rank.toml", "rank = 2\n");
    let err = fails(&out_dir, &["fit", "--config", &config, "--out", &model]);
    assert!(err.contains("--data"), "{err}");
}

#[test]
fn help_shows_the_library_defaults() {
    let help = lore_stdout(&["fit", "--help"]);
    let lr = format!("[default: {}]", lore_core::DEFAULT_FIT_LEARNING_RATE);
    assert!(help.contains(&lr), "{help}");
    assert!(
        help.contains("[possible values: lore, regularized]"),
        "{help}"
    );
    let help = lore_stdout(&["personalize", "--help"]);
    let lr = format!(
        "[default: {}]",
        lore_core::DEFAULT_PERSONALIZE_LEARNING_RATE
    );
    assert!(help.contains(&lr), "{help}");
    let help = lore_stdout(&["sweep", "--help"]);
    let lr = format!("[default: {}]", lore_experiment::PAPER_LEARNING_RATE);
    assert!(help.contains(&lr), "{help}");
}
