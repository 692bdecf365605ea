//! Rewards over HTTP equal lore-core's: the model's own users, unknown users (the
//! population's mean weights), item user ids overriding the request's; /health, /info,
//! /metrics.

mod http_util;

use http_util::*;
use lore_core::{population_weights, RewardBasis};
use lore_io::ModelFile;
use lore_serve::ServeOptions;

fn rows() -> Vec<Vec<f32>> {
    (0..5)
        .map(|r| {
            (0..F)
                .map(|i| ((r * F + i) as f32 * 0.37).sin() * 3.0)
                .collect()
        })
        .collect()
}

#[test]
fn rewards_equal_lore_core_for_known_and_unknown_users() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(&dir.path().join("m.safetensors"), 0.0, 0.5);
    let server = TestServer::start(ServeOptions::new(&model));
    let file = ModelFile::open(&model).unwrap();
    let basis: RewardBasis = file.basis(None).unwrap();
    assert_eq!(basis.logit_scale(), 0.5);
    let users = file.users().unwrap().weights;
    let population = population_weights(&file.prior_logits().unwrap().unwrap());

    let rows = rows();
    let items: Vec<String> = rows
        .iter()
        .enumerate()
        .map(|(i, e)| match i % 3 {
            0 => format!(r#"{{"features": {}}}"#, features_json(e)),
            1 => format!(r#"{{"user_id": "b", "features": {}}}"#, features_json(e)),
            _ => format!(
                r#"{{"user_id": "nobody", "features": {}}}"#,
                features_json(e)
            ),
        })
        .collect();
    let body = format!(r#"{{"user_id": "a", "items": [{}]}}"#, items.join(","));
    let (status, answer) = server.post("/v1/rewards", &body);
    assert_eq!(status, 200, "{answer}");
    let expected: Vec<f64> = rows
        .iter()
        .enumerate()
        .map(|(i, e)| match i % 3 {
            0 => basis.reward(e, users.user(0)),
            1 => basis.reward(e, users.user(1)),
            _ => basis.reward(e, &population),
        })
        .collect();
    assert_close(&floats(&answer["rewards"]), &expected);
    let known: Vec<bool> = answer["user_known"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b.as_bool().unwrap())
        .collect();
    assert_eq!(known, [true, true, false, true, true]);
    let version = answer["model_version"].as_str().unwrap();
    assert!(version.starts_with("m.safetensors@"), "{version}");

    // Without any user id: everyone is the population.
    let body = format!(
        r#"{{"items": [{{"features": {}}}]}}"#,
        features_json(&rows[0])
    );
    let (status, answer) = server.post("/v1/rewards", &body);
    assert_eq!(status, 200);
    assert_close(
        &floats(&answer["rewards"]),
        &[basis.reward(&rows[0], &population)],
    );
    assert_eq!(answer["user_known"][0], false);
}

#[test]
fn health_info_and_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(&dir.path().join("m.safetensors"), 0.0, 0.01);
    let server = TestServer::start(ServeOptions::new(&model));
    let (status, health) = server.get_json("/health");
    assert_eq!((status, health["status"].as_str()), (200, Some("ok")));
    let (status, info) = server.get_json("/info");
    assert_eq!(status, 200);
    assert_eq!(info["features"], F);
    assert_eq!(info["rank"], K);
    assert_eq!(info["method"], "lore");
    assert_eq!(info["users"], 2, "{info}"); // the model's own users a and b
    assert!(info["embedder"].is_null());
    assert_eq!(info["model_version"], server.handle.model_version());

    // Two good requests and a bad one, then the metrics count them by route and status.
    let good = format!(
        r#"{{"items": [{{"features": {}}}]}}"#,
        features_json(&[0.5; F])
    );
    assert_eq!(server.post("/v1/rewards", &good).0, 200);
    assert_eq!(server.post("/v1/rewards", &good).0, 200);
    assert_eq!(server.post("/v1/rewards", r#"{"items": []}"#).0, 422);
    let (status, metrics) = server.get("/metrics");
    assert_eq!(status, 200);
    for needle in [
        r#"lore_http_requests_total{route="/v1/rewards",status="200"} 2"#,
        r#"lore_http_requests_total{route="/v1/rewards",status="422"} 1"#,
        r#"lore_http_errors_total{route="/v1/rewards",status="422"} 1"#,
        r#"lore_http_request_duration_seconds_count{route="/v1/rewards"} 3"#,
        r#"lore_reward_items_total{kind="features"} 2"#,
        "lore_users 2",
        "# TYPE lore_embed_batch_size histogram",
    ] {
        assert!(metrics.contains(needle), "no {needle:?} in\n{metrics}");
    }
}

#[test]
fn get_reward_without_an_embedder_names_the_query() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(&dir.path().join("m.safetensors"), 0.0, 0.01);
    let server = TestServer::start(ServeOptions::new(&model));
    let (status, answer) = server.post("/get_reward", r#"{"query": ["hello"], "labels": ["a"]}"#);
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"].as_str().unwrap().starts_with("query:"),
        "{answer}"
    );
}
