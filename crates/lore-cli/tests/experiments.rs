//! The experiment pipeline through the `lore` binary: simulate -> split -> sweep -> shots on a
//! small population, the demo's acceptance check, reproducibility, configuration files, the
//! charts (decoded and inspected) and bad input.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use lore_io::{PreferenceFile, TensorFile, TensorWriter};
use serde_json::Value;
use tempfile::TempDir;

mod common;
use common::{lore_stdout as lore, one_line_error as fails, path};

const SETS: [&str; 4] = ["seen_train", "seen_test", "unseen_train", "unseen_test"];

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// A small simulated population (F = 16, 40 seen and 20 unseen users) in `dir/pop`.
fn simulate(dir: &Path) -> PathBuf {
    let out = dir.join("pop");
    lore(&[
        "simulate",
        "--quiet",
        "--seen-users",
        "40",
        "--unseen-users",
        "20",
        "--features",
        "16",
        "--prompts",
        "200",
        "--out",
        out.to_str().unwrap(),
    ]);
    out
}

/// Checks a PNG chart: its size, that it is not blank, and that its lines' colors are there.
fn check_chart(path: &Path, colors: usize) {
    let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path).unwrap()));
    let mut reader = decoder.read_info().unwrap();
    let mut pixels = vec![0; reader.output_buffer_size()];
    let frame = reader.next_frame(&mut pixels).unwrap();
    assert_eq!(
        (frame.width, frame.height),
        (960, 640),
        "{}",
        path.display()
    );
    assert_eq!(frame.color_type, png::ColorType::Rgb);
    let rgb: Vec<[u8; 3]> = pixels[..frame.buffer_size()]
        .chunks_exact(3)
        .map(|p| [p[0], p[1], p[2]])
        .collect();
    let ink = rgb.iter().filter(|p| **p != [255, 255, 255]).count();
    assert!(
        ink > rgb.len() / 50,
        "{}: only {ink} non-white pixels",
        path.display()
    );
    // Text is drawn (dark pixels), and each line's color appears.
    assert!(rgb.iter().filter(|p| p.iter().all(|&c| c < 60)).count() > 500);
    let line_colors = [[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40]];
    for color in &line_colors[..colors] {
        let n = rgb.iter().filter(|p| *p == color).count();
        assert!(
            n > 100,
            "{}: color {color:?} appears {n} times",
            path.display()
        );
    }
}

/// Every set of a split folder, loaded.
fn load_sets(dir: &Path) -> Vec<PreferenceFile> {
    SETS.iter()
        .map(|s| PreferenceFile::load(dir.join(format!("{s}.safetensors"))).unwrap())
        .collect()
}

fn indices(file: &PreferenceFile, name: &str) -> Vec<i64> {
    file.file().tensor_indices(name).unwrap().1
}

