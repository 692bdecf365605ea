//! The user store. TEMPORARY in-memory stand-in written by helper "http" against the contract,
//! replaced by the store helper's redb implementation on merge (theirs wins).
#![allow(missing_docs)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};

#[derive(Debug, Clone, PartialEq)]
pub struct StoredUser {
    pub user_id: String,
    pub pairs: u64,
    pub weights: Vec<f32>,
    pub version: u64,
    pub model_version: String,
    pub imported: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0}")]
    Refit(String),
    #[error("{0}")]
    Invalid(String),
}

pub trait Refit: Send + Sync + 'static {
    fn refit(&self, users: &[&[f32]]) -> Result<Vec<Vec<f32>>, String>;
    fn model_version(&self) -> String;
}

#[derive(Default)]
struct Inner {
    users: HashMap<String, (StoredUser, Vec<f32>)>,
    deleted: std::collections::HashSet<String>,
    commits: u64,
}

#[derive(Clone)]
pub struct Store {
    features: usize,
    inner: Arc<Mutex<Inner>>,
}

impl Store {
    pub fn open(_dir: &Path, features: usize, _rank: usize) -> Result<Store, StoreError> {
        Ok(Store {
            features,
            inner: Arc::default(),
        })
    }
    pub fn open_with_backend(
        _backend: impl redb::StorageBackend,
        features: usize,
        _rank: usize,
    ) -> Result<Store, StoreError> {
        Ok(Store {
            features,
            inner: Arc::default(),
        })
    }
    pub async fn add_pairs(
        &self,
        user_id: &str,
        rows: Vec<f32>,
        refit: Arc<dyn Refit>,
    ) -> Result<StoredUser, StoreError> {
        let mut all = self.pairs(user_id)?;
        all.extend_from_slice(&rows);
        let weights = refit.refit(&[&all]).map_err(StoreError::Refit)?.remove(0);
        let mut inner = self.inner.lock().unwrap();
        inner.deleted.remove(user_id);
        let version = inner.users.get(user_id).map_or(0, |u| u.0.version) + 1;
        let user = StoredUser {
            user_id: user_id.to_string(),
            pairs: (all.len() / self.features) as u64,
            weights,
            version,
            model_version: refit.model_version(),
            imported: false,
        };
        inner.users.insert(user_id.to_string(), (user.clone(), all));
        inner.commits += 1;
        Ok(user)
    }
    pub fn get(&self, user_id: &str) -> Result<Option<StoredUser>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .users
            .get(user_id)
            .map(|u| u.0.clone()))
    }
    pub fn pairs(&self, user_id: &str) -> Result<Vec<f32>, StoreError> {
        Ok(self
            .inner
            .lock()
            .unwrap()
            .users
            .get(user_id)
            .map(|u| u.1.clone())
            .unwrap_or_default())
    }
    pub async fn delete(&self, user_id: &str) -> Result<bool, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        inner.deleted.insert(user_id.to_string());
        Ok(inner.users.remove(user_id).is_some())
    }
    pub async fn import(
        &self,
        users: Vec<(String, Vec<f32>)>,
        model_version: &str,
    ) -> Result<usize, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let mut n = 0;
        for (id, weights) in users {
            if inner.deleted.contains(&id) || inner.users.get(&id).is_some_and(|u| u.0.pairs > 0) {
                continue;
            }
            let version = inner.users.get(&id).map_or(0, |u| u.0.version) + 1;
            let user = StoredUser {
                user_id: id.clone(),
                pairs: 0,
                weights,
                version,
                model_version: model_version.into(),
                imported: true,
            };
            inner.users.insert(id, (user, Vec::new()));
            n += 1;
        }
        Ok(n)
    }
    pub async fn set_weights(
        &self,
        updates: Vec<(String, u64, Vec<f32>)>,
        model_version: &str,
    ) -> Result<usize, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let mut n = 0;
        for (id, expected, weights) in updates {
            if let Some(u) = inner.users.get_mut(&id) {
                if u.0.version == expected {
                    u.0.weights = weights;
                    u.0.version += 1;
                    u.0.model_version = model_version.into();
                    n += 1;
                }
            }
        }
        Ok(n)
    }
    pub async fn drop_imported_without_pairs(&self) -> Result<usize, StoreError> {
        let mut inner = self.inner.lock().unwrap();
        let before = inner.users.len();
        inner.users.retain(|_, u| !(u.0.imported && u.0.pairs == 0));
        Ok(before - inner.users.len())
    }
    pub fn user_count(&self) -> u64 {
        self.inner.lock().unwrap().users.len() as u64
    }
    pub fn user_ids(&self) -> Result<Vec<String>, StoreError> {
        Ok(self.inner.lock().unwrap().users.keys().cloned().collect())
    }
    pub fn commits(&self) -> u64 {
        self.inner.lock().unwrap().commits
    }
}
