//! The portable kernels: plain scalar loops, the reference every SIMD kernel is tested against.

/// The portable [`super::BlockKernels::weighted_row_sum`]: `rows` of values widened by
/// `value`.
pub(super) fn weighted_row_sum<'a, T: 'a>(
    rows: impl Iterator<Item = &'a [T]>,
    d: &[f32],
    out: &mut [f32],
    value: impl Fn(&T) -> f32,
) {
    out.fill(0.0);
    for (row, &di) in rows.zip(d) {
        for (o, v) in out.iter_mut().zip(row) {
            *o += di * value(v);
        }
    }
}

/// The portable [`super::BlockKernels::score_and_sum`]: each row's score s = x . v, its
/// derivative(s) in `d_out`, and out = sum_i d_i x_i, for rows of values widened by `value`.
pub(super) fn score_and_sum<'a, T: 'a>(
    rows: impl Iterator<Item = &'a [T]>,
    v: &[f32],
    d_out: &mut [f32],
    out: &mut [f32],
    derivative: &mut impl FnMut(f32) -> f32,
    value: impl Fn(&T) -> f32,
) {
    out.fill(0.0);
    for (row, d) in rows.zip(d_out) {
        let s = row.iter().zip(v).map(|(x, &v)| value(x) * v).sum::<f32>();
        *d = derivative(s);
        for (o, x) in out.iter_mut().zip(row) {
            *o += *d * value(x);
        }
    }
}

/// S[r, :] = X[r, :] V for the `s.len() / k` rows of `x` (row-major [rows x f]); V is [f x k].
/// The plain scalar reference (and the portable kernel).
pub fn scores(x: &[f32], f: usize, basis: &[f32], k: usize, s: &mut [f32]) {
    debug_assert_eq!(basis.len(), f * k);
    debug_assert_eq!(x.len() / f, s.len() / k);
    for (x_row, s_row) in x.chunks_exact(f).zip(s.chunks_exact_mut(k)) {
        s_row.fill(0.0);
        for (&xf, v_row) in x_row.iter().zip(basis.chunks_exact(k)) {
            for (acc, &v) in s_row.iter_mut().zip(v_row) {
                *acc += xf * v;
            }
        }
    }
}

/// G += X^T R for the rows of `x` ([rows x f]) and `r` ([rows x k]); G is [f x k].
/// The plain scalar reference (and the portable kernel).
pub fn accumulate_gradient(x: &[f32], f: usize, r: &[f32], k: usize, g: &mut [f32]) {
    debug_assert_eq!(g.len(), f * k);
    debug_assert_eq!(x.len() / f, r.len() / k);
    for (x_row, r_row) in x.chunks_exact(f).zip(r.chunks_exact(k)) {
        for (&xf, g_row) in x_row.iter().zip(g.chunks_exact_mut(k)) {
            for (acc, &rv) in g_row.iter_mut().zip(r_row) {
                *acc += xf * rv;
            }
        }
    }
}
