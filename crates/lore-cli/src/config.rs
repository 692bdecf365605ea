//! TOML configuration files: `--config FILE` holds the same keys as a command's long flags
//! (`unseen-fraction = 0.3`, `ranks = [0, 1, 2, 4]`); flags given on the command line override
//! the file, and the file overrides the defaults. The effective configuration is written as
//! `config.toml` beside a command's results, so `--config that/config.toml` reruns it.
//! Paths in a configuration file are relative to the working directory, like flags.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;

/// The name of the effective configuration written beside results.
pub const CONFIG_FILE: &str = "config.toml";

/// A command's options from its `defaults`, then the file `config` (if any), then the flags
/// given (`flags` serializes only the flags that were given, under their long names).
/// `A` lists the known keys: its long flags, except `config` itself.
pub fn resolve<A, O>(flags: &A, config: Option<&Path>, defaults: &O) -> Result<O>
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
pub fn write_effective<O: Serialize>(dir: &Path, command: &str, options: &O) -> Result<()> {
    let body = toml::to_string(options).context("encoding the effective configuration")?;
    let text = format!(
        "# Effective configuration of `lore {command}` (flags over --config over defaults).\n\
         # Rerun with: lore {command} --config {}\n{body}",
        dir.join(CONFIG_FILE).display()
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
        write_effective(dir.path(), "test", &o).unwrap();
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
