//! Input readers: per-user preference pairs from JSONL (plain or gzip) or Parquet.
//!
//! A record has the columns `user_id`, `prompt`, `chosen` and `rejected`, and optionally
//! `prompt_id`, `pair_id` and `split`; other columns are ignored.
//!
//! - `user_id`, `prompt_id`, `pair_id`, `split`: a string or an integer (kept as its decimal
//!   text); the optional ones may be `null` or absent.
//! - `prompt`: a string, or a conversation: a list of `{role, content}` messages.
//! - `chosen`, `rejected`: a string, a list of messages (the response turns, as in
//!   conversational preference datasets), or a single message.
//! - A message's `content` is a string, `null` (empty), or a list of parts of which the
//!   `{"type": "text", "text": ...}` ones are concatenated.

use std::borrow::Cow;
use std::fs::File;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{EmbedError, Location, Result};

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Who speaks: `system`, `user`, `assistant`, ...
    pub role: String,
    /// What is said.
    pub content: String,
}

impl Message {
    /// A message of `role` saying `content`.
    pub fn new(role: impl Into<String>, content: impl Into<String>) -> Self {
        Self {
            role: role.into(),
            content: content.into(),
        }
    }
}

/// A prompt or a response: plain text, or a conversation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Text {
    /// A plain string.
    Plain(String),
    /// A list of messages.
    Messages(Vec<Message>),
}

impl Text {
    /// The text as a sentence encoder reads it: a plain string as is, messages as
    /// `role: content` lines joined by newlines.
    pub fn to_plain(&self) -> Cow<'_, str> {
        match self {
            Text::Plain(s) => Cow::Borrowed(s),
            Text::Messages(messages) => Cow::Owned(
                messages
                    .iter()
                    .map(|m| format!("{}: {}", m.role, m.content))
                    .collect::<Vec<_>>()
                    .join("\n"),
            ),
        }
    }

    /// The text as messages: a plain string becomes one message of `role`.
    pub fn to_messages(&self, role: &str) -> Cow<'_, [Message]> {
        match self {
            Text::Plain(s) => Cow::Owned(vec![Message::new(role, s.clone())]),
            Text::Messages(messages) => Cow::Borrowed(messages),
        }
    }
}

impl From<&str> for Text {
    fn from(s: &str) -> Self {
        Text::Plain(s.to_string())
    }
}

/// One preference: user `user_id` prefers `chosen` over `rejected` as a response to `prompt`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PairRecord {
    /// The user's id (integers are kept as their decimal text).
    pub user_id: String,
    /// The prompt.
    pub prompt: Text,
    /// The preferred response.
    pub chosen: Text,
    /// The other response.
    pub rejected: Text,
    /// Optional id of the prompt (pairs on the same prompt share it).
    pub prompt_id: Option<String>,
    /// Optional id of the pair.
    pub pair_id: Option<String>,
    /// Optional name of the set the pair belongs to (`train`, `test`, ...).
    pub split: Option<String>,
    /// Where the record was read (for messages).
    pub at: Location,
}

/// Reads the pairs of `path`: Parquet when it starts with `PAR1` (or is named `*.parquet`),
/// gzip-compressed JSONL when it starts with the gzip magic bytes, else JSONL. Reads at most
/// `limit` records. Blank lines are skipped.
pub fn read_pairs(path: impl AsRef<Path>, limit: Option<usize>) -> Result<Vec<PairRecord>> {
    let path = path.as_ref();
    let file_err = |reason: String| EmbedError::InputFile {
        path: path.to_path_buf(),
        reason,
    };
    if path.is_dir() {
        return Err(file_err("is a folder, not an input file".into()));
    }
    // Before opening: opening a FIFO would wait for a writer.
    if let Ok(meta) = std::fs::metadata(path) {
        if !meta.is_file() {
            return Err(file_err(format!(
                "is not a regular file ({}); give a JSONL or Parquet file",
                special_kind(&meta.file_type())
            )));
        }
    }
    let mut file = File::open(path).map_err(|e| file_err(format!("cannot open: {e}")))?;
    let mut magic = [0u8; 4];
    let n = read_up_to(&mut file, &mut magic).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let magic = &magic[..n];
    let is_parquet_name = path
        .extension()
        .is_some_and(|e| e.eq_ignore_ascii_case("parquet"));
    if magic == b"PAR1" || is_parquet_name {
        return read_parquet(path, limit);
    }
    let file = File::open(path).map_err(|e| file_err(format!("cannot open: {e}")))?;
    if magic.starts_with(&[0x1f, 0x8b]) {
        let decoder = flate2::read::MultiGzDecoder::new(BufReader::new(file));
        read_jsonl(BufReader::with_capacity(1 << 16, decoder), path, limit)
    } else {
        read_jsonl(BufReader::with_capacity(1 << 16, file), path, limit)
    }
}

