//! The durable user store: users, their weights and every preference pair they posted, in redb.
//!
//! One file, `DIR/lore.redb`, with four tables:
//! - `users`: user id -> record (weights `[K]` f32, version, pair count, model version, imported flag);
//! - `pairs`: (user id, sequence) -> one pair's features (`F` f32, little-endian), sequence `0..pairs`;
//! - `deleted`: tombstones, user id -> the version the user had when deleted (keeps re-imports out and
//!   keeps a re-created user's versions increasing);
//! - `meta`: format version, `F` and `K` (a store made for another `F` or `K` is refused).
//!
//! Writes go through ONE writer thread (group commit): every request waiting in its queue is taken
//! at once (up to [`MAX_BATCH`]), the users touched by preference writes are refitted in one
//! [`Refit::refit`] call, everything is written in one write transaction and committed with
//! [`redb::Durability::Immediate`] (one fsync for the whole batch), and only then is every request
//! answered. A failed commit answers every request of its batch with an error; the database is then
//! reopened so that the store stays usable. Reads use read transactions and never wait for the
//! writer.
//!
//! A user posted twice in one batch gets both pairs lists appended in arrival order and one refit;
//! both answers carry the user's final state (all pairs, the final weights and version).

mod codec;
mod writer;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;

use redb::{Database, ReadableDatabase, ReadableTable, StorageBackend, TableDefinition};
use tokio::sync::{mpsc, oneshot};

use codec::UserRecord;
use writer::{Op, Writer};

/// The longest user id the store accepts, in bytes (UTF-8).
pub const MAX_USER_ID_BYTES: usize = 256;
/// The most requests one group commit takes from the queue.
pub const MAX_BATCH: usize = 256;
/// How many write requests may wait for the writer before [`StoreError::Busy`] is answered.
pub const MAX_QUEUED: usize = 4096;
/// The file the store keeps in its folder.
pub const FILE_NAME: &str = "lore.redb";
/// The on-disk format version of the store (the `meta` table's `format`).
pub const FORMAT_VERSION: u64 = 1;

const USERS: TableDefinition<&str, &[u8]> = TableDefinition::new("users");
const PAIRS: TableDefinition<(&str, u64), &[u8]> = TableDefinition::new("pairs");
const DELETED: TableDefinition<&str, u64> = TableDefinition::new("deleted");
const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// The redb page cache the store asks for (an upper bound; the store's working set is small).
const CACHE_BYTES: usize = 64 << 20;

/// One stored user as the service reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredUser {
    /// The user's id (UTF-8, 1..=256 bytes).
    pub user_id: String,
    /// How many preference pairs are stored for the user.
    pub pairs: u64,
    /// The user's weights `[K]` (refitted from the stored pairs, or imported).
    pub weights: Vec<f32>,
    /// Increases with every change of the user (pairs added, weights imported or refitted).
    pub version: u64,
    /// The model version the weights belong to.
    pub model_version: String,
    /// True while the weights are imported ones (`--users`) and no pair has been posted.
    pub imported: bool,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The store's folder could not be created or its file opened.
    #[error("store {path}: {source}")]
    Io {
        /// The folder or file.
        path: PathBuf,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The database failed (I/O, corruption, a failed commit).
    #[error("store database: {0}")]
    Database(String),
    /// The store was made for other dimensions or by another format version.
    #[error("store {what} is {stored}, but {requested} was asked for; {hint}")]
    Mismatch {
        /// Which property differs (`features F`, `rank K`, `format version`).
        what: &'static str,
        /// The store's value.
        stored: u64,
        /// The requested value.
        requested: u64,
        /// What to do about it.
        hint: &'static str,
    },
    /// A user id is empty, too long or otherwise unusable.
    #[error("user_id: {0}")]
    InvalidUserId(String),
    /// Pairs or weights given to the store are unusable (length, NaN/Inf, empty).
    #[error("{0}")]
    InvalidInput(String),
    /// The refit of a user's weights failed or returned unusable weights.
    #[error("refit: {0}")]
    Refit(String),
    /// The write queue is full; try again later.
    #[error("the store's write queue is full")]
    Busy,
    /// The writer has stopped (the store is shutting down).
    #[error("the store is closed")]
    Closed,
}

impl StoreError {
    fn db(error: impl Into<redb::Error>) -> StoreError {
        StoreError::Database(error.into().to_string())
    }
}

