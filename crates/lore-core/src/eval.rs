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
    /// Mean over users.
    pub mean: f64,
    /// Population standard deviation over users.
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
///
/// ```
/// use lore_core::{evaluate, FeatureRows, Preferences, RewardBasis, UserWeights};
///
/// let basis = RewardBasis::new(2, 1, vec![1.0, -1.0], 0.01)?;
/// let users = UserWeights::single_column(2);
/// // User 0: both pairs agree with x . V > 0; user 1: one of two.
/// let x = [1.0f32, 0.0, 2.0, 1.0, 0.0, 1.0, 3.0, 0.0];
/// let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &[0, 0, 1, 1])?;
/// let accuracy = evaluate(&basis, &users, &data)?;
/// assert_eq!(accuracy.per_user, [1.0, 0.5]);
/// assert_eq!(accuracy.mean, 0.75);
/// # Ok::<(), lore_core::LoreError>(())
/// ```
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
    let score = Validation::same_users(data.clone()).score(
        basis.values(),
        users.weights(),
        basis.rank(),
        basis.logit_scale(),
    )?;
    Ok(Evaluation::from_per_user(score.per_user_accuracy))
}

/// Held-out rows for early stopping and model choice: user j of `data` is user `users[j]` of
/// the model being fitted (users without held-out rows are simply absent).
#[derive(Debug, Clone)]
pub struct Validation<'a> {
    data: Preferences<'a>,
    users: Vec<usize>,
}

impl<'a> Validation<'a> {
    /// Held-out rows whose user j is user `users[j]` of the fitted model.
    pub fn new(data: Preferences<'a>, users: Vec<usize>) -> Result<Self> {
        if users.len() != data.n_users() {
            return Err(LoreError::Shape(format!(
                "{} validation users mapped, but the validation rows have {}",
                users.len(),
                data.n_users()
            )));
        }
        Ok(Self { data, users })
    }

    /// Held-out rows of the same users, in the same order, as the model's.
    pub fn same_users(data: Preferences<'a>) -> Self {
        let users = (0..data.n_users()).collect();
        Self { data, users }
    }

    /// The held-out rows.
    pub fn data(&self) -> &Preferences<'a> {
        &self.data
    }

    /// The model's user of each validation user.
    pub fn users(&self) -> &[usize] {
        &self.users
    }

    /// Checks that these rows fit a model trained on `data`: same features, users in range.
    pub fn check_for(&self, data: &Preferences) -> Result<()> {
        if self.data.n_features() != data.n_features() {
            return Err(LoreError::FeatureMismatch {
                model: data.n_features(),
                data: self.data.n_features(),
            });
        }
        if let Some(&u) = self.users.iter().find(|&&u| u >= data.n_users()) {
            return Err(LoreError::UserOutOfRange {
                index: u as u64,
                n_users: data.n_users(),
            });
        }
        Ok(())
    }

    /// [`Self::score`] for a basis and the users' logits W [N x K].
    pub fn score_logits(&self, basis: &RewardBasis, logits: &[f32]) -> Result<ValidationScore> {
        let k = basis.rank();
        let mut weights = logits.to_vec();
        for row in weights.chunks_exact_mut(k) {
            crate::logistic::softmax_in_place(row);
        }
        self.score(basis.values(), &weights, k, basis.logit_scale())
    }

    /// Mean over users of each user's mean NLL and accuracy, with `basis` [F x K] (row-major),
    /// the users' weights [N x K] (softmax(W), or a pruned model's kept columns) and
    /// c = `logit_scale`. Each user's reward direction V w_u is formed once, so a score costs
    /// F*K per user plus F per row.
    pub fn score(
        &self,
        basis: &[f32],
        weights: &[f32],
        rank: usize,
        logit_scale: f64,
    ) -> Result<ValidationScore> {
        let f = self.data.n_features();
        if basis.len() != f * rank {
            return Err(LoreError::FeatureMismatch {
                model: basis.len() / rank.max(1),
                data: f,
            });
        }
        let n_model_users = weights.len() / rank.max(1);
        if let Some(&u) = self.users.iter().find(|&&u| u >= n_model_users) {
            return Err(LoreError::UserOutOfRange {
                index: u as u64,
                n_users: n_model_users,
            });
        }
        let per_user: Vec<(f64, f64)> = (0..self.data.n_users())
            .into_par_iter()
            .map_init(
                || (Vec::new(), vec![0.0f64; f]),
                |(scratch, direction), j| {
                    let w = &weights[self.users[j] * rank..(self.users[j] + 1) * rank];
                    for (d, row) in direction.iter_mut().zip(basis.chunks_exact(rank)) {
                        *d = row
                            .iter()
                            .zip(w)
                            .map(|(&v, &w)| v as f64 * w as f64)
                            .sum::<f64>();
                    }
                    let x = self.data.rows_f32(self.data.user_rows(j), scratch);
                    user_terms(
                        x.chunks_exact(f).map(|row| {
                            row.iter()
                                .zip(direction.iter())
                                .map(|(&a, &b)| a as f64 * b)
                                .sum::<f64>()
                        }),
                        logit_scale,
                    )
                },
            )
            .collect();
        Ok(ValidationScore::from_per_user(&per_user))
    }

    /// The rows' scores Z = X V against a basis that stays fixed (personalization), so that
    /// each later score costs K per row instead of F.
    pub(crate) fn with_fixed_basis(&self, basis: &RewardBasis) -> Result<FixedBasisValidation> {
        let (f, k) = (self.data.n_features(), basis.rank());
        if basis.n_features() != f {
            return Err(LoreError::FeatureMismatch {
                model: basis.n_features(),
                data: f,
            });
        }
        let per_user: Vec<Vec<f64>> = (0..self.data.n_users())
            .into_par_iter()
            .map_init(Vec::new, |scratch, j| {
                let x = self.data.rows_f32(self.data.user_rows(j), scratch);
                let mut z = vec![0.0f64; x.len() / f * k];
                for (row, out) in x.chunks_exact(f).zip(z.chunks_exact_mut(k)) {
                    for (&a, v) in row.iter().zip(basis.values().chunks_exact(k)) {
                        for (o, &b) in out.iter_mut().zip(v) {
                            *o += a as f64 * b as f64;
                        }
                    }
                }
                z
            })
            .collect();
        Ok(FixedBasisValidation {
            scores: per_user.concat(),
            offsets: self.data.user_offsets().to_vec(),
            users: self.users.clone(),
            rank: k,
            logit_scale: basis.logit_scale(),
        })
    }
}

