//! Long calls: run without the GIL on a worker thread (in a pool of `threads` when asked),
//! while the calling thread watches for Ctrl-C; progress bars and `trace=` lines as the CLI's.

use std::ops::ControlFlow;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;

use crate::errors::to_py;

/// How often the waiting thread checks for signals (Ctrl-C) while the work runs.
const SIGNAL_POLL: Duration = Duration::from_millis(50);

/// The stop flag the work reads: set when Ctrl-C (or another signal handler's exception)
/// arrives, so the run ends at its next step.
#[derive(Default)]
pub struct Cancel {
    stop: AtomicBool,
}

/// The payload with which [`Cancel::check`] unwinds out of library code after Ctrl-C.
struct Cancelled;

impl Cancel {
    /// Whether the run should go on (an observer's return value).
    pub fn flow(&self) -> ControlFlow<()> {
        if self.stop.load(Ordering::Relaxed) {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        }
    }

    /// Unwinds out of the work when Ctrl-C was pressed, for library code whose progress
    /// callback cannot stop it; call it often. Nothing after it (an output folder's commit)
    /// runs.
    pub fn check(&self) {
        if self.stop.load(Ordering::Relaxed) {
            // resume_unwind skips the panic hook: no message on stderr.
            resume_unwind(Box::new(Cancelled));
        }
    }

    /// The flag itself, for library code that polls one (`lore_embed::embed_pairs`).
    pub fn flag(&self) -> &AtomicBool {
        &self.stop
    }
}

/// A rayon pool of `threads` threads for one call; None for None (rayon's global pool, all
/// cores).
pub fn thread_pool(threads: Option<usize>) -> PyResult<Option<rayon::ThreadPool>> {
    match threads {
        None => Ok(None),
        Some(0) => Err(PyValueError::new_err(
            "invalid threads: 0 (give at least 1, or None for all cores)",
        )),
        Some(n) => rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build()
            .map(Some)
            .map_err(|e| PyValueError::new_err(format!("cannot start {n} threads: {e}"))),
    }
}

/// Runs `work` with the GIL released (other Python threads keep running), on a worker thread
/// inside `pool` (None: rayon's global pool of all cores), while this thread checks for
/// signals every [`SIGNAL_POLL`]. When a signal handler raises (KeyboardInterrupt on Ctrl-C),
/// the work is told to stop ([`Cancel`]), its result is dropped and the exception is returned.
pub fn run_detached<T, F>(py: Python<'_>, pool: Option<&rayon::ThreadPool>, work: F) -> PyResult<T>
where
    F: FnOnce(&Cancel) -> T + Send,
    T: Send,
{
    let cancel = Cancel::default();
    let (outcome, interrupted) = py.detach(|| {
        std::thread::scope(|scope| {
            let (done, result) = mpsc::channel();
            let cancel = &cancel;
            scope.spawn(move || {
                let outcome = catch_unwind(AssertUnwindSafe(|| match pool {
                    Some(pool) => pool.install(|| work(cancel)),
                    None => work(cancel),
                }));
                // The receiver waits until this arrives.
                let _ = done.send(outcome);
            });
            let mut interrupted = None;
            loop {
                match result.recv_timeout(SIGNAL_POLL) {
                    Ok(outcome) => break (outcome, interrupted),
                    Err(RecvTimeoutError::Timeout) if interrupted.is_none() => {
                        if let Err(e) = Python::attach(|py| py.check_signals()) {
                            cancel.stop.store(true, Ordering::Relaxed);
                            interrupted = Some(e);
                        }
                    }
                    Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => {
                        unreachable!("the worker sends its outcome before it ends")
                    }
                }
            }
        })
    });
    if let Some(e) = interrupted {
        return Err(e);
    }
    match outcome {
        Ok(result) => Ok(result),
        Err(panic) => resume_unwind(panic),
    }
}

/// [`run_detached`] for work that fails with the library's errors, raised as the CLI's
/// one-line messages ([`to_py`]).
pub fn run_detached_fallible<T, F>(
    py: Python<'_>,
    pool: Option<&rayon::ThreadPool>,
    work: F,
) -> PyResult<T>
where
    F: FnOnce(&Cancel) -> anyhow::Result<T> + Send,
    T: Send,
{
    run_detached(py, pool, work)?.map_err(to_py)
}

/// A progress bar over `len` steps on stderr, as the CLI draws it (hidden unless `show`, and
/// by indicatif when stderr is not a terminal).
pub fn steps(show: bool, len: usize, what: &str) -> ProgressBar {
    if !show {
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
