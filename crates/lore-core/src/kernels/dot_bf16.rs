//! Mixed-precision block products with AVX512-BF16 (`vdpbf16ps`): bf16 operands, f32
//! accumulation. One `vdpbf16ps` does 32 multiply-adds, twice an f32 FMA's 16, at the same rate
//! on CPUs that have it, so these kernels halve the compute of a pass.
//!
//! `vdpbf16ps` sums the products of adjacent bf16 pairs into each f32 lane, so each product is
//! laid out with its summed dimension paired:
//! - S = X V sums over features: V is packed as pairs of consecutive features, [F/2][stride]
//!   32-bit words (feature 2q in the low half, 2q + 1 in the high half), and each row of X
//!   already holds its features in pairs, so one 32-bit broadcast feeds a row.
//! - G += X^T R sums over rows: X's rows are paired ([`pair_rows`], [rows/2] rows of F words,
//!   [`paired_row_words`] apart: row 2p low, 2p + 1 high) and so are R's ([`pair_residuals`],
//!   rounded to bf16).

use std::arch::x86_64::*;

const LANES: usize = 16;

/// Words between paired rows: F and one cache line more. With F = 4096 the rows would lie 16 KB
/// apart, all in one L1 set, and the gradient, which reads a few words of every pair in turn,
/// would miss L1 on each; padded it ran 16% faster (`examples/mixed_probe.rs`).
pub const fn paired_row_words(f: usize) -> usize {
    f + LANES
}

/// Whether this CPU runs these kernels.
pub fn is_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

#[inline(always)]
unsafe fn dot(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
    _mm512_dpbf16_ps(
        acc,
        std::mem::transmute::<__m512i, __m512bh>(a),
        std::mem::transmute::<__m512i, __m512bh>(b),
    )
}

/// `$acc += $v . broadcast(word)` for the bf16 pair at address `$at` (512-bit `zmm`, or
/// 256-bit `ymm`), with the broadcast folded into `vdpbf16ps`'s memory operand.
///
/// Written as asm because, where one word feeds both a 512- and a 256-bit product, the
/// compiler broadcasts it once into a register instead, a separate op per row: 13% slower on
/// the K = 25 loop (Zen 4). A macro, since the register classes need the caller's target
/// features.
macro_rules! dot_at {
    (zmm $acc:expr, $v:expr, $at:expr) => {
        std::arch::asm!(
            "vdpbf16ps {acc}, {v}, dword ptr [{at}]{{1to16}}",
            acc = inout(zmm_reg) $acc,
            v = in(zmm_reg) $v,
            at = in(reg) $at,
            options(pure, readonly, nostack, preserves_flags),
        )
    };
    (ymm $acc:expr, $v:expr, $at:expr) => {
        std::arch::asm!(
            "vdpbf16ps {acc}, {v}, dword ptr [{at}]{{1to8}}",
            acc = inout(ymm_reg) $acc,
            v = in(ymm_reg) $v,
            at = in(reg) $at,
            options(pure, readonly, nostack, preserves_flags),
        )
    };
}

/// The bf16 (round to nearest even) of each of `x`'s values.
///
/// # Safety
/// The CPU must have AVX512-BF16 ([`is_available`]).
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
pub unsafe fn narrow_rows(x: &[f32], out: &mut [u16]) {
    assert_eq!(x.len(), out.len());
    let full = x.len() / LANES * LANES;
    let (src, dst) = (x.as_ptr(), out.as_mut_ptr());
    let mut i = 0;
    while i < full {
        let packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(i)));
        _mm256_storeu_si256(
            dst.add(i) as *mut __m256i,
            std::mem::transmute::<__m256bh, __m256i>(packed),
        );
        i += LANES;
    }
    for t in full..x.len() {
        out[t] = half::bf16::from_f32(x[t]).to_bits();
    }
}

