//! How a file's features were made: the embedder's identity, carried from `lore embed`'s
//! preference file through split, fit, sweep, auto and personalize into every model and users
//! file, so that a server (or a later fit) can refuse features made another way.
//!
//! Stored as one JSON metadata entry `embedder`. Preference files written before that entry
//! existed carry the same facts as separate keys (`model`, `model_path`, `architecture`,
//! `pooling`, `normalized`, `max_length`, `dim`, `text_format`, `weights_dtype`); they are read
//! too.

use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::error::{IoError, Result};
use crate::tensor_file::TensorFile;
use crate::writer::TensorWriter;

/// What turned texts into the features of a file: the embedding model and every setting that
/// changes the vectors (so features of two files may be mixed only when these agree).
///
/// ```
/// # fn main() -> lore_io::Result<()> {
/// use lore_io::{EmbedderIdentity, TensorFile, TensorWriter};
///
/// let minilm = EmbedderIdentity {
///     name: "sentence-transformers/all-MiniLM-L6-v2".into(),
///     model_path: "/models/minilm".into(),
///     architecture: "bert".into(),
///     pooling: "mean".into(),
///     normalized: true,
///     max_length: 256,
///     dim: 384,
///     text_format: "prompt + \"\\n\\n\" + response".into(),
///     weights_dtype: "f32".into(),
/// };
/// let dir = tempfile::tempdir().unwrap();
/// let path = dir.path().join("prefs.safetensors");
/// let mut out = TensorWriter::new();
/// out.add_f32("x", &[1, 2], &[0.5, -0.5]);
/// minilm.write_to(&mut out);
/// out.write_atomic(&path)?;
///
/// let read = EmbedderIdentity::read(&TensorFile::open(&path)?)?;
/// assert_eq!(read.as_ref(), Some(&minilm));
/// let shorter = EmbedderIdentity { max_length: 128, ..minilm.clone() };
/// assert!(minilm.mismatch(&shorter).unwrap().contains("max_length"));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EmbedderIdentity {
    /// The model's name (`sentence-transformers/all-MiniLM-L6-v2` for `minilm`, else the
    /// model directory as given to `lore embed`).
    pub name: String,
    /// The model directory the weights were read from (where, not what: not compared).
    pub model_path: String,
    /// `bert` (sentence encoder) or `llama` (decoder reward model).
    pub architecture: String,
    /// How token states become one vector: `mean`, `cls` or `last_token`.
    pub pooling: String,
    /// Whether the vectors are L2-normalized.
    pub normalized: bool,
    /// Longest input in tokens; longer inputs were truncated.
    pub max_length: usize,
    /// Feature dimension F.
    pub dim: usize,
    /// How a (prompt, response) side became the model's text.
    pub text_format: String,
    /// The dtype the weights were stored in (computation is f32 either way: not compared).
    #[serde(default)]
    pub weights_dtype: String,
}

/// The separate keys `lore embed` wrote before the `embedder` entry, read when it is absent.
const LEGACY_KEYS: [&str; 7] = [
    "model",
    "architecture",
    "pooling",
    "normalized",
    "max_length",
    "dim",
    "text_format",
];

impl EmbedderIdentity {
    /// The metadata key holding the identity as one JSON object.
    pub const METADATA_KEY: &'static str = "embedder";

    /// The identity recorded in `file`: its `embedder` entry, else (preference files written
    /// before it existed) the separate keys `model`, `architecture`, `pooling`, `normalized`,
    /// `max_length`, `dim`, `text_format` (and `model_path`, `weights_dtype` when present);
    /// `None` when the file records neither (simulated features, files of older fits).
    pub fn read(file: &TensorFile) -> Result<Option<Self>> {
        let metadata = file.metadata();
        if let Some(raw) = metadata.get(Self::METADATA_KEY) {
            return serde_json::from_str(raw)
                .map(Some)
                .map_err(|e| IoError::Metadata {
                    path: file.path().to_path_buf(),
                    key: Self::METADATA_KEY.into(),
                    reason: format!(
                        "not an embedder description (a JSON object with name, model_path, \
                         architecture, pooling, normalized, max_length, dim, text_format): {e}"
                    ),
                });
        }
        // Every key that changes the features must be there: `model` alone also names the
        // model file of a users file, and a reference head's file records only `model`.
        if !LEGACY_KEYS.iter().all(|key| metadata.contains_key(*key)) {
            return Ok(None);
        }
        let get = |key: &str| -> Result<String> {
            Ok(file.metadata_json::<String>(key)?.unwrap_or_default())
        };
        let number = |key: &str| -> Result<usize> {
            file.metadata_json::<usize>(key)?
                .ok_or_else(|| unreachable_missing(file, key))
        };
        Ok(Some(Self {
            name: get("model")?,
            model_path: get("model_path")?,
            architecture: get("architecture")?,
            pooling: get("pooling")?,
            normalized: file
                .metadata_json::<bool>("normalized")?
                .ok_or_else(|| unreachable_missing(file, "normalized"))?,
            max_length: number("max_length")?,
            dim: number("dim")?,
            text_format: get("text_format")?,
            weights_dtype: get("weights_dtype")?,
        }))
    }

