//! Mixed-precision scores with AVX512-BF16 (`vdpbf16ps`): bf16 operands, f32 accumulation.
//! One `vdpbf16ps` does 32 multiply-adds, twice an f32 FMA's 16, at the same rate on CPUs that
//! have it, so these kernels halve the compute of S = X V. (The gradient needs no product with
//! K: see `BlockKernels::weighted_row_sum`.)
//!
//! `vdpbf16ps` sums the products of adjacent bf16 pairs into each f32 lane, so S = X V, which
//! sums over features, takes V packed as pairs of consecutive features, [F/2][stride] 32-bit
//! words (feature 2q in the low half, 2q + 1 in the high half); each row of X already holds its
//! features in pairs, so one 32-bit broadcast feeds a row.

use std::arch::x86_64::*;

const LANES: usize = 16;

/// Whether this CPU runs these kernels.
pub fn is_available() -> bool {
    std::arch::is_x86_feature_detected!("avx512f")
        && std::arch::is_x86_feature_detected!("avx512bf16")
        && std::arch::is_x86_feature_detected!("avx512bw")
}

/// `acc` + the dot products of the bf16 pairs of `a` and `b` in each 32-bit lane.
///
/// # Safety
/// The CPU has AVX512-BF16 (and AVX512-F).
#[inline(always)]
unsafe fn dot(acc: __m512, a: __m512i, b: __m512i) -> __m512 {
    // SAFETY: the caller's CPU has AVX512-BF16 (`# Safety` above); the transmutes only
    // reinterpret 512-bit vectors (`__m512bh` is 32 bf16 values in the same bits).
    unsafe {
        _mm512_dpbf16_ps(
            acc,
            std::mem::transmute::<__m512i, __m512bh>(a),
            std::mem::transmute::<__m512i, __m512bh>(b),
        )
    }
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
    // SAFETY: the caller's CPU has AVX512-BF16 (`# Safety` above); `x` and `out` have the same
    // length (asserted), and the loop reads and writes whole vectors below `full` <= that.
    unsafe {
        while i < full {
            let packed = _mm512_cvtneps_pbh(_mm512_loadu_ps(src.add(i)));
            _mm256_storeu_si256(
                dst.add(i) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(packed),
            );
            i += LANES;
        }
    }
    for t in full..x.len() {
        out[t] = half::bf16::from_f32(x[t]).to_bits();
    }
}

/// [`dot`] on 256-bit vectors.
///
/// # Safety
/// The CPU has AVX512-BF16 and AVX512-VL.
#[inline(always)]
unsafe fn dot_half(acc: __m256, a: __m256i, b: __m256i) -> __m256 {
    // SAFETY: the caller's CPU has AVX512-BF16 and -VL (`# Safety` above); the transmutes
    // only reinterpret 256-bit vectors.
    unsafe {
        _mm256_dpbf16_ps(
            acc,
            std::mem::transmute::<__m256i, __m256bh>(a),
            std::mem::transmute::<__m256i, __m256bh>(b),
        )
    }
}

