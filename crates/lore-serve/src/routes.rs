//! The routes of the HTTP contract, the key check and the metrics around every request.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Path, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::api::{
    check_user_id, read_json, GetRewardRequest, PreferencesRequest, ReloadRequest, RewardsRequest,
};
use crate::error::ApiError;
use crate::state::{AppState, Models, Resolved};

type Shared = Arc<AppState>;

/// The router of the whole contract over `state`.
pub fn router(state: Shared) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/info", get(info))
        .route("/metrics", get(metrics))
        .route("/get_reward", post(get_reward))
        .route("/v1/rewards", post(rewards))
        .route("/v1/users/{id}", get(get_user).delete(delete_user))
        .route("/v1/users/{id}/preferences", post(add_preferences))
        .route("/admin/reload", post(reload))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn_with_state(state.clone(), authorize))
        .layer(middleware::from_fn_with_state(state.clone(), record))
        .with_state(state)
}

async fn not_found(request: Request) -> ApiError {
    ApiError::not_found(format!("route: no route {}", request.uri().path()))
}

async fn method_not_allowed(request: Request) -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        format!(
            "method: {} is not allowed on {}",
            request.method(),
            request.uri().path()
        ),
    )
}

/// Counts and times every request by its route template.
async fn record(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or("unmatched", |m| m.as_str())
        .to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    state
        .metrics
        .record(&route, response.status().as_u16(), started.elapsed());
    response
}

/// `Authorization: Bearer KEY` on every route but /health and /metrics, when a key is set.
async fn authorize(State(state): State<Shared>, request: Request, next: Next) -> Response {
    if let Some(key) = &state.api_key {
        let path = request.uri().path();
        if path != "/health" && path != "/metrics" {
            let given = request
                .headers()
                .get(header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| v.strip_prefix("Bearer "))
                .map(str::trim);
            let ok = given.is_some_and(|g| constant_time_eq(g.as_bytes(), key.as_bytes()));
            if !ok {
                let message = if given.is_none() {
                    "authorization: missing `Authorization: Bearer KEY`"
                } else {
                    "authorization: wrong key"
                };
                return ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
            }
        }
    }
    next.run(request).await
}

/// Compares without stopping at the first difference.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for (i, &x) in a.iter().enumerate() {
        diff |= (x ^ b.get(i % b.len().max(1)).copied().unwrap_or(0)) as usize;
    }
    diff == 0
}

/// A real scoring check: the population's reward of a fixed vector must be finite and the
/// store must answer.
async fn health(State(state): State<Shared>) -> Response {
    let models = state.models();
    let model = &models.current;
    let probe: Vec<f32> = (0..model.features())
        .map(|i| ((i % 7) as f32 - 3.0) / 7.0)
        .collect();
    let reward = state
        .resolve(&models, Some("\u{0}health"))
        .map(|r| r.reward(&probe));
    match reward {
        Ok(r) if r.is_finite() => Json(json!({ "status": "ok" })).into_response(),
        Ok(r) => {
            ApiError::unavailable(format!("health: the probe's reward is {r}")).into_response()
        }
        Err(e) => ApiError::unavailable(format!("health: {}", e.message)).into_response(),
    }
}

async fn info(State(state): State<Shared>) -> Json<Value> {
    let models = state.models();
    let m = &models.current;
    Json(json!({
        "features": m.features(),
        "rank": m.rank(),
        "method": m.method,
        "model_version": m.model_version,
        "embedder": state.embedder.as_ref().map(|e| e.identity().to_string()).or_else(|| m.embedder.as_ref().map(|e| e.name.clone())),
        "users": state.store.user_count(),
        "reloading": models.previous.is_some(),
    }))
}

