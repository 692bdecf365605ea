//! `lore auto` through the binary: its files and results layout, reproducibility, bad input.

use std::path::Path;

mod common;
use common::{lore_stdout as lore, run};

use lore_io::TensorFile;
use serde_json::Value;
use tempfile::TempDir;

fn auto_args<'a>(splits: &'a str, out: &'a str) -> Vec<&'a str> {
    vec![
        "auto",
        "--quiet",
        "--splits",
        splits,
        "--ranks",
        "1,2,4",
        "--alpha-scales",
        "0,1",
        "--iterations",
        "300",
        "--out",
        out,
    ]
}

fn shape(path: &Path, name: &str) -> Vec<usize> {
    TensorFile::open(path).unwrap().shape(name).unwrap()
}

#[test]
fn auto_writes_the_sweep_layout_with_the_choice_and_its_models() {
    let dir = TempDir::new().unwrap();
    let pop = dir.path().join("pop");
    lore(&[
        "simulate",
        "--quiet",
        "--seen-users",
        "60",
        "--unseen-users",
        "20",
        "--features",
        "16",
        "--prompts",
        "200",
        "--out",
        pop.to_str().unwrap(),
    ]);
    let out = dir.path().join("auto");
    let mut args = auto_args(pop.to_str().unwrap(), out.to_str().unwrap());
    args.push("--json");
    let printed: Value = serde_json::from_str(&lore(&args)).unwrap();
    let written: Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("results.json")).unwrap()).unwrap();
    assert_eq!(printed, written);

    let chosen = &written["chosen"];
    let rank = chosen["rank"].as_u64().unwrap() as usize;
    assert!([1, 2, 4].contains(&rank), "{chosen}");
    let candidates = written["candidates"].as_array().unwrap();
    assert_eq!(candidates.len(), 1 + 2 * 2);
    let picked = &candidates[chosen["candidate"].as_u64().unwrap() as usize];
    assert_eq!(picked["rank"], chosen["rank"]);
    let rows = written["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["rank"], chosen["rank"]);
    for set in ["seen_train", "seen_test", "unseen_train", "unseen_test"] {
        let mean = rows[0][set]["mean"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&mean), "{set}: {mean}");
    }
    assert!(written["holdout"]["stand_in_users"].as_u64().unwrap() > 0);
    assert_eq!(written["holdout"]["folds"], 2);
    let selection = &written["selection"];
    assert_eq!(selection["rule"], "corrected");
    assert_eq!(selection["comparisons"], 4);
    assert!(!selection["reason"].as_str().unwrap().is_empty());
    for c in &candidates[1..] {
        let [low, high] = [0, 1].map(|i| c["corrected_interval"][i].as_f64().unwrap());
        let advantage = c["advantage_over_bt"].as_f64().unwrap();
        assert!(low <= advantage && advantage <= high, "{c}");
        assert_eq!(c["significant"].as_bool().unwrap(), low > 0.0, "{c}");
    }

    let kept = chosen["kept_rank"].as_u64().unwrap() as usize;
    assert_eq!(shape(&out.join("model.safetensors"), "V"), [16, kept]);
    assert_eq!(
        shape(&out.join("model.safetensors"), "prior_logits"),
        [kept]
    );
    assert_eq!(
        shape(&out.join("unseen_users.safetensors"), "W"),
        [20, kept]
    );
    assert_eq!(shape(&out.join("v_ref_bt.safetensors"), "v_ref"), [16]);
    let csv = std::fs::read_to_string(out.join("candidates.csv")).unwrap();
    assert_eq!(csv.lines().count(), 1 + candidates.len());
    assert!(out.join("config.toml").exists() && out.join("results.csv").exists());
    let png = std::fs::read(out.join("candidates.png")).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "{} bytes",
        png.len()
    );

    // The same options give the same bytes.
    let again = dir.path().join("again");
    lore(&auto_args(pop.to_str().unwrap(), again.to_str().unwrap()));
    assert_eq!(
        std::fs::read(out.join("results.json")).unwrap(),
        std::fs::read(again.join("results.json")).unwrap()
    );
    assert_eq!(
        std::fs::read(out.join("model.safetensors")).unwrap(),
        std::fs::read(again.join("model.safetensors")).unwrap()
    );

    // Bad values fail in one line and write nothing.
    for (flag, value) in [
        ("--ranks", "0,2"),
        ("--folds", "1"),
        ("--significance", "0"),
        ("--selection", "largest"),
        ("--alpha-scales", "-1"),
        ("--patience", "0"),
    ] {
        let bad = dir.path().join("bad");
        let mut args = auto_args(pop.to_str().unwrap(), bad.to_str().unwrap());
        args.extend([flag, value]);
        let out = run(&args);
        assert!(!out.status.success(), "{flag} {value}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.trim_end().lines().count(), 1, "{stderr}");
        assert!(stderr.starts_with("error: "), "{stderr}");
        assert!(!bad.exists(), "{flag} {value} left {}", bad.display());
    }
}
