//! `lore personalize`: fit new users' weights from a few pairs with a fixed basis.

use std::ops::ControlFlow;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Args;
use lore_core::{evaluate, personalize, PersonalizeParams};
use lore_io::PreferenceFile;
use serde_json::json;

use super::check_output_path;
use crate::files::{read_basis, read_user_init, write_users};
use crate::progress::{Trace, Ui};

/// Fit weights w_u = softmax(W_u) for new users from their few pairs, with the basis V fixed.
///
/// Follows the reference class PersonalizeBatch: the loss is the sum over users of each user's
/// mean -log sigmoid(c x . V w_u), minimized by one Adam over all users' logits (w ~ N(0,1)).
/// X V is computed once, so each iteration costs O(pairs x K), not O(pairs x F).
///
/// Example: lore personalize --model model.safetensors --data new_users.safetensors
///          --out users.safetensors
#[derive(Args, Debug)]
#[command(verbatim_doc_comment, allow_negative_numbers = true)]
pub struct PersonalizeArgs {
    /// Model file; only its tensor `V` [F,K] is read (and its logit scale, if recorded).
    #[arg(long, short = 'm', value_name = "FILE")]
    model: PathBuf,

    /// Preference file of the new users (same layout as for `lore fit`).
    #[arg(long, value_name = "FILE")]
    data: PathBuf,

    /// Number of Adam steps, run exactly.
    #[arg(long, short = 't', default_value_t = 500, value_name = "T")]
    iterations: usize,

    /// Adam learning rate.
    #[arg(long, default_value_t = 0.1, value_name = "LR")]
    lr: f64,

    /// Seed of the random initialization of the users' logits.
    #[arg(long, default_value_t = 0, value_name = "S")]
    seed: u64,

    /// Start from the tensor `w0` [N,K] (logits) of this file instead of a random draw.
    #[arg(long, value_name = "FILE")]
    init: Option<PathBuf>,

    /// Override the logit scale c (default: the model's, else 0.01).
    #[arg(long, value_name = "C")]
    logit_scale: Option<f64>,

    /// Write one JSON line per step: step, loss.
    #[arg(long, value_name = "FILE")]
    trace: Option<PathBuf>,

    /// Output users file (safetensors): W [N,K] (weights), W_logits and metadata.
    #[arg(long, short = 'o', value_name = "FILE")]
    out: PathBuf,
}

pub fn run(args: PersonalizeArgs, ui: &Ui) -> Result<()> {
    let mut params = PersonalizeParams::default()
        .iterations(args.iterations)
        .learning_rate(args.lr)
        .seed(args.seed);
    if let Some(c) = args.logit_scale {
        params = params.logit_scale(c);
    }
    let params = params.check()?;
    check_output_path(&args.out)?;
    if let Some(trace) = &args.trace {
        check_output_path(trace)?;
    }
    let basis = read_basis(&args.model, args.logit_scale)?;
    let file = PreferenceFile::load(&args.data)?;
    let data = file.view();
    if basis.n_features() != data.n_features() {
        bail!(
            "feature dimension mismatch: {} has F = {}, {} has F = {}",
            args.model.display(),
            basis.n_features(),
            args.data.display(),
            data.n_features()
        );
    }
    let init = match &args.init {
        Some(path) => {
            let (n, k, logits) = read_user_init(path)?;
            if (n, k) != (data.n_users(), basis.rank()) {
                bail!(
                    "{}: `w0` is [{n}, {k}], expected [N = {}, K = {}]",
                    path.display(),
                    data.n_users(),
                    basis.rank()
                );
            }
            Some(logits)
        }
        None => None,
    };

    ui.note(format!(
        "personalizing {} users ({} pairs) with K = {}",
        data.n_users(),
        data.n_rows(),
        basis.rank()
    ));
    let started = Instant::now();
    let bar = ui.steps(params.iterations(), "personalize");
    let mut trace = Trace::new(args.trace.as_deref());
    let users = personalize(&params, &basis, &data, init.as_deref(), |step| {
        trace.record(json!({ "step": step.step, "loss": step.loss }));
        bar.set_position(step.step as u64 + 1);
        bar.set_message(format!("loss {:.5}", step.loss));
        ControlFlow::Continue(())
    })
    .with_context(|| format!("personalizing {}", args.data.display()))?;
    bar.finish_and_clear();
    let elapsed = started.elapsed();

    write_users(
        &args.out,
        &users,
        &params,
        &basis,
        &args.model,
        &args.data,
        file.user_ids(),
    )?;
    trace.finish()?;
    let accuracy = evaluate(&basis, &users, &data)?;
    ui.note(format!(
        "{} steps in {elapsed:.2?}; accuracy on these pairs {:.4} ± {:.4} over users",
        params.iterations(),
        accuracy.mean,
        accuracy.std
    ));
    ui.note(format!("wrote {}", args.out.display()));
    Ok(())
}
