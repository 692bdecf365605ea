//! Hyperparameters as plain structs, validated into checked ones before any work starts.

use crate::error::{LoreError, Result};

/// Which of the reference trainers a fit follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Method {
    /// The reference `LoRe`: one Adam over W and V, per-user mean NLL plus an L2 pull to v_ref.
    #[default]
    Lore,
    /// The reference `LoRe_regularized`: alternating W and V steps, global mean NLL, a cosine
    /// pull to v_ref with a warm-up, and pruning of unused columns.
    Regularized,
}

impl Method {
    /// The name used on the command line and in model files.
    pub fn name(self) -> &'static str {
        match self {
            Method::Lore => "lore",
            Method::Regularized => "regularized",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = LoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "lore" => Ok(Method::Lore),
            "regularized" => Ok(Method::Regularized),
            other => Err(LoreError::InvalidParameter {
                name: "method",
                reason: format!("unknown method `{other}` (expected `lore` or `regularized`)"),
            }),
        }
    }
}

/// Arithmetic of a fit's passes over the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// f32 products and sums: the default and the golden path.
    #[default]
    F32,
    /// Mixed: features, V and the residuals rounded to bf16, products summed in f32
    /// (AVX512-BF16 `vdpbf16ps`, twice the f32 rate where the CPU has it). Everything else
    /// (the users' weights, Adam, the loss) stays f32.
    Bf16,
}

impl Precision {
    /// The name used on the command line and in result files.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
        }
    }

    /// Whether this CPU can run fits in this precision.
    pub fn is_available(self) -> bool {
        match self {
            Precision::F32 => true,
            Precision::Bf16 => crate::kernels::mixed_bf16_available(),
        }
    }
}

impl std::str::FromStr for Precision {
    type Err = LoreError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "f32" => Ok(Precision::F32),
            "bf16" => Ok(Precision::Bf16),
            other => Err(LoreError::InvalidParameter {
                name: "precision",
                reason: format!("unknown precision `{other}` (expected `f32` or `bf16`)"),
            }),
        }
    }
}

// The defaults, stated once: the builders below and the `lore` command's help read them.

/// The reference's logit scale: logits are x . (V w) / 100.
pub const DEFAULT_LOGIT_SCALE: f64 = 0.01;
/// The regularized method's default pruning threshold on max_u softmax(W)[u, j].
pub const DEFAULT_PRUNE_THRESHOLD: f64 = 1e-2;
/// The reference fit's number of optimizer steps.
pub const DEFAULT_FIT_ITERATIONS: usize = 1000;
/// The reference fit's Adam learning rate (the paper's experiments use 0.5).
pub const DEFAULT_FIT_LEARNING_RATE: f64 = 0.01;
/// The reference `PersonalizeBatch`'s number of optimizer steps.
pub const DEFAULT_PERSONALIZE_ITERATIONS: usize = 500;
/// The reference `PersonalizeBatch`'s Adam learning rate.
pub const DEFAULT_PERSONALIZE_LEARNING_RATE: f64 = 0.1;
/// Early stopping's steps between validation scores.
pub const DEFAULT_EVAL_EVERY: usize = 10;
/// Early stopping's scores without a new best before stopping.
pub const DEFAULT_PATIENCE: usize = 5;

/// The smallest learning rate accepted. An Adam step moves a parameter by at most about 3.2 lr
/// ((1 - beta1) / sqrt(1 - beta2) times lr; exactly lr on the first step), and f32 rounds away
/// any change below half the spacing of the value, 2^-24 |p|. Below 1e-12 that freezes every
/// parameter of magnitude 2^-14 (6e-5) or more: all but a few in 10^4 of the N(0,1) or U[0,1)
/// starting values. Such a run would return its start, so it is refused as a typo.
pub const MIN_LEARNING_RATE: f64 = 1e-12;

