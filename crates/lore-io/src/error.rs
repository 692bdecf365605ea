//! The one error type of lore-io: every message names the file, and the tensor when there is one.

use std::path::{Path, PathBuf};

use thiserror::Error;

/// Why reading or writing a safetensors file failed.
///
/// Each message is one complete line that already includes the underlying cause; the cause is
/// therefore kept in a `cause` field and not returned by `source()`, so that printing the
/// error chain (`anyhow`'s `{:#}`) does not repeat it.
#[derive(Debug, Error)]
pub enum IoError {
    /// The file could not be opened or read.
    #[error("cannot open {}: {cause}", path.display())]
    Open {
        /// The file.
        path: PathBuf,
        /// What the operating system said.
        cause: std::io::Error,
    },
    /// The bytes are not a safetensors file (truncated, bad header, offsets past the end, ...).
    #[error("{} is not a valid safetensors file: {reason}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// What is wrong with its bytes.
        reason: String,
    },
    /// A required tensor is absent.
    #[error("{}: missing tensor `{name}` (found: {})", path.display(), found_list(found))]
    MissingTensor {
        /// The file.
        path: PathBuf,
        /// The tensor looked for.
        name: String,
        /// The tensors the file has, sorted.
        found: Vec<String>,
    },
    /// A tensor stored in a dtype the reader does not accept.
    #[error("{}: tensor `{name}` has dtype {dtype}, expected one of {}", path.display(), expected.join(", "))]
    Dtype {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its safetensors dtype (`F32`, `I64`, ...).
        dtype: String,
        /// The dtypes that would have been accepted.
        expected: Vec<&'static str>,
    },
    /// A tensor whose shape does not fit.
    #[error("{}: tensor `{name}` has shape {shape:?}, expected {expected}", path.display())]
    Shape {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Its shape.
        shape: Vec<usize>,
        /// The shape that was required, in words.
        expected: String,
    },
    /// A tensor whose values are unusable (a negative user index, ...).
    #[error("{}: tensor `{name}`: {reason}", path.display())]
    Value {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// Which value is wrong, and why.
        reason: String,
    },
    /// A metadata entry that is malformed or inconsistent with the tensors.
    #[error("{}: metadata `{key}`: {reason}", path.display())]
    Metadata {
        /// The file.
        path: PathBuf,
        /// The metadata key.
        key: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The data was read but the core refused it (empty user, non-finite value, ...).
    #[error("{}: {cause}", path.display())]
    Core {
        /// The file.
        path: PathBuf,
        /// The core's reason.
        cause: lore_core::LoreError,
    },
    /// A tensor was read but the core refused its values (a non-finite basis value, ...).
    #[error("{}: tensor `{name}`: {cause}", path.display())]
    TensorCore {
        /// The file.
        path: PathBuf,
        /// The tensor.
        name: String,
        /// The core's reason.
        cause: lore_core::LoreError,
    },
    /// Tensors or metadata of one file that do not fit together (or do not fit what the caller
    /// holds): `W0` and `V0` of different ranks, `user_ids` not one per user, ...
    #[error("{}: {reason}", path.display())]
    Inconsistent {
        /// The file.
        path: PathBuf,
        /// What does not fit, naming the tensors or metadata keys.
        reason: String,
    },
    /// Two files that must agree (the sets of a split folder) do not.
    #[error("{} has {found} but {} has {expected}", path.display(), other.display())]
    Mismatch {
        /// The file that disagrees.
        path: PathBuf,
        /// What it has.
        found: String,
        /// The file it is compared with.
        other: PathBuf,
        /// What that one has (and, when useful, why they must agree).
        expected: String,
    },
    /// A folder given as a split folder is not one: not a folder, or a set is missing.
    #[error("{}", not_split_folder(dir, missing.as_deref()))]
    NotSplitFolder {
        /// The folder.
        dir: PathBuf,
        /// The set file that is missing; `None` when `dir` is not a folder at all.
        missing: Option<PathBuf>,
    },
    /// The output file (or its temporary sibling) could not be written.
    #[error("cannot write {}: {cause}", path.display())]
    Write {
        /// The target file.
        path: PathBuf,
        /// What the operating system said.
        cause: std::io::Error,
    },
    /// The tensors given to a writer do not form a valid file (shape/length mismatch, ...).
    #[error("cannot write {}: {reason}", path.display())]
    Encode {
        /// The target file.
        path: PathBuf,
        /// What is wrong with the tensors or metadata.
        reason: String,
    },
    /// An output path refused before any work: it is an input or another output, not a
    /// regular file, read-only, or in a folder where no file can be created.
    #[error("cannot write {flag} {}: {reason}", path.display())]
    OutputRefused {
        /// The flag that named the output (`--out`, `--trace`, ...).
        flag: String,
        /// The path as given.
        path: PathBuf,
        /// Why it is refused, and what to do.
        reason: String,
    },
    /// An input file was rewritten or replaced while the run read it: the results are not
    /// written.
    #[error(
        "the input {flag} {} changed during the run (rewritten by another program?); nothing \
         was written: rerun once it no longer changes",
        path.display()
    )]
    InputChanged {
        /// The flag that named the input.
        flag: String,
        /// The input file.
        path: PathBuf,
    },
    /// An output folder that may not be written (an input, a folder lore did not write, ...).
    #[error("cannot write into {}: {reason}", dir.display())]
    OutputFolder {
        /// The output folder, as given.
        dir: PathBuf,
        /// Why, and what to do.
        reason: String,
    },
}

/// Result alias for lore-io.
pub type Result<T> = std::result::Result<T, IoError>;

/// The names of `found` for a message: at most 12, then how many more.
fn found_list(found: &[String]) -> String {
    const SHOWN: usize = 12;
    match found.len() {
        0 => "no tensors".to_string(),
        n if n <= SHOWN => found.join(", "),
        n => format!("{}, ... and {} more", found[..SHOWN].join(", "), n - SHOWN),
    }
}

/// The message for a folder that is not a split folder.
fn not_split_folder(dir: &Path, missing: Option<&Path>) -> String {
    match missing {
        None => format!(
            "{} is not a folder (give a split folder made by `lore split` or `lore simulate`)",
            dir.display()
        ),
        Some(path) => format!(
            "{} is not a split folder: {} is missing (make one with `lore split` or \
             `lore simulate`)",
            dir.display(),
            path.display()
        ),
    }
}
