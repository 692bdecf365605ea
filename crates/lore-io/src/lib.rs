//! lore-io: every file `lore` reads and writes, as safetensors read through a memory map and
//! written atomically.
//!
//! - [`TensorFile`]: any safetensors file, validated on open, with typed tensor readers.
//! - [`PreferenceFile`]: preference rows (`x` or `chosen`/`rejected`, and `user`) checked and
//!   grouped by user, ready to lend a [`lore_core::Preferences`] view without copying features.
//! - [`ModelFile`] and [`UsersFile`]: what `lore fit` and `lore personalize` write (basis,
//!   users' weights, prior, reference head, settings), read back as the core's types;
//!   [`read_v_ref`], [`FitInitFile`] and [`UserInitFile`] for the reference head and `--init`.
//! - [`KnownUsers`]: the users a model scores by name (its own, and imported users files), and
//!   the population's mean weights for everyone else (`lore score`, `lore serve`).
//! - [`SplitFolder`]: the four preference sets of a split (`lore split`, `lore simulate`), with
//!   test users matched to training users, `split.json` and `v_ref.safetensors`.
//! - [`check_outputs`]: refuses, before any work, an output that would destroy an input or a
//!   special file, or that cannot be written; [`CheckedOutputs`] then notices changed inputs.
//! - [`checks`]: signs that preference data lies (all-zero rows, repeated pair ids, a dominant
//!   user, the same pair in training and test sets), as findings.
//! - [`TensorWriter`]: builds a safetensors file and replaces the target atomically
//!   ([`write_bytes_atomic`] does the same for any bytes).
//!
//! - [`OutputFolder`]: an output folder built whole in a hidden sibling and put into place in
//!   one step (never mixed), refusing folders lore did not write and the command's inputs.
//!
//! Every error is an [`IoError`] whose message names the file and, when there is one, the
//! tensor or metadata key.
//!
//! # Example: load a model and score a preference file
//!
//! With `lore_io` and `lore_core` alone, a model written by `lore fit` scores new pairs. Here
//! a tiny model and preference file are written first, as `lore fit` and a user would:
//!
//! ```
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use lore_io::{ModelFile, PreferenceFile, TensorWriter};
//!
//! let dir = tempfile::tempdir()?;
//! let (model_path, data_path) = (dir.path().join("model.safetensors"), dir.path().join("test.safetensors"));
//! // A model with F = 2 features, K = 1 column, two users (as `lore fit` writes it).
//! TensorWriter::new()
//!     .add_f32("V", &[2, 1], &[1.0, -1.0])
//!     .add_f32("W", &[2, 1], &[1.0, 1.0])
//!     .metadata("user_ids", &["ann", "bob"])
//!     .write_atomic(&model_path)?;
//! // Three pairs x = e(chosen) - e(rejected): two of user 0, one of user 1.
//! TensorWriter::new()
//!     .add_f32("x", &[3, 2], &[1.0, 0.0, 0.0, 1.0, 2.0, -1.0])
//!     .add_i64("user", &[3], &[0, 0, 1])
//!     .write_atomic(&data_path)?;
//!
//! let model = ModelFile::open(&model_path)?;
//! let basis = model.basis(None)?; // the logit scale recorded in the file, else 0.01
//! let users = model.users()?;
//! let data = PreferenceFile::load(&data_path)?;
//! let accuracy = lore_core::evaluate(&basis, &users.weights, &data.view())?;
//! println!("accuracy {:.3} over {} users", accuracy.mean, data.n_users());
//! assert_eq!(accuracy.per_user, vec![0.5, 1.0]);
//!
//! // The probability that user 0 prefers the chosen response of the first pair.
//! let p = basis.preference_probability(&[1.0, 0.0], users.weights.user(0));
//! assert!(p > 0.5);
//! # Ok(())
//! # }
//! ```
#![deny(unsafe_code)]
#![warn(missing_docs)]

pub mod checks;
mod decode;
mod embedder_identity;
mod error;
mod known_users;
mod model_file;
mod output;
mod output_folder;
mod pending;
mod preference;
mod split_folder;
mod tensor_file;
mod trace;
mod writer;

pub use embedder_identity::EmbedderIdentity;
pub use error::{IoError, Result};
pub use known_users::KnownUsers;
pub use model_file::{
    early_stopping_metadata, read_v_ref, FitInitFile, FitProvenance, ModelFile, NamedUsers,
    UserInitFile, UsersFile, UsersProvenance,
};
pub use output::{check_outputs, CheckedOutputs};
pub use output_folder::{is_unfinished_output, output_command, OutputFolder, MARKER_FILE};
pub use pending::{discard_unfinished, track_unfinished, Pending};
pub use preference::PreferenceFile;
pub use split_folder::{FileRows, MemoryRows, RowSource, SetRows, SplitFolder};
pub use tensor_file::{Features, OwnedFeatures, TensorFile};
pub use trace::Trace;
pub use writer::{write_atomic_with, write_bytes_atomic, TensorWriter};