/// Hyperparameters of a basis fit (unchecked); [`FitParams::check`] validates them.
///
/// ```
/// use lore_core::{FitParams, Method};
///
/// let params = FitParams::new(Method::Regularized, 4).alpha(10.0).learning_rate(0.5);
/// let checked = params.check()?;
/// assert_eq!(checked.prune_threshold(), 0.01); // the method's default, resolved
/// assert!(FitParams::new(Method::Lore, 0).check().is_err()); // rank 0
/// # Ok::<(), lore_core::LoreError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct FitParams {
    /// Which reference trainer the fit follows.
    pub method: Method,
    /// Number of basis columns K.
    pub rank: usize,
    /// Strength of the pull toward v_ref (L2 for `lore`, cosine for `regularized`).
    pub alpha: f64,
    /// Exactly this many optimizer steps.
    pub iterations: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// c in s = c * x . (V w).
    pub logit_scale: f64,
    /// Columns whose largest user weight is below this are dropped after the fit; `None` means
    /// the method's default (1e-2 for `regularized`, keep all for `lore`).
    pub prune_threshold: Option<f64>,
    /// Seed of the random initialization.
    pub seed: u64,
    /// Arithmetic of the passes over the data.
    pub precision: Precision,
}

impl FitParams {
    /// The reference defaults ([`DEFAULT_FIT_ITERATIONS`], [`DEFAULT_FIT_LEARNING_RATE`],
    /// [`DEFAULT_LOGIT_SCALE`]), alpha 0, seed 0, the method's pruning, f32.
    pub fn new(method: Method, rank: usize) -> Self {
        Self {
            method,
            rank,
            alpha: 0.0,
            iterations: DEFAULT_FIT_ITERATIONS,
            learning_rate: DEFAULT_FIT_LEARNING_RATE,
            logit_scale: DEFAULT_LOGIT_SCALE,
            prune_threshold: None,
            seed: 0,
            precision: Precision::F32,
        }
    }

    /// Sets the arithmetic of the passes over the data.
    pub fn precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
    /// Sets the strength of the pull toward v_ref.
    pub fn alpha(mut self, alpha: f64) -> Self {
        self.alpha = alpha;
        self
    }
    /// Sets the number of optimizer steps.
    pub fn iterations(mut self, iterations: usize) -> Self {
        self.iterations = iterations;
        self
    }
    /// Sets Adam's learning rate.
    pub fn learning_rate(mut self, learning_rate: f64) -> Self {
        self.learning_rate = learning_rate;
        self
    }
    /// Sets c in s = c * x . (V w).
    pub fn logit_scale(mut self, logit_scale: f64) -> Self {
        self.logit_scale = logit_scale;
        self
    }
    /// Sets the pruning threshold; `None` is the method's default (see the field).
    pub fn prune_threshold(mut self, threshold: Option<f64>) -> Self {
        self.prune_threshold = threshold;
        self
    }
    /// Sets the seed of the random initialization.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// The settings of a Bradley-Terry anchor: these with K = 1 and no pull (alpha 0).
    pub fn bradley_terry(&self) -> Self {
        Self {
            rank: 1,
            alpha: 0.0,
            ..self.clone()
        }
    }

    /// Validates every value; the error names the first invalid one.
    pub fn check(&self) -> Result<CheckedFitParams> {
        check_positive_count("rank", self.rank)?;
        check_positive_count("iterations", self.iterations)?;
        check_learning_rate(self.learning_rate)?;
        check_logit_scale(self.logit_scale)?;
        // The pull's gradient 2 alpha (V - v_ref) is computed in f32.
        if !(self.alpha.is_finite() && self.alpha >= 0.0 && 2.0 * self.alpha <= f32::MAX as f64) {
            return Err(invalid(
                "alpha",
                format!(
                    "{} (must be finite, >= 0 and at most {:e})",
                    crate::divergence::number(self.alpha),
                    f32::MAX as f64 / 2.0
                ),
            ));
        }
        let prune_threshold = match (self.prune_threshold, self.method) {
            (Some(t), _) => t,
            (None, Method::Regularized) => DEFAULT_PRUNE_THRESHOLD,
            (None, Method::Lore) => 0.0,
        };
        if !(0.0..1.0).contains(&prune_threshold) {
            return Err(invalid(
                "prune threshold",
                format!("{prune_threshold} (must be in [0, 1))"),
            ));
        }
        if self.precision == Precision::Bf16 {
            if !self.precision.is_available() {
                return Err(invalid(
                    "precision",
                    "bf16 needs a CPU with AVX512-BF16 and AVX512-VL, which this one lacks \
                     (use f32)"
                        .to_string(),
                ));
            }
            if self.rank > 64 {
                return Err(invalid(
                    "precision",
                    format!("bf16 runs ranks up to 64, not {} (use f32)", self.rank),
                ));
            }
        }
        Ok(CheckedFitParams {
            params: self.clone(),
            prune_threshold,
        })
    }
}