/// Pairs the bf16 rows `x` ([rows x F]) for the gradient: `out` [ceil(rows/2) x paired_row_words(F)] words,
/// row 2p in the low half, row 2p + 1 (or zero past the last row) in the high half.
///
/// # Safety
/// The CPU must have AVX512-BF16 ([`is_available`]).
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn pair_rows(x: &[u16], f: usize, out: &mut [u32]) {
    let rows = x.len() / f;
    let pairs = rows.div_ceil(2);
    let out_stride = paired_row_words(f);
    assert_eq!(x.len(), rows * f);
    assert_eq!(out.len(), pairs * out_stride);
    let full = f / LANES * LANES;
    for p in 0..pairs {
        let a = x.as_ptr().add(2 * p * f);
        let second = 2 * p + 1 < rows;
        let dst = out.as_mut_ptr().add(p * out_stride);
        let mut j = 0;
        while j < full {
            let low = _mm512_cvtepu16_epi32(_mm256_loadu_si256(a.add(j) as *const __m256i));
            let word = if second {
                let high =
                    _mm512_cvtepu16_epi32(_mm256_loadu_si256(a.add(f + j) as *const __m256i));
                _mm512_or_si512(low, _mm512_slli_epi32::<16>(high))
            } else {
                low
            };
            _mm512_storeu_si512(dst.add(j) as *mut __m512i, word);
            j += LANES;
        }
        for t in full..f {
            let high = if second { *a.add(f + t) as u32 } else { 0 };
            *dst.add(t) = *a.add(t) as u32 | high << 16;
        }
    }
}

/// Pairs the residual rows `r` ([rows x stride], f32) rounded to bf16: `out`
/// [ceil(rows/2) x stride] words, row 2p low, 2p + 1 (or zero) high. `stride` is a whole
/// number of vectors.
///
/// # Safety
/// The CPU must have AVX512-BF16 ([`is_available`]).
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
pub unsafe fn pair_residuals(r: &[f32], stride: usize, out: &mut [u32]) {
    let rows = r.len() / stride;
    let pairs = rows.div_ceil(2);
    assert_eq!(stride % LANES, 0);
    assert_eq!(out.len(), pairs * stride);
    let widen = |v: __m512| {
        let bits = std::mem::transmute::<__m256bh, __m256i>(_mm512_cvtneps_pbh(v));
        _mm512_cvtepu16_epi32(bits)
    };
    for p in 0..pairs {
        let a = r.as_ptr().add(2 * p * stride);
        let second = 2 * p + 1 < rows;
        let dst = out.as_mut_ptr().add(p * stride);
        for j in (0..stride).step_by(LANES) {
            let low = widen(_mm512_loadu_ps(a.add(j)));
            let word = if second {
                let high = widen(_mm512_loadu_ps(a.add(stride + j)));
                _mm512_or_si512(low, _mm512_slli_epi32::<16>(high))
            } else {
                low
            };
            _mm512_storeu_si512(dst.add(j) as *mut __m512i, word);
        }
    }
}

#[inline(always)]
unsafe fn dot_half(acc: __m256, a: __m256i, b: __m256i) -> __m256 {
    _mm256_dpbf16_ps(
        acc,
        std::mem::transmute::<__m256i, __m256bh>(a),
        std::mem::transmute::<__m256i, __m256bh>(b),
    )
}

