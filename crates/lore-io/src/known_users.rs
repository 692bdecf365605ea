//! The users a model can score by name: the model file's own users, users imported from
//! `lore personalize` outputs, and the population's mean weights for everyone else.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lore_core::population_weights;

use crate::error::{IoError, Result};
use crate::model_file::{ModelFile, UsersFile};

/// Users known by name with their weights \[K\], and the population's mean weights for any
/// other user: what `lore score` and `lore serve` score with.
///
/// The model's own users are its `W` rows named by metadata `user_ids` (a model without
/// `user_ids` knows no user by name); [`KnownUsers::import`] adds or replaces users from a
/// users file. The population is softmax(`prior_logits`), or the mean of `W`'s rows when the
/// model has no `prior_logits` (written by an older `lore fit`), or uniform when it has neither.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use lore_io::{KnownUsers, ModelFile, TensorWriter, UsersFile};
///
/// let dir = tempfile::tempdir()?;
/// let (model, users) = (dir.path().join("model.safetensors"), dir.path().join("users.safetensors"));
/// TensorWriter::new()
///     .add_f32("V", &[2, 2], &[1.0, 0.0, 0.0, 1.0])
///     .add_f32("W", &[1, 2], &[0.25, 0.75])
///     .add_f32("prior_logits", &[2], &[0.0, 0.0])
///     .metadata("user_ids", &["ann"])
///     .write_atomic(&model)?;
/// TensorWriter::new()
///     .add_f32("W", &[1, 2], &[0.9, 0.1])
///     .metadata("user_ids", &["bob"])
///     .write_atomic(&users)?;
///
/// let mut known = KnownUsers::from_model(&ModelFile::open(&model)?)?;
/// assert_eq!(known.import(&UsersFile::open(&users)?)?, 1);
/// assert_eq!(known.get("ann"), Some(&[0.25f32, 0.75][..]));
/// assert_eq!(known.get("bob"), Some(&[0.9f32, 0.1][..]));
/// assert_eq!(known.get("eve"), None);
/// assert_eq!(known.population(), &[0.5f32, 0.5][..]);
/// assert_eq!(known.weights_or_population("eve"), (&[0.5f32, 0.5][..], false));
/// # Ok(())
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct KnownUsers {
    /// The model file, for errors naming it.
    model: PathBuf,
    rank: usize,
    population: Vec<f32>,
    /// Names in the order they were first added.
    ids: Vec<String>,
    /// Weights [users x K], row i for `ids[i]`.
    weights: Vec<f32>,
    /// Row of each name.
    index: HashMap<String, usize>,
}

impl KnownUsers {
    /// The model's own users (named by `user_ids`) and its population; K is the columns of `V`.
    /// Refuses a `W` or `prior_logits` whose K differs from `V`'s.
    pub fn from_model(model: &ModelFile) -> Result<Self> {
        let rank = model.basis(None)?.rank();
        let path = model.path().to_path_buf();
        let mut known = Self {
            model: path.clone(),
            rank,
            population: Vec::new(),
            ids: Vec::new(),
            weights: Vec::new(),
            index: HashMap::new(),
        };
        let users = if model.file().has("W") {
            let users = model.users()?;
            if users.weights.rank() != rank {
                return Err(IoError::Inconsistent {
                    path,
                    reason: format!(
                        "`W` has K = {} columns but `V` has K = {rank}",
                        users.weights.rank()
                    ),
                });
            }
            Some(users)
        } else {
            None
        };
        known.population = match (model.prior_logits()?, &users) {
            (Some(prior), _) => population_weights(&prior),
            (None, Some(users)) if users.weights.n_users() > 0 => {
                let n = users.weights.n_users();
                let mut mean = vec![0.0f64; rank];
                for row in users.weights.weights().chunks_exact(rank) {
                    for (m, &w) in mean.iter_mut().zip(row) {
                        *m += w as f64;
                    }
                }
                mean.iter().map(|m| (m / n as f64) as f32).collect()
            }
            _ => vec![1.0 / rank as f32; rank],
        };
        if let Some(users) = users {
            if let Some(ids) = &users.user_ids {
                for (u, id) in ids.iter().enumerate() {
                    known.insert(id, users.weights.user(u));
                }
            }
        }
        Ok(known)
    }

    /// Adds (or replaces: later wins) every user of a users file (`lore personalize`'s
    /// output), matched by its metadata `user_ids`; returns how many rows were imported.
    /// Refuses a file without `user_ids` or whose K differs from the model's.
    pub fn import(&mut self, users: &UsersFile) -> Result<usize> {
        let named = users.users()?;
        if named.weights.rank() != self.rank {
            return Err(IoError::Mismatch {
                path: users.path().to_path_buf(),
                found: format!("K = {} columns in `W`", named.weights.rank()),
                other: self.model.clone(),
                expected: format!(
                    "K = {} (users must be personalized on this model)",
                    self.rank
                ),
            });
        }
        let Some(ids) = &named.user_ids else {
            return Err(IoError::Metadata {
                path: users.path().to_path_buf(),
                key: "user_ids".into(),
                reason: "missing (imported users are matched by name; personalize a preference \
                         file with `user_ids`)"
                    .into(),
            });
        };
        for (u, id) in ids.iter().enumerate() {
            self.insert(id, named.weights.user(u));
        }
        Ok(ids.len())
    }

