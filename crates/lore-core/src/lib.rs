//! lore-core: the mathematics of LoRe (low-rank personalized reward models), with no I/O.
//!
//! A preference is a row x = e(chosen) - e(rejected). A shared basis V [F x K] and per-user
//! weights w_u = softmax(W_u) give P(chosen > rejected | u) = sigmoid(c * x . V w_u).
//! [`fit`] learns V and W on many users, [`personalize`] fits w_u for new users with V fixed,
//! and [`evaluate`] reports pairwise accuracy per user.

#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod adam;
pub mod data;
pub mod error;
pub mod eval;
pub mod fit;
// The block kernels: private API, exposed (hidden) only with the `internals` feature, for the
// kernel benchmarks and probes.
#[cfg(feature = "internals")]
#[doc(hidden)]
pub mod kernels;
#[cfg(not(feature = "internals"))]
mod kernels;
mod lanes;
mod logistic;
pub mod model;
mod objective;
pub mod params;
pub mod personalize;
pub mod stopping;

pub use data::{FeatureRows, Preferences};
pub use error::{LoreError, Result};
pub use eval::{evaluate, Evaluation, Validation, ValidationScore};
pub use fit::{fit, fit_early_stopped, FitInit, FitStep, FittedModel};
pub use model::{RewardBasis, UserWeights};
pub use params::{
    CheckedFitParams, CheckedPersonalizeParams, EarlyStopping, FitParams, Method,
    PersonalizeParams, Precision,
};
pub use personalize::{personalize, personalize_with, PersonalizeOptions, PersonalizeStep};
pub use stopping::StoppingReport;
