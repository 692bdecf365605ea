//! Signs that preference data lies: rows that carry no preference, repeated pairs, one user
//! holding most rows, the same pair in training and test sets, users that cannot be matched.
//!
//! Each check is a pure function of loaded files that returns [`Finding`]s (nothing is printed
//! or refused here): `lore check-data` lists them, and `fit`, `personalize` and `split` print
//! them as warnings. [`Severity::Error`] marks what would make results wrong (a split folder
//! whose test users cannot be matched to training users); the readers refuse those too.

use std::collections::hash_map::DefaultHasher;
use std::collections::{HashMap, HashSet};
use std::fmt;
use std::hash::Hasher;

use lore_core::FeatureRows;
use serde::Serialize;
use serde_json::Value;

use crate::error::Result;
use crate::preference::PreferenceFile;
use crate::split_folder::SplitFolder;

/// Share of the rows above which one user "holds most rows" (when there are at least
/// [`DOMINANT_MIN_USERS`] users).
pub const DOMINANT_SHARE: f64 = 0.5;
/// Fewest users for the dominant-user check (with one or two users, one holding most rows is
/// normal).
pub const DOMINANT_MIN_USERS: usize = 3;

/// How much a finding matters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// A measurement worth knowing, not a problem in itself.
    Info,
    /// Probably a preparation mistake or leakage; results may look better or worse than they are.
    Warning,
    /// Results would be wrong; lore refuses such data.
    Error,
}

impl Severity {
    /// `info`, `warning` or `error`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
        }
    }
}

/// What one check found: a short kind (`zero-rows`, ...), a one-line message with the numbers,
/// and the numbers themselves.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    /// The check, as a short name: `zero-rows`, `duplicate-pair-ids`, `dominant-user`,
    /// `train-test-overlap`, `train-test-pair-ids`, `one-sided-user-ids` (lore-embed's text
    /// checks add `serialized-text`, `identical-texts`, `longer-wins`, `duplicate-pairs`).
    pub kind: &'static str,
    /// How much it matters.
    pub severity: Severity,
    /// One line for the user, naming the file, the numbers and an example.
    pub message: String,
    /// How many rows (or users) show it.
    pub count: usize,
    /// Out of how many.
    pub total: usize,
    /// A rate or share when the check measures one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
}

impl fmt::Display for Finding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The checks of one preference file: [`zero_rows`], [`duplicate_pair_ids`] and
/// [`dominant_user`], in that order.
pub fn check_preferences(file: &PreferenceFile) -> Result<Vec<Finding>> {
    let mut findings: Vec<Finding> = zero_rows(file).into_iter().collect();
    findings.extend(duplicate_pair_ids(file)?);
    findings.extend(dominant_user(file));
    Ok(findings)
}

/// The checks across the sets of a split folder: [`one_sided_user_ids`] and
/// [`train_test_overlap`] (the per-file checks are [`check_preferences`] of each set).
pub fn check_split(folder: &SplitFolder) -> Result<Vec<Finding>> {
    let mut findings = one_sided_user_ids(folder);
    findings.extend(train_test_overlap(folder)?);
    Ok(findings)
}

/// Rows whose features are all zero: chosen identical to rejected, so the pair says nothing
/// about the user (and usually means the two texts were the same).
pub fn zero_rows(file: &PreferenceFile) -> Option<Finding> {
    let (rows, f) = (file.features(), file.n_features());
    let mut buf = Vec::with_capacity(f);
    let mut count = 0;
    let mut first = None;
    for g in 0..file.n_rows() {
        row_f32(rows, g, f, &mut buf);
        if buf.iter().all(|&v| v == 0.0) {
            count += 1;
            let original = original_row(file, g);
            first = Some(first.map_or(original, |r: usize| r.min(original)));
        }
    }
    let first = first?;
    let total = file.n_rows();
    Some(Finding {
        kind: "zero-rows",
        severity: Severity::Warning,
        message: format!(
            "{}: {count} of {total} rows are all zeros (chosen identical to rejected; first at \
             row {first}): they carry no preference",
            file.path().display()
        ),
        count,
        total,
        value: Some(count as f64 / total as f64),
    })
}

