//! The layouts of V, G and S ([`Layout`]): their sizes, and packing V (and G, which shares
//! V's layout) from and to the row-major [F x K] matrices.

use super::{BlockKernels, Layout};

impl BlockKernels {
    /// Values per row of S (and of R).
    pub fn score_stride(&self) -> usize {
        match self.layout {
            Layout::Wide { stride }
            | Layout::Split { stride, .. }
            | Layout::PairedBf16 { stride, .. } => stride,
            Layout::Narrow | Layout::NarrowBf16 => self.rank,
        }
    }

    /// Length of a packed V, or G (where these are their own [`Self::gradient_kernels`]).
    pub fn packed_len(&self) -> usize {
        match self.layout {
            Layout::Wide { stride } => self.n_features * stride,
            Layout::PairedBf16 { .. } | Layout::NarrowBf16 => self.mixed_len(),
            Layout::Narrow | Layout::Split { .. } => self.n_features * self.rank,
        }
    }

    /// Mixed precision: V's words.
    fn mixed_len(&self) -> usize {
        let (f, k) = (self.n_features, self.rank);
        match self.layout {
            Layout::PairedBf16 { wide, .. } => {
                f.div_ceil(2) * wide + if k > wide { f / 2 } else { 0 }
            }
            _ => k * f / 2,
        }
    }

    /// Packs one direction v [F] for kernels of rank 1 (the fit's scores): [`Self::pack_basis`]
    /// with K = 1, inlined where the caller's instruction set vectorizes it.
    #[inline(always)]
    pub fn pack_direction(&self, v: &[f32], packed: &mut [f32]) {
        debug_assert_eq!(self.rank, 1);
        match self.layout {
            Layout::Narrow | Layout::Wide { stride: 1 } => packed.copy_from_slice(v),
            Layout::NarrowBf16 => {
                for (word, pair) in packed.iter_mut().zip(v.chunks_exact(2)) {
                    *word = f32::from_bits(bf16_bits(pair[0]) | bf16_bits(pair[1]) << 16);
                }
            }
            _ => self.pack_basis(v, packed),
        }
    }

    /// Packs V [F x K] (row-major) into this layout; padding is zero.
    pub fn pack_basis(&self, basis: &[f32], packed: &mut [f32]) {
        let (f, k) = (self.n_features, self.rank);
        debug_assert_eq!(basis.len(), f * k);
        debug_assert_eq!(packed.len(), self.packed_len());
        match self.layout {
            Layout::Wide { stride } => {
                for (dst, src) in packed.chunks_exact_mut(stride).zip(basis.chunks_exact(k)) {
                    dst[..k].copy_from_slice(src);
                    dst[k..].fill(0.0);
                }
            }
            Layout::Narrow => transpose_columns(basis, k, 0, packed),
            Layout::NarrowBf16 => {
                let (words, rest) = packed.split_at_mut(k * f / 2);
                for (t, row) in words.chunks_exact_mut(f / 2).enumerate() {
                    for (q, word) in row.iter_mut().enumerate() {
                        *word = bf16_pair(basis[2 * q * k + t], basis[(2 * q + 1) * k + t]);
                    }
                }
                rest.fill(0.0);
            }
            Layout::PairedBf16 { wide, .. } => {
                let (words, rest) = packed.split_at_mut(f.div_ceil(2) * wide);
                let n = k.min(wide);
                for (q, dst) in words.chunks_exact_mut(wide).enumerate() {
                    let low = &basis[2 * q * k..][..k];
                    // Past the last feature (F odd) the high halves are zero.
                    let high = basis.get((2 * q + 1) * k..(2 * q + 2) * k).unwrap_or(&[]);
                    for t in 0..n {
                        dst[t] = bf16_pair(low[t], high.get(t).copied().unwrap_or(0.0));
                    }
                    dst[n..].fill(0.0);
                }
                rest.fill(0.0);
                if k > wide {
                    for (q, word) in rest[..f / 2].iter_mut().enumerate() {
                        *word = bf16_pair(basis[2 * q * k + wide], basis[(2 * q + 1) * k + wide]);
                    }
                }
            }
            Layout::Split { wide, .. } => {
                let (head, tail) = packed.split_at_mut(f * wide);
                for (dst, src) in head.chunks_exact_mut(wide).zip(basis.chunks_exact(k)) {
                    dst.copy_from_slice(&src[..wide]);
                }
                transpose_columns(basis, k, wide, tail);
            }
        }
    }

    /// Unpacks a packed gradient into G [F x K] (row-major), overwriting it.
    pub fn unpack_gradient(&self, packed: &[f32], grad: &mut [f32]) {
        let (f, k) = (self.n_features, self.rank);
        match self.layout {
            Layout::Wide { stride } => {
                for (dst, src) in grad.chunks_exact_mut(k).zip(packed.chunks_exact(stride)) {
                    dst.copy_from_slice(&src[..k]);
                }
            }
            Layout::PairedBf16 { .. } | Layout::NarrowBf16 => {
                unreachable!("G is packed for the gradient kernels (gradient_kernels)")
            }
            Layout::Narrow => untranspose_columns(packed, k, 0, grad),
            Layout::Split { wide, .. } => {
                let (head, tail) = packed.split_at(f * wide);
                for (dst, src) in grad.chunks_exact_mut(k).zip(head.chunks_exact(wide)) {
                    dst[..wide].copy_from_slice(src);
                }
                untranspose_columns(tail, k, wide, grad);
            }
        }
    }
}

/// Writes columns `first..k` of the row-major [F x k] `matrix` transposed, [k - first][F].
fn transpose_columns(matrix: &[f32], k: usize, first: usize, out: &mut [f32]) {
    let f = matrix.len() / k;
    for (j, row) in matrix.chunks_exact(k).enumerate() {
        for (t, &v) in row[first..].iter().enumerate() {
            out[t * f + j] = v;
        }
    }
}

/// The inverse of [`transpose_columns`]: fills columns `first..k` of `matrix` from `packed`.
fn untranspose_columns(packed: &[f32], k: usize, first: usize, matrix: &mut [f32]) {
    let f = matrix.len() / k;
    for (j, row) in matrix.chunks_exact_mut(k).enumerate() {
        for (t, g) in row[first..].iter_mut().enumerate() {
            *g = packed[t * f + j];
        }
    }
}

/// An f32 rounded to bf16 (nearest even, as the hardware's conversion; a NaN stays a quiet
/// NaN), its 16 bits in a u32.
#[inline(always)]
fn bf16_bits(v: f32) -> u32 {
    let bits = v.to_bits();
    if v.is_nan() {
        return (bits >> 16) | 0x40;
    }
    (bits + 0x7fff + ((bits >> 16) & 1)) >> 16
}

/// Two f32 values rounded to bf16 (nearest even) in one 32-bit word, `low` in the low half,
/// kept in an f32 slot of a packed V (only ever copied as bits).
#[inline]
fn bf16_pair(low: f32, high: f32) -> f32 {
    let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
    f32::from_bits(bits(low) | bits(high) << 16)
}
