//! Unfinished outputs (temporary files, staging folders) that an interrupted process removes.
//!
//! Every atomic write first builds its output under a temporary name and renames it into place.
//! While it does, the temporary path is tracked here, so that a signal handler (the `lore`
//! binary's, on Ctrl-C or SIGTERM) can call [`discard_unfinished`] and leave nothing behind.

use std::path::{Path, PathBuf};
use std::sync::Mutex;

/// The temporary paths of the outputs being built now.
static PENDING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A tracked temporary path; dropping it stops tracking (it does not remove the path).
#[derive(Debug)]
pub struct Pending {
    path: PathBuf,
}

impl Pending {
    /// The tracked path.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let mut pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(i) = pending.iter().rposition(|p| p == &self.path) {
            pending.swap_remove(i);
        }
    }
}

/// Tracks `path` (a temporary file or folder about to be created) until the guard is dropped.
pub fn track_unfinished(path: impl Into<PathBuf>) -> Pending {
    let path = path.into();
    PENDING
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(path.clone());
    Pending { path }
}

/// Removes every tracked temporary file or folder (best effort) and returns how many were
/// removed. Meant for a signal handler that then exits: outputs being built are abandoned.
pub fn discard_unfinished() -> usize {
    let pending = PENDING.lock().unwrap_or_else(|e| e.into_inner());
    let mut removed = 0;
    for path in pending.iter() {
        let gone = match std::fs::symlink_metadata(path) {
            Ok(m) if m.is_dir() => std::fs::remove_dir_all(path).is_ok(),
            Ok(_) => std::fs::remove_file(path).is_ok(),
            Err(_) => false,
        };
        removed += usize::from(gone);
    }
    removed
}

/// Held by the unit tests that track paths, so that [`discard_unfinished`] in one test does
/// not remove what another test, running at the same time, is building.
#[cfg(test)]
pub(crate) static TEST_LOCK: Mutex<()> = Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discards_tracked_files_and_folders_but_not_released_ones() {
        let _serial = TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join(".out.tmp");
        let folder = dir.path().join(".out.staging");
        let kept = dir.path().join("kept.tmp");
        std::fs::write(&file, b"x").unwrap();
        std::fs::create_dir(&folder).unwrap();
        std::fs::write(folder.join("a"), b"y").unwrap();
        std::fs::write(&kept, b"z").unwrap();
        let _file = track_unfinished(&file);
        let _folder = track_unfinished(&folder);
        drop(track_unfinished(&kept));
        assert!(discard_unfinished() >= 2);
        assert!(!file.exists() && !folder.exists());
        assert!(kept.exists(), "a released path is not removed");
    }
}
