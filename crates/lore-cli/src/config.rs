//! TOML configuration files: `--config FILE` holds the same keys as a command's long flags
//! (`unseen-fraction = 0.3`, `ranks = [0, 1, 2, 4]`); flags given on the command line override
//! the file, and the file overrides the defaults. The effective configuration is written as
//! `config.toml` beside a command's results, so `--config that/config.toml` reruns it.
//! Paths in a configuration file are relative to the working directory, like flags.
//! TOML's integers stop at 2^63 - 1: a larger value (a seed of 18446744073709551615) is written
//! as its quoted digits and read back as the number, and a path that is not UTF-8 as the table
//! `{ bytes = [...] }` of its bytes, so that every run's config.toml reruns it exactly.
//!
//! Every command that takes options implements [`Configurable`]; `--help` shows each flag's
//! default from the same [`Configurable::defaults`] that [`options`] starts from.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The name of the effective configuration written beside results.
pub const CONFIG_FILE: &str = "config.toml";

/// The `--config FILE` flag, flattened into every command that takes options.
#[derive(clap::Args, Debug, Default)]
pub struct ConfigFlag {
    /// TOML file of options (keys are the long flags); flags given here override it
    #[arg(long = "config", value_name = "FILE")]
    pub path: Option<PathBuf>,
}

/// A command whose options come from its defaults, then `--config FILE`, then its flags.
///
/// The flags (`Self`) serialize only the flags given, under their long names; the options
/// hold every value once resolved.
pub trait Configurable: clap::Args + Serialize {
    /// The resolved options, keyed by the long flags.
    type Options: Serialize + DeserializeOwned;

    /// The options before any file or flag (values left out have no default).
    fn defaults() -> Self::Options;

    /// The `--config` flag.
    fn config_flag(&self) -> &ConfigFlag;

    /// Defaults for `--help` that are no plain value of [`Self::defaults`] (they depend on
    /// another option), as (long flag, text).
    fn default_notes() -> Vec<(&'static str, String)> {
        Vec::new()
    }
}

/// A command's options: its defaults, then its `--config` file, then its flags.
pub fn options<A: Configurable>(flags: &A) -> Result<A::Options> {
    resolve(flags, flags.config_flag().path.as_deref(), &A::defaults())
}

/// A value the command cannot run without, from a flag or the configuration file.
pub fn required<'a, T>(value: &'a Option<T>, flag: &str) -> Result<&'a T> {
    value
        .as_ref()
        .ok_or_else(|| anyhow!("give {flag} (a flag, or a key of the --config file)"))
}

/// Appends ` [default: ...]` to the help of each flag of `A` with a default, from
/// [`Configurable::defaults`] and [`Configurable::default_notes`]; help that already names its
/// default is left as it is.
pub fn document_defaults<A: Configurable>(mut cmd: clap::Command) -> clap::Command {
    let mut notes: Vec<(String, String)> = lossless::to_table(&A::defaults())
        .map(|table| {
            table
                .into_iter()
                .filter_map(|(key, value)| Some((key, shown(&value)?)))
                .collect()
        })
        .unwrap_or_default();
    notes.extend(
        A::default_notes()
            .into_iter()
            .map(|(k, v)| (k.to_string(), v)),
    );
    let ids: Vec<(clap::Id, String)> = cmd
        .get_arguments()
        .filter_map(|a| Some((a.get_id().clone(), a.get_long()?.to_string())))
        .collect();
    for (id, long) in ids {
        let Some((_, text)) = notes.iter().find(|(key, _)| *key == long) else {
            continue;
        };
        cmd = cmd.mut_arg(id, |arg| {
            let with_default = |help: &clap::builder::StyledStr| {
                let help = help.to_string();
                if help.contains("[default:") {
                    help
                } else {
                    format!("{} [default: {text}]", help.trim_end())
                }
            };
            let help = arg.get_help().map(with_default);
            let long_help = arg.get_long_help().map(with_default);
            let arg = match help {
                Some(help) => arg.help(help),
                None => arg,
            };
            match long_help {
                Some(help) => arg.long_help(help),
                None => arg,
            }
        });
    }
    cmd
}

