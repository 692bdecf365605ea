//! Hugging Face chat templates rendered with minijinja, configured like transformers does it.
//!
//! transformers renders `tokenizer.chat_template` in a Jinja sandbox with `trim_blocks` and
//! `lstrip_blocks`, the `loopcontrols` extension, a `tojson` filter that is Python's
//! `json.dumps(ensure_ascii=False)`, a `raise_exception` global, and the tokenizer's special
//! tokens (`bos_token`, `eos_token`, ...) as variables. The same here, plus Python string and
//! dict methods (`.strip()`, `.startswith()`, `.items()`, ... from minijinja-contrib).
//!
//! `strftime_now` is deliberately not defined: templates that test for it fall back to their
//! fixed date, so that features do not depend on the day they were computed.

use std::collections::BTreeMap;
use std::path::Path;

use minijinja::syntax::SyntaxConfig;
use minijinja::value::{Kwargs, Serde, Value, ValueKind};
use minijinja::{Environment, Error as JinjaError, ErrorKind};

use crate::error::{model_error, EmbedError, Result};
use crate::input::Message;

/// Name of the template inside its environment.
const NAME: &str = "chat_template";

/// Special-token variables that transformers passes to the template.
const SPECIAL_TOKENS: &[&str] = &[
    "bos_token",
    "eos_token",
    "unk_token",
    "sep_token",
    "pad_token",
    "cls_token",
    "mask_token",
];

/// A compiled chat template and the special tokens it may refer to.
pub struct ChatTemplate {
    env: Environment<'static>,
    special_tokens: BTreeMap<String, String>,
}

impl std::fmt::Debug for ChatTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatTemplate")
            .field("special_tokens", &self.special_tokens)
            .finish_non_exhaustive()
    }
}

impl ChatTemplate {
    /// Compiles a template source (Jinja as in `tokenizer_config.json`'s `chat_template`).
    pub fn new(source: impl Into<String>) -> Result<Self> {
        let mut env = Environment::new();
        let syntax = SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .build()
            .map_err(|e| EmbedError::Template(e.to_string()))?;
        env.set_syntax(syntax);
        minijinja_contrib::add_to_environment(&mut env);
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_filter("tojson", tojson);
        env.add_function("raise_exception", raise_exception);
        env.add_template_owned(NAME, source.into())
            .map_err(|e| EmbedError::Template(format!("cannot compile: {e}")))?;
        Ok(Self {
            env,
            special_tokens: BTreeMap::new(),
        })
    }

    /// Sets a special-token variable (`bos_token`, `eos_token`, ...).
    pub fn with_special_token(mut self, name: &str, token: impl Into<String>) -> Self {
        self.special_tokens.insert(name.to_string(), token.into());
        self
    }

    /// The special-token variables passed to the template.
    pub fn special_tokens(&self) -> &BTreeMap<String, String> {
        &self.special_tokens
    }

    /// The template of a model directory: `chat_template.jinja` when present, else
    /// `chat_template` of `tokenizer_config.json` (a string, or a list of named templates of
    /// which `default` is used); special tokens from `tokenizer_config.json`. `None` when the
    /// directory has no template.
    pub fn from_model_dir(dir: impl AsRef<Path>) -> Result<Option<Self>> {
        let dir = dir.as_ref();
        let config_path = dir.join("tokenizer_config.json");
        let config: serde_json::Value = if config_path.is_file() {
            let text = std::fs::read_to_string(&config_path)
                .map_err(|e| model_error(&config_path, format!("cannot read: {e}")))?;
            serde_json::from_str(&text)
                .map_err(|e| model_error(&config_path, format!("invalid JSON: {e}")))?
        } else {
            serde_json::Value::Null
        };
        let jinja_path = dir.join("chat_template.jinja");
        let source = if jinja_path.is_file() {
            std::fs::read_to_string(&jinja_path)
                .map_err(|e| model_error(&jinja_path, format!("cannot read: {e}")))?
        } else {
            match config.get("chat_template") {
                None | Some(serde_json::Value::Null) => return Ok(None),
                Some(serde_json::Value::String(s)) => s.clone(),
                Some(serde_json::Value::Array(named)) => named
                    .iter()
                    .find(|t| t.get("name").and_then(|n| n.as_str()) == Some("default"))
                    .and_then(|t| t.get("template")?.as_str())
                    .ok_or_else(|| {
                        model_error(
                            &config_path,
                            "`chat_template` lists named templates but none is `default`",
                        )
                    })?
                    .to_string(),
                Some(_) => {
                    return Err(model_error(
                        &config_path,
                        "`chat_template` must be a string or a list of {name, template}",
                    ))
                }
            }
        };
        let mut template = Self::new(source).map_err(|e| model_error(dir, e.to_string()))?;
        for &name in SPECIAL_TOKENS {
            if let Some(token) = special_token(&config, name) {
                template = template.with_special_token(name, token);
            }
        }
        Ok(Some(template))
    }