async fn metrics(State(state): State<Shared>) -> Response {
    state.metrics.users.set(state.store.user_count() as i64);
    state.metrics.store_commits.set(state.store.commits());
    let mut response = state.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// The user-id path segment, checked.
fn path_user(
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<String, ApiError> {
    let Path(id) = id.map_err(|e| ApiError::bad_request(format!("id: {}", e.body_text())))?;
    check_user_id(&id).map_err(|e| ApiError::bad_request(format!("id: {e}")))?;
    Ok(id)
}

/// Rewards for rows of features, each with its user.
fn score(
    state: &AppState,
    models: &Models,
    rows: &[(Option<&str>, &[f32])],
) -> Result<(Vec<f64>, Vec<bool>, Option<String>, Option<Vec<String>>), ApiError> {
    let mut index: HashMap<Option<&str>, usize> = HashMap::new();
    let mut resolved: Vec<Resolved> = Vec::new();
    let mut rewards = Vec::with_capacity(rows.len());
    let mut known = Vec::with_capacity(rows.len());
    let mut which = Vec::with_capacity(rows.len());
    for &(user, e) in rows {
        let i = match index.get(&user) {
            Some(&i) => i,
            None => {
                resolved.push(state.resolve(models, user)?);
                index.insert(user, resolved.len() - 1);
                resolved.len() - 1
            }
        };
        let r = &resolved[i];
        rewards.push(r.reward(e));
        known.push(r.known);
        which.push(i);
    }
    let versions: Vec<&String> = which
        .iter()
        .map(|&i| &resolved[i].model.model_version)
        .collect();
    let first = versions.first().map(|v| v.to_string());
    let mixed = versions
        .iter()
        .any(|v| Some(v.as_str()) != first.as_deref());
    let per_item = mixed.then(|| versions.iter().map(|v| v.to_string()).collect());
    let version = if mixed {
        Some(models.current.model_version.clone())
    } else {
        first.or_else(|| Some(models.current.model_version.clone()))
    };
    Ok((rewards, known, version, per_item))
}

/// The embedder, or a 400 naming `field`.
fn need_embedder<'s>(
    state: &'s AppState,
    field: &str,
) -> Result<&'s crate::text::TextEmbedder, ApiError> {
    state.embedder.as_ref().ok_or_else(|| {
        ApiError::bad_request(format!(
            "{field}: this server has no embedder for text (start it with --embedder, or send features)"
        ))
    })
}

async fn embed(
    state: &AppState,
    texts: Vec<String>,
    features: usize,
) -> Result<Vec<Vec<f32>>, ApiError> {
    let Some(embedder) = state.embedder.as_ref() else {
        return Err(ApiError::bad_request("text: this server has no embedder"));
    };
    let n = texts.len();
    let vectors = embedder.embed(texts).await?;
    if vectors.len() != n || vectors.iter().any(|v| v.len() != features) {
        return Err(ApiError::internal(format!(
            "the embedder returned vectors that are not [{n}, F = {features}]"
        )));
    }
    Ok(vectors)
}

async fn rewards(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let models = state.models();
    let f = models.current.features();
    let request: RewardsRequest = read_json(&headers, body, &state.limits, f, false).await?;
    let items = request.items.0;
    if items.is_empty() {
        return Err(ApiError::unprocessable(
            "items: empty (at least one item is needed)",
        ));
    }
    // Each item: features as given, or an index into the texts to embed.
    enum Row {
        Given(Vec<f32>),
        Text(usize),
    }
    let mut rows = Vec::with_capacity(items.len());
    let mut texts = Vec::new();
    for (i, item) in items.iter().enumerate() {
        match (&item.features, &item.prompt, &item.response) {
            (Some(_), Some(_), _) | (Some(_), _, Some(_)) => {
                return Err(ApiError::unprocessable(format!(
                    "items[{i}]: either features or prompt and response, not both"
                )))
            }
            (Some(features), None, None) => rows.push(Row::Given(features.0.clone())),
            (None, Some(prompt), Some(response)) => {
                let embedder = need_embedder(&state, &format!("items[{i}].prompt"))?;
                for (name, t) in [("prompt", prompt), ("response", response)] {
                    if t.is_empty_list() {
                        return Err(ApiError::unprocessable(format!(
                            "items[{i}].{name}: empty list of messages"
                        )));
                    }
                }
                let text = embedder
                    .render(prompt, response)
                    .map_err(|e| ApiError::unprocessable(format!("items[{i}]: {e}")))?;
                rows.push(Row::Text(texts.len()));
                texts.push(text);
            }
            (None, None, Some(_)) => {
                return Err(ApiError::unprocessable(format!(
                    "items[{i}].prompt: missing (a response needs its prompt)"
                )))
            }
            (None, Some(_), None) => {
                return Err(ApiError::unprocessable(format!(
                    "items[{i}].response: missing"
                )))
            }
            (None, None, None) => {
                return Err(ApiError::unprocessable(format!(
                    "items[{i}]: needs features, or prompt and response"
                )))
            }
        }
    }
    let n_text = texts.len();
    let vectors = if texts.is_empty() {
        Vec::new()
    } else {
        embed(&state, texts, f).await?
    };
    let default_user = request.user_id.as_ref().map(|u| u.0.as_str());
    let scored: Vec<(Option<&str>, &[f32])> = items
        .iter()
        .zip(&rows)
        .map(|(item, row)| {
            let user = item.user_id.as_ref().map(|u| u.0.as_str()).or(default_user);
            let e: &[f32] = match row {
                Row::Given(v) => v,
                Row::Text(t) => &vectors[*t],
            };
            (user, e)
        })
        .collect();
    let (rewards, known, version, per_item) = score(&state, &models, &scored)?;
    state
        .metrics
        .items
        .get_or_create(&crate::metrics::ItemKind {
            kind: "features".into(),
        })
        .inc_by((items.len() - n_text) as u64);
    state
        .metrics
        .items
        .get_or_create(&crate::metrics::ItemKind {
            kind: "text".into(),
        })
        .inc_by(n_text as u64);
    let mut out = json!({ "rewards": rewards, "user_known": known, "model_version": version });
    if let Some(per_item) = per_item {
        out["model_versions"] = json!(per_item);
    }
    Ok(Json(out))
}