/// Validated fit hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedFitParams {
    params: FitParams,
    prune_threshold: f64,
}

impl CheckedFitParams {
    /// Which reference trainer the fit follows.
    pub fn method(&self) -> Method {
        self.params.method
    }
    /// Number of basis columns K.
    pub fn rank(&self) -> usize {
        self.params.rank
    }
    /// Strength of the pull toward v_ref.
    pub fn alpha(&self) -> f64 {
        self.params.alpha
    }
    /// Number of optimizer steps (the most with early stopping).
    pub fn iterations(&self) -> usize {
        self.params.iterations
    }
    /// Adam's learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.params.learning_rate
    }
    /// c in s = c * x . (V w).
    pub fn logit_scale(&self) -> f64 {
        self.params.logit_scale
    }
    /// The threshold in force (the method's default resolved).
    pub fn prune_threshold(&self) -> f64 {
        self.prune_threshold
    }
    /// Seed of the random initialization.
    pub fn seed(&self) -> u64 {
        self.params.seed
    }
    /// Arithmetic of the passes over the data.
    pub fn precision(&self) -> Precision {
        self.params.precision
    }

    /// The Bradley-Terry anchor's settings: these with K = 1 and no pull (still valid, with
    /// the same resolved pruning threshold).
    pub fn bradley_terry(&self) -> Self {
        Self {
            params: self.params.bradley_terry(),
            prune_threshold: self.prune_threshold,
        }
    }

    /// The regularized method's alpha at `step` (0-based): 0 before floor(0.2 T), a linear ramp
    /// up to floor(0.8 T), then alpha.
    pub fn alpha_at(&self, step: usize) -> f64 {
        alpha_schedule(self.params.alpha, self.params.iterations, step)
    }
}

/// The warm-up schedule of the reference `LoRe_regularized` for T = `iterations`.
fn alpha_schedule(alpha: f64, iterations: usize, step: usize) -> f64 {
    let start = iterations / 5; // floor(0.2 T)
                                // floor(0.8 T), without overflowing 4 T for any T.
    let end = iterations / 5 * 4 + iterations % 5 * 4 / 5;
    if step < start {
        0.0
    } else if step < end {
        alpha * (step - start) as f64 / (end - start) as f64
    } else {
        alpha
    }
}

/// Early stopping on a validation loss: evaluated every `eval_every` steps, the run stops once
/// `patience` evaluations in a row have not improved on the best, and the best state is kept.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct EarlyStopping {
    /// Steps between validation evaluations (the first is before any step).
    pub eval_every: usize,
    /// Evaluations without improvement before stopping.
    pub patience: usize,
    /// An evaluation improves when its loss is below best - min_delta.
    pub min_delta: f64,
}

impl Default for EarlyStopping {
    /// [`DEFAULT_EVAL_EVERY`] and [`DEFAULT_PATIENCE`]; any decrease counts.
    fn default() -> Self {
        Self {
            eval_every: DEFAULT_EVAL_EVERY,
            patience: DEFAULT_PATIENCE,
            min_delta: 0.0,
        }
    }
}

impl EarlyStopping {
    /// Validates every value; the error names the first invalid one.
    pub fn check(&self) -> Result<Self> {
        check_positive_count("eval-every", self.eval_every)?;
        check_positive_count("patience", self.patience)?;
        if !(self.min_delta.is_finite() && self.min_delta >= 0.0) {
            return Err(invalid(
                "min delta",
                format!("{} (must be finite and >= 0)", self.min_delta),
            ));
        }
        Ok(*self)
    }
}

