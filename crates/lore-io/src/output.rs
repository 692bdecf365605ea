//! Checks on a command's output files, run before any work, so that a typo cannot destroy a
//! file and an unwritable output is found before hours of computing.
//!
//! [`check_outputs`] compares files by identity (device and inode after following links, so
//! `./d`, `d`, a link to `d` and a hard link to `d` are one file), refuses an output that is an
//! input or another output, anything at the output path but a regular file we may write (a
//! FIFO, socket, device or folder; a read-only file), and an output folder where no file can be
//! created. A link at the output path is followed: its target is written (atomically, next to
//! the target). The inputs' sizes and modification times are recorded, so that
//! [`CheckedOutputs::inputs_unchanged`] can refuse to write results computed from a file that
//! another program rewrote during the run.

use std::fs::{self, Metadata, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::SystemTime;

use crate::error::{IoError, Result};

/// Links followed at most when resolving an output path (as the kernel's own limit).
const MAX_LINKS: usize = 40;

/// Output paths checked by [`check_outputs`], with the inputs' state at the start of the run.
#[derive(Debug)]
pub struct CheckedOutputs {
    outputs: Vec<CheckedOutput>,
    inputs: Vec<InputStamp>,
}

/// One checked output: the flag, the path as given and the file to write.
#[derive(Debug)]
struct CheckedOutput {
    flag: String,
    given: PathBuf,
    target: PathBuf,
}

/// An input file's identity, size and modification time when the run started.
#[derive(Debug)]
struct InputStamp {
    flag: String,
    path: PathBuf,
    stamp: Stamp,
}

/// What [`CheckedOutputs::inputs_unchanged`] compares: a rewrite in place changes the size or
/// the modification time, a replacement the inode.
#[derive(Debug, PartialEq, Eq)]
struct Stamp {
    id: FileId,
    len: u64,
    modified: Option<SystemTime>,
}

/// Which file a path names: an existing file's device and inode, or, for a file not yet
/// created, its canonical folder joined with its name.
#[derive(Debug, Clone, PartialEq, Eq)]
enum FileId {
    Existing(u64, u64),
    New(PathBuf),
}

impl CheckedOutputs {
    /// The file to write for `flag` (a link's target, else the path given); `None` when the
    /// flag was not checked.
    pub fn path(&self, flag: &str) -> Option<&Path> {
        self.outputs
            .iter()
            .find(|o| o.flag == flag)
            .map(|o| o.target.as_path())
    }

    /// One note per output given as a link: `--out x is a link: writing its target y`.
    pub fn notes(&self) -> Vec<String> {
        self.outputs
            .iter()
            .filter(|o| o.given != o.target)
            .map(|o| {
                format!(
                    "{} {} is a link: writing its target {}",
                    o.flag,
                    o.given.display(),
                    o.target.display()
                )
            })
            .collect()
    }

    /// Fails with [`IoError::InputChanged`] when an input file was rewritten or replaced since
    /// [`check_outputs`] (call it just before writing: results computed from a file that
    /// changed under the run are not written).
    pub fn inputs_unchanged(&self) -> Result<()> {
        for input in &self.inputs {
            let now = fs::metadata(&input.path).ok().map(|m| stamp(&m));
            if now.as_ref() != Some(&input.stamp) {
                return Err(IoError::InputChanged {
                    flag: input.flag.clone(),
                    path: input.path.clone(),
                });
            }
        }
        Ok(())
    }
}

/// Checks a command's `outputs` (flag, path) against each other and its `inputs` (flag, path)
/// before any work: refuses an output that is an input or another output (compared by
/// identity), anything at an output path but a regular file we may write, and a folder where
/// no file can be created; follows a link at an output path to its target. Inputs that do not
/// exist (yet) or are not regular files are only compared, never recorded; reading them
/// reports their problem.
pub fn check_outputs(
    outputs: &[(&str, &Path)],
    inputs: &[(&str, &Path)],
) -> Result<CheckedOutputs> {
    let mut checked = Vec::with_capacity(outputs.len());
    let mut ids: Vec<FileId> = Vec::with_capacity(outputs.len());
    for &(flag, given) in outputs {
        let refuse = |reason: String| IoError::OutputRefused {
            flag: flag.to_string(),
            path: given.to_path_buf(),
            reason,
        };
        let target = resolve_target(given).map_err(refuse)?;
        check_target(&target).map_err(refuse)?;
        let id = file_id(&target).map_err(|e| refuse(e.to_string()))?;
        for (other, other_id) in checked.iter().zip(&ids) {
            let other: &CheckedOutput = other;
            if *other_id == id {
                return Err(refuse(format!(
                    "it is the same file as {} {}; give the two outputs different paths",
                    other.flag,
                    other.given.display()
                )));
            }
        }
        checked.push(CheckedOutput {
            flag: flag.to_string(),
            given: given.to_path_buf(),
            target,
        });
        ids.push(id);
    }
    let mut stamps = Vec::with_capacity(inputs.len());
    for &(in_flag, input) in inputs {
        let meta = fs::metadata(input).ok();
        let id = match &meta {
            Some(m) => Some(existing_id(m)),
            None => new_id(input).ok(),
        };
        if let Some(id) = id {
            for (out, out_id) in checked.iter().zip(&ids) {
                if *out_id == id {
                    return Err(IoError::OutputRefused {
                        flag: out.flag.clone(),
                        path: out.given.clone(),
                        reason: format!(
                            "it is the same file as the input {in_flag} {}: the output \
                             would replace the input (choose another {} path)",
                            input.display(),
                            out.flag
                        ),
                    });
                }
            }
        }
        if let Some(m) = meta.filter(Metadata::is_file) {
            stamps.push(InputStamp {
                flag: in_flag.to_string(),
                path: input.to_path_buf(),
                stamp: stamp(&m),
            });
        }
    }
    Ok(CheckedOutputs {
        outputs: checked,
        inputs: stamps,
    })
}

/// The file that writing `path` must replace: `path` itself, or, when it is a link (or a chain
/// of links), the file it finally points to, with a canonical folder. Dangling links resolve
/// to their (missing) target.
pub(crate) fn resolve_target(path: &Path) -> std::result::Result<PathBuf, String> {
    if path.as_os_str().is_empty() {
        return Err("the path is empty".into());
    }
    let mut current = path.to_path_buf();
    let mut followed = 0;
    loop {
        match fs::symlink_metadata(&current) {
            Ok(m) if m.file_type().is_symlink() => {
                followed += 1;
                if followed > MAX_LINKS {
                    return Err(format!("more than {MAX_LINKS} links to follow (a loop?)"));
                }
                let link = fs::read_link(&current)
                    .map_err(|e| format!("cannot read the link {}: {e}", current.display()))?;
                current = match current.parent() {
                    Some(parent) => parent.join(link),
                    None => link,
                };
            }
            _ => break,
        }
    }
    if followed == 0 {
        return Ok(path.to_path_buf());
    }
    // A link's target, named by a canonical folder: the temporary file goes next to it.
    let name = current
        .file_name()
        .ok_or_else(|| format!("the link points to {}, not a file", current.display()))?;
    let parent = parent_of(&current);
    let parent = parent
        .canonicalize()
        .map_err(|e| format!("the link points into {}: {e}", parent.display()))?;
    Ok(parent.join(name))
}

/// Refuses anything at `target` but a regular file we may write or nothing, and a folder where
/// no file can be created.
fn check_target(target: &Path) -> std::result::Result<(), String> {
    if target.file_name().is_none() {
        return Err("it does not name a file".into());
    }
    match fs::metadata(target) {
        Ok(m) if m.is_file() => {
            // Write-protected (no write bit for anyone) is refused even where the process could
            // write it anyway (root), as `rm` asks before removing such a file.
            if m.permissions().readonly() {
                return Err(
                    "it is read-only (write-protected); make it writable or choose \
                            another path"
                        .to_string(),
                );
            }
            // Opening for writing (no truncation, no creation) changes nothing in the file.
            if let Err(e) = OpenOptions::new().write(true).open(target) {
                return Err(match e.kind() {
                    std::io::ErrorKind::PermissionDenied => {
                        "it is read-only (permission denied); make it writable or choose \
                         another path"
                            .to_string()
                    }
                    _ => format!("it cannot be opened for writing: {e}"),
                });
            }
        }
        Ok(m) => {
            return Err(format!(
                "it is {}, not a regular file; give the path of a file to create or replace",
                kind_of(&m)
            ))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("cannot inspect it: {e}")),
    }
    let folder = parent_of(target);
    if !folder.is_dir() {
        return Err(format!("folder {} does not exist", folder.display()));
    }
    probe_folder(folder, target)
        .map_err(|e| format!("no file can be created in folder {}: {e}", folder.display()))
}

/// Creates and removes a temporary file in `folder`, as the atomic write will.
fn probe_folder(folder: &Path, target: &Path) -> std::io::Result<()> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let probe = folder.join(format!(".{name}.{}.{n}.probe.tmp", std::process::id()));
    let _unfinished = crate::pending::track_unfinished(&probe);
    OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&probe)?;
    fs::remove_file(&probe)
}