/// What a file that is neither a regular file nor a folder is, in words.
fn special_kind(kind: &std::fs::FileType) -> &'static str {
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if kind.is_fifo() {
            return "a FIFO";
        }
        if kind.is_socket() {
            return "a socket";
        }
        if kind.is_block_device() || kind.is_char_device() {
            return "a device";
        }
    }
    let _ = kind;
    "a FIFO?"
}

/// Reads as many bytes as fit in `buf` (fewer only at the end of the file).
fn read_up_to(reader: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..])? {
            0 => break,
            n => filled += n,
        }
    }
    Ok(filled)
}

/// Reads JSONL records from `reader`; `path` names the source in messages.
pub fn read_jsonl(
    mut reader: impl BufRead,
    path: &Path,
    limit: Option<usize>,
) -> Result<Vec<PairRecord>> {
    let mut records = Vec::new();
    let mut line = Vec::new();
    let mut number = 0;
    while limit.is_none_or(|limit| records.len() < limit) {
        line.clear();
        number += 1;
        let at = Location::Line(number);
        let read = reader
            .read_until(b'\n', &mut line)
            .map_err(|e| EmbedError::Record {
                path: path.to_path_buf(),
                at,
                reason: format!("cannot read: {e}"),
            })?;
        if read == 0 {
            break;
        }
        let record_err = |reason: String| EmbedError::Record {
            path: path.to_path_buf(),
            at,
            reason,
        };
        let text =
            std::str::from_utf8(&line).map_err(|e| record_err(format!("not valid UTF-8: {e}")))?;
        let text = text.trim();
        if text.is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(text).map_err(|e| {
            record_err(format!(
                "invalid JSON at column {}: {}",
                e.column(),
                json_message(&e)
            ))
        })?;
        records.push(parse_record(value, at).map_err(record_err)?);
    }
    Ok(records)
}

/// serde_json's message without its trailing " at line L column C".
fn json_message(e: &serde_json::Error) -> String {
    let message = e.to_string();
    match message.rfind(" at line ") {
        Some(i) => message[..i].to_string(),
        None => message,
    }
}

/// Builds a record from one JSON object (or Parquet row converted to JSON).
pub fn parse_record(value: Value, at: Location) -> std::result::Result<PairRecord, String> {
    let Value::Object(mut object) = value else {
        return Err(format!(
            "expected a JSON object with columns user_id, prompt, chosen, rejected; found {}",
            kind(&value)
        ));
    };
    let user_id =
        id_column(&mut object, "user_id")?.ok_or_else(|| "missing column `user_id`".to_string())?;
    let prompt = text_column(&mut object, "prompt", false)?;
    let chosen = text_column(&mut object, "chosen", true)?;
    let rejected = text_column(&mut object, "rejected", true)?;
    Ok(PairRecord {
        user_id,
        prompt,
        chosen,
        rejected,
        prompt_id: id_column(&mut object, "prompt_id")?,
        pair_id: id_column(&mut object, "pair_id")?,
        split: id_column(&mut object, "split")?,
        at,
    })
}

/// A JSON type's name for messages.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

