//! Durability of `lore serve --store`: concurrent writers post preference pairs, the server is
//! killed with SIGKILL mid-load and restarted on the same store, several times; every
//! acknowledged write is there, nothing is half-written, the store opens cleanly.
#![cfg(feature = "serve")]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::SocketAddr;
use std::net::TcpStream;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::http::{get, json, spawn_serve};
use lore_io::TensorWriter;
use lore_serve::store::Store;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

const F: usize = 6;
const K: usize = 3;
const WRITERS: usize = 8;
const USERS_PER_WRITER: usize = 2;
const ROUNDS: usize = 4;

/// A tiny model: V [F, K], prior_logits [K], logit scale 2.
fn write_model(path: &Path) {
    let v: Vec<f32> = (0..F * K)
        .map(|i| ((i * 7 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let mut out = TensorWriter::new();
    out.add_f32("V", &[F, K], &v)
        .add_f32("prior_logits", &[K], &[0.5, -0.2, 0.1])
        .metadata("logit_scale", &2.0f64)
        .metadata("method", "lore");
    out.write_atomic(path).unwrap();
}

/// The pair features a writer posts as the user's pair number `seq` (exact in f32 and JSON).
fn row(user: usize, seq: usize) -> Vec<f32> {
    (0..F)
        .map(|j| ((user * 37 + seq * 3 + j) % 17) as f32 * 0.25 - 2.0)
        .collect()
}

fn user_id(user: usize) -> String {
    format!("writer-user-{user}")
}

/// One `POST path` with a JSON body, `None` when the connection fails or is cut (the server was
/// killed): unlike the shared client it does not panic, so a kill mid-request is quiet.
fn try_post(addr: SocketAddr, path: &str, body: &str) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(10)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .ok()?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, body.to_string()))
}

/// The user's pairs according to the server (0 when unknown).
fn stored_pairs(addr: SocketAddr, user: usize) -> Option<usize> {
    let (status, body) = get(addr, &format!("/v1/users/{}", user_id(user)), None);
    match status {
        404 => Some(0),
        200 => Some(json(&body)["pairs"].as_u64().unwrap() as usize),
        _ => None,
    }
}

#[derive(Default)]
struct Load {
    /// user -> pairs acknowledged (200 with this count).
    acked: HashMap<usize, usize>,
    /// Answers other than 200 while the server was meant to be up.
    bad: Vec<String>,
}

/// One writer: its users' pairs one at a time (each waiting for its answer), until the server is
/// gone, `stop` is set, or 400 requests / 30 s.
fn writer(addr: SocketAddr, t: usize, load: Arc<Mutex<Load>>, stop: Arc<AtomicBool>) {
    let users: Vec<usize> = (0..USERS_PER_WRITER)
        .map(|i| t * USERS_PER_WRITER + i)
        .collect();
    let mut next: Vec<usize> = users
        .iter()
        .map(|&u| stored_pairs(addr, u).expect("GET the user"))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    for s in 0..400 {
        if stop.load(Ordering::SeqCst) || Instant::now() > deadline {
            return;
        }
        let i = s % users.len();
        let u = users[i];
        let features: Vec<String> = row(u, next[i]).iter().map(|v| v.to_string()).collect();
        let body = format!(
            r#"{{"pairs": [{{"features": [{}]}}]}}"#,
            features.join(", ")
        );
        let path = format!("/v1/users/{}/preferences", user_id(u));
        let Some((status, answer)) = try_post(addr, &path, &body) else {
            return; // the server is gone
        };
        if status != 200 {
            if !stop.load(Ordering::SeqCst) {
                load.lock().unwrap().bad.push(format!("{status} {answer}"));
            }
            return;
        }
        let answer = json(&answer);
        let pairs = answer["pairs"].as_u64().unwrap() as usize;
        let weights = answer["weights"].as_array().unwrap().len();
        let mut load = load.lock().unwrap();
        if pairs != next[i] + 1 || weights != K {
            load.bad.push(format!(
                "{}: pairs {pairs}, expected {}",
                user_id(u),
                next[i] + 1
            ));
            return;
        }
        next[i] = pairs;
        load.acked.insert(u, pairs);
    }
}

