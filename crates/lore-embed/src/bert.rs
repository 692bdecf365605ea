//! BERT sentence encoders (sentence-transformers layout), e.g. all-MiniLM-L6-v2.
//!
//! The text of a side is `prompt + "\n\n" + response` (messages rendered as `role: content`
//! lines). Tokens are truncated at `max_seq_length` of `sentence_bert_config.json` (256 for
//! all-MiniLM-L6-v2), padded only to the longest text of a batch; token states are
//! mean-pooled over the attention mask (or the `[CLS]` state, as `1_Pooling/config.json`
//! says) and L2-normalized when `modules.json` has a `Normalize` module (or has no
//! `modules.json`), as sentence-transformers does.

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor, D};
use candle_nn::{LayerNorm, Linear};
use serde::Deserialize;
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use crate::embedder::{Embedder, EmbedderInfo, Tokens};
use crate::error::{model_error, EmbedError, Result};
use crate::input::Text;
use crate::weights::{dir_name, load_tokenizer, model_dir, read_json, read_json_opt, Weights};

/// The fields of a BERT `config.json` used here.
#[derive(Debug, Deserialize)]
struct BertConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    intermediate_size: usize,
    #[serde(default = "default_act")]
    hidden_act: String,
    max_position_embeddings: usize,
    #[serde(default = "default_type_vocab")]
    type_vocab_size: usize,
    #[serde(default = "default_ln_eps")]
    layer_norm_eps: f64,
    position_embedding_type: Option<String>,
}

fn default_act() -> String {
    "gelu".into()
}
fn default_type_vocab() -> usize {
    2
}
fn default_ln_eps() -> f64 {
    1e-12
}

/// `1_Pooling/config.json` of sentence-transformers.
#[derive(Debug, Default, Deserialize)]
struct PoolingConfig {
    #[serde(default)]
    pooling_mode_cls_token: bool,
    #[serde(default)]
    pooling_mode_mean_tokens: bool,
    #[serde(default)]
    pooling_mode_max_tokens: bool,
    #[serde(default)]
    pooling_mode_mean_sqrt_len_tokens: bool,
}

/// Activation of the feed-forward block.
#[derive(Debug, Clone, Copy)]
enum Activation {
    GeluErf,
    GeluTanh,
    Relu,
}

impl Activation {
    fn apply(self, x: &Tensor) -> candle_core::Result<Tensor> {
        match self {
            Activation::GeluErf => x.gelu_erf(),
            Activation::GeluTanh => x.gelu(),
            Activation::Relu => x.relu(),
        }
    }
}

/// One transformer layer.
struct Layer {
    query: Linear,
    key: Linear,
    value: Linear,
    attention_out: Linear,
    attention_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    output_norm: LayerNorm,
}

/// The BERT network.
struct Bert {
    word: Tensor,
    position: Tensor,
    token_type: Tensor,
    embedding_norm: LayerNorm,
    layers: Vec<Layer>,
    heads: usize,
    head_dim: usize,
    activation: Activation,
}

