//! The block products of a pass over the data: S_b = X_b V and G += X_b^T R_b.
//!
//! Portable loops over packed row-major data; each is checked against a plain scalar reference.

/// S[r, :] = X[r, :] V for the `s.len() / k` rows of `x` (row-major [rows x f]); V is [f x k].
pub fn block_scores(x: &[f32], f: usize, basis: &[f32], k: usize, s: &mut [f32]) {
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
pub fn block_accumulate_gradient(x: &[f32], f: usize, r: &[f32], k: usize, g: &mut [f32]) {
    debug_assert_eq!(g.len(), f * k);
    debug_assert_eq!(x.len() / f, r.len() / k);
    for (x_row, r_row) in x.chunks_exact(f).zip(r.chunks_exact(k)) {
        if r_row.iter().all(|&v| v == 0.0) {
            continue;
        }
        for (&xf, g_row) in x_row.iter().zip(g.chunks_exact_mut(k)) {
            for (acc, &rv) in g_row.iter_mut().zip(r_row) {
                *acc += xf * rv;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pseudo_random(n: usize, seed: u32) -> Vec<f32> {
        let mut state = seed.wrapping_mul(2654435761).wrapping_add(1);
        (0..n)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                (state % 2001) as f32 / 1000.0 - 1.0
            })
            .collect()
    }

    #[test]
    fn scores_match_scalar_reference() {
        let (rows, f, k) = (7, 13, 5);
        let x = pseudo_random(rows * f, 1);
        let v = pseudo_random(f * k, 2);
        let mut s = vec![f32::NAN; rows * k];
        block_scores(&x, f, &v, k, &mut s);
        for r in 0..rows {
            for j in 0..k {
                let expect: f64 = (0..f)
                    .map(|i| x[r * f + i] as f64 * v[i * k + j] as f64)
                    .sum();
                assert!((s[r * k + j] as f64 - expect).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn gradient_matches_scalar_reference() {
        let (rows, f, k) = (6, 11, 3);
        let x = pseudo_random(rows * f, 3);
        let r = pseudo_random(rows * k, 4);
        let mut g = vec![0.5f32; f * k];
        block_accumulate_gradient(&x, f, &r, k, &mut g);
        for i in 0..f {
            for j in 0..k {
                let expect: f64 = 0.5
                    + (0..rows)
                        .map(|t| x[t * f + i] as f64 * r[t * k + j] as f64)
                        .sum::<f64>();
                assert!((g[i * k + j] as f64 - expect).abs() < 1e-5);
            }
        }
    }
}