/// Hyperparameters of few-shot personalization with a fixed basis (unchecked);
/// [`PersonalizeParams::check`] validates them.
///
/// ```
/// use lore_core::PersonalizeParams;
///
/// let checked = PersonalizeParams::default().iterations(200).prior_strength(0.1).check()?;
/// assert_eq!(checked.learning_rate(), 0.1);
/// assert!(PersonalizeParams::default().learning_rate(-1.0).check().is_err());
/// # Ok::<(), lore_core::LoreError>(())
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct PersonalizeParams {
    /// Number of Adam steps (the most with early stopping).
    pub iterations: usize,
    /// Adam's learning rate.
    pub learning_rate: f64,
    /// c in s = c * x . (V w); must be the basis's own.
    pub logit_scale: f64,
    /// Seed of the random start of the users' logits.
    pub seed: u64,
    /// Strength lambda of the prior lambda * |W_u - W_prior|^2 on each user's logits (MAP
    /// instead of maximum likelihood); 0 is the reference's plain fit.
    pub prior_strength: f64,
}

impl Default for PersonalizeParams {
    /// The reference `PersonalizeBatch` defaults ([`DEFAULT_PERSONALIZE_ITERATIONS`],
    /// [`DEFAULT_PERSONALIZE_LEARNING_RATE`]), no prior.
    fn default() -> Self {
        Self {
            iterations: DEFAULT_PERSONALIZE_ITERATIONS,
            learning_rate: DEFAULT_PERSONALIZE_LEARNING_RATE,
            logit_scale: DEFAULT_LOGIT_SCALE,
            seed: 0,
            prior_strength: 0.0,
        }
    }
}

impl PersonalizeParams {
    /// Sets the strength of the prior on the users' logits.
    pub fn prior_strength(mut self, strength: f64) -> Self {
        self.prior_strength = strength;
        self
    }
    /// Sets the number of Adam steps.
    pub fn iterations(mut self, iterations: usize) -> Self {
        self.iterations = iterations;
        self
    }
    /// Sets Adam's learning rate.
    pub fn learning_rate(mut self, learning_rate: f64) -> Self {
        self.learning_rate = learning_rate;
        self
    }
    /// Sets c in s = c * x . (V w).
    pub fn logit_scale(mut self, logit_scale: f64) -> Self {
        self.logit_scale = logit_scale;
        self
    }
    /// Sets the seed of the random start.
    pub fn seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }

    /// Validates every value; the error names the first invalid one.
    pub fn check(&self) -> Result<CheckedPersonalizeParams> {
        check_positive_count("iterations", self.iterations)?;
        check_learning_rate(self.learning_rate)?;
        check_logit_scale(self.logit_scale)?;
        if !(self.prior_strength.is_finite() && self.prior_strength >= 0.0) {
            return Err(invalid(
                "prior strength",
                format!("{} (must be finite and >= 0)", self.prior_strength),
            ));
        }
        Ok(CheckedPersonalizeParams(self.clone()))
    }
}

/// Validated personalization hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedPersonalizeParams(PersonalizeParams);

impl CheckedPersonalizeParams {
    /// Number of Adam steps.
    pub fn iterations(&self) -> usize {
        self.0.iterations
    }
    /// Adam's learning rate.
    pub fn learning_rate(&self) -> f64 {
        self.0.learning_rate
    }
    /// c in s = c * x . (V w).
    pub fn logit_scale(&self) -> f64 {
        self.0.logit_scale
    }
    /// Seed of the random start.
    pub fn seed(&self) -> u64 {
        self.0.seed
    }
    /// Strength of the prior on the users' logits.
    pub fn prior_strength(&self) -> f64 {
        self.0.prior_strength
    }
}

fn invalid(name: &'static str, reason: String) -> LoreError {
    LoreError::InvalidParameter { name, reason }
}

fn check_positive_count(name: &'static str, value: usize) -> Result<()> {
    if value == 0 {
        return Err(invalid(name, "0 (must be at least 1)".into()));
    }
    Ok(())
}

/// A finite learning rate of at least [`MIN_LEARNING_RATE`] (larger ones that overflow are
/// caught as divergence when they happen, with the step).
fn check_learning_rate(value: f64) -> Result<()> {
    check_positive("learning rate", value)?;
    if value < MIN_LEARNING_RATE {
        return Err(invalid(
            "learning rate",
            format!(
                "{} is below {MIN_LEARNING_RATE:e}: no step that small changes an f32 \
                 parameter of the starting scale, so nothing would be trained",
                crate::divergence::number(value)
            ),
        ));
    }
    Ok(())
}