/// How weights are refitted from stored pairs (the service implements it with lore-core personalize).
pub trait Refit: Send + Sync + 'static {
    /// New weights `[K]` per user from all that user's stored pairs (rows of `F` f32), same order.
    fn refit(&self, users: &[&[f32]]) -> Result<Vec<Vec<f32>>, String>;
    /// The model version the weights belong to.
    fn model_version(&self) -> String;
}

/// How the writer reopens the database after a failed commit (redb refuses every later operation
/// after an I/O error until the database is reopened).
#[derive(Debug, Clone)]
enum Opener {
    File(PathBuf),
    Backend(Arc<dyn StorageBackend>),
}

/// A storage backend shared between successive opens of the same database.
#[derive(Debug)]
struct SharedBackend(Arc<dyn StorageBackend>);

impl StorageBackend for SharedBackend {
    fn len(&self) -> Result<u64, redb::BackendError> {
        self.0.len()
    }
    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), redb::BackendError> {
        self.0.read(offset, out)
    }
    fn set_len(&self, len: u64) -> Result<(), redb::BackendError> {
        self.0.set_len(len)
    }
    fn sync_data(&self) -> Result<(), redb::BackendError> {
        self.0.sync_data()
    }
    fn write(&self, offset: u64, data: &[u8]) -> Result<(), redb::BackendError> {
        self.0.write(offset, data)
    }
    fn close(&self) -> Result<(), redb::BackendError> {
        self.0.close()
    }
    fn try_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_range(start, end)
    }
    fn try_lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.try_lock_shared_range(start, end)
    }
    fn lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.lock_range(start, end)
    }
    fn lock_shared_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.lock_shared_range(start, end)
    }
    fn unlock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<(), redb::BackendError> {
        self.0.unlock_range(start, end)
    }
    fn query_lock_range(
        &self,
        start: std::ops::Bound<u64>,
        end: std::ops::Bound<u64>,
    ) -> Result<bool, redb::BackendError> {
        self.0.query_lock_range(start, end)
    }
}

impl Opener {
    fn open(&self) -> Result<Database, StoreError> {
        let mut builder = redb::Builder::new();
        builder.set_cache_size(CACHE_BYTES);
        match self {
            Opener::File(path) => builder.create(path).map_err(|e| match e {
                redb::DatabaseError::Storage(redb::StorageError::Io(source)) => StoreError::Io {
                    path: path.clone(),
                    source,
                },
                redb::DatabaseError::DatabaseAlreadyOpen => StoreError::Database(format!(
                    "{} is already open (another lore serve on the same --store?)",
                    path.display()
                )),
                other => StoreError::db(other),
            }),
            Opener::Backend(backend) => builder
                .create_with_backend(SharedBackend(backend.clone()))
                .map_err(StoreError::db),
        }
    }
}

/// State shared by the handles and the writer thread.
#[derive(Debug)]
struct Shared {
    /// The open database; `None` while the writer reopens it after a failure.
    db: RwLock<Option<Arc<Database>>>,
    commits: AtomicU64,
    users: AtomicU64,
    features: usize,
    rank: usize,
}

impl Shared {
    fn database(&self) -> Result<Arc<Database>, StoreError> {
        let slot = self
            .db
            .read()
            .map_err(|_| StoreError::Database("lock poisoned".into()))?;
        slot.clone().ok_or_else(|| {
            StoreError::Database("the database is being reopened after a failure".into())
        })
    }
}

