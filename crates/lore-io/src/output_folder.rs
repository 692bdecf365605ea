//! Output folders built whole in a hidden sibling and put into place in one step.
//!
//! A command that writes a folder (`lore split`, `simulate`, `sweep`, `shots`, `auto`,
//! `demo`) never writes into the folder it was given. [`OutputFolder::create`] checks the
//! folder before any work and makes a staging folder next to it,
//! `.NAME.lore-staging-PID`, holding the marker file [`MARKER_FILE`]; the command writes all
//! its files there, and [`OutputFolder::commit`] puts the whole folder into place:
//!
//! - no folder yet: the staging folder is renamed to NAME;
//! - a folder lore wrote (it holds the marker), or an empty one, or any folder with `--force`:
//!   on Linux the two are exchanged in one `renameat2(RENAME_EXCHANGE)` and the old one is
//!   removed; elsewhere (or on a file system without it) the old folder is renamed aside to
//!   `.NAME.lore-old-PID`, the staging folder renamed to NAME, and the old one removed.
//!
//! A process killed at any moment therefore leaves NAME either as it was or complete, never
//! mixed. What a killed run leaves (a staging folder, or an old folder renamed aside) is a
//! hidden sibling whose process is gone: the next [`OutputFolder::create`] for NAME removes it
//! (and puts an old folder back when NAME is missing). Ctrl-C removes the staging folder at
//! once (it is registered with [`crate::track_unfinished`]).
//!
//! A non-empty folder without the marker, or with the marker of another kind of output, is
//! refused unless forced, and an output folder that is, holds or lies inside an input is
//! always refused (compared by canonical path and by file identity, so that `./d`, a symbolic
//! link or a hard link are recognized).

use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Component, Path, PathBuf};

use crate::error::{IoError, Result};
use crate::pending::{track_unfinished, Pending};

/// The marker file in every folder lore writes: one line, `lore COMMAND`.
pub const MARKER_FILE: &str = ".lore-output";

/// Infix of a staging folder's name: `.NAME.lore-staging-PID`.
const STAGING_INFIX: &str = ".lore-staging-";
/// Infix of an old folder renamed aside: `.NAME.lore-old-PID`.
const ASIDE_INFIX: &str = ".lore-old-";

/// An output folder being built in a hidden staging sibling, put into place by
/// [`Self::commit`]; dropped without a commit, the staging folder is removed and the folder
/// given is left as it was.
#[derive(Debug)]
pub struct OutputFolder {
    /// The folder as given, for messages.
    shown: PathBuf,
    /// The folder's real (absolute, symbolic links resolved) path.
    real: PathBuf,
    /// Where the files are written until the commit.
    staging: PathBuf,
    /// Replace a non-empty folder that is not of this command's kind (`--force`).
    force: bool,
    /// The command, as named in the marker.
    command: String,
    /// Keeps the staging folder registered for removal on Ctrl-C.
    _pending: Pending,
    /// The missing parent folders that were created, deepest first (removed again, when
    /// still empty, if nothing is committed).
    created: Vec<PathBuf>,
    /// Whether the commit happened (then nothing is removed on drop).
    committed: bool,
}

impl OutputFolder {
    /// Checks `dest` before any work and prepares its staging folder (which also proves that
    /// the folder's parent is writable). `command` names the writer (`"simulate"`); `force`
    /// allows replacing a non-empty folder that lore did not write (or that holds another
    /// command's output); `inputs` are the command's inputs as (flag, path): the output may
    /// be none of them, hold none and lie inside none, even with `force`.
    ///
    /// Missing parent folders are created.
    pub fn create(
        dest: &Path,
        command: &str,
        force: bool,
        inputs: &[(&str, &Path)],
    ) -> Result<Self> {
        let real = real_path(dest)?;
        let name = real
            .file_name()
            .ok_or_else(|| refused(dest, "give a folder with a name".into()))?
            .to_os_string();
        let parent = real.parent().unwrap_or(Path::new("/")).to_path_buf();
        if parent.is_dir() {
            clean_leftovers(&parent, &name, &real);
        }
        match fs::metadata(&real) {
            Ok(m) if !m.is_dir() => {
                return Err(refused(dest, "it is a file, not a folder".into()));
            }
            _ => {}
        }
        check_inputs(dest, &real, inputs)?;
        check_replaceable(dest, &real, command, force)?;
        let mut created = Vec::new();
        let mut missing = parent.as_path();
        while fs::symlink_metadata(missing).is_err() {
            created.push(missing.to_path_buf());
            match missing.parent() {
                Some(up) => missing = up,
                None => break,
            }
        }
        fs::create_dir_all(&parent).map_err(|cause| IoError::Write {
            path: parent.clone(),
            cause,
        })?;

        let staging = parent.join(sibling_name(&name, STAGING_INFIX, std::process::id()));
        let pending = track_unfinished(&staging);
        if fs::symlink_metadata(&staging).is_ok() {
            // Our process id on a leftover: an earlier process that had it is gone.
            remove_any(&staging);
        }
        fs::create_dir(&staging).map_err(|cause| {
            refused(
                dest,
                format!(
                    "cannot create a folder in {}: {cause}",
                    display_dir(&parent).display()
                ),
            )
        })?;
        let folder = Self {
            shown: dest.to_path_buf(),
            real,
            staging,
            force,
            command: command.to_string(),
            _pending: pending,
            created,
            committed: false,
        };
        let marker = format!("lore {command}\n");
        fs::write(folder.staging.join(MARKER_FILE), marker).map_err(|cause| IoError::Write {
            path: folder.shown.join(MARKER_FILE),
            cause,
        })?;
        Ok(folder)
    }