    /// The identity recorded in the safetensors file at `path` (see [`Self::read`]).
    pub fn read_path(path: impl AsRef<Path>) -> Result<Option<Self>> {
        Self::read(&TensorFile::open(path)?)
    }

    /// Adds the identity to `out` as the metadata entry [`Self::METADATA_KEY`].
    pub fn write_to<'w>(&self, out: &'w mut TensorWriter) -> &'w mut TensorWriter {
        out.metadata(Self::METADATA_KEY, self)
    }

    /// Why features made by `self` and by `other` differ, as one line naming the first field
    /// that changes the vectors (name, architecture, pooling, normalized, max_length, dim,
    /// text_format); `None` when they are made the same way. `model_path` (where the weights
    /// were) and `weights_dtype` (computation is f32 either way) are not compared; names are
    /// compared by their last path component, so `./minilm` and `/models/minilm` agree.
    pub fn mismatch(&self, other: &Self) -> Option<String> {
        let differ = |field: &str, a: &dyn fmt::Debug, b: &dyn fmt::Debug| {
            Some(format!("{field} {a:?} differs from {b:?}"))
        };
        if short_name(&self.name) != short_name(&other.name) {
            return differ("embedder name", &self.name, &other.name);
        }
        if self.architecture != other.architecture {
            return differ("architecture", &self.architecture, &other.architecture);
        }
        if self.pooling != other.pooling {
            return differ("pooling", &self.pooling, &other.pooling);
        }
        if self.normalized != other.normalized {
            return differ("normalized", &self.normalized, &other.normalized);
        }
        if self.max_length != other.max_length {
            return differ("max_length", &self.max_length, &other.max_length);
        }
        if self.dim != other.dim {
            return differ("dim", &self.dim, &other.dim);
        }
        if self.text_format != other.text_format {
            return differ("text_format", &self.text_format, &other.text_format);
        }
        None
    }

    /// The first mismatch among files' identities, as one line naming the two files: each
    /// item is (file, its identity or `None`). Files without an identity are not compared
    /// (simulated features); `None` when all recorded identities agree.
    pub fn first_conflict<'a>(
        files: impl IntoIterator<Item = (&'a Path, Option<&'a EmbedderIdentity>)>,
    ) -> Option<String> {
        let mut first: Option<(&Path, &EmbedderIdentity)> = None;
        for (path, identity) in files {
            let Some(identity) = identity else { continue };
            match first {
                None => first = Some((path, identity)),
                Some((first_path, first_identity)) => {
                    if let Some(reason) = identity.mismatch(first_identity) {
                        return Some(format!(
                            "{} and {} were embedded differently ({reason}): their features \
                             cannot be mixed (embed both with the same model and settings)",
                            path.display(),
                            first_path.display()
                        ));
                    }
                }
            }
        }
        None
    }

    /// One line for summaries: `NAME (ARCH, POOLING pooling, max N tokens, F = DIM)`.
    pub fn describe(&self) -> String {
        format!(
            "{} ({}, {} pooling{}, max {} tokens, F = {})",
            self.name,
            self.architecture,
            self.pooling,
            if self.normalized { ", normalized" } else { "" },
            self.max_length,
            self.dim
        )
    }
}

impl fmt::Display for EmbedderIdentity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.describe())
    }
}

/// The last path component of a model name (`./models/minilm/` -> `minilm`).
fn short_name(name: &str) -> &str {
    let trimmed = name.trim_end_matches(['/', '\\']);
    trimmed.rsplit(['/', '\\']).next().unwrap_or(trimmed)
}

/// The error for a legacy key checked present but read as absent (cannot happen: kept to
/// avoid a panic path).
fn unreachable_missing(file: &TensorFile, key: &str) -> IoError {
    IoError::Metadata {
        path: file.path().to_path_buf(),
        key: key.into(),
        reason: "missing".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::short_name;

    #[test]
    fn short_names() {
        assert_eq!(short_name("./models/minilm/"), "minilm");
        assert_eq!(short_name("minilm"), "minilm");
        assert_eq!(
            short_name("sentence-transformers/all-MiniLM-L6-v2"),
            "all-MiniLM-L6-v2"
        );
    }
}
