//! Rust errors as Python exceptions: OSError for files, ValueError for everything else, with
//! the CLI's one-line message.

use pyo3::exceptions::{PyOSError, PyValueError};
use pyo3::PyErr;

/// An anyhow error (with its context chain on one line, as the CLI prints it) as a Python
/// exception: OSError when an I/O error is in the chain, ValueError otherwise.
pub fn to_py(error: anyhow::Error) -> PyErr {
    let message = error
        .chain()
        .map(|cause| cause.to_string())
        .collect::<Vec<_>>()
        .join(": ");
    let is_io = error.chain().any(|cause| {
        cause.is::<std::io::Error>()
            || cause
                .downcast_ref::<lore_io::IoError>()
                .is_some_and(is_file_error)
    });
    if is_io {
        PyOSError::new_err(message)
    } else {
        PyValueError::new_err(message)
    }
}

/// Whether a lore-io error is about reading or writing a file rather than its contents.
fn is_file_error(error: &lore_io::IoError) -> bool {
    matches!(
        error,
        lore_io::IoError::Open { .. } | lore_io::IoError::Write { .. }
    )
}