/// The folder holding `path` (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A file type in words, for messages: "a folder", "a FIFO (named pipe)", ...
pub(crate) fn kind_of(meta: &Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_dir() {
        return "a folder";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    "a special file"
}

/// The identity of `path`: its inode if it exists, else its canonical folder and name.
fn file_id(path: &Path) -> std::io::Result<FileId> {
    match fs::metadata(path) {
        Ok(m) => Ok(existing_id(&m)),
        Err(_) => new_id(path),
    }
}

/// The canonical folder of a file not yet created, joined with its name.
fn new_id(path: &Path) -> std::io::Result<FileId> {
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    Ok(FileId::New(parent_of(path).canonicalize()?.join(name)))
}

/// An existing file's device and inode.
#[cfg(unix)]
fn existing_id(meta: &Metadata) -> FileId {
    use std::os::unix::fs::MetadataExt;
    FileId::Existing(meta.dev(), meta.ino())
}

/// Without inodes, an existing file is named by its size and times (a weaker identity).
#[cfg(not(unix))]
fn existing_id(meta: &Metadata) -> FileId {
    let created = meta
        .created()
        .ok()
        .and_then(|t| t.duration_since(SystemTime::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_nanos() as u64);
    FileId::Existing(meta.len(), created)
}

/// `path`'s stamp from its metadata.
fn stamp(meta: &Metadata) -> Stamp {
    Stamp {
        id: existing_id(meta),
        len: meta.len(),
        modified: meta.modified().ok(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(result: Result<CheckedOutputs>) -> String {
        match result {
            Err(e @ IoError::OutputRefused { .. }) => e.to_string(),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn an_output_equal_to_an_input_by_any_spelling_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        fs::write(&data, b"data").unwrap();
        let dotted = dir.path().join(".").join("d");
        let link = dir.path().join("link");
        let hard = dir.path().join("hard");
        #[cfg(unix)]
        std::os::unix::fs::symlink(&data, &link).unwrap();
        fs::hard_link(&data, &hard).unwrap();
        let mut spellings = vec![data.clone(), dotted, hard];
        if cfg!(unix) {
            spellings.push(link);
        }
        for out in &spellings {
            let message = refused(check_outputs(&[("--out", out)], &[("--data", &data)]));
            assert!(
                message.contains("--out") && message.contains("--data"),
                "{message}"
            );
        }
        assert_eq!(fs::read(&data).unwrap(), b"data");
    }

    #[test]
    fn two_outputs_naming_one_file_are_refused_even_before_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("m");
        let b = dir.path().join(".").join("m");
        let message = refused(check_outputs(&[("--out", &a), ("--trace", &b)], &[]));
        assert!(
            message.contains("--trace") && message.contains("--out"),
            "{message}"
        );
        assert!(!a.exists());
    }

    #[test]
    fn folders_and_fifos_and_read_only_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let message = refused(check_outputs(&[("--out", dir.path())], &[]));
        assert!(message.contains("folder"), "{message}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let fifo = dir.path().join("fifo");
            let made = std::process::Command::new("mkfifo").arg(&fifo).status();
            if made.is_ok_and(|s| s.success()) {
                let message = refused(check_outputs(&[("--out", &fifo)], &[]));
                assert!(message.contains("FIFO"), "{message}");
            }
            let ro = dir.path().join("ro");
            fs::write(&ro, b"keep").unwrap();
            fs::set_permissions(&ro, fs::Permissions::from_mode(0o444)).unwrap();
            // Refused for everyone, root included.
            let message = refused(check_outputs(&[("--out", &ro)], &[]));
            assert!(message.contains("read-only"), "{message}");
            assert_eq!(fs::read(&ro).unwrap(), b"keep");
        }
    }

    #[test]
    fn a_missing_folder_is_refused_and_a_link_resolves_to_its_target() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("no").join("m");
        let message = refused(check_outputs(&[("--out", &missing)], &[]));
        assert!(message.contains("does not exist"), "{message}");
        #[cfg(unix)]
        {
            let target = dir.path().join("target");
            let link = dir.path().join("link");
            std::os::unix::fs::symlink("target", &link).unwrap();
            let checked = check_outputs(&[("--out", &link)], &[]).unwrap();
            let resolved = checked.path("--out").unwrap();
            assert_eq!(resolved, dir.path().canonicalize().unwrap().join("target"));
            assert_eq!(checked.notes().len(), 1);
            assert!(!target.exists());
        }
        let names: Vec<_> = fs::read_dir(dir.path()).unwrap().collect();
        assert!(names.len() <= 1, "the probe left a file: {names:?}");
    }

    #[test]
    fn an_input_rewritten_during_the_run_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("d");
        fs::write(&data, b"data").unwrap();
        let out = dir.path().join("out");
        let checked = check_outputs(&[("--out", &out)], &[("--data", &data)]).unwrap();
        checked.inputs_unchanged().unwrap();
        fs::write(&data, b"other data").unwrap();
        let err = checked.inputs_unchanged().unwrap_err();
        assert!(matches!(err, IoError::InputChanged { .. }), "{err}");
        assert!(err.to_string().contains("--data"), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn the_atomic_writer_keeps_the_mode_follows_links_and_spares_special_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("m");
        fs::write(&file, b"old").unwrap();
        fs::set_permissions(&file, fs::Permissions::from_mode(0o640)).unwrap();
        crate::write_bytes_atomic(&file, b"new").unwrap();
        assert_eq!(fs::read(&file).unwrap(), b"new");
        let mode = fs::metadata(&file).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o640);

        let link = dir.path().join("link");
        std::os::unix::fs::symlink("m", &link).unwrap();
        crate::write_bytes_atomic(&link, b"via link").unwrap();
        assert!(fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(&file).unwrap(), b"via link");

        let fifo = dir.path().join("fifo");
        let made = std::process::Command::new("mkfifo").arg(&fifo).status();
        if made.is_ok_and(|s| s.success()) {
            let err = crate::write_bytes_atomic(&fifo, b"x").unwrap_err();
            assert!(err.to_string().contains("FIFO"), "{err}");
            use std::os::unix::fs::FileTypeExt;
            assert!(fs::symlink_metadata(&fifo).unwrap().file_type().is_fifo());
        }
        let mut names: Vec<String> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names.retain(|n| n.starts_with('.'));
        assert!(names.is_empty(), "temporary files left: {names:?}");
    }
}
