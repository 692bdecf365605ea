//! lore-serve: personalized rewards online (`lore serve`).
//!
//! An axum router over a shared state: the model (basis, population weights, embedder
//! identity), the user store (redb: users, their weights and stored pairs, versions; every
//! acknowledged write fsync'd, concurrent writes grouped into one commit) and, with the `embed`
//! feature, a batching queue that embeds the texts of concurrent requests in shared forward
//! passes. See the README's "Serving rewards" for the HTTP contract.
//!
//! ```no_run
//! # async fn run() -> Result<(), lore_serve::ServeError> {
//! let mut options = lore_serve::ServeOptions::new("model.safetensors");
//! options.bind = "127.0.0.1:0".parse().unwrap();
//! let server = lore_serve::Server::bind(options).await?;
//! println!("listening on http://{}", server.local_addr());
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

pub mod api;
mod app;
#[cfg(feature = "embed")]
pub mod batcher;
mod error;
pub mod metrics;
mod routes;
pub mod served;
mod state;
pub mod store;
pub mod text;

pub use api::Limits;
pub use app::{ServeOptions, Server, ServerHandle};
pub use error::{ApiError, ServeError};
pub use served::{PersonalizeRefit, RefitParams, ServedModel};
pub use state::ReloadReport;
