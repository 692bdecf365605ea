//! From pair records to feature rows: each distinct text embedded once, in batches of similar
//! length, on all cores.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;

use rayon::prelude::*;

use crate::embedder::{Embedder, Tokens};
use crate::error::{EmbedError, Result};
use crate::input::PairRecord;

/// Records rendered per parallel step before their texts are deduplicated.
const RENDER_CHUNK: usize = 8192;

/// Lets candle run its element-wise operations on the calling thread by setting
/// `CANDLE_NUM_THREADS=1` (unless the variable is already set). With
/// [`EmbedOptions::parallel_batches`] this is the fastest setting: several batches run at once
/// on the rayon pool (matrix products still split across it), while candle's own spinning
/// worker pool would otherwise compete with them for the cores (on 2 cores, Polis with
/// all-MiniLM-L6-v2: about 75 texts/s instead of 60). candle reads the variable once, at its
/// first large operation, so call this before loading a model, while the program runs a
/// single thread.
pub fn prefer_batch_parallelism() {
    if std::env::var_os("CANDLE_NUM_THREADS").is_none() {
        std::env::set_var("CANDLE_NUM_THREADS", "1");
    }
}

/// Options of [`embed_pairs`].
#[derive(Debug, Clone)]
pub struct EmbedOptions {
    /// Texts per batch (default 8). Texts are sorted by token count first, so a batch pads
    /// little. Small batches are fastest on the CPU (all-MiniLM-L6-v2 on Polis, 2 cores:
    /// 4 → 56, 8 → 54, 32 → 45, 64 → 41 texts/s); with a large decoder, memory sets the
    /// bound: a batch holds batch × heads × length² attention scores.
    pub batch_size: usize,
    /// Run several batches at once on the rayon pool (true), or one batch at a time with
    /// candle's own threads inside each operation (false).
    pub parallel_batches: bool,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        Self {
            batch_size: 8,
            parallel_batches: true,
        }
    }
}

/// How far [`embed_pairs`] is: `done` of `total` distinct texts embedded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// Distinct texts embedded so far.
    pub done: usize,
    /// Distinct texts to embed.
    pub total: usize,
}

/// Counts of a run of [`embed_pairs`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct EmbedStats {
    /// Sides rendered (2 per pair).
    pub n_sides: usize,
    /// Distinct texts embedded.
    pub n_texts: usize,
    /// Tokens of the distinct texts, after truncation.
    pub n_tokens: usize,
    /// Distinct texts cut at the maximum length.
    pub n_truncated: usize,
    /// Seconds spent in the model (tokenizing excluded).
    pub embed_seconds: f64,
}

/// The features of pairs: one vector per distinct text, and for each pair the texts of its
/// two sides, its user and its pass-through ids.
///
/// Users are numbered in the order they first appear in the input (`user_ids[u]` is user u's
/// id); prompt ids likewise. Rows keep the input order.
#[derive(Debug, Clone)]
pub struct EmbeddedPairs {
    /// Feature dimension F.
    pub dim: usize,
    /// Vectors of the distinct texts, [T, F] row-major.
    pub texts: Vec<f32>,
    /// For each pair, the text index of its chosen side.
    pub chosen: Vec<u32>,
    /// For each pair, the text index of its rejected side.
    pub rejected: Vec<u32>,
    /// For each pair, its user index into `user_ids`.
    pub user: Vec<u32>,
    /// Distinct user ids in order of first appearance.
    pub user_ids: Vec<String>,
    /// For each pair, its prompt index into `prompt_ids` (when the input has `prompt_id`).
    pub prompt: Option<Vec<u32>>,
    /// Distinct prompt ids in order of first appearance (when the input has `prompt_id`).
    pub prompt_ids: Option<Vec<String>>,
    /// For each pair, its `pair_id` (when the input has it).
    pub pair_ids: Option<Vec<String>>,
    /// For each pair, its `split` (when the input has it).
    pub split: Option<Vec<String>>,
    /// Counts and timing.
    pub stats: EmbedStats,
}

impl EmbeddedPairs {
    /// Number of pairs P.
    pub fn n_pairs(&self) -> usize {
        self.chosen.len()
    }

    /// Number of users N.
    pub fn n_users(&self) -> usize {
        self.user_ids.len()
    }

