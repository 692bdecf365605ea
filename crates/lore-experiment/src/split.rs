//! Seen/unseen splits: which preference rows go to which of the four sets the paper evaluates.
//!
//! Users are divided into *seen* users (the basis is fitted on them) and *unseen* users (new
//! users, personalized from a few pairs with the basis fixed). Each group's rows are divided
//! again, giving four sets:
//!
//! | set | rows |
//! |---|---|
//! | `seen_train` | seen users' training rows (at most `max_train_rows` each) |
//! | `seen_test` | seen users' held-out rows |
//! | `unseen_train` | unseen users' few-shot rows (`shots` each) |
//! | `unseen_test` | unseen users' held-out rows |
//!
//! [`split`] is pure and deterministic: the same rows, options and seed give the same sets.
//! Users are put in a canonical order (by id when ids are given, else by index) before any
//! shuffling, so the result does not depend on the order users happen to appear in.

use std::cmp::Ordering;

use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use lore_core::{share_of_rows, shuffled_rows, LoreError, Result};

/// Options of a split (unchecked); [`SplitParams::check`] validates them.
#[derive(Debug, Clone, PartialEq)]
pub struct SplitParams {
    /// Fraction of the (eligible) users held out as unseen users, in (0, 1).
    pub unseen_fraction: f64,
    /// Fraction of a seen user's rows used for training, in (0, 1); with `by_prompt`, the
    /// fraction of prompts whose rows are training rows.
    pub train_fraction: f64,
    /// Users with fewer rows are left out of every set (at least 2).
    pub min_rows: usize,
    /// At most this many training rows per seen user (the rest of the training share is
    /// dropped, the test share is unchanged).
    pub max_train_rows: Option<usize>,
    /// Few-shot rows per unseen user (the rest of their rows are test rows).
    pub shots: usize,
    /// Split prompts, not rows: a prompt's rows are all training or all test rows, so test
    /// prompts are never seen in training (needs prompt ids).
    pub by_prompt: bool,
    /// Seed of the shuffles.
    pub seed: u64,
}

impl Default for SplitParams {
    /// 20% unseen users, half of each seen user's rows for training, 10 shots, no cap.
    fn default() -> Self {
        Self {
            unseen_fraction: 0.2,
            train_fraction: 0.5,
            min_rows: 2,
            max_train_rows: None,
            shots: 10,
            by_prompt: false,
            seed: 0,
        }
    }
}

impl SplitParams {
    /// Validates every value; the error names the first invalid one.
    pub fn check(&self) -> Result<CheckedSplitParams> {
        open_unit("unseen fraction", self.unseen_fraction)?;
        open_unit("train fraction", self.train_fraction)?;
        if self.min_rows < 2 {
            return Err(invalid(
                "min rows",
                format!(
                    "{} (must be at least 2: one training and one test row)",
                    self.min_rows
                ),
            ));
        }
        if self.max_train_rows == Some(0) {
            return Err(invalid("max train rows", "0 (must be at least 1)".into()));
        }
        if self.shots == 0 {
            return Err(invalid("shots", "0 (must be at least 1)".into()));
        }
        Ok(CheckedSplitParams(self.clone()))
    }
}

/// Validated split options.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedSplitParams(SplitParams);

impl CheckedSplitParams {
    /// The options as given.
    pub fn params(&self) -> &SplitParams {
        &self.0
    }
}

/// The rows to split: each row's user, and optionally the users' names and the rows' prompts.
#[derive(Debug, Clone, Copy)]
pub struct SplitInput<'a> {
    /// User index (0..N-1) of each row.
    pub users: &'a [u32],
    /// Names of the N users: users are sorted by name before shuffling (by index without).
    pub user_ids: Option<&'a [String]>,
    /// Prompt of each row (any integers; equal values are the same prompt), for `by_prompt`.
    pub prompts: Option<&'a [u32]>,
}

