//! The request bodies of the HTTP contract and how they are read: the body limit (413),
//! UTF-8 and content type, JSON syntax (400), fields and types (422, the field named by
//! serde_path_to_error), item counts (413) and feature lengths, bounded while parsing so that no
//! request allocates more than its limits allow.

use std::cell::Cell;
use std::fmt;
use std::marker::PhantomData;

use axum::body::Body;
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::{self, DeserializeOwned, Deserializer, IgnoredAny, SeqAccess, Visitor};
use serde::Deserialize;

use crate::error::ApiError;
use crate::text::TextIn;

/// The longest user id, in bytes.
pub const MAX_USER_ID_BYTES: usize = 256;

/// Per-request limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest request body in bytes (413 beyond).
    pub max_body_bytes: usize,
    /// Most items (rewards, queries, pairs) in one request (413 beyond).
    pub max_items: usize,
}

impl Default for Limits {
    /// 32 MiB bodies, 4096 items a request.
    fn default() -> Self {
        Self {
            max_body_bytes: 32 << 20,
            max_items: 4096,
        }
    }
}

thread_local! {
    /// (most items, feature dimension F) of the request being parsed on this thread.
    static PARSE: Cell<(usize, usize)> = const { Cell::new((usize::MAX, usize::MAX)) };
    /// Set when a count limit was hit (the error becomes a 413).
    static LIMIT_HIT: Cell<bool> = const { Cell::new(false) };
}

/// The item limit of the request being parsed.
pub(crate) fn max_items() -> usize {
    PARSE.with(|p| p.get().0)
}

/// Marks the current parse as over a count limit.
pub(crate) fn note_limit_hit() {
    LIMIT_HIT.with(|l| l.set(true));
}

/// A list of at most [`Limits::max_items`] entries, refused while parsing beyond that.
#[derive(Debug, Clone, PartialEq)]
pub struct Items<T>(pub Vec<T>);

impl<'de, T: Deserialize<'de>> Deserialize<'de> for Items<T> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct ItemsVisitor<T>(PhantomData<T>);
        impl<'de, T: Deserialize<'de>> Visitor<'de> for ItemsVisitor<T> {
            type Value = Items<T>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Items<T>, A::Error> {
                let limit = max_items();
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    if items.len() >= limit {
                        note_limit_hit();
                        return Err(de::Error::custom(format!(
                            "more than {limit} entries (the server's limit per request)"
                        )));
                    }
                    items.push(item);
                }
                Ok(Items(items))
            }
        }
        deserializer.deserialize_seq(ItemsVisitor(PhantomData))
    }
}

/// A feature vector: exactly F finite numbers (checked while parsing).
#[derive(Debug, Clone, PartialEq)]
pub struct Features(pub Vec<f32>);

impl<'de> Deserialize<'de> for Features {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FeaturesVisitor;
        impl<'de> Visitor<'de> for FeaturesVisitor {
            type Value = Features;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a list of F numbers")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Features, A::Error> {
                let f = PARSE.with(|p| p.get().1);
                let mut values = Vec::with_capacity(f.min(1 << 16));
                while let Some(v) = seq.next_element::<f64>()? {
                    if values.len() >= f {
                        return Err(de::Error::custom(format!(
                            "more than F = {f} values (the model's feature dimension)"
                        )));
                    }
                    let x = v as f32;
                    if !x.is_finite() {
                        return Err(de::Error::custom(format!(
                            "value {} is {v:e}, beyond the f32 range (features must be finite f32)",
                            values.len()
                        )));
                    }
                    values.push(x);
                }
                if values.len() != f {
                    return Err(de::Error::custom(format!(
                        "{} values, the model has F = {f}",
                        values.len()
                    )));
                }
                Ok(Features(values))
            }
        }
        deserializer.deserialize_seq(FeaturesVisitor)
    }
}

/// A user id: 1 to [`MAX_USER_ID_BYTES`] bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct UserId(pub String);

