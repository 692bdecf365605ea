//! Users over HTTP: pairs posted one at a time give `lore personalize --prior-strength 0.01`'s
//! weights on all of them; GET; DELETE (then 404, and rewards fall back to the population).

mod http_util;

use http_util::*;
use lore_core::population_weights;
use lore_io::ModelFile;
use lore_serve::ServeOptions;

fn pair(i: usize) -> Vec<f32> {
    (0..F)
        .map(|j| ((i * F + j) as f32 * 0.91).cos() * 2.0 + if j == 1 { 1.0 } else { 0.0 })
        .collect()
}

#[test]
fn pairs_posted_one_at_a_time_give_the_offline_weights() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = write_model(&dir.path().join("m.safetensors"), 0.0, 0.5);
    let model = ModelFile::open(&model_path).unwrap();
    let server = TestServer::start(ServeOptions::new(&model_path));
    let mut all = Vec::new();
    for i in 0..6 {
        let x = pair(i);
        all.extend_from_slice(&x);
        let body = format!(r#"{{"pairs": [{{"features": {}}}]}}"#, features_json(&x));
        let (status, answer) = server.post("/v1/users/carol/preferences", &body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["user_id"], "carol");
        assert_eq!(answer["pairs"], i + 1);
        let weights = floats(&answer["weights"]);
        let expected = offline_weights(&model, &all);
        for (w, e) in weights.iter().zip(&expected) {
            assert!(
                (w - *e as f64).abs() <= 1e-6,
                "after {} pairs: {weights:?} vs {expected:?}",
                i + 1
            );
        }
        assert!(answer["version"].as_u64().unwrap() >= 1);
    }
    // GET answers the same, and rewards use these weights.
    let (status, user) = server.get_json("/v1/users/carol");
    assert_eq!(status, 200);
    assert_eq!(user["pairs"], 6);
    let weights: Vec<f32> = floats(&user["weights"]).iter().map(|&w| w as f32).collect();
    let basis = model.basis(None).unwrap();
    let e = pair(100);
    let body = format!(
        r#"{{"items": [{{"user_id": "carol", "features": {}}}]}}"#,
        features_json(&e)
    );
    let (status, answer) = server.post("/v1/rewards", &body);
    assert_eq!(status, 200);
    assert_close(&floats(&answer["rewards"]), &[basis.reward(&e, &weights)]);
    assert_eq!(answer["user_known"][0], true);

    // DELETE: 204, then 404, and the population's reward.
    let (status, body) = request(server.addr, "DELETE", "/v1/users/carol", &[], b"");
    assert_eq!((status, body.as_str()), (204, ""));
    let (status, answer) = server.get_json("/v1/users/carol");
    assert_eq!(status, 404);
    assert!(answer["error"].as_str().unwrap().starts_with("id:"));
    let body = format!(
        r#"{{"items": [{{"user_id": "carol", "features": {}}}]}}"#,
        features_json(&e)
    );
    let (_, answer) = server.post("/v1/rewards", &body);
    let population = population_weights(&model.prior_logits().unwrap().unwrap());
    assert_close(
        &floats(&answer["rewards"]),
        &[basis.reward(&e, &population)],
    );
    assert_eq!(answer["user_known"][0], false);
    // Deleting again: 404.
    assert_eq!(
        request(server.addr, "DELETE", "/v1/users/carol", &[], b"").0,
        404
    );
}

#[test]
fn a_model_user_who_posts_pairs_is_refitted_from_the_population() {
    let dir = tempfile::tempdir().unwrap();
    let model_path = write_model(&dir.path().join("m.safetensors"), 0.0, 0.5);
    let model = ModelFile::open(&model_path).unwrap();
    let server = TestServer::start(ServeOptions::new(&model_path));
    let (status, before) = server.get_json("/v1/users/a");
    assert_eq!(status, 200);
    assert_eq!(before["pairs"], 0);
    let x = pair(3);
    let body = format!(
        r#"{{"pairs": [{{"features": {}}}, {{"features": {}}}]}}"#,
        features_json(&x),
        features_json(&pair(4))
    );
    let (status, answer) = server.post("/v1/users/a/preferences", &body);
    assert_eq!(status, 200, "{answer}");
    let mut rows = x.clone();
    rows.extend(pair(4));
    let expected = offline_weights(&model, &rows);
    for (w, e) in floats(&answer["weights"]).iter().zip(&expected) {
        assert!((w - *e as f64).abs() <= 1e-6);
    }
    assert_eq!(answer["pairs"], 2);
}
