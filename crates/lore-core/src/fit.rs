//! Fitting a shared basis V and per-user weights W: the reference `LoRe` and `LoRe_regularized`.

use std::ops::ControlFlow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::adam::{Adam, AdamClock};
use crate::data::Preferences;
use crate::divergence::{
    all_finite, describe_matrix, diverged, learning_rate_hint, number, scale_hint,
};
use crate::error::{LoreError, Result};
use crate::eval::Validation;
use crate::kernels::BlockKernels;
use crate::logistic::softmax_in_place;
use crate::model::{RewardBasis, UserWeights};
use crate::objective::{
    build_chunks, for_each_chunk, fused_pays, gather_logits, pack_panels, reduce_gradients,
    row_kernels, total_losses, ChunkUse, ChunkWork, PassSpec, RowWeighting,
};
use crate::params::{CheckedFitParams, EarlyStopping, Method, Precision};
use crate::stopping::{StoppingReport, StoppingTracker};

/// Starting values of a fit, instead of the seeded random draw.
#[derive(Debug, Clone, PartialEq)]
pub struct FitInit {
    /// Initial logits W0 [N x K], row-major.
    pub logits: Vec<f32>,
    /// Initial basis V0 [F x K], row-major.
    pub basis: Vec<f32>,
}

impl FitInit {
    /// The reference's random start: W ~ N(0,1) (`lore`) or U[0,1) (`regularized`), V ~ N(0,1),
    /// drawn in that order from ChaCha8 seeded with `seed`.
    pub fn random(
        method: Method,
        n_users: usize,
        n_features: usize,
        rank: usize,
        seed: u64,
    ) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let logits = (0..n_users * rank)
            .map(|_| match method {
                Method::Lore => rng.sample::<f32, _>(StandardNormal),
                Method::Regularized => rng.gen::<f32>(),
            })
            .collect();
        let basis = (0..n_features * rank)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        Self { logits, basis }
    }
}

/// What one optimizer step reports to the observer.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FitStep {
    /// 0-based step index.
    pub step: usize,
    /// The NLL before the step's update (`lore`: sum of user means; `regularized`: the W-step's
    /// mean over all rows, `nll_w`).
    pub nll: f64,
    /// `regularized` only: the V-step's NLL, after the W update.
    pub nll_after_weights: Option<f64>,
    /// `lore`: the whole penalty alpha * sum_j ||V_j - v_ref||^2; `regularized`: mean_j
    /// (1 - cos(V_j, v_ref)) without alpha, 0 where this step's alpha is 0.
    pub reg: f64,
    /// The alpha in force at this step (the warm-up schedule for `regularized`).
    pub alpha: f64,
}

/// A fitted model: the basis and user weights after pruning, and what pruning removed.
#[derive(Debug, Clone, PartialEq)]
pub struct FittedModel {
    /// V [F x K'] of the kept columns.
    pub basis: RewardBasis,
    /// softmax(W)[:, kept] and W[:, kept] [N x K'].
    pub users: UserWeights,
    /// Indices of the kept columns among the K fitted ones.
    pub kept: Vec<usize>,
    /// V [F x K] before pruning.
    pub unpruned_basis: Vec<f32>,
    /// W logits [N x K] before pruning.
    pub unpruned_logits: Vec<f32>,
    /// Optimizer steps run (fewer than `iterations` when the observer stopped early).
    pub steps: usize,
}

/// Everything about a fit besides its hyperparameters and data (all optional).
#[derive(Debug, Clone, Copy, Default)]
pub struct FitOptions<'o, 'a> {
    /// The reference direction v_ref \[F\] the basis is pulled toward (needed when alpha > 0).
    pub v_ref: Option<&'o [f32]>,
    /// Starting values instead of the seeded random draw.
    pub init: Option<&'o FitInit>,
    /// Held-out rows of the same users, with the rule for stopping early on their loss: at
    /// most `iterations` steps, and the state with the lowest validation loss is kept.
    pub validation: Option<(&'o Validation<'a>, EarlyStopping)>,
}

