//! Llama-family decoder reward models (`LlamaForSequenceClassification`), e.g.
//! Skywork-Reward-Llama-3.1-8B.
//!
//! A side is rendered as a conversation (the prompt's messages, then the response as the
//! assistant's turn) with the model's chat template and tokenized without adding special
//! tokens (the template writes them), as transformers' `apply_chat_template` does. The feature
//! is the decoder's hidden state at the last token after the final RMSNorm; the reward is
//! `score.weight · feature`. Weights (bf16 or f16 in the files) are widened to f32 and all
//! computation is f32.
//!
//! The decoder is written here on candle ops because candle-transformers' Llama only exposes
//! logits through `lm_head`. Supported: grouped-query attention (`num_key_value_heads`), an
//! explicit `head_dim`, optional attention and MLP biases, and RoPE of type `default`, `linear`
//! or `llama3` (with `factor`, `low_freq_factor`, `high_freq_factor` and
//! `original_max_position_embeddings`, computed in f32 like transformers).
//!
//! Batches are padded on the right; with causal attention a real token never sees a padding
//! token, so padding changes nothing. Texts longer than the maximum length keep their last
//! `max_length` tokens (the end of the response, where the feature is read).

use std::path::Path;

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::Linear;
use serde::Deserialize;
use tokenizers::Tokenizer;

use crate::embedder::{Embedder, EmbedderInfo, Tokens};
use crate::error::{model_error, EmbedError, Result};
use crate::input::{Message, Text};
use crate::template::ChatTemplate;
use crate::weights::{dir_name, load_tokenizer, model_dir, read_json, Weights};

/// RoPE scaling parameters (`rope_scaling` or transformers 5's `rope_parameters`).
#[derive(Debug, Clone, Default, Deserialize)]
struct RopeScaling {
    rope_type: Option<String>,
    #[serde(rename = "type")]
    kind: Option<String>,
    factor: Option<f64>,
    low_freq_factor: Option<f64>,
    high_freq_factor: Option<f64>,
    original_max_position_embeddings: Option<f64>,
    rope_theta: Option<f64>,
}

/// The fields of a Llama `config.json` used here.
#[derive(Debug, Deserialize)]
struct LlamaConfig {
    model_type: Option<String>,
    vocab_size: usize,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    #[serde(default = "default_rms_eps")]
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<RopeScaling>,
    rope_parameters: Option<RopeScaling>,
    max_position_embeddings: usize,
    hidden_act: Option<String>,
    #[serde(default)]
    attention_bias: bool,
    #[serde(default)]
    mlp_bias: bool,
}

fn default_rms_eps() -> f64 {
    1e-6
}

