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
    identity: String,
}

/// Without the `embed` feature no embedder exists (an uninhabited type).
#[cfg(not(feature = "embed"))]
#[derive(Clone)]
pub enum TextEmbedder {}

#[cfg(feature = "embed")]
impl TextEmbedder {
    /// Loads `name` (`minilm` or a model directory) as `lore embed --model NAME` does.
    pub fn load(name: &str) -> Result<Self, crate::ServeError> {
        use lore_embed::{is_minilm_name, resolve_model, Model, MINILM_NAME};
        let err = |e: lore_embed::EmbedError| crate::ServeError::Embedder(e.to_string());
        let dir = resolve_model(name).map_err(err)?;
        let identity = if is_minilm_name(name) && !std::path::Path::new(name).is_dir() {
            MINILM_NAME.to_string()
        } else {
            name.to_string()
        };
        let model = Model::load(&dir).map_err(err)?.with_name(identity.clone());
        let embedder: std::sync::Arc<dyn lore_embed::Embedder> = match model {
            Model::Encoder(m) => std::sync::Arc::from(m as Box<dyn lore_embed::Embedder>),
            Model::Reward(m) => std::sync::Arc::from(m as Box<dyn lore_embed::Embedder>),
        };
        Ok(Self { embedder, identity })
    }

    /// The embedder's name (the model's `embedder` metadata names the same).
    pub fn identity(&self) -> &str {
        &self.identity
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

    /// Embeds rendered texts on the blocking pool.
    pub async fn embed(&self, texts: Vec<String>) -> Result<Vec<Vec<f32>>, crate::ApiError> {
        let embedder = self.embedder.clone();
        let vectors = tokio::task::spawn_blocking(move || {
            let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
            embedder.embed(&refs)
        })
        .await
        .map_err(|e| crate::ApiError::internal(format!("embedding failed: {e}")))?
        .map_err(|e| crate::ApiError::unprocessable(format!("embedding failed: {e}")))?;
        Ok(vectors)
    }
}

#[cfg(not(feature = "embed"))]
impl TextEmbedder {
    /// Never called: no embedder exists without the `embed` feature.
    pub fn identity(&self) -> &str {
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
