//! The AVX2+FMA kernels: [`super::simd::simd_kernels`] over 256-bit vectors.

/// Rows (for S) or feature vectors (for G) per step of the narrow kernels for rank K: as many
/// as keep the K x blocking accumulators and their operands in the 16 vector registers of AVX2.
const fn narrow_blocking_avx2(k: usize) -> usize {
    if k <= 3 {
        3
    } else if k <= 6 {
        2
    } else {
        1
    }
}

/// The sum of a vector's 8 values.
#[target_feature(enable = "avx2,fma")]
fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm256_castps256_ps128(v);
    let high = _mm256_extractf128_ps(v, 1);
    let sum = _mm_add_ps(low, high);
    let shuf = _mm_movehdup_ps(sum);
    let sums = _mm_add_ps(sum, shuf);
    let shuf = _mm_movehl_ps(shuf, sums);
    _mm_cvtss_f32(_mm_add_ss(sums, shuf))
}

/// 8 bf16 values (u16 bits) widened to f32.
///
/// # Safety
/// The CPU has AVX2; `p` is readable for 8 u16 values.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_bf16_256(p: *const u16) -> std::arch::x86_64::__m256 {
    // SAFETY: the caller upholds the `# Safety` contract above: 16 readable bytes at `p`.
    unsafe {
        use std::arch::x86_64::*;
        let half = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(half)))
    }
}

super::simd::simd_kernels!("avx2,fma", 8, __m256, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps,
    _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps, hsum256, load_bf16_256,
    wide_rows: [1 => 6, 2 => 5, 3 => 3, 4 => 2, 5 => 2, 6 => 1, 7 => 1, 8 => 1],
    wide_features: [1 => 6, 2 => 5, 3 => 3, 4 => 2, 5 => 2, 6 => 1, 7 => 1, 8 => 1],
    narrow_blocking: narrow_blocking_avx2);
