//! The embedder identity end to end with all-MiniLM-L6-v2 (fails, never skips, without it):
//! `lore embed` records it, `lore split` carries it into every set and split.json, `lore fit`,
//! `lore personalize` and `lore auto` into their model and users files (auto's with
//! `user_ids`), older preference files' separate keys are read, and inputs embedded
//! differently are refused with one line.
#![cfg(feature = "embed")]

mod common;

use std::path::Path;

use common::{one_line_error, path, run_ok};
use lore_io::{
    EmbedderIdentity, ModelFile, PreferenceFile, SplitFolder, TensorFile, TensorWriter, UsersFile,
};
use serde_json::{json, Value};

const USERS: usize = 12;
const PAIRS_PER_USER: usize = 8;

/// A small deterministic set of text pairs: each user prefers answers about one of three
/// topics, on prompts of their own.
fn write_pairs(dir: &Path) -> String {
    let topics = ["gardening", "astronomy", "cooking"];
    let mut text = String::new();
    for u in 0..USERS {
        let liked = topics[u % 3];
        let other = topics[(u + 1) % 3];
        for i in 0..PAIRS_PER_USER {
            let line = json!({
                "user_id": format!("user{u:02}"),
                "prompt": format!("Question {i} from user {u}: what should I read about next?"),
                "chosen": format!("Read chapter {i} of a {liked} guide, user {u}."),
                "rejected": format!("Try issue {} of a {other} magazine, user {u}.", i + 1),
                "pair_id": format!("u{u}p{i}"),
            });
            text.push_str(&format!("{line}\n"));
        }
    }
    let p = path(dir, "pairs.jsonl");
    std::fs::write(&p, text).unwrap();
    p
}

fn embed(input: &str, out: &str, extra: &[&str]) {
    let mut args = vec![
        "embed", "-q", "--model", "minilm", "--input", input, "--out", out,
    ];
    args.extend_from_slice(extra);
    run_ok(&args);
}

fn split(data: &str, out: &str) {
    run_ok(&[
        "split",
        "-q",
        "--data",
        data,
        "--unseen-fraction",
        "0.3",
        "--shots",
        "3",
        "--seed",
        "1",
        "--out",
        out,
    ]);
}

fn identity_of(path: &str) -> Option<EmbedderIdentity> {
    EmbedderIdentity::read_path(path).unwrap()
}

/// Copies a preference file without its `embedder` entry: a file of an older `lore embed`.
fn strip_entry(from: &str, to: &str) {
    let file = TensorFile::open(from).unwrap();
    let mut out = TensorWriter::new();
    for name in file.names() {
        let (shape, values) = match file.dtype_name(&name).unwrap().as_str() {
            "I64" => {
                let (shape, v) = file.tensor_indices(&name).unwrap();
                out.add_i64(name, &shape, &v);
                continue;
            }
            _ => file.tensor_f32(&name).unwrap(),
        };
        out.add_f32(name, &shape, &values);
    }
    for (key, value) in file.metadata() {
        if key != EmbedderIdentity::METADATA_KEY {
            out.metadata_raw(key.clone(), value.clone());
        }
    }
    out.write_atomic(to).unwrap();
}

