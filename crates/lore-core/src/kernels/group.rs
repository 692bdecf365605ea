//! The fit's products of a group of users with V: their directions v_u = V w_u and their
//! weights' gradients V^T g_u, each reading V once for the whole group (at most
//! [`MAX_GROUP`] users). V is packed as panels of [`LANE`] features ([`pack_panels`]), so a
//! panel's K columns are consecutive vectors.

/// Features per panel of V: one 512-bit vector.
pub const LANE: usize = 16;
/// The most users of one group.
pub const MAX_GROUP: usize = 8;

/// V [F x K] packed as panels, [ceil(F / LANE)][K][LANE], zero past F.
pub fn pack_panels(basis: &[f32], f: usize, k: usize, out: &mut Vec<f32>) {
    assert_eq!(basis.len(), f * k);
    out.clear();
    out.resize(panels_len(f, k), 0.0);
    for (j, row) in basis.chunks_exact(k).enumerate() {
        let (tile, lane) = (j / LANE, j % LANE);
        for (t, &v) in row.iter().enumerate() {
            out[(tile * k + t) * LANE + lane] = v;
        }
    }
}

/// Length of V packed as panels.
pub fn panels_len(f: usize, k: usize) -> usize {
    f.div_ceil(LANE) * k * LANE
}

/// Expands to `$body` with `$n` a constant equal to `$users` (1 to [`MAX_GROUP`]).
macro_rules! for_group_size {
    ($users:expr, $n:ident => $body:expr) => {
        match $users {
            1 => {
                const $n: usize = 1;
                $body
            }
            2 => {
                const $n: usize = 2;
                $body
            }
            3 => {
                const $n: usize = 3;
                $body
            }
            4 => {
                const $n: usize = 4;
                $body
            }
            5 => {
                const $n: usize = 5;
                $body
            }
            6 => {
                const $n: usize = 6;
                $body
            }
            7 => {
                const $n: usize = 7;
                $body
            }
            8 => {
                const $n: usize = 8;
                $body
            }
            other => unreachable!("a group of {other} users"),
        }
    };
}
pub(super) use for_group_size;

/// The scalar loops: out [B x F] = V w_b for the weights [B x K].
#[inline(always)]
pub fn combine<const B: usize>(panels: &[f32], f: usize, weights: &[f32], out: &mut [f32]) {
    let k = weights.len() / B;
    for (tile, panel) in panels.chunks_exact(k * LANE).enumerate() {
        let mut acc = [[0.0f32; LANE]; B];
        for (t, column) in panel.chunks_exact(LANE).enumerate() {
            for (b, acc) in acc.iter_mut().enumerate() {
                let w = weights[b * k + t];
                for (a, &v) in acc.iter_mut().zip(column) {
                    *a = w.mul_add(v, *a);
                }
            }
        }
        let start = tile * LANE;
        let len = LANE.min(f - start);
        for (b, acc) in acc.iter().enumerate() {
            out[b * f + start..b * f + start + len].copy_from_slice(&acc[..len]);
        }
    }
}

/// The scalar loops: out [B x K] = V^T g_b for the sums [B x F], LANE partial sums per
/// (k, b) in `partial` [K x B x LANE], added at the end.
#[inline(always)]
pub fn project<const B: usize>(
    panels: &[f32],
    f: usize,
    sums: &[f32],
    out: &mut [f32],
    partial: &mut [f32],
) {
    let k = out.len() / B;
    let partial = &mut partial[..k * B * LANE];
    partial.fill(0.0);
    for (tile, panel) in panels.chunks_exact(k * LANE).enumerate() {
        let start = tile * LANE;
        let len = LANE.min(f - start);
        let mut g = [[0.0f32; LANE]; B];
        for (b, g) in g.iter_mut().enumerate() {
            g[..len].copy_from_slice(&sums[b * f + start..b * f + start + len]);
        }
        for (column, acc) in panel
            .chunks_exact(LANE)
            .zip(partial.chunks_exact_mut(B * LANE))
        {
            for (acc, g) in acc.chunks_exact_mut(LANE).zip(&g) {
                for ((a, &v), &x) in acc.iter_mut().zip(column).zip(g) {
                    *a = v.mul_add(x, *a);
                }
            }
        }
    }
    add_partials::<B>(partial, out);
}