/// A default as `--help` shows it (`0.5`, `0,1,2,4`, `lore`); none for switches and tables.
fn shown(value: &toml::Value) -> Option<String> {
    match value {
        toml::Value::String(s) => Some(s.clone()),
        toml::Value::Integer(i) => Some(i.to_string()),
        toml::Value::Float(f) => Some(f.to_string()),
        toml::Value::Array(items) => items
            .iter()
            .map(shown)
            .collect::<Option<Vec<_>>>()
            .map(|items| items.join(",")),
        toml::Value::Boolean(_) | toml::Value::Datetime(_) | toml::Value::Table(_) => None,
    }
}

/// A command's options from its `defaults`, then the file `config` (if any), then the flags
/// given (`flags` serializes only the flags that were given, under their long names).
/// `A` lists the known keys: its long flags, except `config` itself.
fn resolve<A, O>(flags: &A, config: Option<&Path>, defaults: &O) -> Result<O>
where
    A: Serialize + clap::Args,
    O: Serialize + DeserializeOwned,
{
    let mut table = lossless::to_table(defaults).context("encoding the defaults")?;
    if let Some(path) = config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read config file {}", path.display()))?;
        let file: toml::Table =
            toml::from_str(&text).map_err(|e| anyhow!("{}: {}", path.display(), e.message()))?;
        let known = known_keys::<A>();
        if let Some(key) = file.keys().find(|k| !known.contains(k.as_str())) {
            bail!(
                "{}: unknown key `{key}` (the keys are the command's long flags: {})",
                path.display(),
                known.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        table.extend(file);
    }
    table.extend(lossless::to_table(flags).context("encoding the flags")?);
    let source = config.map_or_else(|| "flags".to_string(), |p| p.display().to_string());
    lossless::from_value(toml::Value::Table(table)).map_err(|e| anyhow!("{source}: {e}"))
}

/// Writes `options` as `config.toml` in `dir`, atomically, under a header naming `command`.
/// `dir` may be the staging folder of the output folder `shown`: the header's rerun line names
/// `shown`, so the file is the same wherever it was built.
pub fn write_effective_in<O: Serialize>(
    dir: &Path,
    shown: &Path,
    command: &str,
    options: &O,
) -> Result<()> {
    let body = lossless::to_table(options)
        .map_err(anyhow::Error::from)
        .and_then(|table| Ok(toml::to_string(&table)?))
        .context("encoding the effective configuration")?;
    let text = format!(
        "# Effective configuration of `lore {command}` (flags over --config over defaults).\n\
         # Rerun with: lore {command} --config {}\n{body}",
        shown.join(CONFIG_FILE).display()
    );
    lore_io::write_bytes_atomic(dir.join(CONFIG_FILE), text.as_bytes())?;
    Ok(())
}

/// The long flags of `A` but `config`: the keys a configuration file may hold.
fn known_keys<A: clap::Args>() -> BTreeSet<String> {
    A::augment_args(clap::Command::new("lore"))
        .get_arguments()
        .filter_map(|a| a.get_long().map(str::to_string))
        .filter(|long| long != "config")
        .collect()
}

/// For `#[serde(skip_serializing_if = "is_false")]` on flags that are plain switches.
pub fn is_false(value: &bool) -> bool {
    !*value
}

/// Paths in configurations without loss, for `#[serde(with = "config::path")]` on an
/// `Option<PathBuf>` ([`path::required`] for a `PathBuf`): a UTF-8 path is its string; any
/// other path (Unix file names are bytes) is the table `{ bytes = [...] }` of its bytes, read
/// back exactly.
pub mod path {
    use std::ffi::OsString;
    use std::path::{Path, PathBuf};

    use serde::de::{self, Deserializer, MapAccess, Visitor};
    use serde::ser::{SerializeMap, Serializer};

    /// The key of a path's bytes.
    const BYTES: &str = "bytes";

    /// Serializes an optional path (`None` as nothing).
    pub fn serialize<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
        match path {
            Some(path) => required::serialize(path, s),
            None => s.serialize_none(),
        }
    }

    /// Reads an optional path (present keys only reach here).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
        required::deserialize(d).map(Some)
    }

    /// The same for a path that is always there.
    pub mod required {
        use super::*;

        /// Serializes a path: its string, or the table of its bytes.
        pub fn serialize<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
            match path.to_str() {
                Some(text) => s.serialize_str(text),
                None => {
                    let mut map = s.serialize_map(Some(1))?;
                    map.serialize_entry(BYTES, &bytes(path))?;
                    map.end()
                }
            }
        }

        /// Reads a path from its string or the table of its bytes.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<PathBuf, D::Error> {
            d.deserialize_any(PathVisitor)
        }
    }

    #[cfg(unix)]
    fn bytes(path: &Path) -> Vec<u8> {
        std::os::unix::ffi::OsStrExt::as_bytes(path.as_os_str()).to_vec()
    }

    #[cfg(not(unix))]
    fn bytes(path: &Path) -> Vec<u8> {
        path.to_string_lossy().into_owned().into_bytes()
    }

    #[cfg(unix)]
    fn from_bytes(bytes: Vec<u8>) -> Option<PathBuf> {
        Some(PathBuf::from(
            <OsString as std::os::unix::ffi::OsStringExt>::from_vec(bytes),
        ))
    }

    #[cfg(not(unix))]
    fn from_bytes(bytes: Vec<u8>) -> Option<PathBuf> {
        String::from_utf8(bytes)
            .ok()
            .map(|s| PathBuf::from(OsString::from(s)))
    }

    struct PathVisitor;

    impl<'de> Visitor<'de> for PathVisitor {
        type Value = PathBuf;

        fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
            f.write_str("a path (a string, or a table `{ bytes = [...] }`)")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<PathBuf, E> {
            Ok(PathBuf::from(v))
        }

        fn visit_u64<E: de::Error>(self, v: u64) -> Result<PathBuf, E> {
            Ok(PathBuf::from(v.to_string()))
        }

        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<PathBuf, A::Error> {
            let mut path = None;
            while let Some(key) = map.next_key::<String>()? {
                if key != BYTES || path.is_some() {
                    return Err(de::Error::custom(format!(
                        "a path table holds `{BYTES}` alone, not `{key}`"
                    )));
                }
                let bytes: Vec<u8> = map.next_value()?;
                path = Some(from_bytes(bytes).ok_or_else(|| {
                    de::Error::custom("a path's bytes are not a path on this system")
                })?);
            }
            path.ok_or_else(|| de::Error::custom(format!("a path table needs `{BYTES}`")))
        }
    }
}

