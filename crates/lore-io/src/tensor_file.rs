//! An opened safetensors file: memory-mapped, header validated, tensors read by name and dtype.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io::Read;
use std::ops::Range;
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use lore_core::FeatureRows;
use memmap2::Mmap;
use safetensors::tensor::{Metadata, TensorInfo};
use safetensors::{Dtype, SafeTensorError, SafeTensors};
use serde::de::{DeserializeOwned, IntoDeserializer};

use crate::decode;
use crate::error::{IoError, Result};

/// Dtypes accepted as feature rows.
pub(crate) const FEATURE_DTYPES: &[&str] = &["F32", "F16", "BF16"];

/// The bytes of a file: mapped, or read into an 8-byte aligned buffer when mapping fails.
enum Bytes {
    Mapped(Mmap),
    Owned { words: Vec<u64>, len: usize },
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Mapped(map) => map,
            Bytes::Owned { words, len } => &bytemuck::cast_slice(words)[..*len],
        }
    }
}

/// A safetensors file opened for reading: memory-mapped (or read when mapping fails), with its
/// header validated so every tensor lies inside the file.
///
/// The map assumes nobody truncates or rewrites the file in place while it is open; files
/// written by [`crate::TensorWriter`] are replaced by rename, which is safe.
pub struct TensorFile {
    path: PathBuf,
    bytes: Bytes,
    header: Metadata,
    data_start: usize,
    metadata: BTreeMap<String, String>,
}

impl fmt::Debug for TensorFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TensorFile")
            .field("path", &self.path)
            .field("len", &self.as_bytes().len())
            .field("mapped", &self.is_mapped())
            .field("tensors", &self.names())
            .finish_non_exhaustive()
    }
}

/// Feature rows read from a file: borrowed from the map when aligned, else an owned copy.
#[derive(Debug, Clone)]
pub enum Features<'a> {
    /// Zero-copy view into the file's bytes.
    Borrowed(FeatureRows<'a>),
    /// Decoded copy (misaligned data or a big-endian host).
    Owned(OwnedFeatures),
}

impl Features<'_> {
    /// The rows as the core's view type.
    pub fn rows(&self) -> FeatureRows<'_> {
        match self {
            Features::Borrowed(rows) => *rows,
            Features::Owned(owned) => owned.rows(),
        }
    }

    /// True when the rows point into the file without a copy.
    pub fn is_borrowed(&self) -> bool {
        matches!(self, Features::Borrowed(_))
    }

    /// An owned copy (no copy when already owned).
    pub fn into_owned(self) -> OwnedFeatures {
        match self {
            Features::Borrowed(rows) => OwnedFeatures::from_rows(rows),
            Features::Owned(owned) => owned,
        }
    }
}

/// Feature values owned in their storage precision.
#[derive(Debug, Clone, PartialEq)]
pub enum OwnedFeatures {
    /// Single precision.
    F32(Vec<f32>),
    /// Half precision.
    F16(Vec<f16>),
    /// Brain floating point.
    Bf16(Vec<bf16>),
}

impl OwnedFeatures {
    /// The values as the core's view type.
    pub fn rows(&self) -> FeatureRows<'_> {
        match self {
            OwnedFeatures::F32(v) => FeatureRows::F32(v),
            OwnedFeatures::F16(v) => FeatureRows::F16(v),
            OwnedFeatures::Bf16(v) => FeatureRows::Bf16(v),
        }
    }

    /// A copy of `rows`, keeping the precision.
    pub fn from_rows(rows: FeatureRows<'_>) -> Self {
        match rows {
            FeatureRows::F32(v) => OwnedFeatures::F32(v.to_vec()),
            FeatureRows::F16(v) => OwnedFeatures::F16(v.to_vec()),
            FeatureRows::Bf16(v) => OwnedFeatures::Bf16(v.to_vec()),
        }
    }

    /// Rows `order[0], order[1], ...` of `rows` (rows of `n_features` values), in that order.
    pub fn gather(rows: FeatureRows<'_>, n_features: usize, order: &[usize]) -> Self {
        fn pick<T: Copy>(v: &[T], f: usize, order: &[usize]) -> Vec<T> {
            let mut out = Vec::with_capacity(order.len() * f);
            for &i in order {
                out.extend_from_slice(&v[i * f..(i + 1) * f]);
            }
            out
        }
        match rows {
            FeatureRows::F32(v) => OwnedFeatures::F32(pick(v, n_features, order)),
            FeatureRows::F16(v) => OwnedFeatures::F16(pick(v, n_features, order)),
            FeatureRows::Bf16(v) => OwnedFeatures::Bf16(pick(v, n_features, order)),
        }
    }
}

