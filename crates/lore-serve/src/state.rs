//! The shared state of the service: the served model(s), the store, the embedder, metrics,
//! the key; user lookup, and model swaps with background re-personalization.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use axum::http::StatusCode;

use crate::api::Limits;
use crate::error::{ApiError, ServeError};
use crate::metrics::Metrics;
use crate::served::{PersonalizeRefit, RefitParams, ServedModel};
use crate::store::{Refit, Store, StoredUser};
use crate::text::TextEmbedder;

/// The models answering now: the current one and, during a swap, the previous one (for users
/// whose weights are not refitted yet).
#[derive(Debug, Clone)]
pub struct Models {
    /// The model new weights are fitted for and unknown users are scored with.
    pub current: Arc<ServedModel>,
    /// The refit for the current model.
    pub refit: Arc<PersonalizeRefit>,
    /// The model before a swap still in progress.
    pub previous: Option<Arc<ServedModel>>,
}

/// Where one user's reward comes from.
#[derive(Debug, Clone)]
pub struct Resolved {
    /// The model whose basis scores this user.
    pub model: Arc<ServedModel>,
    /// V w_u; `None`: the population's (the model's `population_direction`).
    pub direction: Option<Vec<f64>>,
    /// Whether the user's own weights are used.
    pub known: bool,
}

impl Resolved {
    /// The reward of features `e` for this user.
    pub fn reward(&self, e: &[f32]) -> f64 {
        let direction = self
            .direction
            .as_deref()
            .unwrap_or(&self.model.population_direction);
        self.model.reward_along(e, direction)
    }
}

/// Everything the handlers share.
pub struct AppState {
    models: RwLock<Arc<Models>>,
    /// The user store.
    pub store: Store,
    /// The embedder for text items, if any.
    pub embedder: Option<TextEmbedder>,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The key every route but /health and /metrics needs, if set.
    pub api_key: Option<String>,
    /// Per-request limits.
    pub limits: Limits,
    /// How users are refitted.
    pub refit_params: RefitParams,
    /// One model swap at a time.
    reload_lock: Arc<tokio::sync::Mutex<()>>,
}

/// What a model swap did (answered by `POST /admin/reload`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReloadReport {
    /// The version now served.
    pub model_version: String,
    /// The version served before.
    pub previous_version: String,
    /// Whether anything changed (false: the same file content).
    pub swapped: bool,
}

impl AppState {
    /// A state serving `model`.
    pub fn new(
        model: Arc<ServedModel>,
        store: Store,
        embedder: Option<TextEmbedder>,
        api_key: Option<String>,
        limits: Limits,
        refit_params: RefitParams,
    ) -> Result<Self, ServeError> {
        let refit = Arc::new(model.refitter(refit_params)?);
        Ok(Self {
            models: RwLock::new(Arc::new(Models {
                current: model,
                refit,
                previous: None,
            })),
            store,
            embedder,
            metrics: Metrics::new(),
            api_key,
            limits,
            refit_params,
            reload_lock: Arc::new(tokio::sync::Mutex::new(())),
        })
    }