/// TOML values without loss: TOML's integers are i64, so a u64 above `i64::MAX` (a seed such as
/// 18446744073709551615) is stored as the string of its digits, and read back as that number
/// wherever a number is expected (a string is still a string where one is expected).
mod lossless {
    use serde::de::value::{MapDeserializer, SeqDeserializer};
    use serde::de::{self, IntoDeserializer, Visitor};
    use serde::ser::{self, Serialize};

    /// The error of both directions.
    pub type Error = de::value::Error;

    /// `value` as a TOML value (`None` for a value TOML leaves out, such as `None`).
    pub fn to_value<T: Serialize + ?Sized>(value: &T) -> Result<Option<toml::Value>, Error> {
        value.serialize(ValueSerializer)
    }

    /// `value` as a TOML table.
    pub fn to_table<T: Serialize + ?Sized>(value: &T) -> Result<toml::Table, Error> {
        match to_value(value)? {
            Some(toml::Value::Table(table)) => Ok(table),
            _ => Err(ser::Error::custom("expected a table")),
        }
    }

    /// A `T` from a TOML value, digit strings above `i64::MAX` read as numbers.
    pub fn from_value<T: de::DeserializeOwned>(value: toml::Value) -> Result<T, Error> {
        T::deserialize(Lossless(value))
    }

    /// Whether `s` is a u64 that TOML's integers cannot hold.
    fn big(s: &str) -> Option<u64> {
        s.parse::<u64>().ok().filter(|&n| n > i64::MAX as u64)
    }