impl Bert {
    /// The network of `dir` and the dtype its weights are stored in.
    fn load(dir: &Path, config: &BertConfig) -> Result<(Self, String)> {
        let weights = Weights::load(dir, |name| {
            !(name.ends_with("position_ids")
                || name.starts_with("pooler.")
                || name.starts_with("cls."))
        })?;
        let p = if weights.has("embeddings.word_embeddings.weight") {
            ""
        } else {
            "bert."
        };
        let h = config.hidden_size;
        let eps = config.layer_norm_eps;
        let norm = |prefix: &str| -> Result<LayerNorm> {
            Ok(LayerNorm::new(
                weights.get(&format!("{p}{prefix}.weight"), &[h])?,
                weights.get(&format!("{p}{prefix}.bias"), &[h])?,
                eps,
            ))
        };
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("{p}encoder.layer.{i}");
                Ok(Layer {
                    query: weights.linear(&format!("{l}.attention.self.query"), h, h, true)?,
                    key: weights.linear(&format!("{l}.attention.self.key"), h, h, true)?,
                    value: weights.linear(&format!("{l}.attention.self.value"), h, h, true)?,
                    attention_out: weights.linear(
                        &format!("{l}.attention.output.dense"),
                        h,
                        h,
                        true,
                    )?,
                    attention_norm: norm(&format!("encoder.layer.{i}.attention.output.LayerNorm"))?,
                    intermediate: weights.linear(
                        &format!("{l}.intermediate.dense"),
                        h,
                        config.intermediate_size,
                        true,
                    )?,
                    output: weights.linear(
                        &format!("{l}.output.dense"),
                        config.intermediate_size,
                        h,
                        true,
                    )?,
                    output_norm: norm(&format!("encoder.layer.{i}.output.LayerNorm"))?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let activation = match config.hidden_act.as_str() {
            "gelu" => Activation::GeluErf,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Activation::GeluTanh,
            "relu" => Activation::Relu,
            other => {
                return Err(model_error(
                    dir.join("config.json"),
                    format!("unsupported hidden_act `{other}` (supported: gelu, gelu_new, relu)"),
                ))
            }
        };
        let stored = weights
            .stored_dtype()
            .map_or_else(|| "f32".to_string(), |d| d.as_str().to_string());
        let bert = Self {
            word: weights.get(
                &format!("{p}embeddings.word_embeddings.weight"),
                &[config.vocab_size, h],
            )?,
            position: weights.get(
                &format!("{p}embeddings.position_embeddings.weight"),
                &[config.max_position_embeddings, h],
            )?,
            token_type: weights.get(
                &format!("{p}embeddings.token_type_embeddings.weight"),
                &[config.type_vocab_size, h],
            )?,
            embedding_norm: norm("embeddings.LayerNorm")?,
            layers,
            heads: config.num_attention_heads,
            head_dim: h / config.num_attention_heads,
            activation,
        };
        Ok((bert, stored))
    }

    /// Token states [B, L, H] for `ids` [B, L] with `mask` [B, L] (1 = token, 0 = padding).
    fn forward(&self, ids: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let words = self
            .word
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, ()))?;
        let positions = self.position.narrow(0, 0, l)?;
        let token_type = self.token_type.narrow(0, 0, 1)?;
        let x = words
            .broadcast_add(&positions)?
            .broadcast_add(&token_type)?;
        let mut x = self.embedding_norm.forward(&x)?;
        // (1 - mask) * finfo(f32).min, as transformers' extended attention mask.
        let additive =
            ((mask.ones_like()? - mask)? * f64::from(f32::MIN))?.reshape((b, 1, 1, l))?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        for layer in &self.layers {
            let heads = |t: Tensor| -> candle_core::Result<Tensor> {
                t.reshape((b, l, self.heads, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = heads(layer.query.forward(&x)?)?;
            let k = heads(layer.key.forward(&x)?)?;
            let v = heads(layer.value.forward(&x)?)?;
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&additive)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let context =
                probs
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((b, l, self.heads * self.head_dim))?;
            let attended = layer
                .attention_norm
                .forward(&(layer.attention_out.forward(&context)? + &x)?)?;
            let inner = self
                .activation
                .apply(&layer.intermediate.forward(&attended)?)?;
            x = layer
                .output_norm
                .forward(&(layer.output.forward(&inner)? + &attended)?)?;
        }
        Ok(x)
    }
}

/// How token states are pooled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pooling {
    Mean,
    Cls,
}

/// A BERT sentence encoder with its tokenizer, pooling and normalization.
pub struct SentenceEncoder {
    model: Bert,
    tokenizer: Tokenizer,
    pooling: Pooling,
    normalize: bool,
    max_positions: usize,
    info: EmbedderInfo,
}

impl std::fmt::Debug for SentenceEncoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SentenceEncoder")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl SentenceEncoder {
    /// Loads a sentence encoder from a directory with `config.json` (`model_type` bert),
    /// `tokenizer.json` and safetensors weights, plus the optional sentence-transformers files
    /// (`sentence_bert_config.json`, `modules.json`, `1_Pooling/config.json`).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = model_dir(dir.as_ref())?;
        let config_path = dir.join("config.json");
        let config: BertConfig = read_json(&config_path)?;
        if let Some(kind) = config.model_type.as_deref() {
            if kind != "bert" {
                return Err(model_error(
                    &config_path,
                    format!("model_type `{kind}` is not a BERT encoder"),
                ));
            }
        }
        if config
            .position_embedding_type
            .as_deref()
            .is_some_and(|t| t != "absolute")
        {
            return Err(model_error(
                &config_path,
                "only absolute position embeddings are supported",
            ));
        }
        if config.num_attention_heads == 0
            || !config
                .hidden_size
                .is_multiple_of(config.num_attention_heads)
        {
            return Err(model_error(
                &config_path,
                "hidden_size must be a multiple of num_attention_heads",
            ));
        }
        let pooling_config: PoolingConfig =
            read_json_opt(&dir.join("1_Pooling").join("config.json"))?.unwrap_or_default();
        let pooling = if pooling_config.pooling_mode_max_tokens
            || pooling_config.pooling_mode_mean_sqrt_len_tokens
        {
            return Err(model_error(
                dir.join("1_Pooling").join("config.json"),
                "only mean or CLS pooling is supported",
            ));
        } else if pooling_config.pooling_mode_cls_token && !pooling_config.pooling_mode_mean_tokens
        {
            Pooling::Cls
        } else {
            Pooling::Mean
        };
        let modules: Option<Vec<serde_json::Value>> = read_json_opt(&dir.join("modules.json"))?;
        let normalize = match &modules {
            None => true,
            Some(modules) => modules.iter().any(|m| {
                m.get("type")
                    .and_then(|t| t.as_str())
                    .is_some_and(|t| t.ends_with("Normalize"))
            }),
        };
        let st_config: Option<serde_json::Value> =
            read_json_opt(&dir.join("sentence_bert_config.json"))?;
        let max_length = st_config
            .as_ref()
            .and_then(|c| c.get("max_seq_length")?.as_u64())
            .map(|n| n as usize)
            .unwrap_or(config.max_position_embeddings)
            .min(config.max_position_embeddings);