/// Pair ids (tensor `pair_id` or metadata `pair_ids`) that appear on more than one row.
pub fn duplicate_pair_ids(file: &PreferenceFile) -> Result<Option<Finding>> {
    let Some(ids) = pair_ids(file)? else {
        return Ok(None);
    };
    let mut seen: HashMap<&str, usize> = HashMap::with_capacity(ids.len());
    let mut count = 0;
    let mut example: Option<(&str, usize, usize)> = None;
    for (row, id) in ids.iter().enumerate() {
        match seen.get(id.as_str()) {
            Some(&first) => {
                count += 1;
                example.get_or_insert((id.as_str(), first, row));
            }
            None => {
                seen.insert(id, row);
            }
        }
    }
    let Some((id, first, again)) = example else {
        return Ok(None);
    };
    let total = ids.len();
    Ok(Some(Finding {
        kind: "duplicate-pair-ids",
        severity: Severity::Warning,
        message: format!(
            "{}: {count} of {total} rows repeat an earlier pair id (e.g. {id:?} at rows {first} \
             and {again}): the same pair counted twice?",
            file.path().display()
        ),
        count,
        total,
        value: Some(count as f64 / total as f64),
    }))
}

/// One user holding more than [`DOMINANT_SHARE`] of the rows (with at least
/// [`DOMINANT_MIN_USERS`] users): averages over users then mostly describe that user's data.
pub fn dominant_user(file: &PreferenceFile) -> Option<Finding> {
    let n_users = file.n_users();
    if n_users < DOMINANT_MIN_USERS {
        return None;
    }
    let offsets = file.user_offsets();
    let (user, rows) = (0..n_users)
        .map(|u| (u, offsets[u + 1] - offsets[u]))
        .max_by_key(|&(u, rows)| (rows, std::cmp::Reverse(u)))?;
    let total = file.n_rows();
    let share = rows as f64 / total as f64;
    if share <= DOMINANT_SHARE {
        return None;
    }
    let name = match file.user_ids() {
        Some(ids) => format!("user {:?}", ids[user]),
        None => format!("user {user}"),
    };
    Some(Finding {
        kind: "dominant-user",
        severity: Severity::Warning,
        message: format!(
            "{}: {name} holds {rows} of {total} rows ({:.0}%, {n_users} users): one user \
             dominates the data",
            file.path().display(),
            100.0 * share
        ),
        count: rows,
        total,
        value: Some(share),
    })
}

/// A training set and its test set where only one carries metadata `user_ids`: users would be
/// matched by index although one side names them, so test users may be scored with another
/// user's weights. An [`Severity::Error`]: [`SplitFolder::test_user_maps`] refuses it.
pub fn one_sided_user_ids(folder: &SplitFolder) -> Vec<Finding> {
    let [seen_train, seen_test, unseen_train, unseen_test] = folder.sets();
    [(seen_train, seen_test), (unseen_train, unseen_test)]
        .into_iter()
        .filter_map(|(train, test)| {
            let (with, without) = match (train.user_ids(), test.user_ids()) {
                (Some(_), None) => (train, test),
                (None, Some(_)) => (test, train),
                _ => return None,
            };
            Some(Finding {
                kind: "one-sided-user-ids",
                severity: Severity::Error,
                message: one_sided_message(with, without),
                count: 1,
                total: 2,
                value: None,
            })
        })
        .collect()
}

/// The message for a train/test pair of sets where only `with` has `user_ids`.
pub(crate) fn one_sided_message(with: &PreferenceFile, without: &PreferenceFile) -> String {
    format!(
        "{} has metadata `user_ids` but {} has none: test users cannot be matched to training \
         users by name (give both sets `user_ids`, or neither to match by index)",
        with.path().display(),
        without.path().display()
    )
}

/// The same pair in training and test sets: test rows identical to a training row of the same
/// user (non-zero `x`; seen and unseen users each against their own training set), and pair
/// ids present in both a training set and a test set.
pub fn train_test_overlap(folder: &SplitFolder) -> Result<Vec<Finding>> {
    let [seen_train, seen_test, unseen_train, unseen_test] = folder.sets();
    let mut findings = Vec::new();

    let mut count = 0;
    let mut total = 0;
    let mut example: Option<(String, usize)> = None;
    for (train, test) in [(seen_train, seen_test), (unseen_train, unseen_test)] {
        total += test.n_rows();
        if train.n_features() != test.n_features() {
            continue;
        }
        let (n, first) = repeated_rows(train, test);
        count += n;
        if let (None, Some(row)) = (&example, first) {
            example = Some((test.path().display().to_string(), row));
        }
    }
    if let Some((path, row)) = example {
        findings.push(Finding {
            kind: "train-test-overlap",
            severity: Severity::Warning,
            message: format!(
                "{}: {count} of {total} test rows repeat a training row of the same user \
                 (identical x; first at row {row} of {path}): test accuracy is inflated",
                folder.dir().display()
            ),
            count,
            total,
            value: Some(count as f64 / total.max(1) as f64),
        });
    }

    let mut train_ids: HashSet<String> = HashSet::new();
    let mut any_train_ids = false;
    for train in [seen_train, unseen_train] {
        if let Some(ids) = pair_ids(train)? {
            any_train_ids = true;
            train_ids.extend(ids);
        }
    }
    if any_train_ids {
        let mut count = 0;
        let mut total = 0;
        let mut example: Option<(String, String, usize)> = None;
        for test in [seen_test, unseen_test] {
            let Some(ids) = pair_ids(test)? else {
                continue;
            };
            total += ids.len();
            for (row, id) in ids.into_iter().enumerate() {
                if train_ids.contains(&id) {
                    count += 1;
                    example.get_or_insert((id, test.path().display().to_string(), row));
                }
            }
        }
        if let Some((id, path, row)) = example {
            findings.push(Finding {
                kind: "train-test-pair-ids",
                severity: Severity::Warning,
                message: format!(
                    "{}: {count} of {total} test rows have a pair id that is also in a training \
                     set (e.g. {id:?} at row {row} of {path}): the same pair in training and test",
                    folder.dir().display()
                ),
                count,
                total,
                value: Some(count as f64 / total.max(1) as f64),
            });
        }
    }
    Ok(findings)
}

