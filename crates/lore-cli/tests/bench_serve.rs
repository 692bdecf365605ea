//! `lore bench serve` run tiny: every workload at two client counts against the in-process
//! service; the report's numbers are consistent and the writes are in the store. Needs
//! all-MiniLM-L6-v2 for the text workload (fails, never skips, without it).
#![cfg(all(feature = "embed", feature = "serve"))]

mod common;

use std::collections::BTreeMap;

use serde_json::Value;

/// Every run of the report, by (workload, clients).
fn runs(report: &Value) -> BTreeMap<(String, u64), Value> {
    report["runs"]
        .as_array()
        .expect("runs")
        .iter()
        .map(|r| {
            (
                (
                    r["workload"].as_str().unwrap().to_string(),
                    r["clients"].as_u64().unwrap(),
                ),
                r.clone(),
            )
        })
        .collect()
}

#[test]
fn tiny_bench_reports_every_workload_and_writes_reach_the_store() {
    assert!(
        lore_embed::find_minilm().is_ok(),
        "all-MiniLM-L6-v2 is installed here and in CI"
    );
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("store");
    let store_arg = store.to_str().unwrap();
    let items = 2u64;
    let requests = 12u64;
    let seconds = 2.0;
    let stdout = common::lore_stdout(&[
        "--quiet",
        "bench",
        "serve",
        "--clients",
        "1,3",
        "--seconds",
        &seconds.to_string(),
        "--requests",
        &requests.to_string(),
        "--items",
        &items.to_string(),
        "--texts",
        "8",
        "--store",
        store_arg,
        "--json",
    ]);
    let report: Value = serde_json::from_str(&stdout).expect("one JSON object");
    assert_eq!(report["features"], 384);
    assert_eq!(report["rank"], 8);
    let runs = runs(&report);
    let keys: Vec<(String, u64)> = runs.keys().cloned().collect();
    let mut expected = Vec::new();
    for w in ["features", "text", "writes"] {
        for c in [1, 3] {
            expected.push((w.to_string(), c));
        }
    }
    expected.sort();
    assert_eq!(keys, expected);
    for ((workload, clients), r) in &runs {
        let what = format!("{workload} at {clients} clients: {r}");
        let done = r["requests"].as_u64().unwrap();
        let max = r["max_ms"].as_f64().unwrap();
        if workload == "text" {
            // MiniLM on a shared machine may not get through the budget before the deadline.
            assert!((1..=requests).contains(&done), "{what}");
        } else {
            // Bounded by --requests: the deadline is far for these.
            assert_eq!(done, requests, "{what}");
        }
        assert_eq!(r["errors"], serde_json::json!({}), "{what}");
        let per_request = if workload == "writes" { 1 } else { items };
        assert_eq!(r["items"].as_u64().unwrap(), done * per_request, "{what}");
        // The deadline, plus the requests in flight when it passed.
        let run_seconds = r["seconds"].as_f64().unwrap();
        assert!(
            run_seconds > 0.0 && run_seconds < seconds + max * 1e-3 + 0.5,
            "{what}"
        );
        let rate = r["items_per_s"].as_f64().unwrap();
        assert!(
            (rate * run_seconds - (done * per_request) as f64).abs() < 1e-6 * rate.max(1.0),
            "{what}"
        );
        let (p50, p99) = (r["p50_ms"].as_f64().unwrap(), r["p99_ms"].as_f64().unwrap());
        assert!(0.0 < p50 && p50 <= p99 && p99 <= max, "{what}");
        // One request at a time per client: half the requests took p50 or more each, within
        // the run's clients × seconds.
        assert!(
            p50 * 1e-3 * (done / 2) as f64 <= run_seconds * *clients as f64,
            "{what}"
        );
    }
    // Text: compared with the offline path on the same texts.
    let offline = &report["offline_embed"];
    assert_eq!(offline["texts"], 8, "{offline}");
    assert!(offline["texts_per_s"].as_f64().unwrap() > 0.0);
    for c in [1, 3] {
        let r = &runs[&("text".to_string(), c)];
        let ratio = r["offline_ratio"].as_f64().unwrap();
        let expected =
            r["items_per_s"].as_f64().unwrap() / offline["texts_per_s"].as_f64().unwrap();
        assert!((ratio - expected).abs() < 1e-9 * expected, "{r}");
    }
    // Writes: group commit counted, fsync measured beside the store.
    for c in [1u64, 3] {
        let r = &runs[&("writes".to_string(), c)];
        let commits = r["commits"].as_u64().unwrap();
        let writes = requests + c; // the timed writes and one warm-up write per client
        assert!(commits >= 1 && commits <= writes, "{r}");
        let per_commit = r["writes_per_commit"].as_f64().unwrap();
        assert!(
            (per_commit - writes as f64 / commits as f64).abs() < 1e-9,
            "{r}"
        );
    }
    let fsync = &report["fsync"];
    assert!(fsync["fsyncs"].as_u64().unwrap() > 0, "{fsync}");
    assert!(fsync["fsyncs_per_s"].as_f64().unwrap() > 0.0, "{fsync}");
    let goals = report["goals"].as_array().unwrap();
    assert!(
        goals.is_empty(),
        "goals are judged at 32 items and 16/64 clients only: {goals:?}"
    );

    // Every acknowledged write is in the store: each writer's pairs went to one user
    // (at most 50 pairs each), one writer in the first run and three in the second.
    let opened = lore_serve::store::Store::open(&store, 384, 8).unwrap();
    let ids = opened.user_ids().unwrap();
    let bench_users: Vec<&String> = ids.iter().filter(|id| id.starts_with("bench-")).collect();
    assert_eq!(bench_users.len(), 4, "{ids:?}");
    let pairs: u64 = bench_users
        .iter()
        .map(|id| opened.get(id).unwrap().unwrap().pairs)
        .sum();
    assert_eq!(pairs, 2 * requests + 1 + 3);
    // The fsync probe left nothing behind.
    assert!(!store.join(".lore-bench-fsync").exists());
}

