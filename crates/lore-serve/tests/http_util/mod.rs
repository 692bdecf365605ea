//! Shared by the lore-serve HTTP tests: a tiny model file, an in-process server on
//! 127.0.0.1:0 (its own runtime), and a blocking HTTP/1.1 client over std's TcpStream.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lore_core::{personalize, FeatureRows, PersonalizeOptions, PersonalizeParams, Preferences};
use lore_io::{ModelFile, TensorWriter};
use lore_serve::{ServeOptions, Server, ServerHandle};
use serde_json::Value;

/// F of the tiny model.
pub const F: usize = 6;
/// K of the tiny model.
pub const K: usize = 3;

/// A tiny model: V [F, K], prior_logits [K], users `a`, `b` (W [2, K]), logit scale `scale`.
/// `shift` changes V (a different model of the same shape).
pub fn write_model(path: &Path, shift: f32, scale: f64) -> PathBuf {
    let v: Vec<f32> = (0..F * K)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0 + shift)
        .collect();
    let w = [0.7f32, 0.2, 0.1, 0.1, 0.3, 0.6];
    let logits: Vec<f32> = w.iter().map(|x| x.ln()).collect();
    let mut out = TensorWriter::new();
    out.add_f32("V", &[F, K], &v)
        .add_f32("W", &[2, K], &w)
        .add_f32("W_logits", &[2, K], &logits)
        .add_f32("prior_logits", &[K], &[0.5, -0.2, 0.1])
        .metadata("user_ids", &["a", "b"])
        .metadata("logit_scale", &scale)
        .metadata("method", "lore");
    out.write_atomic(path).unwrap();
    path.to_path_buf()
}

/// A server running in the background on its own runtime; stopped on drop.
pub struct TestServer {
    /// Where it listens.
    pub addr: SocketAddr,
    /// For reloads and store access.
    pub handle: ServerHandle,
    /// The runtime (to block on the handle's async calls).
    pub runtime: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
}

impl TestServer {
    /// Binds `options` (the bind address forced to 127.0.0.1:0 unless set otherwise) and serves.
    pub fn start(options: ServeOptions) -> TestServer {
        Self::try_start(options).unwrap_or_else(|e| panic!("server did not start: {e}"))
    }

    /// As [`TestServer::start`], returning the startup error.
    pub fn try_start(mut options: ServeOptions) -> Result<TestServer, lore_serve::ServeError> {
        if options.bind.port() == 8080 {
            options.bind = "127.0.0.1:0".parse().unwrap();
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let server = runtime.block_on(Server::bind(options))?;
        let addr = server.local_addr();
        let handle = server.handle();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        runtime.spawn(server.run(async move {
            let _ = stopped.await;
        }));
        Ok(TestServer {
            addr,
            handle,
            runtime,
            stop: Some(stop),
        })
    }

    /// `POST path` with a JSON body.
    pub fn post(&self, path: &str, body: &str) -> (u16, Value) {
        let (status, body) = request(
            self.addr,
            "POST",
            path,
            &[("Content-Type", "application/json")],
            body.as_bytes(),
        );
        (status, parse(&body))
    }

    /// `GET path`.
    pub fn get(&self, path: &str) -> (u16, String) {
        request(self.addr, "GET", path, &[], b"")
    }

    /// `GET path` as JSON.
    pub fn get_json(&self, path: &str) -> (u16, Value) {
        let (status, body) = self.get(path);
        (status, parse(&body))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// The JSON of a body (panics with the body when it is not JSON).
pub fn parse(body: &str) -> Value {
    if body.is_empty() {
        return Value::Null;
    }
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body:?}"))
}

/// One request (`Connection: close`); (status, body).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (n, v) in headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    head.push_str(&format!("Content-Length: {}\r\n\r\n", body.len()));
    stream.write_all(head.as_bytes()).unwrap();
    let _ = stream.write_all(body);
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    let status: u16 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut length = None;
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            if n.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let mut body = Vec::new();
    match length {
        Some(n) => {
            body.resize(n, 0);
            reader.read_exact(&mut body).unwrap();
        }
        None => {
            reader.read_to_end(&mut body).unwrap();
        }
    }
    (status, String::from_utf8(body).unwrap())
}

/// JSON numbers of `v` as f64s.
pub fn floats(v: &Value) -> Vec<f64> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list: {v}"))
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect()
}

/// `a` and `b` agree to 1e-12 relative (the same f64 computation, printed and parsed).
pub fn assert_close(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len(), "{a:?} vs {b:?}");
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= 1e-12 * y.abs().max(1e-300),
            "{a:?} vs {b:?}"
        );
    }
}

/// A features JSON list.
pub fn features_json(e: &[f32]) -> String {
    serde_json::to_string(e).unwrap()
}

/// `lore personalize --prior-strength 0.01` (the service's default) on `rows` of one user.
pub fn offline_weights(model: &ModelFile, rows: &[f32]) -> Vec<f32> {
    let basis = model.basis(None).unwrap();
    let prior = model.prior_logits().unwrap().unwrap();
    let params = PersonalizeParams::default()
        .prior_strength(0.01)
        .check()
        .unwrap();
    let users = vec![0u32; rows.len() / F];
    let data = Preferences::from_sorted_users(FeatureRows::F32(rows), F, &users).unwrap();
    let options = PersonalizeOptions {
        init_logits: Some(&prior),
        prior_logits: Some(&prior),
        validation: None,
    };
    let outcome = personalize(&params, &basis, &data, &options, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    outcome.users.user(0).to_vec()
}
