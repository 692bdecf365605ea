//! Few-shot personalization with a fixed basis: the reference `PersonalizeBatch`, optionally
//! with a prior on the users' logits (MAP) and early stopping on held-out rows.

use std::ops::ControlFlow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::adam::AdamClock;
use crate::data::Preferences;
use crate::divergence::{all_finite, diverged, learning_rate_hint, number, scale_hint};
use crate::error::{LoreError, Result};
use crate::eval::{FixedBasisValidation, Validation};
use crate::kernels::BlockKernels;
use crate::lanes::{build_groups, gather_group_logits, run_segment, LaneGroup};
use crate::model::{RewardBasis, UserWeights};
use crate::objective::{build_chunks, for_each_chunk, ChunkUse, ChunkWork};
use crate::params::{CheckedPersonalizeParams, EarlyStopping};
use crate::stopping::{StoppingReport, StoppingTracker};

/// What one personalization step reports: the loss (sum of user means, plus the prior's
/// penalty) before the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PersonalizeStep {
    /// 0-based step index.
    pub step: usize,
    /// The loss before the step's update.
    pub loss: f64,
}

/// The seeded random start of personalization: logits ~ N(0,1) [N x K] from ChaCha8.
pub fn random_user_logits(n_users: usize, rank: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n_users * rank)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

/// Steps per segment (with validation, segments also end where a score is due): the observer
/// sees each step's loss when its segment ends, and a break takes effect there.
pub const SEGMENT_STEPS: usize = 50;

/// Everything about a personalization run besides its hyperparameters (all optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct PersonalizeOptions<'o, 'a> {
    /// Initial logits [N x K]; the seeded N(0,1) draw without them.
    pub init_logits: Option<&'o [f32]>,
    /// Mean of the prior on every user's logits \[K\] (used when the prior strength is > 0),
    /// typically [`UserWeights::prior_logits`] of the users the basis was fitted on.
    pub prior_logits: Option<&'o [f32]>,
    /// Held-out rows of the same users, with the rule for stopping early on their loss.
    pub validation: Option<(&'o Validation<'a>, EarlyStopping)>,
}

/// What personalization returns: the users' weights and, with validation, what early
/// stopping saw.
#[derive(Debug, Clone, PartialEq)]
pub struct PersonalizeOutcome {
    /// The users' weights (at the lowest validation loss when early stopping).
    pub users: UserWeights,
    /// The early-stopping report; `None` without validation.
    pub stopping: Option<StoppingReport>,
}

