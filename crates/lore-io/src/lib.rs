//! lore-io: safetensors files for lore, read through a memory map and written atomically.
//!
//! - [`TensorFile`]: any safetensors file, validated on open, with typed tensor readers.
//! - [`PreferenceFile`]: preference rows (`x` or `chosen`/`rejected`, and `user`) checked and
//!   grouped by user, ready to lend a [`lore_core::Preferences`] view without copying features.
//! - [`TensorWriter`]: builds a safetensors file and replaces the target atomically
//!   ([`write_bytes_atomic`] does the same for any bytes).
//!
//! Every error is an [`IoError`] whose message names the file and, when there is one, the
//! tensor or metadata key.
#![deny(unsafe_code)]
#![warn(missing_docs)]

mod decode;
mod error;
mod preference;
mod tensor_file;
mod writer;

pub use error::{IoError, Result};
pub use preference::PreferenceFile;
pub use tensor_file::{Features, OwnedFeatures, TensorFile};
pub use writer::{write_atomic_with, write_bytes_atomic, TensorWriter};
