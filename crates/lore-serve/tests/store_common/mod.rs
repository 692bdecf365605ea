//! Helpers shared by the store tests: a deterministic refit and a consistency check.
#![allow(dead_code)]

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use lore_serve::store::{Refit, Store, StoredUser};

/// A deterministic stand-in for personalize: weight 0 is the number of pairs, weight j >= 1 the sum
/// of feature j over the pairs (so weights prove which pairs the refit saw).
#[derive(Debug, Default)]
pub struct SumRefit {
    pub features: usize,
    pub rank: usize,
    pub version: String,
    /// `refit` calls so far.
    pub calls: AtomicUsize,
    /// Users refitted so far (over all calls).
    pub users: AtomicUsize,
    /// Sleep in each call (makes requests pile up behind the writer).
    pub delay: Duration,
    /// A user whose first feature of any pair equals this fails to refit.
    pub poison: Option<f32>,
    /// Panic instead of returning an error for poisoned users.
    pub panic: bool,
}

impl SumRefit {
    pub fn new(features: usize, rank: usize, version: &str) -> SumRefit {
        assert!(rank <= features + 1);
        SumRefit {
            features,
            rank,
            version: version.into(),
            ..SumRefit::default()
        }
    }

    pub fn weights(&self, rows: &[f32]) -> Vec<f32> {
        expected_weights(rows, self.features, self.rank)
    }
}

/// The weights `SumRefit` gives for these rows.
pub fn expected_weights(rows: &[f32], features: usize, rank: usize) -> Vec<f32> {
    let mut w = vec![0f32; rank];
    w[0] = (rows.len() / features) as f32;
    for row in rows.chunks_exact(features) {
        for j in 1..rank {
            w[j] += row[j];
        }
    }
    w
}

impl Refit for SumRefit {
    fn refit(&self, users: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.users.fetch_add(users.len(), Ordering::SeqCst);
        if !self.delay.is_zero() {
            std::thread::sleep(self.delay);
        }
        let mut out = Vec::with_capacity(users.len());
        for rows in users {
            let poisoned = self
                .poison
                .is_some_and(|p| rows.chunks_exact(self.features).any(|r| r[0] == p));
            if poisoned {
                if self.panic {
                    panic!("poisoned pairs");
                }
                return Err("poisoned pairs".into());
            }
            out.push(self.weights(rows));
        }
        Ok(out)
    }

    fn model_version(&self) -> String {
        self.version.clone()
    }
}

/// A refit as the store wants it.
pub fn refit(features: usize, rank: usize) -> Arc<dyn Refit> {
    Arc::new(SumRefit::new(features, rank, "m1"))
}

/// A deterministic pair row for (user number, pair number).
pub fn row(user: usize, seq: usize, features: usize) -> Vec<f32> {
    (0..features)
        .map(|j| ((user * 1000 + seq) as f32) * 0.5 + j as f32 * 0.25 - 3.0)
        .collect()
}

/// Checks every stored user: weights of length K computed from exactly the stored pairs, the pair
/// count equal to the stored rows. Returns every user.
pub fn check_consistent(store: &Store, features: usize, rank: usize) -> Vec<StoredUser> {
    let mut users = Vec::new();
    for id in store.user_ids().expect("user ids") {
        let user = store.get(&id).expect("get").expect("a listed user exists");
        let rows = store.pairs(&id).expect("pairs");
        assert_eq!(rows.len() % features, 0, "{id}: partial row");
        assert_eq!(
            user.pairs,
            (rows.len() / features) as u64,
            "{id}: pair count and stored rows differ"
        );
        assert_eq!(user.weights.len(), rank, "{id}: weights length");
        if !user.imported {
            assert_eq!(
                user.weights,
                expected_weights(&rows, features, rank),
                "{id}: weights are not those of the stored pairs"
            );
        }
        users.push(user);
    }
    assert_eq!(store.user_count(), users.len() as u64, "user_count");
    users
}