/// What a fit returns: the fitted (pruned) model and, with validation, what early stopping saw.
#[derive(Debug, Clone, PartialEq)]
pub struct FitOutcome {
    /// The basis and user weights (the best validated state when early stopping).
    pub model: FittedModel,
    /// The early-stopping report; `None` without validation.
    pub stopping: Option<StoppingReport>,
}

/// Fits V and W on `data`, then prunes: `iterations` steps unless `observer` breaks or early
/// stopping on `options.validation` ends the run first.
///
/// ```
/// use std::ops::ControlFlow;
/// use lore_core::{fit, FeatureRows, FitOptions, FitParams, Method, Preferences};
///
/// // Two users, F = 2: user 0 prefers feature 0, user 1 feature 1.
/// let x = [1.0f32, 0.0, 2.0, 0.5, 0.0, 1.0, 0.5, 2.0];
/// let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &[0, 0, 1, 1])?;
/// let params = FitParams::new(Method::Lore, 2).iterations(50).learning_rate(0.5).check()?;
/// let outcome = fit(&params, &data, &FitOptions::default(), |_| ControlFlow::Continue(()))?;
/// assert_eq!(outcome.model.basis.n_features(), 2);
/// assert_eq!(outcome.model.steps, 50);
/// assert!(outcome.stopping.is_none());
/// # Ok::<(), lore_core::LoreError>(())
/// ```
pub fn fit(
    params: &CheckedFitParams,
    data: &Preferences,
    options: &FitOptions,
    mut observer: impl FnMut(&FitStep) -> ControlFlow<()>,
) -> Result<FitOutcome> {
    let (v_ref, init) = (options.v_ref, options.init);
    let stopping = match options.validation {
        Some((validation, rule)) => {
            let rule = rule.check()?;
            validation.check_for(data)?;
            Some((validation, rule))
        }
        None => None,
    };
    let (n, f, k) = (data.n_users(), data.n_features(), params.rank());
    crate::memory::check_fit_size(n, data.n_rows(), f, k)?;
    check_reference(params, v_ref, f)?;
    let random;
    let init = match init {
        Some(init) => {
            check_init(init, n, f, k)?;
            init
        }
        None => {
            random = FitInit::random(params.method(), n, f, k, params.seed());
            &random
        }
    };

    let alternate = params.method() == Method::Regularized;
    let weighting = match params.method() {
        Method::Lore => RowWeighting::PerUserMean,
        Method::Regularized => RowWeighting::GlobalMean {
            n_rows: data.n_rows(),
        },
    };
    let lr = params.learning_rate() as f32;
    let mut basis = init.basis.clone();
    let mut grad = vec![0.0f32; f * k];
    let kernels = match params.precision() {
        Precision::F32 => BlockKernels::new(f, k),
        Precision::Bf16 => BlockKernels::mixed_bf16(f, k).ok_or(LoreError::InvalidParameter {
            name: "precision",
            reason: "bf16 needs a CPU with AVX512-BF16 and AVX512-VL".to_string(),
        })?,
    };
    let row_kernels = row_kernels(&kernels);
    let fused = fused_pays(&kernels, alternate, k);
    let mut basis_panels = Vec::new();
    let mut packed_basis = vec![0.0f32; if fused { 0 } else { kernels.packed_len() }];
    let mut packed_grad = vec![0.0f32; kernels.gradient_kernels().packed_len()];
    let mut chunks = build_chunks(
        data,
        &kernels,
        k,
        &init.logits,
        ChunkUse::Fit { alternate, fused },
    );
    let mut weight_clock = AdamClock::new(lr);
    let mut basis_adam = Adam::new(f * k, lr);
    let logit_scale = params.logit_scale() as f32;

    let mut stopper = stopping.map(|(validation, rule)| (validation, StoppingTracker::new(rule)));
    let mut best_state = (Vec::new(), Vec::new());
    let mut evaluate = |stopper: &mut Option<(&Validation, StoppingTracker)>,
                        steps: usize,
                        basis: &[f32],
                        chunks: &[ChunkWork],
                        last: bool|
     -> Result<ControlFlow<()>> {
        let Some((validation, tracker)) = stopper.as_mut() else {
            return Ok(ControlFlow::Continue(()));
        };
        if !tracker.due(steps, last) {
            return Ok(ControlFlow::Continue(()));
        }
        let logits = gather_logits(chunks);
        let mut weights = logits.clone();
        for row in weights.chunks_exact_mut(k) {
            softmax_in_place(row);
        }
        let score = validation.score(basis, &weights, k, params.logit_scale())?;
        let recorded = tracker.record(steps, score);
        if recorded.improved {
            best_state = (basis.to_vec(), logits);
        }
        Ok(recorded.flow)
    };
    let mut steps = 0;
    for step in 0..params.iterations() {
        if evaluate(&mut stopper, steps, &basis, &chunks, false)?.is_break() {
            break;
        }
        let alpha = match params.method() {
            Method::Lore => params.alpha(),
            Method::Regularized => params.alpha_at(step),
        };
        if fused {
            pack_panels(&basis, f, k, &mut basis_panels);
        } else {
            kernels.pack_basis(&basis, &mut packed_basis);
        }
        let spec = PassSpec {
            kernels,
            row_kernels,
            gradient_kernels: kernels.gradient_kernels(),
            fused,
            basis_panels: &basis_panels,
            packed_basis: &packed_basis,
            logit_scale,
            weighting,
            weight_step: weight_clock.begin_step(),
            alternate,
        };
        for_each_chunk(&mut chunks, |chunk| chunk.fit_pass(data, &spec));
        let (nll, nll_after) = total_losses(&chunks);
        check_loss(params, data, step, nll)?;
        check_logits(params, &chunks, k, step)?;
        if alternate {
            check_loss(params, data, step, nll_after)?;
        }
        reduce_gradients(&chunks, &kernels, &mut packed_grad, &mut grad);
        if !all_finite(&grad) {
            // At the start the parameters are those given: the data's scale overflowed.
            let hint = if step == 0 {
                scale_hint(data, params.logit_scale())
            } else {
                learning_rate_hint(params.learning_rate())
            };
            let what = describe_matrix("the gradient of V", &grad, k);
            return Err(diverged(step, params.iterations(), what, hint));
        }
        let reg = match (params.method(), v_ref) {
            (_, _) if alpha == 0.0 => 0.0,
            (Method::Lore, Some(v_ref)) => l2_penalty(&basis, v_ref, k, alpha, &mut grad),
            (Method::Regularized, Some(v_ref)) => {
                cosine_penalty(&basis, v_ref, k, alpha, &mut grad)
            }
            (_, None) => unreachable!("checked: alpha > 0 needs v_ref"),
        };
        if alpha != 0.0 && !(reg.is_finite() && all_finite(&grad)) {
            // The data's part was finite (checked above): the pull overflowed.
            return Err(diverged(
                step,
                params.iterations(),
                format!("the pull toward v_ref became {reg} (its gradient overflows f32)"),
                format!("lower alpha (now {})", number(alpha)),
            ));
        }
        let basis_step = basis_adam.begin_step();
        basis_adam.update(basis_step, &mut basis, &grad);
        if !all_finite(&basis) {
            return Err(diverged(
                step,
                params.iterations(),
                describe_matrix("the basis V", &basis, k),
                learning_rate_hint(params.learning_rate()),
            ));
        }
        steps += 1;
        let report = FitStep {
            step,
            nll,
            nll_after_weights: alternate.then_some(nll_after),
            reg,
            alpha,
        };
        if observer(&report).is_break() {
            break;
        }
    }

    if !stopper.as_ref().is_some_and(|(_, t)| t.stopped) {
        // The final state competes too; patience no longer matters.
        let _final = evaluate(&mut stopper, steps, &basis, &chunks, true)?;
    }
    let report = stopper.and_then(|(_, tracker)| tracker.report());
    let logits = if report.is_some() {
        basis = std::mem::take(&mut best_state.0);
        std::mem::take(&mut best_state.1)
    } else {
        gather_logits(&chunks)
    };
    let model = finish(params, n, f, k, basis, logits, steps)?;
    Ok(FitOutcome {
        model,
        stopping: report,
    })
}

