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

use anyhow::{bail, Context, Result};
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

/// Fails early (before any work) when `dir` exists and is not a folder.
pub fn check_output_dir(dir: &Path) -> Result<()> {
    if dir.exists() && !dir.is_dir() {
        bail!(
            "cannot write into {}: it is a file, not a folder",
            dir.display()
        );
    }
    Ok(())
}

/// Creates `dir` (and its parents) for outputs, refusing a path that is a file.
pub fn create_output_dir(dir: &Path) -> Result<()> {
    check_output_dir(dir)?;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create folder {}", dir.display()))
}

/// Parses --precision (`f32` or `bf16`).
pub fn parse_precision(value: &str) -> std::result::Result<Precision, String> {
    value
        .parse()
        .map_err(|e: lore_core::LoreError| e.to_string())
}
