//! The four sets of an experiment as the core's views, and owned copies of rows.

use crate::split::{Split, SplitSet};
use lore_core::{FeatureRows, Preferences};
use lore_core::{LoreError, Result};

/// The four sets of a split as views, with how their test users map to their training users.
#[derive(Debug, Clone)]
pub struct ExperimentSets<'a> {
    pub(crate) seen_train: Preferences<'a>,
    pub(crate) seen_test: Preferences<'a>,
    pub(crate) seen_test_users: Vec<usize>,
    pub(crate) unseen_train: Preferences<'a>,
    pub(crate) unseen_test: Preferences<'a>,
    pub(crate) unseen_test_users: Vec<usize>,
}

impl<'a> ExperimentSets<'a> {
    /// Sets whose test users are the training users of the same index.
    pub fn new(
        seen_train: Preferences<'a>,
        seen_test: Preferences<'a>,
        unseen_train: Preferences<'a>,
        unseen_test: Preferences<'a>,
    ) -> Result<Self> {
        let seen_map = (0..seen_test.n_users()).collect();
        let unseen_map = (0..unseen_test.n_users()).collect();
        Self::with_user_maps(
            seen_train,
            seen_test,
            seen_map,
            unseen_train,
            unseen_test,
            unseen_map,
        )
    }

    /// Sets where user j of `seen_test` is user `seen_test_users[j]` of `seen_train`, and
    /// likewise for the unseen sets (users matched by id, say).
    pub fn with_user_maps(
        seen_train: Preferences<'a>,
        seen_test: Preferences<'a>,
        seen_test_users: Vec<usize>,
        unseen_train: Preferences<'a>,
        unseen_test: Preferences<'a>,
        unseen_test_users: Vec<usize>,
    ) -> Result<Self> {
        let f = seen_train.n_features();
        for (name, set) in [
            ("seen_test", &seen_test),
            ("unseen_train", &unseen_train),
            ("unseen_test", &unseen_test),
        ] {
            if set.n_features() != f {
                return Err(LoreError::Shape(format!(
                    "{name} has F = {} features but seen_train has F = {f}",
                    set.n_features()
                )));
            }
        }
        for (name, map, test, train) in [
            ("seen", &seen_test_users, &seen_test, &seen_train),
            ("unseen", &unseen_test_users, &unseen_test, &unseen_train),
        ] {
            if map.len() != test.n_users() {
                return Err(LoreError::Shape(format!(
                    "{} {name} test users mapped, but {name}_test has {}",
                    map.len(),
                    test.n_users()
                )));
            }
            if let Some(&u) = map.iter().find(|&&u| u >= train.n_users()) {
                return Err(LoreError::UserOutOfRange {
                    index: u as u64,
                    n_users: train.n_users(),
                });
            }
        }
        Ok(Self {
            seen_train,
            seen_test,
            seen_test_users,
            unseen_train,
            unseen_test,
            unseen_test_users,
        })
    }

    /// Feature dimension F.
    pub fn n_features(&self) -> usize {
        self.seen_train.n_features()
    }

    /// The seen users' training rows.
    pub fn seen_train(&self) -> &Preferences<'a> {
        &self.seen_train
    }

    /// The unseen users' few-shot rows.
    pub fn unseen_train(&self) -> &Preferences<'a> {
        &self.unseen_train
    }

    /// The seen users' held-out rows.
    pub fn seen_test(&self) -> &Preferences<'a> {
        &self.seen_test
    }

    /// The unseen users' held-out rows.
    pub fn unseen_test(&self) -> &Preferences<'a> {
        &self.unseen_test
    }
}

/// The four sets of a split gathered from rows in memory (widened to f32), for callers that
/// hold all rows at once (a simulation, say) rather than four files.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedSets {
    n_features: usize,
    /// Per set: rows [P_s, F] and the set's user of each row.
    sets: [(Vec<f32>, Vec<u32>); 4],
}

impl OwnedSets {
    /// Gathers the rows of each set of `split` from `rows` ([P, F], indexed by the split).
    pub fn gather(rows: FeatureRows<'_>, n_features: usize, split: &Split) -> Result<Self> {
        if n_features == 0 || !rows.len().is_multiple_of(n_features) {
            return Err(LoreError::Shape(format!(
                "{} feature values do not form rows of {n_features}",
                rows.len()
            )));
        }
        let n_rows = rows.len() / n_features;
        let mut scratch = Vec::new();
        let gather = |set: &SplitSet, scratch: &mut Vec<f32>| -> Result<(Vec<f32>, Vec<u32>)> {
            let mut out = Vec::with_capacity(set.rows.len() * n_features);
            for &r in &set.rows {
                if r >= n_rows {
                    return Err(LoreError::Shape(format!(
                        "the split names row {r}, but there are {n_rows} rows"
                    )));
                }
                out.extend_from_slice(
                    rows.slice_f32(r * n_features..(r + 1) * n_features, scratch),
                );
            }
            Ok((out, set.users.clone()))
        };
        Ok(Self {
            n_features,
            sets: [
                gather(&split.seen_train, &mut scratch)?,
                gather(&split.seen_test, &mut scratch)?,
                gather(&split.unseen_train, &mut scratch)?,
                gather(&split.unseen_test, &mut scratch)?,
            ],
        })
    }

    /// Views of the four sets (test users are the training users of the same index).
    pub fn sets(&self) -> Result<ExperimentSets<'_>> {
        let view = |i: usize| {
            let (rows, users) = &self.sets[i];
            Preferences::from_sorted_users(FeatureRows::F32(rows), self.n_features, users)
        };
        ExperimentSets::new(view(0)?, view(1)?, view(2)?, view(3)?)
    }
}

/// Rows copied out of a larger set, grouped by user (every user with at least one row).
pub(crate) struct OwnedRows {
    pub rows: Vec<f32>,
    pub n_features: usize,
    pub offsets: Vec<usize>,
}

impl OwnedRows {
    /// No rows yet.
    pub fn new(n_features: usize) -> Self {
        Self {
            rows: Vec::new(),
            n_features,
            offsets: vec![0],
        }
    }

    /// Appends one user with `rows` [n x F] (n >= 1).
    pub fn push_user(&mut self, rows: impl IntoIterator<Item = f32>) {
        self.rows.extend(rows);
        self.offsets.push(self.rows.len() / self.n_features);
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.offsets.len() - 1
    }

    /// A view of the rows (values were checked where they came from).
    pub fn view(&self) -> Result<Preferences<'_>> {
        Preferences::with_checked_values(
            FeatureRows::F32(&self.rows),
            self.n_features,
            self.offsets.clone(),
        )
    }
}
