//! Options whose value is one of a few names (`--method lore`, `--precision bf16`): the one way
//! the binary parses them, on the command line and in `--config` files alike.
//!
//! A [`Choice`] lists its values for `--help` and parses with the library's own `FromStr`
//! (its error is the one-line message), so lore-core needs no clap.

use std::ffi::OsStr;
use std::fmt::Display;
use std::str::FromStr;

use clap::builder::{PossibleValue, TypedValueParser};
use lore_core::{Method, Precision};
use lore_experiment::Selection;
use serde::{Deserialize, Deserializer, Serializer};

/// A value chosen by name from a fixed list.
pub trait Choice: FromStr<Err: Display> + Copy + Send + Sync + 'static {
    /// Every value, in the order `--help` lists them.
    const ALL: &'static [Self];

    /// The value's name on the command line and in files.
    fn name(self) -> &'static str;
}

impl Choice for Method {
    const ALL: &'static [Self] = &[Method::Lore, Method::Regularized];
    fn name(self) -> &'static str {
        Method::name(self)
    }
}

impl Choice for Selection {
    const ALL: &'static [Self] = Selection::ALL;
    fn name(self) -> &'static str {
        Selection::name(self)
    }
}

impl Choice for Precision {
    const ALL: &'static [Self] = &[Precision::F32, Precision::Bf16];
    fn name(self) -> &'static str {
        Precision::name(self)
    }
}

/// The clap parser of a [`Choice`]: `value_parser = choice::parser::<Method>()`.
pub fn parser<T: Choice>() -> ChoiceParser<T> {
    ChoiceParser(std::marker::PhantomData)
}

/// See [`parser`].
#[derive(Clone, Copy)]
pub struct ChoiceParser<T>(std::marker::PhantomData<T>);

impl<T: Choice> TypedValueParser for ChoiceParser<T> {
    type Value = T;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        arg: Option<&clap::Arg>,
        value: &OsStr,
    ) -> Result<T, clap::Error> {
        // clap's function parser words the error: "invalid value 'x' for '--flag': <reason>".
        let parse = |s: &str| s.parse::<T>().map_err(|e| e.to_string());
        parse.parse_ref(cmd, arg, value)
    }

    fn possible_values(&self) -> Option<Box<dyn Iterator<Item = PossibleValue> + '_>> {
        Some(Box::new(
            T::ALL.iter().map(|v| PossibleValue::new(v.name())),
        ))
    }
}

/// Serde by name: `#[serde(with = "choice::name")]` on a resolved option.
pub mod name {
    use super::*;

    /// Writes the value's name.
    pub fn serialize<T: Choice, S: Serializer>(value: &T, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(value.name())
    }

    /// Reads a name with the library's `FromStr`.
    pub fn deserialize<'de, T: Choice, D: Deserializer<'de>>(d: D) -> Result<T, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Serde by name of a flag that may be absent (flags are only written):
/// `#[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]`.
pub mod optional {
    use super::*;

    /// Writes the name, if any.
    pub fn serialize<T: Choice, S: Serializer>(value: &Option<T>, s: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(v) => s.serialize_str(v.name()),
            None => s.serialize_none(),
        }
    }
}

/// Declares a CLI-only [`Choice`] enum with its names (its `FromStr` error lists them).
macro_rules! choice_enum {
    ($(#[$meta:meta])* $vis:vis enum $name:ident ($what:literal) {
        $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)?
    }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        $vis enum $name { $($(#[$vmeta])* $variant),+ }

        impl std::str::FromStr for $name {
            type Err = String;
            fn from_str(s: &str) -> Result<Self, String> {
                match s {
                    $($text => Ok(Self::$variant),)+
                    other => Err(format!(
                        "unknown {} `{other}` (expected {})",
                        $what,
                        [$(concat!("`", $text, "`")),+].join(", ")
                    )),
                }
            }
        }

        impl $crate::choice::Choice for $name {
            const ALL: &'static [Self] = &[$(Self::$variant),+];
            fn name(self) -> &'static str {
                match self { $(Self::$variant => $text),+ }
            }
        }
    };
}
pub(crate) use choice_enum;

choice_enum! {
    /// How features are stored in a written preference file (computation is f32 either way).
    pub enum Storage ("dtype") {
        /// 4 bytes per value.
        F32 = "f32",
        /// 2 bytes per value (bfloat16).
        Bf16 = "bf16",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round_trip<T: Choice + PartialEq + std::fmt::Debug>() {
        for &v in T::ALL {
            assert_eq!(v.name().parse::<T>().ok(), Some(v));
        }
    }

    #[test]
    fn every_name_parses_back() {
        round_trip::<Method>();
        round_trip::<Precision>();
        round_trip::<Storage>();
    }

    #[test]
    fn errors_are_the_library_messages() {
        let cmd = clap::Command::new("t");
        let err = parser::<Method>()
            .parse_ref(&cmd, None, OsStr::new("joint"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown method `joint` (expected `lore` or `regularized`)"),
            "{err}"
        );
        let err = "f16".parse::<Storage>().unwrap_err();
        assert_eq!(err, "unknown dtype `f16` (expected `f32`, `bf16`)");
    }
}