async fn get_reward(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let models = state.models();
    let f = models.current.features();
    let request: GetRewardRequest = read_json(&headers, body, &state.limits, f, false).await?;
    let queries = request.query.0;
    if queries.is_empty() {
        return Err(ApiError::unprocessable(
            "query: empty (at least one text is needed)",
        ));
    }
    let labels = request.labels.map(|l| l.0);
    if let Some(labels) = &labels {
        if labels.len() != queries.len() {
            return Err(ApiError::unprocessable(format!(
                "labels: {} labels for {} queries (one per query)",
                labels.len(),
                queries.len()
            )));
        }
    }
    need_embedder(&state, "query")?;
    let n = queries.len();
    let vectors = embed(&state, queries, f).await?;
    let rows: Vec<(Option<&str>, &[f32])> = (0..n)
        .map(|i| {
            let user = labels.as_ref().and_then(|l| l[i].0.as_deref());
            (user, vectors[i].as_slice())
        })
        .collect();
    let (rewards, known, version, per_item) = score(&state, &models, &rows)?;
    state
        .metrics
        .items
        .get_or_create(&crate::metrics::ItemKind {
            kind: "text".into(),
        })
        .inc_by(n as u64);
    let mut out = json!({
        "rewards": rewards,
        "scores": rewards,
        "extra_logs": { "user_known": known },
        "model_version": version,
    });
    if let Some(per_item) = per_item {
        out["model_versions"] = json!(per_item);
    }
    Ok(Json(out))
}

fn user_json(user: &crate::store::StoredUser) -> Value {
    json!({
        "user_id": user.user_id,
        "pairs": user.pairs,
        "weights": user.weights,
        "version": user.version,
        "model_version": user.model_version,
    })
}

async fn get_user(
    State(state): State<Shared>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_user(id)?;
    match state.user(&id)? {
        Some(user) => Ok(Json(user_json(&user))),
        None => Err(ApiError::not_found(format!("id: no user {id:?}"))),
    }
}

async fn delete_user(
    State(state): State<Shared>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = path_user(id)?;
    if state.store.delete(&id).await? {
        Ok(StatusCode::NO_CONTENT)
    } else {
        Err(ApiError::not_found(format!("id: no user {id:?}")))
    }
}

