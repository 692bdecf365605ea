//! TOML configuration files: `--config FILE` holds the same keys as a command's long flags
//! (`unseen-fraction = 0.3`, `ranks = [0, 1, 2, 4]`); flags given on the command line override
//! the file, and the file overrides the defaults. The effective configuration is written as
//! `config.toml` beside a command's results, so `--config that/config.toml` reruns it.
//! Paths in a configuration file are relative to the working directory, like flags.
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
    let mut notes: Vec<(String, String)> = toml::Table::try_from(A::defaults())
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
    let mut table = toml::Table::try_from(defaults).context("encoding the defaults")?;
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
    table.extend(toml::Table::try_from(flags).context("encoding the flags")?);
    let source = config.map_or_else(|| "flags".to_string(), |p| p.display().to_string());
    toml::Value::Table(table)
        .try_into()
        .map_err(|e: toml::de::Error| anyhow!("{source}: {}", e.message()))
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
    let body = toml::to_string(options).context("encoding the effective configuration")?;
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