#[test]
fn simulate_split_sweep_shots_end_to_end() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    for file in [
        "population.safetensors",
        "v_ref.safetensors",
        "split.json",
        "config.toml",
    ] {
        assert!(pop.join(file).is_file(), "{file}");
    }

    // Re-split the whole population by prompt, with a cap and 20 shots.
    let splits = dir.path().join("splits");
    lore(&[
        "split",
        "-q",
        "--data",
        &path(&pop, "population.safetensors"),
        "--by-prompt",
        "--unseen-fraction",
        "0.3",
        "--max-train-rows",
        "12",
        "--shots",
        "20",
        "--out",
        splits.to_str().unwrap(),
    ]);
    let split_json = json(&splits.join("split.json"));
    assert_eq!(split_json["options"]["shots"], 20);
    assert_eq!(split_json["counts"]["unseen_users"], 18);
    assert!(
        splits.join("v_ref.safetensors").is_file(),
        "v_ref is copied beside the sets"
    );

    // Sweep ranks ref, 1, 2, 4 with two seeds.
    let sweep = dir.path().join("sweep");
    let table = lore(&[
        "sweep",
        "--quiet",
        "--splits",
        splits.to_str().unwrap(),
        "--ranks",
        "4,0,1,2",
        "--seeds",
        "0,1",
        "--iterations",
        "150",
        "--personalize-iterations",
        "150",
        "--out",
        sweep.to_str().unwrap(),
    ]);
    assert!(
        table.contains("ref") && table.contains("unseen users, test"),
        "{table}"
    );
    let results = json(&sweep.join("results.json"));
    let rows = results["rows"].as_array().unwrap();
    let ranks: Vec<u64> = rows.iter().map(|r| r["rank"].as_u64().unwrap()).collect();
    assert_eq!(ranks, vec![0, 1, 2, 4]);
    for row in rows {
        assert_eq!(row["alpha"], 0.0);
        for set in SETS {
            let s = &row[set];
            let mean = s["mean"].as_f64().unwrap();
            assert!((0.0..=1.0).contains(&mean), "{set}: {mean}");
            assert!(s["std"].as_f64().unwrap() >= 0.0);
            assert_eq!(s["per_seed"].as_array().unwrap().len(), 2);
            assert!(s["seed_std"].as_f64().is_some());
        }
    }
    let unseen_test = |k: usize| rows[k]["unseen_test"]["mean"].as_f64().unwrap();
    assert!(
        unseen_test(3) > unseen_test(1),
        "K = 4 beats K = 1 on a rank-4 population"
    );
    let csv = std::fs::read_to_string(sweep.join("results.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5);
    assert!(csv.starts_with("alpha,rank,kept_ranks,seen_train_mean"));
    check_chart(&sweep.join("accuracy_vs_rank.png"), 4);
    let config = std::fs::read_to_string(sweep.join("config.toml")).unwrap();
    assert!(config.contains("ranks = [4, 0, 1, 2]") && config.contains("iterations = 150"));

    // The few-shot curve on the same folder.
    let shots = dir.path().join("shots");
    let table = lore(&[
        "shots",
        "-q",
        "--splits",
        splits.to_str().unwrap(),
        "--ranks",
        "1,4",
        "--shots",
        "2,5,20",
        "--trials",
        "2",
        "--iterations",
        "150",
        "--personalize-iterations",
        "150",
        "--out",
        shots.to_str().unwrap(),
    ]);
    assert!(table.contains("K = 4"), "{table}");
    let results = json(&shots.join("results.json"));
    let rows = results["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 6);
    assert_eq!(rows[5]["shots"], 20);
    assert_eq!(rows[5]["mean_shots"], 20.0);
    assert_eq!(
        rows[3]["unseen_test"]["per_trial"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    let k4 = |i: usize| rows[i]["unseen_test"]["mean"].as_f64().unwrap();
    assert!(k4(5) > k4(3), "20 shots beat 2 with K = 4");
    check_chart(&shots.join("shots.png"), 2);
}

#[test]
fn demo_at_reduced_size_shows_the_planted_rank() {
    // The demo's built-in population with fewer users and steps; several seeds of the
    // population (each seed draws new directions, responses and users).
    let dir = TempDir::new().unwrap();
    for seed in ["0", "1", "2"] {
        let out = dir.path().join(format!("demo-{seed}"));
        let table = lore(&[
            "demo",
            "-q",
            "--seed",
            seed,
            "--seen-users",
            "120",
            "--unseen-users",
            "40",
            "--features",
            "32",
            "--ranks",
            "0,1,4",
            "--iterations",
            "200",
            "--personalize-iterations",
            "200",
            "--out",
            out.to_str().unwrap(),
        ]);
        let results = json(&out.join("results.json"));
        let rows = results["rows"].as_array().unwrap();
        let unseen_test = |i: usize| rows[i]["unseen_test"]["mean"].as_f64().unwrap();
        assert_eq!(rows[2]["rank"], 4);
        assert!(
            unseen_test(2) >= unseen_test(1) + 0.05,
            "seed {seed}: K = 4 {} vs K = 1 {}\n{table}",
            unseen_test(2),
            unseen_test(1)
        );
        check_chart(&out.join("demo.png"), 4);
    }
}

/// An unsorted preference file with string user ids (u0 .. u9, rows interleaved), 12 rows
/// each, prompt ids in metadata and a `pair_id` tensor.
fn write_preferences(path: &Path) {
    let (n_users, per_user, f) = (10usize, 12usize, 8usize);
    let p = n_users * per_user;
    let x: Vec<f32> = (0..p * f)
        .map(|i| ((i * 37 % 101) as f32 - 50.0) / 10.0)
        .collect();
    let users: Vec<i64> = (0..p).map(|i| ((i * 7) % n_users) as i64).collect();
    let ids: Vec<String> = (0..n_users)
        .map(|u| format!("u{}", (u * 3) % n_users))
        .collect();
    let prompts: Vec<String> = (0..p).map(|i| format!("prompt-{}", i % 15)).collect();
    let pairs: Vec<i64> = (0..p as i64).map(|i| 1000 + i).collect();
    let mut out = TensorWriter::new();
    out.add_f32("x", &[p, f], &x)
        .add_i64("user", &[p], &users)
        .add_i64("pair_id", &[p], &pairs)
        .metadata("user_ids", &ids)
        .metadata("prompt_ids", &prompts);
    out.write_atomic(path).unwrap();
}

#[test]
fn splits_are_reproducible_disjoint_and_capped() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("prefs.safetensors");
    write_preferences(&data);
    let split = |out: &str, seed: &str, by_prompt: bool| {
        let mut args = vec![
            "split",
            "-q",
            "--data",
            data.to_str().unwrap(),
            "--unseen-fraction",
            "0.3",
            "--shots",
            "3",
            "--max-train-rows",
            "4",
            "--seed",
            seed,
            "--out",
        ];
        let out = dir.path().join(out);
        args.push(out.to_str().unwrap());
        if by_prompt {
            args.push("--by-prompt");
        }
        lore(&args);
        out
    };
    let a = split("a", "5", false);
    let b = split("b", "5", false);
    let c = split("c", "6", false);
    let bytes = |dir: &Path, name: &str| std::fs::read(dir.join(name)).unwrap();
    for name in SETS
        .map(|s| format!("{s}.safetensors"))
        .iter()
        .chain(&["split.json".into()])
    {
        assert_eq!(
            bytes(&a, name),
            bytes(&b, name),
            "{name} differs for the same seed"
        );
    }
    assert_ne!(
        bytes(&a, "seen_train.safetensors"),
        bytes(&c, "seen_train.safetensors")
    );

    for (dir, by_prompt) in [(a, false), (split("d", "7", true), true)] {
        let sets = load_sets(&dir);
        let source = PreferenceFile::load(&data).unwrap();
        let source_users = indices(&source, "user");
        let source_ids = source.user_ids().unwrap();
        let mut rows_seen = HashSet::new();
        let mut users_of: Vec<HashSet<String>> = Vec::new();
        for (name, set) in SETS.iter().zip(&sets) {
            let rows = indices(set, "source_row");
            let users = indices(set, "user");
            let ids = set.user_ids().unwrap();
            // Every row once at most; it is the same user's row as in the source; carried
            // tensors follow their rows.
            for ((&r, &u), &pair) in rows.iter().zip(&users).zip(&indices(set, "pair_id")) {
                assert!(rows_seen.insert(r), "row {r} is in two sets");
                assert_eq!(
                    ids[u as usize],
                    source_ids[source_users[r as usize] as usize]
                );
                assert_eq!(pair, 1000 + r);
            }
            let mut counts: HashMap<i64, usize> = HashMap::new();
            users
                .iter()
                .for_each(|&u| *counts.entry(u).or_default() += 1);
            match *name {
                "seen_train" => assert!(counts.values().all(|&c| c <= 4), "cap"),
                "unseen_train" => assert!(counts.values().all(|&c| c == 3), "shots"),
                _ => {}
            }
            users_of.push(ids.iter().cloned().collect());
            let prompts: Vec<Value> = set.file().metadata_json("prompt_ids").unwrap().unwrap();
            assert_eq!(prompts.len(), rows.len());
        }
        // Train and test sets index the same users; no unseen user is a seen user.
        assert_eq!(sets[0].user_ids(), sets[1].user_ids());
        assert_eq!(sets[2].user_ids(), sets[3].user_ids());
        assert!(users_of[0].is_disjoint(&users_of[2]));
        if by_prompt {
            let prompts = |i: usize| -> HashSet<String> {
                let v: Vec<String> = sets[i].file().metadata_json("prompt_ids").unwrap().unwrap();
                v.into_iter().collect()
            };
            let train: HashSet<String> = prompts(0).union(&prompts(2)).cloned().collect();
            assert!(train.is_disjoint(&prompts(1)) && train.is_disjoint(&prompts(3)));
        }
    }
}

#[test]
fn results_do_not_depend_on_threads_and_configs_rerun() {
    let dir = TempDir::new().unwrap();
    let pop = simulate(dir.path());
    let sweep = |out: &str, extra: &[&str]| {
        let out = dir.path().join(out);
        let mut args = vec![
            "sweep",
            "-q",
            "--splits",
            pop.to_str().unwrap(),
            "--ranks",
            "0,2",
            "-t",
            "60",
            "--personalize-iterations",
            "60",
            "--out",
            out.to_str().unwrap(),
        ];
        args.extend_from_slice(extra);
        lore(&args);
        std::fs::read(out.join("results.json")).unwrap()
    };
    let one = sweep("one", &["--threads", "1"]);
    assert_eq!(one, sweep("two", &["--threads", "2"]));

    // A config file with the same options, and one overridden by a flag.
    let config = dir.path().join("run.toml");
    std::fs::write(
        &config,
        format!(
            "splits = {:?}\nranks = [0, 2]\niterations = 60\npersonalize-iterations = 60\n",
            pop.to_str().unwrap()
        ),
    )
    .unwrap();
    let from_config = dir.path().join("from-config");
    lore(&[
        "sweep",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--out",
        from_config.to_str().unwrap(),
    ]);
    assert_eq!(
        one,
        std::fs::read(from_config.join("results.json")).unwrap()
    );
    // The effective config written beside the results reruns the same sweep.
    let rerun = dir.path().join("rerun");
    lore(&[
        "sweep",
        "-q",
        "--config",
        &path(&from_config, "config.toml"),
        "--out",
        rerun.to_str().unwrap(),
    ]);
    assert_eq!(one, std::fs::read(rerun.join("results.json")).unwrap());
    let overridden = dir.path().join("overridden");
    lore(&[
        "sweep",
        "-q",
        "--config",
        config.to_str().unwrap(),
        "--ranks",
        "0",
        "--out",
        overridden.to_str().unwrap(),
        "--json",
    ]);
    let rows = json(&overridden.join("results.json"))["rows"]
        .as_array()
        .unwrap()
        .len();
    assert_eq!(rows, 1, "--ranks overrides the file");
}

#[test]
fn bad_experiment_input_is_one_line_and_writes_nothing() {
    let dir = TempDir::new().unwrap();
    let out = dir.path().join("out");
    let out_s = out.to_str().unwrap();
    let not_splits = dir.path().to_str().unwrap();
    let err = fails(&["sweep", "--splits", not_splits, "--out", out_s]);
    assert!(err.contains("not a split folder"), "{err}");
    assert!(fails(&["sweep", "--out", out_s]).contains("--splits"));
    let err = fails(&[
        "sweep", "--splits", not_splits, "--ranks", "1,1", "--out", out_s,
    ]);
    assert!(err.contains("appears twice"), "{err}");
    let err = fails(&[
        "sweep", "--splits", not_splits, "--method", "joint", "--out", out_s,
    ]);
    assert!(err.contains("unknown method"), "{err}");

    let config = dir.path().join("bad.toml");
    std::fs::write(&config, "rank = [1, 2]\n").unwrap();
    let err = fails(&[
        "sweep",
        "--config",
        config.to_str().unwrap(),
        "--out",
        out_s,
    ]);
    assert!(err.contains("unknown key `rank`"), "{err}");

    let data = dir.path().join("prefs.safetensors");
    let mut w = TensorWriter::new();
    let x = vec![1.0f32; 6 * 4];
    w.add_f32("x", &[6, 4], &x)
        .add_i64("user", &[6], &[0, 0, 0, 1, 1, 1]);
    w.write_atomic(&data).unwrap();
    let data_s = data.to_str().unwrap();
    let err = fails(&["split", "--data", data_s, "--by-prompt", "--out", out_s]);
    assert!(err.contains("prompt ids"), "{err}");
    let err = fails(&[
        "split",
        "--data",
        data_s,
        "--unseen-fraction",
        "1.5",
        "--out",
        out_s,
    ]);
    assert!(err.contains("unseen fraction"), "{err}");
    let err = fails(&[
        "split",
        "--data",
        data_s,
        "--shots",
        "5",
        "--unseen-fraction",
        "0.5",
        "--out",
        out_s,
    ]);
    assert!(err.contains("lower --shots"), "{err}");
    let err = fails(&["simulate", "--seen-users", "0", "--out", out_s]);
    assert!(err.contains("users"), "{err}");

    // A split folder without v_ref: K = 0 alone cannot run.
    let pop = simulate(dir.path());
    std::fs::remove_file(pop.join("v_ref.safetensors")).unwrap();
    let err = fails(&[
        "shots",
        "--splits",
        pop.to_str().unwrap(),
        "--ranks",
        "0",
        "--out",
        out_s,
    ]);
    assert!(err.contains("v_ref"), "{err}");
    assert!(!out.exists(), "no output on failure");
}

#[test]
fn simulations_are_reproducible_and_take_given_responses() {
    let dir = TempDir::new().unwrap();
    let a = simulate(dir.path());
    let b = dir.path().join("again");
    std::fs::rename(&a, &b).unwrap();
    let a = simulate(dir.path());
    for name in ["population.safetensors", "v_ref.safetensors", "split.json"]
        .into_iter()
        .map(String::from)
        .chain(SETS.map(|s| format!("{s}.safetensors")))
    {
        assert_eq!(
            std::fs::read(a.join(&name)).unwrap(),
            std::fs::read(b.join(&name)).unwrap(),
            "{name} differs for the same options"
        );
    }

    // Responses from a file: 30 prompts x 3 responses, F = 5, J = 2 scores, and a v_ref.
    let (m, r, f, j) = (30usize, 3usize, 5usize, 2usize);
    let embeddings: Vec<f32> = (0..m * r * f)
        .map(|i| ((i * 29 % 53) as f32 - 26.0) / 9.0)
        .collect();
    let scores: Vec<f32> = embeddings
        .chunks_exact(f)
        .flat_map(|e| [e[0] - e[1], e[2] + 0.5 * e[3]])
        .collect();
    let v_ref = [1.0f32, -1.0, 0.5, 0.25, 0.0];
    let responses = dir.path().join("responses.safetensors");
    let mut w = TensorWriter::new();
    w.add_f32("embeddings", &[m, r, f], &embeddings)
        .add_f32("scores", &[m, r, j], &scores)
        .add_f32("v_ref", &[f], &v_ref);
    w.write_atomic(&responses).unwrap();
    let out = dir.path().join("from-file");
    lore(&[
        "simulate",
        "-q",
        "--responses",
        responses.to_str().unwrap(),
        "--seen-users",
        "8",
        "--unseen-users",
        "4",
        "--seen-fraction",
        "0.5",
        "--unseen-fraction",
        "0.2",
        "--out",
        out.to_str().unwrap(),
    ]);
    let sets = load_sets(&out);
    assert_eq!(sets[0].n_features(), f);
    assert_eq!((sets[0].n_users(), sets[2].n_users()), (8, 4));
    // 15 training prompts: seen users answer 8 (rounded), unseen users 3.
    assert_eq!(sets[0].n_rows(), 8 * 8);
    assert_eq!(sets[2].n_rows(), 4 * 3);
    let written = TensorFile::open(out.join("v_ref.safetensors")).unwrap();
    assert_eq!(written.tensor_f32("v_ref").unwrap().1, v_ref);
    let err = fails(&[
        "simulate",
        "--responses",
        responses.to_str().unwrap(),
        "--unseen-fraction",
        "0.01",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(err.contains("unseen fraction"), "{err}");

    // Rows per user as counts: the flag takes N or MIN-MAX, and a bad one is one line.
    let ranged = dir.path().join("ranged");
    lore(&[
        "simulate",
        "-q",
        "--responses",
        responses.to_str().unwrap(),
        "--seen-users",
        "8",
        "--unseen-users",
        "4",
        "--seen-pairs",
        "2-6",
        "--unseen-pairs",
        "3",
        "--out",
        ranged.to_str().unwrap(),
    ]);
    let sets = load_sets(&ranged);
    assert_eq!(sets[2].n_rows(), 4 * 3);
    let view = sets[0].view();
    let seen: Vec<usize> = (0..8).map(|u| view.user_rows(u).len()).collect();
    assert!(seen.iter().all(|n| (2..=6).contains(n)), "{seen:?}");
    for bad in ["6-2", "many", "2-99"] {
        let err = fails(&[
            "simulate",
            "--responses",
            responses.to_str().unwrap(),
            "--seen-pairs",
            bad,
            "--out",
            out.to_str().unwrap(),
        ]);
        assert!(err.contains("seen"), "{bad}: {err}");
    }
}