impl<'de> Deserialize<'de> for UserId {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let id = String::deserialize(deserializer)?;
        check_user_id(&id).map_err(de::Error::custom)?;
        Ok(UserId(id))
    }
}

/// Why `id` is not a user id, if it is not one.
pub fn check_user_id(id: &str) -> Result<(), String> {
    if id.is_empty() {
        return Err("empty user id".into());
    }
    if id.len() > MAX_USER_ID_BYTES {
        return Err(format!(
            "user id of {} bytes (at most {MAX_USER_ID_BYTES})",
            id.len()
        ));
    }
    if id.chars().any(char::is_control) {
        return Err("user id with a control character".into());
    }
    Ok(())
}

/// `POST /v1/rewards`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardsRequest {
    /// The items to score.
    pub items: Items<RewardItem>,
    /// The user of every item without its own `user_id`.
    #[serde(default)]
    pub user_id: Option<UserId>,
}

/// One item of `POST /v1/rewards`: text (prompt, response) or features.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RewardItem {
    /// This item's user (overrides the request's).
    #[serde(default)]
    pub user_id: Option<UserId>,
    /// The prompt (with `response`).
    #[serde(default)]
    pub prompt: Option<TextIn>,
    /// The response to score (with `prompt`).
    #[serde(default)]
    pub response: Option<TextIn>,
    /// The response's features e [F] (instead of text).
    #[serde(default)]
    pub features: Option<Features>,
}

/// `POST /get_reward` (OpenRLHF's remote reward model protocol).
#[derive(Debug, Deserialize)]
pub struct GetRewardRequest {
    /// The texts to score, each embedded as given.
    pub query: Items<String>,
    /// Ignored (OpenRLHF sends the prompts).
    #[serde(default)]
    pub prompts: Option<IgnoredAny>,
    /// `labels[i]`, when a string, is the user id of `query[i]`.
    #[serde(default)]
    pub labels: Option<Items<Label>>,
}

/// A label of `/get_reward`: a string is a user id; anything else means no user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label(pub Option<String>);

impl<'de> Deserialize<'de> for Label {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct LabelVisitor;
        impl<'de> Visitor<'de> for LabelVisitor {
            type Value = Label;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a user id (string) or any other value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Label, E> {
                check_user_id(v).map_err(E::custom)?;
                Ok(Label(Some(v.to_string())))
            }
            fn visit_bool<E>(self, _: bool) -> Result<Label, E> {
                Ok(Label(None))
            }
            fn visit_i64<E>(self, _: i64) -> Result<Label, E> {
                Ok(Label(None))
            }
            fn visit_u64<E>(self, _: u64) -> Result<Label, E> {
                Ok(Label(None))
            }
            fn visit_f64<E>(self, _: f64) -> Result<Label, E> {
                Ok(Label(None))
            }
            fn visit_unit<E>(self) -> Result<Label, E> {
                Ok(Label(None))
            }
            fn visit_none<E>(self) -> Result<Label, E> {
                Ok(Label(None))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Label, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(Label(None))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Label, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(Label(None))
            }
        }
        deserializer.deserialize_any(LabelVisitor)
    }
}

/// `POST /v1/users/{id}/preferences`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreferencesRequest {
    /// The new pairs.
    pub pairs: Items<PairIn>,
}

/// One pair: text (prompt, chosen, rejected) or features x = e(chosen) - e(rejected).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PairIn {
    /// The prompt.
    #[serde(default)]
    pub prompt: Option<TextIn>,
    /// The preferred response.
    #[serde(default)]
    pub chosen: Option<TextIn>,
    /// The other response.
    #[serde(default)]
    pub rejected: Option<TextIn>,
    /// x = e(chosen) - e(rejected) [F] (instead of text).
    #[serde(default)]
    pub features: Option<Features>,
}

