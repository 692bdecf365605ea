//! Borrowed views of packed preference rows: X [P x F] grouped by user, never copied inside a fit.

use std::ops::Range;

use half::{bf16, f16};

use crate::error::{LoreError, Result};

/// Packed row-major feature rows in their storage precision (possibly memory-mapped).
#[derive(Debug, Clone, Copy)]
pub enum FeatureRows<'a> {
    /// f32 values.
    F32(&'a [f32]),
    /// IEEE half-precision values, widened to f32 when read.
    F16(&'a [f16]),
    /// bfloat16 values, widened to f32 when read (or used as is by bf16 fits).
    Bf16(&'a [bf16]),
}

impl<'a> FeatureRows<'a> {
    /// The stored bytes of the values `range`, whatever their type (for prefetching).
    pub fn bytes(&self, range: Range<usize>) -> &'a [u8] {
        match *self {
            FeatureRows::F32(v) => bytemuck::cast_slice(&v[range]),
            FeatureRows::F16(v) => bytemuck::cast_slice(&v[range]),
            FeatureRows::Bf16(v) => bytemuck::cast_slice(&v[range]),
        }
    }
}

impl FeatureRows<'_> {
    /// Number of stored values.
    pub fn len(&self) -> usize {
        match self {
            FeatureRows::F32(v) => v.len(),
            FeatureRows::F16(v) => v.len(),
            FeatureRows::Bf16(v) => v.len(),
        }
    }

    /// True when no value is stored.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Name of the storage type, for messages and metadata.
    pub fn dtype_name(&self) -> &'static str {
        match self {
            FeatureRows::F32(_) => "f32",
            FeatureRows::F16(_) => "f16",
            FeatureRows::Bf16(_) => "bf16",
        }
    }

    /// The values `range` as f32: borrowed when stored as f32, else widened into `scratch`.
    pub fn slice_f32<'s>(&'s self, range: Range<usize>, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        match self {
            FeatureRows::F32(v) => &v[range],
            FeatureRows::F16(v) => {
                use half::slice::HalfFloatSliceExt;
                let src = &v[range];
                scratch.resize(src.len(), 0.0);
                src.convert_to_f32_slice(scratch);
                scratch
            }
            FeatureRows::Bf16(v) => {
                // bf16 is the top half of an f32: a shift that vectorizes.
                let src = &v[range];
                scratch.resize(src.len(), 0.0);
                for (o, h) in scratch.iter_mut().zip(src) {
                    *o = f32::from_bits((h.to_bits() as u32) << 16);
                }
                scratch
            }
        }
    }

    /// Index and value of the first NaN or infinite value, if any.
    fn first_non_finite(&self) -> Option<(usize, f32)> {
        fn find<T: Copy>(v: &[T], f: impl Fn(T) -> f32) -> Option<(usize, f32)> {
            v.iter()
                .position(|&x| !f(x).is_finite())
                .map(|i| (i, f(v[i])))
        }
        match self {
            FeatureRows::F32(v) => find(v, |x| x),
            FeatureRows::F16(v) => find(v, f16::to_f32),
            FeatureRows::Bf16(v) => find(v, bf16::to_f32),
        }
    }
}

/// Preference rows of N users: row i is x_i = e(chosen) - e(rejected), rows of user u are
/// contiguous at `user_rows(u)`, and every user owns at least one row.
#[derive(Debug, Clone)]
pub struct Preferences<'a> {
    features: FeatureRows<'a>,
    n_features: usize,
    user_offsets: Vec<usize>,
}

impl<'a> Preferences<'a> {
    /// Builds a view from rows grouped by user, described by `user_offsets` (N + 1 increasing
    /// offsets from 0 to P). Checks shapes, empty users and that every value is finite.
    pub fn new(
        features: FeatureRows<'a>,
        n_features: usize,
        user_offsets: Vec<usize>,
    ) -> Result<Self> {
        let view = Self::with_checked_values(features, n_features, user_offsets)?;
        if let Some((i, value)) = features.first_non_finite() {
            return Err(LoreError::NonFinite {
                row: i / n_features,
                col: i % n_features,
                value,
            });
        }
        Ok(view)
    }

    /// Like [`Preferences::new`] but without the scan for NaN/Inf, for callers that have
    /// already checked every value (a file validated once when loaded, say). Shapes and user
    /// offsets are still checked.
    pub fn with_checked_values(
        features: FeatureRows<'a>,
        n_features: usize,
        user_offsets: Vec<usize>,
    ) -> Result<Self> {
        if n_features == 0 {
            return Err(LoreError::Shape("features have 0 columns".into()));
        }
        if !features.len().is_multiple_of(n_features) {
            return Err(LoreError::Shape(format!(
                "{} feature values do not form rows of {n_features}",
                features.len()
            )));
        }
        let n_rows = features.len() / n_features;
        if n_rows == 0 {
            return Err(LoreError::Shape("no preference rows".into()));
        }
        if user_offsets.len() < 2 || user_offsets[0] != 0 {
            return Err(LoreError::Shape(
                "user offsets must start at 0 and describe at least one user".into(),
            ));
        }
        if *user_offsets.last().unwrap() != n_rows {
            return Err(LoreError::Shape(format!(
                "user offsets end at {} but there are {n_rows} rows",
                user_offsets.last().unwrap()
            )));
        }
        if let Some(user) = user_offsets.windows(2).position(|w| w[1] <= w[0]) {
            return Err(LoreError::EmptyUser { user });
        }
        Ok(Self {
            features,
            n_features,
            user_offsets,
        })
    }

