//! The [`Embedder`] trait: what the pipeline needs from a model.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use lore_io::EmbedderIdentity;
use serde::Serialize;

use crate::error::{model_error, EmbedError, Result};
use crate::input::Text;
use crate::locate::{is_minilm_name, resolve_model, Model, MINILM_NAME};

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

/// The name `lore embed --model GIVEN` records for its model: the Hugging Face name of
/// all-MiniLM-L6-v2 for `minilm` (and its other names), else `given` as written.
pub fn recorded_name(given: &str) -> String {
    if is_minilm_name(given) && !Path::new(given).is_dir() {
        MINILM_NAME.to_string()
    } else {
        given.to_string()
    }
}

impl Model {
    /// The model as a shared [`Embedder`] (for a server's embedding pool).
    pub fn into_shared(self) -> Arc<dyn Embedder> {
        match self {
            Model::Encoder(m) => Arc::from(m as Box<dyn Embedder>),
            Model::Reward(m) => Arc::from(m as Box<dyn Embedder>),
        }
    }
}

/// Loads the embedder that makes features of a model file whose features were made by
/// `recorded` (its metadata `embedder`), with `features` F: `choice` (`minilm` or a model
/// directory, as `--embedder`) when given, else the recorded model directory when it still
/// exists, else the recorded name (`minilm`'s). The recorded maximum length is applied, and an
/// embedder whose identity (name, architecture, pooling, normalization, maximum length, text
/// format) or dimension differs is refused, naming the first difference.
pub fn load_matching(
    recorded: Option<&EmbedderIdentity>,
    choice: Option<&str>,
    features: usize,
) -> Result<Model> {
    let given = match (choice, recorded) {
        (Some(choice), _) => choice.to_string(),
        (None, Some(id)) if Path::new(&id.model_path).is_dir() => id.model_path.clone(),
        (None, Some(id)) => id.name.clone(),
        (None, None) => {
            return Err(EmbedError::Input(
                "the model file does not record how its features were made (metadata \
                 `embedder`): give the embedder (minilm or a model directory)"
                    .into(),
            ))
        }
    };
    let dir = resolve_model(&given)?;
    // Named as the file records it when loaded from the record, else as `lore embed` names it.
    let name = match (choice, recorded) {
        (None, Some(id)) => id.name.clone(),
        _ => recorded_name(&given),
    };
    let mut model = Model::load(&dir)?.with_name(name);
    if let Some(id) = recorded {
        if model.embedder().info().max_length != id.max_length {
            model = model.with_max_length(id.max_length)?;
        }
        if let Some(reason) = id.mismatch(&model.embedder().info().identity()) {
            return Err(model_error(
                &dir,
                format!(
                    "makes other features than the model was fitted on ({reason}; the model's \
                     embedder is {id})"
                ),
            ));
        }
    }
    let dim = model.embedder().dim();
    if dim != features {
        return Err(model_error(
            &dir,
            format!("makes F = {dim} features but the model has F = {features}"),
        ));
    }
    Ok(model)
}
