//! `lore.Embedder`: texts and text pairs to features, as `lore embed` makes them.

use pyo3::prelude::*;

/// Adds this module's classes to `lore._lore`.
pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