/// Held-out rows with their scores against a fixed basis precomputed (see
/// [`Validation::with_fixed_basis`]).
#[derive(Debug, Clone)]
pub(crate) struct FixedBasisValidation {
    /// Z [rows x K] in f64.
    scores: Vec<f64>,
    offsets: Vec<usize>,
    users: Vec<usize>,
    rank: usize,
    logit_scale: f64,
}

impl FixedBasisValidation {
    /// The score of the users' logits W [N x K] (same values as [`Validation::score`] up to
    /// rounding).
    pub fn score_logits(&self, logits: &[f32]) -> Result<ValidationScore> {
        let k = self.rank;
        let n_model_users = logits.len() / k;
        if let Some(&u) = self.users.iter().find(|&&u| u >= n_model_users) {
            return Err(LoreError::UserOutOfRange {
                index: u as u64,
                n_users: n_model_users,
            });
        }
        let per_user: Vec<(f64, f64)> = (0..self.users.len())
            .map(|j| {
                let mut w = logits[self.users[j] * k..(self.users[j] + 1) * k].to_vec();
                crate::logistic::softmax_in_place(&mut w);
                let rows = &self.scores[self.offsets[j] * k..self.offsets[j + 1] * k];
                user_terms(
                    rows.chunks_exact(k)
                        .map(|z| z.iter().zip(&w).map(|(&a, &b)| a * b as f64).sum::<f64>()),
                    self.logit_scale,
                )
            })
            .collect();
        Ok(ValidationScore::from_per_user(&per_user))
    }
}

impl ValidationScore {
    /// Means over users of (mean NLL, accuracy) pairs.
    fn from_per_user(per_user: &[(f64, f64)]) -> Self {
        let n = per_user.len().max(1) as f64;
        Self {
            loss: per_user.iter().map(|p| p.0).sum::<f64>() / n,
            accuracy: per_user.iter().map(|p| p.1).sum::<f64>() / n,
            per_user_accuracy: per_user.iter().map(|p| p.1).collect(),
        }
    }
}

/// A model's score on held-out rows.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidationScore {
    /// Mean over users of each user's mean -log sigmoid(c x . V w_u).
    pub loss: f64,
    /// Mean over users of each user's pairwise accuracy.
    pub accuracy: f64,
    /// Each validation user's accuracy.
    pub per_user_accuracy: Vec<f64>,
}

/// One user's (mean NLL, accuracy) from its rows' scores x . V w (before the logit scale c).
fn user_terms(scores: impl Iterator<Item = f64>, logit_scale: f64) -> (f64, f64) {
    let (mut loss, mut correct, mut n) = (0.0f64, 0usize, 0usize);
    for s in scores {
        loss += softplus(-logit_scale * s);
        correct += (s > 0.0) as usize;
        n += 1;
    }
    (loss / n as f64, correct as f64 / n as f64)
}

/// log(1 + e^t), without overflow.
fn softplus(t: f64) -> f64 {
    if t > 0.0 {
        t + (-t).exp().ln_1p()
    } else {
        t.exp().ln_1p()
    }
}
