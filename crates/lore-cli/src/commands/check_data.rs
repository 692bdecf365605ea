//! `lore check-data`: signs that data lies (leakage, broken preparation), as a table or JSON.

use std::path::{Path, PathBuf};

use anyhow::{bail, Result};
use clap::Args;
use lore_io::checks::{self, Severity};
use lore_io::{PreferenceFile, SplitFolder};
use serde::Serialize;
use serde_json::json;

use crate::progress::Ui;

/// Look for signs that data lies: leakage or broken preparation that makes accuracy look
/// better (or worse) than it is. Nothing is written.
///
/// Preference files (--data FILE.safetensors; each set of --splits DIR):
///   zero-rows            rows whose features are all zero: chosen identical to rejected
///   duplicate-pair-ids   a pair id (tensor `pair_id` or metadata `pair_ids`) on several rows
///   dominant-user        one user holding more than half of the rows (3 users or more)
///
/// Split folders (--splits DIR), across the sets:
///   train-test-overlap   a test row identical to a training row of the same user
///   train-test-pair-ids  a pair id in both a training set and a test set
///   one-sided-user-ids   a training set and its test set of which only one has `user_ids`:
///                        users cannot be matched, an error (sweep, shots and auto refuse it)
///
/// Text pairs (--data FILE.jsonl[.gz] or .parquet, as `lore embed` reads them; no model
/// needed):
///   serialized-text      a text that looks like a list or dict written as its string
///                        (`['...']`, `{"...": ...}`): brackets and quotes can reveal the label
///   identical-texts      chosen identical to rejected (their rows would be all zeros)
///   longer-wins          the accuracy of "chosen is the longer text", always reported; a
///                        warning at >= 0.8 or <= 0.2 over 20 or more pairs of unequal lengths
///   duplicate-pairs      the same user, prompt, chosen and rejected more than once
///   duplicate-pair-ids   a `pair_id` on several records
///   train-test-overlap   a held-out record (`split` other than train) repeating a training
///                        pair (same user and texts, or same pair id)
///
/// Exit status: 0 when clean or with warnings only (1 with --strict), 1 on an error.
/// `lore fit`, `personalize`, `split` and `embed` print the same warnings as they run.
///
/// Example: lore check-data --data pairs.jsonl
///          lore check-data --splits splits/ --json --strict
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct CheckDataArgs {
    /// A preference file (safetensors), or text pairs (JSONL, gzip JSONL or Parquet).
    #[arg(
        long,
        value_name = "FILE",
        conflicts_with = "splits",
        required_unless_present = "splits"
    )]
    data: Option<PathBuf>,

    /// A split folder (from `lore split` or `lore simulate`).
    #[arg(long, value_name = "DIR")]
    splits: Option<PathBuf>,

    /// Print one JSON object: what was checked, the findings, and the counts per level.
    #[arg(long)]
    json: bool,

    /// Exit with status 1 when there is any warning (not only on errors).
    #[arg(long)]
    strict: bool,
}

/// One finding of either library, for printing.
#[derive(Serialize)]
struct Row {
    kind: &'static str,
    severity: &'static str,
    message: String,
    count: usize,
    total: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    value: Option<f64>,
}

impl From<checks::Finding> for Row {
    fn from(f: checks::Finding) -> Self {
        Self {
            kind: f.kind,
            severity: f.severity.name(),
            message: f.message,
            count: f.count,
            total: f.total,
            value: f.value,
        }
    }
}