    /// The models answering now (a snapshot: one request uses one).
    pub fn models(&self) -> Arc<Models> {
        self.models
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn set_models(&self, models: Models) {
        *self.models.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(models);
    }

    /// Where `user`'s rewards come from under `models`: their stored weights when they belong
    /// to a model answering now, else the current population.
    pub fn resolve(&self, models: &Models, user: Option<&str>) -> Result<Resolved, ApiError> {
        let population = || Resolved {
            model: models.current.clone(),
            direction: None,
            known: false,
        };
        let Some(id) = user else {
            return Ok(population());
        };
        let Some(stored) = self.store.get(id)? else {
            return Ok(population());
        };
        let model = if stored.model_version == models.current.model_version {
            &models.current
        } else {
            match &models.previous {
                Some(p) if stored.model_version == p.model_version => p,
                _ => return Ok(population()),
            }
        };
        if stored.weights.len() != model.rank() {
            return Ok(population());
        }
        Ok(Resolved {
            direction: Some(model.basis.direction(&stored.weights)),
            model: model.clone(),
            known: true,
        })
    }

    /// Imports users (the model's own, `--users` files) with the current model's version.
    pub async fn import(&self, users: Vec<(String, Vec<f32>)>) -> Result<usize, ServeError> {
        if users.is_empty() {
            return Ok(0);
        }
        let version = self.models().current.model_version.clone();
        Ok(self.store.import(users, &version).await?)
    }

    /// Refits every stored user with pairs whose weights belong to another model than the
    /// current one, in batches; repeated until none is left (a write during a pass may have
    /// used the old model). Returns how many were refitted.
    pub async fn refit_stale_users(&self) -> Result<u64, ServeError> {
        let mut total = 0;
        for _pass in 0..5 {
            let models = self.models();
            let refit = models.refit.clone();
            let version = models.current.model_version.clone();
            let ids = self.store.user_ids()?;
            let mut stale = 0;
            for chunk in ids.chunks(64) {
                let mut batch: Vec<(String, u64, Vec<f32>)> = Vec::new();
                for id in chunk {
                    let Some(user) = self.store.get(id)? else {
                        continue;
                    };
                    if user.pairs == 0 || user.model_version == version {
                        continue;
                    }
                    let pairs = self.store.pairs(id)?;
                    if pairs.is_empty() {
                        continue;
                    }
                    batch.push((user.user_id, user.version, pairs));
                }
                if batch.is_empty() {
                    continue;
                }
                stale += batch.len();
                let fit = refit.clone();
                let batch = tokio::task::spawn_blocking(move || {
                    let rows: Vec<&[f32]> = batch.iter().map(|(_, _, p)| p.as_slice()).collect();
                    let weights = fit.refit(&rows);
                    weights.map(|w| {
                        batch
                            .into_iter()
                            .zip(w)
                            .map(|((id, v, _), w)| (id, v, w))
                            .collect::<Vec<_>>()
                    })
                })
                .await
                .map_err(|e| ServeError::Options(format!("refit task failed: {e}")))?
                .map_err(|e| ServeError::Options(format!("refitting stored users: {e}")))?;
                let n = self.store.set_weights(batch, &version).await?;
                self.metrics.users_refitted.inc_by(n as u64);
                total += n as u64;
            }
            if stale == 0 {
                break;
            }
        }
        Ok(total)
    }

    /// Swaps in the model at `path` (the served file again without it): refused when F or
    /// the embedder differs. Answers at once; stored users are re-personalized in the
    /// background (served by the previous model until then).
    pub async fn reload(self: &Arc<Self>, path: Option<&Path>) -> Result<ReloadReport, ApiError> {
        let Ok(guard) = self.reload_lock.clone().try_lock_owned() else {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "model: a reload is already in progress",
            ));
        };
        let models = self.models();
        let path: PathBuf = path.map_or_else(|| models.current.path.clone(), Path::to_path_buf);
        let loaded = {
            let path = path.clone();
            tokio::task::spawn_blocking(move || ServedModel::load(&path))
                .await
                .map_err(|e| ApiError::internal(format!("model: loading failed: {e}")))?
        };
        let new = loaded.map_err(|e| ApiError::unprocessable(format!("model: {e}")))?;
        check_compatible(&models.current, &new)
            .map_err(|e| ApiError::unprocessable(format!("model: {e}")))?;
        let report = ReloadReport {
            model_version: new.model_version.clone(),
            previous_version: models.current.model_version.clone(),
            swapped: new.model_version != models.current.model_version,
        };
        if !report.swapped {
            return Ok(report);
        }
        let new = Arc::new(new);
        let refit = Arc::new(
            new.refitter(self.refit_params)
                .map_err(|e| ApiError::internal(format!("model: {e}")))?,
        );
        let own_users = new.users.clone();
        self.set_models(Models {
            current: new,
            refit,
            previous: Some(models.current.clone()),
        });
        self.metrics.reload_in_progress.set(1);
        let state = self.clone();
        tokio::spawn(async move {
            let _guard = guard;
            if let Err(e) = state.finish_swap(own_users).await {
                eprintln!("error: re-personalizing after the model swap: {e}");
            }
            state.metrics.reload_in_progress.set(0);
        });
        Ok(report)
    }

    /// The background part of a swap: refit users with pairs, drop imported users without
    /// pairs (their weights were for the old basis), import the new model's own users, and
    /// stop serving the previous model.
    async fn finish_swap(&self, own_users: Vec<(String, Vec<f32>)>) -> Result<(), ServeError> {
        let refitted = self.refit_stale_users().await;
        let dropped = self.store.drop_imported_without_pairs().await;
        let imported = self.import(own_users).await;
        let models = self.models();
        self.set_models(Models {
            current: models.current.clone(),
            refit: models.refit.clone(),
            previous: None,
        });
        refitted?;
        dropped?;
        imported?;
        Ok(())
    }

    /// The stored user `id`, if any.
    pub fn user(&self, id: &str) -> Result<Option<StoredUser>, ApiError> {
        Ok(self.store.get(id)?)
    }
}

/// Refuses a new model whose features would not fit the stored ones.
pub fn check_compatible(old: &ServedModel, new: &ServedModel) -> Result<(), String> {
    if old.features() != new.features() {
        return Err(format!(
            "{} has F = {}, the served model F = {} (stored features would not fit it)",
            new.path.display(),
            new.features(),
            old.features()
        ));
    }
    match (&old.embedder, &new.embedder) {
        (Some(a), Some(b)) => {
            if let Some(reason) = a.mismatch(b) {
                return Err(format!(
                    "{} was fitted on other features than the served model ({reason}): stored features would not fit it",
                    new.path.display()
                ));
            }
        }
        (None, None) => {}
        (a, _) => {
            return Err(format!(
            "{} {} an embedder record and the served model {}: stored features might not fit it",
            new.path.display(),
            if a.is_some() { "has no" } else { "has" },
            if a.is_some() { "has one" } else { "has none" },
        ))
        }
    }
    Ok(())
}
