//! Building safetensors files and replacing the target atomically.

use std::collections::{BTreeMap, HashSet};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

use half::{bf16, f16};
use lore_core::FeatureRows;
use safetensors::tensor::TensorInfo;
use safetensors::Dtype;
use serde::ser::{SerializeMap, Serializer};
use serde::Serialize;

use crate::error::{IoError, Result};

/// Largest header the safetensors readers accept.
const MAX_HEADER_SIZE: usize = 100_000_000;

/// One tensor to write: dtype, shape and little-endian bytes.
struct Entry {
    name: String,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

/// Builds a safetensors file (tensors plus JSON-encoded metadata) and writes it atomically.
///
/// Mistakes in the calls (a shape that does not match the data, a name used twice) are reported
/// by [`Self::write_atomic`] (and assert in debug builds). Metadata `format` = `"lore"` and
/// `format_version` = `1` are added unless set.
#[derive(Default)]
pub struct TensorWriter {
    tensors: Vec<Entry>,
    names: HashSet<String>,
    metadata: BTreeMap<String, String>,
    problems: Vec<String>,
}

impl std::fmt::Debug for TensorWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tensors: Vec<_> = self
            .tensors
            .iter()
            .map(|t| format!("{} {} {:?}", t.name, t.dtype, t.shape))
            .collect();
        f.debug_struct("TensorWriter")
            .field("tensors", &tensors)
            .field("metadata", &self.metadata)
            .field("problems", &self.problems)
            .finish()
    }
}