#[derive(Debug)]
struct Inner {
    tx: Option<mpsc::Sender<Op>>,
    thread: Option<JoinHandle<()>>,
    shared: Arc<Shared>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Closing the queue stops the writer once it has answered what it holds; joining it
        // means the database is closed when the last handle is gone (so it can be reopened).
        self.tx.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The user store: a cheap `Clone` handle; the database closes when the last handle is dropped.
#[derive(Debug, Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

impl Store {
    /// Opens (or creates) the store `dir/lore.redb` for features of length `features` (F) and
    /// weights of length `rank` (K); a store made for another F or K is refused.
    pub fn open(dir: &Path, features: usize, rank: usize) -> Result<Store, StoreError> {
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            path: dir.to_path_buf(),
            source,
        })?;
        Store::start(Opener::File(dir.join(FILE_NAME)), features, rank)
    }

    /// Opens (or creates) a store over a caller's storage backend (tests: simulated power loss).
    pub fn open_with_backend(
        backend: impl StorageBackend,
        features: usize,
        rank: usize,
    ) -> Result<Store, StoreError> {
        Store::start(Opener::Backend(Arc::new(backend)), features, rank)
    }

    fn start(opener: Opener, features: usize, rank: usize) -> Result<Store, StoreError> {
        if features == 0 || rank == 0 {
            return Err(StoreError::InvalidInput(format!(
                "a store needs features >= 1 and rank >= 1, got {features} and {rank}"
            )));
        }
        let db = opener.open()?;
        let users = writer::init_meta(&db, features as u64, rank as u64)?;
        let shared = Arc::new(Shared {
            db: RwLock::new(Some(Arc::new(db))),
            commits: AtomicU64::new(0),
            users: AtomicU64::new(users),
            features,
            rank,
        });
        let (tx, rx) = mpsc::channel(MAX_QUEUED);
        let writer = Writer::new(shared.clone(), opener, rx);
        let thread = std::thread::Builder::new()
            .name("lore-store-writer".into())
            .spawn(move || writer.run())
            .map_err(|e| StoreError::Database(format!("cannot start the writer thread: {e}")))?;
        Ok(Store {
            inner: Arc::new(Inner {
                tx: Some(tx),
                thread: Some(thread),
                shared,
            }),
        })
    }

    /// The features' length F the store was made for.
    pub fn features(&self) -> usize {
        self.inner.shared.features
    }

    /// The weights' length K the store was made for.
    pub fn rank(&self) -> usize {
        self.inner.shared.rank
    }

    async fn submit<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Op,
    ) -> Result<T, StoreError> {
        let (reply, answer) = oneshot::channel();
        let tx = self.inner.tx.as_ref().ok_or(StoreError::Closed)?;
        tx.try_send(make(reply)).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => StoreError::Busy,
            mpsc::error::TrySendError::Closed(_) => StoreError::Closed,
        })?;
        answer.await.map_err(|_| StoreError::Closed)?
    }

    /// Appends pairs (n * F f32), refits the user on all their pairs, commits; returns only when fsync'd.
    pub async fn add_pairs(
        &self,
        user_id: &str,
        rows: Vec<f32>,
        refit: Arc<dyn Refit>,
    ) -> Result<StoredUser, StoreError> {
        check_user_id(user_id)?;
        let f = self.features();
        if rows.is_empty() || !rows.len().is_multiple_of(f) {
            return Err(StoreError::InvalidInput(format!(
                "pairs: {} floats is not a positive multiple of F = {f}",
                rows.len()
            )));
        }
        if let Some(i) = rows.iter().position(|v| !v.is_finite()) {
            return Err(StoreError::InvalidInput(format!(
                "pairs[{}].features[{}]: not a finite number",
                i / f,
                i % f
            )));
        }
        let user_id = user_id.to_owned();
        self.submit(|reply| Op::AddPairs {
            user_id,
            rows,
            refit,
            reply,
        })
        .await
    }

    /// The user's record, `None` when the store does not know them (never created, or deleted).
    pub fn get(&self, user_id: &str) -> Result<Option<StoredUser>, StoreError> {
        check_user_id(user_id)?;
        let db = self.inner.shared.database()?;
        let txn = db.begin_read().map_err(StoreError::db)?;
        let users = match txn.open_table(USERS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(StoreError::db(e)),
        };
        let Some(bytes) = users.get(user_id).map_err(StoreError::db)? else {
            return Ok(None);
        };
        let record = UserRecord::decode(bytes.value())?;
        Ok(Some(record.into_user(user_id)))
    }

    /// All of the user's stored pairs, concatenated (pairs * F f32, in the order they were posted);
    /// empty when the user has none or is unknown.
    pub fn pairs(&self, user_id: &str) -> Result<Vec<f32>, StoreError> {
        check_user_id(user_id)?;
        let db = self.inner.shared.database()?;
        let txn = db.begin_read().map_err(StoreError::db)?;
        let pairs = match txn.open_table(PAIRS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::db(e)),
        };
        let mut rows = Vec::new();
        codec::read_pairs(&pairs, user_id, self.features(), &mut rows)?;
        Ok(rows)
    }

    /// True when the user was deleted through the store (a tombstone) and not posted since; the
    /// service uses it so that a deleted model-file user falls back to the population.
    pub fn is_deleted(&self, user_id: &str) -> Result<bool, StoreError> {
        check_user_id(user_id)?;
        let db = self.inner.shared.database()?;
        let txn = db.begin_read().map_err(StoreError::db)?;
        let users = txn.open_table(USERS).map_err(StoreError::db)?;
        if users.get(user_id).map_err(StoreError::db)?.is_some() {
            return Ok(false);
        }
        let deleted = txn.open_table(DELETED).map_err(StoreError::db)?;
        let tombstone = deleted.get(user_id).map_err(StoreError::db)?.is_some();
        Ok(tombstone)
    }

    /// Deletes the user's weights and every stored pair (durable before it returns); a tombstone
    /// keeps later imports of the same id out. False when the user was unknown.
    pub async fn delete(&self, user_id: &str) -> Result<bool, StoreError> {
        check_user_id(user_id)?;
        let user_id = user_id.to_owned();
        self.submit(|reply| Op::Delete { user_id, reply }).await
    }

    /// Imports users personalized offline (weights `[K]` each); users with stored pairs or deleted
    /// are skipped, earlier imports are replaced. Returns how many were written.
    pub async fn import(
        &self,
        users: Vec<(String, Vec<f32>)>,
        model_version: &str,
    ) -> Result<usize, StoreError> {
        for (id, weights) in &users {
            check_user_id(id)?;
            check_weights(weights, self.rank())
                .map_err(|e| StoreError::InvalidInput(format!("imported user {id:?}: {e}")))?;
        }
        let model_version = model_version.to_owned();
        self.submit(|reply| Op::Import {
            users,
            model_version,
            reply,
        })
        .await
    }

    /// Sets refitted weights after a model swap: each update applies only if the user's version is
    /// still the expected one (a user who posted meanwhile keeps the newer state). Returns how many
    /// were written.
    pub async fn set_weights(
        &self,
        updates: Vec<(String, u64, Vec<f32>)>,
        model_version: &str,
    ) -> Result<usize, StoreError> {
        for (id, _, weights) in &updates {
            check_user_id(id)?;
            check_weights(weights, self.rank())
                .map_err(|e| StoreError::InvalidInput(format!("weights of {id:?}: {e}")))?;
        }
        let model_version = model_version.to_owned();
        self.submit(|reply| Op::SetWeights {
            updates,
            model_version,
            reply,
        })
        .await
    }

    /// Removes every imported user without stored pairs (after a model swap their imported weights
    /// no longer fit; they fall back to the population). Returns how many were removed.
    pub async fn drop_imported_without_pairs(&self) -> Result<usize, StoreError> {
        self.submit(|reply| Op::DropImported { reply }).await
    }

    /// How many users are stored (as of the last commit).
    pub fn user_count(&self) -> u64 {
        self.inner.shared.users.load(Ordering::Relaxed)
    }

    /// Every stored user's id, in byte order.
    pub fn user_ids(&self) -> Result<Vec<String>, StoreError> {
        let db = self.inner.shared.database()?;
        let txn = db.begin_read().map_err(StoreError::db)?;
        let users = match txn.open_table(USERS) {
            Ok(table) => table,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::db(e)),
        };
        let mut ids = Vec::new();
        for entry in users.iter().map_err(StoreError::db)? {
            let (key, _) = entry.map_err(StoreError::db)?;
            ids.push(key.value().to_owned());
        }
        Ok(ids)
    }

    /// How many fsync'd commits the writer made so far (group commit: many writes per commit).
    pub fn commits(&self) -> u64 {
        self.inner.shared.commits.load(Ordering::Relaxed)
    }
}

/// Checks a user id: UTF-8 (by type), 1..=[`MAX_USER_ID_BYTES`] bytes.
pub fn check_user_id(user_id: &str) -> Result<(), StoreError> {
    if user_id.is_empty() {
        return Err(StoreError::InvalidUserId("empty".into()));
    }
    if user_id.len() > MAX_USER_ID_BYTES {
        return Err(StoreError::InvalidUserId(format!(
            "{} bytes, more than {MAX_USER_ID_BYTES}",
            user_id.len()
        )));
    }
    Ok(())
}

fn check_weights(weights: &[f32], rank: usize) -> Result<(), String> {
    if weights.len() != rank {
        return Err(format!("{} weights, expected K = {rank}", weights.len()));
    }
    if weights.iter().any(|w| !w.is_finite()) {
        return Err("a weight is not a finite number".into());
    }
    Ok(())
}
