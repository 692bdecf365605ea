//! `--precision bf16` through the `lore` binary: `lore fit` records it and fits nearly the same
//! model as f32, `lore bench` reports it, and bad values (or a CPU without AVX512-BF16) fail in
//! one line without writing anything.

use std::path::Path;

mod common;
use common::{fails, lore_stdout as lore, path};
use lore_core::Precision;
use lore_io::TensorFile;
use serde_json::Value;
use tempfile::TempDir;

/// A simulated population with F = 64 in `dir/pop`; returns its seen users' training file.
fn simulate(dir: &Path) -> String {
    let pop = dir.join("pop");
    lore(&[
        "simulate",
        "--quiet",
        "--seen-users",
        "60",
        "--unseen-users",
        "10",
        "--features",
        "64",
        "--prompts",
        "200",
        "--out",
        pop.to_str().unwrap(),
    ]);
    path(&pop, "seen_train.safetensors")
}

fn fit(data: &str, rank: &str, precision: &str, out: &str) {
    lore(&[
        "fit",
        "--quiet",
        "--data",
        data,
        "--method",
        "regularized",
        "--rank",
        rank,
        "--iterations",
        "200",
        "--lr",
        "0.1",
        "--prune-threshold",
        "0",
        "--precision",
        precision,
        "--out",
        out,
    ]);
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(&x, &y)| x as f64 * y as f64).sum();
    let norm = |v: &[f32]| v.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (norm(a) * norm(b))
}

#[test]
fn bf16_fits_are_recorded_and_close_to_f32() {
    let dir = TempDir::new().unwrap();
    let data = simulate(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    if !Precision::Bf16.is_available() {
        let err = fails(
            &out_dir,
            &[
                "fit",
                "--data",
                &data,
                "--rank",
                "4",
                "--precision",
                "bf16",
                "--out",
                &path(&out_dir, "m.safetensors"),
            ],
        );
        assert!(err.contains("AVX512-BF16"), "{err}");
        return;
    }
    // Rank 17 runs the split kernels (16 columns wide, one along F).
    for rank in ["4", "17"] {
        let (full, mixed) = (
            path(dir.path(), "f32.safetensors"),
            path(dir.path(), "bf16.safetensors"),
        );
        fit(&data, rank, "f32", &full);
        fit(&data, rank, "bf16", &mixed);
        let full = TensorFile::open(Path::new(&full)).unwrap();
        let mixed = TensorFile::open(Path::new(&mixed)).unwrap();
        let precision =
            |file: &TensorFile| file.metadata_json::<Value>("precision").unwrap().unwrap();
        assert_eq!(precision(&full), "f32");
        assert_eq!(precision(&mixed), "bf16");
        let (_, v_full) = full.tensor_f32("V").unwrap();
        let (_, v_mixed) = mixed.tensor_f32("V").unwrap();
        let c = cosine(&v_full, &v_mixed);
        assert!(c > 0.99, "K={rank}: cosine of the f32 and bf16 bases {c}");
        assert_ne!(v_full, v_mixed, "K={rank}: bf16 rounding changes the bits");
    }
    let json = lore(&[
        "bench",
        "--quiet",
        "--users",
        "20",
        "--pairs",
        "6",
        "--features",
        "64",
        "--rank",
        "25",
        "--steps",
        "2",
        "--warmup",
        "1",
        "--no-peak",
        "--json",
        "--precision",
        "bf16",
    ]);
    let report: Value = serde_json::from_str(json.trim()).unwrap();
    assert_eq!(report["precision"], "bf16");
    assert!(report["ms_per_step"]["median"].as_f64().unwrap() > 0.0);
}

#[test]
fn bad_precision_fails_in_one_line() {
    let dir = TempDir::new().unwrap();
    let data = simulate(dir.path());
    let out_dir = dir.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let out = path(&out_dir, "m.safetensors");
    let err = fails(
        &out_dir,
        &[
            "fit",
            "--data",
            &data,
            "--rank",
            "2",
            "--precision",
            "fp8",
            "--out",
            &out,
        ],
    );
    assert!(err.contains("precision") && err.contains("fp8"), "{err}");
    if Precision::Bf16.is_available() {
        let err = fails(
            &out_dir,
            &[
                "fit",
                "--data",
                &data,
                "--rank",
                "65",
                "--precision",
                "bf16",
                "--out",
                &out,
            ],
        );
        assert!(err.contains("64"), "{err}");
    }
}