/// Rows of `test` identical to a non-zero row of the matched user in `train`: how many, and
/// the first one's row in `test`'s file order.
fn repeated_rows(train: &PreferenceFile, test: &PreferenceFile) -> (usize, Option<usize>) {
    let f = train.n_features();
    let user_map = match_by_id_or_index(train, test);
    let (train_rows, test_rows) = (train.features(), test.features());
    let mut buf = Vec::with_capacity(f);
    let mut other = Vec::with_capacity(f);
    let mut index: HashMap<(usize, u64), Vec<usize>> = HashMap::new();
    let offsets = train.user_offsets();
    for u in 0..train.n_users() {
        for g in offsets[u]..offsets[u + 1] {
            row_f32(train_rows, g, f, &mut buf);
            if buf.iter().all(|&v| v == 0.0) {
                continue;
            }
            index.entry((u, hash_row(&buf))).or_default().push(g);
        }
    }
    let mut count = 0;
    let mut first: Option<usize> = None;
    let offsets = test.user_offsets();
    for (v, matched) in user_map.iter().enumerate() {
        let Some(u) = *matched else { continue };
        for g in offsets[v]..offsets[v + 1] {
            row_f32(test_rows, g, f, &mut buf);
            let Some(candidates) = index.get(&(u, hash_row(&buf))) else {
                continue;
            };
            let repeated = candidates.iter().any(|&t| {
                row_f32(train_rows, t, f, &mut other);
                other == buf
            });
            if repeated {
                count += 1;
                let row = original_row(test, g);
                first = Some(first.map_or(row, |r| r.min(row)));
            }
        }
    }
    (count, first)
}

/// For each user of `test`, the training user with the same id (both have ids), else the same
/// index; `None` when there is none.
fn match_by_id_or_index(train: &PreferenceFile, test: &PreferenceFile) -> Vec<Option<usize>> {
    match (train.user_ids(), test.user_ids()) {
        (Some(train_ids), Some(test_ids)) => {
            let index: HashMap<&str, usize> = train_ids
                .iter()
                .enumerate()
                .map(|(i, id)| (id.as_str(), i))
                .collect();
            test_ids
                .iter()
                .map(|id| index.get(id.as_str()).copied())
                .collect()
        }
        _ => (0..test.n_users())
            .map(|v| (v < train.n_users()).then_some(v))
            .collect(),
    }
}

/// Each row's pair id (in file order) from tensor `pair_id` or metadata `pair_ids`; `None`
/// when the file has neither or they are not one per row.
fn pair_ids(file: &PreferenceFile) -> Result<Option<Vec<String>>> {
    let n_rows = file.n_rows();
    let tensor = file.file();
    if tensor.has("pair_id") {
        let (shape, ids) = tensor.tensor_indices("pair_id")?;
        if shape != [n_rows] {
            return Ok(None);
        }
        return Ok(Some(ids.iter().map(i64::to_string).collect()));
    }
    match tensor.metadata_json::<Value>("pair_ids")? {
        Some(Value::Array(ids)) if ids.len() == n_rows => Ok(Some(
            ids.into_iter()
                .map(|v| match v {
                    Value::String(s) => s,
                    other => other.to_string(),
                })
                .collect(),
        )),
        _ => Ok(None),
    }
}

/// The file-order index of grouped row `g`.
fn original_row(file: &PreferenceFile, g: usize) -> usize {
    file.row_order().map_or(g, |order| order[g])
}