    /// Builds a view from a per-row user index that is already sorted (non-decreasing).
    /// Every index from 0 to the largest must own at least one row.
    pub fn from_sorted_users(
        features: FeatureRows<'a>,
        n_features: usize,
        users: &[u32],
    ) -> Result<Self> {
        if users.windows(2).any(|w| w[1] < w[0]) {
            return Err(LoreError::Shape(
                "user indices must be sorted to build a view without copying".into(),
            ));
        }
        let n_users = users.last().map_or(0, |&u| u as usize + 1);
        let counts = count_rows_per_user(users, n_users)?;
        Self::new(features, n_features, offsets_from_counts(&counts))
    }

    /// Number of rows P.
    pub fn n_rows(&self) -> usize {
        *self.user_offsets.last().unwrap()
    }

    /// Feature dimension F.
    pub fn n_features(&self) -> usize {
        self.n_features
    }

    /// Number of users N.
    pub fn n_users(&self) -> usize {
        self.user_offsets.len() - 1
    }

    /// The rows of user `u`.
    pub fn user_rows(&self, u: usize) -> Range<usize> {
        self.user_offsets[u]..self.user_offsets[u + 1]
    }

    /// The N + 1 row offsets of the users.
    pub fn user_offsets(&self) -> &[usize] {
        &self.user_offsets
    }

    /// The packed feature values.
    pub fn features(&self) -> FeatureRows<'a> {
        self.features
    }

    /// The stored bytes of rows `rows` (to fetch them ahead of use).
    pub fn row_bytes(&self, rows: Range<usize>) -> &[u8] {
        let f = self.n_features;
        self.features.bytes(rows.start * f..rows.end * f)
    }

    /// Rows `rows` as f32 (borrowed, or widened into `scratch`).
    pub fn rows_f32<'s>(&'s self, rows: Range<usize>, scratch: &'s mut Vec<f32>) -> &'s [f32] {
        let f = self.n_features;
        self.features
            .slice_f32(rows.start * f..rows.end * f, scratch)
    }
}

/// Rows per user for a per-row user index; an index with no rows below `n_users` is an error.
pub fn count_rows_per_user(users: &[u32], n_users: usize) -> Result<Vec<usize>> {
    let mut counts = vec![0usize; n_users];
    for &u in users {
        let slot = counts
            .get_mut(u as usize)
            .ok_or(LoreError::UserOutOfRange {
                index: u as u64,
                n_users,
            })?;
        *slot += 1;
    }
    if let Some(user) = counts.iter().position(|&c| c == 0) {
        return Err(LoreError::EmptyUser { user });
    }
    Ok(counts)
}

/// N + 1 offsets from N row counts.
pub fn offsets_from_counts(counts: &[usize]) -> Vec<usize> {
    let mut offsets = Vec::with_capacity(counts.len() + 1);
    offsets.push(0);
    let mut total = 0;
    for &c in counts {
        total += c;
        offsets.push(total);
    }
    offsets
}

/// A stable order that groups rows by user: `order[j]` is the original row placed at j.
pub fn group_rows_by_user(users: &[u32]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..users.len()).collect();
    order.sort_by_key(|&i| users[i]);
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn view_from_sorted_users() {
        let x = [1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0];
        let p = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &[0, 0, 1]).unwrap();
        assert_eq!(p.n_users(), 2);
        assert_eq!(p.user_rows(0), 0..2);
        assert_eq!(p.user_rows(1), 2..3);
        let mut scratch = Vec::new();
        assert_eq!(p.rows_f32(1..3, &mut scratch), &[3.0, 4.0, 5.0, 6.0]);
    }

    #[test]
    fn empty_user_is_an_error() {
        let x = [1.0f32; 4];
        let err = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &[0, 2]).unwrap_err();
        assert_eq!(err, LoreError::EmptyUser { user: 1 });
    }

    #[test]
    fn non_finite_is_an_error() {
        let x = [1.0f32, f32::NAN, 0.0, 0.0];
        let err = Preferences::from_sorted_users(FeatureRows::F32(&x), 2, &[0, 0]).unwrap_err();
        assert!(matches!(err, LoreError::NonFinite { row: 0, col: 1, .. }));
    }

    #[test]
    fn bf16_rows_are_widened() {
        let x: Vec<bf16> = [1.5f32, -2.0].iter().map(|&v| bf16::from_f32(v)).collect();
        let p = Preferences::from_sorted_users(FeatureRows::Bf16(&x), 2, &[0]).unwrap();
        let mut scratch = Vec::new();
        assert_eq!(p.rows_f32(0..1, &mut scratch), &[1.5, -2.0]);
    }

    #[test]
    fn grouping_is_stable() {
        assert_eq!(group_rows_by_user(&[1, 0, 1, 0]), vec![1, 3, 0, 2]);
    }
}