/// S for RB rows at a time from bf16 rows `x` ([rows x F]); S rows `s_stride` apart. V's wide
/// part is paired, [ceil(F/2)][wide] words with wide = 16 M + 8 H (a 256-bit half with H);
/// with ONE, one more column `vt` ([F/2] words, F even) runs along F in the same pass, every
/// 32 features, and the rows loaded for it are paired into `paired` ([RB/2 per step][F]
/// words, as [`pair_rows`] does; RB even or 1, the rows before even). Returns the rows done.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx512bw")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn scores_rows<const M: usize, const H: bool, const ONE: bool, const RB: usize>(
    x: *const u16,
    f: usize,
    rows: usize,
    v: *const u32,
    vt: *const u32,
    s: *mut f32,
    s_stride: usize,
    paired: *mut u32,
) -> usize {
    let wide = M * LANES + if H { 8 } else { 0 };
    let whole_pairs = f / 2;
    let ps = paired_row_words(f);
    let mut r = 0;
    while r + RB <= rows {
        let mut acc = [[_mm512_setzero_ps(); M]; RB];
        let mut half = [_mm256_setzero_ps(); RB];
        let mut extra = [_mm512_setzero_ps(); RB];
        let xr = x.add(r * f);
        let mut start = 0;
        while start < whole_pairs {
            // 16 pairs (32 features) at a time, so the extra column takes whole vectors.
            let end = (start + LANES).min(whole_pairs);
            for q in start..end {
                let vp = v.add(q * wide);
                let mut vv = [_mm512_setzero_si512(); M];
                for i in 0..M {
                    vv[i] = _mm512_loadu_si512(vp.add(i * LANES) as *const __m512i);
                }
                let vh = if H {
                    _mm256_loadu_si256(vp.add(M * LANES) as *const __m256i)
                } else {
                    _mm256_setzero_si256()
                };
                for rr in 0..RB {
                    let at = xr.add(rr * f + 2 * q) as *const u32;
                    for i in 0..M {
                        dot_at!(zmm acc[rr][i], vv[i], at);
                    }
                    if H {
                        dot_at!(ymm half[rr], vh, at);
                    }
                }
            }
            if ONE {
                let (vk, row, dst) = (
                    vt.add(start),
                    xr.add(2 * start),
                    paired.add(r / 2 * ps + 2 * start),
                );
                // Whole groups apart, so that their masks fold away.
                if end - start == LANES {
                    extra_column::<RB>(LANES, vk, row, f, &mut extra, dst, ps);
                } else {
                    extra_column::<RB>(end - start, vk, row, f, &mut extra, dst, ps);
                }
            }
            start = end;
        }
        if f % 2 == 1 {
            // The last feature alone (never with ONE); its pair in V has a zero high half.
            let vp = v.add(whole_pairs * wide);
            for rr in 0..RB {
                let single = *xr.add(rr * f + f - 1) as i32;
                let xb = _mm512_set1_epi32(single);
                for i in 0..M {
                    let vv = _mm512_loadu_si512(vp.add(i * LANES) as *const __m512i);
                    acc[rr][i] = dot(acc[rr][i], xb, vv);
                }
                if H {
                    let vh = _mm256_loadu_si256(vp.add(M * LANES) as *const __m256i);
                    half[rr] = dot_half(half[rr], _mm256_set1_epi32(single), vh);
                }
            }
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

/// The extra column of [`scores_rows`] for `n` (<= 16) feature pairs: RB rows `f` apart from
/// `row`, against the column's pairs at `vk`, summed into `extra`; the rows are paired on the
/// way into `dst` (rows `ps` words apart).
#[inline(always)]
unsafe fn extra_column<const RB: usize>(
    n: usize,
    vk: *const u32,
    row: *const u16,
    f: usize,
    extra: &mut [__m512; RB],
    dst: *mut u32,
    ps: usize,
) {
    let mask: __mmask16 = if n == LANES { !0 } else { (1u16 << n) - 1 };
    let vk = _mm512_maskz_loadu_epi32(mask, vk as *const i32);
    let mut xv = [_mm512_setzero_si512(); RB];
    for rr in 0..RB {
        xv[rr] = _mm512_maskz_loadu_epi32(mask, row.add(rr * f) as *const i32);
        extra[rr] = dot(extra[rr], xv[rr], vk);
    }
    for pp in 0..RB.div_ceil(2) {
        let b = if 2 * pp + 1 < RB {
            xv[2 * pp + 1]
        } else {
            _mm512_setzero_si512()
        };
        store_pairs(xv[2 * pp], b, n, dst.add(pp * ps));
    }
}

/// G += X^T R from paired rows `xp` ([pairs][paired_row_words(F)] words) and paired residuals `rp` ([pairs]
/// rows `r_stride` words apart), FB features at a time from `start`: G's wide part [F][wide]
/// and, with ONE (FB = 8), its last column `gt` ([F]) for the same features. Returns the
/// features done.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl")]
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
unsafe fn gradient_features<const M: usize, const H: bool, const ONE: bool, const FB: usize>(
    xp: *const u32,
    f: usize,
    pairs: usize,
    rp: *const u32,
    r_stride: usize,
    g: *mut f32,
    gt: *mut f32,
    start: usize,
) -> usize {
    let wide = M * LANES + if H { 8 } else { 0 };
    let ps = paired_row_words(f);
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
        for p in 0..pairs {
            let rpp = rp.add(p * r_stride);
            let mut rv = [_mm512_setzero_si512(); M];
            for i in 0..M {
                rv[i] = _mm512_loadu_si512(rpp.add(i * LANES) as *const __m512i);
            }
            let rh = if H {
                _mm256_loadu_si256(rpp.add(M * LANES) as *const __m256i)
            } else {
                _mm256_setzero_si256()
            };
            let xpp = xp.add(p * ps + j);
            for fb in 0..FB {
                let at = xpp.add(fb);
                for i in 0..M {
                    dot_at!(zmm acc[fb][i], rv[i], at);
                }
                if H {
                    dot_at!(ymm half[fb], rh, at);
                }
            }
            if ONE {
                let rb = _mm256_set1_epi32(*rpp.add(wide) as i32);
                extra = dot_half(extra, rb, _mm256_loadu_si256(xpp as *const __m256i));
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

/// Rows per step of [`scores_rows`]: as many as keep the accumulators and operands in the
/// 32 registers, at most 10.
const fn score_blocking(m: usize, h: bool, one: bool) -> usize {
    let per_row = m + h as usize + one as usize;
    let fixed = m + h as usize + 3;
    let fit = (32 - fixed) / per_row;
    if fit > 10 {
        10
    } else {
        fit
    }
}

/// Features per step of [`gradient_features`]: 8 where the accumulators fit, else 4.
const fn gradient_blocking(m: usize, h: bool) -> usize {
    if 8 * (m + h as usize) + m + h as usize + 3 <= 32 {
        8
    } else {
        4
    }
}

/// Whether kernels exist for `wide` columns with `one` more along F: wide a multiple of 8
/// from 16 to 64, the extra column only up to 40 wide (beyond that its accumulators would not
/// fit).
pub fn supports(wide: usize, one: bool) -> bool {
    wide.is_multiple_of(8) && (16..=64).contains(&wide) && (!one || wide <= 40)
}

/// Runs `$body` with consts `$m`, `$h` (wide = 16 M + 8 H) and `$one`.
macro_rules! by_shape {
    ($wide:expr, $one_value:expr, $m:ident, $h:ident, $one:ident => $body:expr) => {
        match ($wide, $one_value) {
            (16, false) => {
                const $m: usize = 1;
                const $h: bool = false;
                const $one: bool = false;
                $body
            }
            (16, true) => {
                const $m: usize = 1;
                const $h: bool = false;
                const $one: bool = true;
                $body
            }
            (24, false) => {
                const $m: usize = 1;
                const $h: bool = true;
                const $one: bool = false;
                $body
            }
            (24, true) => {
                const $m: usize = 1;
                const $h: bool = true;
                const $one: bool = true;
                $body
            }
            (32, false) => {
                const $m: usize = 2;
                const $h: bool = false;
                const $one: bool = false;
                $body
            }
            (32, true) => {
                const $m: usize = 2;
                const $h: bool = false;
                const $one: bool = true;
                $body
            }
            (40, false) => {
                const $m: usize = 2;
                const $h: bool = true;
                const $one: bool = false;
                $body
            }
            (40, true) => {
                const $m: usize = 2;
                const $h: bool = true;
                const $one: bool = true;
                $body
            }
            (48, false) => {
                const $m: usize = 3;
                const $h: bool = false;
                const $one: bool = false;
                $body
            }
            (56, false) => {
                const $m: usize = 3;
                const $h: bool = true;
                const $one: bool = false;
                $body
            }
            (64, false) => {
                const $m: usize = 4;
                const $h: bool = false;
                const $one: bool = false;
                $body
            }
            other => unreachable!("bf16 dot kernels for {other:?}"),
        }
    };
}

/// S = X V from bf16 rows `x` ([rows x F]); `s` is [rows x s_stride]. V packed as `wide`
/// columns in pairs of features ([ceil(F/2)][wide] words) and, with `one`, one more column
/// after them ([F/2] words). Also pairs the rows for the gradient into `paired`
/// ([ceil(rows/2) x paired_row_words(F)] words, as [`pair_rows`]).
///
/// # Safety
/// The CPU must have AVX512-BF16 and AVX512-VL; [`supports`]`(wide, one)`; F even with `one`.
#[allow(clippy::too_many_arguments)]
pub unsafe fn scores(
    x: &[u16],
    f: usize,
    v: &[u32],
    wide: usize,
    one: bool,
    s: &mut [f32],
    s_stride: usize,
    paired: &mut [u32],
) {
    let rows = x.len() / f;
    let head = f.div_ceil(2) * wide;
    assert!(supports(wide, one) && (!one || f.is_multiple_of(2)));
    assert!(v.len() >= head + if one { f / 2 } else { 0 });
    assert_eq!(s.len(), rows * s_stride);
    let ps = paired_row_words(f);
    assert_eq!(paired.len(), rows.div_ceil(2) * ps);
    let x_rows = x;
    let (x, vt, v, s, out) = (
        x.as_ptr(),
        v.as_ptr().add(head),
        v.as_ptr(),
        s.as_mut_ptr(),
        paired.as_mut_ptr(),
    );
    by_shape!(wide, one, M, H, ONE => {
        if ONE {
            // Even blockings, so that every call but the last starts on an even row; the
            // rows are paired on the way.
            let mut done = scores_rows::<M, H, ONE, 6>(x, f, rows, v, vt, s, s_stride, out);
            done += scores_rows::<M, H, ONE, 2>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride, out.add(done / 2 * ps));
            scores_rows::<M, H, ONE, 1>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride, out.add(done / 2 * ps));
        } else {
            const B: usize = score_blocking(M, H, ONE);
            // The leftover rows of a block in halving steps, not one by one.
            let none = std::ptr::null_mut();
            let mut done = scores_rows::<M, H, ONE, B>(x, f, rows, v, vt, s, s_stride, none);
            done += scores_rows::<M, H, ONE, { super::half_of(B) }>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride, none);
            done += scores_rows::<M, H, ONE, { super::half_of(super::half_of(B)) }>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride, none);
            scores_rows::<M, H, ONE, 1>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride, none);
            pair_rows(x_rows, f, paired);
        }
    })
}

/// G += X^T R from paired rows `xp` ([pairs x paired_row_words(F)] words) and paired residuals `rp` ([pairs x
/// r_stride] words); G packed as [F][wide] and, with `one`, one more column [F] after it.
///
/// # Safety
/// As [`scores`]; `g` holds F x (wide + one) values.
#[allow(clippy::too_many_arguments)]
pub unsafe fn accumulate_gradient(
    xp: &[u32],
    f: usize,
    rp: &[u32],
    r_stride: usize,
    wide: usize,
    one: bool,
    g: &mut [f32],
) {
    let ps = paired_row_words(f);
    let pairs = xp.len() / ps;
    assert_eq!(xp.len(), pairs * ps);
    assert!(supports(wide, one));
    assert_eq!(rp.len(), pairs * r_stride);
    assert!(g.len() >= f * (wide + one as usize));
    let (xp, rp, gt, g) = (
        xp.as_ptr(),
        rp.as_ptr(),
        g.as_mut_ptr().add(f * wide),
        g.as_mut_ptr(),
    );
    by_shape!(wide, one, M, H, ONE => {
        const FB: usize = if ONE { 8 } else { gradient_blocking(M, H) };
        let done = gradient_features::<M, H, ONE, FB>(xp, f, pairs, rp, r_stride, g, gt, 0);
        gradient_features::<M, H, false, 1>(xp, f, pairs, rp, r_stride, g, gt, done);
        if ONE {
            // The last features (fewer than 8) of the extra column.
            for t in done..f {
                let mut sum = *gt.add(t);
                for p in 0..pairs {
                    let (word, r) = (*xp.add(p * ps + t), *rp.add(p * r_stride + wide));
                    sum += bf16_low(word) * bf16_low(r) + bf16_high(word) * bf16_high(r);
                }
                *gt.add(t) = sum;
            }
        }
    })
}

/// Pairs two rows' 2 n (n <= 16) features, loaded as 32 bf16 each, into `dst` (2 n words):
/// unpack interleaves 16-bit values within 128-bit lanes, the permutes restore the order.
#[inline(always)]
unsafe fn store_pairs(a: __m512i, b: __m512i, n: usize, dst: *mut u32) {
    let words = 2 * n;
    let first_mask: __mmask16 = if words >= LANES {
        !0
    } else {
        (1u16 << words) - 1
    };
    let second_mask: __mmask16 = if words >= 2 * LANES {
        !0
    } else if words > LANES {
        (1u16 << (words - LANES)) - 1
    } else {
        0
    };
    let low = _mm512_unpacklo_epi16(a, b);
    let high = _mm512_unpackhi_epi16(a, b);
    let first = _mm512_permutex2var_epi64(low, _mm512_set_epi64(11, 10, 3, 2, 9, 8, 1, 0), high);
    let second = _mm512_permutex2var_epi64(low, _mm512_set_epi64(15, 14, 7, 6, 13, 12, 5, 4), high);
    _mm512_mask_storeu_epi32(dst as *mut i32, first_mask, first);
    _mm512_mask_storeu_epi32(dst.add(LANES) as *mut i32, second_mask, second);
}

/// Small K: S = X V with V transposed in bf16 pairs ([K][F/2] words), RB rows at a time along
/// F (32 features a step), pairing the rows into `paired` on the way (RB even, or 1 for a
/// last odd row). Returns the rows done.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx512bw")]
#[allow(clippy::needless_range_loop)]
unsafe fn scores_narrow_rows<const K: usize, const RB: usize>(
    x: *const u16,
    f: usize,
    rows: usize,
    vt: *const u32,
    s: *mut f32,
    paired: *mut u32,
) -> usize {
    let half_f = f / 2;
    let ps = paired_row_words(f);
    let mut r = 0;
    while r + RB <= rows {
        let mut acc = [[_mm512_setzero_ps(); K]; RB];
        let xr = x.add(r * f);
        let mut start = 0;
        while start < half_f {
            let n = (half_f - start).min(LANES);
            let mask: __mmask16 = if n == LANES { !0 } else { (1u16 << n) - 1 };
            let mut xv = [_mm512_setzero_si512(); RB];
            for rr in 0..RB {
                xv[rr] = _mm512_maskz_loadu_epi32(mask, xr.add(rr * f + 2 * start) as *const i32);
            }
            for k in 0..K {
                let vk = _mm512_maskz_loadu_epi32(mask, vt.add(k * half_f + start) as *const i32);
                for rr in 0..RB {
                    acc[rr][k] = dot(acc[rr][k], xv[rr], vk);
                }
            }
            for pp in 0..RB.div_ceil(2) {
                let b = if 2 * pp + 1 < RB {
                    xv[2 * pp + 1]
                } else {
                    _mm512_setzero_si512()
                };
                store_pairs(xv[2 * pp], b, n, paired.add((r / 2 + pp) * ps + 2 * start));
            }
            start += n;
        }
        for rr in 0..RB {
            for k in 0..K {
                *s.add((r + rr) * K + k) = _mm512_reduce_add_ps(acc[rr][k]);
            }
        }
        r += RB;
    }
    r
}

/// Small K: G^T [K][F] += R^T X from paired rows and paired residuals ([pairs][K] words),
/// C vectors of 16 features at a time.
#[target_feature(enable = "avx512f,avx512bf16")]
#[allow(clippy::needless_range_loop)]
unsafe fn gradient_narrow_chunks<const K: usize, const C: usize>(
    xp: *const u32,
    f: usize,
    pairs: usize,
    rp: *const u32,
    gt: *mut f32,
) {
    let step = C * LANES;
    let ps = paired_row_words(f);
    let mut j = 0;
    while j + step <= f {
        let mut acc = [[_mm512_setzero_ps(); K]; C];
        for c in 0..C {
            for k in 0..K {
                acc[c][k] = _mm512_loadu_ps(gt.add(k * f + j + c * LANES));
            }
        }
        for p in 0..pairs {
            let mut xv = [_mm512_setzero_si512(); C];
            for c in 0..C {
                xv[c] = _mm512_loadu_si512(xp.add(p * ps + j + c * LANES) as *const __m512i);
            }
            for k in 0..K {
                let b = _mm512_set1_epi32(*rp.add(p * K + k) as i32);
                for c in 0..C {
                    acc[c][k] = dot(acc[c][k], b, xv[c]);
                }
            }
        }
        for c in 0..C {
            for k in 0..K {
                _mm512_storeu_ps(gt.add(k * f + j + c * LANES), acc[c][k]);
            }
        }
        j += step;
    }
    for t in j..f {
        for k in 0..K {
            let mut sum = *gt.add(k * f + t);
            for p in 0..pairs {
                let (word, r) = (*xp.add(p * ps + t), *rp.add(p * K + k));
                sum += bf16_low(word) * bf16_low(r) + bf16_high(word) * bf16_high(r);
            }
            *gt.add(k * f + t) = sum;
        }
    }
}

fn bf16_low(word: u32) -> f32 {
    f32::from_bits(word << 16)
}

fn bf16_high(word: u32) -> f32 {
    f32::from_bits(word & 0xffff_0000)
}

/// Runs `$body` with the const `$k` equal to `$rank` (1..=8).
macro_rules! by_rank {
    ($rank:expr, $k:ident => $body:expr) => {
        match $rank {
            1 => {
                const $k: usize = 1;
                $body
            }
            2 => {
                const $k: usize = 2;
                $body
            }
            3 => {
                const $k: usize = 3;
                $body
            }
            4 => {
                const $k: usize = 4;
                $body
            }
            5 => {
                const $k: usize = 5;
                $body
            }
            6 => {
                const $k: usize = 6;
                $body
            }
            7 => {
                const $k: usize = 7;
                $body
            }
            8 => {
                const $k: usize = 8;
                $body
            }
            other => unreachable!("narrow bf16 dot kernels for K = {other}"),
        }
    };
}

/// Rows per step of [`scores_narrow_rows`] (even): K x RB accumulators and RB rows in registers.
const fn narrow_score_rows(k: usize) -> usize {
    if k <= 6 {
        4
    } else {
        2
    }
}

/// Feature vectors per step of [`gradient_narrow_chunks`].
const fn narrow_gradient_chunks(k: usize) -> usize {
    if k <= 6 {
        4
    } else {
        3
    }
}

/// Small K (<= 8): S = X V from bf16 rows `x` ([rows x F], F even), V transposed in pairs
/// ([K][F/2] words); `s` is [rows x K]. Pairs the rows into `paired` as [`scores`] does.
///
/// # Safety
/// The CPU must have AVX512-BF16, AVX512-VL and AVX512-BW; 1 <= K <= 8.
pub unsafe fn scores_narrow(
    x: &[u16],
    f: usize,
    vt: &[u32],
    k: usize,
    s: &mut [f32],
    paired: &mut [u32],
) {
    let rows = x.len() / f;
    assert!(f.is_multiple_of(2));
    assert!(vt.len() >= k * f / 2);
    assert_eq!(s.len(), rows * k);
    let ps = paired_row_words(f);
    assert_eq!(paired.len(), rows.div_ceil(2) * ps);
    let (x, vt, s, out) = (x.as_ptr(), vt.as_ptr(), s.as_mut_ptr(), paired.as_mut_ptr());
    by_rank!(k, K => {
        const RB: usize = narrow_score_rows(K);
        let mut done = scores_narrow_rows::<K, RB>(x, f, rows, vt, s, out);
        done += scores_narrow_rows::<K, 2>(x.add(done * f), f, rows - done, vt, s.add(done * K), out.add(done / 2 * ps));
        scores_narrow_rows::<K, 1>(x.add(done * f), f, rows - done, vt, s.add(done * K), out.add(done / 2 * ps));
    })
}

/// Small K: G^T [K][F] += R^T X from paired rows `xp` ([pairs x paired_row_words(F)] words) and the residuals
/// `r` ([rows x K]), rounded to bf16 and paired into `rp` ([pairs x K] words).
///
/// # Safety
/// As [`scores_narrow`]; `gt` holds K x F values.
pub unsafe fn accumulate_gradient_narrow(
    xp: &[u32],
    f: usize,
    r: &[f32],
    k: usize,
    rp: &mut [u32],
    gt: &mut [f32],
) {
    let rows = r.len() / k;
    let pairs = rows.div_ceil(2);
    assert_eq!(xp.len(), pairs * paired_row_words(f));
    assert_eq!(rp.len(), pairs * k);
    assert!(gt.len() >= k * f);
    let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
    for (p, words) in rp.chunks_exact_mut(k).enumerate() {
        for (t, word) in words.iter_mut().enumerate() {
            let high = if 2 * p + 1 < rows {
                bits(r[(2 * p + 1) * k + t])
            } else {
                0
            };
            *word = bits(r[2 * p * k + t]) | high << 16;
        }
    }
    let (xp, rp, gt) = (xp.as_ptr(), rp.as_ptr(), gt.as_mut_ptr());
    by_rank!(k, K => gradient_narrow_chunks::<K, { narrow_gradient_chunks(K) }>(xp, f, pairs, rp, gt))
}
