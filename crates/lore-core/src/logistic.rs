//! Per-user logistic pieces, written so that the compiler vectorizes them: a polynomial exp,
//! log1p through atanh, and lane-parallel dot products. Accurate to ~1e-7 relative in f32.

/// Lanes of the partial sums in [`dot`]: a fixed order, so results do not depend on the ISA.
const LANES: usize = 16;

/// exp(x) for x <= 0 (Cephes expf: Cody-Waite reduction and a degree-6 polynomial);
/// values below -87 give exp(-87).
#[inline(always)]
pub fn exp_nonpositive(x: f32) -> f32 {
    let x = x.max(-87.0);
    let n = (x * std::f32::consts::LOG2_E + 0.5).floor();
    let r = x - n * 0.693_359_4 - n * -2.121_944_4e-4;
    let p = ((((1.987_569_1e-4 * r + 1.398_199_9e-3) * r + 8.333_452e-3) * r + 4.166_579_6e-2) * r
        + 1.666_666_5e-1)
        * r
        + 0.5;
    let poly = p * r * r + r + 1.0;
    poly * f32::from_bits(((n as i32 + 127) as u32) << 23)
}

/// Softmax of a short vector in place, with [`exp_nonpositive`] (vectorizes; libm's expf does not).
#[inline(always)]
pub fn softmax_in_place(values: &mut [f32]) {
    let max = values.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in values.iter_mut() {
        *v = exp_nonpositive(*v - max);
    }
    let sum: f32 = values.iter().sum();
    for v in values.iter_mut() {
        *v /= sum;
    }
}

/// ln(1 + e) for e in [0, 1], as 2 atanh(e / (2 + e)) (no cancellation for small e).
#[inline(always)]
pub fn ln_1p_unit(e: f32) -> f32 {
    let t = e / (2.0 + e);
    let t2 = t * t;
    let series = 1.0
        + t2 * (1.0 / 3.0
            + t2 * (1.0 / 5.0
                + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0 + t2 * (1.0 / 11.0 + t2 * (1.0 / 13.0))))));
    2.0 * t * series
}

/// Replaces each logit s_i by d/ds(-log sigmoid(s_i)) = -sigmoid(-s_i) and returns
/// sum_i -log sigmoid(s_i).
#[inline(always)]
pub fn logistic_terms(s: &mut [f32]) -> f64 {
    let mut loss = [0.0f32; LANES];
    let mut chunks = s.chunks_exact_mut(LANES);
    for chunk in &mut chunks {
        for (l, v) in loss.iter_mut().zip(chunk.iter_mut()) {
            let (term, derivative) = logistic_term(*v);
            *l += term;
            *v = derivative;
        }
    }
    let mut total: f64 = loss.iter().map(|&l| l as f64).sum();
    for v in chunks.into_remainder() {
        let (term, derivative) = logistic_term(*v);
        total += term as f64;
        *v = derivative;
    }
    total
}

/// (-log sigmoid(s), -sigmoid(-s)) without branches. A NaN or infinite s gives a NaN term
/// (`s - s`, +0 for any finite s, so finite results are unchanged to the bit): an overflowed
/// score shows in the loss, which training checks every step.
#[inline(always)]
pub(crate) fn logistic_term(s: f32) -> (f32, f32) {
    let e = exp_nonpositive(-s.abs());
    // `s - s` on purpose: 0 when finite, NaN when not (not foldable for floats).
    #[allow(clippy::eq_op)]
    let term = (-s).max(0.0) + ln_1p_unit(e) + (s - s);
    let numerator = if s >= 0.0 { e } else { 1.0 };
    (term, -numerator / (1.0 + e))
}

/// a . b with LANES partial sums in a fixed order.
#[inline(always)]
pub fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; LANES];
    let (a_chunks, b_chunks) = (a.chunks_exact(LANES), b.chunks_exact(LANES));
    let (a_rest, b_rest) = (a_chunks.remainder(), b_chunks.remainder());
    for (ca, cb) in a_chunks.zip(b_chunks) {
        for l in 0..LANES {
            acc[l] += ca[l] * cb[l];
        }
    }
    for (l, (&x, &y)) in a_rest.iter().zip(b_rest).enumerate() {
        acc[l] += x * y;
    }
    acc.iter().sum()
}

