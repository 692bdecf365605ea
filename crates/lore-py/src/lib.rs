//! lore-py: the Python package `lore` over lore's Rust crates (PyO3, abi3 for Python >= 3.10).
//!
//! The extension module is `lore._lore`; `python/lore/__init__.py` re-exports its public names
//! and adds the pure-Python parts (`lore.compat`, `lore.trl`). Arrays come in as numpy
//! float32/float16 and go out as float32; errors raise ValueError or OSError with the CLI's
//! one-line messages.

#![deny(missing_docs)]

use pyo3::prelude::*;

mod arrays;
#[cfg(feature = "embed")]
mod embed;
mod errors;
mod model;
mod pipeline;
mod progress;

/// The extension module `lore._lore`.
#[pymodule]
fn _lore(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add("__version__", env!("CARGO_PKG_VERSION"))?;
    model::register(m)?;
    pipeline::register(m)?;
    #[cfg(feature = "embed")]
    embed::register(m)?;
    Ok(())
}
