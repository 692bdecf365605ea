//! The service's entry point: [`ServeOptions`] in, a bound [`Server`] out, run until a
//! shutdown future completes.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use crate::api::Limits;
use crate::error::ServeError;
use crate::served::{read_users_files, RefitParams, ServedModel};
use crate::state::{AppState, ReloadReport};
use crate::store::Store;
use crate::text::TextEmbedder;

/// Everything `lore serve` is told.
#[derive(Debug, Clone)]
pub struct ServeOptions {
    /// The model file (V, prior_logits, optionally W with user_ids).
    pub model: PathBuf,
    /// The embedder for text items: `minilm` or a model directory; `None`: the model's
    /// `embedder` record, or no text.
    pub embedder: Option<String>,
    /// The store's folder; `None`: in memory (nothing survives the process).
    pub store: Option<PathBuf>,
    /// Users files (`lore personalize` outputs) to import, matched by `user_ids`.
    pub users: Vec<PathBuf>,
    /// Where to listen (`127.0.0.1:0` picks a free port).
    pub bind: SocketAddr,
    /// The key every route but /health and /metrics needs; required off loopback.
    pub api_key: Option<String>,
    /// How users' weights are refitted from their pairs.
    pub refit: RefitParams,
    /// Per-request limits.
    pub limits: Limits,
    /// How texts are batched for the embedder.
    #[cfg(feature = "embed")]
    pub batcher: crate::batcher::BatcherOptions,
}

impl ServeOptions {
    /// Options serving `model` on 127.0.0.1:8080 with the defaults of `lore serve`.
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            embedder: None,
            store: None,
            users: Vec::new(),
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            api_key: None,
            refit: RefitParams::default(),
            limits: Limits::default(),
            #[cfg(feature = "embed")]
            batcher: Default::default(),
        }
    }
}

/// A cheap handle on a running service (for reloads from a signal, and for tests).
#[derive(Clone)]
pub struct ServerHandle {
    state: Arc<AppState>,
}

impl ServerHandle {
    /// Swaps in the model at `path` (the served file, re-read, when `None`), as
    /// `POST /admin/reload` does.
    pub async fn reload(&self, path: Option<PathBuf>) -> Result<ReloadReport, crate::ApiError> {
        self.state.reload(path.as_deref()).await
    }

    /// The version of the model answering now.
    pub fn model_version(&self) -> String {
        self.state.models().current.model_version.clone()
    }

    /// Whether a swap is still re-personalizing users.
    pub fn reloading(&self) -> bool {
        self.state.models().previous.is_some()
    }

    /// The store.
    pub fn store(&self) -> &Store {
        &self.state.store
    }
}

/// A bound, ready service.
pub struct Server {
    listener: tokio::net::TcpListener,
    state: Arc<AppState>,
}

impl Server {
    /// Loads the model, embedder, store and users, refits stored users whose weights belong
    /// to another model, and binds. Refuses a non-loopback address without a key, and an
    /// embedder whose dimension differs from the model's F.
    pub async fn bind(options: ServeOptions) -> Result<Server, ServeError> {
        if options.api_key.is_none() && !options.bind.ip().is_loopback() {
            return Err(ServeError::Options(format!(
                "refusing to listen on {} without an API key (give --api-key or LORE_API_KEY, or bind 127.0.0.1)",
                options.bind
            )));
        }
        if options.api_key.as_deref().is_some_and(|k| {
            k.trim().is_empty() || k.len() > 4096 || k.chars().any(char::is_control)
        }) {
            return Err(ServeError::Options(
                "the API key must be 1 to 4096 printable characters".into(),
            ));
        }
        let model = {
            let path = options.model.clone();
            tokio::task::spawn_blocking(move || ServedModel::load(&path))
                .await
                .map_err(|e| ServeError::Options(format!("loading the model failed: {e}")))??
        };
        let (f, k) = (model.features(), model.rank());
        let embedder = match (&options.embedder, &model.embedder) {
            (None, None) => None,
            (choice, recorded) => {
                Some(load_embedder(recorded.clone(), choice.clone(), f, &options).await?)
            }
        };
        let users = read_users_files(&model, &options.users)?;
        let store = match &options.store {
            Some(dir) => Store::open(dir, f, k)?,
            None => Store::open_with_backend(redb::backends::InMemoryBackend::new(), f, k)?,
        };
        let own = model.users.clone();
        #[cfg(feature = "embed")]
        let batch_observer = embedder.as_ref().map(|e| e.batcher().clone());
        let state = Arc::new(AppState::new(
            Arc::new(model),
            store,
            embedder,
            options.api_key.clone(),
            options.limits,
            options.refit,
        )?);
        #[cfg(feature = "embed")]
        if let Some(batcher) = batch_observer {
            let sizes = state.metrics.batch_sizes.clone();
            batcher.on_batch(move |done| sizes.observe(done.texts as f64));
        }
        state.import(own).await?;
        state.import(users).await?;
        state.refit_stale_users().await?;
        let listener = tokio::net::TcpListener::bind(options.bind)
            .await
            .map_err(|source| ServeError::Net {
                what: format!("binding {}", options.bind),
                source,
            })?;
        Ok(Server { listener, state })
    }

    /// The address the service listens on.
    pub fn local_addr(&self) -> SocketAddr {
        // A bound listener always has an address.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// A handle for reloads.
    pub fn handle(&self) -> ServerHandle {
        ServerHandle {
            state: self.state.clone(),
        }
    }

    /// Serves until `shutdown` completes, then finishes the requests in flight.
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), ServeError> {
        let addr = self.local_addr();
        let app = crate::routes::router(self.state.clone());
        axum::serve(self.listener, app)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| ServeError::Net {
                what: format!("serving on {addr}"),
                source,
            })
    }
}

/// Loads the embedder (`choice`, else the model's `recorded` one), checked against the
/// record and F.
#[cfg(feature = "embed")]
async fn load_embedder(
    recorded: Option<lore_io::EmbedderIdentity>,
    choice: Option<String>,
    features: usize,
    options: &ServeOptions,
) -> Result<TextEmbedder, ServeError> {
    let batcher = options.batcher.clone();
    tokio::task::spawn_blocking(move || {
        TextEmbedder::load(recorded.as_ref(), choice.as_deref(), features, batcher)
    })
    .await
    .map_err(|e| ServeError::Embedder(format!("loading failed: {e}")))?
}

/// Without the `embed` feature there is no embedder to load.
#[cfg(not(feature = "embed"))]
async fn load_embedder(
    recorded: Option<lore_io::EmbedderIdentity>,
    choice: Option<String>,
    _features: usize,
    _options: &ServeOptions,
) -> Result<TextEmbedder, ServeError> {
    let name = choice.or(recorded.map(|r| r.name)).unwrap_or_default();
    Err(ServeError::Embedder(format!(
        "cannot load {name}: this build has no text embedding (the `embed` feature)"
    )))
}