        let (model, weights_dtype) = Bert::load(&dir, &config)?;
        let tokenizer = load_tokenizer(&dir)?;
        let info = EmbedderInfo {
            name: dir_name(&dir),
            path: dir.clone(),
            architecture: "bert",
            pooling: match pooling {
                Pooling::Mean => "mean",
                Pooling::Cls => "cls",
            },
            normalized: normalize,
            max_length,
            dim: config.hidden_size,
            text_format: "prompt + \"\\n\\n\" + response",
            weights_dtype,
        };
        Self {
            model,
            tokenizer,
            pooling,
            normalize,
            max_positions: config.max_position_embeddings,
            info,
        }
        .with_max_length(max_length)
    }

    /// Truncates inputs at `max_length` tokens (special tokens included) instead of the
    /// model's default; at most the model's `max_position_embeddings`.
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        if max_length < 2 || max_length > self.max_positions {
            return Err(model_error(
                &self.info.path,
                format!(
                    "maximum length {max_length} is outside 2..={} (the model's max_position_embeddings)",
                    self.max_positions
                ),
            ));
        }
        self.tokenizer
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        self.info.max_length = max_length;
        Ok(self)
    }

    /// Sets the name recorded in [`EmbedderInfo`].
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.info.name = name.into();
        self
    }

    /// Pools token states [B, L, H] into [B, H] and normalizes them when configured.
    fn pool(&self, states: &Tensor, mask: &Tensor) -> candle_core::Result<Tensor> {
        let pooled = match self.pooling {
            Pooling::Cls => states.narrow(1, 0, 1)?.squeeze(1)?,
            Pooling::Mean => {
                let summed = states.broadcast_mul(&mask.unsqueeze(2)?)?.sum(1)?;
                let counts = mask.sum_keepdim(1)?.clamp(1e-9, f64::MAX)?;
                summed.broadcast_div(&counts)?
            }
        };
        if !self.normalize {
            return Ok(pooled);
        }
        let norms = pooled
            .sqr()?
            .sum_keepdim(D::Minus1)?
            .sqrt()?
            .clamp(1e-12, f64::MAX)?;
        pooled.broadcast_div(&norms)
    }
}

impl Embedder for SentenceEncoder {
    fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    fn render(&self, prompt: &Text, response: &Text) -> Result<String> {
        Ok(format!("{}\n\n{}", prompt.to_plain(), response.to_plain()))
    }

    fn tokenize(&self, text: &str) -> Result<Tokens> {
        let encoding = self
            .tokenizer
            .encode_fast(text, true)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        Ok(Tokens {
            ids: encoding.get_ids().to_vec(),
            truncated: !encoding.get_overflowing().is_empty(),
        })
    }

    fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let longest = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        if longest == 0 || longest > self.max_positions {
            return Err(EmbedError::Compute(format!(
                "token sequences must hold 1..={} tokens, found {longest}",
                self.max_positions
            )));
        }
        let vocab = self.model.word.dim(0)?;
        let mut ids = vec![0u32; batch.len() * longest];
        let mut mask = vec![0f32; batch.len() * longest];
        for (row, seq) in batch.iter().enumerate() {
            if seq.is_empty() {
                return Err(EmbedError::Compute("empty token sequence".into()));
            }
            for (j, &id) in seq.iter().enumerate() {
                if id as usize >= vocab {
                    return Err(EmbedError::Compute(format!(
                        "token id {id} is outside the vocabulary of {vocab}"
                    )));
                }
                ids[row * longest + j] = id;
                mask[row * longest + j] = 1.0;
            }
        }
        let device = Device::Cpu;
        let ids = Tensor::from_vec(ids, (batch.len(), longest), &device)?;
        let mask = Tensor::from_vec(mask, (batch.len(), longest), &device)?;
        let states = self.model.forward(&ids, &mask)?;
        let pooled = self.pool(&states, &mask)?.to_dtype(DType::F32)?;
        Ok(pooled.to_vec2::<f32>()?)
    }
}
