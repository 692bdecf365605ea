//! The writer thread: group commit of every queued write in one fsync'd transaction.

use std::collections::HashMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use redb::{
    Database, Durability, ReadableDatabase, ReadableTable, ReadableTableMetadata, Table,
    WriteTransaction,
};
use tokio::sync::{mpsc, oneshot};

use super::codec::{self, UserRecord};
use super::{
    Opener, Refit, Shared, StoreError, StoredUser, DELETED, FORMAT_VERSION, MAX_BATCH, META, PAIRS,
    USERS,
};

type Reply<T> = oneshot::Sender<Result<T, StoreError>>;

/// One queued write with the channel its answer goes to.
pub(crate) enum Op {
    AddPairs {
        user_id: String,
        rows: Vec<f32>,
        refit: Arc<dyn Refit>,
        reply: Reply<StoredUser>,
    },
    Delete {
        user_id: String,
        reply: Reply<bool>,
    },
    Import {
        users: Vec<(String, Vec<f32>)>,
        model_version: String,
        reply: Reply<usize>,
    },
    SetWeights {
        updates: Vec<(String, u64, Vec<f32>)>,
        model_version: String,
        reply: Reply<usize>,
    },
    DropImported {
        reply: Reply<usize>,
    },
}

/// A write without its answer channel (so a failure can still answer every request).
enum Work {
    AddPairs {
        user_id: String,
        rows: Vec<f32>,
        refit: Arc<dyn Refit>,
    },
    Delete {
        user_id: String,
    },
    Import {
        users: Vec<(String, Vec<f32>)>,
        model_version: String,
    },
    SetWeights {
        updates: Vec<(String, u64, Vec<f32>)>,
        model_version: String,
    },
    DropImported,
}

enum ReplyTx {
    User(Reply<StoredUser>),
    Flag(Reply<bool>),
    Count(Reply<usize>),
}

/// What a write produced, sent only after the commit.
enum Outcome {
    User(Result<StoredUser, StoreError>),
    Flag(bool),
    Count(usize),
}

impl ReplyTx {
    fn send(self, outcome: Result<Outcome, StoreError>) {
        let mismatch = || StoreError::Database("internal: mismatched answer".into());
        // A requester that went away (dropped future) is not an error of the store.
        match self {
            ReplyTx::User(tx) => {
                let _ = tx.send(match outcome {
                    Ok(Outcome::User(r)) => r,
                    Ok(_) => Err(mismatch()),
                    Err(e) => Err(e),
                });
            }
            ReplyTx::Flag(tx) => {
                let _ = tx.send(match outcome {
                    Ok(Outcome::Flag(b)) => Ok(b),
                    Ok(_) => Err(mismatch()),
                    Err(e) => Err(e),
                });
            }
            ReplyTx::Count(tx) => {
                let _ = tx.send(match outcome {
                    Ok(Outcome::Count(n)) => Ok(n),
                    Ok(_) => Err(mismatch()),
                    Err(e) => Err(e),
                });
            }
        }
    }
}

fn split(op: Op) -> (Work, ReplyTx) {
    match op {
        Op::AddPairs {
            user_id,
            rows,
            refit,
            reply,
        } => (
            Work::AddPairs {
                user_id,
                rows,
                refit,
            },
            ReplyTx::User(reply),
        ),
        Op::Delete { user_id, reply } => (Work::Delete { user_id }, ReplyTx::Flag(reply)),
        Op::Import {
            users,
            model_version,
            reply,
        } => (
            Work::Import {
                users,
                model_version,
            },
            ReplyTx::Count(reply),
        ),
        Op::SetWeights {
            updates,
            model_version,
            reply,
        } => (
            Work::SetWeights {
                updates,
                model_version,
            },
            ReplyTx::Count(reply),
        ),
        Op::DropImported { reply } => (Work::DropImported, ReplyTx::Count(reply)),
    }
}