/// out[j] += alpha * x[j].
#[inline(always)]
pub fn axpy(alpha: f32, x: &[f32], out: &mut [f32]) {
    for (o, &v) in out.iter_mut().zip(x) {
        *o += alpha * v;
    }
}

/// The first `k` columns of `n` rows of stride `stride`, transposed into `out` [k][n].
#[inline(always)]
pub fn transpose_rows(rows: &[f32], stride: usize, k: usize, out: &mut [f32]) {
    let n = rows.len() / stride;
    for (i, row) in rows.chunks_exact(stride).enumerate() {
        for (t, &v) in row[..k].iter().enumerate() {
            out[t * n + i] = v;
        }
    }
}

/// s = c * Z w for Z given transposed, [K][n].
#[inline(always)]
pub fn logits_from_transposed(zt: &[f32], weights: &[f32], c: f32, s: &mut [f32]) {
    let n = s.len();
    s.fill(0.0);
    for (column, &w) in zt.chunks_exact(n).zip(weights) {
        axpy(w, column, s);
    }
    for v in s.iter_mut() {
        *v *= c;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exp_and_log1p_are_accurate() {
        let mut worst_exp = 0.0f64;
        let mut worst_log = 0.0f64;
        for i in 0..=20000 {
            let x = (-(i as f64) * 87.0 / 20000.0) as f32 as f64;
            let got = exp_nonpositive(x as f32) as f64;
            worst_exp = worst_exp.max((got - x.exp()).abs() / x.exp());
            let e = i as f64 / 20000.0;
            let got = ln_1p_unit(e as f32) as f64;
            if e > 0.0 {
                worst_log = worst_log.max((got - e.ln_1p()).abs() / e.ln_1p());
            }
        }
        assert!(worst_exp < 1e-6, "exp relative error {worst_exp}");
        assert!(worst_log < 1e-6, "log1p relative error {worst_log}");
        assert_eq!(exp_nonpositive(0.0), 1.0);
        assert!(exp_nonpositive(-1000.0) < 1e-37);
    }

    #[test]
    fn logistic_terms_match_the_definition() {
        let mut s: Vec<f32> = (0..37).map(|i| (i as f32 - 18.0) * 1.7).collect();
        s.push(90.0);
        s.push(-90.0);
        let original = s.clone();
        let total = logistic_terms(&mut s);
        let mut expect = 0.0f64;
        for (&x, &d) in original.iter().zip(&s) {
            let x = x as f64;
            expect += if x >= 0.0 {
                (-x).exp().ln_1p()
            } else {
                -x + x.exp().ln_1p()
            };
            let want = -1.0 / (1.0 + x.exp());
            assert!(
                (d as f64 - want).abs() <= 1e-6 * want.abs().max(1e-30),
                "{x}: {d} vs {want}"
            );
        }
        assert!(
            (total - expect).abs() <= 1e-6 * expect,
            "{total} vs {expect}"
        );
    }

    #[test]
    fn softmax_matches_the_definition() {
        let mut stable = [1000.0f32, 1000.0, -1000.0];
        softmax_in_place(&mut stable);
        assert!((stable[0] - 0.5).abs() < 1e-6 && (stable[1] - 0.5).abs() < 1e-6);
        assert!(stable[2] < 1e-37);
        let mut v = [0.3f32, -2.0, 5.0, 1e3, -1e3];
        // The definition in f64, rounded to f32.
        let max = v.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
        let total: f64 = v.iter().map(|&x| (x as f64 - max).exp()).sum();
        let expect = v.map(|x| ((x as f64 - max).exp() / total) as f32);
        softmax_in_place(&mut v);
        for (a, b) in v.iter().zip(&expect) {
            assert!((a - b).abs() <= 1e-6 * b.max(1e-30), "{a} vs {b}");
        }
    }

    #[test]
    fn dot_and_transpose() {
        let a: Vec<f32> = (0..37).map(|i| i as f32 * 0.5).collect();
        let b: Vec<f32> = (0..37).map(|i| 1.0 - i as f32 * 0.25).collect();
        let expect: f32 = a.iter().zip(&b).map(|(x, y)| x * y).sum();
        assert!((dot(&a, &b) - expect).abs() < 1e-3);
        let rows = [1.0, 2.0, 0.0, 3.0, 4.0, 0.0];
        let mut out = [0.0; 4];
        transpose_rows(&rows, 3, 2, &mut out);
        assert_eq!(out, [1.0, 3.0, 2.0, 4.0]);
    }
}