/// Fits one shared Bradley-Terry reward: `params`' settings with K = 1 and no pull (see
/// [`CheckedFitParams::bradley_terry`]), early-stopped when `validation` is given. Returns its
/// direction \[F\], the anchor v_ref of a fit that pulls toward BT, with the fit itself.
///
/// ```
/// use std::ops::ControlFlow;
/// use lore_core::{fit_bradley_terry, FeatureRows, FitParams, Method, Preferences};
///
/// let x = [1.0f32, 0.0, 2.0, 0.5, 0.5, 1.0];
/// let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &[0, 0, 1])?;
/// let params = FitParams::new(Method::Lore, 4).alpha(1.0).iterations(20).check()?;
/// let (direction, outcome) =
///     fit_bradley_terry(&params, &data, None, |_| ControlFlow::Continue(()))?;
/// assert_eq!(direction.len(), 2);
/// assert_eq!(outcome.model.basis.rank(), 1);
/// # Ok::<(), lore_core::LoreError>(())
/// ```
pub fn fit_bradley_terry(
    params: &CheckedFitParams,
    data: &Preferences,
    validation: Option<(&Validation, EarlyStopping)>,
    observer: impl FnMut(&FitStep) -> ControlFlow<()>,
) -> Result<(Vec<f32>, FitOutcome)> {
    let options = FitOptions {
        validation,
        ..FitOptions::default()
    };
    let outcome = fit(&params.bradley_terry(), data, &options, observer)?;
    Ok((outcome.model.basis.values().to_vec(), outcome))
}

