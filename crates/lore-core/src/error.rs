//! The one error type of the core: every invalid input is reported before any work starts.

use thiserror::Error;

/// Why a core call refused its input.
#[derive(Debug, Error, Clone, PartialEq)]
pub enum LoreError {
    /// A hyperparameter outside its valid range (rank 0, lr <= 0, ...).
    #[error("invalid {name}: {reason}")]
    InvalidParameter { name: &'static str, reason: String },
    /// Two inputs whose sizes do not fit together.
    #[error("shape mismatch: {0}")]
    Shape(String),
    /// A NaN or infinite feature value.
    #[error("feature value at row {row}, column {col} is {value} (features must be finite)")]
    NonFinite { row: usize, col: usize, value: f32 },
    /// A user index between 0 and the largest index that owns no row.
    #[error("user {user} has no rows (user indices must run 0..N-1 with at least one row each)")]
    EmptyUser { user: usize },
    /// A user index that does not fit the model or the declared number of users.
    #[error("user index {index} is out of range (number of users: {n_users})")]
    UserOutOfRange { index: u64, n_users: usize },
    /// A model whose feature dimension differs from the data's.
    #[error("feature dimension mismatch: the model has F = {model}, the data has F = {data}")]
    FeatureMismatch { model: usize, data: usize },
}

/// Result alias for the core.
pub type Result<T> = std::result::Result<T, LoreError>;