/// `POST /admin/reload`: the new model file (the served file's path, re-read, without it).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReloadRequest {
    /// Path of the new model file (on the server's machine).
    #[serde(default)]
    pub model: Option<String>,
}

/// Reads the body of a JSON request: content type (415), size (413), UTF-8 (400), syntax (400),
/// fields (422, named) and counts (413). `features` is the model's F.
pub async fn read_json<T: DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limits: &Limits,
    features: usize,
    allow_empty: bool,
) -> Result<T, ApiError> {
    if let Some(ct) = headers.get(header::CONTENT_TYPE) {
        let ct = ct.to_str().unwrap_or("").to_ascii_lowercase();
        let essence = ct.split(';').next().unwrap_or("").trim();
        if !(essence == "application/json" || essence.ends_with("+json")) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("body: content type `{essence}` is not application/json"),
            ));
        }
    }
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limits.max_body_bytes as u64 {
            return Err(body_too_large(limits));
        }
    }
    let bytes = axum::body::to_bytes(body, limits.max_body_bytes)
        .await
        .map_err(|e| {
            if is_length_limit(&e) {
                body_too_large(limits)
            } else {
                ApiError::bad_request(format!("body: could not be read ({e})"))
            }
        })?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        if allow_empty {
            return parse_json(b"{}", limits, features);
        }
        return Err(ApiError::bad_request(
            "body: empty (a JSON object is expected)",
        ));
    }
    if let Err(e) = std::str::from_utf8(&bytes) {
        return Err(ApiError::bad_request(format!(
            "body: not UTF-8 (invalid byte at offset {})",
            e.valid_up_to()
        )));
    }
    if bytes.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        && bytes
            .trim_ascii_start()
            .first()
            .is_some_and(|b| b"[\"-0123456789tfn".contains(b))
    {
        return Err(ApiError::unprocessable("body: a JSON object is expected"));
    }
    parse_json(&bytes, limits, features)
}

/// Whether the body error is the length limit.
fn is_length_limit(e: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(s) = source {
        if s.is::<http_body_util::LengthLimitError>() {
            return true;
        }
        source = s.source();
    }
    e.to_string().contains("length limit")
}

fn body_too_large(limits: &Limits) -> ApiError {
    ApiError::too_large(format!(
        "body: larger than {} bytes (the server's limit)",
        limits.max_body_bytes
    ))
}

/// Parses `bytes` as `T`, naming the field of any error.
pub fn parse_json<T: DeserializeOwned>(
    bytes: &[u8],
    limits: &Limits,
    features: usize,
) -> Result<T, ApiError> {
    PARSE.with(|p| p.set((limits.max_items, features)));
    LIMIT_HIT.with(|l| l.set(false));
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let result = match serde_path_to_error::deserialize::<_, T>(&mut de) {
        Ok(v) => de.end().map(|()| v).map_err(|e| (String::new(), e)),
        Err(e) => Err((e.path().to_string(), e.into_inner())),
    };
    let limit_hit = LIMIT_HIT.with(|l| l.replace(false));
    PARSE.with(|p| p.set((usize::MAX, usize::MAX)));
    result.map_err(|(path, inner)| {
        let field = if path == "." || path.is_empty() {
            "body".to_string()
        } else {
            path
        };
        let message = format!("{field}: {}", strip_position(&inner));
        if limit_hit {
            ApiError::too_large(message)
        } else if inner.is_syntax() || inner.is_eof() || inner.is_io() {
            ApiError::bad_request(message)
        } else {
            ApiError::unprocessable(message)
        }
    })
}

/// serde_json's message without " at line L column C" (kept for syntax errors, where it
/// helps), as one line.
fn strip_position(e: &serde_json::Error) -> String {
    let text = e.to_string();
    if e.is_syntax() || e.is_eof() {
        return text;
    }
    match text.rfind(" at line ") {
        Some(i) => text[..i].to_string(),
        None => text,
    }
}
