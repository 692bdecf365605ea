//! `lore.split`, `lore.sweep` and `lore.auto`: the experiment harness, returning what the CLI
//! writes to results.json as Python objects.

use pyo3::prelude::*;

/// Adds this module's functions to `lore._lore`.
pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