    /// The staging folder: write every output file here.
    pub fn path(&self) -> &Path {
        &self.staging
    }

    /// The folder as given (for messages and for paths recorded in the files).
    pub fn dest(&self) -> &Path {
        &self.shown
    }

    /// Puts the staging folder into place as the output folder in one step, replacing what
    /// was there whole (see the module documentation).
    pub fn commit(mut self) -> Result<()> {
        if let Ok(dir) = fs::File::open(&self.staging) {
            let _ = dir.sync_all();
        }
        let write_err = |cause| IoError::Write {
            path: self.shown.clone(),
            cause,
        };
        match fs::symlink_metadata(&self.real) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                fs::rename(&self.staging, &self.real).map_err(write_err)?;
                self.committed = true;
            }
            Err(cause) => return Err(write_err(cause)),
            Ok(_) => {
                // Whatever appeared since the checks is not replaced silently.
                check_replaceable(&self.shown, &self.real, &self.command, self.force)?;
                if exchange(&self.staging, &self.real) {
                    // The old folder is now at the staging path (still removed on Ctrl-C).
                    self.committed = true;
                    remove_any(&self.staging);
                } else {
                    self.replace_by_renames()?;
                }
            }
        }
        sync_dir(self.real.parent());
        Ok(())
    }

    /// Where [`exchange`] is not available: the old folder aside, the new one into place,
    /// the old one removed.
    fn replace_by_renames(&mut self) -> Result<()> {
        let write_err = |cause| IoError::Write {
            path: self.shown.clone(),
            cause,
        };
        let name = self.real.file_name().unwrap_or(OsStr::new("out"));
        let aside = self
            .real
            .with_file_name(sibling_name(name, ASIDE_INFIX, std::process::id()));
        if fs::symlink_metadata(&aside).is_ok() {
            remove_any(&aside);
        }
        fs::rename(&self.real, &aside).map_err(write_err)?;
        if let Err(cause) = fs::rename(&self.staging, &self.real) {
            let _ = fs::rename(&aside, &self.real);
            return Err(write_err(cause));
        }
        self.committed = true;
        remove_any(&aside);
        Ok(())
    }
}