    struct ValueSerializer;

    type Out = Result<Option<toml::Value>, Error>;

    fn int(v: i64) -> Out {
        Ok(Some(toml::Value::Integer(v)))
    }

    impl ser::Serializer for ValueSerializer {
        type Ok = Option<toml::Value>;
        type Error = Error;
        type SerializeSeq = SeqBuilder;
        type SerializeTuple = SeqBuilder;
        type SerializeTupleStruct = SeqBuilder;
        type SerializeTupleVariant = SeqBuilder;
        type SerializeMap = TableBuilder;
        type SerializeStruct = TableBuilder;
        type SerializeStructVariant = TableBuilder;

        fn serialize_bool(self, v: bool) -> Out {
            Ok(Some(toml::Value::Boolean(v)))
        }
        fn serialize_i8(self, v: i8) -> Out {
            int(v.into())
        }
        fn serialize_i16(self, v: i16) -> Out {
            int(v.into())
        }
        fn serialize_i32(self, v: i32) -> Out {
            int(v.into())
        }
        fn serialize_i64(self, v: i64) -> Out {
            int(v)
        }
        fn serialize_u8(self, v: u8) -> Out {
            int(v.into())
        }
        fn serialize_u16(self, v: u16) -> Out {
            int(v.into())
        }
        fn serialize_u32(self, v: u32) -> Out {
            int(v.into())
        }
        fn serialize_u64(self, v: u64) -> Out {
            match i64::try_from(v) {
                Ok(v) => int(v),
                Err(_) => Ok(Some(toml::Value::String(v.to_string()))),
            }
        }
        fn serialize_f32(self, v: f32) -> Out {
            Ok(Some(toml::Value::Float(v.into())))
        }
        fn serialize_f64(self, v: f64) -> Out {
            Ok(Some(toml::Value::Float(v)))
        }
        fn serialize_char(self, v: char) -> Out {
            Ok(Some(toml::Value::String(v.to_string())))
        }
        fn serialize_str(self, v: &str) -> Out {
            Ok(Some(toml::Value::String(v.to_string())))
        }
        fn serialize_bytes(self, v: &[u8]) -> Out {
            let items = v.iter().map(|&b| toml::Value::Integer(b.into())).collect();
            Ok(Some(toml::Value::Array(items)))
        }
        fn serialize_none(self) -> Out {
            Ok(None)
        }
        fn serialize_some<T: Serialize + ?Sized>(self, value: &T) -> Out {
            value.serialize(self)
        }
        fn serialize_unit(self) -> Out {
            Ok(None)
        }
        fn serialize_unit_struct(self, _: &'static str) -> Out {
            Ok(None)
        }
        fn serialize_unit_variant(self, _: &'static str, _: u32, variant: &'static str) -> Out {
            self.serialize_str(variant)
        }
        fn serialize_newtype_struct<T: Serialize + ?Sized>(self, _: &'static str, v: &T) -> Out {
            v.serialize(self)
        }
        fn serialize_newtype_variant<T: Serialize + ?Sized>(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            value: &T,
        ) -> Out {
            let mut table = toml::Table::new();
            if let Some(v) = value.serialize(ValueSerializer)? {
                table.insert(variant.to_string(), v);
            }
            Ok(Some(toml::Value::Table(table)))
        }
        fn serialize_seq(self, _: Option<usize>) -> Result<SeqBuilder, Error> {
            Ok(SeqBuilder::default())
        }
        fn serialize_tuple(self, _: usize) -> Result<SeqBuilder, Error> {
            Ok(SeqBuilder::default())
        }
        fn serialize_tuple_struct(self, _: &'static str, _: usize) -> Result<SeqBuilder, Error> {
            Ok(SeqBuilder::default())
        }
        fn serialize_tuple_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<SeqBuilder, Error> {
            Ok(SeqBuilder {
                variant: Some(variant),
                ..SeqBuilder::default()
            })
        }
        fn serialize_map(self, _: Option<usize>) -> Result<TableBuilder, Error> {
            Ok(TableBuilder::default())
        }
        fn serialize_struct(self, _: &'static str, _: usize) -> Result<TableBuilder, Error> {
            Ok(TableBuilder::default())
        }
        fn serialize_struct_variant(
            self,
            _: &'static str,
            _: u32,
            variant: &'static str,
            _: usize,
        ) -> Result<TableBuilder, Error> {
            Ok(TableBuilder {
                variant: Some(variant),
                ..TableBuilder::default()
            })
        }
    }