async fn add_preferences(
    State(state): State<Shared>,
    id: Result<Path<String>, axum::extract::rejection::PathRejection>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let id = path_user(id)?;
    let models = state.models();
    let model = models.current.clone();
    let f = model.features();
    let request: PreferencesRequest = read_json(&headers, body, &state.limits, f, false).await?;
    let pairs = request.pairs.0;
    if pairs.is_empty() {
        return Err(ApiError::unprocessable(
            "pairs: empty (at least one pair is needed)",
        ));
    }
    let mut rows = vec![0.0f32; pairs.len() * f];
    let mut texts = Vec::new();
    let mut text_rows = Vec::new();
    for (i, pair) in pairs.iter().enumerate() {
        match (&pair.features, &pair.prompt, &pair.chosen, &pair.rejected) {
            (Some(x), None, None, None) => rows[i * f..(i + 1) * f].copy_from_slice(&x.0),
            (Some(_), _, _, _) => {
                return Err(ApiError::unprocessable(format!(
                    "pairs[{i}]: either features or prompt, chosen and rejected, not both"
                )))
            }
            (None, Some(prompt), Some(chosen), Some(rejected)) => {
                let embedder = need_embedder(&state, &format!("pairs[{i}].prompt"))?;
                for (name, t) in [
                    ("prompt", prompt),
                    ("chosen", chosen),
                    ("rejected", rejected),
                ] {
                    if t.is_empty_list() {
                        return Err(ApiError::unprocessable(format!(
                            "pairs[{i}].{name}: empty list of messages"
                        )));
                    }
                }
                let c = embedder
                    .render(prompt, chosen)
                    .map_err(|e| ApiError::unprocessable(format!("pairs[{i}].chosen: {e}")))?;
                let r = embedder
                    .render(prompt, rejected)
                    .map_err(|e| ApiError::unprocessable(format!("pairs[{i}].rejected: {e}")))?;
                text_rows.push(i);
                texts.push(c);
                texts.push(r);
            }
            (None, p, c, r) => {
                let missing = [
                    ("prompt", p.is_none()),
                    ("chosen", c.is_none()),
                    ("rejected", r.is_none()),
                ]
                .iter()
                .filter(|(_, m)| *m)
                .map(|(n, _)| *n)
                .collect::<Vec<_>>();
                let what = if missing.len() == 3 {
                    "features, or prompt, chosen and rejected".to_string()
                } else {
                    missing.join(", ")
                };
                return Err(ApiError::unprocessable(format!(
                    "pairs[{i}].{}: missing ({what})",
                    missing[0]
                )));
            }
        }
    }
    if !texts.is_empty() {
        let vectors = embed(&state, texts, f).await?;
        for (j, &i) in text_rows.iter().enumerate() {
            let (c, r) = (&vectors[2 * j], &vectors[2 * j + 1]);
            for (k, x) in rows[i * f..(i + 1) * f].iter_mut().enumerate() {
                *x = c[k] - r[k];
            }
        }
    }
    check_pair_scores(&model, &rows).map_err(ApiError::unprocessable)?;
    let n = pairs.len() as u64;
    let refit: Arc<dyn crate::store::Refit> = models.refit.clone();
    let user = state
        .store
        .add_pairs(&id, rows, refit)
        .await
        .map_err(|e| match e {
            e @ crate::store::StoreError::Refit(_) => {
                ApiError::unprocessable(format!("pairs: {e}"))
            }
            e => ApiError::from(e),
        })?;
    state.metrics.pairs_written.inc_by(n);
    Ok(Json(user_json(&user)))
}

/// Refuses pairs whose scores c * x . V_k would overflow the f32 fit (they would make the
/// refit diverge for every user committed with them).
fn check_pair_scores(model: &crate::served::ServedModel, rows: &[f32]) -> Result<(), String> {
    let (f, k) = (model.features(), model.rank());
    let v = model.basis.values();
    let c = model.basis.logit_scale();
    for (i, row) in rows.chunks_exact(f).enumerate() {
        for col in 0..k {
            let s: f64 = row
                .iter()
                .enumerate()
                .map(|(j, &x)| x as f64 * v[j * k + col] as f64)
                .sum();
            if !(c * s).is_finite() || (c * s).abs() > 1e30 {
                return Err(format!(
                    "pairs[{i}].features: too large (c * x . V[:, {col}] = {:e}; the fit needs it well inside f32)",
                    c * s
                ));
            }
        }
    }
    Ok(())
}

async fn reload(
    State(state): State<Shared>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let f = state.models().current.features();
    let request: ReloadRequest = read_json(&headers, body, &state.limits, f, true).await?;
    let path = request.model.map(std::path::PathBuf::from);
    let report = state.reload(path.as_deref()).await?;
    Ok(Json(json!(report)))
}
