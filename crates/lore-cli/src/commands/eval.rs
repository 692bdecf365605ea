//! `lore eval`: pairwise accuracy per user of a model (or of the reference head).

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;
use lore_core::{evaluate, RewardBasis, UserWeights, DEFAULT_LOGIT_SCALE};
use lore_io::{read_v_ref, ModelFile, PreferenceFile, UsersFile};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;

/// Report each user's pairwise accuracy: the fraction of their pairs with x . V w_u > 0.
///
/// Weights come from the model's `W` (users seen in training) or from --users (a
/// `lore personalize` output). When both the data and the weights carry `user_ids`, users are
/// matched by id; otherwise by index. With --v-ref instead of --model, the reference reward head
/// is evaluated ("K = 0": V = v_ref, w = [1]).
///
/// Example: lore eval --model model.safetensors --users users.safetensors --data test.safetensors --json
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment)]
#[serde(rename_all = "kebab-case")]
pub struct EvalArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Model file (tensors `V`, and `W` unless --users is given) [required unless --v-ref].
    #[arg(long, short = 'm', value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    model: Option<PathBuf>,

    /// Users file with `W` from `lore personalize`, used instead of the model's `W`.
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    users: Option<PathBuf>,

    /// Evaluate the reference head: a file with a tensor `v_ref` ([F] or [F,1]).
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    v_ref: Option<PathBuf>,

    /// Preference file to evaluate on [required].
    #[arg(long, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,

    /// Print one JSON object: per_user (accuracies in user order), mean, std, and counts.
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    json: bool,
}

/// The resolved options of `lore eval` (none has a default but --json).
#[derive(Serialize, Deserialize, Debug, Default)]
#[serde(rename_all = "kebab-case")]
pub struct EvalConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    model: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    users: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    v_ref: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    data: Option<PathBuf>,
    json: bool,
}

impl Configurable for EvalArgs {
    type Options = EvalConfig;
    fn defaults() -> EvalConfig {
        EvalConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
}

pub fn run(flags: EvalArgs, ui: &Ui) -> Result<()> {
    let args = config::options(&flags)?;
    if args.v_ref.is_some() && (args.model.is_some() || args.users.is_some()) {
        bail!("--v-ref evaluates the reference head: give it without --model and --users");
    }
    if args.model.is_none() && args.v_ref.is_none() {
        bail!("give --model FILE (or --v-ref FILE for the reference head)");
    }
    if args.users.is_some() && args.model.is_none() {
        bail!("--users holds the weights of a model's basis: give --model FILE too");
    }
    let data_path = config::required(&args.data, "--data FILE")?;
    let file = PreferenceFile::load(data_path)?;
    let data = file.view();
    let (basis, users, source) = match (&args.model, &args.v_ref) {
        (_, Some(v_ref_path)) => {
            let v_ref = read_v_ref(v_ref_path)?;
            let basis = RewardBasis::reference_head(&v_ref, DEFAULT_LOGIT_SCALE)?;
            (
                basis,
                UserWeights::single_column(data.n_users()),
                v_ref_path,
            )
        }
        (Some(model), None) => {
            let model_file = ModelFile::open(model)?;
            let basis = model_file.basis(None)?;
            let (weights_path, named) = match &args.users {
                Some(path) => (path, UsersFile::open(path)?.users()?),
                None => (model, model_file.users()?),
            };
            let (users, ids) = (named.weights, named.user_ids);
            if users.rank() != basis.rank() {
                bail!(
                    "{} has K = {} weights but the basis of {} has K = {}",
                    weights_path.display(),
                    users.rank(),
                    model.display(),
                    basis.rank()
                );
            }
            let users = match_users(users, ids.as_deref(), file.user_ids(), weights_path)?;
            (basis, users, model)
        }
        (None, None) => unreachable!("checked above"),
    };
    if basis.n_features() != data.n_features() {
        bail!(
            "feature dimension mismatch: {} has F = {}, {} has F = {}",
            source.display(),
            basis.n_features(),
            data_path.display(),
            data.n_features()
        );
    }
    if data.n_users() > users.n_users() {
        bail!(
            "{}: user index {} is out of range: the weights cover {} users",
            data_path.display(),
            data.n_users() - 1,
            users.n_users()
        );
    }
    let evaluation = evaluate(&basis, &users, &data)?;
    if args.json {
        let mut out = json!({
            "per_user": evaluation.per_user,
            "mean": evaluation.mean,
            "std": evaluation.std,
            "n_users": data.n_users(),
            "n_pairs": data.n_rows(),
        });
        if let Some(ids) = file.user_ids() {
            out["user_ids"] = json!(ids);
        }
        println!("{out}");
    } else {
        let (min, max) = evaluation
            .per_user
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &a| {
                (lo.min(a), hi.max(a))
            });
        println!(
            "accuracy over {} users ({} pairs): mean {:.4}  std {:.4}  min {:.4}  max {:.4}",
            data.n_users(),
            data.n_rows(),
            evaluation.mean,
            evaluation.std,
            min,
            max
        );
        let _ = ui;
    }
    Ok(())
}

/// Reorders the weights to the data's users: by id when both sides have ids, else by index.
fn match_users(
    users: UserWeights,
    weight_ids: Option<&[String]>,
    data_ids: Option<&[String]>,
    weights_path: &std::path::Path,
) -> Result<UserWeights> {
    let (Some(weight_ids), Some(data_ids)) = (weight_ids, data_ids) else {
        return Ok(users);
    };
    let index: std::collections::HashMap<&str, usize> = weight_ids
        .iter()
        .enumerate()
        .map(|(i, id)| (id.as_str(), i))
        .collect();
    let k = users.rank();
    let mut logits = Vec::with_capacity(data_ids.len() * k);
    let mut weights = Vec::with_capacity(data_ids.len() * k);
    for id in data_ids {
        let Some(&i) = index.get(id.as_str()) else {
            bail!(
                "user `{id}` of the data has no weights in {}",
                weights_path.display()
            );
        };
        logits.extend_from_slice(&users.logits()[i * k..(i + 1) * k]);
        weights.extend_from_slice(users.user(i));
    }
    Ok(UserWeights::from_parts(data_ids.len(), k, logits, weights)?)
}
