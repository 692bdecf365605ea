//! `--trace` files: one JSON line per optimizer step, written atomically when the run ends.

use std::path::{Path, PathBuf};

use crate::error::Result;
use crate::writer::write_bytes_atomic;

/// JSON lines, one per step, collected in memory and written to `path` atomically when the run
/// ends (so a failed or interrupted run leaves no half-written trace); shared by the CLI's
/// `--trace` and Python's `trace=`.
pub struct Trace {
    path: Option<PathBuf>,
    text: String,
}

impl Trace {
    /// Collects lines when `path` is given; without one every call is a no-op.
    pub fn new(path: Option<&Path>) -> Self {
        Self {
            path: path.map(Path::to_path_buf),
            text: String::new(),
        }
    }

    /// Appends one step's record (a no-op without a trace file).
    pub fn record(&mut self, value: serde_json::Value) {
        if self.path.is_some() {
            self.text.push_str(&value.to_string());
            self.text.push('\n');
        }
    }

    /// Writes the collected lines, if a trace file was asked for.
    pub fn finish(self) -> Result<()> {
        if let Some(path) = self.path {
            write_bytes_atomic(&path, self.text.as_bytes())?;
        }
        Ok(())
    }
}
