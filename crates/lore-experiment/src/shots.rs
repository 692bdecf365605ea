//! Accuracy of unseen users against the number of few-shot pairs ([`shots_curve`]).

use std::ops::ControlFlow;

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::sets::{ExperimentSets, OwnedRows};
use crate::sweep::*;
use lore_core::evaluate;
use lore_core::personalize;
use lore_core::Preferences;
use lore_core::Result;
use lore_core::{fit, FitOptions, PersonalizeOptions};
use lore_core::{FitParams, Method, PersonalizeParams};
use lore_core::{RewardBasis, UserWeights};

/// Hyperparameters of a few-shot curve (unchecked).
#[derive(Debug, Clone, PartialEq)]
pub struct ShotsParams {
    /// The fit's method and hyperparameters (alpha and seed included); its rank is set per K.
    pub fit: FitParams,
    /// Personalization's hyperparameters; its seed is set per trial.
    pub personalize: PersonalizeParams,
    /// Ranks K, one curve each (0 = the reference head, 1 = one shared reward: flat curves).
    pub ranks: Vec<usize>,
    /// Few-shot counts: each unseen user's pairs drawn from their few-shot rows (all of them
    /// when they have fewer).
    pub shots: Vec<usize>,
    /// Draws of the few-shot rows per count.
    pub trials: usize,
}

impl ShotsParams {
    /// The reference's few-shot study: ranks 1 and 4, shots 5, 10, ..., 50, 5 trials; the fit
    /// with [`PAPER_LEARNING_RATE`] for the default iterations, personalization's defaults.
    pub fn reference(method: Method) -> Self {
        Self {
            fit: FitParams::new(method, 1).learning_rate(PAPER_LEARNING_RATE),
            personalize: PersonalizeParams::default(),
            ranks: vec![1, 4],
            shots: (1..=10).map(|i| 5 * i).collect(),
            trials: 5,
        }
    }

    /// Validates every value; ranks and shots are sorted.
    pub fn check(&self) -> Result<CheckedShotsParams> {
        let ranks = check_ranks(&self.ranks)?;
        check_list("shots", &self.shots)?;
        let mut shots = self.shots.clone();
        shots.sort_unstable();
        if shots[0] == 0 {
            return Err(invalid("shots", "0 (each count must be at least 1)".into()));
        }
        if shots.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("shots", "a count appears twice".into()));
        }
        if self.trials == 0 {
            return Err(invalid("trials", "0 (must be at least 1)".into()));
        }
        with_rank(&self.fit, 1).check()?;
        self.personalize.check()?;
        Ok(CheckedShotsParams(Self {
            ranks,
            shots,
            ..self.clone()
        }))
    }
}

/// Validated few-shot curve hyperparameters (ranks and shots sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedShotsParams(ShotsParams);

impl CheckedShotsParams {
    /// The parameters (ranks and shots sorted ascending).
    pub fn params(&self) -> &ShotsParams {
        &self.0
    }

    /// Checks that the curve can run on `sets` with `v_ref`, as [`shots_curve`] does before
    /// any work.
    pub fn check_inputs(&self, sets: &ExperimentSets, v_ref: Option<&[f32]>) -> Result<()> {
        crate::memory::check_ranks_fit(sets, &self.0.ranks)?;
        check_reference(sets, v_ref, &self.0.ranks, &[self.0.fit.alpha])
    }

    /// Optimizer steps the curve runs (for a progress bar's length).
    pub fn total_steps(&self) -> usize {
        let p = &self.0;
        p.ranks
            .iter()
            .map(|&k| match k {
                0 => 0,
                1 => p.fit.iterations,
                // Saturating: a count past usize::MAX only lengthens a progress bar.
                _ => p.fit.iterations.saturating_add(
                    p.personalize
                        .iterations
                        .saturating_mul(p.shots.len())
                        .saturating_mul(p.trials),
                ),
            })
            .fold(0, usize::saturating_add)
    }
}

/// Accuracy of the unseen users for one (rank, shots) over the trials.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotsRow {
    /// Rank K (0 = the reference head).
    pub rank: usize,
    /// Few-shot pairs asked for per unseen user.
    pub shots: usize,
    /// Mean number of few-shot pairs per unseen user actually used (less than `shots` for
    /// users with fewer few-shot rows).
    pub mean_shots: f64,
    /// On the sampled few-shot rows.
    pub unseen_train: Summary,
    /// On the unseen users' held-out rows.
    pub unseen_test: Summary,
}