/// out [B x K] from the partial sums [K x B x LANE], each one's lanes added in order.
#[inline(always)]
fn add_partials<const B: usize>(partial: &[f32], out: &mut [f32]) {
    let k = out.len() / B;
    for (t, acc) in partial.chunks_exact(B * LANE).enumerate() {
        for (b, lanes) in acc.chunks_exact(LANE).enumerate() {
            out[b * k + t] = lanes.iter().sum();
        }
    }
}

/// AVX-512: [`combine`] with the group's sums in registers.
///
/// # Safety
/// The CPU has AVX512-F; `panels` holds [`panels_len`]`(f, k)` values, `weights` B x k and
/// `out` B x f, with k = weights.len() / B (the caller asserts these).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn combine_avx512<const B: usize>(
    panels: &[f32],
    f: usize,
    weights: &[f32],
    out: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = weights.len() / B;
    let (p, w, o) = (panels.as_ptr(), weights.as_ptr(), out.as_mut_ptr());
    for tile in 0..f.div_ceil(LANE) {
        let mut acc = [_mm512_setzero_ps(); B];
        // SAFETY: tile < ceil(f / LANE) and t < k keep every read inside the panels
        // (ceil(f / LANE) * k * LANE values); b < B and t < k inside the weights.
        unsafe {
            let panel = p.add(tile * k * LANE);
            for t in 0..k {
                let column = _mm512_loadu_ps(panel.add(t * LANE));
                for (b, acc) in acc.iter_mut().enumerate() {
                    *acc = _mm512_fmadd_ps(_mm512_set1_ps(*w.add(b * k + t)), column, *acc);
                }
            }
        }
        let start = tile * LANE;
        let len = LANE.min(f - start);
        let mask: __mmask16 = if len == LANE { !0 } else { (1 << len) - 1 };
        for (b, acc) in acc.iter().enumerate() {
            // SAFETY: the mask stores `len` values from b * f + start, inside out (B x f).
            unsafe { _mm512_mask_storeu_ps(o.add(b * f + start), mask, *acc) };
        }
    }
}

/// AVX-512: [`project`], each user's panel of g in a register.
///
/// # Safety
/// The CPU has AVX512-F; `panels` holds [`panels_len`]`(f, k)` values, `sums` B x f, `out`
/// B x k and `partial` at least k x B x LANE, with k = out.len() / B (the caller asserts these).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
pub unsafe fn project_avx512<const B: usize>(
    panels: &[f32],
    f: usize,
    sums: &[f32],
    out: &mut [f32],
    partial: &mut [f32],
) {
    use std::arch::x86_64::*;
    let k = out.len() / B;
    let partial = &mut partial[..k * B * LANE];
    partial.fill(0.0);
    let (p, s, acc) = (panels.as_ptr(), sums.as_ptr(), partial.as_mut_ptr());
    for tile in 0..f.div_ceil(LANE) {
        let start = tile * LANE;
        let len = LANE.min(f - start);
        let mask: __mmask16 = if len == LANE { !0 } else { (1 << len) - 1 };
        // SAFETY: the masked loads read `len` values from b * f + start, inside sums (B x f);
        // tile and t keep the panel reads inside the panels, and (t * B + b) * LANE + LANE
        // <= k * B * LANE keeps the partial sums inside `partial`.
        unsafe {
            let mut g = [_mm512_setzero_ps(); B];
            for (b, g) in g.iter_mut().enumerate() {
                *g = _mm512_maskz_loadu_ps(mask, s.add(b * f + start));
            }
            let panel = p.add(tile * k * LANE);
            for t in 0..k {
                let column = _mm512_loadu_ps(panel.add(t * LANE));
                for (b, g) in g.iter().enumerate() {
                    let at = acc.add((t * B + b) * LANE);
                    _mm512_storeu_ps(at, _mm512_fmadd_ps(column, *g, _mm512_loadu_ps(at)));
                }
            }
        }
    }
    add_partials::<B>(partial, out);
}