/// Opens the store itself (the server is dead): every user's stored pairs are exactly the first
/// `pairs` rows posted, no fewer than acknowledged, weights of length K.
fn check_store(dir: &Path, acked: &HashMap<usize, usize>, round: usize) {
    let store = Store::open(dir, F, K)
        .unwrap_or_else(|e| panic!("round {round}: the store does not open: {e}"));
    for id in store.user_ids().unwrap() {
        let user = store.get(&id).unwrap().unwrap();
        let rows = store.pairs(&id).unwrap();
        assert_eq!(rows.len(), user.pairs as usize * F, "round {round}: {id}");
        assert_eq!(user.weights.len(), K, "round {round}: {id}");
        assert!(
            user.weights.iter().all(|w| w.is_finite()),
            "round {round}: {id}"
        );
        let u: usize = id.trim_start_matches("writer-user-").parse().unwrap();
        let posted: Vec<f32> = (0..user.pairs as usize).flat_map(|s| row(u, s)).collect();
        assert_eq!(rows, posted, "round {round}: {id}'s stored pairs");
    }
    for (&u, &n) in acked {
        let have = store
            .get(&user_id(u))
            .unwrap()
            .map_or(0, |s| s.pairs as usize);
        assert!(
            have >= n,
            "round {round}: {} has {have} pairs, {n} were acknowledged",
            user_id(u)
        );
    }
}

#[test]
fn acknowledged_preferences_survive_sigkill_and_restart() {
    let dir = tempfile::tempdir().unwrap();
    let model = dir.path().join("model.safetensors");
    write_model(&model);
    let store = dir.path().join("store");
    let args = [
        "--model",
        model.to_str().unwrap(),
        "--store",
        store.to_str().unwrap(),
        "--bind",
        "127.0.0.1:0",
    ];
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    let mut acked: HashMap<usize, usize> = HashMap::new();
    let mut total = 0usize;
    for round in 0..ROUNDS {
        let mut server = spawn_serve(&args);
        let addr = server.addr;
        let load = Arc::new(Mutex::new(Load::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let threads: Vec<_> = (0..WRITERS)
            .map(|t| {
                let load = load.clone();
                let stop = stop.clone();
                std::thread::spawn(move || writer(addr, t, load, stop))
            })
            .collect();
        // Let the load get going, then kill the server at a random moment of it.
        let started = Instant::now();
        while load.lock().unwrap().acked.len() < WRITERS {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "round {round}: writers got no answers"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(50..400)));
        stop.store(true, Ordering::SeqCst);
        server.child.kill().unwrap(); // SIGKILL
        let status = server.wait();
        assert!(
            !status.success(),
            "round {round}: the server exited by itself"
        );
        for thread in threads {
            thread.join().expect("a writer panicked");
        }
        let load = Arc::try_unwrap(load).ok().unwrap().into_inner().unwrap();
        assert!(load.bad.is_empty(), "round {round}: {:?}", load.bad);
        for (&u, &n) in &load.acked {
            let entry = acked.entry(u).or_insert(0);
            *entry = (*entry).max(n);
        }
        total += load.acked.values().sum::<usize>();
        drop(server);

        check_store(&store, &acked, round);

        // Restarted on the same store, the server reports every acknowledged write.
        let server = spawn_serve(&args);
        let (status, health) = get(server.addr, "/health", None);
        assert_eq!(status, 200, "{health}");
        for (&u, &n) in &acked {
            let (status, body) = get(server.addr, &format!("/v1/users/{}", user_id(u)), None);
            assert_eq!(status, 200, "round {round}: {}: {body}", user_id(u));
            let user = json(&body);
            let pairs = user["pairs"].as_u64().unwrap() as usize;
            assert!(pairs >= n, "round {round}: {}: {pairs} < {n}", user_id(u));
            assert_eq!(user["weights"].as_array().unwrap().len(), K);
        }
        let (_, info) = get(server.addr, "/info", None);
        assert_eq!(
            json(&info)["users"].as_u64().unwrap() as usize,
            acked.len(),
            "round {round}: /info users"
        );
    }
    assert_eq!(acked.len(), WRITERS * USERS_PER_WRITER);
    eprintln!("{ROUNDS} SIGKILLs, {total} acknowledged writes checked");
}