    /// Renders a conversation as the model reads it.
    pub fn render(&self, messages: &[Message], add_generation_prompt: bool) -> Result<String> {
        let mut context: BTreeMap<String, Value> = BTreeMap::new();
        for (name, token) in &self.special_tokens {
            context.insert(name.clone(), Value::from(token.as_str()));
        }
        context.insert("messages".into(), Value::from(Serde(messages)));
        context.insert(
            "add_generation_prompt".into(),
            Value::from(add_generation_prompt),
        );
        context.insert("tools".into(), Value::from(()));
        context.insert("documents".into(), Value::from(()));
        let template = self
            .env
            .get_template(NAME)
            .map_err(|e| EmbedError::Template(e.to_string()))?;
        template
            .render(Value::from_object(context))
            .map_err(|e| EmbedError::Template(e.to_string()))
    }
}

/// A special token of `tokenizer_config.json`: a string or an added-token object's `content`.
fn special_token(config: &serde_json::Value, name: &str) -> Option<String> {
    match config.get(name)? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// `raise_exception(message)`: stops rendering with the template's message.
fn raise_exception(message: String) -> std::result::Result<Value, JinjaError> {
    Err(JinjaError::new(ErrorKind::InvalidOperation, message))
}

/// `tojson` as transformers defines it: `json.dumps(value, ensure_ascii=False, indent=indent,
/// separators=separators, sort_keys=sort_keys)`.
fn tojson(value: Value, kwargs: Kwargs) -> std::result::Result<Value, JinjaError> {
    let indent: Option<usize> = kwargs.get("indent")?;
    let sort_keys: Option<bool> = kwargs.get("sort_keys")?;
    let separators: Option<Vec<String>> = kwargs.get("separators")?;
    kwargs.assert_all_used()?;
    let (item, key) = match separators.as_deref() {
        Some([item, key]) => (item.clone(), key.clone()),
        Some(_) => {
            return Err(JinjaError::new(
                ErrorKind::InvalidOperation,
                "tojson separators must be a pair",
            ))
        }
        None if indent.is_some() => (",".into(), ": ".into()),
        None => (", ".into(), ": ".into()),
    };
    let style = PyJson {
        indent,
        item,
        key,
        sort_keys: sort_keys.unwrap_or(false),
    };
    let mut out = String::new();
    style.dump(&value, 0, &mut out)?;
    Ok(Value::from_safe_string(out))
}

/// Python's `json.dumps` layout over template values (maps keep their order).
struct PyJson {
    indent: Option<usize>,
    item: String,
    key: String,
    sort_keys: bool,
}

impl PyJson {
    fn dump(
        &self,
        value: &Value,
        level: usize,
        out: &mut String,
    ) -> std::result::Result<(), JinjaError> {
        match value.kind() {
            ValueKind::Undefined | ValueKind::None => out.push_str("null"),
            ValueKind::Bool => out.push_str(if value.is_true() { "true" } else { "false" }),
            ValueKind::Number => match value.as_i64() {
                Some(i) if value.is_integer() => out.push_str(&i.to_string()),
                _ => {
                    let x = f64::try_from(value.clone())?;
                    match serde_json::Number::from_f64(x) {
                        Some(n) => out.push_str(&n.to_string()),
                        None if x.is_nan() => out.push_str("NaN"),
                        None if x > 0.0 => out.push_str("Infinity"),
                        None => out.push_str("-Infinity"),
                    }
                }
            },
            ValueKind::String => push_json_string(value.as_str().unwrap_or_default(), out),
            ValueKind::Map => {
                let mut keys: Vec<Value> = value.try_iter()?.collect();
                if keys.is_empty() {
                    out.push_str("{}");
                    return Ok(());
                }
                if self.sort_keys {
                    keys.sort();
                }
                out.push('{');
                for (i, k) in keys.iter().enumerate() {
                    self.separate(i, level + 1, out);
                    match k.as_str() {
                        Some(s) => push_json_string(s, out),
                        None => push_json_string(&k.to_string(), out),
                    }
                    out.push_str(&self.key);
                    self.dump(&value.get_item(k)?, level + 1, out)?;
                }
                self.close(level, out);
                out.push('}');
            }
            ValueKind::Seq | ValueKind::Iterable => {
                let items: Vec<Value> = value.try_iter()?.collect();
                if items.is_empty() {
                    out.push_str("[]");
                    return Ok(());
                }
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    self.separate(i, level + 1, out);
                    self.dump(item, level + 1, out)?;
                }
                self.close(level, out);
                out.push(']');
            }
            _ => {
                return Err(JinjaError::new(
                    ErrorKind::InvalidOperation,
                    format!("tojson cannot serialize a value of kind {}", value.kind()),
                ))
            }
        }
        Ok(())
    }

    /// Before item `i` of a container whose items are at `level`.
    fn separate(&self, i: usize, level: usize, out: &mut String) {
        if i > 0 {
            out.push_str(&self.item);
        }
        if let Some(indent) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(indent * level));
        }
    }

    /// Before the closing bracket of a container at `level`.
    fn close(&self, level: usize, out: &mut String) {
        if let Some(indent) = self.indent {
            out.push('\n');
            out.push_str(&" ".repeat(indent * level));
        }
    }
}