    /// `value` under `variant`, or alone.
    fn wrap(variant: Option<&'static str>, value: toml::Value) -> Out {
        Ok(Some(match variant {
            Some(name) => toml::Value::Table(toml::Table::from_iter([(name.to_string(), value)])),
            None => value,
        }))
    }

    #[derive(Default)]
    struct SeqBuilder {
        items: Vec<toml::Value>,
        variant: Option<&'static str>,
    }

    impl SeqBuilder {
        fn push<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            let item = value
                .serialize(ValueSerializer)?
                .ok_or_else(|| ser::Error::custom("a list holds no empty value"))?;
            self.items.push(item);
            Ok(())
        }
        fn finish(self) -> Out {
            wrap(self.variant, toml::Value::Array(self.items))
        }
    }

    impl ser::SerializeSeq for SeqBuilder {
        type Ok = Option<toml::Value>;
        type Error = Error;
        fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            self.push(value)
        }
        fn end(self) -> Out {
            self.finish()
        }
    }

    impl ser::SerializeTuple for SeqBuilder {
        type Ok = Option<toml::Value>;
        type Error = Error;
        fn serialize_element<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            self.push(value)
        }
        fn end(self) -> Out {
            self.finish()
        }
    }

    impl ser::SerializeTupleStruct for SeqBuilder {
        type Ok = Option<toml::Value>;
        type Error = Error;
        fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            self.push(value)
        }
        fn end(self) -> Out {
            self.finish()
        }
    }

    impl ser::SerializeTupleVariant for SeqBuilder {
        type Ok = Option<toml::Value>;
        type Error = Error;
        fn serialize_field<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            self.push(value)
        }
        fn end(self) -> Out {
            self.finish()
        }
    }

    #[derive(Default)]
    struct TableBuilder {
        table: toml::Table,
        key: Option<String>,
        variant: Option<&'static str>,
    }

    impl TableBuilder {
        fn insert<T: Serialize + ?Sized>(&mut self, key: String, value: &T) -> Result<(), Error> {
            if let Some(v) = value.serialize(ValueSerializer)? {
                self.table.insert(key, v);
            }
            Ok(())
        }
        fn finish(self) -> Out {
            wrap(self.variant, toml::Value::Table(self.table))
        }
    }

    impl ser::SerializeMap for TableBuilder {
        type Ok = Option<toml::Value>;
        type Error = Error;
        fn serialize_key<T: Serialize + ?Sized>(&mut self, key: &T) -> Result<(), Error> {
            match key.serialize(ValueSerializer)? {
                Some(toml::Value::String(k)) => {
                    self.key = Some(k);
                    Ok(())
                }
                _ => Err(ser::Error::custom("table keys must be strings")),
            }
        }
        fn serialize_value<T: Serialize + ?Sized>(&mut self, value: &T) -> Result<(), Error> {
            let key = self
                .key
                .take()
                .ok_or_else(|| ser::Error::custom("a value without a key"))?;
            self.insert(key, value)
        }
        fn end(self) -> Out {
            self.finish()
        }
    }

    impl ser::SerializeStruct for TableBuilder {
        type Ok = Option<toml::Value>;
        type Error = Error;
        fn serialize_field<T: Serialize + ?Sized>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), Error> {
            self.insert(key.to_string(), value)
        }
        fn end(self) -> Out {
            self.finish()
        }
    }

    impl ser::SerializeStructVariant for TableBuilder {
        type Ok = Option<toml::Value>;
        type Error = Error;
        fn serialize_field<T: Serialize + ?Sized>(
            &mut self,
            key: &'static str,
            value: &T,
        ) -> Result<(), Error> {
            self.insert(key.to_string(), value)
        }
        fn end(self) -> Out {
            self.finish()
        }
    }

    /// A TOML value read as a serde data format, digit strings above `i64::MAX` as numbers.
    struct Lossless(toml::Value);

    impl<'de> IntoDeserializer<'de, Error> for Lossless {
        type Deserializer = Self;
        fn into_deserializer(self) -> Self {
            self
        }
    }

    impl<'de> de::Deserializer<'de> for Lossless {
        type Error = Error;

        fn deserialize_any<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                toml::Value::String(s) => match big(&s) {
                    Some(n) => visitor.visit_u64(n),
                    None => visitor.visit_string(s),
                },
                toml::Value::Integer(i) => visitor.visit_i64(i),
                toml::Value::Float(f) => visitor.visit_f64(f),
                toml::Value::Boolean(b) => visitor.visit_bool(b),
                toml::Value::Datetime(d) => visitor.visit_string(d.to_string()),
                toml::Value::Array(items) => {
                    let mut seq = SeqDeserializer::<_, Error>::new(items.into_iter().map(Lossless));
                    let value = visitor.visit_seq(&mut seq)?;
                    seq.end()?;
                    Ok(value)
                }
                toml::Value::Table(table) => {
                    let entries = table.into_iter().map(|(k, v)| (k, Lossless(v)));
                    let mut map = MapDeserializer::<_, Error>::new(entries);
                    let value = visitor.visit_map(&mut map)?;
                    map.end()?;
                    Ok(value)
                }
            }
        }

        fn deserialize_str<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            self.deserialize_string(visitor)
        }

        fn deserialize_string<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            match self.0 {
                toml::Value::String(s) => visitor.visit_string(s),
                other => Lossless(other).deserialize_any(visitor),
            }
        }

        fn deserialize_option<V: Visitor<'de>>(self, visitor: V) -> Result<V::Value, Error> {
            visitor.visit_some(self)
        }

        fn deserialize_newtype_struct<V: Visitor<'de>>(
            self,
            _: &'static str,
            visitor: V,
        ) -> Result<V::Value, Error> {
            visitor.visit_newtype_struct(self)
        }

        fn deserialize_enum<V: Visitor<'de>>(
            self,
            _: &'static str,
            _: &'static [&'static str],
            visitor: V,
        ) -> Result<V::Value, Error> {
            match self.0 {
                toml::Value::String(s) => {
                    visitor.visit_enum(de::value::StringDeserializer::<Error>::new(s))
                }
                other => Err(de::Error::custom(format!(
                    "expected a name, got {}",
                    other.type_str()
                ))),
            }
        }

        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char bytes byte_buf unit
            unit_struct seq tuple tuple_struct map struct identifier ignored_any
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Args;
    use serde::Deserialize;
    use std::path::PathBuf;

    #[derive(Args, Serialize, Default)]
    #[serde(rename_all = "kebab-case")]
    struct Flags {
        #[arg(long)]
        #[serde(skip)]
        config: Option<PathBuf>,
        #[arg(long, value_delimiter = ',')]
        #[serde(skip_serializing_if = "Option::is_none")]
        ranks: Option<Vec<usize>>,
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        train_fraction: Option<f64>,
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        out: Option<PathBuf>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    struct Options {
        ranks: Vec<usize>,
        train_fraction: f64,
        out: Option<PathBuf>,
    }

    fn defaults() -> Options {
        Options {
            ranks: vec![0, 1],
            train_fraction: 0.5,
            out: None,
        }
    }

    #[test]
    fn flags_override_the_file_which_overrides_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "ranks = [1, 2, 4]\ntrain-fraction = 0.8\n").unwrap();
        let flags = Flags {
            train_fraction: Some(0.3),
            ..Flags::default()
        };
        let o: Options = resolve(&flags, Some(&file), &defaults()).unwrap();
        assert_eq!(o.ranks, vec![1, 2, 4]);
        assert_eq!(o.train_fraction, 0.3);
        assert_eq!(o.out, None);
        let o: Options = resolve(&Flags::default(), None, &defaults()).unwrap();
        assert_eq!(o, defaults());

        // The written file reads back to the same options.
        write_effective_in(dir.path(), dir.path(), "test", &o).unwrap();
        let again: Options = resolve(
            &Flags::default(),
            Some(&dir.path().join(CONFIG_FILE)),
            &Options {
                ranks: vec![9],
                train_fraction: 0.1,
                out: Some("x".into()),
            },
        )
        .unwrap();
        assert_eq!(again.ranks, o.ranks);
    }

    #[derive(Args, Serialize, Default)]
    #[serde(rename_all = "kebab-case")]
    struct SeedFlags {
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        seed: Option<u64>,
        #[arg(long, value_delimiter = ',')]
        #[serde(skip_serializing_if = "Option::is_none")]
        seeds: Option<Vec<u64>>,
        #[arg(long)]
        #[serde(skip_serializing_if = "Option::is_none")]
        lr: Option<f64>,
        #[arg(long)]
        #[serde(with = "path", default, skip_serializing_if = "Option::is_none")]
        out: Option<PathBuf>,
    }

    #[derive(Serialize, Deserialize, Debug, PartialEq)]
    #[serde(rename_all = "kebab-case")]
    struct SeedOptions {
        seed: u64,
        seeds: Vec<u64>,
        lr: f64,
        #[serde(with = "path", default, skip_serializing_if = "Option::is_none")]
        out: Option<PathBuf>,
    }

    #[test]
    fn u64_above_toml_integers_non_finite_floats_and_any_path_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        #[cfg(unix)]
        let out = PathBuf::from(
            <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(b"out-\xff".to_vec()),
        );
        #[cfg(not(unix))]
        let out = PathBuf::from("out");
        let flags = SeedFlags {
            seed: Some(u64::MAX),
            seeds: None,
            lr: Some(f64::NEG_INFINITY),
            out: Some(out.clone()),
        };
        let defaults = SeedOptions {
            seed: 0,
            seeds: vec![1, u64::MAX - 1],
            lr: 0.5,
            out: None,
        };
        let o: SeedOptions = resolve(&flags, None, &defaults).unwrap();
        assert_eq!(
            (o.seed, o.lr, &o.seeds),
            (u64::MAX, f64::NEG_INFINITY, &defaults.seeds)
        );
        assert_eq!(o.out.as_ref(), Some(&out));
        write_effective_in(dir.path(), dir.path(), "test", &o).unwrap();
        let text = std::fs::read_to_string(dir.path().join(CONFIG_FILE)).unwrap();
        assert!(text.contains("seed = \"18446744073709551615\""), "{text}");
        let again: SeedOptions = resolve(
            &SeedFlags::default(),
            Some(&dir.path().join(CONFIG_FILE)),
            &defaults,
        )
        .unwrap();
        assert_eq!(again, o);
        // A string is still a string where one is expected.
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "out = \"18446744073709551615\"\n").unwrap();
        let o: SeedOptions = resolve(&SeedFlags::default(), Some(&file), &defaults).unwrap();
        assert_eq!(o.out, Some(PathBuf::from("18446744073709551615")));
    }

    #[test]
    fn unknown_keys_and_bad_values_are_one_line_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(&file, "rank = [1]\n").unwrap();
        let err = resolve::<Flags, Options>(&Flags::default(), Some(&file), &defaults())
            .unwrap_err()
            .to_string();
        assert!(err.contains("unknown key `rank`"), "{err}");
        assert!(err.contains("out, ranks, train-fraction"), "{err}");
        std::fs::write(&file, "ranks = \"all\"\n").unwrap();
        let err = resolve::<Flags, Options>(&Flags::default(), Some(&file), &defaults())
            .unwrap_err()
            .to_string();
        assert!(err.contains("c.toml"), "{err}");
        std::fs::write(&file, "ranks = [1\n").unwrap();
        assert!(resolve::<Flags, Options>(&Flags::default(), Some(&file), &defaults()).is_err());
    }
}