#[test]
fn the_identity_travels_from_embed_to_every_model_file() {
    let found = lore_embed::find_minilm();
    assert!(found.is_ok(), "{}", found.unwrap_err());
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let input = write_pairs(d);

    // embed: one `embedder` entry, and the old separate keys for older readers.
    let prefs = path(d, "prefs.safetensors");
    embed(&input, &prefs, &[]);
    let identity = PreferenceFile::load(&prefs).unwrap().embedder().unwrap();
    let identity = identity.expect("lore embed records its embedder");
    assert_eq!(identity.name, lore_embed::MINILM_NAME);
    assert_eq!(
        (
            identity.architecture.as_str(),
            identity.pooling.as_str(),
            identity.normalized,
            identity.dim
        ),
        ("bert", "mean", true, 384)
    );
    assert_eq!(identity.max_length, 256);
    assert_eq!(
        Path::new(&identity.model_path),
        found.as_ref().unwrap().as_path()
    );
    let file = TensorFile::open(&prefs).unwrap();
    for key in ["model", "model_path", "text_format", "dim", "pooling"] {
        assert!(file.metadata().contains_key(key), "old key {key} kept");
    }

    // split: every set and split.json.
    let splits = path(d, "splits");
    split(&prefs, &splits);
    let folder = SplitFolder::open(&splits).unwrap();
    assert_eq!(folder.embedder(), Some(&identity));
    for set in folder.sets() {
        assert_eq!(set.embedder().unwrap().as_ref(), Some(&identity));
    }
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(Path::new(&splits).join("split.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        summary["embedder"],
        serde_json::to_value(&identity).unwrap()
    );

    // fit: the model file records the preference file's identity.
    let seen_train = path(Path::new(&splits), "seen_train.safetensors");
    let model = path(d, "model.safetensors");
    run_ok(&[
        "fit",
        "-q",
        "--data",
        &seen_train,
        "--rank",
        "2",
        "--iterations",
        "30",
        "--out",
        &model,
    ]);
    let model_file = ModelFile::open(&model).unwrap();
    assert_eq!(model_file.embedder().unwrap(), Some(identity.clone()));

    // personalize: the users file gets the model's.
    let users = path(d, "users.safetensors");
    let unseen_train = path(Path::new(&splits), "unseen_train.safetensors");
    run_ok(&[
        "personalize",
        "-q",
        "--model",
        &model,
        "--data",
        &unseen_train,
        "--iterations",
        "20",
        "--out",
        &users,
    ]);
    assert_eq!(
        UsersFile::open(&users).unwrap().embedder().unwrap(),
        Some(identity.clone())
    );

    // auto: its model file has the identity and the seen users' ids; its users file too.
    let auto = path(d, "auto");
    run_ok(&[
        "auto",
        "-q",
        "--splits",
        &splits,
        "--ranks",
        "1,2",
        "--alpha-scales",
        "0",
        "--prior-strengths",
        "0.01",
        "--iterations",
        "40",
        "--personalize-iterations",
        "20",
        "--out",
        &auto,
    ]);
    let auto_model = ModelFile::open(Path::new(&auto).join("model.safetensors")).unwrap();
    assert_eq!(auto_model.embedder().unwrap(), Some(identity.clone()));
    let seen_ids = folder.seen_train().user_ids().unwrap().to_vec();
    assert_eq!(auto_model.user_ids().unwrap(), Some(seen_ids.clone()));
    assert_eq!(
        auto_model.users().unwrap().user_ids.as_deref(),
        Some(&seen_ids[..])
    );
    let auto_users = UsersFile::open(Path::new(&auto).join("unseen_users.safetensors")).unwrap();
    assert_eq!(auto_users.embedder().unwrap(), Some(identity.clone()));
    assert_eq!(
        auto_users.users().unwrap().user_ids.as_deref(),
        folder.unseen_train().user_ids()
    );

    // sweep reads the folder (it writes no model file).
    let sweep = path(d, "sweep");
    run_ok(&[
        "sweep",
        "-q",
        "--splits",
        &splits,
        "--ranks",
        "1",
        "--seeds",
        "0",
        "--iterations",
        "20",
        "--personalize-iterations",
        "20",
        "--out",
        &sweep,
    ]);

    // An older preference file (separate keys only): split and fit still carry the identity.
    let old = path(d, "old.safetensors");
    strip_entry(&prefs, &old);
    assert!(!TensorFile::open(&old)
        .unwrap()
        .metadata()
        .contains_key("embedder"));
    assert_eq!(identity_of(&old), Some(identity.clone()));
    let old_splits = path(d, "old_splits");
    split(&old, &old_splits);
    let old_model = path(d, "old_model.safetensors");
    run_ok(&[
        "fit",
        "-q",
        "--data",
        &path(Path::new(&old_splits), "seen_train.safetensors"),
        "--rank",
        "1",
        "--iterations",
        "10",
        "--out",
        &old_model,
    ]);
    assert_eq!(
        TensorFile::open(&old_model)
            .unwrap()
            .metadata_json::<EmbedderIdentity>("embedder")
            .unwrap(),
        Some(identity.clone())
    );

    // The server's loader: by the record, or --embedder checked against it.
    let loaded = lore_embed::load_matching(Some(&identity), None, 384).unwrap();
    assert_eq!(
        identity.mismatch(&loaded.embedder().info().identity()),
        None
    );
    let loaded = lore_embed::load_matching(Some(&identity), Some("minilm"), 384).unwrap();
    assert_eq!(loaded.embedder().info().identity(), identity);
    let err = lore_embed::load_matching(Some(&identity), None, 64)
        .unwrap_err()
        .to_string();
    assert!(err.contains("F = 384") && err.contains("F = 64"), "{err}");
    let err = lore_embed::load_matching(None, None, 384)
        .unwrap_err()
        .to_string();
    assert!(err.contains("embedder"), "{err}");
    let shorter = EmbedderIdentity {
        max_length: 64,
        ..identity.clone()
    };
    // The recorded maximum length is applied when the model's default differs.
    let loaded = lore_embed::load_matching(Some(&shorter), Some("minilm"), 384).unwrap();
    assert_eq!(loaded.embedder().info().max_length, 64);

    // ---- Inputs embedded differently are refused, one line each. ----
    let short = path(d, "short.safetensors");
    embed(&input, &short, &["--max-length", "64"]);
    assert_eq!(identity_of(&short).unwrap().max_length, 64);

    // personalize: data embedded otherwise than the model's.
    let refused = path(d, "refused.safetensors");
    let err = one_line_error(&[
        "personalize",
        "--model",
        &model,
        "--data",
        &short,
        "--out",
        &refused,
    ]);
    assert!(
        err.contains("were embedded differently") && err.contains("max_length"),
        "{err}"
    );
    assert!(!Path::new(&refused).exists());

    // fit: a reference head of other features than the data's.
    let head = path(d, "head.safetensors");
    let mut out = TensorWriter::new();
    out.add_f32("v_ref", &[384], &[0.05; 384]);
    identity.write_to(&mut out);
    out.write_atomic(&head).unwrap();
    let err = one_line_error(&[
        "fit", "--data", &short, "--v-ref", &head, "--alpha", "0.1", "--rank", "1", "--out",
        &refused,
    ]);
    assert!(
        err.contains("short.safetensors")
            && err.contains("head.safetensors")
            && err.contains("max_length 256 differs from 64"),
        "{err}"
    );
    // The same head with the data it was made for is accepted.
    run_ok(&[
        "fit", "-q", "--data", &prefs, "--v-ref", &head, "--alpha", "0.1", "--rank", "1", "-t",
        "5", "--out", &refused,
    ]);

    // A split folder whose sets come from two files embedded differently.
    let short_splits = path(d, "short_splits");
    split(&short, &short_splits);
    let mixed = Path::new(d).join("mixed");
    std::fs::create_dir(&mixed).unwrap();
    for name in SplitFolder::SET_NAMES {
        let from = if name == "unseen_test" {
            &short_splits
        } else {
            &splits
        };
        std::fs::copy(
            SplitFolder::set_path(Path::new(from), name),
            SplitFolder::set_path(&mixed, name),
        )
        .unwrap();
    }
    for command in ["sweep", "auto"] {
        let err = one_line_error(&[
            command,
            "--splits",
            mixed.to_str().unwrap(),
            "--out",
            &path(d, &format!("{command}_mixed")),
        ]);
        assert!(
            err.contains("unseen_test.safetensors")
                && err.contains("max_length 64 differs from 256")
                && err.contains("mixes sets of different files"),
            "{err}"
        );
    }
}
