//! The served model: basis, population weights, its users, version; the refit of a user's
//! weights from their stored pairs (lore-core `personalize`, exactly as `lore personalize`).

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use lore_core::{
    personalize, CheckedPersonalizeParams, FeatureRows, PersonalizeOptions, PersonalizeParams,
    Preferences, RewardBasis,
};
use lore_io::{EmbedderIdentity, KnownUsers, ModelFile, UsersFile};

use crate::error::ServeError;
use crate::store::Refit;

/// How stored users' weights are refitted (the flags `--prior-strength`, `--iterations`, `--lr`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RefitParams {
    /// Strength of the prior toward the model's `prior_logits` (MAP); every user starts there.
    pub prior_strength: f64,
    /// Adam steps.
    pub iterations: usize,
    /// Adam learning rate.
    pub lr: f64,
}

impl Default for RefitParams {
    /// The service's defaults: prior strength 0.01, `lore personalize`'s steps and rate.
    fn default() -> Self {
        let p = PersonalizeParams::default();
        Self {
            prior_strength: 0.01,
            iterations: p.iterations,
            lr: p.learning_rate,
        }
    }
}

/// One loaded model file, ready to score: what every reward of one `model_version` comes from.
#[derive(Debug)]
pub struct ServedModel {
    /// The file it was read from.
    pub path: PathBuf,
    /// `FILE_NAME@HASH` (16 hex digits of FNV-1a over the file's bytes): names the weights'
    /// origin in every response.
    pub model_version: String,
    /// V [F x K] and the logit scale c.
    pub basis: RewardBasis,
    /// The model's `method` metadata (`lore`, `bt`, ...), when recorded.
    pub method: Option<String>,
    /// The population's mean weights: softmax(prior_logits), or W's mean row without them.
    pub population: Vec<f32>,
    /// V times the population weights (the reward direction of an unknown user).
    pub population_direction: Vec<f64>,
    /// The prior's mean logits (the model's `prior_logits`, else log of `population`).
    pub prior_logits: Vec<f32>,
    /// The model's own users (`W` named by `user_ids`), imported into the store at start.
    pub users: Vec<(String, Vec<f32>)>,
    /// The embedder the model's features were made with (its `embedder` metadata), if recorded.
    pub embedder: Option<EmbedderIdentity>,
}

impl ServedModel {
    /// Reads `path`: basis, prior, population, named users and version.
    pub fn load(path: &Path) -> Result<Self, ServeError> {
        let bytes = std::fs::read(path).map_err(|source| ServeError::Net {
            what: format!("reading {}", path.display()),
            source,
        })?;
        let hash = fnv1a(&bytes);
        drop(bytes);
        let file = ModelFile::open(path)?;
        let basis = file.basis(None)?;
        let known = KnownUsers::from_model(&file)?;
        let population = known.population().to_vec();
        let prior_logits = match file.prior_logits()? {
            Some(prior) => prior,
            None => population
                .iter()
                .map(|&w| w.max(f32::MIN_POSITIVE).ln())
                .collect(),
        };
        let users = known
            .iter()
            .map(|(id, w)| (id.to_string(), w.to_vec()))
            .collect();
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| path.display().to_string());
        let population_direction = basis.direction(&population);
        Ok(Self {
            path: path.to_path_buf(),
            model_version: format!("{name}@{hash:016x}"),
            method: file.method()?,
            population,
            population_direction,
            prior_logits,
            users,
            embedder: file.embedder()?,
            basis,
        })
    }

    /// Feature dimension F.
    pub fn features(&self) -> usize {
        self.basis.n_features()
    }

    /// Rank K.
    pub fn rank(&self) -> usize {
        self.basis.rank()
    }

    /// The reward c * e . direction, in f64.
    pub fn reward_along(&self, features: &[f32], direction: &[f64]) -> f64 {
        self.basis.reward_along(features, direction)
    }

    /// The refit of users' weights with this model's basis and prior.
    pub fn refitter(self: &Arc<Self>, params: RefitParams) -> Result<PersonalizeRefit, ServeError> {
        let checked = PersonalizeParams::default()
            .iterations(params.iterations)
            .learning_rate(params.lr)
            .prior_strength(params.prior_strength)
            .check()?;
        Ok(PersonalizeRefit {
            model: self.clone(),
            params: checked,
        })
    }
}