/// Creates the tables on a new store, checks F, K and the format on an existing one; returns the
/// number of stored users.
pub(crate) fn init_meta(db: &Database, features: u64, rank: u64) -> Result<u64, StoreError> {
    let mut txn = db.begin_write().map_err(StoreError::db)?;
    txn.set_durability(Durability::Immediate)
        .map_err(StoreError::db)?;
    let users;
    {
        let mut meta = txn.open_table(META).map_err(StoreError::db)?;
        let expected = [
            (
                "format",
                FORMAT_VERSION,
                "format version",
                "this store was written by another version of lore",
            ),
            (
                "features",
                features,
                "features F",
                "a store holds pairs of one embedder; use another --store for this model",
            ),
            (
                "rank",
                rank,
                "rank K",
                "a store holds weights of one rank; use another --store for this model",
            ),
        ];
        for (key, value, what, hint) in expected {
            let stored = meta.get(key).map_err(StoreError::db)?.map(|v| v.value());
            match stored {
                Some(stored) if stored != value => {
                    return Err(StoreError::Mismatch {
                        what,
                        stored,
                        requested: value,
                        hint,
                    });
                }
                Some(_) => {}
                None => {
                    meta.insert(key, value).map_err(StoreError::db)?;
                }
            }
        }
        users = txn
            .open_table(USERS)
            .map_err(StoreError::db)?
            .len()
            .map_err(StoreError::db)?;
        txn.open_table(PAIRS).map_err(StoreError::db)?;
        txn.open_table(DELETED).map_err(StoreError::db)?;
    }
    txn.commit().map_err(StoreError::db)?;
    Ok(users)
}

/// The single owner of write transactions.
pub(crate) struct Writer {
    shared: Arc<Shared>,
    opener: Opener,
    rx: mpsc::Receiver<Op>,
}

impl Writer {
    pub(crate) fn new(shared: Arc<Shared>, opener: Opener, rx: mpsc::Receiver<Op>) -> Writer {
        Writer { shared, opener, rx }
    }

    /// Runs until every handle is dropped: takes what is queued, commits it, answers it.
    pub(crate) fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        while let Some(op) = self.rx.blocking_recv() {
            batch.push(op);
            while batch.len() < MAX_BATCH {
                match self.rx.try_recv() {
                    Ok(op) => batch.push(op),
                    Err(_) => break,
                }
            }
            self.process(&mut batch);
        }
    }

    fn process(&mut self, batch: &mut Vec<Op>) {
        let (work, replies): (Vec<Work>, Vec<ReplyTx>) = batch.drain(..).map(split).unzip();
        let db = match self.shared.database() {
            Ok(db) => Some(db),
            Err(_) => self.reopen(),
        };
        let Some(db) = db else {
            for reply in replies {
                reply.send(Err(StoreError::Database(
                    "the database could not be reopened after a failure".into(),
                )));
            }
            return;
        };
        let result = commit(&db, &work, self.shared.features, self.shared.rank);
        drop(db);
        match result {
            Ok((outcomes, users)) => {
                self.shared.commits.fetch_add(1, Ordering::Relaxed);
                self.shared.users.store(users, Ordering::Relaxed);
                for (reply, outcome) in replies.into_iter().zip(outcomes) {
                    reply.send(Ok(outcome));
                }
            }
            Err(error) => {
                let message = error.to_string();
                for reply in replies {
                    reply.send(Err(StoreError::Database(format!(
                        "the write was not committed: {message}"
                    ))));
                }
                // redb refuses everything after an I/O error until it is reopened.
                self.reopen();
            }
        }
    }

    /// Closes and reopens the database; `None` (and no database) when it cannot be reopened.
    fn reopen(&mut self) -> Option<Arc<Database>> {
        let old = match self.shared.db.write() {
            Ok(mut slot) => slot.take(),
            Err(_) => return None,
        };
        if let Some(mut old) = old {
            // Readers hold a clone for the length of one read; wait (bounded) until they are done.
            let deadline = Instant::now() + Duration::from_secs(5);
            loop {
                match Arc::try_unwrap(old) {
                    Ok(db) => {
                        drop(db);
                        break;
                    }
                    Err(still_shared) if Instant::now() < deadline => {
                        old = still_shared;
                        std::thread::sleep(Duration::from_millis(1));
                    }
                    Err(_) => break,
                }
            }
        }
        let db = self.opener.open().ok()?;
        let users = db.begin_read().ok()?.open_table(USERS).ok()?.len().ok()?;
        let db = Arc::new(db);
        self.shared.users.store(users, Ordering::Relaxed);
        if let Ok(mut slot) = self.shared.db.write() {
            *slot = Some(db.clone());
        }
        Some(db)
    }
}

