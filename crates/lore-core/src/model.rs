//! The fitted objects: a reward basis V [F x K] and per-user weights softmax(W_u) [K].

use crate::error::{LoreError, Result};
use crate::logistic::softmax_in_place;

/// A shared reward basis: user u's reward direction is V w_u, and
/// P(chosen > rejected | u) = sigmoid(logit_scale * x . V w_u).
///
/// ```
/// use lore_core::{RewardBasis, UserWeights};
///
/// // F = 2, K = 2: one column per feature; the user weighs column 0 only.
/// let basis = RewardBasis::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], 0.01)?;
/// let users = UserWeights::from_logits(1, 2, vec![30.0, 0.0])?;
/// let p = basis.preference_probability(&[100.0, -50.0], users.user(0));
/// assert!((p - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-6);
/// assert!(RewardBasis::new(2, 2, vec![1.0; 3], 0.01).is_err()); // not [F x K]
/// # Ok::<(), lore_core::LoreError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RewardBasis {
    n_features: usize,
    rank: usize,
    values: Vec<f32>,
    logit_scale: f64,
}

impl RewardBasis {
    /// V from row-major values [F x K]; checks the size and that every value is finite.
    pub fn new(n_features: usize, rank: usize, values: Vec<f32>, logit_scale: f64) -> Result<Self> {
        if n_features == 0 || rank == 0 || values.len() != n_features * rank {
            return Err(LoreError::Shape(format!(
                "basis of {} values is not [F = {n_features}, K = {rank}]",
                values.len()
            )));
        }
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(LoreError::InvalidParameter {
                name: "basis",
                reason: format!(
                    "V[{}, {}] is {} (every value must be finite)",
                    i / rank,
                    i % rank,
                    values[i]
                ),
            });
        }
        if !(logit_scale.is_finite() && logit_scale > 0.0 && logit_scale <= f32::MAX as f64) {
            return Err(LoreError::InvalidParameter {
                name: "logit scale",
                reason: format!(
                    "{logit_scale} (must be finite, > 0 and at most {:e}, the largest f32)",
                    f32::MAX
                ),
            });
        }
        Ok(Self {
            n_features,
            rank,
            values,
            logit_scale,
        })
    }

    /// "K = 0": the original reward model's own head v_ref as a one-column basis (w = \[1\]).
    pub fn reference_head(v_ref: &[f32], logit_scale: f64) -> Result<Self> {
        Self::new(v_ref.len(), 1, v_ref.to_vec(), logit_scale)
    }

    /// Feature dimension F.
    pub fn n_features(&self) -> usize {
        self.n_features
    }
    /// Number of columns K.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// Row-major values [F x K].
    pub fn values(&self) -> &[f32] {
        &self.values
    }
    /// c in P(chosen > rejected | u) = sigmoid(c * x . V w_u).
    pub fn logit_scale(&self) -> f64 {
        self.logit_scale
    }

    /// The reward direction V w for weights w \[K\].
    pub fn direction(&self, weights: &[f32]) -> Vec<f64> {
        assert_eq!(weights.len(), self.rank, "weights must have K entries");
        self.values
            .chunks_exact(self.rank)
            .map(|row| {
                row.iter()
                    .zip(weights)
                    .map(|(&v, &w)| v as f64 * w as f64)
                    .sum()
            })
            .collect()
    }

    /// P(chosen > rejected) for a pair with features x = e(chosen) - e(rejected) and weights w.
    pub fn preference_probability(&self, x: &[f32], weights: &[f32]) -> f64 {
        let direction = self.direction(weights);
        let score: f64 = x.iter().zip(&direction).map(|(&a, &b)| a as f64 * b).sum();
        1.0 / (1.0 + (-self.logit_scale * score).exp())
    }

    /// The reward r = c * e . V w of features e \[F\] for a user with weights w \[K\], in
    /// Bradley-Terry logit units: P(a > b) = sigmoid(r(a) - r(b)). Accumulated in f64; equal,
    /// bit for bit, to [`Self::reward_along`] with `direction(w)`, which a server computing many
    /// rewards for one user uses to form V w once.
    ///
    /// Panics if `features` does not have F entries or `weights` K (callers check inputs).
    ///
    /// ```
    /// use lore_core::RewardBasis;
    ///
    /// // F = 2, K = 2, c = 0.5: r = 0.5 * (e0 * w0 + e1 * w1).
    /// let basis = RewardBasis::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], 0.5)?;
    /// assert_eq!(basis.reward(&[2.0, 4.0], &[0.25, 0.75]), 0.5 * (2.0 * 0.25 + 4.0 * 0.75));
    /// let direction = basis.direction(&[0.25, 0.75]);
    /// assert_eq!(basis.reward_along(&[2.0, 4.0], &direction), basis.reward(&[2.0, 4.0], &[0.25, 0.75]));
    /// # Ok::<(), lore_core::LoreError>(())
    /// ```
    pub fn reward(&self, features: &[f32], weights: &[f32]) -> f64 {
        self.reward_along(features, &self.direction(weights))
    }

    /// The reward c * e . d of features e \[F\] along a reward direction d \[F\] (from
    /// [`Self::direction`]), accumulated in f64 in feature order.
    ///
    /// Panics if `features` or `direction` does not have F entries.
    pub fn reward_along(&self, features: &[f32], direction: &[f64]) -> f64 {
        assert_eq!(
            features.len(),
            self.n_features,
            "features must have F entries"
        );
        assert_eq!(
            direction.len(),
            self.n_features,
            "direction must have F entries"
        );
        let dot: f64 = features
            .iter()
            .zip(direction)
            .map(|(&e, &d)| e as f64 * d)
            .sum();
        self.logit_scale * dot
    }
}

