//! The one error type of the core: every invalid input is reported before any work starts.

use thiserror::Error;

/// Why a core call refused its input.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LoreError {
    /// A hyperparameter outside its valid range (rank 0, lr <= 0, ...).
    #[error("invalid {name}: {reason}")]
    InvalidParameter {
        /// The parameter's name.
        name: &'static str,
        /// Its value and why it is refused.
        reason: String,
    },
    /// Two inputs whose sizes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A NaN or infinite feature value.
    #[error("feature value at row {row}, column {col} is {value} (features must be finite)")]
    NonFinite {
        /// Row of the value.
        row: usize,
        /// Column of the value.
        col: usize,
        /// The value.
        value: f32,
    },
    /// A user index between 0 and the largest index that owns no row.
    #[error("user {user} has no rows (user indices must run 0..N-1 with at least one row each)")]
    EmptyUser {
        /// The user without rows.
        user: usize,
    },
    /// A user index that does not fit the model or the declared number of users.
    #[error("user index {index} is out of range (number of users: {n_users})")]
    UserOutOfRange {
        /// The user index given.
        index: u64,
        /// The number of users it must be below.
        n_users: usize,
    },
    /// A model whose feature dimension differs from the data's.
    #[error("feature dimension mismatch: the model has F = {model}, the data has F = {data}")]
    FeatureMismatch {
        /// The model's F.
        model: usize,
        /// The data's F.
        data: usize,
    },
    /// Training produced a non-finite loss or parameter: it stopped there instead of writing
    /// NaN weights (a learning rate, prior strength or feature scale too large for f32).
    #[error("training diverged at step {} of {iterations}: {what}; {hint}", step + 1)]
    Diverged {
        /// The 0-based step whose loss (before its update) or update was not finite.
        step: usize,
        /// The steps the run was to take.
        iterations: usize,
        /// What became non-finite ("the loss became NaN", "V[3, 0] became inf", ...).
        what: String,
        /// What to change ("lower the learning rate (now 1e300)", ...).
        hint: String,
    },
}

/// Result alias for the core.
pub type Result<T> = std::result::Result<T, LoreError>;