/// Stops a fit whose loss at `step` is not finite: before any update (step 0) the scores
/// overflow, later an update did.
fn check_loss(params: &CheckedFitParams, data: &Preferences, step: usize, loss: f64) -> Result<()> {
    if loss.is_finite() {
        return Ok(());
    }
    let hint = if step == 0 {
        scale_hint(data, params.logit_scale())
    } else {
        learning_rate_hint(params.learning_rate())
    };
    Err(diverged(
        step,
        params.iterations(),
        format!("the loss became {loss}"),
        hint,
    ))
}

/// Stops a fit whose users' logits are not finite after the update of `step` (the softmax
/// would hide them: it maps NaN logits to finite weights).
fn check_logits(
    params: &CheckedFitParams,
    chunks: &[ChunkWork],
    k: usize,
    step: usize,
) -> Result<()> {
    if chunks.iter().all(|c| all_finite(&c.logits)) {
        return Ok(());
    }
    let logits = gather_logits(chunks);
    Err(diverged(
        step,
        params.iterations(),
        describe_matrix("the users' logits W", &logits, k),
        learning_rate_hint(params.learning_rate()),
    ))
}

/// alpha * sum_j ||V_j - v_ref||^2, adding its gradient 2 alpha (V_j - v_ref) to `grad`.
fn l2_penalty(basis: &[f32], v_ref: &[f32], k: usize, alpha: f64, grad: &mut [f32]) -> f64 {
    let mut sum = 0.0f64;
    let two_alpha = (2.0 * alpha) as f32;
    for ((row, g_row), &r) in basis
        .chunks_exact(k)
        .zip(grad.chunks_exact_mut(k))
        .zip(v_ref)
    {
        for (&v, g) in row.iter().zip(g_row) {
            let d = v - r;
            sum += (d as f64) * (d as f64);
            *g += two_alpha * d;
        }
    }
    alpha * sum
}