impl TensorFile {
    /// Opens and maps `path`, validating the safetensors header (a truncated or garbage file is
    /// an [`IoError::Invalid`], never a panic).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let open_err = |cause| IoError::Open {
            path: path.clone(),
            cause,
        };
        check_regular_file(&path).map_err(open_err)?;
        let mut file = File::open(&path).map_err(open_err)?;
        let bytes = match map(&file) {
            Ok(map) => Bytes::Mapped(map),
            Err(_) => read_aligned(&mut file).map_err(open_err)?,
        };
        Self::parse(path, bytes)
    }

    /// A file held in memory (what [`crate::TensorWriter::encode`] made, say), validated as
    /// [`Self::open`] validates a file; `path` names it in messages.
    pub fn from_bytes(path: impl AsRef<Path>, bytes: &[u8]) -> Result<Self> {
        let mut words = vec![0u64; bytes.len().div_ceil(8)];
        bytemuck::cast_slice_mut(&mut words)[..bytes.len()].copy_from_slice(bytes);
        let bytes = Bytes::Owned {
            words,
            len: bytes.len(),
        };
        Self::parse(path.as_ref().to_path_buf(), bytes)
    }

    /// Validates the header of `bytes`, the content of `path`.
    fn parse(path: PathBuf, bytes: Bytes) -> Result<Self> {
        let (n, header) =
            SafeTensors::read_metadata(bytes.as_slice()).map_err(|e| IoError::Invalid {
                path: path.clone(),
                reason: invalid_reason(&e, bytes.as_slice()),
            })?;
        let metadata = header
            .metadata()
            .as_ref()
            .map(|m| m.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default();
        Ok(Self {
            path,
            bytes,
            header,
            data_start: 8 + n,
            metadata,
        })
    }

    /// The path the file was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The whole file's bytes (the map), for callers that check where a borrowed slice lies.
    pub fn as_bytes(&self) -> &[u8] {
        self.bytes.as_slice()
    }

    /// True when the file is memory-mapped rather than read into memory.
    pub fn is_mapped(&self) -> bool {
        matches!(self.bytes, Bytes::Mapped(_))
    }

    /// Names of all tensors, sorted.
    pub fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.header.offset_keys();
        names.sort();
        names
    }

    /// True when the file has a tensor called `name`.
    pub fn has(&self, name: &str) -> bool {
        self.header.info(name).is_some()
    }

    /// Shape of tensor `name`.
    pub fn shape(&self, name: &str) -> Result<Vec<usize>> {
        Ok(self.info(name)?.shape.clone())
    }

    /// Safetensors dtype of tensor `name` as written in the header (`F32`, `I64`, ...).
    pub fn dtype_name(&self, name: &str) -> Result<String> {
        Ok(self.info(name)?.dtype.to_string())
    }

    /// The header's `__metadata__` (empty when absent).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Metadata `key` parsed as JSON (`None` when absent). A value that is not JSON is still
    /// accepted as itself when `T` is a string.
    pub fn metadata_json<T: DeserializeOwned>(&self, key: &str) -> Result<Option<T>> {
        let Some(raw) = self.metadata.get(key) else {
            return Ok(None);
        };
        match serde_json::from_str(raw) {
            Ok(value) => Ok(Some(value)),
            Err(json_err) => {
                let as_str: std::result::Result<T, serde::de::value::Error> =
                    T::deserialize(raw.as_str().into_deserializer());
                as_str.map(Some).map_err(|_| IoError::Metadata {
                    path: self.path.clone(),
                    key: key.to_string(),
                    reason: format!("cannot read {}: {json_err}", quote_short(raw)),
                })
            }
        }
    }

    /// Raw little-endian bytes of tensor `name`.
    pub fn tensor_bytes(&self, name: &str) -> Result<&[u8]> {
        let range = self.byte_range(self.info(name)?);
        Ok(&self.as_bytes()[range])
    }

    /// Tensor `name` as f32 (from F32, F16, BF16 or F64), with its shape.
    pub fn tensor_f32(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let info = self.info(name)?;
        let bytes = &self.as_bytes()[self.byte_range(info)];
        let values = decode::to_f32(info.dtype, bytes)
            .ok_or_else(|| self.dtype_error(name, info.dtype, decode::FLOAT_DTYPES))?;
        Ok((info.shape.clone(), values))
    }

    /// Tensor `name` as i64 (from I64, I32, U32, I16, U16, U8 or I8), with its shape.
    pub fn tensor_indices(&self, name: &str) -> Result<(Vec<usize>, Vec<i64>)> {
        let info = self.info(name)?;
        let bytes = &self.as_bytes()[self.byte_range(info)];
        let values = decode::to_i64(info.dtype, bytes)
            .ok_or_else(|| self.dtype_error(name, info.dtype, decode::INDEX_DTYPES))?;
        Ok((info.shape.clone(), values))
    }

    /// Tensor `name` (F32, F16 or BF16) as feature rows in its own precision, with its shape:
    /// borrowed from the map when aligned, copied otherwise.
    pub fn features(&self, name: &str) -> Result<(Vec<usize>, Features<'_>)> {
        let info = self.info(name)?;
        let bytes = &self.as_bytes()[self.byte_range(info)];
        let features = match borrow_rows(info.dtype, bytes) {
            Some(rows) => Features::Borrowed(rows),
            None => Features::Owned(match info.dtype {
                Dtype::F32 => OwnedFeatures::F32(decode::f32_vec(bytes)),
                Dtype::F16 => OwnedFeatures::F16(decode::f16_vec(bytes)),
                Dtype::BF16 => OwnedFeatures::Bf16(decode::bf16_vec(bytes)),
                other => return Err(self.dtype_error(name, other, FEATURE_DTYPES)),
            }),
        };
        Ok((info.shape.clone(), features))
    }

    /// Header entry of tensor `name`, or the missing-tensor error listing what the file has.
    pub(crate) fn info(&self, name: &str) -> Result<&TensorInfo> {
        self.header
            .info(name)
            .ok_or_else(|| IoError::MissingTensor {
                path: self.path.clone(),
                name: name.to_string(),
                found: self.names(),
            })
    }

    /// Range of a tensor's bytes within [`Self::as_bytes`] (validated on open).
    pub(crate) fn byte_range(&self, info: &TensorInfo) -> Range<usize> {
        let (start, end) = info.data_offsets;
        self.data_start + start..self.data_start + end
    }

    /// The error for tensor `name` stored as `dtype` when one of `expected` was needed.
    pub(crate) fn dtype_error(
        &self,
        name: &str,
        dtype: Dtype,
        expected: &[&'static str],
    ) -> IoError {
        IoError::Dtype {
            path: self.path.clone(),
            name: name.to_string(),
            dtype: dtype.to_string(),
            expected: expected.to_vec(),
        }
    }

    /// An error of the core about this file's data.
    pub(crate) fn core_error(&self, cause: lore_core::LoreError) -> IoError {
        IoError::Core {
            path: self.path.clone(),
            cause,
        }
    }
}