pub fn run(args: CheckDataArgs, ui: &Ui) -> Result<()> {
    let (path, what, summary, rows) = match (&args.data, &args.splits) {
        (Some(data), None) if is_text_pairs(data)? => {
            let (summary, rows) = check_text(data)?;
            (data, "text pairs", summary, rows)
        }
        (Some(data), None) => {
            let file = PreferenceFile::load(data)?;
            let summary = format!(
                "{} rows of {} users, F = {}",
                file.n_rows(),
                file.n_users(),
                file.n_features()
            );
            let rows = checks::check_preferences(&file)?;
            (
                data,
                "preferences",
                summary,
                rows.into_iter().map(Row::from).collect(),
            )
        }
        (None, Some(dir)) => {
            let folder = SplitFolder::open(dir)?;
            let mut rows: Vec<Row> = Vec::new();
            for set in folder.sets() {
                rows.extend(checks::check_preferences(set)?.into_iter().map(Row::from));
            }
            rows.extend(checks::check_split(&folder)?.into_iter().map(Row::from));
            (dir, "split folder", folder.describe(), rows)
        }
        _ => bail!("give --data FILE or --splits DIR"),
    };
    let count = |level: &str| rows.iter().filter(|r| r.severity == level).count();
    let (errors, warnings) = (
        count(Severity::Error.name()),
        count(Severity::Warning.name()),
    );

    if args.json {
        let out = json!({
            "path": path.display().to_string(),
            "kind": what,
            "summary": summary,
            "findings": rows,
            "errors": errors,
            "warnings": warnings,
        });
        println!("{out}");
    } else {
        println!("{} ({what}): {summary}", path.display());
        if rows.is_empty() {
            println!("no findings");
        } else {
            let width = rows.iter().map(|r| r.kind.len()).max().unwrap_or(0);
            println!(
                "{:<7}  {:<width$}  {:>13}  finding",
                "level", "check", "count"
            );
            for r in &rows {
                let count = format!("{}/{}", r.count, r.total);
                println!(
                    "{:<7}  {:<width$}  {count:>13}  {}",
                    r.severity, r.kind, r.message
                );
            }
        }
    }
    if errors > 0 {
        let first = rows
            .iter()
            .find(|r| r.severity == Severity::Error.name())
            .map_or(String::new(), |r| r.message.clone());
        bail!("{errors} error(s) in {}: {first}", path.display());
    }
    if args.strict && warnings > 0 {
        bail!(
            "{warnings} warning(s) in {} (--strict makes warnings fail)",
            path.display()
        );
    }
    let _ = ui;
    Ok(())
}

/// True when `path` holds text pairs rather than a safetensors file: by its name (`.jsonl`,
/// `.json`, `.gz`, `.parquet`), else by its first bytes (a safetensors file has an 8-byte
/// header length and then `{`).
fn is_text_pairs(path: &Path) -> Result<bool> {
    let name = path.to_string_lossy().to_ascii_lowercase();
    if name.ends_with(".safetensors") {
        return Ok(false);
    }
    if [".jsonl", ".json", ".gz", ".parquet"]
        .iter()
        .any(|e| name.ends_with(e))
    {
        return Ok(true);
    }
    // Only a regular file is read here; anything else is left to the reader's message.
    if !std::fs::metadata(path).is_ok_and(|m| m.is_file()) {
        return Ok(false);
    }
    let mut head = [0u8; 9];
    let n = std::io::Read::read(&mut std::fs::File::open(path)?, &mut head)?;
    Ok(!(n == 9 && head[8] == b'{'))
}

/// The text checks of `path` (all records, no model needed).
#[cfg(feature = "embed")]
fn check_text(path: &Path) -> Result<(String, Vec<Row>)> {
    let records = lore_embed::read_pairs(path, None)?;
    let users: std::collections::HashSet<&str> =
        records.iter().map(|r| r.user_id.as_str()).collect();
    let summary = format!("{} pairs of {} users", records.len(), users.len());
    let rows = lore_embed::checks::check_pairs(&records)
        .into_iter()
        .map(Row::from)
        .collect();
    Ok((summary, rows))
}

/// Without the `embed` feature, text pairs cannot be read.
#[cfg(not(feature = "embed"))]
fn check_text(path: &Path) -> Result<(String, Vec<Row>)> {
    bail!(
        "{}: checking text pairs needs lore built with the `embed` feature",
        path.display()
    )
}