/// mean_j (1 - cos(V_j, v_ref)), adding the gradient of alpha times it to `grad`.
fn cosine_penalty(basis: &[f32], v_ref: &[f32], k: usize, alpha: f64, grad: &mut [f32]) -> f64 {
    let ref_norm = v_ref
        .iter()
        .map(|&r| (r as f64).powi(2))
        .sum::<f64>()
        .sqrt()
        .max(1e-8);
    let scale = alpha / k as f64;
    let mut reg = 0.0;
    for j in 0..k {
        let column = || basis.iter().skip(j).step_by(k).zip(v_ref);
        let (norm_sq, dot) = column().fold((0.0f64, 0.0f64), |(n, d), (&v, &r)| {
            (n + (v as f64).powi(2), d + v as f64 * r as f64)
        });
        let norm = norm_sq.sqrt().max(1e-8);
        let cos = dot / (norm * ref_norm);
        reg += 1.0 - cos;
        // d(1 - cos)/dV_j = -(v_ref / (|V_j| |v_ref|) - cos V_j / |V_j|^2), times alpha / K.
        let coef_ref = (-scale / (norm * ref_norm)) as f32;
        let coef_self = (scale * cos / (norm * norm)) as f32;
        for ((g, &v), &r) in grad
            .iter_mut()
            .skip(j)
            .step_by(k)
            .zip(basis.iter().skip(j).step_by(k))
            .zip(v_ref)
        {
            *g += coef_ref * r + coef_self * v;
        }
    }
    reg / k as f64
}

/// Prunes columns whose largest user weight is below the threshold and builds the model.
fn finish(
    params: &CheckedFitParams,
    n: usize,
    f: usize,
    k: usize,
    basis: Vec<f32>,
    logits: Vec<f32>,
    steps: usize,
) -> Result<FittedModel> {
    let mut weights = logits.clone();
    for row in weights.chunks_exact_mut(k) {
        softmax_in_place(row);
    }
    let kept = kept_columns(&weights, k, params.prune_threshold());
    let select = |values: &[f32]| -> Vec<f32> {
        values
            .chunks_exact(k)
            .flat_map(|row| kept.iter().map(move |&j| row[j]))
            .collect()
    };
    let kept_rank = kept.len();
    let users = UserWeights::from_parts(n, kept_rank, select(&logits), select(&weights))?;
    let pruned_basis = RewardBasis::new(f, kept_rank, select(&basis), params.logit_scale())?;
    Ok(FittedModel {
        basis: pruned_basis,
        users,
        kept,
        unpruned_basis: basis,
        unpruned_logits: logits,
        steps,
    })
}

/// Columns j with max_u weights[u, j] >= threshold (all when the threshold is 0). If none
/// passes, the column with the largest weight is kept so that a model always has a column.
fn kept_columns(weights: &[f32], rank: usize, threshold: f64) -> Vec<usize> {
    let mut column_max = vec![f32::NEG_INFINITY; rank];
    for row in weights.chunks_exact(rank) {
        for (m, &w) in column_max.iter_mut().zip(row) {
            *m = m.max(w);
        }
    }
    let kept: Vec<usize> = (0..rank)
        .filter(|&j| column_max[j] as f64 >= threshold)
        .collect();
    if kept.is_empty() {
        let best = (0..rank)
            .max_by(|&a, &b| column_max[a].total_cmp(&column_max[b]))
            .unwrap_or(0);
        return vec![best];
    }
    kept
}

fn check_reference(params: &CheckedFitParams, v_ref: Option<&[f32]>, f: usize) -> Result<()> {
    match v_ref {
        None if params.alpha() > 0.0 => Err(LoreError::InvalidParameter {
            name: "v_ref",
            reason: "alpha > 0 pulls the basis toward a reference direction: give v_ref".into(),
        }),
        Some(v) if v.len() != f => Err(LoreError::FeatureMismatch {
            model: v.len(),
            data: f,
        }),
        Some(v) if v.iter().any(|x| !x.is_finite()) => Err(LoreError::InvalidParameter {
            name: "v_ref",
            reason: "contains NaN or infinite values".into(),
        }),
        Some(v) if params.method() == Method::Regularized && v.iter().all(|&x| x == 0.0) => {
            Err(LoreError::InvalidParameter {
                name: "v_ref",
                reason: "is the zero vector, which has no direction for the cosine pull".into(),
            })
        }
        _ => Ok(()),
    }
}

