//! `lore serve` against a corpus of bad requests: each gets its 4xx and a one-line JSON error
//! naming the field, and the server keeps answering a good request the same way after each.
//! Also: the key from LORE_API_KEY, SIGHUP reloads the model file, SIGTERM stops cleanly.

mod common;

use std::path::Path;

use common::http::{post_json, request, spawn_serve, spawn_serve_with_env, ServeProcess};
use lore_io::TensorWriter;
use serde_json::Value;

const F: usize = 4;
const K: usize = 2;
const KEY: &str = "corpus-key";

fn write_model(path: &Path, shift: f32) {
    let v: Vec<f32> = (0..F * K).map(|i| (i as f32 - 3.0) / 4.0 + shift).collect();
    let mut out = TensorWriter::new();
    out.add_f32("V", &[F, K], &v)
        .add_f32("W", &[1, K], &[0.25, 0.75])
        .add_f32("prior_logits", &[K], &[0.0, 0.5])
        .metadata("user_ids", &["u1"])
        .metadata("logit_scale", &0.5);
    out.write_atomic(path).unwrap();
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

const GOOD: &str =
    r#"{"user_id": "u1", "items": [{"features": [1, 2, 3, 4]}, {"features": [0.5, -1, 0, 2]}]}"#;

/// The good request's answer (status, body).
fn good(server: &ServeProcess) -> (u16, String) {
    post_json(server.addr, "/v1/rewards", Some(KEY), GOOD)
}

/// One bad request: what is sent and what must come back.
struct Case {
    name: &'static str,
    method: &'static str,
    path: String,
    headers: Vec<(&'static str, String)>,
    body: Vec<u8>,
    status: u16,
    /// The error message starts with this (the field).
    field: &'static str,
}

fn case(
    name: &'static str,
    method: &'static str,
    path: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    field: &'static str,
) -> Case {
    Case {
        name,
        method,
        path: path.to_string(),
        headers: vec![
            ("Content-Type", "application/json".to_string()),
            ("Authorization", format!("Bearer {KEY}")),
        ],
        body: body.into(),
        status,
        field,
    }
}

fn corpus(dir: &Path) -> Vec<Case> {
    let features = |n: usize| format!("[{}]", vec!["1.5"; n].join(","));
    let long_id = "x".repeat(300);
    let many_items = format!(
        r#"{{"items": [{}]}}"#,
        vec![r#"{"features": [1,2,3,4]}"#; 4097].join(",")
    );
    let mut cases = vec![
        case(
            "malformed JSON",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"features": [1,2"#,
            400,
            "items[0].features",
        ),
        case("not JSON", "POST", "/v1/rewards", "hello", 400, "body"),
        case("empty body", "POST", "/v1/rewards", "", 400, "body"),
        case(
            "a list, not an object",
            "POST",
            "/v1/rewards",
            "[1, 2]",
            422,
            "body",
        ),
        case(
            "items not a list",
            "POST",
            "/v1/rewards",
            r#"{"items": 5}"#,
            422,
            "items",
        ),
        case(
            "items missing",
            "POST",
            "/v1/rewards",
            r#"{"user_id": "u1"}"#,
            422,
            "body: missing field `items`",
        ),
        case(
            "empty items",
            "POST",
            "/v1/rewards",
            r#"{"items": []}"#,
            422,
            "items",
        ),
        case(
            "wrong feature length",
            "POST",
            "/v1/rewards",
            format!(r#"{{"items": [{{"features": {}}}]}}"#, features(F + 1)),
            422,
            "items[0].features",
        ),
        case(
            "too few features",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"features": [1]}]}"#,
            422,
            "items[0].features",
        ),
        case(
            "a string among features",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"features": [1, "2", 3, 4]}]}"#,
            422,
            "items[0].features[1]",
        ),
        case(
            "a number beyond f32",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"features": [1, 2, 3, 1e39]}]}"#,
            422,
            "items[0].features",
        ),
        case(
            "a number beyond f64",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"features": [1, 2, 3, 1e999]}]}"#,
            400,
            "items[0].features",
        ),
        case(
            "NaN",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"features": [1, 2, 3, NaN]}]}"#,
            400,
            "items[0].features",
        ),
        case(
            "unknown field",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"features": [1,2,3,4], "bogus": 1}]}"#,
            422,
            "items[0].bogus",
        ),
        case(
            "features and text",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"features": [1,2,3,4], "prompt": "p", "response": "r"}]}"#,
            422,
            "items[0]",
        ),
        case(
            "prompt without response",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"prompt": "p"}]}"#,
            422,
            "items[0].response",
        ),
        case(
            "text without an embedder",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"prompt": "p", "response": "r"}]}"#,
            400,
            "items[0].prompt",
        ),
        case(
            "a message without content",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"prompt": [{"role": "user"}], "response": "r"}]}"#,
            422,
            "items[0].prompt[0]",
        ),
        case(
            "user id too long",
            "POST",
            "/v1/rewards",
            format!(r#"{{"user_id": "{long_id}", "items": [{{"features": [1,2,3,4]}}]}}"#),
            422,
            "user_id",
        ),
        case(
            "user id not a string",
            "POST",
            "/v1/rewards",
            r#"{"user_id": 7, "items": [{"features": [1,2,3,4]}]}"#,
            422,
            "user_id",
        ),
        case(
            "empty item user id",
            "POST",
            "/v1/rewards",
            r#"{"items": [{"user_id": "", "features": [1,2,3,4]}]}"#,
            422,
            "items[0].user_id",
        ),
        case(
            "too many items",
            "POST",
            "/v1/rewards",
            many_items,
            413,
            "items",
        ),
        case(
            "not UTF-8",
            "POST",
            "/v1/rewards",
            b"{\"items\": [{\"user_id\": \"\xff\xfe\", \"features\": [1,2,3,4]}]}".to_vec(),
            400,
            "body",
        ),
        case(
            "trailing garbage",
            "POST",
            "/v1/rewards",
            format!("{GOOD} extra"),
            400,
            "body",
        ),
        case(
            "nested too deep",
            "POST",
            "/get_reward",
            format!(r#"{{"query": ["a"], "labels": [{}"#, "[".repeat(5000)),
            400,
            "labels",
        ),
        case("unknown route", "GET", "/v2/nothing", "", 404, "route"),
        case("wrong method", "GET", "/v1/rewards", "", 405, "method"),
        case(
            "wrong method on a user",
            "PUT",
            "/v1/users/u1",
            "",
            405,
            "method",
        ),
        case(
            "user id in the path too long",
            "GET",
            &format!("/v1/users/{long_id}"),
            "",
            400,
            "id",
        ),
        case("path not UTF-8", "GET", "/v1/users/%FF%FE", "", 400, "id"),
        case("unknown user", "GET", "/v1/users/nobody", "", 404, "id"),
        case(
            "delete an unknown user",
            "DELETE",
            "/v1/users/nobody",
            "",
            404,
            "id",
        ),
        case(
            "empty pairs",
            "POST",
            "/v1/users/w/preferences",
            r#"{"pairs": []}"#,
            422,
            "pairs",
        ),
        case(
            "a pair without sides",
            "POST",
            "/v1/users/w/preferences",
            r#"{"pairs": [{"prompt": "p"}]}"#,
            422,
            "pairs[0].chosen",
        ),
        case(
            "pair features too large",
            "POST",
            "/v1/users/w/preferences",
            r#"{"pairs": [{"features": [3e38, 3e38, 3e38, 3e38]}]}"#,
            422,
            "pairs[0].features",
        ),
        case(
            "pairs not a list",
            "POST",
            "/v1/users/w/preferences",
            r#"{"pairs": {"features": [1,2,3,4]}}"#,
            422,
            "pairs",
        ),
        case(
            "query not a list",
            "POST",
            "/get_reward",
            r#"{"query": "text"}"#,
            422,
            "query",
        ),
        case(
            "labels of another length",
            "POST",
            "/get_reward",
            r#"{"query": ["a", "b"], "labels": ["u1"]}"#,
            422,
            "labels",
        ),
        case(
            "empty query",
            "POST",
            "/get_reward",
            r#"{"query": []}"#,
            422,
            "query",
        ),
        case(
            "reload a missing file",
            "POST",
            "/admin/reload",
            format!(
                r#"{{"model": "{}"}}"#,
                dir.join("missing.safetensors").display()
            ),
            422,
            "model",
        ),
        case(
            "reload a model not a string",
            "POST",
            "/admin/reload",
            r#"{"model": 1}"#,
            422,
            "model",
        ),
    ];
    let mut wrong_type = case(
        "content type not JSON",
        "POST",
        "/v1/rewards",
        GOOD,
        415,
        "body",
    );
    wrong_type.headers[0].1 = "text/plain".into();
    cases.push(wrong_type);
    let mut no_key = case("no key", "POST", "/v1/rewards", GOOD, 401, "authorization");
    no_key.headers.pop();
    cases.push(no_key);
    let mut wrong_key = case(
        "wrong key",
        "POST",
        "/v1/rewards",
        GOOD,
        401,
        "authorization",
    );
    wrong_key.headers[1].1 = "Bearer nope".into();
    cases.push(wrong_key);
    let mut huge = case(
        "huge body",
        "POST",
        "/v1/rewards",
        vec![b' '; 1024],
        413,
        "body",
    );
    huge.headers
        .push(("Content-Length", (64u64 << 20).to_string()));
    cases.push(huge);
    cases
}