impl Drop for OutputFolder {
    fn drop(&mut self) {
        if !self.committed {
            remove_any(&self.staging);
            for dir in &self.created {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}

/// Whether `dir` is the hidden staging folder or set-aside old folder of a lore output
/// (`.NAME.lore-staging-PID`, `.NAME.lore-old-PID`): an unfinished or abandoned output,
/// never to be read as one.
pub fn is_unfinished_output(dir: &Path) -> bool {
    let Some(name) = dir.file_name().and_then(OsStr::to_str) else {
        return false;
    };
    parse_sibling(name).is_some()
}

/// The lore command whose output `dir` holds, from its marker (`None` without one).
pub fn output_command(dir: &Path) -> Option<String> {
    let text = fs::read_to_string(dir.join(MARKER_FILE)).ok()?;
    let line = text.lines().next()?.trim();
    Some(line.strip_prefix("lore ").unwrap_or(line).to_string())
}

/// `.NAME{infix}PID`.
fn sibling_name(name: &OsStr, infix: &str, pid: u32) -> OsString {
    let mut s = OsString::from(".");
    s.push(name);
    s.push(infix);
    s.push(pid.to_string());
    s
}

/// For a sibling's file name: (NAME, infix, PID) when it is a staging or set-aside folder.
fn parse_sibling(file_name: &str) -> Option<(&str, &'static str, u32)> {
    let rest = file_name.strip_prefix('.')?;
    for infix in [STAGING_INFIX, ASIDE_INFIX] {
        if let Some(at) = rest.rfind(infix) {
            let pid = &rest[at + infix.len()..];
            if !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) {
                return Some((&rest[..at], infix, pid.parse().ok()?));
            }
        }
    }
    None
}

/// Whether process `pid` may still be running (so that its staging folder is left alone):
/// known on Linux through /proc; elsewhere every process is taken as running.
fn process_alive(pid: u32) -> bool {
    if pid == std::process::id() {
        return false;
    }
    if cfg!(target_os = "linux") && Path::new("/proc/self").exists() {
        Path::new("/proc").join(pid.to_string()).exists()
    } else {
        true
    }
}

/// Removes what killed runs left next to `dest` (named `name` in `parent`): staging folders,
/// and old folders set aside; an old folder is put back when `dest` is missing (the run was
/// killed between its two renames). Best effort.
fn clean_leftovers(parent: &Path, name: &OsStr, dest: &Path) {
    let Some(name) = name.to_str() else { return };
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    let mut leftovers: Vec<(PathBuf, &'static str)> = Vec::new();
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(file_name) = file_name.to_str() else {
            continue;
        };
        if let Some((of, infix, pid)) = parse_sibling(file_name) {
            if of == name && !process_alive(pid) {
                leftovers.push((entry.path(), infix));
            }
        }
    }
    leftovers.sort();
    for (path, infix) in leftovers {
        if infix == ASIDE_INFIX && fs::symlink_metadata(dest).is_err() {
            let _ = fs::rename(&path, dest);
        } else {
            remove_any(&path);
        }
    }
}

/// Removes a folder or file (best effort).
fn remove_any(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            let _ = fs::remove_dir_all(path);
        }
        Ok(_) => {
            let _ = fs::remove_file(path);
        }
        Err(_) => {}
    }
}

/// Swaps two existing folders atomically (Linux `renameat2` with `RENAME_EXCHANGE`); false
/// where the system or file system cannot.
#[cfg(target_os = "linux")]
fn exchange(a: &Path, b: &Path) -> bool {
    use rustix::fs::{renameat_with, RenameFlags, CWD};
    renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE).is_ok()
}

/// Swaps two existing folders atomically: not available here.
#[cfg(not(target_os = "linux"))]
fn exchange(_a: &Path, _b: &Path) -> bool {
    false
}

/// Makes renames in `dir` durable (best effort).
fn sync_dir(dir: Option<&Path>) {
    if let Some(dir) = dir {
        if let Ok(d) = fs::File::open(display_dir(dir)) {
            let _ = d.sync_all();
        }
    }
}

/// `dir`, or `.` when it is empty.
fn display_dir(dir: &Path) -> &Path {
    if dir.as_os_str().is_empty() {
        Path::new(".")
    } else {
        dir
    }
}

/// The refusal for output folder `dir`.
fn refused(dir: &Path, reason: String) -> IoError {
    IoError::OutputFolder {
        dir: dir.to_path_buf(),
        reason,
    }
}

/// The absolute path of `path` with every symbolic link resolved, for a path that may not
/// exist yet: its longest existing ancestor is resolved and the rest appended (`..` and `.`
/// in the rest are applied lexically).
fn real_path(path: &Path) -> Result<PathBuf> {
    if let Ok(real) = fs::canonicalize(path) {
        return Ok(real);
    }
    if fs::symlink_metadata(path).is_ok() {
        return Err(refused(
            path,
            "it is a symbolic link to nothing (remove it or choose another --out)".into(),
        ));
    }
    let absolute = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|cause| IoError::Write {
                path: path.to_path_buf(),
                cause,
            })?
            .join(path)
    };
    let mut rest = Vec::new();
    let mut base = absolute.as_path();
    let resolved = loop {
        if let Ok(real) = fs::canonicalize(base) {
            break real;
        }
        match (base.file_name(), base.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name.to_os_string());
                base = parent;
            }
            _ => break base.to_path_buf(),
        }
    };
    let mut out = resolved;
    for part in rest.iter().rev() {
        match Path::new(part).components().next() {
            Some(Component::ParentDir) => {
                out.pop();
            }
            Some(Component::CurDir) => {}
            _ => out.push(part),
        }
    }
    Ok(out)
}