    /// The vector of distinct text `t`.
    pub fn text_vector(&self, t: usize) -> &[f32] {
        &self.texts[t * self.dim..(t + 1) * self.dim]
    }

    /// Chosen-side features, [P, F] row-major.
    pub fn chosen_rows(&self) -> Vec<f32> {
        self.gather(&self.chosen)
    }

    /// Rejected-side features, [P, F] row-major.
    pub fn rejected_rows(&self) -> Vec<f32> {
        self.gather(&self.rejected)
    }

    /// Preference rows x = e(chosen) - e(rejected), [P, F] row-major.
    pub fn differences(&self) -> Vec<f32> {
        let mut x = Vec::with_capacity(self.n_pairs() * self.dim);
        for (&c, &r) in self.chosen.iter().zip(&self.rejected) {
            let (c, r) = (self.text_vector(c as usize), self.text_vector(r as usize));
            x.extend(c.iter().zip(r).map(|(c, r)| c - r));
        }
        x
    }

    fn gather(&self, texts: &[u32]) -> Vec<f32> {
        let mut rows = Vec::with_capacity(texts.len() * self.dim);
        for &t in texts {
            rows.extend_from_slice(self.text_vector(t as usize));
        }
        rows
    }
}

/// Numbers distinct values in order of first appearance.
#[derive(Default)]
struct Interner {
    index: HashMap<String, u32>,
    names: Vec<String>,
}

impl Interner {
    fn id(&mut self, name: &str) -> u32 {
        if let Some(&i) = self.index.get(name) {
            return i;
        }
        let i = self.names.len() as u32;
        self.index.insert(name.to_string(), i);
        self.names.push(name.to_string());
        i
    }
}

/// Checks that an optional column is set for all records or for none; returns whether set.
fn all_or_none(
    records: &[PairRecord],
    name: &str,
    get: impl Fn(&PairRecord) -> bool,
) -> Result<bool> {
    let Some(first) = records.first() else {
        return Ok(false);
    };
    let set = get(first);
    if let Some(odd) = records.iter().find(|r| get(r) != set) {
        let (with, without) = if set { (first, odd) } else { (odd, first) };
        return Err(EmbedError::Input(format!(
            "column `{name}` is set at {} but missing at {} (give it for every pair or for none)",
            with.at, without.at
        )));
    }
    Ok(set)
}