#[test]
fn every_bad_request_gets_its_4xx_naming_the_field_and_the_server_keeps_serving() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    write_model(&model, 0.0);
    let server = spawn_serve(&[
        "--model",
        model.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
        "--api-key",
        KEY,
    ]);
    let (status, reference) = good(&server);
    assert_eq!(status, 200, "{reference}");
    let reference = json(&reference)["rewards"].clone();
    assert_eq!(reference.as_array().unwrap().len(), 2);

    let cases = corpus(dir.path());
    assert!(cases.len() >= 25, "{} kinds", cases.len());
    let mut wrong: Vec<String> = Vec::new();
    for case in &cases {
        // The huge body is declared, not sent in full (the server answers from the header).
        let headers: Vec<(&str, &str)> =
            case.headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let (status, body) = request(server.addr, case.method, &case.path, &headers, &case.body);
        let error = serde_json::from_str::<Value>(&body).unwrap_or(Value::Null);
        let message = error["error"].as_str().unwrap_or("");
        if status != case.status
            || body.lines().count() != 1
            || !message.starts_with(case.field)
            || error.as_object().map(|o| o.len()) != Some(1)
        {
            wrong.push(format!(
                "{}: expected {} naming {:?}, got {status} {body}",
                case.name, case.status, case.field
            ));
        }
        let (status, after) = good(&server);
        assert_eq!(status, 200, "after {}: {after}", case.name);
        assert_eq!(json(&after)["rewards"], reference, "after {}", case.name);
    }
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Nothing was stored by the refused writes.
    let (status, _) = request(
        server.addr,
        "GET",
        "/v1/users/w",
        &[("Authorization", &format!("Bearer {KEY}"))],
        b"",
    );
    assert_eq!(status, 404);
}