fn check_init(init: &FitInit, n: usize, f: usize, k: usize) -> Result<()> {
    if init.logits.len() != n * k {
        return Err(LoreError::Shape(format!(
            "initial W has {} values, expected [N = {n}, K = {k}]",
            init.logits.len()
        )));
    }
    if init.basis.len() != f * k {
        return Err(LoreError::Shape(format!(
            "initial V has {} values, expected [F = {f}, K = {k}]",
            init.basis.len()
        )));
    }
    if init
        .logits
        .iter()
        .chain(&init.basis)
        .any(|v| !v.is_finite())
    {
        return Err(LoreError::InvalidParameter {
            name: "initial values",
            reason: "contain NaN or infinite values".into(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::{prop_assert, prop_assert_eq, proptest};

    /// A penalty's value for (basis, v_ref, K, alpha), adding its gradient to the last argument.
    type Penalty = fn(&[f32], &[f32], usize, f64, &mut [f32]) -> f64;

    fn penalty_gradient_check(penalty: Penalty) {
        let (f, k, alpha) = (5, 3, 0.7);
        let mut rng = ChaCha8Rng::seed_from_u64(9);
        let basis: Vec<f32> = (0..f * k)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let v_ref: Vec<f32> = (0..f)
            .map(|_| rng.sample::<f32, _>(StandardNormal))
            .collect();
        let mut grad = vec![0.0f32; f * k];
        let value = penalty(&basis, &v_ref, k, alpha, &mut grad);
        let h = 1e-3f32;
        for t in 0..f * k {
            let (mut up, mut down) = (basis.clone(), basis.clone());
            up[t] += h;
            down[t] -= h;
            let mut sink = vec![0.0f32; f * k];
            let numeric = (penalty(&up, &v_ref, k, alpha, &mut sink)
                - penalty(&down, &v_ref, k, alpha, &mut sink))
                / (2.0 * h as f64);
            assert!(
                (grad[t] as f64 - numeric).abs() <= 1e-2 * numeric.abs().max(1e-2),
                "[{t}] {} vs {numeric}",
                grad[t]
            );
        }
        assert!(value.is_finite());
    }

    #[test]
    fn l2_penalty_gradient_matches_finite_differences() {
        penalty_gradient_check(l2_penalty);
    }

    #[test]
    fn cosine_penalty_gradient_matches_finite_differences() {
        penalty_gradient_check(|b, r, k, a, g| a * cosine_penalty(b, r, k, a, g));
    }

    #[test]
    fn pruning_keeps_used_columns() {
        let weights = [0.7, 0.295, 0.005, 0.1, 0.895, 0.005];
        assert_eq!(kept_columns(&weights, 3, 1e-2), vec![0, 1]);
        assert_eq!(kept_columns(&weights, 3, 0.0), vec![0, 1, 2]);
        assert_eq!(kept_columns(&weights, 3, 0.99), vec![1]);
    }

    proptest! {
        #[test]
        fn pruning_keeps_exactly_the_columns_over_threshold(
            n in 1usize..6, k in 1usize..6, threshold in 0.0f64..0.6, seed in 0u64..1000,
        ) {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut weights: Vec<f32> = (0..n * k).map(|_| rng.sample::<f32, _>(StandardNormal) * 4.0).collect();
            for row in weights.chunks_exact_mut(k) { softmax_in_place(row); }
            let kept = kept_columns(&weights, k, threshold);
            prop_assert!(!kept.is_empty());
            prop_assert!(kept.windows(2).all(|w| w[0] < w[1]));
            let col_max = |j: usize| (0..n).map(|u| weights[u * k + j]).fold(0.0f32, f32::max) as f64;
            let passing: Vec<usize> = (0..k).filter(|&j| col_max(j) >= threshold).collect();
            if passing.is_empty() {
                prop_assert_eq!(kept.len(), 1);
            } else {
                prop_assert_eq!(kept, passing);
            }
            // Threshold 0 keeps everything; max of a softmax row is >= 1/K, so 1/K keeps >= 1 column.
            prop_assert_eq!(kept_columns(&weights, k, 0.0).len(), k);
        }
    }
}