/// The rows of a few-shot curve, rank-major then by shots.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotsResults {
    /// One row per (rank, shots).
    pub rows: Vec<ShotsRow>,
    /// True when K = 0 was asked for but no v_ref was given, so it was left out.
    pub reference_skipped: bool,
}

/// The few-shot curve: for each rank, one fit on the seen users (seed and alpha of
/// `params.fit`), then for each shots count and trial a fresh draw of that many few-shot rows
/// per unseen user, personalization on them, and evaluation on the unseen test rows.
pub fn shots_curve(
    sets: &ExperimentSets,
    v_ref: Option<&[f32]>,
    params: &CheckedShotsParams,
    mut observer: impl FnMut(&Progress),
) -> Result<ShotsResults> {
    let p = params.params();
    params.check_inputs(sets, v_ref)?;
    if crate::memory::shots_memory(sets, params)?.is_none() {
        return Err(crate::memory::too_large(
            "trials",
            format!(
                "{} trials of {} unseen users",
                p.trials,
                sets.unseen_train.n_users()
            ),
        ));
    }
    let mut results = ShotsResults {
        rows: Vec::new(),
        reference_skipped: false,
    };
    let (alpha, seed) = (p.fit.alpha, p.fit.seed);
    for &rank in &p.ranks {
        let (basis, fitted) = match (rank, v_ref) {
            (0, None) => {
                results.reference_skipped = true;
                continue;
            }
            (0, Some(v_ref)) => (
                RewardBasis::reference_head(v_ref, p.fit.logit_scale)?,
                false,
            ),
            _ => {
                let fit_params = with_rank(&p.fit, rank).check()?;
                let options = FitOptions {
                    v_ref,
                    ..FitOptions::default()
                };
                let model = fit(&fit_params, &sets.seen_train, &options, |step| {
                    observer(&Progress {
                        alpha,
                        rank,
                        seed,
                        shots: None,
                        phase: Phase::Fit,
                        step: step.step,
                        loss: step.nll,
                    });
                    ControlFlow::Continue(())
                })?
                .model;
                (model.basis, rank >= 2)
            }
        };
        for &shots in &p.shots {
            let mut train_runs = Vec::with_capacity(p.trials);
            let mut test_runs = Vec::with_capacity(p.trials);
            let mut used = 0usize;
            for trial in 0..p.trials {
                let draw = draw_shots(&sets.unseen_train, shots, seed, trial)?;
                let sample = draw.view()?;
                used += sample.n_rows();
                let users = if fitted {
                    let params = p
                        .personalize
                        .clone()
                        .seed(seed.wrapping_add(trial as u64))
                        .check()?;
                    let options = PersonalizeOptions::default();
                    personalize(&params, &basis, &sample, &options, |step| {
                        observer(&Progress {
                            alpha,
                            rank,
                            seed,
                            shots: Some((shots, trial)),
                            phase: Phase::Personalize,
                            step: step.step,
                            loss: step.loss,
                        });
                        ControlFlow::Continue(())
                    })?
                    .users
                } else {
                    UserWeights::single_column(sample.n_users())
                };
                let test_users = select_users(&users, &sets.unseen_test_users)?;
                train_runs.push(evaluate(&basis, &users, &sample)?);
                test_runs.push(evaluate(&basis, &test_users, &sets.unseen_test)?);
            }
            results.rows.push(ShotsRow {
                rank,
                shots,
                mean_shots: used as f64 / (p.trials as f64 * sets.unseen_train.n_users() as f64),
                unseen_train: Summary::from_runs(&train_runs),
                unseen_test: Summary::from_runs(&test_runs),
            });
        }
    }
    Ok(results)
}

fn draw_shots(pool: &Preferences, shots: usize, seed: u64, trial: usize) -> Result<OwnedRows> {
    let f = pool.n_features();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((shots as u64) << 32) | trial as u64);
    let mut rows = Vec::new();
    let mut offsets = vec![0];
    let mut scratch = Vec::new();
    for u in 0..pool.n_users() {
        let range = pool.user_rows(u);
        let n = range.len();
        let mut picked = sample(&mut rng, n, shots.min(n)).into_vec();
        picked.sort_unstable();
        for i in picked {
            let row = range.start + i;
            rows.extend_from_slice(pool.rows_f32(row..row + 1, &mut scratch));
        }
        offsets.push(rows.len() / f);
    }
    Ok(OwnedRows {
        rows,
        n_features: f,
        offsets,
    })
}
