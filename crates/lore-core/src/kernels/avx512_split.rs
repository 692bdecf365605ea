//! The split layout's kernels: M whole 512-bit vectors and, with H, a 256-bit half over the
//! first `wide` columns; with ONE, one more column along F in the same pass.

// Indexed loops over fixed-size accumulator arrays keep them in registers once unrolled.
#![allow(clippy::needless_range_loop, clippy::too_many_arguments)]

use std::arch::x86_64::*;

const LANES: usize = 16;

/// S for RB rows at a time (S rows `s_stride` apart): V's wide part [F][wide] with wide =
/// 16 M + 8 H and, with ONE, its next column `vt` ([F]) along F every 16 features, from the
/// rows' cache lines the broadcasts just touched. Returns the number of rows done.
///
/// # Safety
/// The CPU has AVX512-F and AVX512-VL; `x` is readable for `rows` rows of F values, `v` for F
/// rows of `wide` values and, with ONE, `vt` for F values; `s` is writable for `wide` values
/// (`wide + 1` with ONE) at each of `rows` rows `s_stride` apart.
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn scores_rows<const M: usize, const H: bool, const ONE: bool, const RB: usize>(
    x: *const f32,
    f: usize,
    rows: usize,
    v: *const f32,
    vt: *const f32,
    s: *mut f32,
    s_stride: usize,
) -> usize {
    // SAFETY: the caller upholds the `# Safety` contract above: the CPU has AVX512-F and -VL, so
    // the intrinsics are sound, and the loops stay within `rows` rows, F features and the
    // `wide` (+ 1) columns it states (the extra column's tail loads are masked to F).
    unsafe {
        let wide = M * LANES + if H { 8 } else { 0 };
        let mut r = 0;
        while r + RB <= rows {
            let mut acc = [[_mm512_setzero_ps(); M]; RB];
            let mut half = [_mm256_setzero_ps(); RB];
            let mut extra = [_mm512_setzero_ps(); RB];
            let xr = x.add(r * f);
            let mut start = 0;
            while start < f {
                let end = if ONE { (start + LANES).min(f) } else { f };
                for j in start..end {
                    let vp = v.add(j * wide);
                    let mut vv = [_mm512_setzero_ps(); M];
                    for i in 0..M {
                        vv[i] = _mm512_loadu_ps(vp.add(i * LANES));
                    }
                    let vh = if H {
                        _mm256_loadu_ps(vp.add(M * LANES))
                    } else {
                        _mm256_setzero_ps()
                    };
                    for rr in 0..RB {
                        let xs = *xr.add(rr * f + j);
                        let xb = _mm512_set1_ps(xs);
                        for i in 0..M {
                            acc[rr][i] = _mm512_fmadd_ps(xb, vv[i], acc[rr][i]);
                        }
                        if H {
                            half[rr] = _mm256_fmadd_ps(_mm256_set1_ps(xs), vh, half[rr]);
                        }
                    }
                }
                if ONE {
                    let mask: __mmask16 = if end - start == LANES {
                        !0
                    } else {
                        (1u16 << (end - start)) - 1
                    };
                    let vk = _mm512_maskz_loadu_ps(mask, vt.add(start));
                    for rr in 0..RB {
                        let xv = _mm512_maskz_loadu_ps(mask, xr.add(rr * f + start));
                        extra[rr] = _mm512_fmadd_ps(xv, vk, extra[rr]);
                    }
                }
                start = end;
            }
            for rr in 0..RB {
                let sp = s.add((r + rr) * s_stride);
                for i in 0..M {
                    _mm512_storeu_ps(sp.add(i * LANES), acc[rr][i]);
                }
                if H {
                    _mm256_storeu_ps(sp.add(M * LANES), half[rr]);
                }
                if ONE {
                    *sp.add(wide) = _mm512_reduce_add_ps(extra[rr]);
                }
            }
            r += RB;
        }
        r
    }
}

