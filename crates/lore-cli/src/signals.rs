//! Process-wide signal handling: Ctrl-C, SIGTERM and SIGHUP remove unfinished outputs (the
//! temporary files of atomic writes, staging folders) and exit with 130, for every command;
//! SIGBUS (a memory-mapped input truncated under the run) prints one line instead of dying
//! silently.

use std::sync::atomic::{AtomicBool, Ordering};

/// Set by the first Ctrl-C of a command that stops gracefully ([`stop_gracefully`]): the work
/// ends at its next check and nothing is written.
pub static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether the first Ctrl-C only sets [`INTERRUPTED`] instead of exiting.
static GRACEFUL: AtomicBool = AtomicBool::new(false);

/// The exit status after an interrupt (128 + SIGINT, as shells report it).
const INTERRUPTED_EXIT: i32 = 130;

/// Installs the handlers; call once, first thing. A failure to install is not fatal (the run
/// then behaves as without them).
pub fn install() {
    let _ = ctrlc::set_handler(|| {
        if GRACEFUL.load(Ordering::SeqCst) && !INTERRUPTED.swap(true, Ordering::SeqCst) {
            return;
        }
        lore_io::discard_unfinished();
        eprintln!("error: interrupted (unfinished outputs were removed)");
        std::process::exit(INTERRUPTED_EXIT);
    });
    #[cfg(unix)]
    sigbus::install();
}

/// From now on the first Ctrl-C only sets [`INTERRUPTED`] (the command checks it and stops
/// before writing); a second one exits at once, as for every other command.
#[cfg_attr(not(feature = "embed"), allow(dead_code))]
pub fn stop_gracefully() {
    GRACEFUL.store(true, Ordering::SeqCst);
}

/// SIGBUS: reading a memory-mapped input whose file was truncated under the run. Only
/// async-signal-safe calls: write(2) of a fixed line, then _exit(2).
#[cfg(unix)]
#[allow(unsafe_code)]
mod sigbus {
    /// The one line printed.
    const MESSAGE: &[u8] =
        b"error: an input file changed while lore was reading it (rewritten in place?); rerun\n";

    extern "C" fn on_sigbus(_: libc::c_int) {
        // SAFETY: write(2) and _exit(2) are async-signal-safe; MESSAGE is a static buffer.
        unsafe {
            libc::write(libc::STDERR_FILENO, MESSAGE.as_ptr().cast(), MESSAGE.len());
            libc::_exit(1);
        }
    }

    /// Installs the handler (best effort).
    pub fn install() {
        // SAFETY: a zeroed sigaction is a valid "no flags, empty mask" value; the handler only
        // makes async-signal-safe calls.
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(libc::SIGBUS, &action, std::ptr::null_mut());
        }
    }
}