/// S for RB rows at a time from bf16 rows `x` ([rows x F]); S rows `s_stride` apart. V's wide
/// part is paired, [ceil(F/2)][wide] words with wide = 16 M + 8 H (a 256-bit half with H);
/// with ONE, one more column `vt` ([F/2] words, F even) runs along F in the same pass, every
/// 32 features. Returns the rows done.
///
/// # Safety
/// The CPU has AVX512-BF16, -VL and -BW; `x` is readable for `rows` rows of F values, `v` for
/// ceil(F/2) rows of `wide` words and, with ONE (F even), `vt` for F/2 words; `s` is writable
/// for `wide` values (`wide + 1` with ONE) at each of `rows` rows `s_stride` apart.
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
    ahead: &mut super::Prefetch,
) -> usize {
    // SAFETY: the caller upholds the `# Safety` contract above: the CPU has the features, so the
    // intrinsics and `vdpbf16ps` are sound, and the loops stay within `rows` rows, the F
    // features (in pairs, the last one alone where F is odd) and the columns it states.
    unsafe {
        let wide = M * LANES + if H { 8 } else { 0 };
        let whole_pairs = f / 2;
        let mut r = 0;
        while r + RB <= rows {
            let mut acc = [[_mm512_setzero_ps(); M]; RB];
            let mut half = [_mm256_setzero_ps(); RB];
            let mut extra = [_mm512_setzero_ps(); RB];
            let xr = x.add(r * f);
            let mut start = 0;
            while start < whole_pairs {
                // 32 pairs (64 features) at a time, so the extra column takes whole vectors.
                let end = (start + EXTRA_PAIRS).min(whole_pairs);
                for q in start..end {
                    ahead.step();
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
                    let (vk, row) = (vt.add(start), xr.add(2 * start));
                    // Whole groups apart, so that their masks fold away.
                    if end - start == EXTRA_PAIRS {
                        extra_column::<RB>(EXTRA_PAIRS, vk, row, f, &mut extra);
                    } else {
                        extra_column::<RB>(end - start, vk, row, f, &mut extra);
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
}

/// Vectors of feature pairs between the extra column's steps in [`scores_rows`].
const EXTRA_VECTORS: usize = 4;
/// Feature pairs between the extra column's steps in [`scores_rows`].
const EXTRA_PAIRS: usize = EXTRA_VECTORS * LANES;

/// The extra column of [`scores_rows`] for `n` (<= [`EXTRA_PAIRS`]) feature pairs: RB rows
/// `f` apart from `row`, against the column's pairs at `vk`, summed into `extra`.
///
/// # Safety
/// The CPU has AVX512-BF16 and -BW; `vk` is readable for `n` words, and each of the RB rows
/// for `2 n` values (the loads past `n` are masked off).
#[inline(always)]
#[allow(clippy::needless_range_loop)]
unsafe fn extra_column<const RB: usize>(
    n: usize,
    vk: *const u32,
    row: *const u16,
    f: usize,
    extra: &mut [__m512; RB],
) {
    // SAFETY: the caller upholds the `# Safety` contract above: the loads are masked to the
    // first `n` words of the column and of each row.
    unsafe {
        let mut masks = [0 as __mmask16; EXTRA_VECTORS];
        let mut vks = [_mm512_setzero_si512(); EXTRA_VECTORS];
        for i in 0..EXTRA_VECTORS {
            let left = n.saturating_sub(i * LANES);
            masks[i] = if left >= LANES {
                !0
            } else {
                (1u16 << left) - 1
            };
            vks[i] = _mm512_maskz_loadu_epi32(masks[i], vk.add(i * LANES) as *const i32);
        }
        for rr in 0..RB {
            let at = row.add(rr * f) as *const i32;
            for i in 0..EXTRA_VECTORS {
                let xv = _mm512_maskz_loadu_epi32(masks[i], at.add(i * LANES));
                extra[rr] = dot(extra[rr], xv, vks[i]);
            }
        }
    }
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
/// after them ([F/2] words). `ahead` (the rows read next) is fetched into L2 on the way.
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
    ahead: &[u8],
) {
    let rows = x.len() / f;
    let head = f.div_ceil(2) * wide;
    assert!(supports(wide, one) && (!one || f.is_multiple_of(2)));
    assert!(v.len() >= head + if one { f / 2 } else { 0 });
    assert_eq!(s.len(), rows * s_stride);
    // SAFETY: the caller's CPU has the features and the shape is supported (`# Safety` above);
    // the asserts check that `v` holds the packed V ([ceil(F/2)][wide] words, then F/2 with
    // `one`) and `s` the rows' scores; `x` holds `rows` rows of F. The kernels read and write
    // no more, each call offset past the rows done.
    unsafe {
        let (x, vt, v, s) = (x.as_ptr(), v.as_ptr().add(head), v.as_ptr(), s.as_mut_ptr());
        by_shape!(wide, one, M, H, ONE => {
            // Six rows a step with the extra column (fewer registers left); the leftover rows of
            // a block in halving steps, not one by one.
            const B: usize = if ONE { 6 } else { score_blocking(M, H, ONE) };
            let mut ahead = super::Prefetch::new(ahead, rows.div_ceil(B) * (f / 2));
            let mut done = scores_rows::<M, H, ONE, B>(x, f, rows, v, vt, s, s_stride, &mut ahead);
            done += scores_rows::<M, H, ONE, { super::half_of(B) }>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride, &mut ahead);
            done += scores_rows::<M, H, ONE, { super::half_of(super::half_of(B)) }>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride, &mut ahead);
            scores_rows::<M, H, ONE, 1>(x.add(done * f), f, rows - done, v, vt, s.add(done * s_stride), s_stride, &mut ahead);
        })
    }
}

/// Small K: S = X V with V transposed in bf16 pairs ([K][F/2] words), RB rows at a time along
/// F (32 features a step). Returns the rows done.
///
/// # Safety
/// The CPU has AVX512-BF16, -VL and -BW; F is even; `x` is readable for `rows` rows of F
/// values, `vt` for K rows of F/2 words, and `s` writable for `rows` rows of K values.
#[target_feature(enable = "avx512f,avx512bf16,avx512vl,avx512bw")]
#[allow(clippy::needless_range_loop)]
unsafe fn scores_narrow_rows<const K: usize, const RB: usize>(
    x: *const u16,
    f: usize,
    rows: usize,
    vt: *const u32,
    s: *mut f32,
    ahead: &mut super::Prefetch,
) -> usize {
    // SAFETY: the caller upholds the `# Safety` contract above: the CPU has the features, and
    // the loads are masked to the F/2 pairs of each row and of V's K rows.
    unsafe {
        let half_f = f / 2;
        let mut r = 0;
        while r + RB <= rows {
            let mut acc = [[_mm512_setzero_ps(); K]; RB];
            let xr = x.add(r * f);
            let mut start = 0;
            while start < half_f {
                ahead.step();
                let n = (half_f - start).min(LANES);
                let mask: __mmask16 = if n == LANES { !0 } else { (1u16 << n) - 1 };
                let mut xv = [_mm512_setzero_si512(); RB];
                for rr in 0..RB {
                    xv[rr] =
                        _mm512_maskz_loadu_epi32(mask, xr.add(rr * f + 2 * start) as *const i32);
                }
                for k in 0..K {
                    let vk =
                        _mm512_maskz_loadu_epi32(mask, vt.add(k * half_f + start) as *const i32);
                    for rr in 0..RB {
                        acc[rr][k] = dot(acc[rr][k], xv[rr], vk);
                    }
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
}

/// Runs `$body` with the const `$k` equal to `$value`, one of the literals listed.
macro_rules! by_const {
    ($value:expr, $k:ident, $body:expr, $($n:literal)*) => {
        match $value {
            $($n => {
                const $k: usize = $n;
                $body
            })*
            other => unreachable!("no bf16 kernel compiled for {other}"),
        }
    };
}

/// Runs `$body` with the const `$k` equal to `$rank` (1..=8).
macro_rules! by_rank {
    ($rank:expr, $k:ident => $body:expr) => {
        by_const!($rank, $k, $body, 1 2 3 4 5 6 7 8)
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

/// Small K (<= 8): S = X V from bf16 rows `x` ([rows x F], F even), V transposed in pairs
/// ([K][F/2] words); `s` is [rows x K]. `ahead` (the rows read next) is fetched into L2 on the
/// way.
///
/// # Safety
/// The CPU must have AVX512-BF16, AVX512-VL and AVX512-BW; 1 <= K <= 8.
pub unsafe fn scores_narrow(
    x: &[u16],
    f: usize,
    vt: &[u32],
    k: usize,
    s: &mut [f32],
    ahead: &[u8],
) {
    let rows = x.len() / f;
    assert!(f.is_multiple_of(2));
    assert!(vt.len() >= k * f / 2);
    assert_eq!(s.len(), rows * k);
    // SAFETY: the caller's CPU has the features (`# Safety` above); K outside 1..=8 panics; the
    // asserts check that F is even, `vt` holds the packed V ([K][F/2] words) and `s` the rows'
    // scores; `x` holds `rows` rows of F. The kernels read and write no more, each call offset
    // past the rows done.
    unsafe {
        let (x, vt, s) = (x.as_ptr(), vt.as_ptr(), s.as_mut_ptr());
        by_rank!(k, K => {
            const RB: usize = narrow_score_rows(K);
            let mut ahead = super::Prefetch::new(ahead, rows.div_ceil(RB) * (f / 2).div_ceil(LANES));
            let mut done = scores_narrow_rows::<K, RB>(x, f, rows, vt, s, &mut ahead);
            done += scores_narrow_rows::<K, { super::half_of(RB) }>(x.add(done * f), f, rows - done, vt, s.add(done * K), &mut ahead);
            scores_narrow_rows::<K, 1>(x.add(done * f), f, rows - done, vt, s.add(done * K), &mut ahead);
        })
    }
}
