//! Model directories: `config.json` and safetensors weights, loaded as f32 tensors on the CPU.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::safetensors::BufferedSafetensors;
use candle_core::{DType, Device, Tensor};
use candle_nn::Linear;
use serde::de::DeserializeOwned;

use crate::error::{model_error, Result};

/// Checks that `dir` is a directory and returns it.
pub(crate) fn model_dir(dir: &Path) -> Result<PathBuf> {
    if !dir.exists() {
        return Err(model_error(dir, "model directory does not exist"));
    }
    if !dir.is_dir() {
        return Err(model_error(
            dir,
            "is not a directory (expected a model directory with config.json, tokenizer.json and *.safetensors)",
        ));
    }
    Ok(dir.to_path_buf())
}

/// Reads and parses a JSON file of a model directory.
pub(crate) fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::NotFound {
            model_error(path, "missing")
        } else {
            model_error(path, format!("cannot read: {e}"))
        }
    })?;
    serde_json::from_str(&text).map_err(|e| model_error(path, format!("invalid: {e}")))
}

/// Reads a JSON file when it exists.
pub(crate) fn read_json_opt<T: DeserializeOwned>(path: &Path) -> Result<Option<T>> {
    if path.is_file() {
        read_json(path).map(Some)
    } else {
        Ok(None)
    }
}

/// The safetensors files of a model: those named by `model.safetensors.index.json` when
/// present, else every `*.safetensors` file of the directory (sorted).
fn weight_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let index = dir.join("model.safetensors.index.json");
    if index.is_file() {
        let index: serde_json::Value = read_json(&index)?;
        let map = index
            .get("weight_map")
            .and_then(|m| m.as_object())
            .ok_or_else(|| {
                model_error(dir.join("model.safetensors.index.json"), "no `weight_map`")
            })?;
        let mut files: Vec<PathBuf> = map
            .values()
            .filter_map(|v| v.as_str())
            .map(|f| dir.join(f))
            .collect();
        files.sort();
        files.dedup();
        return Ok(files);
    }
    let entries =
        std::fs::read_dir(dir).map_err(|e| model_error(dir, format!("cannot list: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "safetensors") && p.is_file())
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(model_error(
            dir,
            "no *.safetensors weights in the model directory",
        ));
    }
    Ok(files)
}

/// The weights of a model as f32 tensors (bf16 and f16 weights are widened once at load).
pub(crate) struct Weights {
    dir: PathBuf,
    tensors: HashMap<String, Tensor>,
    /// Dtype the weights are stored in (of the first tensor), for metadata.
    stored_dtype: Option<DType>,
}

impl Weights {
    /// Loads the tensors of `dir` for which `keep(name)` holds, as f32.
    pub(crate) fn load(dir: &Path, keep: impl Fn(&str) -> bool) -> Result<Self> {
        let device = Device::Cpu;
        let mut tensors = HashMap::new();
        let mut stored_dtype = None;
        for file in weight_files(dir)? {
            let bytes = std::fs::read(&file)
                .map_err(|e| model_error(&file, format!("cannot read: {e}")))?;
            let st = BufferedSafetensors::new(bytes)
                .map_err(|e| model_error(&file, format!("not a safetensors file: {e}")))?;
            for (name, _) in st.tensors() {
                if !keep(&name) {
                    continue;
                }
                let tensor = st
                    .load(&name, &device)
                    .map_err(|e| model_error(&file, format!("tensor `{name}`: {e}")))?;
                stored_dtype.get_or_insert(tensor.dtype());
                let tensor = tensor
                    .to_dtype(DType::F32)
                    .map_err(|e| model_error(&file, format!("tensor `{name}`: {e}")))?;
                tensors.insert(name, tensor);
            }
        }
        Ok(Self {
            dir: dir.to_path_buf(),
            tensors,
            stored_dtype,
        })
    }

    /// The dtype the weights were stored in.
    pub(crate) fn stored_dtype(&self) -> Option<DType> {
        self.stored_dtype
    }

    /// True when tensor `name` was loaded.
    pub(crate) fn has(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    /// Tensor `name`, whatever its shape.
    pub(crate) fn get_any(&self, name: &str) -> Result<&Tensor> {
        self.tensors
            .get(name)
            .ok_or_else(|| model_error(&self.dir, format!("weights lack tensor `{name}`")))
    }

    /// Tensor `name`, which must have `shape`.
    pub(crate) fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let tensor = self.get_any(name)?;
        if tensor.dims() != shape {
            return Err(model_error(
                &self.dir,
                format!(
                    "tensor `{name}` has shape {:?}, but config.json implies {shape:?}",
                    tensor.dims()
                ),
            ));
        }
        Ok(tensor.clone())
    }

    /// A linear layer `prefix.weight` [out, in] with `prefix.bias` [out] when `bias`.
    pub(crate) fn linear(
        &self,
        prefix: &str,
        input: usize,
        output: usize,
        bias: bool,
    ) -> Result<Linear> {
        let weight = self.get(&format!("{prefix}.weight"), &[output, input])?;
        let bias = if bias {
            Some(self.get(&format!("{prefix}.bias"), &[output])?)
        } else {
            None
        };
        Ok(Linear::new(weight, bias))
    }
}

/// The `tokenizer.json` of a model directory, without padding or truncation (callers set
/// their own).
pub(crate) fn load_tokenizer(dir: &Path) -> Result<tokenizers::Tokenizer> {
    let path = dir.join("tokenizer.json");
    if !path.is_file() {
        return Err(model_error(
            &path,
            "missing (the model directory needs a tokenizer.json)",
        ));
    }
    let mut tokenizer = tokenizers::Tokenizer::from_file(&path)
        .map_err(|e| model_error(&path, format!("cannot load the tokenizer: {e}")))?;
    tokenizer.with_padding(None);
    tokenizer
        .with_truncation(None)
        .map_err(|e| model_error(&path, format!("cannot configure truncation: {e}")))?;
    Ok(tokenizer)
}

/// The last component of `dir`, as a default model name.
pub(crate) fn dir_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}