/// The tables a batch writes.
struct Tables<'txn> {
    users: Table<'txn, &'static str, &'static [u8]>,
    pairs: Table<'txn, (&'static str, u64), &'static [u8]>,
    deleted: Table<'txn, &'static str, u64>,
}

/// Applies the whole batch in one write transaction and commits it (one fsync); returns every
/// write's outcome and the number of users after the commit.
fn commit(
    db: &Database,
    work: &[Work],
    features: usize,
    rank: usize,
) -> Result<(Vec<Outcome>, u64), StoreError> {
    let mut txn: WriteTransaction = db.begin_write().map_err(StoreError::db)?;
    txn.set_durability(Durability::Immediate)
        .map_err(StoreError::db)?;
    let (outcomes, users) = {
        let mut tables = Tables {
            users: txn.open_table(USERS).map_err(StoreError::db)?,
            pairs: txn.open_table(PAIRS).map_err(StoreError::db)?,
            deleted: txn.open_table(DELETED).map_err(StoreError::db)?,
        };
        let mut outcomes: Vec<Option<Outcome>> = (0..work.len()).map(|_| None).collect();
        let mut i = 0;
        while i < work.len() {
            if matches!(work[i], Work::AddPairs { .. }) {
                let end = work[i..]
                    .iter()
                    .position(|w| !matches!(w, Work::AddPairs { .. }))
                    .map_or(work.len(), |p| i + p);
                add_pairs(
                    &mut tables,
                    &work[i..end],
                    &mut outcomes[i..end],
                    features,
                    rank,
                )?;
                i = end;
                continue;
            }
            outcomes[i] = Some(match &work[i] {
                Work::Delete { user_id } => Outcome::Flag(delete(&mut tables, user_id)?),
                Work::Import {
                    users,
                    model_version,
                } => Outcome::Count(import(&mut tables, users, model_version)?),
                Work::SetWeights {
                    updates,
                    model_version,
                } => Outcome::Count(set_weights(&mut tables, updates, model_version)?),
                Work::DropImported => Outcome::Count(drop_imported(&mut tables)?),
                Work::AddPairs { .. } => unreachable_outcome(),
            });
            i += 1;
        }
        let users = tables.users.len().map_err(StoreError::db)?;
        let outcomes = outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(unreachable_outcome))
            .collect::<Vec<_>>();
        (outcomes, users)
    };
    txn.commit().map_err(StoreError::db)?;
    Ok((outcomes, users))
}

fn unreachable_outcome() -> Outcome {
    Outcome::User(Err(StoreError::Database(
        "internal: a write got no answer".into(),
    )))
}

fn get_record(tables: &Tables<'_>, user_id: &str) -> Result<Option<UserRecord>, StoreError> {
    match tables.users.get(user_id).map_err(StoreError::db)? {
        Some(bytes) => Ok(Some(UserRecord::decode(bytes.value())?)),
        None => Ok(None),
    }
}

fn tombstone(tables: &Tables<'_>, user_id: &str) -> Result<Option<u64>, StoreError> {
    Ok(tables
        .deleted
        .get(user_id)
        .map_err(StoreError::db)?
        .map(|v| v.value()))
}

/// One user's share of a run of preference writes.
struct Touched {
    user_id: String,
    /// Indexes (in the run) of the writes for this user, in arrival order.
    writes: Vec<usize>,
    /// Every stored pair followed by the new ones.
    rows: Vec<f32>,
    old: Option<UserRecord>,
    new_from: u64,
    refit: Arc<dyn Refit>,
}