/// Refuses an output folder that is an input, holds one, or lies inside one.
fn check_inputs(shown: &Path, real: &Path, inputs: &[(&str, &Path)]) -> Result<()> {
    for &(flag, input) in inputs {
        let Ok(input_real) = fs::canonicalize(input) else {
            continue; // a missing input is reported when it is read
        };
        let why = if input_real == real {
            Some("it is")
        } else if input_real.starts_with(real) {
            Some("it holds")
        } else if real.starts_with(&input_real) {
            Some("it lies inside")
        } else if holds_same_file(real, &input_real) {
            Some("it holds (as a hard link)")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(refused(
                shown,
                format!(
                    "{why} the input {} ({flag}); lore never writes into its inputs: choose \
                     another --out",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

/// Whether folder `dir` holds (at any depth) the very file `input` (same device and inode).
#[cfg(unix)]
fn holds_same_file(dir: &Path, input: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = fs::metadata(input) else {
        return false;
    };
    if !target.is_file() || !dir.is_dir() {
        return false;
    }
    let id = (target.dev(), target.ino());
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = fs::read_dir(&folder) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(m) = entry.metadata() else { continue };
            if m.is_dir() {
                stack.push(entry.path());
            } else if (m.dev(), m.ino()) == id {
                return true;
            }
        }
    }
    false
}

/// Whether folder `dir` holds the very file `input`: without file identities, never.
#[cfg(not(unix))]
fn holds_same_file(_dir: &Path, _input: &Path) -> bool {
    false
}

/// Whether the output of `written` (from a marker) may be replaced by `command`'s: the same
/// command, or both split folders (`split` and `simulate`).
fn same_kind(written: &str, command: &str) -> bool {
    fn kind(c: &str) -> &str {
        match c {
            "split" | "simulate" => "split folder",
            other => other,
        }
    }
    written == command || kind(written) == kind(command)
}

/// Refuses (unless `force`) a non-empty folder that lore did not write, or that holds the
/// output of another kind of command.
fn check_replaceable(shown: &Path, real: &Path, command: &str, force: bool) -> Result<()> {
    if force {
        return Ok(());
    }
    let Ok(mut entries) = fs::read_dir(real) else {
        return Ok(()); // missing: nothing to replace
    };
    if entries.next().is_none() {
        return Ok(());
    }
    match output_command(real) {
        None => Err(refused(
            shown,
            "it is not empty and was not written by lore; choose another --out or pass --force"
                .into(),
        )),
        Some(written) if !same_kind(&written, command) => Err(refused(
            shown,
            format!(
                "it holds the output of `lore {written}`, not of `lore {command}`; choose \
                 another --out or pass --force to replace it"
            ),
        )),
        Some(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serializes with the test of [`crate::discard_unfinished`], which removes every
    /// tracked staging folder of the process.
    fn serial() -> std::sync::MutexGuard<'static, ()> {
        crate::pending::TEST_LOCK
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn a_new_folder_appears_whole_at_commit() {
        let _serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("a/b/out");
        let out = OutputFolder::create(&dest, "sweep", false, &[]).unwrap();
        fs::write(out.path().join("x.txt"), "1").unwrap();
        assert!(
            !dest.exists(),
            "nothing at the destination before the commit"
        );
        assert!(out.path().starts_with(tmp.path().join("a/b")));
        out.commit().unwrap();
        assert_eq!(files(&dest), [MARKER_FILE, "x.txt"]);
        assert_eq!(output_command(&dest).as_deref(), Some("sweep"));
        assert_eq!(files(&tmp.path().join("a/b")), ["out"], "no sibling left");
        drop(OutputFolder::create(&tmp.path().join("c/d/out"), "sweep", false, &[]).unwrap());
        assert_eq!(
            files(tmp.path()),
            ["a"],
            "folders made for nothing are removed"
        );
    }

    #[test]
    fn a_lore_folder_is_replaced_whole_and_an_abandoned_one_left_as_it_was() {
        let _serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        let out = OutputFolder::create(&dest, "simulate", false, &[]).unwrap();
        fs::write(out.path().join("old.txt"), "old").unwrap();
        fs::write(out.path().join("both.txt"), "old").unwrap();
        out.commit().unwrap();

        let out = OutputFolder::create(&dest, "split", false, &[]).unwrap();
        fs::write(out.path().join("both.txt"), "new").unwrap();
        drop(out);
        assert_eq!(files(&dest), [MARKER_FILE, "both.txt", "old.txt"]);
        assert_eq!(
            files(tmp.path()),
            ["out"],
            "an abandoned staging folder is removed"
        );

        let out = OutputFolder::create(&dest, "split", false, &[]).unwrap();
        fs::write(out.path().join("both.txt"), "new").unwrap();
        out.commit().unwrap();
        assert_eq!(files(&dest), [MARKER_FILE, "both.txt"], "no stale file");
        assert_eq!(fs::read_to_string(dest.join("both.txt")).unwrap(), "new");
        assert_eq!(files(tmp.path()), ["out"]);
    }

    #[test]
    fn the_renaming_fallback_replaces_whole_too() {
        let _serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        fs::create_dir(&dest).unwrap();
        fs::write(dest.join("old.txt"), "old").unwrap();
        let mut out = OutputFolder::create(&dest, "sweep", true, &[]).unwrap();
        fs::write(out.path().join("new.txt"), "new").unwrap();
        out.replace_by_renames().unwrap();
        assert_eq!(files(&dest), [MARKER_FILE, "new.txt"]);
        assert_eq!(files(tmp.path()), ["out"]);
    }

    #[test]
    fn foreign_and_other_kinds_of_folders_are_refused_unless_forced() {
        let _serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("mine");
        fs::create_dir(&dest).unwrap();
        // An empty folder is fine.
        drop(OutputFolder::create(&dest, "sweep", false, &[]).unwrap());
        fs::write(dest.join("thesis.tex"), "precious").unwrap();
        let err = OutputFolder::create(&dest, "sweep", false, &[])
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("is not empty and was not written by lore") && err.contains("--force"),
            "{err}"
        );
        assert_eq!(files(tmp.path()), ["mine"], "no staging folder made");

        let out = OutputFolder::create(&dest, "sweep", true, &[]).unwrap();
        out.commit().unwrap();
        assert_eq!(files(&dest), [MARKER_FILE]);
        let err = OutputFolder::create(&dest, "simulate", false, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("holds the output of `lore sweep`"), "{err}");
    }

    #[test]
    fn inputs_are_never_outputs_even_forced() {
        let _serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let splits = tmp.path().join("splits");
        fs::create_dir(&splits).unwrap();
        let data = splits.join("seen_train.safetensors");
        fs::write(&data, "data").unwrap();
        let dotted = tmp.path().join("./splits/../splits");
        for (out, input) in [
            (&splits, &splits),
            (&dotted, &splits),
            (&splits, &data),
            (&splits.join("sub"), &splits),
        ] {
            let err = OutputFolder::create(out, "sweep", true, &[("--splits", input)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("lore never writes into its inputs"), "{err}");
        }
        #[cfg(unix)]
        {
            let link = tmp.path().join("link");
            std::os::unix::fs::symlink(&splits, &link).unwrap();
            assert!(OutputFolder::create(&link, "sweep", true, &[("--splits", &splits)]).is_err());
            let other = tmp.path().join("other");
            fs::create_dir(&other).unwrap();
            let hard = other.join("h.safetensors");
            fs::hard_link(&data, &hard).unwrap();
            let err = OutputFolder::create(&other, "sweep", true, &[("--data", &data)])
                .unwrap_err()
                .to_string();
            assert!(err.contains("hard link"), "{err}");
        }
        assert_eq!(fs::read_to_string(&data).unwrap(), "data");
    }

    #[test]
    fn leftovers_of_killed_runs_are_cleaned_and_an_old_folder_put_back() {
        let _serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("out");
        // A process id that is not running: above Linux's largest.
        let dead = 4_194_305;
        let staging = tmp.path().join(format!(".out{STAGING_INFIX}{dead}"));
        let aside = tmp.path().join(format!(".out{ASIDE_INFIX}{dead}"));
        fs::create_dir(&staging).unwrap();
        fs::create_dir(&aside).unwrap();
        fs::write(aside.join(MARKER_FILE), "lore sweep\n").unwrap();
        assert!(is_unfinished_output(&staging) && is_unfinished_output(&aside));
        assert!(!is_unfinished_output(&dest));
        let out = OutputFolder::create(&dest, "sweep", false, &[]).unwrap();
        if cfg!(target_os = "linux") {
            assert_eq!(output_command(&dest).as_deref(), Some("sweep"), "put back");
            assert!(!staging.exists());
        }
        drop(out);
    }

    #[test]
    fn a_file_or_a_nameless_path_is_refused() {
        let _serial = serial();
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("f");
        fs::write(&file, "x").unwrap();
        let err = OutputFolder::create(&file, "sweep", true, &[])
            .unwrap_err()
            .to_string();
        assert!(err.contains("it is a file, not a folder"), "{err}");
        assert!(OutputFolder::create(Path::new("/"), "sweep", true, &[]).is_err());
    }
}