impl TensorWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds an F32 tensor.
    pub fn add_f32(&mut self, name: impl Into<String>, shape: &[usize], data: &[f32]) -> &mut Self {
        self.add(
            name.into(),
            Dtype::F32,
            shape,
            data.len(),
            le_bytes(data, f32::to_le_bytes),
        )
    }

    /// Adds an F32 tensor of fitted parameters (weights, a basis, logits): a NaN or infinite
    /// value makes [`Self::write_atomic`] refuse the whole file, so that a diverged fit can
    /// never leave a model that reads back as valid.
    pub fn add_parameter_f32(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        data: &[f32],
    ) -> &mut Self {
        let name = name.into();
        if let Some(i) = data.iter().position(|v| !v.is_finite()) {
            let at = match shape {
                [_, cols] if *cols > 0 => format!("[{}, {}]", i / cols, i % cols),
                _ => format!("[{i}]"),
            };
            // Not a misuse (no debug assertion): the values are the run's results.
            self.problems.push(format!(
                "tensor `{name}` holds {} at {at} (a file of fitted values is never written \
                 with NaN or infinite values)",
                data[i]
            ));
            return self;
        }
        self.add_f32(name, shape, data)
    }

    /// Adds an F16 tensor.
    pub fn add_f16(&mut self, name: impl Into<String>, shape: &[usize], data: &[f16]) -> &mut Self {
        self.add(
            name.into(),
            Dtype::F16,
            shape,
            data.len(),
            le_bytes(data, f16::to_le_bytes),
        )
    }

    /// Adds a BF16 tensor.
    pub fn add_bf16(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        data: &[bf16],
    ) -> &mut Self {
        self.add(
            name.into(),
            Dtype::BF16,
            shape,
            data.len(),
            le_bytes(data, bf16::to_le_bytes),
        )
    }

    /// Adds an F64 tensor (results such as `lore score`'s rewards, kept in double precision).
    pub fn add_f64(&mut self, name: impl Into<String>, shape: &[usize], data: &[f64]) -> &mut Self {
        self.add(
            name.into(),
            Dtype::F64,
            shape,
            data.len(),
            le_bytes(data, f64::to_le_bytes),
        )
    }

    /// Adds an I64 tensor.
    pub fn add_i64(&mut self, name: impl Into<String>, shape: &[usize], data: &[i64]) -> &mut Self {
        self.add(
            name.into(),
            Dtype::I64,
            shape,
            data.len(),
            le_bytes(data, i64::to_le_bytes),
        )
    }

    /// Adds feature rows in their own precision (F32, F16 or BF16).
    pub fn add_features(
        &mut self,
        name: impl Into<String>,
        shape: &[usize],
        rows: FeatureRows<'_>,
    ) -> &mut Self {
        match rows {
            FeatureRows::F32(v) => self.add_f32(name, shape, v),
            FeatureRows::F16(v) => self.add_f16(name, shape, v),
            FeatureRows::Bf16(v) => self.add_bf16(name, shape, v),
        }
    }

    /// Sets metadata `key` to `value` encoded as JSON (our convention for every metadata value).
    pub fn metadata<T: Serialize + ?Sized>(
        &mut self,
        key: impl Into<String>,
        value: &T,
    ) -> &mut Self {
        let key = key.into();
        match serde_json::to_string(value) {
            Ok(json) => {
                self.metadata.insert(key, json);
            }
            Err(e) => self.problem(format!("metadata `{key}` cannot be encoded as JSON: {e}")),
        }
        self
    }

    /// Sets metadata `key` to `value` verbatim.
    pub fn metadata_raw(&mut self, key: impl Into<String>, value: impl Into<String>) -> &mut Self {
        self.metadata.insert(key.into(), value.into());
        self
    }

    /// The file's bytes, as [`Self::write_atomic`] would write them (`path` names the file in
    /// messages), for files kept in memory.
    pub fn encode(&self, path: impl AsRef<Path>) -> Result<Vec<u8>> {
        let path = path.as_ref();
        if let Some(problem) = self.problems.first() {
            return Err(encode_error(path, problem.clone()));
        }
        let (header, order) = self.header().map_err(|reason| encode_error(path, reason))?;
        let data: usize = self.tensors.iter().map(|t| t.bytes.len()).sum();
        let mut out = Vec::with_capacity(8 + header.len() + data);
        out.extend_from_slice(&(header.len() as u64).to_le_bytes());
        out.extend_from_slice(&header);
        for &i in &order {
            out.extend_from_slice(&self.tensors[i].bytes);
        }
        Ok(out)
    }

    /// Writes the file atomically, like [`write_bytes_atomic`]: the target is never seen
    /// half-written, and nothing is left behind on error.
    pub fn write_atomic(&self, path: impl AsRef<Path>) -> Result<()> {
        let path = path.as_ref();
        if let Some(problem) = self.problems.first() {
            return Err(encode_error(path, problem.clone()));
        }
        let (header, order) = self.header().map_err(|reason| encode_error(path, reason))?;
        write_with(path, |out| {
            out.write_all(&(header.len() as u64).to_le_bytes())?;
            out.write_all(&header)?;
            for &i in &order {
                out.write_all(&self.tensors[i].bytes)?;
            }
            Ok(())
        })
    }

    /// Records a tensor after checking its name and that `shape` holds `len` values.
    fn add(
        &mut self,
        name: String,
        dtype: Dtype,
        shape: &[usize],
        len: usize,
        bytes: Vec<u8>,
    ) -> &mut Self {
        let count = shape.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        if count != Some(len) {
            self.problem(format!(
                "tensor `{name}`: shape {shape:?} does not hold the {len} values given"
            ));
        } else if name == "__metadata__" {
            self.problem("`__metadata__` is reserved and cannot name a tensor".into());
        } else if !self.names.insert(name.clone()) {
            self.problem(format!("tensor `{name}` was added twice"));
        } else {
            self.tensors.push(Entry {
                name,
                dtype,
                shape: shape.to_vec(),
                bytes,
            });
        }
        self
    }

    /// Remembers a misuse for `write_atomic`, asserting in debug builds.
    fn problem(&mut self, problem: String) {
        debug_assert!(false, "TensorWriter misuse: {problem}");
        self.problems.push(problem);
    }

    /// The padded JSON header and the order in which tensor data follows it (by descending
    /// dtype alignment, then name, as the safetensors crate writes).
    fn header(&self) -> std::result::Result<(Vec<u8>, Vec<usize>), String> {
        let mut order: Vec<usize> = (0..self.tensors.len()).collect();
        order.sort_by(|&a, &b| {
            let (a, b) = (&self.tensors[a], &self.tensors[b]);
            b.dtype.cmp(&a.dtype).then_with(|| a.name.cmp(&b.name))
        });
        let mut offset = 0;
        let infos: Vec<(&str, TensorInfo)> = order
            .iter()
            .map(|&i| {
                let t = &self.tensors[i];
                let start = offset;
                offset += t.bytes.len();
                let info = TensorInfo {
                    dtype: t.dtype,
                    shape: t.shape.clone(),
                    data_offsets: (start, offset),
                };
                (t.name.as_str(), info)
            })
            .collect();
        let mut metadata = self.metadata.clone();
        metadata
            .entry("format".into())
            .or_insert_with(|| "\"lore\"".into());
        metadata
            .entry("format_version".into())
            .or_insert_with(|| "1".into());

        let mut json = Vec::new();
        let mut ser = serde_json::Serializer::new(&mut json);
        (|| {
            let mut map = ser.serialize_map(Some(infos.len() + 1))?;
            map.serialize_entry("__metadata__", &metadata)?;
            for (name, info) in &infos {
                map.serialize_entry(name, info)?;
            }
            map.end()
        })()
        .map_err(|e| format!("cannot encode the header: {e}"))?;
        json.resize(json.len().next_multiple_of(8), b' ');
        if json.len() > MAX_HEADER_SIZE {
            return Err(format!(
                "the header takes {} bytes, more than safetensors allows ({MAX_HEADER_SIZE})",
                json.len()
            ));
        }
        Ok((json, order))
    }
}