/// Fits each user's weights softmax(w_u) on their rows with `basis` fixed. Z_u = X_u V is
/// computed once; the Adam iterations then never touch X again. Users are independent, so they
/// run 16 at a time, one per SIMD lane, for segments of 50 steps while their scores stay in
/// cache: the observer sees every step's loss when its segment ends, and a break takes effect
/// at the segment's end. With `options.validation`, the logits at the lowest validation loss
/// are returned, with the report of what early stopping saw.
///
/// ```
/// use std::ops::ControlFlow;
/// use lore_core::{
///     personalize, FeatureRows, PersonalizeOptions, PersonalizeParams, Preferences, RewardBasis,
/// };
///
/// // A basis with one column per feature; the new user prefers feature 1.
/// let basis = RewardBasis::new(2, 2, vec![1.0, 0.0, 0.0, 1.0], 1.0)?;
/// let x = [0.0f32, 1.0, -0.5, 2.0];
/// let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &[0, 0])?;
/// let params = PersonalizeParams::default().iterations(100).check()?;
/// let options = PersonalizeOptions::default();
/// let outcome = personalize(&params, &basis, &data, &options, |_| ControlFlow::Continue(()))?;
/// let w = outcome.users.user(0);
/// assert!(w[1] > w[0]);
/// # Ok::<(), lore_core::LoreError>(())
/// ```
pub fn personalize(
    params: &CheckedPersonalizeParams,
    basis: &RewardBasis,
    data: &Preferences,
    options: &PersonalizeOptions,
    mut observer: impl FnMut(&PersonalizeStep) -> ControlFlow<()>,
) -> Result<PersonalizeOutcome> {
    let (n, k) = (data.n_users(), basis.rank());
    if basis.n_features() != data.n_features() {
        return Err(LoreError::FeatureMismatch {
            model: basis.n_features(),
            data: data.n_features(),
        });
    }
    let random;
    let init = match options.init_logits {
        Some(init) => {
            check_values("initial w", init, n * k, n, k)?;
            init
        }
        None => {
            random = random_user_logits(n, k, params.seed());
            &random
        }
    };
    let prior = match (params.prior_strength() > 0.0, options.prior_logits) {
        (false, _) => None,
        (true, Some(mean)) => {
            check_values("prior mean", mean, k, 1, k)?;
            Some((mean, params.prior_strength() as f32))
        }
        (true, None) => {
            return Err(LoreError::InvalidParameter {
                name: "prior strength",
                reason: "a prior needs its mean logits (the fitted users' prior_logits)".into(),
            })
        }
    };
    let mut stopper = match options.validation {
        Some((validation, rule)) => {
            validation.check_for(data)?;
            let scorer = validation.with_fixed_basis(basis)?;
            Some((scorer, StoppingTracker::new(rule.check()?)))
        }
        None => None,
    };
    let mut best_logits = Vec::new();
    let mut evaluate = |stopper: &mut Option<(FixedBasisValidation, StoppingTracker)>,
                        steps: usize,
                        groups: &[LaneGroup],
                        last: bool|
     -> Result<ControlFlow<()>> {
        let Some((validation, tracker)) = stopper.as_mut() else {
            return Ok(ControlFlow::Continue(()));
        };
        if !tracker.due(steps, last) {
            return Ok(ControlFlow::Continue(()));
        }
        let logits = gather_group_logits(groups, n, k);
        let score = validation.score_logits(&logits)?;
        let recorded = tracker.record(steps, score);
        if recorded.improved {
            best_logits = logits;
        }
        Ok(recorded.flow)
    };

    let kernels = BlockKernels::new(data.n_features(), k);
    let mut packed_basis = vec![0.0f32; kernels.packed_len()];
    kernels.pack_basis(basis.values(), &mut packed_basis);
    let mut chunks = build_chunks(data, &kernels, k, init, ChunkUse::Scores);
    for_each_chunk(&mut chunks, |chunk| {
        chunk.compute_scores(data, &kernels, &packed_basis)
    });
    check_scores(params, &chunks, data, basis)?;
    let mut groups = build_groups(&chunks, data, k, basis.logit_scale() as f32, init);
    drop(chunks);
    let mut clock = AdamClock::new(params.learning_rate() as f32);
    // Steps run in segments of at most SEGMENT_STEPS, user by user within each; segments end
    // where validation is due (so no buffer grows with --eval-every).
    let eval_every = options.validation.map(|(_, rule)| rule.eval_every);
    let mut adam_steps = Vec::with_capacity(SEGMENT_STEPS);
    let mut steps = 0;
    'segments: while steps < params.iterations() {
        if evaluate(&mut stopper, steps, &groups, false)?.is_break() {
            break;
        }
        let until_due = eval_every.map_or(usize::MAX, |every| every - steps % every);
        let len = SEGMENT_STEPS
            .min(until_due)
            .min(params.iterations() - steps);
        adam_steps.clear();
        adam_steps.extend((0..len).map(|_| clock.begin_step()));
        run_segment(&mut groups, kernels.isa(), &adam_steps, prior);
        // Every group ran at least up to the earliest divergence.
        let diverged_at = groups.iter().filter_map(|g| g.diverged.map(|d| d.0)).min();
        for t in 0..diverged_at.map_or(len, |d| d + 1) {
            let loss = groups
                .iter()
                .fold(0.0, |total, group| total + group.losses[t]);
            let step = steps;
            if !loss.is_finite() {
                return Err(diverged(
                    step,
                    params.iterations(),
                    format!("the loss became {loss}"),
                    loss_hint(params, step, data, basis),
                ));
            }
            if diverged_at == Some(t) {
                let (user, value, gradient_finite) = groups
                    .iter()
                    .filter_map(|g| match g.diverged {
                        Some((d, finite)) if d == t => {
                            g.first_non_finite_user().map(|(u, v)| (u, v, finite))
                        }
                        _ => None,
                    })
                    .next()
                    .unwrap_or((0, f32::NAN, true));
                let hint = if gradient_finite {
                    update_hint(params)
                } else {
                    gradient_hint(params, data, basis)
                };
                return Err(diverged(
                    step,
                    params.iterations(),
                    format!("user {user}'s logits became {value}"),
                    hint,
                ));
            }
            steps += 1;
            if observer(&PersonalizeStep { step, loss }).is_break() {
                break 'segments;
            }
        }
    }
    let stopped = stopper.as_ref().is_some_and(|(_, t)| t.stopped);
    if !stopped {
        // The final state competes too; patience no longer matters.
        let _final = evaluate(&mut stopper, steps, &groups, true)?;
    }
    let report = stopper.and_then(|(_, tracker)| tracker.report());
    let logits = if report.is_some() {
        best_logits
    } else {
        gather_group_logits(&groups, n, k)
    };
    Ok(PersonalizeOutcome {
        users: UserWeights::from_logits(n, k, logits)?,
        stopping: report,
    })
}