/// Row `g` of `rows` (rows of `f` values) as f32 into `buf`.
fn row_f32(rows: FeatureRows<'_>, g: usize, f: usize, buf: &mut Vec<f32>) {
    buf.clear();
    let range = g * f..(g + 1) * f;
    match rows {
        FeatureRows::F32(v) => buf.extend_from_slice(&v[range]),
        FeatureRows::F16(v) => buf.extend(v[range].iter().map(|x| x.to_f32())),
        FeatureRows::Bf16(v) => buf.extend(v[range].iter().map(|x| x.to_f32())),
    }
}

/// A hash of a row's values (-0 and +0 alike, as they compare equal).
fn hash_row(row: &[f32]) -> u64 {
    let mut h = DefaultHasher::new();
    for &v in row {
        h.write_u32(if v == 0.0 { 0 } else { v.to_bits() });
    }
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::split_folder::{MemoryRows, SetRows};
    use crate::writer::TensorWriter;
    use std::path::Path;

    fn write(path: &Path, x: &[f32], f: usize, users: &[i64], meta: &[(&str, Value)]) {
        let mut w = TensorWriter::new();
        w.add_f32("x", &[users.len(), f], x)
            .add_i64("user", &[users.len()], users);
        for (key, value) in meta {
            w.metadata(*key, value);
        }
        w.write_atomic(path).unwrap();
    }

    #[test]
    fn clean_file_has_no_findings() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.safetensors");
        let ids = serde_json::json!(["a", "b", "c", "d"]);
        write(
            &p,
            &[1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 2.0, 0.0],
            2,
            &[0, 1, 2, 0],
            &[("pair_ids", ids)],
        );
        let file = PreferenceFile::load(&p).unwrap();
        assert_eq!(check_preferences(&file).unwrap(), vec![]);
    }

    #[test]
    fn zero_rows_counted_in_file_order() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.safetensors");
        // Unsorted users: grouped order differs from file order.
        write(
            &p,
            &[1.0, 0.0, 0.0, 0.0, 0.0, -0.0, 2.0, 0.0],
            2,
            &[1, 0, 1, 0],
            &[],
        );
        let file = PreferenceFile::load(&p).unwrap();
        let finding = zero_rows(&file).unwrap();
        assert_eq!((finding.count, finding.total), (2, 4));
        assert!(finding.message.contains("first at row 1"), "{finding}");
        assert_eq!(finding.severity, Severity::Warning);
    }

    #[test]
    fn duplicate_pair_ids_from_metadata_and_tensor() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.safetensors");
        let ids = serde_json::json!(["a", "b", "a", "a"]);
        write(
            &p,
            &[1.0, 2.0, 3.0, 4.0],
            1,
            &[0, 0, 1, 1],
            &[("pair_ids", ids)],
        );
        let finding = duplicate_pair_ids(&PreferenceFile::load(&p).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!((finding.count, finding.total), (2, 4));
        assert!(
            finding.message.contains("\"a\" at rows 0 and 2"),
            "{finding}"
        );

        let q = dir.path().join("e.safetensors");
        TensorWriter::new()
            .add_f32("x", &[3, 1], &[1.0, 2.0, 3.0])
            .add_i64("user", &[3], &[0, 0, 0])
            .add_i64("pair_id", &[3], &[7, 8, 8])
            .write_atomic(&q)
            .unwrap();
        let finding = duplicate_pair_ids(&PreferenceFile::load(&q).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(finding.count, 1);
    }

    #[test]
    fn dominant_user_needs_three_users_and_a_majority() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.safetensors");
        let ids = serde_json::json!(["ann", "bob", "cy"]);
        write(
            &p,
            &[1.0, 2.0, 3.0, 4.0, 5.0],
            1,
            &[0, 1, 1, 1, 2],
            &[("user_ids", ids)],
        );
        let finding = dominant_user(&PreferenceFile::load(&p).unwrap()).unwrap();
        assert_eq!((finding.count, finding.total), (3, 5));
        assert!(
            finding.message.contains("\"bob\" holds 3 of 5 rows (60%"),
            "{finding}"
        );

        write(&p, &[1.0, 2.0, 3.0, 4.0], 1, &[0, 1, 1, 2], &[]);
        assert_eq!(dominant_user(&PreferenceFile::load(&p).unwrap()), None);
        write(&p, &[1.0, 2.0, 3.0], 1, &[0, 0, 1], &[]);
        assert_eq!(dominant_user(&PreferenceFile::load(&p).unwrap()), None);
    }

    /// A split folder of F = 1 rows: seen users 0 and 1, unseen user 2 (rows of the source).
    fn split(dir: &Path, x: &[f32], sets: [&[usize]; 4], ids: Option<[bool; 4]>) {
        let source = MemoryRows {
            features: FeatureRows::F32(x),
            n_features: 1,
            prompts: None,
        };
        let names: Vec<String> = (0..3).map(|u| format!("u{u}")).collect();
        for (i, name) in SplitFolder::SET_NAMES.iter().enumerate() {
            let rows = sets[i];
            let seen = i < 2;
            let owners: &[u32] = if seen { &[0, 1] } else { &[2] };
            // Rows alternate users 0, 1 in the seen sets; all user 2 in the unseen sets.
            let users: Vec<u32> = if seen {
                (0..rows.len()).map(|k| (k % 2) as u32).collect()
            } else {
                vec![0; rows.len()]
            };
            let mut order: Vec<usize> = (0..rows.len()).collect();
            order.sort_by_key(|&k| users[k]);
            let rows: Vec<usize> = order.iter().map(|&k| rows[k]).collect();
            let users: Vec<u32> = order.iter().map(|&k| users[k]).collect();
            let set = SetRows {
                rows: &rows,
                users: &users,
                owners,
            };
            let with_ids = ids.is_none_or(|ids| ids[i]);
            let user_ids = with_ids.then_some(&names[..]);
            SplitFolder::write_set(dir, name, &set, &source, user_ids).unwrap();
        }
    }

    #[test]
    fn overlap_of_the_same_user_only() {
        let dir = tempfile::tempdir().unwrap();
        // Source rows: 0..8 distinct values, row 8 repeats row 0 (user 0's), row 9 is zero.
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 1.0, 0.0];
        // seen_train rows 0 (u0), 1 (u1); seen_test rows 8 (u0: repeats row 0), 2 (u1).
        split(
            dir.path(),
            &x,
            [&[0, 1, 9, 3], &[8, 2, 9, 4], &[5, 6], &[7]],
            None,
        );
        let folder = SplitFolder::open(dir.path()).unwrap();
        let findings = check_split(&folder).unwrap();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].kind, "train-test-overlap");
        assert_eq!((findings[0].count, findings[0].total), (1, 5));

        // The same value held by another user is not the same pair.
        let other = tempfile::tempdir().unwrap();
        split(other.path(), &x, [&[0, 1], &[2, 8], &[5, 6], &[7]], None);
        let folder = SplitFolder::open(other.path()).unwrap();
        assert_eq!(check_split(&folder).unwrap(), vec![]);
    }

    #[test]
    fn one_sided_user_ids_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let x = [1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        split(
            dir.path(),
            &x,
            [&[0, 1], &[2, 3], &[4], &[5]],
            Some([true, false, true, true]),
        );
        let folder = SplitFolder::open(dir.path()).unwrap();
        let findings = check_split(&folder).unwrap();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].severity, Severity::Error);
        assert!(findings[0]
            .message
            .contains("seen_train.safetensors has metadata `user_ids`"));
        let err = folder.test_user_maps().unwrap_err().to_string();
        assert!(err.contains("cannot be matched"), "{err}");
    }

    #[test]
    fn pair_ids_in_train_and_test() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("src.safetensors");
        let ids = serde_json::json!(["a", "b", "c", "a", "e", "f"]);
        write(
            &p,
            &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0],
            1,
            &[0, 1, 0, 1, 2, 2],
            &[("pair_ids", ids)],
        );
        let source_file = PreferenceFile::load(&p).unwrap();
        let rows = crate::FileRows::new(source_file.file(), 6).unwrap();
        let out = dir.path().join("split");
        std::fs::create_dir(&out).unwrap();
        let sets: [(&[usize], &[u32], &[u32]); 4] = [
            (&[0, 1], &[0, 1], &[0, 1]),
            (&[2, 3], &[0, 1], &[0, 1]),
            (&[4], &[0], &[2]),
            (&[5], &[0], &[2]),
        ];
        for (name, (rows_of, users, owners)) in SplitFolder::SET_NAMES.iter().zip(sets) {
            let set = SetRows {
                rows: rows_of,
                users,
                owners,
            };
            SplitFolder::write_set(&out, name, &set, &rows, None).unwrap();
        }
        let folder = SplitFolder::open(&out).unwrap();
        let findings = train_test_overlap(&folder).unwrap();
        assert_eq!(findings.len(), 1, "{findings:?}");
        assert_eq!(findings[0].kind, "train-test-pair-ids");
        assert_eq!((findings[0].count, findings[0].total), (1, 3));
        assert!(findings[0].message.contains("\"a\""), "{findings:?}");
    }
}
