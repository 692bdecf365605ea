//! A tiny blocking HTTP/1.1 client over `std::net::TcpStream` and a `lore serve` launcher, for
//! the CLI's service tests (no async runtime in the tests, one request per connection).
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Child, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

/// The longest a test waits for one response (or for the server to start).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Sends one request (`Connection: close`) and returns (status, body as text). `headers` are
/// (name, value) pairs; `Content-Length` is added when `body` is not empty. Panics on I/O errors
/// (a test then fails with the reason).
pub fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, String) {
    let (status, body) = request_bytes(addr, method, path, headers, body);
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// As [`request`], the body as bytes.
pub fn request_bytes(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<u8>) {
    let (status, _, body) = request_full(addr, method, path, headers, body);
    (status, body)
}

/// As [`request`], also returning the response headers (names lower-cased).
pub fn request_full(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(TIMEOUT)).unwrap();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let has_length = headers
        .iter()
        .any(|(n, _)| n.eq_ignore_ascii_case("content-length"));
    if !has_length && (!body.is_empty() || matches!(method, "POST" | "PUT" | "PATCH")) {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).expect("write head");
    // The server may answer (413) and close before reading a large body: ignore write errors.
    let _ = stream.write_all(body);
    let _ = stream.flush();
    read_response(stream)
}

/// Reads one response (Content-Length, chunked, or until close).
fn read_response(stream: TcpStream) -> (u16, Vec<(String, String)>, Vec<u8>) {
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).expect("status line");
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {line:?}"));
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line).expect("header line");
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((n, v)) = l.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
    }
    let header = |name: &str| {
        headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    };
    let mut body = Vec::new();
    if let Some(len) = header("content-length") {
        let len: usize = len.parse().expect("content-length");
        body.resize(len, 0);
        reader.read_exact(&mut body).expect("body");
    } else if header("transfer-encoding").is_some_and(|t| t.contains("chunked")) {
        loop {
            line.clear();
            reader.read_line(&mut line).expect("chunk size");
            let size = usize::from_str_radix(line.trim().split(';').next().unwrap(), 16)
                .expect("chunk size");
            if size == 0 {
                let _ = reader.read_line(&mut line);
                break;
            }
            let start = body.len();
            body.resize(start + size, 0);
            reader.read_exact(&mut body[start..]).expect("chunk");
            line.clear();
            reader.read_line(&mut line).expect("chunk end");
        }
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    (status, headers, body)
}

/// `POST path` with a JSON body (and `Authorization: Bearer key` when given).
pub fn post_json(addr: SocketAddr, path: &str, key: Option<&str>, body: &str) -> (u16, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let mut headers = vec![("Content-Type", "application/json")];
    if let Some(a) = &auth {
        headers.push(("Authorization", a));
    }
    request(addr, "POST", path, &headers, body.as_bytes())
}

/// `GET path` (with `Authorization: Bearer key` when given).
pub fn get(addr: SocketAddr, path: &str, key: Option<&str>) -> (u16, String) {
    let auth = key.map(|k| format!("Bearer {k}"));
    let headers: Vec<(&str, &str)> = auth.iter().map(|a| ("Authorization", a.as_str())).collect();
    request(addr, "GET", path, &headers, b"")
}

/// A running `lore serve`, killed (and reaped) on drop.
pub struct ServeProcess {
    /// The process.
    pub child: Child,
    /// Where it listens (from its first stdout line).
    pub addr: SocketAddr,
    /// The rest of its stdout, unread.
    pub stdout: Option<BufReader<ChildStdout>>,
}

impl ServeProcess {
    /// Sends `signal` (e.g. `libc::SIGTERM`) to the server.
    pub fn signal(&self, signal: i32) {
        // kill(1) keeps the tests free of unsafe code.
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{signal} failed");
    }

    /// Waits (at most [`TIMEOUT`]) for the server to exit; its exit status.
    pub fn wait(&mut self) -> std::process::ExitStatus {
        let started = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status;
            }
            assert!(started.elapsed() < TIMEOUT, "lore serve did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for ServeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `lore serve ARGS` (add `--bind 127.0.0.1:0` yourself, or it binds the default) and
/// waits for its first stdout line `listening on http://ADDR:PORT`. Panics with the server's
/// stderr when it exits first.
pub fn spawn_serve(args: &[&str]) -> ServeProcess {
    spawn_serve_with_env(args, &[])
}

/// As [`spawn_serve`], with extra environment variables (e.g. `LORE_API_KEY`).
pub fn spawn_serve_with_env(args: &[&str], env: &[(&str, &str)]) -> ServeProcess {
    let mut command = Command::new(env!("CARGO_BIN_EXE_lore"));
    command
        .arg("serve")
        .args(args)
        .env_remove("LORE_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    let mut child = command.spawn().expect("spawn lore serve");
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    let read = stdout.read_line(&mut line).unwrap_or(0);
    if read == 0 {
        let mut stderr = String::new();
        let _ = child.stderr.take().unwrap().read_to_string(&mut stderr);
        let _ = child.kill();
        let _ = child.wait();
        panic!("lore serve {args:?} exited before listening: {stderr}");
    }
    let addr = line
        .trim()
        .strip_prefix("listening on http://")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap_or_else(|e| panic!("bad address in {line:?}: {e}"));
    // Drain stderr in the background so the server never blocks on a full pipe.
    if let Some(mut stderr) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut sink = Vec::new();
            let _ = stderr.read_to_end(&mut sink);
        });
    }
    ServeProcess {
        child,
        addr,
        stdout: Some(stdout),
    }
}

/// The JSON value of a response body (panics with the body when it is not JSON).
pub fn json(body: &str) -> serde_json::Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}