/// One decoder layer.
struct Layer {
    input_norm: Tensor,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    post_norm: Tensor,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// The decoder and, for reward models, the score head.
struct Decoder {
    embed: Tensor,
    layers: Vec<Layer>,
    norm: Tensor,
    score: Option<Tensor>,
    inv_freq: Vec<f32>,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    eps: f32,
}

/// Inverse RoPE frequencies as transformers computes them (in f32).
fn rope_inv_freq(
    head_dim: usize,
    theta: f64,
    scaling: &RopeScaling,
    path: &Path,
) -> Result<Vec<f32>> {
    let base = theta as f32;
    let inv: Vec<f32> = (0..head_dim)
        .step_by(2)
        .map(|i| 1.0f32 / base.powf(i as f32 / head_dim as f32))
        .collect();
    let rope_type = scaling
        .rope_type
        .as_deref()
        .or(scaling.kind.as_deref())
        .unwrap_or("default");
    let need = |value: Option<f64>, name: &str| {
        value.ok_or_else(|| model_error(path, format!("rope type `{rope_type}` needs `{name}`")))
    };
    match rope_type {
        "default" => Ok(inv),
        "linear" => {
            let factor = need(scaling.factor, "factor")? as f32;
            Ok(inv.into_iter().map(|f| f / factor).collect())
        }
        "llama3" => {
            let factor = need(scaling.factor, "factor")? as f32;
            let low = need(scaling.low_freq_factor, "low_freq_factor")? as f32;
            let high = need(scaling.high_freq_factor, "high_freq_factor")? as f32;
            let old = need(
                scaling.original_max_position_embeddings,
                "original_max_position_embeddings",
            )? as f32;
            if high == low {
                return Err(model_error(
                    path,
                    "llama3 rope needs high_freq_factor != low_freq_factor",
                ));
            }
            let low_wavelen = old / low;
            let high_wavelen = old / high;
            Ok(inv
                .into_iter()
                .map(|f| {
                    let wavelen = 2.0 * std::f32::consts::PI / f;
                    let scaled = if wavelen > low_wavelen { f / factor } else { f };
                    let smooth = (old / wavelen - low) / (high - low);
                    let smoothed = (1.0 - smooth) * scaled / factor + smooth * scaled;
                    // transformers: ~(wavelen < high_wavelen) * ~(wavelen > low_wavelen) (no NaN here).
                    let medium = wavelen >= high_wavelen && wavelen <= low_wavelen;
                    if medium {
                        smoothed
                    } else {
                        scaled
                    }
                })
                .collect())
        }
        other => Err(model_error(
            path,
            format!("rope type `{other}` is not supported (supported: default, linear, llama3)"),
        )),
    }
}

/// Root-mean-square normalization over the last dimension, times `weight`.
fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> candle_core::Result<Tensor> {
    candle_nn::ops::rms_norm(&x.contiguous()?, weight, eps)
}

impl Decoder {
    /// The network of `dir` and the dtype its weights are stored in.
    fn load(dir: &Path, config: &LlamaConfig) -> Result<(Self, String)> {
        let config_path = dir.join("config.json");
        let heads = config.num_attention_heads;
        let kv_heads = config.num_key_value_heads.unwrap_or(heads);
        if heads == 0 || kv_heads == 0 || !heads.is_multiple_of(kv_heads) {
            return Err(model_error(
                &config_path,
                format!("num_attention_heads {heads} must be a positive multiple of num_key_value_heads {kv_heads}"),
            ));
        }
        let head_dim = match config.head_dim {
            Some(d) => d,
            None if config.hidden_size.is_multiple_of(heads) => config.hidden_size / heads,
            None => {
                return Err(model_error(
                    &config_path,
                    "hidden_size must be a multiple of num_attention_heads (or give head_dim)",
                ))
            }
        };
        if head_dim % 2 != 0 {
            return Err(model_error(&config_path, "head_dim must be even for RoPE"));
        }
        if let Some(act) = config.hidden_act.as_deref() {
            if act != "silu" {
                return Err(model_error(
                    &config_path,
                    format!("hidden_act `{act}` is not supported (Llama uses silu)"),
                ));
            }
        }
        let parameters = config.rope_parameters.clone();
        let scaling = config
            .rope_scaling
            .clone()
            .or(parameters.clone())
            .unwrap_or_default();
        let theta = config
            .rope_theta
            .or(parameters.and_then(|p| p.rope_theta))
            .unwrap_or(10_000.0);
        let inv_freq = rope_inv_freq(head_dim, theta, &scaling, &config_path)?;

        let weights = Weights::load(dir, |name| {
            !(name.starts_with("lm_head.") || name.ends_with("rotary_emb.inv_freq"))
        })?;
        let p = if weights.has("model.embed_tokens.weight") {
            "model."
        } else {
            ""
        };
        let h = config.hidden_size;
        let i_size = config.intermediate_size;
        let (q_out, kv_out) = (heads * head_dim, kv_heads * head_dim);
        let (ab, mb) = (config.attention_bias, config.mlp_bias);
        let layers = (0..config.num_hidden_layers)
            .map(|i| {
                let l = format!("{p}layers.{i}");
                Ok(Layer {
                    input_norm: weights.get(&format!("{l}.input_layernorm.weight"), &[h])?,
                    q: weights.linear(&format!("{l}.self_attn.q_proj"), h, q_out, ab)?,
                    k: weights.linear(&format!("{l}.self_attn.k_proj"), h, kv_out, ab)?,
                    v: weights.linear(&format!("{l}.self_attn.v_proj"), h, kv_out, ab)?,
                    o: weights.linear(&format!("{l}.self_attn.o_proj"), q_out, h, ab)?,
                    post_norm: weights
                        .get(&format!("{l}.post_attention_layernorm.weight"), &[h])?,
                    gate: weights.linear(&format!("{l}.mlp.gate_proj"), h, i_size, mb)?,
                    up: weights.linear(&format!("{l}.mlp.up_proj"), h, i_size, mb)?,
                    down: weights.linear(&format!("{l}.mlp.down_proj"), i_size, h, mb)?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let score = if weights.has("score.weight") {
            let labels = weights.get_any("score.weight")?.dim(0)?;
            Some(weights.get("score.weight", &[labels, h])?)
        } else {
            None
        };
        let stored = weights
            .stored_dtype()
            .map_or_else(|| "f32".to_string(), |d| d.as_str().to_string());
        let decoder = Self {
            embed: weights.get(&format!("{p}embed_tokens.weight"), &[config.vocab_size, h])?,
            layers,
            norm: weights.get(&format!("{p}norm.weight"), &[h])?,
            score,
            inv_freq,
            heads,
            kv_heads,
            head_dim,
            eps: config.rms_norm_eps as f32,
        };
        Ok((decoder, stored))
    }

    /// cos and sin [L, head_dim / 2] of positions 0..L.
    fn rope_tables(&self, len: usize) -> candle_core::Result<(Tensor, Tensor)> {
        let half = self.inv_freq.len();
        let mut cos = Vec::with_capacity(len * half);
        let mut sin = Vec::with_capacity(len * half);
        for pos in 0..len {
            for &f in &self.inv_freq {
                let angle = pos as f32 * f;
                cos.push(angle.cos());
                sin.push(angle.sin());
            }
        }
        Ok((
            Tensor::from_vec(cos, (len, half), &Device::Cpu)?,
            Tensor::from_vec(sin, (len, half), &Device::Cpu)?,
        ))
    }

    /// Final normed hidden states [B, H] at the last token of each sequence.
    fn last_hidden(&self, ids: &Tensor, lengths: &[usize]) -> candle_core::Result<Tensor> {
        let (b, l) = ids.dims2()?;
        let mut x = self
            .embed
            .index_select(&ids.flatten_all()?, 0)?
            .reshape((b, l, ()))?;
        let (cos, sin) = self.rope_tables(l)?;
        let mut causal = vec![0f32; l * l];
        for i in 0..l {
            for j in i + 1..l {
                causal[i * l + j] = f32::NEG_INFINITY;
            }
        }
        let causal = Tensor::from_vec(causal, (l, l), &Device::Cpu)?;
        let scale = 1.0 / (self.head_dim as f64).sqrt();
        let repeats = self.heads / self.kv_heads;
        for layer in &self.layers {
            let h = rms_norm(&x, &layer.input_norm, self.eps)?;
            let split = |t: Tensor, n: usize| -> candle_core::Result<Tensor> {
                t.reshape((b, l, n, self.head_dim))?
                    .transpose(1, 2)?
                    .contiguous()
            };
            let q = split(layer.q.forward(&h)?, self.heads)?;
            let k = split(layer.k.forward(&h)?, self.kv_heads)?;
            let v = split(layer.v.forward(&h)?, self.kv_heads)?;
            let q = candle_nn::rotary_emb::rope(&q, &cos, &sin)?;
            let k = candle_nn::rotary_emb::rope(&k, &cos, &sin)?;
            let (k, v) = if repeats > 1 {
                let repeat = |t: Tensor| -> candle_core::Result<Tensor> {
                    t.unsqueeze(2)?
                        .expand((b, self.kv_heads, repeats, l, self.head_dim))?
                        .reshape((b, self.heads, l, self.head_dim))
                };
                (repeat(k)?, repeat(v)?)
            } else {
                (k, v)
            };
            let scores = (q.matmul(&k.t()?)? * scale)?.broadcast_add(&causal)?;
            let probs = candle_nn::ops::softmax_last_dim(&scores)?;
            let attended =
                probs
                    .matmul(&v)?
                    .transpose(1, 2)?
                    .reshape((b, l, self.heads * self.head_dim))?;
            x = (x + layer.o.forward(&attended)?)?;
            let h = rms_norm(&x, &layer.post_norm, self.eps)?;
            let mlp = (candle_nn::ops::silu(&layer.gate.forward(&h)?)? * layer.up.forward(&h)?)?;
            x = (x + layer.down.forward(&mlp)?)?;
        }
        let last: Vec<u32> = lengths
            .iter()
            .enumerate()
            .map(|(row, &n)| (row * l + n - 1) as u32)
            .collect();
        let last = Tensor::from_vec(last, b, &Device::Cpu)?;
        let x = x.reshape((b * l, ()))?.index_select(&last, 0)?;
        rms_norm(&x, &self.norm, self.eps)
    }
}

/// A Llama-family reward model: chat template, tokenizer, decoder and score head.
///
/// Weights are held in f32: 4 bytes per parameter (about 32 GB for an 8B model).
pub struct RewardModel {
    decoder: Decoder,
    tokenizer: Tokenizer,
    template: ChatTemplate,
    vocab: usize,
    max_positions: usize,
    info: EmbedderInfo,
}

impl std::fmt::Debug for RewardModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RewardModel")
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl RewardModel {
    /// Loads a reward model from a directory with `config.json` (`model_type` llama),
    /// `tokenizer.json`, a chat template (`chat_template.jinja` or in `tokenizer_config.json`)
    /// and safetensors weights (`model.`-prefixed decoder and `score.weight`, as
    /// `LlamaForSequenceClassification` saves them; a bare `LlamaModel` loads too, without a
    /// score head).
    pub fn load(dir: impl AsRef<Path>) -> Result<Self> {
        let dir = model_dir(dir.as_ref())?;
        let config_path = dir.join("config.json");
        let config: LlamaConfig = read_json(&config_path)?;
        if let Some(kind) = config.model_type.as_deref() {
            if kind != "llama" {
                return Err(model_error(
                    &config_path,
                    format!("model_type `{kind}` is not a Llama decoder"),
                ));
            }
        }
        let template = ChatTemplate::from_model_dir(&dir)?.ok_or_else(|| {
            model_error(
                &dir,
                "no chat template (chat_template.jinja, or chat_template in tokenizer_config.json)",
            )
        })?;
        let tokenizer = load_tokenizer(&dir)?;
        let (decoder, weights_dtype) = Decoder::load(&dir, &config)?;
        let info = EmbedderInfo {
            name: dir_name(&dir),
            path: dir.clone(),
            architecture: "llama",
            pooling: "last_token",
            normalized: false,
            max_length: config.max_position_embeddings,
            dim: config.hidden_size,
            text_format: "chat_template",
            weights_dtype,
        };
        Ok(Self {
            decoder,
            tokenizer,
            template,
            vocab: config.vocab_size,
            max_positions: config.max_position_embeddings,
            info,
        })
    }

    /// Keeps at most the last `max_length` tokens of each text (default: the model's
    /// `max_position_embeddings`, which is also the upper bound).
    pub fn with_max_length(mut self, max_length: usize) -> Result<Self> {
        let limit = self.max_positions;
        if max_length == 0 || max_length > limit {
            return Err(model_error(
                &self.info.path,
                format!("maximum length {max_length} is outside 1..={limit} (the model's max_position_embeddings)"),
            ));
        }
        self.info.max_length = max_length;
        Ok(self)
    }

    /// Sets the name recorded in [`EmbedderInfo`].
    pub fn with_name(mut self, name: impl Into<String>) -> Self {
        self.info.name = name.into();
        self
    }

    /// The chat template.
    pub fn template(&self) -> &ChatTemplate {
        &self.template
    }

    /// The model's text for a whole conversation (no generation prompt).
    pub fn render_messages(&self, messages: &[Message]) -> Result<String> {
        self.template.render(messages, false)
    }

    /// Token ids of a conversation, as `apply_chat_template(messages, tokenize=True)`.
    pub fn encode_messages(&self, messages: &[Message]) -> Result<Vec<u32>> {
        let text = self.render_messages(messages)?;
        Ok(self.tokenize(&text)?.ids)
    }

    /// Final normed hidden states at the last token, one per sequence.
    pub fn hidden_states(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let tensor = self.run(batch)?;
        Ok(tensor.to_vec2::<f32>()?)
    }

    /// Rewards `score.weight · hidden state`, one per sequence (the first label when the head
    /// has several).
    pub fn score(&self, batch: &[&[u32]]) -> Result<Vec<f32>> {
        let head = self.score_weight()?;
        if batch.is_empty() {
            return Ok(Vec::new());
        }
        let hidden = self.run(batch)?;
        let head = head.narrow(0, 0, 1)?;
        let scores = hidden.matmul(&head.t()?)?.squeeze(1)?;
        Ok(scores.to_vec1::<f32>()?)
    }

    /// The reward head `score.weight` (its first row) as a vector of F values: x · head is the
    /// reward difference of a pair whose feature row is x = h(chosen) - h(rejected).
    pub fn head(&self) -> Result<Vec<f32>> {
        let head = self.score_weight()?;
        Ok(head.narrow(0, 0, 1)?.squeeze(0)?.to_vec1::<f32>()?)
    }

    /// Number of rows of `score.weight` (labels), when the model has a score head.
    pub fn num_labels(&self) -> Option<usize> {
        self.decoder.score.as_ref().map(|s| s.dims()[0])
    }

    fn score_weight(&self) -> Result<&Tensor> {
        self.decoder.score.as_ref().ok_or_else(|| {
            model_error(
                &self.info.path,
                "the weights have no reward head `score.weight` (is this a LlamaForSequenceClassification?)",
            )
        })
    }

    /// Runs the decoder on right-padded ids.
    fn run(&self, batch: &[&[u32]]) -> Result<Tensor> {
        let longest = batch.iter().map(|ids| ids.len()).max().unwrap_or(0);
        if longest > self.max_positions {
            return Err(EmbedError::Compute(format!(
                "a sequence of {longest} tokens is longer than the model's max_position_embeddings {}",
                self.max_positions
            )));
        }
        let mut ids = vec![0u32; batch.len() * longest];
        let mut lengths = Vec::with_capacity(batch.len());
        for (row, seq) in batch.iter().enumerate() {
            if seq.is_empty() {
                return Err(EmbedError::Compute("empty token sequence".into()));
            }
            if let Some(&bad) = seq.iter().find(|&&id| id as usize >= self.vocab) {
                return Err(EmbedError::Compute(format!(
                    "token id {bad} is outside the vocabulary of {}",
                    self.vocab
                )));
            }
            ids[row * longest..row * longest + seq.len()].copy_from_slice(seq);
            lengths.push(seq.len());
        }
        let ids = Tensor::from_vec(ids, (batch.len(), longest), &Device::Cpu)?;
        Ok(self
            .decoder
            .last_hidden(&ids, &lengths)?
            .to_dtype(DType::F32)?)
    }
}

impl Embedder for RewardModel {
    fn info(&self) -> &EmbedderInfo {
        &self.info
    }

    fn render(&self, prompt: &Text, response: &Text) -> Result<String> {
        let mut messages = prompt.to_messages("user").into_owned();
        messages.extend(response.to_messages("assistant").iter().cloned());
        self.render_messages(&messages)
    }

    fn tokenize(&self, text: &str) -> Result<Tokens> {
        let encoding = self
            .tokenizer
            .encode_fast(text, false)
            .map_err(|e| EmbedError::Tokenizer(e.to_string()))?;
        let ids = encoding.get_ids();
        let max = self.info.max_length;
        Ok(if ids.len() > max {
            Tokens {
                ids: ids[ids.len() - max..].to_vec(),
                truncated: true,
            }
        } else {
            Tokens {
                ids: ids.to_vec(),
                truncated: false,
            }
        })
    }

    fn embed_tokens(&self, batch: &[&[u32]]) -> Result<Vec<Vec<f32>>> {
        self.hidden_states(batch)
    }
}