#[test]
fn key_from_the_environment_sighup_reloads_sigterm_stops() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    write_model(&model, 0.0);
    let mut server = spawn_serve_with_env(
        &["--model", model.to_str().unwrap(), "--bind", "127.0.0.1:0"],
        &[("LORE_API_KEY", KEY)],
    );
    let auth = format!("Bearer {KEY}");
    let info = |server: &ServeProcess| {
        let (status, body) = request(
            server.addr,
            "GET",
            "/info",
            &[("Authorization", &auth)],
            b"",
        );
        assert_eq!(status, 200, "{body}");
        json(&body)
    };
    assert_eq!(request(server.addr, "GET", "/info", &[], b"").0, 401);
    let before = info(&server)["model_version"].as_str().unwrap().to_string();

    // A new model under the same name, then SIGHUP.
    write_model(&model, 0.5);
    server.signal(libc::SIGHUP);
    let started = std::time::Instant::now();
    let after = loop {
        let now = info(&server);
        let version = now["model_version"].as_str().unwrap().to_string();
        if version != before && now["reloading"] == false {
            break version;
        }
        assert!(started.elapsed().as_secs() < 30, "SIGHUP did not reload");
        std::thread::sleep(std::time::Duration::from_millis(20));
    };
    assert!(after.starts_with("m.safetensors@"));
    let (status, body) = good(&server);
    assert_eq!(status, 200);
    assert_eq!(json(&body)["model_version"], after.as_str());

    server.signal(libc::SIGTERM);
    let status = server.wait();
    assert!(status.success(), "lore serve exited with {status:?}");
}

#[test]
fn refuses_a_public_address_without_a_key() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("m.safetensors");
    write_model(&model, 0.0);
    let stderr = common::one_line_error(&[
        "serve",
        "--model",
        model.to_str().unwrap(),
        "--bind",
        "0.0.0.0:0",
    ]);
    assert!(stderr.contains("without an API key"), "{stderr}");
}