/// A run of consecutive preference writes: the touched users' pairs are appended in arrival order,
/// every touched user is refitted in one `Refit::refit` call per refit object (one, unless the model
/// was swapped mid-batch), and pairs and weights are written.
fn add_pairs(
    tables: &mut Tables<'_>,
    run: &[Work],
    outcomes: &mut [Option<Outcome>],
    features: usize,
    rank: usize,
) -> Result<(), StoreError> {
    let mut touched: Vec<Touched> = Vec::new();
    let mut index: HashMap<&str, usize> = HashMap::new();
    for (w, work) in run.iter().enumerate() {
        let Work::AddPairs {
            user_id,
            rows,
            refit,
        } = work
        else {
            continue;
        };
        let t = match index.get(user_id.as_str()) {
            Some(&t) => t,
            None => {
                let old = get_record(tables, user_id)?;
                let mut stored = Vec::new();
                let n = codec::read_pairs(&tables.pairs, user_id, features, &mut stored)?;
                let expected = old.as_ref().map_or(0, |r| r.pairs);
                if n != expected {
                    return Err(StoreError::Database(format!(
                        "user {user_id:?} has {n} stored pairs but a record of {expected}"
                    )));
                }
                touched.push(Touched {
                    user_id: user_id.clone(),
                    writes: Vec::new(),
                    rows: stored,
                    old,
                    new_from: n,
                    refit: refit.clone(),
                });
                index.insert(user_id.as_str(), touched.len() - 1);
                touched.len() - 1
            }
        };
        let entry = &mut touched[t];
        entry.writes.push(w);
        entry.rows.extend_from_slice(rows);
        // The latest model wins when a swap happened between two writes of the same user.
        entry.refit = refit.clone();
    }

    // Group the users by refit object and refit each group in one call.
    let mut weights: Vec<Option<Result<Vec<f32>, String>>> =
        (0..touched.len()).map(|_| None).collect();
    let mut done = vec![false; touched.len()];
    for first in 0..touched.len() {
        if done[first] {
            continue;
        }
        let refit = touched[first].refit.clone();
        let group: Vec<usize> = (first..touched.len())
            .filter(|&t| !done[t] && Arc::ptr_eq(&touched[t].refit, &refit))
            .collect();
        for &t in &group {
            done[t] = true;
        }
        let slices: Vec<&[f32]> = group.iter().map(|&t| touched[t].rows.as_slice()).collect();
        let results = refit_checked(&*refit, &slices, rank);
        for (&t, result) in group.iter().zip(results) {
            weights[t] = Some(result);
        }
    }

    for (t, user) in touched.iter().enumerate() {
        let result = match weights[t].take() {
            Some(Ok(w)) => {
                let version = match &user.old {
                    Some(r) => r.version + 1,
                    None => tombstone(tables, &user.user_id)?.unwrap_or(0) + 1,
                };
                let total = (user.rows.len() / features) as u64;
                for (seq, row) in (user.new_from..total)
                    .zip(user.rows[user.new_from as usize * features..].chunks_exact(features))
                {
                    tables
                        .pairs
                        .insert(
                            (user.user_id.as_str(), seq),
                            codec::row_bytes(row).as_slice(),
                        )
                        .map_err(StoreError::db)?;
                }
                let record = UserRecord {
                    version,
                    pairs: total,
                    imported: false,
                    model_version: user.refit.model_version(),
                    weights: w,
                };
                tables
                    .users
                    .insert(user.user_id.as_str(), record.encode().as_slice())
                    .map_err(StoreError::db)?;
                Ok(record.into_user(&user.user_id))
            }
            Some(Err(e)) => Err(StoreError::Refit(e)),
            None => Err(StoreError::Refit("no weights returned".into())),
        };
        for &w in &user.writes {
            outcomes[w] = Some(Outcome::User(match &result {
                Ok(u) => Ok(u.clone()),
                Err(StoreError::Refit(e)) => Err(StoreError::Refit(e.clone())),
                Err(e) => Err(StoreError::Database(e.to_string())),
            }));
        }
    }
    Ok(())
}

