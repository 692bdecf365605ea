//! Presentation: progress bars with the current loss, summaries, and per-step JSON-lines traces.

use std::path::{Path, PathBuf};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether and how to talk to the terminal.
pub struct Ui {
    quiet: bool,
}

impl Ui {
    pub fn new(quiet: bool) -> Self {
        Self { quiet }
    }

    /// A progress bar over `len` steps (hidden when quiet or when stderr is not a terminal).
    pub fn steps(&self, len: usize, what: &str) -> ProgressBar {
        if self.quiet {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len as u64);
        bar.set_style(
            ProgressStyle::with_template(
                "{prefix:>12} [{bar:30}] {pos}/{len} steps  {per_sec}  ETA {eta}  {msg}",
            )
            .expect("valid template")
            .progress_chars("=> "),
        );
        bar.set_prefix(what.to_string());
        bar.enable_steady_tick(Duration::from_millis(200));
        bar
    }

    /// A line for the user on stderr (not when quiet).
    pub fn note(&self, message: impl AsRef<str>) {
        if !self.quiet {
            eprintln!("{}", message.as_ref());
        }
    }
}

/// JSON lines, one per step, written to `path` atomically when the run ends.
pub struct Trace {
    path: Option<PathBuf>,
    text: String,
}

impl Trace {
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
    pub fn finish(self) -> anyhow::Result<()> {
        if let Some(path) = self.path {
            lore_io::write_bytes_atomic(&path, self.text.as_bytes())?;
        }
        Ok(())
    }
}