/// The population's mean weights softmax(prior_logits) \[K\] (stable: the maximum is
/// subtracted first): what a user the model has never seen is scored with, and where a MAP
/// personalization (`--prior-strength` > 0) starts every user. Computed exactly as
/// [`UserWeights::from_logits`] does, so a user whose logits are the prior gets these weights.
///
/// ```
/// let w = lore_core::population_weights(&[0.0, 0.0, 1000.0]); // no overflow
/// assert!(w[0] < 1e-30 && w[1] < 1e-30 && w[2] == 1.0);
/// assert_eq!(lore_core::population_weights(&[1.0, 1.0]), vec![0.5, 0.5]);
/// ```
pub fn population_weights(prior_logits: &[f32]) -> Vec<f32> {
    let mut weights = prior_logits.to_vec();
    if !weights.is_empty() {
        softmax_in_place(&mut weights);
    }
    weights
}

/// Per-user weights: logits W [N x K] and their row softmax.
#[derive(Debug, Clone, PartialEq)]
pub struct UserWeights {
    n_users: usize,
    rank: usize,
    logits: Vec<f32>,
    weights: Vec<f32>,
}

impl UserWeights {
    /// Weights from logits [N x K] (softmax per row).
    pub fn from_logits(n_users: usize, rank: usize, logits: Vec<f32>) -> Result<Self> {
        if rank == 0 || logits.len() != n_users * rank {
            return Err(LoreError::Shape(format!(
                "{} weight logits are not [N = {n_users}, K = {rank}]",
                logits.len()
            )));
        }
        let mut weights = logits.clone();
        for row in weights.chunks_exact_mut(rank) {
            softmax_in_place(row);
        }
        Ok(Self {
            n_users,
            rank,
            logits,
            weights,
        })
    }

    /// Explicit logits and weights, e.g. the kept columns of a pruned fit (rows need not sum to 1).
    pub fn from_parts(
        n_users: usize,
        rank: usize,
        logits: Vec<f32>,
        weights: Vec<f32>,
    ) -> Result<Self> {
        if rank == 0 || logits.len() != n_users * rank || weights.len() != n_users * rank {
            return Err(LoreError::Shape(format!(
                "user weights are not [N = {n_users}, K = {rank}]"
            )));
        }
        Ok(Self {
            n_users,
            rank,
            logits,
            weights,
        })
    }

    /// Weight 1 on a single column for every user (K = 0 and K = 1 evaluation).
    pub fn single_column(n_users: usize) -> Self {
        Self {
            n_users,
            rank: 1,
            logits: vec![0.0; n_users],
            weights: vec![1.0; n_users],
        }
    }

