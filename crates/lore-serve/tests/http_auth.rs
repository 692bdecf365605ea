//! The API key: every route but /health and /metrics needs `Authorization: Bearer KEY`
//! (401 with a JSON error otherwise); without a key only loopback addresses are served.

mod http_util;

use http_util::*;
use lore_serve::ServeOptions;

#[test]
fn every_route_but_health_and_metrics_needs_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(&dir.path().join("m.safetensors"), 0.0, 0.01);
    let mut options = ServeOptions::new(&model);
    options.api_key = Some("s3cret".into());
    let server = TestServer::start(options);
    let body = format!(
        r#"{{"items": [{{"features": {}}}]}}"#,
        features_json(&[1.0; F])
    );
    let json = ("Content-Type", "application/json");
    for (method, path, body) in [
        ("GET", "/info", ""),
        ("POST", "/v1/rewards", body.as_str()),
        ("POST", "/get_reward", r#"{"query": ["x"]}"#),
        ("GET", "/v1/users/a", ""),
        ("DELETE", "/v1/users/a", ""),
        ("POST", "/v1/users/a/preferences", r#"{"pairs": []}"#),
        ("POST", "/admin/reload", ""),
        ("GET", "/no/such/route", ""),
    ] {
        for auth in [
            None,
            Some("Bearer wrong"),
            Some("s3cret"),
            Some("Basic s3cret"),
        ] {
            let mut headers = vec![json];
            if let Some(a) = auth {
                headers.push(("Authorization", a));
            }
            let (status, answer) = request(server.addr, method, path, &headers, body.as_bytes());
            assert_eq!(status, 401, "{method} {path} with {auth:?}: {answer}");
            assert!(
                parse(&answer)["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("authorization:"),
                "{answer}"
            );
        }
    }
    // With the key.
    let auth = ("Authorization", "Bearer s3cret");
    let (status, _) = request(server.addr, "GET", "/info", &[auth], b"");
    assert_eq!(status, 200);
    let (status, answer) = request(
        server.addr,
        "POST",
        "/v1/rewards",
        &[json, auth],
        body.as_bytes(),
    );
    assert_eq!(status, 200, "{answer}");
    // Free routes.
    assert_eq!(server.get("/health").0, 200);
    assert_eq!(server.get("/metrics").0, 200);
    // The user `a` is still there (the unauthorized DELETEs did nothing).
    assert_eq!(
        request(server.addr, "GET", "/v1/users/a", &[auth], b"").0,
        200
    );
}

#[test]
fn no_key_no_public_address() {
    let dir = tempfile::tempdir().unwrap();
    let model = write_model(&dir.path().join("m.safetensors"), 0.0, 0.01);
    let mut options = ServeOptions::new(&model);
    options.bind = "0.0.0.0:0".parse().unwrap();
    let error = TestServer::try_start(options.clone())
        .err()
        .expect("refused");
    assert!(error.to_string().contains("without an API key"), "{error}");
    options.bind = "[::]:0".parse().unwrap();
    let error = TestServer::try_start(options).err().expect("refused");
    assert!(error.to_string().contains("without an API key"), "{error}");
    // (Tests listen on loopback only, so binding a public address with a key is not tried.)
}