/// One of the four sets: input rows grouped by the set's users.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SplitSet {
    /// Input row indices, grouped by user (in the split's user order), ascending within a user.
    pub rows: Vec<usize>,
    /// The set's user index of each row (an index into `Split::seen_users` or
    /// `Split::unseen_users`): non-decreasing, every user with at least one row.
    pub users: Vec<u32>,
}

impl SplitSet {
    fn push_user(&mut self, user: u32, rows: &mut [usize]) {
        rows.sort_unstable();
        self.rows.extend_from_slice(rows);
        self.users.extend(std::iter::repeat_n(user, rows.len()));
    }
}

/// The four sets of a split.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Split {
    /// Input user index of each seen user: user j of `seen_train` and `seen_test`.
    pub seen_users: Vec<u32>,
    /// Input user index of each unseen user: user j of `unseen_train` and `unseen_test`.
    pub unseen_users: Vec<u32>,
    /// Seen users' training rows.
    pub seen_train: SplitSet,
    /// Seen users' held-out rows.
    pub seen_test: SplitSet,
    /// Unseen users' few-shot rows.
    pub unseen_train: SplitSet,
    /// Unseen users' held-out rows.
    pub unseen_test: SplitSet,
    /// Users left out of every set (too few rows, or by prompt: no row on a training or on a
    /// test prompt), as input indices in ascending order.
    pub dropped_users: Vec<u32>,
    /// With `by_prompt`: the number of training and test prompts.
    pub prompt_counts: Option<(usize, usize)>,
}