/// An id column: a string or an integer; `None` when absent or null.
fn id_column(
    object: &mut Map<String, Value>,
    name: &str,
) -> std::result::Result<Option<String>, String> {
    match object.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s)),
        Some(Value::Number(n)) if n.is_i64() || n.is_u64() => Ok(Some(n.to_string())),
        Some(other) => Err(format!(
            "column `{name}` must be a string or an integer, found {}",
            kind(&other)
        )),
    }
}

/// A text column: a string, or messages (`response` also allows a single message object).
fn text_column(
    object: &mut Map<String, Value>,
    name: &str,
    response: bool,
) -> std::result::Result<Text, String> {
    let value = object
        .remove(name)
        .ok_or_else(|| format!("missing column `{name}`"))?;
    let expected = if response {
        "a string, a list of {role, content} messages or one message"
    } else {
        "a string or a list of {role, content} messages"
    };
    match value {
        Value::String(s) => Ok(Text::Plain(s)),
        Value::Array(items) => items
            .into_iter()
            .enumerate()
            .map(|(i, item)| {
                message(item).map_err(|e| format!("column `{name}`, message {i}: {e}"))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(Text::Messages),
        Value::Object(_) if response => message(value)
            .map(|m| Text::Messages(vec![m]))
            .map_err(|e| format!("column `{name}`: {e}")),
        other => Err(format!(
            "column `{name}` must be {expected}, found {}",
            kind(&other)
        )),
    }
}

/// One `{role, content}` message.
fn message(value: Value) -> std::result::Result<Message, String> {
    let Value::Object(mut object) = value else {
        return Err(format!(
            "expected an object with `role` and `content`, found {}",
            kind(&value)
        ));
    };
    let role = match object.remove("role") {
        Some(Value::String(role)) => role,
        Some(other) => return Err(format!("`role` must be a string, found {}", kind(&other))),
        None => return Err("missing `role`".into()),
    };
    let content = match object.remove("content") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(content)) => content,
        Some(Value::Array(parts)) => {
            let mut text = String::new();
            for part in parts {
                match part {
                    Value::String(s) => text.push_str(&s),
                    Value::Object(mut part) => {
                        if let Some(Value::String(s)) = part.remove("text") {
                            text.push_str(&s);
                        }
                    }
                    other => {
                        return Err(format!(
                            "`content` parts must be strings or objects, found {}",
                            kind(&other)
                        ))
                    }
                }
            }
            text
        }
        Some(other) => {
            return Err(format!(
                "`content` must be a string or a list of parts, found {}",
                kind(&other)
            ))
        }
    };
    Ok(Message { role, content })
}

/// Reads Parquet records through the row API: each row is converted to JSON and parsed like
/// a JSONL line (so nested conversation columns work).
#[cfg(feature = "parquet")]
fn read_parquet(path: &Path, limit: Option<usize>) -> Result<Vec<PairRecord>> {
    use parquet::file::reader::{FileReader, SerializedFileReader};

    let file_err = |reason: String| EmbedError::InputFile {
        path: path.to_path_buf(),
        reason,
    };
    let file = File::open(path).map_err(|e| file_err(format!("cannot open: {e}")))?;
    let reader = SerializedFileReader::new(file)
        .map_err(|e| file_err(format!("not a readable Parquet file: {e}")))?;
    let rows = reader
        .get_row_iter(None)
        .map_err(|e| file_err(format!("cannot read the Parquet rows: {e}")))?;
    let mut records = Vec::new();
    for (i, row) in rows.enumerate() {
        if limit.is_some_and(|limit| records.len() >= limit) {
            break;
        }
        let at = Location::Row(i + 1);
        let record_err = |reason: String| EmbedError::Record {
            path: path.to_path_buf(),
            at,
            reason,
        };
        let row = row.map_err(|e| record_err(format!("cannot decode: {e}")))?;
        let object: Map<String, Value> = row
            .get_column_iter()
            .map(|(name, field)| (name.clone(), parquet_json(field)))
            .collect();
        records.push(parse_record(Value::Object(object), at).map_err(record_err)?);
    }
    Ok(records)
}