/// Refuses data whose scores x . V are not finite (features too large for f32): checked once,
/// before any step, since personalization never recomputes them.
fn check_scores(
    params: &CheckedPersonalizeParams,
    chunks: &[ChunkWork],
    data: &Preferences,
    basis: &RewardBasis,
) -> Result<()> {
    for chunk in chunks {
        for u in chunk.users() {
            let (scores, _) = chunk.user_score_rows(data.user_offsets(), u);
            if !all_finite(scores) {
                return Err(diverged(
                    0,
                    params.iterations(),
                    format!("user {u}'s scores x . V are not finite"),
                    scale_hint(data, basis.logit_scale()),
                ));
            }
        }
    }
    Ok(())
}

/// What to change when the loss of `step` is not finite. The scores are finite (checked), so
/// before any update the prior's penalty overflows (or c times the scores); later an update did.
fn loss_hint(
    params: &CheckedPersonalizeParams,
    step: usize,
    data: &Preferences,
    basis: &RewardBasis,
) -> String {
    match (step, params.prior_strength() > 0.0) {
        (0, true) => format!(
            "lower the prior strength (now {}): its penalty overflows f32",
            number(params.prior_strength())
        ),
        (0, false) => scale_hint(data, basis.logit_scale()),
        _ => update_hint(params),
    }
}

/// What to change when a gradient overflowed: the data's part is bounded by the scores
/// (the weights are probabilities), so the features are too large, or the prior's pull is.
fn gradient_hint(
    params: &CheckedPersonalizeParams,
    data: &Preferences,
    basis: &RewardBasis,
) -> String {
    if params.prior_strength() > 0.0 {
        format!(
            "lower the prior strength (now {}) or the learning rate (now {})",
            number(params.prior_strength()),
            number(params.learning_rate())
        )
    } else {
        scale_hint(data, basis.logit_scale())
    }
}

/// What to change when an update made the logits non-finite.
fn update_hint(params: &CheckedPersonalizeParams) -> String {
    let hint = learning_rate_hint(params.learning_rate());
    if params.prior_strength() > 0.0 {
        format!(
            "{hint} or the prior strength (now {})",
            number(params.prior_strength())
        )
    } else {
        hint
    }
}

fn check_values(name: &'static str, values: &[f32], len: usize, n: usize, k: usize) -> Result<()> {
    if values.len() != len {
        return Err(LoreError::Shape(format!(
            "{name} has {} values, expected [N = {n}, K = {k}]",
            values.len()
        )));
    }
    if values.iter().any(|v| !v.is_finite()) {
        return Err(LoreError::InvalidParameter {
            name,
            reason: "contains NaN or infinite values".into(),
        });
    }
    Ok(())
}