/// Users' weights from all their stored pairs: `lore personalize --prior-strength S
/// --iterations N --lr L` with the model's basis, every user starting at the prior's logits.
#[derive(Debug, Clone)]
pub struct PersonalizeRefit {
    model: Arc<ServedModel>,
    params: CheckedPersonalizeParams,
}

impl PersonalizeRefit {
    /// The model whose basis the weights are fitted for.
    pub fn model(&self) -> &Arc<ServedModel> {
        &self.model
    }

    /// One personalize run over `users` (each a list of F-rows).
    fn run(&self, users: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        let f = self.model.features();
        let k = self.model.rank();
        let total: usize = users.iter().map(|u| u.len()).sum();
        let mut rows = Vec::with_capacity(total);
        let mut index = Vec::with_capacity(total / f.max(1));
        for (u, pairs) in users.iter().enumerate() {
            if pairs.is_empty() || pairs.len() % f != 0 {
                return Err(format!(
                    "user {u}: {} values are not rows of F = {f}",
                    pairs.len()
                ));
            }
            rows.extend_from_slice(pairs);
            index.extend(std::iter::repeat_n(u as u32, pairs.len() / f));
        }
        let data = Preferences::from_sorted_users(FeatureRows::F32(&rows), f, &index)
            .map_err(|e| e.to_string())?;
        let init = self.model.prior_logits.repeat(users.len());
        let options = PersonalizeOptions {
            init_logits: Some(&init),
            prior_logits: Some(&self.model.prior_logits),
            validation: None,
        };
        let outcome = personalize(&self.params, &self.model.basis, &data, &options, |_| {
            ControlFlow::Continue(())
        })
        .map_err(|e| e.to_string())?;
        Ok((0..users.len())
            .map(|u| outcome.users.user(u)[..k].to_vec())
            .collect())
    }
}

impl Refit for PersonalizeRefit {
    fn refit(&self, users: &[&[f32]]) -> Result<Vec<Vec<f32>>, String> {
        match self.run(users) {
            Ok(w) => Ok(w),
            // One user's divergence fails a batch: fit each alone so the others go through,
            // and name the one that failed.
            Err(e) if users.len() > 1 => users
                .iter()
                .map(|u| self.run(std::slice::from_ref(u)).map(|mut w| w.remove(0)))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| e),
            Err(e) => Err(e),
        }
    }

    fn model_version(&self) -> String {
        self.model.model_version.clone()
    }
}

/// Users of `lore personalize` outputs, matched by `user_ids` (K must match the model's; a
/// recorded embedder must match the model's), later files winning.
pub fn read_users_files(
    model: &ServedModel,
    paths: &[PathBuf],
) -> Result<Vec<(String, Vec<f32>)>, ServeError> {
    if paths.is_empty() {
        return Ok(Vec::new());
    }
    let file = ModelFile::open(&model.path)?;
    let mut known = KnownUsers::from_model(&file)?;
    let mut imported = std::collections::HashSet::new();
    for path in paths {
        let users = UsersFile::open(path)?;
        if let (Some(a), Some(b)) = (&model.embedder, users.embedder()?) {
            if let Some(reason) = a.mismatch(&b) {
                return Err(ServeError::Incompatible(format!(
                    "{}: its users were fitted on other features than the model ({reason})",
                    path.display()
                )));
            }
        }
        let named = users.users()?;
        if let Some(ids) = named.user_ids {
            imported.extend(ids);
        }
        known.import(&users)?;
    }
    Ok(known
        .iter()
        .filter(|(id, _)| imported.contains(*id))
        .map(|(id, w)| (id.to_string(), w.to_vec()))
        .collect())
}

/// FNV-1a (64 bit) of `bytes`: a content fingerprint for the model version.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for &b in bytes {
        hash ^= b as u64;
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}