/// A logit scale c > 0 that f32 can hold (the scores c x . V w are computed in f32).
fn check_logit_scale(value: f64) -> Result<()> {
    check_positive("logit scale", value)?;
    if value > f32::MAX as f64 {
        return Err(invalid(
            "logit scale",
            format!(
                "{} (must be at most {:e}, the largest f32)",
                crate::divergence::number(value),
                f32::MAX
            ),
        ));
    }
    Ok(())
}

fn check_positive(name: &'static str, value: f64) -> Result<()> {
    if !(value.is_finite() && value > 0.0) {
        return Err(invalid(name, format!("{value} (must be finite and > 0)")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn invalid_values_are_refused() {
        assert!(FitParams::new(Method::Lore, 0).check().is_err());
        assert!(FitParams::new(Method::Lore, 2)
            .iterations(0)
            .check()
            .is_err());
        assert!(FitParams::new(Method::Lore, 2)
            .learning_rate(0.0)
            .check()
            .is_err());
        assert!(FitParams::new(Method::Lore, 2)
            .learning_rate(f64::NAN)
            .check()
            .is_err());
        assert!(FitParams::new(Method::Lore, 2).alpha(-1.0).check().is_err());
        assert!(FitParams::new(Method::Lore, 2)
            .prune_threshold(Some(1.0))
            .check()
            .is_err());
        assert!(PersonalizeParams::default()
            .learning_rate(-0.1)
            .check()
            .is_err());
        for lr in [1e-300, 1e-13, f64::MIN_POSITIVE] {
            let err = FitParams::new(Method::Lore, 2)
                .learning_rate(lr)
                .check()
                .unwrap_err();
            assert!(
                err.to_string().contains("nothing would be trained"),
                "{err}"
            );
            assert!(PersonalizeParams::default()
                .learning_rate(lr)
                .check()
                .is_err());
        }
        assert!(FitParams::new(Method::Lore, 2)
            .learning_rate(MIN_LEARNING_RATE)
            .check()
            .is_ok());
        assert!(FitParams::new(Method::Lore, 2)
            .logit_scale(1e300)
            .check()
            .is_err());
        assert!(PersonalizeParams::default()
            .logit_scale(f64::INFINITY)
            .check()
            .is_err());
        assert!(PersonalizeParams::default()
            .prior_strength(f64::NAN)
            .check()
            .is_err());
        let err = FitParams::new(Method::Lore, 0).check().unwrap_err();
        assert_eq!(err.to_string(), "invalid rank: 0 (must be at least 1)");
    }

    #[test]
    fn method_defaults_for_pruning() {
        let reg = FitParams::new(Method::Regularized, 3).check().unwrap();
        assert_eq!(reg.prune_threshold(), 1e-2);
        let lore = FitParams::new(Method::Lore, 3).check().unwrap();
        assert_eq!(lore.prune_threshold(), 0.0);
        assert!("joint".parse::<Method>().is_err());
    }

    #[test]
    fn schedule_matches_reference_points() {
        // T = 100: 0 before step 20, alpha * (step - 20) / 60 until 80, then alpha.
        assert_eq!(alpha_schedule(10.0, 100, 19), 0.0);
        assert_eq!(alpha_schedule(10.0, 100, 20), 0.0);
        assert!((alpha_schedule(10.0, 100, 50) - 5.0).abs() < 1e-12);
        assert_eq!(alpha_schedule(10.0, 100, 80), 10.0);
        assert_eq!(alpha_schedule(10.0, 1, 0), 10.0);
    }

    proptest! {
        #[test]
        fn schedule_is_monotone_and_bounded(alpha in 0.0f64..1e4, t in 1usize..5000, step in 0usize..5000) {
            let step = step % t;
            let a = alpha_schedule(alpha, t, step);
            prop_assert!((0.0..=alpha).contains(&a));
            if step + 1 < t {
                prop_assert!(alpha_schedule(alpha, t, step + 1) >= a);
            }
            if step < t / 5 { prop_assert_eq!(a, 0.0); }
            if step >= t * 4 / 5 { prop_assert_eq!(a, alpha); }
        }
    }
}
