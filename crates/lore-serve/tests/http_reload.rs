//! Model swap: `POST /admin/reload` serves the new model's version, re-personalizes stored
//! users from their pairs in the background (their weights then equal an offline refit on the
//! new basis), and refuses a model of another F or a path that is not a model.

mod http_util;

use std::time::{Duration, Instant};

use http_util::*;
use lore_io::{ModelFile, TensorWriter};
use lore_serve::ServeOptions;

fn wait_until_reloaded(server: &TestServer) {
    let started = Instant::now();
    loop {
        let (_, info) = server.get_json("/info");
        if info["reloading"] == false {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "reload never finished"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn reload_swaps_the_version_and_repersonalizes_stored_users() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_model(&dir.path().join("a.safetensors"), 0.0, 0.5);
    let b = write_model(&dir.path().join("b.safetensors"), 0.75, 0.5);
    let server = TestServer::start(ServeOptions::new(&a));
    let version_a = server.handle.model_version();
    let rows: Vec<f32> = (0..3 * F).map(|i| (i as f32 * 1.3).sin() * 2.0).collect();
    for users in ["carol", "dave"] {
        let pairs: Vec<String> = rows
            .chunks(F)
            .map(|x| format!(r#"{{"features": {}}}"#, features_json(x)))
            .collect();
        let body = format!(r#"{{"pairs": [{}]}}"#, pairs.join(","));
        let (status, answer) = server.post(&format!("/v1/users/{users}/preferences"), &body);
        assert_eq!(status, 200, "{answer}");
        assert_eq!(answer["model_version"], version_a.as_str());
    }

    let body = format!(
        r#"{{"model": {}}}"#,
        serde_json::to_string(b.to_str().unwrap()).unwrap()
    );
    let (status, report) = server.post("/admin/reload", &body);
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["previous_version"], version_a.as_str());
    assert_eq!(report["swapped"], true);
    let version_b = report["model_version"].as_str().unwrap().to_string();
    assert!(version_b.starts_with("b.safetensors@") && version_b != version_a);
    wait_until_reloaded(&server);
    assert_eq!(
        server.get_json("/info").1["model_version"],
        version_b.as_str()
    );

    let model_b = ModelFile::open(&b).unwrap();
    let expected = offline_weights(&model_b, &rows);
    for user in ["carol", "dave"] {
        let (status, stored) = server.get_json(&format!("/v1/users/{user}"));
        assert_eq!(status, 200);
        assert_eq!(stored["model_version"], version_b.as_str(), "{stored}");
        assert_eq!(stored["pairs"], 3);
        for (w, e) in floats(&stored["weights"]).iter().zip(&expected) {
            assert!((w - *e as f64).abs() <= 1e-6, "{stored} vs {expected:?}");
        }
    }
    // Rewards come from the new basis, with the new version.
    let e = [0.3f32, -1.0, 2.0, 0.5, 0.0, 1.5];
    let body = format!(
        r#"{{"items": [{{"user_id": "carol", "features": {}}}]}}"#,
        features_json(&e)
    );
    let (status, answer) = server.post("/v1/rewards", &body);
    assert_eq!(status, 200);
    assert_eq!(answer["model_version"], version_b.as_str());
    let basis_b = model_b.basis(None).unwrap();
    assert_close(
        &floats(&answer["rewards"]),
        &[basis_b.reward(&e, &expected)],
    );
    // The new model's own users are served.
    let (status, user_a) = server.get_json("/v1/users/a");
    assert_eq!(status, 200);
    assert_eq!(user_a["model_version"], version_b.as_str());

    // The same file again: nothing to swap.
    let (status, report) = server.post("/admin/reload", "");
    assert_eq!(status, 200);
    assert_eq!(report["swapped"], false);
}

#[test]
fn reload_refuses_another_f_and_a_bad_path() {
    let dir = tempfile::tempdir().unwrap();
    let a = write_model(&dir.path().join("a.safetensors"), 0.0, 0.5);
    let server = TestServer::start(ServeOptions::new(&a));
    let version = server.handle.model_version();
    let wide = dir.path().join("wide.safetensors");
    let mut out = TensorWriter::new();
    out.add_f32("V", &[F + 1, K], &[0.1; (F + 1) * K]);
    out.write_atomic(&wide).unwrap();
    let not_a_model = dir.path().join("notes.txt");
    std::fs::write(&not_a_model, "hello").unwrap();
    for path in [wide, not_a_model, dir.path().join("missing.safetensors")] {
        let body = format!(
            r#"{{"model": {}}}"#,
            serde_json::to_string(path.to_str().unwrap()).unwrap()
        );
        let (status, answer) = server.post("/admin/reload", &body);
        assert_eq!(status, 422, "{path:?}: {answer}");
        assert!(
            answer["error"].as_str().unwrap().starts_with("model:"),
            "{answer}"
        );
        assert_eq!(server.handle.model_version(), version);
    }
    let (status, answer) = server.post("/admin/reload", r#"{"model": 7}"#);
    assert_eq!(status, 422);
    assert!(
        answer["error"].as_str().unwrap().starts_with("model:"),
        "{answer}"
    );
}
