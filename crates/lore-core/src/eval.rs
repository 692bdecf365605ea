//! Pairwise accuracy per user: the fraction of a user's rows with x . V w_u > 0.

use rayon::prelude::*;

use crate::data::Preferences;
use crate::error::{LoreError, Result};
use crate::model::{RewardBasis, UserWeights};

/// Accuracies per user, with their mean and population standard deviation.
#[derive(Debug, Clone, PartialEq)]
pub struct Evaluation {
    /// Accuracy of each user of the data, in user order.
    pub per_user: Vec<f64>,
    pub mean: f64,
    pub std: f64,
}

impl Evaluation {
    /// Summarizes per-user accuracies.
    pub fn from_per_user(per_user: Vec<f64>) -> Self {
        let (mean, std) = mean_and_std(&per_user);
        Self {
            per_user,
            mean,
            std,
        }
    }
}

/// Mean and population standard deviation (0 and 0 for no values).
pub fn mean_and_std(values: &[f64]) -> (f64, f64) {
    if values.is_empty() {
        return (0.0, 0.0);
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / n;
    (mean, var.sqrt())
}

/// Evaluates users 0..N-1 of `data` with their weights in `users` (which may hold more users).
/// For the reference head ("K = 0") pass `RewardBasis::reference_head` and
/// `UserWeights::single_column`.
pub fn evaluate(
    basis: &RewardBasis,
    users: &UserWeights,
    data: &Preferences,
) -> Result<Evaluation> {
    if basis.n_features() != data.n_features() {
        return Err(LoreError::FeatureMismatch {
            model: basis.n_features(),
            data: data.n_features(),
        });
    }
    if users.rank() != basis.rank() {
        return Err(LoreError::Shape(format!(
            "user weights have K = {} but the basis has K = {}",
            users.rank(),
            basis.rank()
        )));
    }
    if data.n_users() > users.n_users() {
        return Err(LoreError::UserOutOfRange {
            index: data.n_users() as u64 - 1,
            n_users: users.n_users(),
        });
    }
    let f = data.n_features();
    let per_user: Vec<f64> = (0..data.n_users())
        .into_par_iter()
        .map_init(Vec::new, |scratch, u| {
            let direction = basis.direction(users.user(u));
            let rows = data.user_rows(u);
            let n_rows = rows.len();
            let x = data.rows_f32(rows, scratch);
            let correct = x
                .chunks_exact(f)
                .filter(|row| {
                    let score: f64 = row
                        .iter()
                        .zip(&direction)
                        .map(|(&a, &b)| a as f64 * b)
                        .sum();
                    score > 0.0
                })
                .count();
            correct as f64 / n_rows as f64
        })
        .collect();
    Ok(Evaluation::from_per_user(per_user))
}