#[test]
fn the_table_names_each_run_and_the_goals() {
    let stdout = common::lore_stdout(&[
        "--quiet",
        "bench",
        "serve",
        "--workloads",
        "features,writes",
        "--clients",
        "16",
        "--seconds",
        "1",
        "--requests",
        "40",
    ]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert!(lines[0].starts_with("lore serve on loopback"), "{stdout}");
    assert!(lines[1].split_whitespace().eq([
        "workload", "clients", "requests", "items/s", "p50", "ms", "p99", "ms", "max", "ms",
        "notes"
    ]));
    let features: Vec<&str> = lines[2].split_whitespace().collect();
    assert_eq!(&features[..3], &["features", "16", "40"], "{stdout}");
    let writes: Vec<&str> = lines[3].split_whitespace().collect();
    assert_eq!(&writes[..3], &["writes", "16", "40"], "{stdout}");
    assert!(lines[3].contains("writes/commit"), "{stdout}");
    assert!(stdout.contains("fsync beside the store:"), "{stdout}");
    // 32 items at 16 clients: the features goal is judged (met or missed).
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("goal ") && l.contains("20,000 items/s")),
        "{stdout}"
    );
}

#[test]
fn bad_flags_are_refused_in_one_line() {
    for args in [
        &["bench", "serve", "--clients", "0"][..],
        &["bench", "serve", "--seconds", "0"],
        &["bench", "serve", "--requests", "0"],
        &["bench", "serve", "--items", "0"],
        &["bench", "serve", "--workloads", "nothing"],
        &["bench", "--users", "10", "serve"],
    ] {
        let line = common::one_line_error(args);
        assert!(!line.contains("panicked"), "{args:?}: {line}");
    }
}
