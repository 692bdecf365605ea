//! `lore.fit`, `lore.load`, `Model`, `Model.personalize`, `Users`, `lore.load_users`,
//! `Model.rewards` and `lore.accuracy`.

use pyo3::prelude::*;

/// Adds this module's classes and functions to `lore._lore`.
pub fn register(_m: &Bound<'_, PyModule>) -> PyResult<()> {
    Ok(())
}