impl Split {
    /// The four sets with their names, in the order `seen_train`, `seen_test`, `unseen_train`,
    /// `unseen_test`.
    pub fn sets(&self) -> [(&'static str, &SplitSet); 4] {
        [
            ("seen_train", &self.seen_train),
            ("seen_test", &self.seen_test),
            ("unseen_train", &self.unseen_train),
            ("unseen_test", &self.unseen_test),
        ]
    }
}

/// Splits the rows of `input` into the four sets. Fails (naming the reason) when the options
/// leave no seen or no unseen user.
pub fn split(input: &SplitInput, params: &CheckedSplitParams) -> Result<Split> {
    let p = params.params();
    let n_users = check_input(input, p)?;
    let mut rng = ChaCha8Rng::seed_from_u64(p.seed);

    let mut rows_of: Vec<Vec<usize>> = vec![Vec::new(); n_users];
    for (row, &u) in input.users.iter().enumerate() {
        rows_of[u as usize].push(row);
    }
    let order = canonical_user_order(n_users, input.user_ids);
    let mut dropped: Vec<u32> = Vec::new();
    let eligible: Vec<u32> = order
        .iter()
        .copied()
        .filter(|&u| {
            let ok = rows_of[u as usize].len() >= p.min_rows;
            if !ok {
                dropped.push(u);
            }
            ok
        })
        .collect();

    // By prompt: a shuffled share of the distinct prompts are training prompts.
    let train_prompt = match (p.by_prompt, input.prompts) {
        (true, Some(prompts)) => Some(train_prompts(prompts, p.train_fraction, &mut rng)?),
        _ => None,
    };
    let pools = |u: u32| -> (Vec<usize>, Vec<usize>) {
        let rows = &rows_of[u as usize];
        match &train_prompt {
            Some(on_train_prompt) => rows.iter().copied().partition(|&r| on_train_prompt.rows[r]),
            None => (rows.clone(), Vec::new()),
        }
    };

    // Unseen users: a shuffled share of the users who have enough rows for shots and a test.
    let can_be_unseen = |u: u32| -> bool {
        match &train_prompt {
            Some(_) => {
                let (train, test) = pools(u);
                train.len() >= p.shots && !test.is_empty()
            }
            None => rows_of[u as usize].len() > p.shots,
        }
    };
    let n_unseen = (p.unseen_fraction * eligible.len() as f64).round() as usize;
    if n_unseen == 0 || n_unseen >= eligible.len() {
        return Err(invalid(
            "unseen fraction",
            format!(
                "{} of {} users with at least {} rows gives {n_unseen} unseen users (need at \
                 least one seen and one unseen user)",
                p.unseen_fraction,
                eligible.len(),
                p.min_rows
            ),
        ));
    }
    let mut candidates: Vec<u32> = eligible
        .iter()
        .copied()
        .filter(|&u| can_be_unseen(u))
        .collect();
    if candidates.len() < n_unseen {
        let enough = match train_prompt {
            Some(_) => "at least that many rows on training prompts and one on a test prompt",
            None => "more rows than that",
        };
        return Err(invalid(
            "shots",
            format!(
                "{}: only {} users have {enough}, but {n_unseen} unseen users are needed (lower \
                 --shots or --unseen-fraction)",
                p.shots,
                candidates.len(),
            ),
        ));
    }
    candidates.shuffle(&mut rng);
    let mut is_unseen = vec![false; n_users];
    for &u in &candidates[..n_unseen] {
        is_unseen[u as usize] = true;
    }

    let mut out = Split {
        prompt_counts: train_prompt.as_ref().map(|t| (t.n_train, t.n_test)),
        ..Split::default()
    };
    for &u in &eligible {
        let (pool, mut test) = pools(u);
        // The user's rows in the order of the one per-user draw (a seeded shuffle).
        let mut train: Vec<usize> = shuffled_rows(&mut rng, pool.len())
            .into_iter()
            .map(|i| pool[i])
            .collect();
        if is_unseen[u as usize] {
            let j = out.unseen_users.len() as u32;
            if train_prompt.is_none() {
                test = train.split_off(p.shots);
            }
            train.truncate(p.shots);
            out.unseen_users.push(u);
            out.unseen_train.push_user(j, &mut train);
            out.unseen_test.push_user(j, &mut test);
            continue;
        }
        if train_prompt.is_none() {
            // Eligible users have at least 2 rows, so both parts keep one.
            test = train.split_off(share_of_rows(train.len(), p.train_fraction));
        }
        if let Some(cap) = p.max_train_rows {
            train.truncate(cap);
        }
        if train.is_empty() || test.is_empty() {
            dropped.push(u);
            continue;
        }
        let j = out.seen_users.len() as u32;
        out.seen_users.push(u);
        out.seen_train.push_user(j, &mut train);
        out.seen_test.push_user(j, &mut test);
    }
    if out.seen_users.is_empty() {
        return Err(invalid(
            "split",
            "no seen user has both a training and a test row".into(),
        ));
    }
    dropped.sort_unstable();
    out.dropped_users = dropped;
    Ok(out)
}

/// Users 0..N-1 sorted by name (ties and no names: by index).
pub fn canonical_user_order(n_users: usize, user_ids: Option<&[String]>) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n_users as u32).collect();
    if let Some(ids) = user_ids {
        order.sort_by(|&a, &b| match ids[a as usize].cmp(&ids[b as usize]) {
            Ordering::Equal => a.cmp(&b),
            other => other,
        });
    }
    order
}

/// Checks the input's sizes; returns N.
fn check_input(input: &SplitInput, p: &SplitParams) -> Result<usize> {
    if input.users.is_empty() {
        return Err(LoreError::Shape("no preference rows to split".into()));
    }
    let n_users = input.users.iter().max().map_or(0, |&u| u as usize + 1);
    if let Some(ids) = input.user_ids {
        if ids.len() != n_users {
            return Err(LoreError::Shape(format!(
                "{} user ids for {n_users} users",
                ids.len()
            )));
        }
    }
    match input.prompts {
        Some(prompts) if prompts.len() != input.users.len() => Err(LoreError::Shape(format!(
            "{} prompt ids for {} rows",
            prompts.len(),
            input.users.len()
        ))),
        None if p.by_prompt => Err(invalid(
            "by prompt",
            "splitting by prompt needs a prompt id for each row".into(),
        )),
        _ => Ok(n_users),
    }
}

