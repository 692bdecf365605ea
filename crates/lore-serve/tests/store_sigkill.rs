//! SIGKILL at the store level: a child process (this test binary re-run with an env var) writes
//! concurrently and prints every acknowledged write; the parent kills it with SIGKILL at a random
//! moment, reopens the store and checks every acknowledged write is there, over several rounds on
//! the same store.

mod store_common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lore_serve::store::Store;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use store_common::{check_consistent, refit, row};

const F: usize = 8;
const K: usize = 4;
const CHILD_ENV: &str = "LORE_STORE_SIGKILL_CHILD";
const WRITERS: usize = 6;
const USERS_PER_WRITER: usize = 3;

/// The child: writers post one pair at a time to their own users, continuing where the store is,
/// and print `ACK user pairs` once each answer (fsync'd) is back. Bounded: 20 s or 3,000 writes.
#[test]
#[ignore = "run by acknowledged_writes_survive_sigkill in a child process"]
fn sigkill_child() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async move {
        let store = Store::open(std::path::Path::new(&dir), F, K).unwrap();
        let refit = refit(F, K);
        let deadline = Instant::now() + Duration::from_secs(20);
        println!("READY");
        let mut tasks = Vec::new();
        for t in 0..WRITERS {
            let store = store.clone();
            let refit = refit.clone();
            tasks.push(tokio::spawn(async move {
                let users: Vec<usize> = (0..USERS_PER_WRITER)
                    .map(|i| t * USERS_PER_WRITER + i)
                    .collect();
                let mut next: Vec<usize> = users
                    .iter()
                    .map(|u| {
                        let id = format!("user{u}");
                        store.get(&id).unwrap().map_or(0, |s| s.pairs as usize)
                    })
                    .collect();
                for s in 0..500 {
                    if Instant::now() > deadline {
                        break;
                    }
                    let i = s % users.len();
                    let u = users[i];
                    let id = format!("user{u}");
                    let answer = store
                        .add_pairs(&id, row(u, next[i], F), refit.clone())
                        .await
                        .unwrap();
                    next[i] += 1;
                    assert_eq!(answer.pairs as usize, next[i]);
                    let mut out = std::io::stdout().lock();
                    writeln!(out, "ACK {id} {}", answer.pairs).unwrap();
                    out.flush().unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
    });
}

#[test]
fn acknowledged_writes_survive_sigkill() {
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = ChaCha8Rng::seed_from_u64(15);
    // user -> pairs acknowledged so far (over every round).
    let mut acked: HashMap<String, u64> = HashMap::new();
    let mut total_acks = 0usize;
    for round in 0..5 {
        let mut child = Command::new(&exe)
            .args(["--exact", "sigkill_child", "--ignored", "--nocapture"])
            .args(["--test-threads", "1"])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait for the first acknowledged write, then kill at a random moment of the load.
        let mut lines = Vec::new();
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_secs(30)) {
                Ok(line) => {
                    let first_ack = line.starts_with("ACK");
                    lines.push(line);
                    if first_ack {
                        break;
                    }
                }
                Err(_) => panic!("round {round}: the child acknowledged nothing in 30 s"),
            }
            assert!(started.elapsed() < Duration::from_secs(30));
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(20..300)));
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        assert!(
            !status.success(),
            "round {round}: the child finished before it was killed"
        );
        let mut round_acks = 0;
        for line in &lines {
            let mut parts = line.split_whitespace();
            if parts.next() != Some("ACK") {
                continue;
            }
            // A line cut by the kill is not an acknowledgement the parent saw whole.
            let (Some(id), Some(n)) = (parts.next(), parts.next().and_then(|n| n.parse().ok()))
            else {
                continue;
            };
            let entry = acked.entry(id.to_string()).or_insert(0);
            *entry = (*entry).max(n);
            round_acks += 1;
        }
        assert!(round_acks > 0, "round {round}");
        total_acks += round_acks;

        let store = Store::open(dir.path(), F, K)
            .unwrap_or_else(|e| panic!("round {round}: the store does not reopen: {e}"));
        check_consistent(&store, F, K);
        for (id, &n) in &acked {
            let u: usize = id.trim_start_matches("user").parse().unwrap();
            let stored = store.pairs(id).unwrap();
            let have = stored.len() / F;
            assert!(
                have as u64 >= n,
                "round {round}: {id} has {have} pairs, {n} were acknowledged"
            );
            let posted: Vec<f32> = (0..have).flat_map(|s| row(u, s, F)).collect();
            assert_eq!(stored, posted, "round {round}: {id}'s pairs");
        }
    }
    eprintln!("5 SIGKILLs, {total_acks} acknowledged writes checked");
}
