//! Text in requests: prompt/response values (a string or a list of `{role, content}`
//! messages), rendered with the embedder's `render` exactly as `lore embed` renders a side, and
//! embedded (with the `embed` feature) on the blocking pool.

use std::fmt;

use serde::de::{self, Deserializer, SeqAccess, Visitor};
use serde::Deserialize;

/// One chat message of a request.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// Who speaks (`system`, `user`, `assistant`, ...).
    pub role: String,
    /// What is said.
    pub content: String,
}

/// A prompt or a response in a request: a plain string or a list of messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TextIn {
    /// A plain string.
    Plain(String),
    /// A conversation.
    Messages(Vec<MessageIn>),
}

impl TextIn {
    /// Whether this is an empty list of messages (refused: nothing to render).
    pub fn is_empty_list(&self) -> bool {
        matches!(self, TextIn::Messages(m) if m.is_empty())
    }

    /// lore-embed's [`lore_embed::Text`].
    #[cfg(feature = "embed")]
    pub fn to_text(&self) -> lore_embed::Text {
        match self {
            TextIn::Plain(s) => lore_embed::Text::Plain(s.clone()),
            TextIn::Messages(m) => lore_embed::Text::Messages(
                m.iter()
                    .map(|m| lore_embed::Message::new(m.role.clone(), m.content.clone()))
                    .collect(),
            ),
        }
    }
}

impl<'de> Deserialize<'de> for TextIn {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct TextVisitor;
        impl<'de> Visitor<'de> for TextVisitor {
            type Value = TextIn;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string or a list of {\"role\", \"content\"} messages")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<TextIn, E> {
                Ok(TextIn::Plain(v.to_string()))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<TextIn, E> {
                Ok(TextIn::Plain(v))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TextIn, A::Error> {
                let mut messages = Vec::new();
                while let Some(m) = seq.next_element::<MessageIn>()? {
                    if messages.len() >= crate::api::max_items() {
                        crate::api::note_limit_hit();
                        return Err(de::Error::custom(format!(
                            "more than {} messages",
                            crate::api::max_items()
                        )));
                    }
                    messages.push(m);
                }
                Ok(TextIn::Messages(messages))
            }
        }
        deserializer.deserialize_any(TextVisitor)
    }
}

/// The server's embedder: renders sides and embeds texts (without the `embed` feature there
/// is none, and text items are refused).
#[cfg(feature = "embed")]
#[derive(Clone)]
pub struct TextEmbedder {
    embedder: std::sync::Arc<dyn lore_embed::Embedder>,
    identity: lore_io::EmbedderIdentity,
    batcher: crate::batcher::Batcher,
}

/// Without the `embed` feature no embedder exists (an uninhabited type).
#[cfg(not(feature = "embed"))]
#[derive(Clone)]
pub enum TextEmbedder {}

#[cfg(feature = "embed")]
impl TextEmbedder {
    /// Loads the embedder for a model whose features were made by `recorded` (its
    /// `embedder` metadata): `choice` (`minilm` or a model directory, as `--embedder`) when
    /// given, else the recorded one; refused when its identity or dimension differs.
    /// Its texts are embedded by a [`crate::batcher::Batcher`] started with `options`.
    pub fn load(
        recorded: Option<&lore_io::EmbedderIdentity>,
        choice: Option<&str>,
        features: usize,
        options: crate::batcher::BatcherOptions,
    ) -> Result<Self, crate::ServeError> {
        let model = lore_embed::load_matching(recorded, choice, features)
            .map_err(|e| crate::ServeError::Embedder(e.to_string()))?;
        let identity = model.embedder().info().identity();
        let embedder = model.into_shared();
        let batcher = crate::batcher::Batcher::start(embedder.clone(), options);
        Ok(Self {
            embedder,
            identity,
            batcher,
        })
    }

    /// The batching queue.
    pub fn batcher(&self) -> &crate::batcher::Batcher {
        &self.batcher
    }

    /// What the embedder computes (compared with a model's `embedder` record).
    pub fn identity_record(&self) -> &lore_io::EmbedderIdentity {
        &self.identity
    }

    /// The embedder's name (the model's `embedder` metadata names the same).
    pub fn identity(&self) -> &str {
        &self.identity.name
    }

    /// Feature dimension.
    pub fn dim(&self) -> usize {
        self.embedder.dim()
    }

    /// The underlying embedder.
    pub fn embedder(&self) -> &std::sync::Arc<dyn lore_embed::Embedder> {
        &self.embedder
    }

    /// The model's text for `response` to `prompt` (as `lore embed` renders a side).
    pub fn render(&self, prompt: &TextIn, response: &TextIn) -> Result<String, String> {
        self.embedder
            .render(&prompt.to_text(), &response.to_text())
            .map_err(|e| e.to_string())
    }

    /// Embeds rendered texts through the batching queue (with other requests' texts): a full
    /// queue is 429, a text the tokenizer refuses 422, a failed forward pass 500.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, crate::ApiError> {
        use crate::batcher::BatchError;
        self.batcher.embed(texts).await.map_err(|e| match e {
            BatchError::Full => crate::ApiError::new(
                axum::http::StatusCode::TOO_MANY_REQUESTS,
                "text: the embedding queue is full; retry later",
            ),
            BatchError::Input(m) => crate::ApiError::unprocessable(format!("text: {m}")),
            BatchError::Failed(m) => {
                crate::ApiError::internal(format!("text: embedding failed: {m}"))
            }
        })
    }
}

#[cfg(not(feature = "embed"))]
impl TextEmbedder {
    /// Never called: no embedder exists without the `embed` feature.
    pub fn identity(&self) -> &str {
        match *self {}
    }
    /// Never called.
    pub fn identity_record(&self) -> &lore_io::EmbedderIdentity {
        match *self {}
    }
    /// Never called.
    pub fn dim(&self) -> usize {
        match *self {}
    }
    /// Never called.
    pub fn render(&self, _: &TextIn, _: &TextIn) -> Result<String, String> {
        match *self {}
    }
    /// Never called.
    pub async fn embed(&self, _: Vec<String>) -> Result<Vec<Vec<f32>>, crate::ApiError> {
        match *self {}
    }
}
