//! lore-core: the mathematics of LoRe (low-rank personalized reward models), with no I/O.

pub mod data;
pub mod error;

pub use data::{FeatureRows, Preferences};
pub use error::{LoreError, Result};
