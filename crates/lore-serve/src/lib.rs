//! lore-serve: personalized rewards online (`lore serve`).
//!
//! An axum router over a shared state: the model (basis, population weights, embedder
//! identity), the user store (redb: users, their weights and stored pairs, versions; every
//! acknowledged write fsync'd, concurrent writes grouped into one commit) and, with the `embed`
//! feature, a batching queue that embeds the texts of concurrent requests in shared forward
//! passes. See the README's "Serving rewards" for the HTTP contract.
#![warn(missing_docs)]
#![deny(unsafe_op_in_unsafe_fn)]
#![deny(clippy::undocumented_unsafe_blocks)]

#[cfg(feature = "embed")]
pub mod batcher;
pub mod store;
