//! Holding part of each user's rows out: the one seeded per-user draw behind early stopping,
//! the search's validation rows and the experiment split.
//!
//! The rule, everywhere: a share `fraction` of a user's n rows is round(fraction * n) rows
//! (halves away from zero), clamped to 1..=n-1 so that both parts keep a row (users with one
//! row give none). Which rows: the first ones of a uniform shuffle of 0..n from ChaCha8.

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::{FeatureRows, Preferences};
use crate::error::{LoreError, Result};
use crate::eval::Validation;

/// How many of a user's `n` rows a share `fraction` is: round(fraction * n), clamped to
/// 1..=n-1 (0 when n < 2).
///
/// ```
/// use lore_core::share_of_rows;
///
/// assert_eq!(share_of_rows(25, 0.2), 5);
/// assert_eq!(share_of_rows(2, 0.1), 1); // at least one row...
/// assert_eq!(share_of_rows(4, 0.99), 3); // ...and one left on the other side
/// assert_eq!(share_of_rows(1, 0.5), 0);
/// ```
pub fn share_of_rows(n: usize, fraction: f64) -> usize {
    if n < 2 {
        return 0;
    }
    ((fraction * n as f64).round() as usize).clamp(1, n - 1)
}

/// A uniform permutation of 0..n (the Fisher-Yates shuffle of `rand`'s `SliceRandom`, so it
/// permutes exactly as shuffling any slice of n items with the same generator would). For the
/// harness, which interleaves it with its other draws.
pub fn shuffled_rows(rng: &mut ChaCha8Rng, n: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(rng);
    order
}

/// `count` distinct indices below `n`, ascending: the first `count` of [`shuffled_rows`].
pub fn pick_rows(rng: &mut ChaCha8Rng, n: usize, count: usize) -> Vec<usize> {
    let mut picked = shuffled_rows(rng, n);
    picked.truncate(count);
    picked.sort_unstable();
    picked
}

/// Preference rows with a share of each user's rows held out (copied as f32): the training
/// rows keep every user, in order; the held-out rows belong to the users that have some.
#[derive(Debug, Clone)]
pub struct HeldOutRows {
    n_features: usize,
    train_rows: Vec<f32>,
    train_offsets: Vec<usize>,
    held_out_rows: Vec<f32>,
    held_out_offsets: Vec<usize>,
    held_out_users: Vec<usize>,
}

/// Holds out [`share_of_rows`]`(n, fraction)` of each user's n rows, drawn user by user with
/// [`pick_rows`] from ChaCha8 seeded with `seed`; both parts keep the rows' order. Fails when
/// no user has two rows.
///
/// ```
/// use lore_core::{hold_out_rows, FeatureRows, Preferences};
///
/// let x: Vec<f32> = (0..20).map(|i| i as f32).collect(); // 10 rows of F = 2
/// let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &[0, 0, 0, 0, 0, 1, 1, 1, 1, 2])?;
/// let held = hold_out_rows(&data, 0.5, 7)?;
/// assert_eq!(held.train()?.n_users(), 3); // every user keeps a training row
/// assert_eq!(held.n_held_out_rows(), 3 + 2); // round(2.5) = 3 of 5, 2 of 4, none of 1
/// assert_eq!(held.held_out_users(), &[0, 1]);
/// let validation = held.validation()?; // ready for early stopping
/// assert_eq!(validation.users(), &[0, 1]);
/// # Ok::<(), lore_core::LoreError>(())
/// ```
pub fn hold_out_rows(data: &Preferences, fraction: f64, seed: u64) -> Result<HeldOutRows> {
    if !(fraction > 0.0 && fraction < 1.0) {
        return Err(LoreError::InvalidParameter {
            name: "held-out fraction",
            reason: format!("{fraction} (must be > 0 and < 1)"),
        });
    }
    let f = data.n_features();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut out = HeldOutRows {
        n_features: f,
        train_rows: Vec::new(),
        train_offsets: vec![0],
        held_out_rows: Vec::new(),
        held_out_offsets: vec![0],
        held_out_users: Vec::new(),
    };
    let mut scratch = Vec::new();
    for u in 0..data.n_users() {
        let rows = data.user_rows(u);
        let n = rows.len();
        let picked = match share_of_rows(n, fraction) {
            0 => Vec::new(),
            count => pick_rows(&mut rng, n, count),
        };
        let x = data.rows_f32(rows, &mut scratch);
        let mut next = picked.iter().peekable();
        for (i, row) in x.chunks_exact(f).enumerate() {
            if next.next_if_eq(&&i).is_some() {
                out.held_out_rows.extend_from_slice(row);
            } else {
                out.train_rows.extend_from_slice(row);
            }
        }
        out.train_offsets.push(out.train_rows.len() / f);
        if !picked.is_empty() {
            out.held_out_offsets.push(out.held_out_rows.len() / f);
            out.held_out_users.push(u);
        }
    }
    if out.held_out_users.is_empty() {
        return Err(LoreError::InvalidParameter {
            name: "held-out fraction",
            reason: "no user has two or more rows, so none can be held out".into(),
        });
    }
    Ok(out)
}

impl HeldOutRows {
    /// The training rows: every user of the data, in order.
    pub fn train(&self) -> Result<Preferences<'_>> {
        Preferences::with_checked_values(
            FeatureRows::F32(&self.train_rows),
            self.n_features,
            self.train_offsets.clone(),
        )
    }

    /// The held-out rows, their user j being user `held_out_users()[j]` of the training rows.
    pub fn validation(&self) -> Result<Validation<'_>> {
        let data = Preferences::with_checked_values(
            FeatureRows::F32(&self.held_out_rows),
            self.n_features,
            self.held_out_offsets.clone(),
        )?;
        Validation::new(data, self.held_out_users.clone())
    }

    /// Number of training rows.
    pub fn n_train_rows(&self) -> usize {
        self.train_offsets.last().copied().unwrap_or(0)
    }

    /// Number of held-out rows.
    pub fn n_held_out_rows(&self) -> usize {
        self.held_out_offsets.last().copied().unwrap_or(0)
    }

    /// The users (of the data) that have held-out rows, ascending.
    pub fn held_out_users(&self) -> &[usize] {
        &self.held_out_users
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_are_a_shuffles_prefix() {
        let mut a = ChaCha8Rng::seed_from_u64(3);
        let mut b = ChaCha8Rng::seed_from_u64(3);
        let mut items: Vec<char> = "abcdefg".chars().collect();
        items.shuffle(&mut a);
        let order = shuffled_rows(&mut b, 7);
        let by_order: Vec<char> = order
            .iter()
            .map(|&i| "abcdefg".as_bytes()[i] as char)
            .collect();
        assert_eq!(items, by_order);
        let picked = pick_rows(&mut ChaCha8Rng::seed_from_u64(3), 7, 3);
        let mut prefix = order[..3].to_vec();
        prefix.sort_unstable();
        assert_eq!(picked, prefix);
    }

    #[test]
    fn users_with_one_row_hold_none_out() {
        let x = [1.0f32, 2.0];
        let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 1, &[0, 1]).unwrap();
        assert!(hold_out_rows(&data, 0.5, 0).is_err());
        assert!(hold_out_rows(&data, 1.0, 0).is_err());
    }
}