/// Embeds the pairs of `records` with `embedder`.
///
/// Each side is rendered ([`Embedder::render`]); identical texts (responses repeat across
/// pairs and users) are embedded once. Distinct texts are tokenized in parallel, sorted by
/// token count and embedded in batches of `options.batch_size`; `progress` is called after
/// each batch (from any thread). When `cancel` becomes true the run stops with
/// [`EmbedError::Interrupted`] before the next batch.
pub fn embed_pairs(
    embedder: &dyn Embedder,
    records: &[PairRecord],
    options: &EmbedOptions,
    progress: &(dyn Fn(Progress) + Sync),
    cancel: Option<&AtomicBool>,
) -> Result<EmbeddedPairs> {
    if records.is_empty() {
        return Err(EmbedError::Input("no pairs to embed".into()));
    }
    if options.batch_size == 0 {
        return Err(EmbedError::Input("batch size must be at least 1".into()));
    }
    let has_prompt_id = all_or_none(records, "prompt_id", |r| r.prompt_id.is_some())?;
    let has_pair_id = all_or_none(records, "pair_id", |r| r.pair_id.is_some())?;
    let has_split = all_or_none(records, "split", |r| r.split.is_some())?;
    let cancelled = || cancel.is_some_and(|c| c.load(Ordering::Relaxed));

    // Render both sides of every pair and number the distinct texts.
    let mut texts = Interner::default();
    let mut chosen = Vec::with_capacity(records.len());
    let mut rejected = Vec::with_capacity(records.len());
    for chunk in records.chunks(RENDER_CHUNK) {
        if cancelled() {
            return Err(EmbedError::Interrupted);
        }
        let rendered = chunk
            .par_iter()
            .map(|r| {
                let side = |response| {
                    embedder
                        .render(&r.prompt, response)
                        .map_err(|e| EmbedError::Input(format!("{}: {e}", r.at)))
                };
                Ok((side(&r.chosen)?, side(&r.rejected)?))
            })
            .collect::<Result<Vec<_>>>()?;
        for (c, r) in rendered {
            chosen.push(texts.id(&c));
            rejected.push(texts.id(&r));
        }
    }
    let texts = texts.names;

    // Tokenize each distinct text once.
    let tokens: Vec<Tokens> = texts
        .par_iter()
        .map(|t| embedder.tokenize(t))
        .collect::<Result<_>>()?;
    if let Some(empty) = tokens.iter().position(|t| t.ids.is_empty()) {
        let preview: String = texts[empty].chars().take(60).collect();
        return Err(EmbedError::Input(format!(
            "a text has no tokens after tokenization: {preview:?}"
        )));
    }

    // Longest first: the slowest batches run while the others keep the cores busy, and a
    // batch that does not fit in memory fails at once.
    let mut order: Vec<usize> = (0..texts.len()).collect();
    order.sort_by_key(|&t| std::cmp::Reverse(tokens[t].ids.len()));
    let batches: Vec<&[usize]> = order.chunks(options.batch_size).collect();

    let dim = embedder.dim();
    let total = texts.len();
    let done = AtomicUsize::new(0);
    progress(Progress { done: 0, total });
    let started = Instant::now();
    let run_batch = |batch: &&[usize]| -> Result<Vec<Vec<f32>>> {
        if cancelled() {
            return Err(EmbedError::Interrupted);
        }
        let ids: Vec<&[u32]> = batch.iter().map(|&t| tokens[t].ids.as_slice()).collect();
        let vectors = embedder.embed_tokens(&ids)?;
        if vectors.len() != batch.len() || vectors.iter().any(|v| v.len() != dim) {
            return Err(EmbedError::Compute(format!(
                "the model returned vectors of the wrong count or size (expected {} of {dim})",
                batch.len()
            )));
        }
        for (&t, v) in batch.iter().zip(&vectors) {
            if let Some(bad) = v.iter().find(|x| !x.is_finite()) {
                let preview: String = texts[t].chars().take(60).collect();
                return Err(EmbedError::Compute(format!(
                    "non-finite feature {bad} for text {preview:?}"
                )));
            }
        }
        let now = done.fetch_add(batch.len(), Ordering::Relaxed) + batch.len();
        progress(Progress { done: now, total });
        Ok(vectors)
    };
    let results: Vec<Vec<Vec<f32>>> = if options.parallel_batches {
        batches.par_iter().map(run_batch).collect::<Result<_>>()?
    } else {
        batches.iter().map(run_batch).collect::<Result<_>>()?
    };
    let embed_seconds = started.elapsed().as_secs_f64();

    let mut vectors = vec![0f32; total * dim];
    for (batch, result) in batches.iter().zip(results) {
        for (&t, v) in batch.iter().zip(result) {
            vectors[t * dim..(t + 1) * dim].copy_from_slice(&v);
        }
    }

    let mut users = Interner::default();
    let user: Vec<u32> = records.iter().map(|r| users.id(&r.user_id)).collect();
    let (prompt, prompt_ids) = if has_prompt_id {
        let mut prompts = Interner::default();
        let prompt = records
            .iter()
            .map(|r| prompts.id(r.prompt_id.as_deref().unwrap_or_default()))
            .collect();
        (Some(prompt), Some(prompts.names))
    } else {
        (None, None)
    };
    let column = |set: bool, get: fn(&PairRecord) -> &Option<String>| {
        set.then(|| {
            records
                .iter()
                .map(|r| get(r).clone().unwrap_or_default())
                .collect()
        })
    };
    let stats = EmbedStats {
        n_sides: 2 * records.len(),
        n_texts: total,
        n_tokens: tokens.iter().map(|t| t.ids.len()).sum(),
        n_truncated: tokens.iter().filter(|t| t.truncated).count(),
        embed_seconds,
    };
    Ok(EmbeddedPairs {
        dim,
        texts: vectors,
        chosen,
        rejected,
        user,
        user_ids: users.names,
        prompt,
        prompt_ids,
        pair_ids: column(has_pair_id, |r| &r.pair_id),
        split: column(has_split, |r| &r.split),
        stats,
    })
}
