//! One module per subcommand: flags in, one library call, results out.

pub mod auto;
pub mod bench;
pub mod demo;
#[cfg(feature = "embed")]
pub mod embed;
pub mod eval;
pub mod fit;
pub mod personalize;
pub mod shots;
pub mod simulate;
pub mod split;
pub mod sweep;

use std::path::Path;

use anyhow::{bail, Result};
use lore_core::Precision;

/// Fails early (before any work) when `out` cannot be created: its folder is missing or it is
/// a folder itself.
pub fn check_output_path(out: &Path) -> Result<()> {
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if !parent.is_dir() {
        bail!(
            "cannot write {}: folder {} does not exist",
            out.display(),
            parent.display()
        );
    }
    if out.is_dir() {
        bail!("cannot write {}: it is a folder", out.display());
    }
    Ok(())
}

/// Parses --precision (`f32` or `bf16`).
pub fn parse_precision(value: &str) -> std::result::Result<Precision, String> {
    value
        .parse()
        .map_err(|e: lore_core::LoreError| e.to_string())
}