/// Without the `parquet` feature, Parquet inputs are an error.
#[cfg(not(feature = "parquet"))]
fn read_parquet(path: &Path, _limit: Option<usize>) -> Result<Vec<PairRecord>> {
    Err(EmbedError::InputFile {
        path: path.to_path_buf(),
        reason: "Parquet input needs lore-embed's `parquet` feature".into(),
    })
}

/// A Parquet field as JSON: strings, numbers, lists and groups map to their JSON kind; bytes
/// are read as UTF-8 text; other logical types (dates, decimals) as their display text.
#[cfg(feature = "parquet")]
fn parquet_json(field: &parquet::record::Field) -> Value {
    use parquet::record::Field;
    match field {
        Field::Null => Value::Null,
        Field::Bool(b) => Value::Bool(*b),
        Field::Byte(n) => Value::from(*n),
        Field::Short(n) => Value::from(*n),
        Field::Int(n) => Value::from(*n),
        Field::Long(n) => Value::from(*n),
        Field::UByte(n) => Value::from(*n),
        Field::UShort(n) => Value::from(*n),
        Field::UInt(n) => Value::from(*n),
        Field::ULong(n) => Value::from(*n),
        Field::Float(x) => Value::from(*x),
        Field::Double(x) => Value::from(*x),
        Field::Str(s) => Value::String(s.clone()),
        Field::Bytes(b) => Value::String(String::from_utf8_lossy(b.data()).into_owned()),
        Field::Group(row) => Value::Object(
            row.get_column_iter()
                .map(|(name, field)| (name.clone(), parquet_json(field)))
                .collect(),
        ),
        Field::ListInternal(list) => {
            Value::Array(list.elements().iter().map(parquet_json).collect())
        }
        Field::MapInternal(map) => Value::Object(
            map.entries()
                .iter()
                .map(|(key, value)| {
                    let key = match parquet_json(key) {
                        Value::String(s) => s,
                        other => other.to_string(),
                    };
                    (key, parquet_json(value))
                })
                .collect(),
        ),
        other => Value::String(other.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(line: &str) -> std::result::Result<PairRecord, String> {
        parse_record(serde_json::from_str(line).unwrap(), Location::Line(1))
    }

    #[test]
    fn plain_record() {
        let r = parse(r#"{"user_id": 7, "prompt": "p", "chosen": "a", "rejected": "b", "x": 1}"#)
            .unwrap();
        assert_eq!(r.user_id, "7");
        assert_eq!(r.prompt, Text::Plain("p".into()));
        assert_eq!(r.prompt_id, None);
    }

    #[test]
    fn conversational_record() {
        let r = parse(
            r#"{"user_id": "u", "prompt": [{"role": "user", "content": "hi"}],
                "chosen": [{"role": "assistant", "content": [{"type": "text", "text": "yo"}]}],
                "rejected": {"role": "assistant", "content": "no"},
                "prompt_id": "p1", "pair_id": 3, "split": null}"#,
        )
        .unwrap();
        assert_eq!(r.prompt.to_plain(), "user: hi");
        assert_eq!(r.chosen.to_messages("assistant")[0].content, "yo");
        assert_eq!(
            r.rejected,
            Text::Messages(vec![Message::new("assistant", "no")])
        );
        assert_eq!(r.prompt_id.as_deref(), Some("p1"));
        assert_eq!(r.pair_id.as_deref(), Some("3"));
        assert_eq!(r.split, None);
    }

    #[test]
    fn bad_records() {
        assert_eq!(
            parse(r#"{"user_id": "u", "prompt": "p", "chosen": "a"}"#).unwrap_err(),
            "missing column `rejected`"
        );
        assert!(
            parse(r#"{"user_id": 1.5, "prompt": "p", "chosen": "a", "rejected": "b"}"#)
                .unwrap_err()
                .contains("`user_id` must be a string or an integer")
        );
        assert!(parse(
            r#"{"user_id": "u", "prompt": [{"content": "x"}], "chosen": "a", "rejected": "b"}"#
        )
        .unwrap_err()
        .contains("missing `role`"));
        assert!(parse("[1]").unwrap_err().contains("found a list"));
    }
}