/// Calls the refit for a group (a panic or error of the whole group is retried user by user, so
/// one user's bad pairs do not fail the others), checking every result's length and values.
fn refit_checked(
    refit: &dyn Refit,
    users: &[&[f32]],
    rank: usize,
) -> Vec<Result<Vec<f32>, String>> {
    let call = |users: &[&[f32]]| -> Result<Vec<Vec<f32>>, String> {
        match catch_unwind(AssertUnwindSafe(|| refit.refit(users))) {
            Ok(Ok(w)) if w.len() == users.len() => Ok(w),
            Ok(Ok(w)) => Err(format!(
                "{} weight vectors for {} users",
                w.len(),
                users.len()
            )),
            Ok(Err(e)) => Err(e),
            Err(_) => Err("the refit panicked".into()),
        }
    };
    let check = |w: Vec<f32>| -> Result<Vec<f32>, String> {
        if w.len() != rank {
            return Err(format!("{} weights, expected K = {rank}", w.len()));
        }
        if w.iter().any(|v| !v.is_finite()) {
            return Err("a refitted weight is not finite".into());
        }
        Ok(w)
    };
    match call(users) {
        Ok(all) => all.into_iter().map(check).collect(),
        Err(e) if users.len() == 1 => vec![Err(e)],
        Err(_) => users
            .iter()
            .map(|u| call(std::slice::from_ref(u)).and_then(|mut w| check(w.remove(0))))
            .collect(),
    }
}

fn delete(tables: &mut Tables<'_>, user_id: &str) -> Result<bool, StoreError> {
    let old = get_record(tables, user_id)?;
    let existed = old.is_some();
    let version = match &old {
        Some(r) => r.version,
        None => tombstone(tables, user_id)?.unwrap_or(0),
    };
    tables.users.remove(user_id).map_err(StoreError::db)?;
    tables
        .pairs
        .retain_in((user_id, 0u64)..=(user_id, u64::MAX), |_, _| false)
        .map_err(StoreError::db)?;
    tables
        .deleted
        .insert(user_id, version)
        .map_err(StoreError::db)?;
    Ok(existed)
}

fn import(
    tables: &mut Tables<'_>,
    users: &[(String, Vec<f32>)],
    model_version: &str,
) -> Result<usize, StoreError> {
    let mut written = 0;
    for (user_id, weights) in users {
        if tombstone(tables, user_id)?.is_some() {
            continue;
        }
        let old = get_record(tables, user_id)?;
        if old.as_ref().is_some_and(|r| r.pairs > 0) {
            continue;
        }
        let record = UserRecord {
            version: old.map_or(1, |r| r.version + 1),
            pairs: 0,
            imported: true,
            model_version: model_version.to_owned(),
            weights: weights.clone(),
        };
        tables
            .users
            .insert(user_id.as_str(), record.encode().as_slice())
            .map_err(StoreError::db)?;
        written += 1;
    }
    Ok(written)
}

fn set_weights(
    tables: &mut Tables<'_>,
    updates: &[(String, u64, Vec<f32>)],
    model_version: &str,
) -> Result<usize, StoreError> {
    let mut written = 0;
    for (user_id, expected, weights) in updates {
        let Some(mut record) = get_record(tables, user_id)? else {
            continue;
        };
        if record.version != *expected {
            continue;
        }
        record.version += 1;
        record.weights = weights.clone();
        record.model_version = model_version.to_owned();
        tables
            .users
            .insert(user_id.as_str(), record.encode().as_slice())
            .map_err(StoreError::db)?;
        written += 1;
    }
    Ok(written)
}

fn drop_imported(tables: &mut Tables<'_>) -> Result<usize, StoreError> {
    let mut dropped = 0usize;
    let mut bad = None;
    tables
        .users
        .retain(|_, bytes| match UserRecord::decode(bytes) {
            Ok(r) if r.imported && r.pairs == 0 => {
                dropped += 1;
                false
            }
            Ok(_) => true,
            Err(e) => {
                bad.get_or_insert(e);
                true
            }
        })
        .map_err(StoreError::db)?;
    match bad {
        Some(e) => Err(e),
        None => Ok(dropped),
    }
}