    /// Number of users N.
    pub fn n_users(&self) -> usize {
        self.n_users
    }
    /// Number of columns K.
    pub fn rank(&self) -> usize {
        self.rank
    }
    /// Logits W [N x K], row-major.
    pub fn logits(&self) -> &[f32] {
        &self.logits
    }
    /// Weights softmax(W) [N x K], row-major.
    pub fn weights(&self) -> &[f32] {
        &self.weights
    }
    /// User u's weights \[K\].
    pub fn user(&self, u: usize) -> &[f32] {
        &self.weights[u * self.rank..(u + 1) * self.rank]
    }

    /// The population's mean weights as logits \[K\]: log of the mean over users of their
    /// weights (renormalized, floored at 1e-6), centered to mean 0. The mean of a prior for
    /// new users, and their natural starting point.
    pub fn prior_logits(&self) -> Vec<f32> {
        let k = self.rank;
        let mut mean = vec![0.0f64; k];
        for row in self.weights.chunks_exact(k) {
            for (m, &w) in mean.iter_mut().zip(row) {
                *m += w as f64;
            }
        }
        let total: f64 = mean.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let logs: Vec<f64> = mean.iter().map(|m| (m / total).max(1e-6).ln()).collect();
        let center = logs.iter().sum::<f64>() / k as f64;
        logs.iter().map(|l| (l - center) as f32).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prior_logits_give_the_mean_weights() {
        let users = UserWeights::from_logits(2, 3, vec![0.0, 1.0, -1.0, 2.0, 0.5, 0.0]).unwrap();
        let mut prior = users.prior_logits();
        assert!(prior.iter().sum::<f32>().abs() < 1e-5);
        softmax_in_place(&mut prior);
        for (j, &p) in prior.iter().enumerate() {
            let mean = (users.user(0)[j] + users.user(1)[j]) / 2.0;
            assert!((p - mean).abs() < 1e-5, "{j}: {p} vs {mean}");
        }
    }

    #[test]
    fn reward_is_scaled_dot_product_in_f64() {
        // F = 3, K = 2; V rows (1, 2), (-1, 0.5), (0, 3); w = (0.25, 0.75); c = 0.1.
        let basis = RewardBasis::new(3, 2, vec![1.0, 2.0, -1.0, 0.5, 0.0, 3.0], 0.1).unwrap();
        let w = [0.25f32, 0.75];
        let e = [2.0f32, -4.0, 0.5];
        // V w = (1.75, 0.125, 2.25); e . V w = 3.5 - 0.5 + 1.125 = 4.125.
        let expected = 0.1 * 4.125;
        let r = basis.reward(&e, &w);
        assert!((r - expected).abs() < 1e-15, "{r} vs {expected}");
        let direction = basis.direction(&w);
        assert_eq!(basis.reward_along(&e, &direction).to_bits(), r.to_bits());
        // P(a > b) = sigmoid(r(a) - r(b)), as preference_probability of x = a - b.
        let b = [1.0f32, 1.0, -1.0];
        let x: Vec<f32> = e.iter().zip(&b).map(|(a, b)| a - b).collect();
        let p = 1.0 / (1.0 + (-(r - basis.reward(&b, &w))).exp());
        assert!((p - basis.preference_probability(&x, &w)).abs() < 1e-12);
    }

    #[test]
    fn population_weights_match_user_weights_and_are_stable() {
        let prior = [0.3f32, -1.2, 2.0];
        let users = UserWeights::from_logits(1, 3, prior.to_vec()).unwrap();
        assert_eq!(population_weights(&prior), users.user(0));
        let big = population_weights(&[1e30, 0.0]);
        assert!(big[0] == 1.0 && big[1] < 1e-30, "{big:?}");
        assert!(population_weights(&[]).is_empty());
        let sum: f32 = population_weights(&prior).iter().sum();
        assert!((sum - 1.0).abs() < 1e-6);
    }

    #[test]
    fn probability_follows_the_direction() {
        let basis = RewardBasis::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], 0.01).unwrap();
        let p = basis.preference_probability(&[100.0, 0.0], &[1.0, 0.0]);
        assert!((p - 1.0 / (1.0 + (-1.0f64).exp())).abs() < 1e-12);
        assert!(RewardBasis::new(2, 2, vec![1.0; 3], 0.01).is_err());
    }
}