/// G += X^T R, FB features at a time from `start`: G's wide part [F][wide] and, with ONE
/// (FB = 8), its next column `gt` ([F]) for the same features from the same rows. Returns
/// the features done.
///
/// # Safety
/// The CPU has AVX512-F and AVX512-VL; `x` is readable for `rows` rows of F values, `r` for
/// `wide` values (`wide + 1` with ONE) at each of `rows` rows `r_stride` apart; `g` is readable
/// and writable for F rows of `wide` values and, with ONE, `gt` for F values.
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn gradient_features<const M: usize, const H: bool, const ONE: bool, const FB: usize>(
    x: *const f32,
    f: usize,
    rows: usize,
    r: *const f32,
    r_stride: usize,
    g: *mut f32,
    gt: *mut f32,
    start: usize,
) -> usize {
    // SAFETY: the caller upholds the `# Safety` contract above: the CPU has AVX512-F and -VL, so
    // the intrinsics are sound, and the loops stay within `rows` rows, F features and the
    // `wide` (+ 1) columns it states (the extra column's tail loads are masked to F).
    unsafe {
        let wide = M * LANES + if H { 8 } else { 0 };
        let mut j = start;
        while j + FB <= f {
            let mut acc = [[_mm512_setzero_ps(); M]; FB];
            let mut half = [_mm256_setzero_ps(); FB];
            for fb in 0..FB {
                let gp = g.add((j + fb) * wide);
                for i in 0..M {
                    acc[fb][i] = _mm512_loadu_ps(gp.add(i * LANES));
                }
                if H {
                    half[fb] = _mm256_loadu_ps(gp.add(M * LANES));
                }
            }
            let mut extra = if ONE {
                _mm256_loadu_ps(gt.add(j))
            } else {
                _mm256_setzero_ps()
            };
            for row in 0..rows {
                let rp = r.add(row * r_stride);
                let mut rv = [_mm512_setzero_ps(); M];
                for i in 0..M {
                    rv[i] = _mm512_loadu_ps(rp.add(i * LANES));
                }
                let rh = if H {
                    _mm256_loadu_ps(rp.add(M * LANES))
                } else {
                    _mm256_setzero_ps()
                };
                let xp = x.add(row * f + j);
                for fb in 0..FB {
                    let xs = *xp.add(fb);
                    let xb = _mm512_set1_ps(xs);
                    for i in 0..M {
                        acc[fb][i] = _mm512_fmadd_ps(xb, rv[i], acc[fb][i]);
                    }
                    if H {
                        half[fb] = _mm256_fmadd_ps(_mm256_set1_ps(xs), rh, half[fb]);
                    }
                }
                if ONE {
                    let rb = _mm256_set1_ps(*rp.add(wide));
                    extra = _mm256_fmadd_ps(rb, _mm256_loadu_ps(xp), extra);
                }
            }
            for fb in 0..FB {
                let gp = g.add((j + fb) * wide);
                for i in 0..M {
                    _mm512_storeu_ps(gp.add(i * LANES), acc[fb][i]);
                }
                if H {
                    _mm256_storeu_ps(gp.add(M * LANES), half[fb]);
                }
            }
            if ONE {
                _mm256_storeu_ps(gt.add(j), extra);
            }
            j += FB;
        }
        j
    }
}

/// Runs `$body` with consts `$m` and `$h` for `wide` = 16 M + 8 H (16..=56), `$b` the
/// rows or features per step that keep the accumulators in the 32 registers.
macro_rules! by_wide {
    ($wide:expr, $m:ident, $h:ident, $b:ident => $body:expr) => {
        match $wide {
            16 => {
                const $m: usize = 1;
                const $h: bool = false;
                const $b: usize = 12;
                $body
            }
            24 => {
                const $m: usize = 1;
                const $h: bool = true;
                const $b: usize = 10;
                $body
            }
            32 => {
                const $m: usize = 2;
                const $h: bool = false;
                const $b: usize = 8;
                $body
            }
            40 => {
                const $m: usize = 2;
                const $h: bool = true;
                const $b: usize = 8;
                $body
            }
            48 => {
                const $m: usize = 3;
                const $h: bool = false;
                const $b: usize = 6;
                $body
            }
            56 => {
                const $m: usize = 3;
                const $h: bool = true;
                const $b: usize = 6;
                $body
            }
            other => unreachable!("split kernel for {other} wide columns"),
        }
    };
}