/// A JSON string literal with Python's escapes for `ensure_ascii=False` (the same as serde_json's).
fn push_json_string(s: &str, out: &mut String) {
    out.push_str(&serde_json::Value::from(s).to_string());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_with_globals_and_python_methods() {
        let t = ChatTemplate::new(
            "{{ bos_token }}{% for m in messages %}{% if m.role == 'system' %}{{ raise_exception('no system') }}{% endif %}\n\
             [{{ m['role'] }}] {{ m.content.strip() | trim }}\n{% endfor %}{% if add_generation_prompt %}[assistant]{% endif %}",
        )
        .unwrap()
        .with_special_token("bos_token", "<s>");
        let messages = [
            Message::new("user", " hi "),
            Message::new("assistant", "yo"),
        ];
        assert_eq!(
            t.render(&messages, true).unwrap(),
            "<s>[user] hi\n[assistant] yo\n[assistant]"
        );
        let err = t.render(&[Message::new("system", "x")], false).unwrap_err();
        assert!(err.to_string().contains("no system"), "{err}");
    }

    #[test]
    fn tojson_is_python_json_dumps() {
        let t = ChatTemplate::new(
            "{{ {'b': [1, 'é'], 'a': none} | tojson }}|{{ {'b': 1, 'a': [2]} | tojson(indent=2, sort_keys=true) }}",
        )
        .unwrap();
        assert_eq!(
            t.render(&[], false).unwrap(),
            "{\"b\": [1, \"é\"], \"a\": null}|{\n  \"a\": [\n    2\n  ],\n  \"b\": 1\n}"
        );
    }

    #[test]
    fn loop_controls() {
        let t = ChatTemplate::new("{% for m in messages %}{% if loop.index > 1 %}{% break %}{% endif %}{{ m.content }}{% endfor %}")
            .unwrap();
        let messages = [Message::new("user", "a"), Message::new("user", "b")];
        assert_eq!(t.render(&messages, false).unwrap(), "a");
    }
}