/// Writes `bytes` to `path` atomically: into a temporary sibling (`.{name}.{pid}.{n}.tmp`),
/// synced, then renamed over `path`. The temporary file is removed on any error. A link at
/// `path` is followed (its target is replaced), a replaced file keeps its mode, and anything
/// but a regular file we may write is refused.
pub fn write_bytes_atomic(path: impl AsRef<Path>, bytes: &[u8]) -> Result<()> {
    write_with(path.as_ref(), |out| out.write_all(bytes))
}

/// Writes a file atomically from a producer that streams its content (for outputs too large
/// to hold in memory): `fill` writes into a buffered temporary file, renamed over `path` on
/// success and removed on any error.
pub fn write_atomic_with(
    path: impl AsRef<Path>,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    write_with(path.as_ref(), fill)
}

/// The atomic write behind [`write_bytes_atomic`] and [`TensorWriter::write_atomic`]:
/// `fill` writes the content into a buffered temporary file.
///
/// A link at `path` is followed and its target replaced (the temporary file goes next to the
/// target); anything else but a regular file we may write, or nothing, is refused (a FIFO, a
/// device, a read-only file are never replaced). A replaced file keeps its permission mode
/// (and, where allowed, its owner).
fn write_with(
    path: &Path,
    fill: impl FnOnce(&mut BufWriter<File>) -> std::io::Result<()>,
) -> Result<()> {
    let write_err = |cause| IoError::Write {
        path: path.to_path_buf(),
        cause,
    };
    let target = crate::output::resolve_target(path)
        .map_err(|reason| write_err(std::io::Error::other(reason)))?;
    let existing = match fs::metadata(&target) {
        Ok(meta) if meta.is_file() => {
            if meta.permissions().readonly() {
                return Err(write_err(std::io::Error::other(
                    "it is read-only (write-protected)",
                )));
            }
            // Refuses a file we may not write (opening for writing changes nothing in it).
            OpenOptions::new()
                .write(true)
                .open(&target)
                .map_err(write_err)?;
            Some(meta)
        }
        Ok(meta) => {
            return Err(write_err(std::io::Error::other(format!(
                "it is {}, not a regular file",
                crate::output::kind_of(&meta)
            ))))
        }
        Err(_) => None,
    };
    let tmp = temp_path(&target).map_err(write_err)?;
    let _unfinished = crate::pending::track_unfinished(&tmp);
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&tmp)
        .map_err(write_err)?;
    let result = (|| {
        if let Some(meta) = &existing {
            keep_owner_and_mode(&file, meta)?;
        }
        let mut out = BufWriter::with_capacity(1 << 20, file);
        fill(&mut out)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        drop(file);
        fs::rename(&tmp, &target)
    })();
    if let Err(cause) = result {
        let _ = fs::remove_file(&tmp);
        return Err(write_err(cause));
    }
    sync_parent(&target);
    Ok(())
}

/// Gives the new file the permission mode of the file it replaces, and its owner where the
/// process may (best effort: only root can give a file away).
fn keep_owner_and_mode(file: &File, replaced: &fs::Metadata) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let mine = file.metadata()?;
        if (mine.uid(), mine.gid()) != (replaced.uid(), replaced.gid()) {
            let _ = std::os::unix::fs::fchown(file, Some(replaced.uid()), Some(replaced.gid()));
        }
    }
    file.set_permissions(replaced.permissions())
}

/// Little-endian bytes of `data` (a plain copy on little-endian hosts).
fn le_bytes<T: bytemuck::Pod, const N: usize>(data: &[T], to_le: fn(T) -> [u8; N]) -> Vec<u8> {
    if cfg!(target_endian = "little") {
        bytemuck::cast_slice(data).to_vec()
    } else {
        data.iter().flat_map(|&v| to_le(v)).collect()
    }
}

/// The encoding error for `path`.
fn encode_error(path: &Path, reason: String) -> IoError {
    IoError::Encode {
        path: path.to_path_buf(),
        reason,
    }
}

/// A fresh temporary name next to `path`: `.{file name}.{pid}.{counter}.tmp`.
fn temp_path(path: &Path) -> std::io::Result<PathBuf> {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    let name = path
        .file_name()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file name"))?;
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let tmp = format!(".{}.{}.{n}.tmp", name.to_string_lossy(), std::process::id());
    Ok(path.with_file_name(tmp))
}

/// Makes the rename durable by syncing the directory (best effort: not every platform can).
fn sync_parent(path: &Path) {
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    };
    if let Ok(dir) = File::open(parent) {
        let _ = dir.sync_all();
    }
}