/// Which rows are on a training prompt, and how many training and test prompts there are.
struct PromptSplit {
    rows: Vec<bool>,
    n_train: usize,
    n_test: usize,
}

/// Shuffles the distinct prompts (in ascending order first) and makes the first
/// round(train_fraction * n) of them training prompts.
fn train_prompts(
    prompts: &[u32],
    train_fraction: f64,
    rng: &mut ChaCha8Rng,
) -> Result<PromptSplit> {
    let mut distinct: Vec<u32> = prompts.to_vec();
    distinct.sort_unstable();
    distinct.dedup();
    let n = distinct.len();
    if n < 2 {
        return Err(invalid(
            "by prompt",
            format!("the rows have {n} distinct prompt, at least 2 are needed"),
        ));
    }
    let n_train = ((train_fraction * n as f64).round() as usize).clamp(1, n - 1);
    let mut shuffled = distinct.clone();
    shuffled.shuffle(rng);
    let mut is_train = vec![false; n];
    for prompt in &shuffled[..n_train] {
        let slot = distinct.binary_search(prompt).expect("a distinct prompt");
        is_train[slot] = true;
    }
    let rows = prompts
        .iter()
        .map(|p| is_train[distinct.binary_search(p).expect("a distinct prompt")])
        .collect();
    Ok(PromptSplit {
        rows,
        n_train,
        n_test: n - n_train,
    })
}

fn open_unit(name: &'static str, value: f64) -> Result<()> {
    if !(value > 0.0 && value < 1.0) {
        return Err(invalid(
            name,
            format!("{value} (must be strictly between 0 and 1)"),
        ));
    }
    Ok(())
}