/// S = X V over the first `wide` columns and, with `one`, the next column (transposed, at
/// `v + F wide`) in the same pass; S rows `s_stride` apart.
///
/// # Safety
/// The CPU has AVX512-F and AVX512-VL; `wide` is 16 to 56, a multiple of 8 (others panic);
/// `x` is readable for `rows` rows of F values, `v` for F rows of `wide` values and then, with
/// `one`, F more (the next column); `s` is writable for `wide` values (`wide + 1` with `one`)
/// at each of `rows` rows `s_stride` apart.
pub unsafe fn scores(
    x: *const f32,
    f: usize,
    rows: usize,
    v: *const f32,
    wide: usize,
    one: bool,
    s: *mut f32,
    s_stride: usize,
) {
    // SAFETY: the caller upholds the `# Safety` contract above; the kernels called get the same
    // CPU and, offset past the rows or features done, the rest of the same extents.
    unsafe {
        let vt = v.add(f * wide);
        by_wide!(wide, M, H, B => {
            if one {
                // Six rows a step: a 30-row block (a PRISM user) in five.
                let mut done = scores_rows::<M, H, true, 6>(x, f, rows, v, vt, s, s_stride);
                done += scores_rows::<M, H, true, 3>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride);
                done += scores_rows::<M, H, true, 2>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride);
                scores_rows::<M, H, true, 1>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride);
            } else {
                // The leftover rows of a block in halving steps, not one by one.
                let mut done = scores_rows::<M, H, false, B>(x, f, rows, v, vt, s, s_stride);
                done += scores_rows::<M, H, false, { super::half_of(B) }>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride);
                done += scores_rows::<M, H, false, { super::half_of(super::half_of(B)) }>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride);
                scores_rows::<M, H, false, 1>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride);
            }
        })
    }
}

/// G += X^T R over the first `wide` columns and, with `one`, the next column (transposed,
/// at `g + F wide`); R rows `r_stride` apart.
///
/// # Safety
/// The CPU has AVX512-F and AVX512-VL; `wide` is 16 to 56, a multiple of 8 (others panic);
/// `x` is readable for `rows` rows of F values, `r` for `wide` values (`wide + 1` with `one`)
/// at each of `rows` rows `r_stride` apart; `g` is readable and writable for F rows of `wide`
/// values and then, with `one`, F more (the next column).
pub unsafe fn gradient(
    x: *const f32,
    f: usize,
    rows: usize,
    r: *const f32,
    r_stride: usize,
    wide: usize,
    one: bool,
    g: *mut f32,
) {
    // SAFETY: the caller upholds the `# Safety` contract above; the kernels called get the same
    // CPU and, offset past the rows or features done, the rest of the same extents.
    unsafe {
        let gt = g.add(f * wide);
        by_wide!(wide, M, H, B => {
            let done = if one {
                gradient_features::<M, H, true, 8>(x, f, rows, r, r_stride, g, gt, 0)
            } else {
                gradient_features::<M, H, false, B>(x, f, rows, r, r_stride, g, gt, 0)
            };
            gradient_features::<M, H, false, 1>(x, f, rows, r, r_stride, g, gt, done);
            if one {
                // The extra column's last features (fewer than 8), plainly.
                for t in done..f {
                    for row in 0..rows {
                        *gt.add(t) += *r.add(row * r_stride + wide) * *x.add(row * f + t);
                    }
                }
            }
        })
    }
}
