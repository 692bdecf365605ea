//! Absurd sizes for every size flag of every command: each is refused at once with one
//! `error:` line naming the flag (never a panic, an abort, a hang or an out-of-memory kill),
//! or, for counts that allocate nothing in proportion (steps, shots), accepted without harm.
//! Also: `--threads` is bounded, a u64::MAX seed works end to end (config.toml included),
//! non-UTF-8 paths work in split, simulate and sweep, and negative values reach the range
//! checks instead of being read as flags.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::{one_line_error, path, run_ok};

/// The absurd values of every size flag: u64::MAX, 2^63 .. 2^60 and 99999999999.
const ABSURD: [&str; 6] = [
    "18446744073709551615",
    "9223372036854775808",
    "4611686018427387904",
    "2305843009213693952",
    "1152921504606846976",
    "99999999999",
];

/// Nothing may take longer than this to refuse (or to finish, for harmless counts).
const LIMIT: Duration = Duration::from_secs(10);

/// What a case must do.
#[derive(Clone, Copy, PartialEq, Debug)]
enum Expect {
    /// Refused: non-zero exit, one `error:` line naming this text (the flag).
    Refused(&'static str),
    /// A count that allocates nothing in proportion: success, or one `error:` line.
    Harmless,
}

/// One command line of the table.
struct Case {
    args: Vec<String>,
    expect: Expect,
}

/// Small inputs made once: a split folder (F = 8), its population file and a model.
struct Inputs {
    _dir: tempfile::TempDir,
    root: PathBuf,
    split: String,
    data: String,
    model: String,
}

fn inputs() -> Inputs {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().to_path_buf();
    let split = path(&root, "split");
    run_ok(&[
        "simulate",
        "--quiet",
        "--seen-users",
        "6",
        "--unseen-users",
        "4",
        "--features",
        "8",
        "--prompts",
        "40",
        "--unseen-fraction",
        "0.25",
        "--out",
        &split,
    ]);
    let data = format!("{split}/population.safetensors");
    let model = path(&root, "model.safetensors");
    run_ok(&[
        "fit",
        "--quiet",
        "--data",
        &data,
        "--rank",
        "2",
        "--iterations",
        "2",
        "--out",
        &model,
    ]);
    Inputs {
        _dir: dir,
        root,
        split,
        data,
        model,
    }
}

/// Runs `lore args` with a deadline; kills it past 3 x LIMIT so that a hang fails the test
/// instead of stalling it.
fn run_timed(args: &[String]) -> (Output, Duration) {
    let started = Instant::now();
    let mut child = Command::new(env!("CARGO_BIN_EXE_lore"))
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if started.elapsed() > 3 * LIMIT {
            child.kill().unwrap();
            break;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    (out, started.elapsed())
}

/// Checks one case; returns a description of what went wrong, if anything.
fn check(case: &Case) -> Option<String> {
    let (out, elapsed) = run_timed(&case.args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lore = format!("lore {}", case.args.join(" "));
    let Some(code) = out.status.code() else {
        return Some(format!(
            "{lore}: killed by a signal ({:?}): {stderr}",
            out.status
        ));
    };
    if code == 101 || stderr.contains("panicked") {
        return Some(format!("{lore}: panicked: {stderr}"));
    }
    if elapsed > LIMIT {
        return Some(format!("{lore}: took {elapsed:?}"));
    }
    let one_error = stderr.starts_with("error: ") && stderr.trim_end().lines().count() == 1;
    match case.expect {
        Expect::Refused(flag) => {
            if code == 0 {
                return Some(format!("{lore}: accepted"));
            }
            if !one_error || !stderr.contains(flag) {
                return Some(format!(
                    "{lore}: not one error line naming {flag}: {stderr}"
                ));
            }
        }
        Expect::Harmless => {
            if code != 0 && !one_error {
                return Some(format!("{lore}: failed without one error line: {stderr}"));
            }
        }
    }
    None
}

/// Runs every case, a few at a time; fails with the list of the cases that went wrong.
fn check_all(cases: Vec<Case>) {
    let cases = std::sync::Mutex::new(cases.into_iter());
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|scope| {
        for _ in 0..6 {
            scope.spawn(|| loop {
                let Some(case) = cases.lock().unwrap().next() else {
                    break;
                };
                if let Some(failure) = check(&case) {
                    failures.lock().unwrap().push(failure);
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|s| s.to_string()).collect()
}

/// A fresh output path for a case (commands that write folders need one each).
fn fresh(root: &Path, n: &mut usize, name: &str) -> String {
    *n += 1;
    path(root, &format!("{name}{n}"))
}

#[test]
fn absurd_sizes_are_refused_at_once_by_every_command() {
    let inp = inputs();
    let (split, data, model) = (&inp.split, &inp.data, &inp.model);
    let mut n = 0;
    let mut cases = Vec::new();
    for value in ABSURD {
        let root = &inp.root;
        let mut add = |expect: Expect, args: Vec<&str>| {
            cases.push(Case {
                args: strings(&args),
                expect,
            })
        };
        let refused = Expect::Refused;
        // fit: K, and the trace a count of steps would fill.
        let out = fresh(root, &mut n, "m");
        add(
            refused("--rank"),
            vec!["fit", "--data", data, "--rank", value, "--out", &out],
        );
        let trace = fresh(root, &mut n, "t");
        add(
            refused("--iterations"),
            vec![
                "fit",
                "--data",
                data,
                "--rank",
                "2",
                "--iterations",
                value,
                "--trace",
                &trace,
                "--out",
                &out,
            ],
        );
        // personalize: the trace.
        add(
            refused("--iterations"),
            vec![
                "personalize",
                "--model",
                model,
                "--data",
                data,
                "--iterations",
                value,
                "--trace",
                &trace,
                "--out",
                &out,
            ],
        );
        // bench: every size, and the timings of its steps.
        let small = [
            ("--users", "2"),
            ("--pairs", "2"),
            ("--features", "8"),
            ("--rank", "2"),
            ("--steps", "1"),
            ("--warmup", "0"),
        ];
        for (flag, _) in small {
            let mut args = vec!["bench", "--no-peak"];
            for (other, default) in small {
                args.extend([other, if other == flag { value } else { default }]);
            }
            add(refused(flag), args);
        }
        // simulate and demo: every size of the population and its responses.
        for flag in [
            "--seen-users",
            "--unseen-users",
            "--features",
            "--rewards",
            "--prompts",
            "--per-prompt",
        ] {
            let out = fresh(root, &mut n, "sim");
            add(refused(flag), vec!["simulate", flag, value, "--out", &out]);
            let out = fresh(root, &mut n, "demo");
            add(refused(flag), vec!["demo", flag, value, "--out", &out]);
        }
        // The experiments' ranks, and the trials of a few-shot curve.
        let out = fresh(root, &mut n, "demo");
        add(
            refused("--ranks"),
            vec!["demo", "--ranks", value, "--out", &out],
        );
        for command in ["sweep", "auto", "shots"] {
            let out = fresh(root, &mut n, command);
            let ranks = format!("1,{value}");
            let ranks: &'static str = Box::leak(ranks.into_boxed_str());
            add(
                refused("--ranks"),
                vec![command, "--splits", split, "--ranks", ranks, "--out", &out],
            );
        }
        let out = fresh(root, &mut n, "shots");
        add(
            refused("--trials"),
            vec![
                "shots", "--splits", split, "--ranks", "2", "--trials", value, "--out", &out,
            ],
        );
        add(
            refused("--threads"),
            vec!["--threads", value, "eval", "--model", model, "--data", data],
        );

        // Counts that allocate nothing in proportion: a short run, whatever the value.
        let out = fresh(root, &mut n, "m");
        for flag in ["--eval-every", "--patience"] {
            add(
                Expect::Harmless,
                vec![
                    "fit",
                    "--quiet",
                    "--data",
                    data,
                    "--rank",
                    "2",
                    "--iterations",
                    "3",
                    "--validation-fraction",
                    "0.3",
                    flag,
                    value,
                    "--out",
                    &out,
                ],
            );
            add(
                Expect::Harmless,
                vec![
                    "personalize",
                    "--quiet",
                    "--model",
                    model,
                    "--data",
                    data,
                    "--iterations",
                    "3",
                    "--validation-fraction",
                    "0.3",
                    flag,
                    value,
                    "--out",
                    &out,
                ],
            );
        }
        add(
            Expect::Harmless,
            vec![
                "bench",
                "--quiet",
                "--no-peak",
                "--users",
                "2",
                "--pairs",
                "2",
                "--features",
                "8",
                "--rank",
                "2",
                "--steps",
                "1",
                "--warmup",
                "0",
                "--personalize-iterations",
                value,
            ],
        );
        let out = fresh(root, &mut n, "shots");
        add(
            Expect::Harmless,
            vec![
                "shots",
                "--quiet",
                "--splits",
                split,
                "--ranks",
                "2",
                "--shots",
                value,
                "--trials",
                "1",
                "--iterations",
                "2",
                "--personalize-iterations",
                "2",
                "--out",
                &out,
            ],
        );
        for flag in ["--eval-every", "--patience"] {
            let out = fresh(root, &mut n, "auto");
            add(
                Expect::Harmless,
                vec![
                    "auto",
                    "--quiet",
                    "--splits",
                    split,
                    "--ranks",
                    "2",
                    "--iterations",
                    "3",
                    "--personalize-iterations",
                    "3",
                    flag,
                    value,
                    "--out",
                    &out,
                ],
            );
        }
        for flag in ["--min-rows", "--max-train-rows", "--shots"] {
            let out = fresh(root, &mut n, "split");
            add(
                Expect::Harmless,
                vec![
                    "split", "--quiet", "--data", data, flag, value, "--out", &out,
                ],
            );
        }
    }
    check_all(cases);
}

/// `lore embed`'s sizes on the tiny model: a batch or limit beyond the input is harmless, a
/// length beyond the model's positions is refused.
#[cfg(feature = "embed")]
#[test]
fn embed_sizes_are_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let model =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama-rm");
    let model = model.to_str().unwrap();
    let input = path(dir.path(), "pairs.jsonl");
    let line = |u: &str, c: &str, r: &str| {
        serde_json::json!({"user_id": u, "prompt": "Which?", "chosen": c, "rejected": r})
            .to_string()
    };
    std::fs::write(
        &input,
        format!(
            "{}\n{}\n",
            line("a", "yes", "no"),
            line("b", "left", "right")
        ),
    )
    .unwrap();
    let mut cases = Vec::new();
    let mut n = 0;
    for value in ABSURD {
        let out = fresh(dir.path(), &mut n, "e");
        cases.push(Case {
            args: strings(&[
                "embed",
                "--quiet",
                "--model",
                model,
                "--input",
                &input,
                "--max-length",
                value,
                "--out",
                &out,
            ]),
            expect: Expect::Refused("length"),
        });
        for flag in ["--batch-size", "--limit"] {
            let out = fresh(dir.path(), &mut n, "e");
            cases.push(Case {
                args: strings(&[
                    "embed", "--quiet", "--model", model, "--input", &input, flag, value, "--out",
                    &out,
                ]),
                expect: Expect::Harmless,
            });
        }
    }
    check_all(cases);
}

#[test]
fn rank_above_the_features_is_refused_with_the_rule() {
    let inp = inputs();
    let out = path(&inp.root, "m.safetensors");
    let err = one_line_error(&[
        "fit", "--data", &inp.data, "--rank", "20000000", "--out", &out,
    ]);
    assert!(
        err.contains("--rank") && err.contains("20000000 exceeds the 8 features"),
        "{err}"
    );
    // K = F is a basis of full rank: accepted.
    run_ok(&[
        "fit",
        "--quiet",
        "--data",
        &inp.data,
        "--rank",
        "8",
        "--iterations",
        "2",
        "--out",
        &out,
    ]);
    let err = one_line_error(&["bench", "--features", "4", "--rank", "5", "--no-peak"]);
    assert!(
        err.contains("--rank") && err.contains("exceeds --features 4"),
        "{err}"
    );
}

#[test]
fn memory_refusals_say_what_is_needed_and_what_is_available() {
    let err = one_line_error(&["bench", "--users", "99999999999", "--no-peak"]);
    assert!(
        err.contains("--users") && err.contains("99999999999 (at most"),
        "{err}"
    );
    let err = one_line_error(&[
        "bench",
        "--users",
        "1000000",
        "--pairs",
        "1000",
        "--no-peak",
    ]);
    assert!(
        err.contains("--users 1000000 --pairs 1000")
            && err.contains(" TB")
            && err.contains("available"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let out = path(dir.path(), "s");
    let err = one_line_error(&["simulate", "--features", "10000000000", "--out", &out]);
    assert!(
        err.contains("--features 10000000000") && err.contains("needs"),
        "{err}"
    );
    assert!(!Path::new(&out).exists(), "nothing may be written");
}

#[test]
fn threads_are_bounded_and_refused_at_once() {
    let dir = tempfile::tempdir().unwrap();
    for threads in ["100000", "10000", "0"] {
        let started = Instant::now();
        let err = one_line_error(&["--threads", threads, "bench", "--no-peak"]);
        assert!(
            started.elapsed() < LIMIT,
            "--threads {threads} took {:?}",
            started.elapsed()
        );
        assert!(err.contains("invalid --threads"), "{err}");
        if threads != "0" {
            assert!(err.contains("at most") && err.contains("per core"), "{err}");
        }
    }
    // The bound in --help.
    let help = String::from_utf8(run_ok(&["--help"]).stdout).unwrap();
    assert!(help.contains("at most 4 per core"), "{help}");
    let _ = dir;
}

#[test]
fn a_u64_max_seed_works_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let seed = "18446744073709551615";
    let first = path(dir.path(), "first");
    let small = [
        "--seen-users",
        "5",
        "--unseen-users",
        "3",
        "--features",
        "8",
        "--prompts",
        "30",
        "--unseen-fraction",
        "0.25",
    ];
    let mut args = vec!["simulate", "--quiet", "--seed", seed, "--out", &first];
    args.extend(small);
    run_ok(&args);
    let config = std::fs::read_to_string(format!("{first}/config.toml")).unwrap();
    assert!(config.contains(&format!("seed = \"{seed}\"")), "{config}");
    // The written configuration reruns it, byte for byte.
    let second = path(dir.path(), "second");
    run_ok(&[
        "simulate",
        "--quiet",
        "--config",
        &format!("{first}/config.toml"),
        "--out",
        &second,
    ]);
    for file in [
        "population.safetensors",
        "seen_train.safetensors",
        "unseen_test.safetensors",
    ] {
        let a = std::fs::read(format!("{first}/{file}")).unwrap();
        let b = std::fs::read(format!("{second}/{file}")).unwrap();
        assert!(a == b, "{file} differs between the run and its config.toml");
    }
    // Another seed draws another population.
    let third = path(dir.path(), "third");
    let mut args = vec!["simulate", "--quiet", "--seed", "7", "--out", &third];
    args.extend(small);
    run_ok(&args);
    assert_ne!(
        std::fs::read(format!("{first}/population.safetensors")).unwrap(),
        std::fs::read(format!("{third}/population.safetensors")).unwrap()
    );
    // The same seed in fit, split and the experiments.
    let data = format!("{first}/population.safetensors");
    let model = path(dir.path(), "m.safetensors");
    run_ok(&[
        "fit",
        "--quiet",
        "--data",
        &data,
        "--rank",
        "2",
        "--iterations",
        "2",
        "--seed",
        seed,
        "--out",
        &model,
    ]);
    let resplit = path(dir.path(), "resplit");
    run_ok(&[
        "split", "--quiet", "--data", &data, "--shots", "1", "--seed", seed, "--out", &resplit,
    ]);
    let swept = path(dir.path(), "swept");
    run_ok(&[
        "sweep",
        "--quiet",
        "--splits",
        &first,
        "--ranks",
        "1,2",
        "--seeds",
        &format!("0,{seed}"),
        "--iterations",
        "2",
        "--personalize-iterations",
        "2",
        "--out",
        &swept,
    ]);
    let config = std::fs::read_to_string(format!("{swept}/config.toml")).unwrap();
    assert!(config.contains(&format!("\"{seed}\"")), "{config}");
}

#[cfg(unix)]
#[test]
fn non_utf8_paths_work_in_every_command() {
    use std::ffi::OsStr;
    use std::os::unix::ffi::OsStrExt;

    let dir = tempfile::tempdir().unwrap();
    let odd = |name: &[u8]| dir.path().join(OsStr::from_bytes(name));
    let lore = |args: &[&OsStr]| {
        let out = Command::new(env!("CARGO_BIN_EXE_lore"))
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "lore {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    let os = |s: &'static str| OsStr::new(s);
    let simulated = odd(b"sim-\xff");
    lore(&[
        os("simulate"),
        os("--quiet"),
        os("--seen-users"),
        os("5"),
        os("--unseen-users"),
        os("3"),
        os("--features"),
        os("8"),
        os("--prompts"),
        os("30"),
        os("--unseen-fraction"),
        os("0.25"),
        os("--out"),
        simulated.as_os_str(),
    ]);
    assert!(simulated.join("seen_train.safetensors").is_file());
    let data = odd(b"data-\xfe.safetensors");
    std::fs::copy(simulated.join("population.safetensors"), &data).unwrap();
    let resplit = odd(b"split-\xfd");
    lore(&[
        os("split"),
        os("--quiet"),
        os("--data"),
        data.as_os_str(),
        os("--shots"),
        os("1"),
        os("--out"),
        resplit.as_os_str(),
    ]);
    assert!(resplit.join("unseen_test.safetensors").is_file());
    let swept = odd(b"sweep-\xfc");
    lore(&[
        os("sweep"),
        os("--quiet"),
        os("--splits"),
        simulated.as_os_str(),
        os("--ranks"),
        os("1,2"),
        os("--iterations"),
        os("2"),
        os("--personalize-iterations"),
        os("2"),
        os("--out"),
        swept.as_os_str(),
    ]);
    assert!(swept.join("results.json").is_file());
    // Each folder's config.toml reruns it: the paths are kept, byte for byte.
    let again = odd(b"again-\xff");
    lore(&[
        os("simulate"),
        os("--quiet"),
        os("--config"),
        simulated.join("config.toml").as_os_str(),
        os("--out"),
        again.as_os_str(),
    ]);
    let config = std::fs::read_to_string(resplit.join("config.toml")).unwrap();
    assert!(config.contains("data"), "{config}");
    lore(&[
        os("split"),
        os("--quiet"),
        os("--config"),
        resplit.join("config.toml").as_os_str(),
        os("--out"),
        again.join("x").as_os_str(),
    ]);
    // The single-file commands too: fit, personalize and eval.
    let model = odd(b"model-\xfb.safetensors");
    let users = odd(b"users-\xfa.safetensors");
    let trace = odd(b"trace-\xf9.jsonl");
    let fewshot = resplit.join("unseen_train.safetensors");
    lore(&[
        os("fit"),
        os("--quiet"),
        os("--data"),
        resplit.join("seen_train.safetensors").as_os_str(),
        os("--rank"),
        os("2"),
        os("--iterations"),
        os("2"),
        os("--trace"),
        trace.as_os_str(),
        os("--out"),
        model.as_os_str(),
    ]);
    lore(&[
        os("personalize"),
        os("--quiet"),
        os("--model"),
        model.as_os_str(),
        os("--data"),
        fewshot.as_os_str(),
        os("--iterations"),
        os("2"),
        os("--out"),
        users.as_os_str(),
    ]);
    lore(&[
        os("eval"),
        os("--quiet"),
        os("--model"),
        model.as_os_str(),
        os("--users"),
        users.as_os_str(),
        os("--data"),
        resplit.join("unseen_test.safetensors").as_os_str(),
    ]);
    assert!(model.is_file() && users.is_file() && trace.is_file());
}

#[test]
fn negative_values_reach_the_range_checks() {
    let inp = inputs();
    let out = path(&inp.root, "m.safetensors");
    for (flag, value, message) in [
        ("--lr", "-inf", "invalid learning rate: -inf"),
        ("--lr", "-1", "invalid learning rate: -1"),
        ("--alpha", "-0.5", "invalid alpha: -0.5"),
        ("--logit-scale", "-inf", "invalid logit scale: -inf"),
    ] {
        let err = one_line_error(&[
            "fit", "--data", &inp.data, "--rank", "2", flag, value, "--out", &out,
        ]);
        assert!(err.contains(message), "{flag} {value}: {err}");
    }
    let sim = path(&inp.root, "s");
    let err = one_line_error(&["simulate", "--test-fraction", "-0.5", "--out", &sim]);
    assert!(err.contains("test fraction: -0.5"), "{err}");
    let err = one_line_error(&["simulate", "--dirichlet-alpha", "-inf", "--out", &sim]);
    assert!(err.contains("dirichlet alpha: -inf"), "{err}");
    let err = one_line_error(&[
        "split",
        "--data",
        &inp.data,
        "--unseen-fraction",
        "-0.5",
        "--out",
        &sim,
    ]);
    assert!(
        err.contains("-0.5") && !err.contains("unexpected argument"),
        "{err}"
    );
    let err = one_line_error(&[
        "sweep", "--splits", &inp.split, "--alphas", "-1", "--out", &sim,
    ]);
    assert!(
        err.contains("-1") && !err.contains("unexpected argument"),
        "{err}"
    );
    let err = one_line_error(&["fit", "--data", &inp.data, "--rank", "-2", "--out", &out]);
    assert!(err.contains("'-2'") && err.contains("--rank"), "{err}");
}
