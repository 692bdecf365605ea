//! The [`Embedder`] trait: what the pipeline needs from a model.

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Result;
use crate::input::Text;

/// What an embedder computes, recorded in the output file's metadata.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EmbedderInfo {
    /// A name for the model (the directory's name unless set).
    pub name: String,
    /// The model directory.
    pub path: PathBuf,
    /// `bert` (sentence encoder) or `llama` (decoder reward model).
    pub architecture: &'static str,
    /// How token states become one vector: `mean` or `cls` (encoders), `last_token` (decoders).
    pub pooling: &'static str,
    /// Whether vectors are L2-normalized.
    pub normalized: bool,
    /// Longest input in tokens; longer inputs are truncated.
    pub max_length: usize,
    /// Feature dimension F.
    pub dim: usize,
    /// How a (prompt, response) side becomes the model's text.
    pub text_format: &'static str,
    /// The dtype the weights are stored in (computation is always f32).
    pub weights_dtype: String,
}

impl EmbedderInfo {
    /// The identity recorded in preference, model and users files (metadata `embedder`), so
    /// that features made by another model or setting can be refused later.
    pub fn identity(&self) -> lore_io::EmbedderIdentity {
        lore_io::EmbedderIdentity {
            name: self.name.clone(),
            model_path: self.path.display().to_string(),
            architecture: self.architecture.to_string(),
            pooling: self.pooling.to_string(),
            normalized: self.normalized,
            max_length: self.max_length,
            dim: self.dim,
            text_format: self.text_format.to_string(),
            weights_dtype: self.weights_dtype.clone(),
        }
    }
}

/// The token ids of one text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Whether the text was longer than the model's maximum length and was cut.
    pub truncated: bool,
}

/// A model that turns texts into feature vectors of dimension [`Embedder::dim`].
///
/// The pipeline renders each side of a pair with [`Embedder::render`], tokenizes each distinct
/// text once with [`Embedder::tokenize`], and embeds batches of similar length with
/// [`Embedder::embed_tokens`]. Implementations run on the CPU in f32 and may be called from
/// several threads at once.
pub trait Embedder: Send + Sync {
    /// What the embedder computes.
    fn info(&self) -> &EmbedderInfo;

    /// Feature dimension F.
    fn dim(&self) -> usize {
        self.info().dim
    }

    /// The model's text for `response` to `prompt`.
    fn render(&self, prompt: &Text, response: &Text) -> Result<String>;

    /// Token ids of a rendered text, truncated to the maximum length.
    fn tokenize(&self, text: &str) -> Result<Tokens>;

    /// One vector per token sequence (sequences may differ in length; each is non-empty).
    fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>>;

    /// One vector per text: [`Embedder::tokenize`] then [`Embedder::embed_tokens`].
    fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let tokens = texts
            .iter()
            .map(|t| self.tokenize(t))
            .collect::<Result<Vec<_>>>()?;
        let batch: Vec<&[u32]> = tokens.iter().map(|t| t.ids.as_slice()).collect();
        self.embed_tokens(&batch)
    }
}