    /// Sets user `id`'s weights, replacing earlier ones.
    fn insert(&mut self, id: &str, weights: &[f32]) {
        match self.index.get(id) {
            Some(&row) => {
                self.weights[row * self.rank..(row + 1) * self.rank].copy_from_slice(weights)
            }
            None => {
                self.index.insert(id.to_string(), self.ids.len());
                self.ids.push(id.to_string());
                self.weights.extend_from_slice(weights);
            }
        }
    }

    /// User `id`'s weights \[K\], if known.
    pub fn get(&self, id: &str) -> Option<&[f32]> {
        self.index
            .get(id)
            .map(|&row| &self.weights[row * self.rank..(row + 1) * self.rank])
    }

    /// User `id`'s weights if known (with `true`), else the population's (with `false`).
    pub fn weights_or_population(&self, id: &str) -> (&[f32], bool) {
        match self.get(id) {
            Some(weights) => (weights, true),
            None => (&self.population, false),
        }
    }

    /// The population's mean weights \[K\]: what an unknown user is scored with.
    pub fn population(&self) -> &[f32] {
        &self.population
    }

    /// Number of columns K of the model.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Number of users known by name.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether no user is known by name.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// Every known user and their weights, in the order they were first added.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[f32])> {
        self.ids
            .iter()
            .zip(self.weights.chunks_exact(self.rank))
            .map(|(id, w)| (id.as_str(), w))
    }

    /// The model file these users belong to.
    pub fn model_path(&self) -> &Path {
        &self.model
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::TensorWriter;

    fn model(dir: &Path, prior: Option<&[f32]>, ids: Option<&[&str]>) -> ModelFile {
        let path = dir.join("model.safetensors");
        let mut out = TensorWriter::new();
        out.add_f32("V", &[3, 2], &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
            .add_f32("W", &[2, 2], &[0.2, 0.8, 0.6, 0.4]);
        if let Some(prior) = prior {
            out.add_f32("prior_logits", &[2], prior);
        }
        if let Some(ids) = ids {
            out.metadata("user_ids", ids);
        }
        out.write_atomic(&path).unwrap();
        ModelFile::open(&path).unwrap()
    }

    fn users(dir: &Path, name: &str, k: usize, w: &[f32], ids: Option<&[&str]>) -> UsersFile {
        let path = dir.join(name);
        let mut out = TensorWriter::new();
        out.add_f32("W", &[w.len() / k, k], w);
        if let Some(ids) = ids {
            out.metadata("user_ids", ids);
        }
        out.write_atomic(&path).unwrap();
        UsersFile::open(&path).unwrap()
    }

    #[test]
    fn model_users_and_population_from_prior() {
        let dir = tempfile::tempdir().unwrap();
        let known =
            KnownUsers::from_model(&model(dir.path(), Some(&[1.0, 0.0]), Some(&["a", "b"])))
                .unwrap();
        assert_eq!(known.rank(), 2);
        assert_eq!(known.len(), 2);
        assert_eq!(known.get("a"), Some(&[0.2f32, 0.8][..]));
        assert_eq!(known.get("b"), Some(&[0.6f32, 0.4][..]));
        let e = std::f64::consts::E;
        let p0 = (e / (e + 1.0)) as f32;
        assert!((known.population()[0] - p0).abs() < 1e-6);
        assert!((known.population()[1] - (1.0 - p0)).abs() < 1e-6);
        let listed: Vec<&str> = known.iter().map(|(id, _)| id).collect();
        assert_eq!(listed, ["a", "b"]);
    }

    #[test]
    fn population_is_mean_of_w_without_prior_and_no_names_without_ids() {
        let dir = tempfile::tempdir().unwrap();
        let known = KnownUsers::from_model(&model(dir.path(), None, None)).unwrap();
        assert!(known.is_empty());
        assert_eq!(known.get("0"), None);
        assert!((known.population()[0] - 0.4).abs() < 1e-6);
        assert!((known.population()[1] - 0.6).abs() < 1e-6);
    }

    #[test]
    fn import_adds_and_replaces_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut known =
            KnownUsers::from_model(&model(dir.path(), Some(&[0.0, 0.0]), Some(&["a", "b"])))
                .unwrap();
        let file = users(
            dir.path(),
            "u.safetensors",
            2,
            &[0.9, 0.1, 0.3, 0.7],
            Some(&["b", "c"]),
        );
        assert_eq!(known.import(&file).unwrap(), 2);
        assert_eq!(known.len(), 3);
        assert_eq!(known.get("a"), Some(&[0.2f32, 0.8][..]));
        assert_eq!(known.get("b"), Some(&[0.9f32, 0.1][..]));
        assert_eq!(known.weights_or_population("c"), (&[0.3f32, 0.7][..], true));
        assert_eq!(
            known.weights_or_population("z"),
            (&[0.5f32, 0.5][..], false)
        );
    }

    #[test]
    fn import_refuses_other_rank_and_missing_ids() {
        let dir = tempfile::tempdir().unwrap();
        let mut known =
            KnownUsers::from_model(&model(dir.path(), None, Some(&["a", "b"]))).unwrap();
        let k3 = users(
            dir.path(),
            "k3.safetensors",
            3,
            &[0.2, 0.3, 0.5],
            Some(&["x"]),
        );
        let err = known.import(&k3).unwrap_err().to_string();
        assert!(err.contains("K = 3") && err.contains("K = 2"), "{err}");
        let anonymous = users(dir.path(), "anon.safetensors", 2, &[0.5, 0.5], None);
        let err = known.import(&anonymous).unwrap_err().to_string();
        assert!(err.contains("user_ids"), "{err}");
        assert_eq!(known.len(), 2);
    }
}