fn invalid(name: &'static str, reason: String) -> LoreError {
    LoreError::InvalidParameter { name, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    /// `counts[u]` rows for user u, interleaved (row i belongs to user i mod N while it has
    /// rows left), so rows are not grouped by user.
    fn interleaved(counts: &[usize]) -> Vec<u32> {
        let mut left = counts.to_vec();
        let mut users = Vec::new();
        while left.iter().any(|&c| c > 0) {
            for (u, c) in left.iter_mut().enumerate() {
                if *c > 0 {
                    *c -= 1;
                    users.push(u as u32);
                }
            }
        }
        users
    }

    fn params(seed: u64) -> CheckedSplitParams {
        SplitParams {
            unseen_fraction: 0.3,
            train_fraction: 0.5,
            shots: 3,
            seed,
            ..SplitParams::default()
        }
        .check()
        .unwrap()
    }

    #[test]
    fn same_seed_same_split_other_seed_other_split() {
        let users = interleaved(&[10; 20]);
        let input = SplitInput {
            users: &users,
            user_ids: None,
            prompts: None,
        };
        let a = split(&input, &params(7)).unwrap();
        assert_eq!(a, split(&input, &params(7)).unwrap());
        assert_ne!(a, split(&input, &params(8)).unwrap());
        assert_eq!(a.unseen_users.len(), 6);
        assert_eq!(a.seen_users.len(), 14);
        // Seen users: half of 10 rows each way; unseen users: 3 shots and 7 test rows.
        assert_eq!(a.seen_train.rows.len(), 14 * 5);
        assert_eq!(a.seen_test.rows.len(), 14 * 5);
        assert_eq!(a.unseen_train.rows.len(), 6 * 3);
        assert_eq!(a.unseen_test.rows.len(), 6 * 7);
    }

    #[test]
    fn small_users_are_dropped_and_caps_apply() {
        let users = interleaved(&[1, 30, 30, 30, 30, 30]);
        let input = SplitInput {
            users: &users,
            user_ids: None,
            prompts: None,
        };
        let p = SplitParams {
            unseen_fraction: 0.2,
            max_train_rows: Some(4),
            shots: 5,
            ..SplitParams::default()
        }
        .check()
        .unwrap();
        let s = split(&input, &p).unwrap();
        assert_eq!(s.dropped_users, vec![0]);
        assert_eq!(s.unseen_users.len(), 1);
        // 4 seen users: train capped at 4 of their 15, test keeps its 15.
        assert_eq!(s.seen_train.rows.len(), 4 * 4);
        assert_eq!(s.seen_test.rows.len(), 4 * 15);
    }

    #[test]
    fn impossible_splits_are_refused() {
        let users = interleaved(&[4; 3]);
        let input = SplitInput {
            users: &users,
            user_ids: None,
            prompts: None,
        };
        // 0.1 of 3 users rounds to no unseen user.
        let p = SplitParams {
            unseen_fraction: 0.1,
            shots: 1,
            ..SplitParams::default()
        };
        let err = split(&input, &p.check().unwrap()).unwrap_err();
        assert!(err
            .to_string()
            .contains("need at least one seen and one unseen user"));
        // 4 rows cannot give 4 shots and a test row.
        let p = SplitParams {
            unseen_fraction: 0.4,
            shots: 4,
            ..SplitParams::default()
        };
        let err = split(&input, &p.check().unwrap()).unwrap_err();
        assert!(err.to_string().contains("lower --shots"), "{err}");
        // By prompt without prompt ids.
        let p = SplitParams {
            unseen_fraction: 0.4,
            shots: 1,
            by_prompt: true,
            ..SplitParams::default()
        };
        assert!(split(&input, &p.check().unwrap()).is_err());
        // Invalid options.
        for bad in [
            SplitParams {
                unseen_fraction: 1.0,
                ..SplitParams::default()
            },
            SplitParams {
                train_fraction: 0.0,
                ..SplitParams::default()
            },
            SplitParams {
                min_rows: 1,
                ..SplitParams::default()
            },
            SplitParams {
                shots: 0,
                ..SplitParams::default()
            },
            SplitParams {
                max_train_rows: Some(0),
                ..SplitParams::default()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
    }

    /// Everything a split must guarantee, checked against its input.
    fn check_invariants(input: &SplitInput, p: &SplitParams, s: &Split) {
        let n_users = *input.users.iter().max().unwrap() as usize + 1;
        let mut rows_of = vec![0usize; n_users];
        input.users.iter().for_each(|&u| rows_of[u as usize] += 1);
        // Users: seen, unseen and dropped partition all users.
        let mut all: Vec<u32> = s
            .seen_users
            .iter()
            .chain(&s.unseen_users)
            .chain(&s.dropped_users)
            .copied()
            .collect();
        all.sort_unstable();
        assert_eq!(all, (0..n_users as u32).collect::<Vec<_>>());
        for (u, &rows) in rows_of.iter().enumerate() {
            if rows < p.min_rows {
                assert!(s.dropped_users.contains(&(u as u32)));
            }
        }
        // Rows: in at most one set, and each set's row belongs to the set's user.
        let mut seen_rows = HashSet::new();
        for (name, set) in s.sets() {
            let owners = if name.starts_with("seen") {
                &s.seen_users
            } else {
                &s.unseen_users
            };
            assert_eq!(set.rows.len(), set.users.len());
            assert!(set.users.windows(2).all(|w| w[0] <= w[1]), "{name}");
            let mut per_user = vec![0usize; owners.len()];
            for (&row, &j) in set.rows.iter().zip(&set.users) {
                assert!(seen_rows.insert(row), "row {row} is in two sets");
                assert_eq!(input.users[row], owners[j as usize], "{name}");
                per_user[j as usize] += 1;
            }
            assert!(
                per_user.iter().all(|&c| c > 0),
                "{name}: a user without rows"
            );
            if name == "seen_train" {
                if let Some(cap) = p.max_train_rows {
                    assert!(per_user.iter().all(|&c| c <= cap));
                }
            }
            if name == "unseen_train" {
                assert!(per_user.iter().all(|&c| c == p.shots));
            }
        }
        // By prompt: no prompt has both training and test rows.
        if let (true, Some(prompts)) = (p.by_prompt, input.prompts) {
            let train: HashSet<u32> = s
                .seen_train
                .rows
                .iter()
                .chain(&s.unseen_train.rows)
                .map(|&r| prompts[r])
                .collect();
            for &r in s.seen_test.rows.iter().chain(&s.unseen_test.rows) {
                assert!(
                    !train.contains(&prompts[r]),
                    "prompt {} in both",
                    prompts[r]
                );
            }
        }
    }

    /// The split described by user names and rows' names, independent of user indices.
    fn by_name(s: &Split, ids: &[String], row_names: &[usize]) -> Vec<Vec<(String, usize)>> {
        s.sets()
            .iter()
            .map(|(name, set)| {
                let owners = if name.starts_with("seen") {
                    &s.seen_users
                } else {
                    &s.unseen_users
                };
                let mut named: Vec<(String, usize)> = set
                    .rows
                    .iter()
                    .zip(&set.users)
                    .map(|(&r, &j)| (ids[owners[j as usize] as usize].clone(), row_names[r]))
                    .collect();
                named.sort();
                named
            })
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(200))]

        #[test]
        fn splits_keep_their_promises(
            counts in proptest::collection::vec(1usize..25, 4..30),
            unseen_fraction in 0.1f64..0.6,
            train_fraction in 0.2f64..0.8,
            min_rows in 2usize..5,
            cap in proptest::option::of(1usize..8),
            shots in 1usize..5,
            by_prompt in any::<bool>(),
            n_prompts in 2u32..12,
            seed in 0u64..1000,
        ) {
            let users = interleaved(&counts);
            let prompts: Vec<u32> = (0..users.len() as u32).map(|i| (i * 7 + i / 3) % n_prompts).collect();
            let input = SplitInput { users: &users, user_ids: None, prompts: Some(&prompts) };
            let p = SplitParams {
                unseen_fraction, train_fraction, min_rows, max_train_rows: cap, shots, by_prompt, seed,
            };
            if let Ok(s) = split(&input, &p.check().unwrap()) {
                check_invariants(&input, &p, &s);
                prop_assert_eq!(split(&input, &p.check().unwrap()).unwrap(), s);
            }
        }

        #[test]
        fn splits_depend_on_user_names_not_indices(
            counts in proptest::collection::vec(3usize..15, 4..20),
            relabel_seed in 0u64..1000,
            seed in 0u64..1000,
        ) {
            // The same rows with user indices permuted (names attached) give the same split.
            let users = interleaved(&counts);
            let ids: Vec<String> = (0..counts.len()).map(|u| format!("name-{u:03}")).collect();
            let mut perm: Vec<u32> = (0..counts.len() as u32).collect();
            perm.shuffle(&mut ChaCha8Rng::seed_from_u64(relabel_seed));
            let relabeled: Vec<u32> = users.iter().map(|&u| perm[u as usize]).collect();
            let mut relabeled_ids = vec![String::new(); counts.len()];
            for (u, &v) in perm.iter().enumerate() {
                relabeled_ids[v as usize] = ids[u].clone();
            }
            let p = SplitParams { unseen_fraction: 0.3, shots: 2, seed, ..SplitParams::default() };
            let p = p.check().unwrap();
            let row_names: Vec<usize> = (0..users.len()).collect();
            let a = split(&SplitInput { users: &users, user_ids: Some(&ids), prompts: None }, &p).unwrap();
            let b = split(&SplitInput { users: &relabeled, user_ids: Some(&relabeled_ids), prompts: None }, &p).unwrap();
            prop_assert_eq!(by_name(&a, &ids, &row_names), by_name(&b, &relabeled_ids, &row_names));
        }
    }
}
