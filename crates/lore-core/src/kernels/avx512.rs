//! The AVX-512 (AVX512-F) kernels: [`super::simd::simd_kernels`] over 512-bit vectors, and
//! the bf16 weighted row sum with AVX512-BW.

use super::simd::SUM_ROWS;
use super::Prefetch;

/// Rows (for S) or feature vectors (for G) per step of the narrow kernels for rank K: as many
/// as keep the K x blocking accumulators and their operands in the 32 vector registers.
const fn narrow_blocking_avx512(k: usize) -> usize {
    if k <= 6 {
        4
    } else {
        3
    }
}

/// The sum of a vector's 16 values.
#[target_feature(enable = "avx512f")]
fn hsum512(v: std::arch::x86_64::__m512) -> f32 {
    std::arch::x86_64::_mm512_reduce_add_ps(v)
}

/// 16 bf16 values (u16 bits) widened to f32: zero-extend, shift into the top half.
///
/// # Safety
/// The CPU has AVX512-F; `p` is readable for 16 u16 values.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_bf16_512(p: *const u16) -> std::arch::x86_64::__m512 {
    // SAFETY: the caller upholds the `# Safety` contract above: 32 readable bytes at `p`.
    unsafe {
        use std::arch::x86_64::*;
        let half = _mm256_loadu_si256(p as *const __m256i);
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
    }
}

super::simd::simd_kernels!("avx512f", 16, __m512, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps,
    _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps, hsum512, load_bf16_512,
    wide_rows: [1 => 8, 2 => 8, 3 => 6, 4 => 5], wide_features: [1 => 8, 2 => 8, 3 => 6, 4 => 4],
    narrow_blocking: narrow_blocking_avx512);

/// [`super::BlockKernels::weighted_row_sum_bf16`] with AVX512-BW, as the `weighted_sum` kernels (a
/// few rows at a time along F, the sums kept in `out`), with a cheaper widening: 32 bf16 values
/// widen to f32 by interleaving them with zeros within 128-bit lanes (`vpunpcklwd`/`vpunpckhwd`),
/// one op per 16 values where zero-extending across lanes and shifting takes two. That leaves the
/// features permuted within each 32, so `out` holds them so until the end; each feature's sum still
/// runs over the rows in order: the bits of the f32 kernel.
///
/// # Safety
/// The CPU has AVX512-F and AVX512-BW; `x` is readable for `rows` rows of `f` u16 values, `d`
/// for `rows` values, and `out` writable for `f` values.
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::needless_range_loop)]
pub(super) unsafe fn weighted_sum_bf16_avx512bw(
    x: *const u16,
    f: usize,
    rows: usize,
    d: *const f32,
    out: *mut f32,
    ahead: &[u8],
) {
    // SAFETY: the caller upholds the `# Safety` contract above: the CPU has AVX512-F and -BW,
    // the loops stay within `rows` rows and `f` features (32 a step up to `whole`, then one
    // at a time), and `out` is written for `f` values.
    unsafe {
        use std::arch::x86_64::*;
        const RG: usize = SUM_ROWS;
        let whole = f / 32 * 32;
        let mut ahead = Prefetch::new(ahead, rows.div_ceil(RG) * (whole / 32));
        let zero = _mm512_setzero_si512();
        if rows == 0 {
            std::ptr::write_bytes(out, 0, whole);
        }
        let mut r = 0;
        while r < rows {
            let n = (rows - r).min(RG);
            let mut dv = [_mm512_setzero_ps(); RG];
            for i in 0..n {
                dv[i] = _mm512_set1_ps(*d.add(r + i));
            }
            for j in (0..whole).step_by(32) {
                ahead.step();
                let (mut low, mut high) = if r == 0 {
                    (_mm512_setzero_ps(), _mm512_setzero_ps())
                } else {
                    (
                        _mm512_loadu_ps(out.add(j)),
                        _mm512_loadu_ps(out.add(j + 16)),
                    )
                };
                for i in 0..n {
                    let v = _mm512_loadu_si512(x.add((r + i) * f + j) as *const __m512i);
                    let a = _mm512_castsi512_ps(_mm512_unpacklo_epi16(zero, v));
                    let b = _mm512_castsi512_ps(_mm512_unpackhi_epi16(zero, v));
                    low = _mm512_fmadd_ps(dv[i], a, low);
                    high = _mm512_fmadd_ps(dv[i], b, high);
                }
                _mm512_storeu_ps(out.add(j), low);
                _mm512_storeu_ps(out.add(j + 16), high);
            }
            r += n;
        }
        // Back in feature order: 128-bit lane L of `low` holds features 8L..8L+3 of its 32, and of
        // `high` 8L+4..8L+7.
        let first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
        let second =
            _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
        for j in (0..whole).step_by(32) {
            let (low, high) = (
                _mm512_loadu_ps(out.add(j)),
                _mm512_loadu_ps(out.add(j + 16)),
            );
            _mm512_storeu_ps(out.add(j), _mm512_permutex2var_ps(low, first, high));
            _mm512_storeu_ps(out.add(j + 16), _mm512_permutex2var_ps(low, second, high));
        }
        for t in whole..f {
            let mut acc = 0.0f32;
            for i in 0..rows {
                let value = f32::from_bits((*x.add(i * f + t) as u32) << 16);
                acc = (*d.add(i)).mul_add(value, acc);
            }
            *out.add(t) = acc;
        }
    }
}
