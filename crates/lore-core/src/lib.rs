//! lore-core: the mathematics of LoRe (low-rank personalized reward models), with no I/O.
//!
//! A preference is a row x = e(chosen) - e(rejected). A shared basis V [F x K] and per-user
//! weights w_u = softmax(W_u) give P(chosen > rejected | u) = sigmoid(c * x . V w_u).
//! [`fit`] learns V and W on many users, [`personalize`] fits w_u for new users with V fixed,
//! and [`evaluate`] reports pairwise accuracy per user. Inputs are borrowed [`Preferences`]
//! views; hyperparameters are checked ([`FitParams::check`]) before any work starts. Reading
//! and writing files is `lore-io`'s; the paper's experiments are `lore-experiment`'s.
//!
//! ```
//! use std::ops::ControlFlow;
//! use lore_core::{
//!     evaluate, fit, personalize, FeatureRows, FitOptions, FitParams, Method,
//!     PersonalizeOptions, PersonalizeParams, Preferences,
//! };
//!
//! // Four users in F = 2: users 0 and 1 prefer feature 0, users 2 and 3 feature 1.
//! let mut x = Vec::new();
//! let mut users = Vec::new();
//! for u in 0..4u32 {
//!     for i in 0..6 {
//!         let (a, b) = (1.0 + i as f32, 0.5 - 0.2 * i as f32);
//!         x.extend(if u < 2 { [a, b] } else { [b, a] });
//!         users.push(u);
//!     }
//! }
//! let seen = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &users)?;
//! let params = FitParams::new(Method::Lore, 2).learning_rate(0.5).iterations(200).check()?;
//! let model = fit(&params, &seen, &FitOptions::default(), |_| ControlFlow::Continue(()))?.model;
//!
//! // A new user who prefers feature 1, from two pairs, with the basis fixed.
//! let new = [0.0f32, 2.0, 0.5, 3.0];
//! let new = Preferences::from_sorted_users(FeatureRows::F32(&new), 2, &[0, 0])?;
//! let few_shot = PersonalizeParams::default().check()?;
//! let options = PersonalizeOptions::default();
//! let weights = personalize(&few_shot, &model.basis, &new, &options, |_| ControlFlow::Continue(()))?;
//! let accuracy = evaluate(&model.basis, &weights.users, &new)?;
//! assert_eq!(accuracy.mean, 1.0);
//! # Ok::<(), lore_core::LoreError>(())
//! ```

#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

mod adam;
mod data;
mod divergence;
mod error;
mod eval;
mod fit;
mod holdout;
// The block kernels: private API, exposed (hidden) only with the `internals` feature, for the
// kernel benchmarks and probes.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod kernels;
#[cfg(not(feature = "internals"))]
mod kernels;
mod lanes;
mod logistic;
mod memory;
mod model;
mod objective;
mod params;
mod personalize;
mod stopping;

pub use data::{
    count_rows_per_user, group_rows_by_user, offsets_from_counts, FeatureRows, Preferences,
};
pub use error::{LoreError, Result};
pub use eval::{evaluate, mean_and_std, Evaluation, Validation, ValidationScore};
pub use fit::{fit, fit_bradley_terry, FitInit, FitOptions, FitOutcome, FitStep, FittedModel};
pub use holdout::{hold_out_rows, pick_rows, share_of_rows, shuffled_rows, HeldOutRows};
pub use memory::{check_fit_size, fit_memory, personalize_memory};
pub use model::{population_weights, RewardBasis, UserWeights};
pub use params::{
    CheckedFitParams, CheckedPersonalizeParams, EarlyStopping, FitParams, Method,
    PersonalizeParams, Precision, DEFAULT_EVAL_EVERY, DEFAULT_FIT_ITERATIONS,
    DEFAULT_FIT_LEARNING_RATE, DEFAULT_LOGIT_SCALE, DEFAULT_PATIENCE,
    DEFAULT_PERSONALIZE_ITERATIONS, DEFAULT_PERSONALIZE_LEARNING_RATE, DEFAULT_PRUNE_THRESHOLD,
    MIN_LEARNING_RATE,
};
pub use personalize::{
    personalize, random_user_logits, PersonalizeOptions, PersonalizeOutcome, PersonalizeStep,
    SEGMENT_STEPS,
};
pub use stopping::StoppingReport;