/// Zero-copy feature rows over `bytes` of `dtype`, when the dtype is a feature dtype, the host
/// is little-endian and the bytes are aligned.
pub(crate) fn borrow_rows(dtype: Dtype, bytes: &[u8]) -> Option<FeatureRows<'_>> {
    match dtype {
        Dtype::F32 => decode::borrow_le::<f32>(bytes).map(FeatureRows::F32),
        Dtype::F16 => decode::borrow_le::<f16>(bytes).map(FeatureRows::F16),
        Dtype::BF16 => decode::borrow_le::<bf16>(bytes).map(FeatureRows::Bf16),
        _ => None,
    }
}

/// A clearer reason than the safetensors crate's for the usual ways a file is broken.
fn invalid_reason(error: &SafeTensorError, bytes: &[u8]) -> String {
    let len = bytes.len();
    let n = bytes
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("8 bytes")));
    match (error, n) {
        (SafeTensorError::HeaderTooSmall, _) => {
            format!("the file has {len} bytes, fewer than the 8-byte header length (truncated?)")
        }
        (SafeTensorError::HeaderTooLarge, Some(n)) => {
            format!("header length {n} is above the 100 MB limit (not a safetensors file?)")
        }
        (SafeTensorError::InvalidHeaderLength, Some(n)) => {
            format!("header length {n} runs past the end of the file ({len} bytes; truncated?)")
        }
        (SafeTensorError::MetadataIncompleteBuffer, _) => format!(
            "the tensors in the header do not cover exactly the {len}-byte file (truncated or \
             trailing bytes?)"
        ),
        (error, _) => error.to_string(),
    }
}

/// `raw` quoted, shortened to its first 40 characters.
fn quote_short(raw: &str) -> String {
    match raw.char_indices().nth(40) {
        Some((cut, _)) => format!("{:?}...", &raw[..cut]),
        None => format!("{raw:?}"),
    }
}

/// Refuses, before opening, what cannot be a safetensors file: a folder, or a FIFO, socket or
/// device (opening a FIFO would wait for a writer, and its bytes could not be mapped).
pub(crate) fn check_regular_file(path: &Path) -> std::io::Result<()> {
    let meta = std::fs::metadata(path)?;
    if meta.is_dir() {
        return Err(std::io::Error::other("is a folder, not a file"));
    }
    if !meta.is_file() {
        return Err(std::io::Error::other(format!(
            "is not a regular file ({})",
            special_kind(&meta.file_type())
        )));
    }
    Ok(())
}

/// What a file that is not regular is, in words (`a FIFO?` when unknown).
pub(crate) fn special_kind(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    let _ = kind;
    "a FIFO?"
}

/// Maps `file` read-only.
#[allow(unsafe_code)]
fn map(file: &File) -> std::io::Result<Mmap> {
    // SAFETY: the map is read-only and private to this process; like every reader of mapped
    // files we rely on the file not being truncated or modified in place while it is mapped.
    unsafe { Mmap::map(file) }
}

/// Reads the whole file into an 8-byte aligned buffer, so that tensors can still be borrowed.
fn read_aligned(file: &mut File) -> std::io::Result<Bytes> {
    let len = usize::try_from(file.metadata()?.len()).map_err(std::io::Error::other)?;
    let mut words = vec![0u64; len.div_ceil(8)];
    file.read_exact(&mut bytemuck::cast_slice_mut(&mut words)[..len])?;
    Ok(Bytes::Owned { words, len })
}
