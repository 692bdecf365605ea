//! The block products of a pass over the data: S_b = X_b V, each user's weighted row sum
//! X_u^T d_u, and G += X^T R for a batch of users' sums and weights (a user's residuals are
//! rank one, R_u = d_u w_u^T, so the gradient needs no product of the rows with K columns).
//!
//! [`BlockKernels`] picks, once, the instruction set (AVX-512, AVX2+FMA, or portable loops) and
//! a layout for V and G: `Wide` keeps V as [F][stride] with K padded to whole vectors and
//! broadcasts x (register-blocked over rows for S and over features for G); `Narrow` (K <= 8)
//! keeps V and G transposed, [K][F], and runs along F; `Split` (AVX-512, K > 16 where padding
//! wastes much) runs the first multiple of 8 columns wide with a 256-bit half vector and the
//! rest transposed, a single leftover column in the same pass. Every SIMD kernel is tested
//! against the plain scalar loops [`block_scores`] and [`block_accumulate_gradient`].

/// Instruction sets the kernels are compiled for, chosen at run time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Isa {
    Avx512,
    Avx2,
    Portable,
}

impl Isa {
    /// The best instruction set this CPU supports.
    pub fn detect() -> Self {
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        Isa::Portable
    }

    /// Whether this CPU can run kernels for `self`.
    pub fn is_available(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => std::arch::is_x86_feature_detected!("avx512f"),
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Portable => 1,
        }
    }

    /// Largest number of vectors per padded row the wide kernels are compiled for.
    fn max_wide_vectors(self) -> usize {
        match self {
            Isa::Avx512 => 4,
            Isa::Avx2 => 8,
            Isa::Portable => usize::MAX,
        }
    }
}

/// How V, G and the scores S are laid out for the kernels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// V and G as [F][stride], S as [rows][stride], stride = K rounded up to whole vectors.
    Wide { stride: usize },
    /// V and G as [K][F] (transposed), S as [rows][K].
    Narrow,
    /// AVX-512 only: the first `wide` columns (a multiple of 8) as [F][wide], run with whole
    /// 512-bit vectors plus a 256-bit half, then the other K - wide (< 8) columns transposed,
    /// [K - wide][F], run along F; S as [rows][stride]. Costs less than padding K to whole
    /// 512-bit vectors where a 256-bit FMA takes half the time of a 512-bit one (AMD Zen 4).
    Split { stride: usize, wide: usize },
    /// Mixed precision (AVX512-BF16): V's first `wide` columns rounded to bf16 in pairs of
    /// consecutive features, [ceil(F/2)][wide] 32-bit words, then (where K = wide + 1) the
    /// last column's [F/2] words; S as [rows][stride]. `wide` is `stride` (K padded) or K
    /// rounded down to 8 (whole 512-bit vectors and a 256-bit half). G is packed for the f32
    /// kernels of the shape ([`BlockKernels::gradient_kernels`]). The pass feeds bf16 rows;
    /// see [`BlockKernels::mixed_bf16`].
    PairedBf16 { stride: usize, wide: usize },
    /// Mixed precision for K <= 8 (F even): V transposed and rounded to bf16, [K][F/2] words
    /// of feature pairs; G as for `PairedBf16`; S as [rows][K].
    NarrowBf16,
}

/// The kernels for one problem shape (F, K) on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockKernels {
    isa: Isa,
    layout: Layout,
    n_features: usize,
    rank: usize,
}

impl BlockKernels {
    /// The fastest kernels for F features and rank K on this CPU.
    pub fn new(n_features: usize, rank: usize) -> Self {
        Self::with_isa(Isa::detect(), n_features, rank)
    }

    /// Kernels for a given instruction set (falls back to portable when the CPU lacks it or
    /// the rank is beyond what the SIMD kernels are compiled for).
    pub fn with_isa(isa: Isa, n_features: usize, rank: usize) -> Self {
        let isa = if isa.is_available() {
            isa
        } else {
            Isa::Portable
        };
        let lanes = isa.lanes();
        let vectors = rank.div_ceil(lanes);
        let (isa, layout) = match isa {
            Isa::Portable => (isa, Layout::Wide { stride: rank }),
            _ if rank <= 8 => (isa, Layout::Narrow),
            Isa::Avx512 if split_pays(rank) && rank < 64 && has_avx512vl() => (
                isa,
                Layout::Split {
                    stride: vectors * lanes,
                    wide: rank / 8 * 8,
                },
            ),
            _ if vectors <= isa.max_wide_vectors() => (
                isa,
                Layout::Wide {
                    stride: vectors * lanes,
                },
            ),
            _ => (Isa::Portable, Layout::Wide { stride: rank }),
        };
        Self {
            isa,
            layout,
            n_features,
            rank,
        }
    }

    /// Mixed-precision kernels (bf16 products, f32 sums) for F features and rank K, where
    /// this CPU has AVX512-BF16 (and AVX512-VL) and K <= 64; `None` otherwise.
    pub fn mixed_bf16(n_features: usize, rank: usize) -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        if rank > 0 && rank <= 64 && mixed_bf16_available() {
            if rank <= 8 && n_features.is_multiple_of(2) {
                return Some(Self {
                    isa: Isa::Avx512,
                    layout: Layout::NarrowBf16,
                    n_features,
                    rank,
                });
            }
            let stride = rank.div_ceil(16) * 16;
            let split = rank / 8 * 8;
            let extra = rank - split;
            let wide = if rank > 16
                && extra <= 1
                && !rank.is_multiple_of(16)
                && dot_bf16::supports(split, extra == 1)
                && n_features.is_multiple_of(2)
            {
                split
            } else {
                stride
            };
            return Some(Self {
                isa: Isa::Avx512,
                layout: Layout::PairedBf16 { stride, wide },
                n_features,
                rank,
            });
        }
        let _ = (n_features, rank);
        None
    }

    /// Whether these are the mixed-precision kernels: the pass then runs
    /// [`Self::scores_mixed`] (and sums G with [`Self::gradient_kernels`]).
    pub fn is_mixed_bf16(&self) -> bool {
        matches!(self.layout, Layout::PairedBf16 { .. } | Layout::NarrowBf16)
    }

    /// Kernels with K padded to whole vectors (never the split layout), for comparisons.
    pub fn padded(isa: Isa, n_features: usize, rank: usize) -> Self {
        let mut kernels = Self::with_isa(isa, n_features, rank);
        if let Layout::Split { stride, .. } = kernels.layout {
            kernels.layout = Layout::Wide { stride };
        }
        kernels
    }

    pub fn isa(&self) -> Isa {
        self.isa
    }
    pub fn layout(&self) -> Layout {
        self.layout
    }

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

    /// S = X V for the rows of `x` ([rows x F]); `s` is [rows x score_stride()]. `ahead`, the
    /// stored bytes of the rows the caller reads next, is fetched into L2 on the way by the
    /// narrow kernels (small K, where a pass waits on memory; more compute hides it otherwise).
    pub fn scores(&self, x: &[f32], packed_basis: &[f32], s: &mut [f32], ahead: &[u8]) {
        let f = self.n_features;
        let rows = x.len() / f;
        let stride = self.score_stride();
        assert_eq!(x.len(), rows * f);
        assert_eq!(packed_basis.len(), self.packed_len());
        assert_eq!(s.len(), rows * stride);
        let (x_in, v, s_out) = (x.as_ptr(), packed_basis.as_ptr(), s.as_mut_ptr());
        match (self.isa, self.layout) {
            (Isa::Portable, _) => block_scores(x, f, packed_basis, self.rank, s),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Wide { stride }) => unsafe {
                avx512::scores_wide(x_in, f, rows, v, stride, s_out)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Narrow) => unsafe {
                avx512::scores_narrow(x_in, f, rows, v, self.rank, s_out, stride, ahead)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Split { stride, wide }) => unsafe {
                let rest = self.rank - wide;
                avx512_split::scores(x_in, f, rows, v, wide, rest == 1, s_out, stride);
                if rest > 1 {
                    avx512::scores_narrow(
                        x_in,
                        f,
                        rows,
                        v.add(f * wide),
                        rest,
                        s_out.add(wide),
                        stride,
                        &[],
                    )
                }
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Wide { stride }) => unsafe {
                avx2::scores_wide(x_in, f, rows, v, stride, s_out)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Narrow) => unsafe {
                avx2::scores_narrow(x_in, f, rows, v, self.rank, s_out, stride, ahead)
            },
            #[cfg(target_arch = "x86_64")]
            _ => unreachable!("no kernels for {:?} with {:?}", self.isa, self.layout),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("SIMD kernels exist only on x86_64"),
        }
    }

    /// Mixed precision: S = X V for bf16 rows `x` (their u16 bits, [rows x F]), bf16
    /// products summed in f32; `s` is [rows x score_stride()]. `ahead` (the rows read next)
    /// is fetched into L2 on the way.
    pub fn scores_mixed(&self, x: &[u16], packed_basis: &[f32], s: &mut [f32], ahead: &[u8]) {
        assert!(
            self.is_mixed_bf16(),
            "scores_mixed needs the mixed-precision kernels"
        );
        assert_eq!(packed_basis.len(), self.packed_len());
        // f32 and u32 share size and alignment; the packed words are bf16 pairs.
        let v = unsafe {
            std::slice::from_raw_parts(packed_basis.as_ptr() as *const u32, packed_basis.len())
        };
        let Layout::PairedBf16 { stride, wide } = self.layout else {
            #[cfg(target_arch = "x86_64")]
            unsafe {
                dot_bf16::scores_narrow(x, self.n_features, v, self.rank, s, ahead)
            }
            return;
        };
        #[cfg(target_arch = "x86_64")]
        unsafe {
            dot_bf16::scores(
                x,
                self.n_features,
                v,
                wide,
                self.rank > wide,
                s,
                stride,
                ahead,
            )
        }
    }

    /// Mixed precision: f32 rows rounded to bf16 (nearest even), for inputs stored wider.
    pub fn narrow_rows(&self, x: &[f32], out: &mut [u16]) {
        assert!(
            self.is_mixed_bf16(),
            "narrow_rows needs the mixed-precision kernels"
        );
        #[cfg(target_arch = "x86_64")]
        unsafe {
            dot_bf16::narrow_rows(x, out)
        }
    }

    /// The f32 kernels whose packed G [`Self::weighted_row_sum`]'s users are summed into: these
    /// kernels, or for mixed precision the f32 ones for the same shape.
    pub fn gradient_kernels(&self) -> Self {
        if self.is_mixed_bf16() {
            Self::with_isa(Isa::Avx512, self.n_features, self.rank)
        } else {
            *self
        }
    }

    /// out [F] = sum_i d_i x_i over the rows of `x` ([rows x F]), summed in row order.
    ///
    /// A user's residuals are rank one, R_u = d_u w_u^T (d_i the derivative of row i's loss,
    /// scaled), so the user's part of G = X^T R is (X_u^T d_u) w_u^T: this sum, then an outer
    /// product, instead of a product with all K columns. `ahead` as for [`Self::scores`].
    pub fn weighted_row_sum(&self, x: &[f32], d: &[f32], out: &mut [f32], ahead: &[u8]) {
        let f = self.row_sum_shape(x.len(), d, out);
        let (xp, dp, op) = (x.as_ptr() as *const u8, d.as_ptr(), out.as_mut_ptr());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::weighted_sum::<false>(xp, f, d.len(), dp, op, ahead) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::weighted_sum::<false>(xp, f, d.len(), dp, op, ahead) },
            _ => weighted_row_sum_scalar(x.chunks_exact(f.max(1)), d, out, |v| *v),
        }
    }

    /// As [`Self::weighted_row_sum`] for bf16 rows (their u16 bits), widened to f32 on the way:
    /// the same bits as from the rows widened first.
    pub fn weighted_row_sum_bf16(&self, x: &[u16], d: &[f32], out: &mut [f32], ahead: &[u8]) {
        let f = self.row_sum_shape(x.len(), d, out);
        let (xp, dp, op) = (x.as_ptr() as *const u8, d.as_ptr(), out.as_mut_ptr());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if has_avx512bw() => unsafe {
                weighted_sum_bf16_avx512bw(x.as_ptr(), f, d.len(), dp, op, ahead)
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { avx512::weighted_sum::<true>(xp, f, d.len(), dp, op, ahead) },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::weighted_sum::<true>(xp, f, d.len(), dp, op, ahead) },
            _ => weighted_row_sum_scalar(x.chunks_exact(f.max(1)), d, out, |&b| {
                f32::from_bits((b as u32) << 16)
            }),
        }
    }

    /// Checks a weighted row sum's shapes: `values` of rows, one d per row, F sums; returns F.
    fn row_sum_shape(&self, values: usize, d: &[f32], out: &[f32]) -> usize {
        let f = self.n_features;
        assert_eq!(values, d.len() * f);
        assert_eq!(out.len(), f);
        f
    }

    /// Whether [`Self::scores_bf16`] streams bf16 rows (the narrow SIMD layouts); otherwise
    /// callers widen a block first and use [`Self::scores`].
    pub fn streams_bf16(&self) -> bool {
        self.isa != Isa::Portable && self.layout == Layout::Narrow
    }

    /// S = X V for bf16 rows `x` (as their u16 bits), widened to f32 in registers (f32
    /// arithmetic, so the same bits as from the rows widened first); needs
    /// [`Self::streams_bf16`]. `ahead` as for [`Self::scores`].
    pub fn scores_bf16(&self, x: &[u16], packed_basis: &[f32], s: &mut [f32], ahead: &[u8]) {
        let (f, rows) = self.bf16_rows(x, packed_basis);
        assert_eq!(s.len(), rows * self.score_stride());
        let (x, v, s) = (x.as_ptr(), packed_basis.as_ptr(), s.as_mut_ptr());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe {
                avx512::scores_narrow_bf16(x, f, rows, v, self.rank, s, ahead)
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { avx2::scores_narrow_bf16(x, f, rows, v, self.rank, s, ahead) },
            _ => unreachable!("checked: a SIMD instruction set"),
        }
    }

    /// Checks bf16 rows `x` and a packed V for the streaming kernels; returns (F, rows).
    fn bf16_rows(&self, x: &[u16], packed: &[f32]) -> (usize, usize) {
        let f = self.n_features;
        let rows = x.len() / f;
        assert_eq!(x.len(), rows * f);
        assert_eq!(packed.len(), self.packed_len());
        assert!(
            self.streams_bf16(),
            "bf16 streaming needs the narrow SIMD layout"
        );
        (f, rows)
    }

    /// G += X^T R for the rows of `x` ([rows x F]) and `r` ([rows x score_stride()]); G packed.
    pub fn accumulate_gradient(&self, x: &[f32], r: &[f32], packed_grad: &mut [f32]) {
        let f = self.n_features;
        let rows = x.len() / f;
        let stride = self.score_stride();
        assert_eq!(x.len(), rows * f);
        assert_eq!(r.len(), rows * stride);
        assert_eq!(packed_grad.len(), self.packed_len());
        let (x_in, r_in, g) = (x.as_ptr(), r.as_ptr(), packed_grad.as_mut_ptr());
        match (self.isa, self.layout) {
            (Isa::Portable, _) => block_accumulate_gradient(x, f, r, self.rank, packed_grad),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Wide { stride }) => unsafe {
                avx512::gradient_wide(x_in, f, rows, r_in, stride, g)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Narrow) => unsafe {
                avx512::gradient_narrow(x_in, f, rows, r_in, stride, self.rank, g)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Split { stride, wide }) => unsafe {
                let rest = self.rank - wide;
                avx512_split::gradient(x_in, f, rows, r_in, stride, wide, rest == 1, g);
                if rest > 1 {
                    avx512::gradient_narrow(
                        x_in,
                        f,
                        rows,
                        r_in.add(wide),
                        stride,
                        rest,
                        g.add(f * wide),
                    )
                }
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Wide { stride }) => unsafe {
                avx2::gradient_wide(x_in, f, rows, r_in, stride, g)
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Narrow) => unsafe {
                avx2::gradient_narrow(x_in, f, rows, r_in, stride, self.rank, g)
            },
            #[cfg(target_arch = "x86_64")]
            _ => unreachable!("no kernels for {:?} with {:?}", self.isa, self.layout),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("SIMD kernels exist only on x86_64"),
        }
    }
}

/// The portable [`BlockKernels::weighted_row_sum`]: `rows` of values widened by `value`.
fn weighted_row_sum_scalar<'a, T: 'a>(
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

/// Rows at a time of the weighted row sums, their values' multipliers in registers.
#[cfg(target_arch = "x86_64")]
const SUM_ROWS: usize = 4;

/// [`BlockKernels::weighted_row_sum_bf16`] with AVX512-BW, as the `weighted_sum` kernels (a few
/// rows at a time along F, the sums kept in `out`), with a cheaper widening: 32 bf16 values
/// widen to f32 by interleaving them with zeros within 128-bit lanes (`vpunpcklwd`/
/// `vpunpckhwd`), one op per 16 values where zero-extending across lanes and shifting takes
/// two. That leaves the features permuted within each 32, so `out` holds them so until the
/// end; each feature's sum still runs over the rows in order: the bits of the f32 kernel.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw")]
#[allow(clippy::needless_range_loop)]
unsafe fn weighted_sum_bf16_avx512bw(
    x: *const u16,
    f: usize,
    rows: usize,
    d: *const f32,
    out: *mut f32,
    ahead: &[u8],
) {
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
    let second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
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

/// Whether this CPU has AVX512-BW (byte and word instructions on 512-bit vectors).
#[cfg(target_arch = "x86_64")]
fn has_avx512bw() -> bool {
    std::arch::is_x86_feature_detected!("avx512bw")
}

/// Whether this CPU runs the mixed-precision kernels (AVX512-BF16, -BW and -VL).
pub fn mixed_bf16_available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        dot_bf16::is_available() && has_avx512vl()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether 256-bit instructions can use all 32 vector registers (the split kernels need it).
fn has_avx512vl() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vl")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether the split layout costs less than padding K to whole 512-bit vectors: per row and
/// feature, a 512-bit FMA counts 2, a 256-bit one 1, and a transposed column 1/8 (one FMA per
/// 16 features, with its loads); split only where it saves at least a tenth.
fn split_pays(rank: usize) -> bool {
    if rank <= 16 || rank.is_multiple_of(16) {
        return false;
    }
    let padded = 2.0 * rank.div_ceil(16) as f64;
    let wide = rank / 8 * 8;
    let split = 2.0 * (wide / 16) as f64 + (wide % 16 / 8) as f64 + (rank - wide) as f64 / 8.0;
    split <= 0.9 * padded
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

/// S[r, :] = X[r, :] V for the `s.len() / k` rows of `x` (row-major [rows x f]); V is [f x k].
/// The plain scalar reference (and the portable kernel).
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
/// The plain scalar reference (and the portable kernel).
pub fn block_accumulate_gradient(x: &[f32], f: usize, r: &[f32], k: usize, g: &mut [f32]) {
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

#[cfg(target_arch = "x86_64")]
mod dot_bf16;

/// The SIMD kernels of one instruction set, written once over its intrinsics.
#[cfg(target_arch = "x86_64")]
macro_rules! simd_kernels {
    ($module:ident, $feature:literal, $lanes:literal, $vector:ty, $zero:ident, $load:ident,
     $store:ident, $set1:ident, $fmadd:ident, $hsum:path, $load_bf16:path,
     wide_rows: [$($m:literal => $rb:literal),*], wide_features: [$($gm:literal => $fb:literal),*],
     narrow_blocking: $narrow:path) => {
        mod $module {
            use std::arch::x86_64::*;

            const LANES: usize = $lanes;
            /// Groups of rows [`scores_narrow_rows`] runs through each panel of V.
            const SCORE_GROUPS: usize = 8;

            /// S for rows [RB at a time], V as [F][stride] with stride = M * LANES; returns the
            /// number of rows done (a multiple of RB).
            #[target_feature(enable = $feature)]
            unsafe fn scores_wide_rows<const M: usize, const RB: usize>(
                x: *const f32, f: usize, rows: usize, v: *const f32, s: *mut f32,
            ) -> usize {
                let stride = M * LANES;
                let mut r = 0;
                while r + RB <= rows {
                    let mut acc: [[$vector; M]; RB] = [[$zero(); M]; RB];
                    let xr = x.add(r * f);
                    for j in 0..f {
                        let vp = v.add(j * stride);
                        let mut vv: [$vector; M] = [$zero(); M];
                        for i in 0..M {
                            vv[i] = $load(vp.add(i * LANES));
                        }
                        for rr in 0..RB {
                            let xb = $set1(*xr.add(rr * f + j));
                            for i in 0..M {
                                acc[rr][i] = $fmadd(xb, vv[i], acc[rr][i]);
                            }
                        }
                    }
                    for rr in 0..RB {
                        for i in 0..M {
                            $store(s.add((r + rr) * stride + i * LANES), acc[rr][i]);
                        }
                    }
                    r += RB;
                }
                r
            }

            /// G [F][stride] += X^T R, FB features at a time from `start`; returns the
            /// features done.
            #[target_feature(enable = $feature)]
            unsafe fn gradient_wide_features<const M: usize, const FB: usize>(
                x: *const f32, f: usize, rows: usize, r: *const f32, g: *mut f32, start: usize,
            ) -> usize {
                let stride = M * LANES;
                let mut j = start;
                while j + FB <= f {
                    let mut acc: [[$vector; M]; FB] = [[$zero(); M]; FB];
                    for fb in 0..FB {
                        for i in 0..M {
                            acc[fb][i] = $load(g.add((j + fb) * stride + i * LANES));
                        }
                    }
                    for row in 0..rows {
                        let rp = r.add(row * stride);
                        let mut rv: [$vector; M] = [$zero(); M];
                        for i in 0..M {
                            rv[i] = $load(rp.add(i * LANES));
                        }
                        let xp = x.add(row * f + j);
                        for fb in 0..FB {
                            let xb = $set1(*xp.add(fb));
                            for i in 0..M {
                                acc[fb][i] = $fmadd(xb, rv[i], acc[fb][i]);
                            }
                        }
                    }
                    for fb in 0..FB {
                        for i in 0..M {
                            $store(g.add((j + fb) * stride + i * LANES), acc[fb][i]);
                        }
                    }
                    j += FB;
                }
                j
            }

            /// S = X V in the wide layout (stride a whole number of vectors).
            pub unsafe fn scores_wide(x: *const f32, f: usize, rows: usize, v: *const f32, stride: usize, s: *mut f32) {
                match stride / LANES {
                    $($m => {
                        // The leftover rows of a block (a user's 30 rows, say) in halving
                        // steps, not one by one.
                        let mut done = scores_wide_rows::<$m, $rb>(x, f, rows, v, s);
                        done += scores_wide_rows::<$m, { super::half_of($rb) }>(x.add(done * f), f, rows - done, v, s.add(done * stride));
                        done += scores_wide_rows::<$m, { super::half_of(super::half_of($rb)) }>(x.add(done * f), f, rows - done, v, s.add(done * stride));
                        scores_wide_rows::<$m, 1>(x.add(done * f), f, rows - done, v, s.add(done * stride));
                    })*
                    other => unreachable!("wide kernel for {other} vectors"),
                }
            }

            /// G += X^T R in the wide layout.
            pub unsafe fn gradient_wide(x: *const f32, f: usize, rows: usize, r: *const f32, stride: usize, g: *mut f32) {
                match stride / LANES {
                    $($gm => {
                        let done = gradient_wide_features::<$gm, $fb>(x, f, rows, r, g, 0);
                        gradient_wide_features::<$gm, 1>(x, f, rows, r, g, done);
                    })*
                    other => unreachable!("wide kernel for {other} vectors"),
                }
            }

            /// S = X V with V transposed ([K][F]), RB rows at a time, S rows `s_stride` apart;
            /// returns rows done. With `BF16`, `x` holds bf16 bits (the top halves of f32), read
            /// straight from memory and widened in registers.
            ///
            /// Runs along F in panels whose part of V stays in L1, over up to [`SCORE_GROUPS`]
            /// groups of RB rows, keeping each group's sums between panels: streamed from L2
            /// for every group, V took as much L2 bandwidth as X and halved the rate. The sums
            /// run in the same order as in one sweep.
            #[target_feature(enable = $feature)]
            unsafe fn scores_narrow_rows<const K: usize, const RB: usize, const BF16: bool>(
                x: *const u8, f: usize, rows: usize, vt: *const f32, s: *mut f32,
                s_stride: usize, ahead: &mut super::Prefetch,
            ) -> usize {
                let load = |at: usize| row_values::<BF16>(x, at);
                let scalar = |at: usize| row_value::<BF16>(x, at);
                let full = f / LANES * LANES;
                let panel = super::score_panel(K, LANES);
                let mut sums: [[[$vector; K]; RB]; SCORE_GROUPS] = [[[$zero(); K]; RB]; SCORE_GROUPS];
                let mut r = 0;
                while r + RB <= rows {
                    let groups = ((rows - r) / RB).min(SCORE_GROUPS);
                    let mut start = 0;
                    while start < full {
                        let end = (start + panel).min(full);
                        for (g, saved) in sums.iter_mut().enumerate().take(groups) {
                            let first = r + g * RB;
                            let mut acc: [[$vector; K]; RB] = if start == 0 { [[$zero(); K]; RB] } else { *saved };
                            let mut j = start;
                            while j < end {
                                ahead.step();
                                let mut xv: [$vector; RB] = [$zero(); RB];
                                for rr in 0..RB {
                                    xv[rr] = load((first + rr) * f + j);
                                }
                                for k in 0..K {
                                    let vk = $load(vt.add(k * f + j));
                                    for rr in 0..RB {
                                        acc[rr][k] = $fmadd(xv[rr], vk, acc[rr][k]);
                                    }
                                }
                                j += LANES;
                            }
                            *saved = acc;
                        }
                        start = end;
                    }
                    for (g, acc) in sums.iter_mut().enumerate().take(groups) {
                        let first = r + g * RB;
                        if full == 0 {
                            *acc = [[$zero(); K]; RB];
                        }
                        for rr in 0..RB {
                            let tail: [f32; LANES] = std::array::from_fn(|t| {
                                if full + t < f { scalar((first + rr) * f + full + t) } else { 0.0 }
                            });
                            for k in 0..K {
                                let mut total = $hsum(acc[rr][k]);
                                for t in full..f {
                                    total += tail[t - full] * *vt.add(k * f + t);
                                }
                                *s.add((first + rr) * s_stride + k) = total;
                            }
                        }
                    }
                    r += groups * RB;
                }
                r
            }

            /// The vector of row values at `at`: f32 rows, or bf16 rows (their bits, BF16)
            /// widened to f32.
            #[inline(always)]
            unsafe fn row_values<const BF16: bool>(x: *const u8, at: usize) -> $vector {
                if BF16 {
                    $load_bf16((x as *const u16).add(at))
                } else {
                    $load((x as *const f32).add(at))
                }
            }

            /// As [`row_values`], one value.
            #[inline(always)]
            unsafe fn row_value<const BF16: bool>(x: *const u8, at: usize) -> f32 {
                if BF16 {
                    f32::from_bits((*(x as *const u16).add(at) as u32) << 16)
                } else {
                    *(x as *const f32).add(at)
                }
            }

            /// out [F] = sum_i d_i x_i over `rows` rows of `x` (f32, or bf16 bits with BF16,
            /// widened in registers), each feature's sum in row order. A few rows at a time
            /// along all of F, the sums kept in `out` (in L1) between them: the rows then stream
            /// in order, where sweeping all rows for a few features at a time waited on L2.
            #[target_feature(enable = $feature)]
            pub unsafe fn weighted_sum<const BF16: bool>(
                x: *const u8, f: usize, rows: usize, d: *const f32, out: *mut f32, ahead: &[u8],
            ) {
                const RG: usize = super::SUM_ROWS;
                let whole = f / LANES * LANES;
                let mut ahead = super::Prefetch::new(ahead, rows.div_ceil(RG) * (whole / LANES));
                if rows == 0 {
                    std::ptr::write_bytes(out, 0, f);
                }
                let mut r = 0;
                while r < rows {
                    let n = (rows - r).min(RG);
                    let mut dv = [$zero(); RG];
                    for i in 0..n {
                        dv[i] = $set1(*d.add(r + i));
                    }
                    let mut j = 0;
                    while j < whole {
                        ahead.step();
                        let mut acc = if r == 0 { $zero() } else { $load(out.add(j)) };
                        for i in 0..n {
                            acc = $fmadd(dv[i], row_values::<BF16>(x, (r + i) * f + j), acc);
                        }
                        $store(out.add(j), acc);
                        j += LANES;
                    }
                    r += n;
                }
                for t in whole..f {
                    let mut acc = 0.0f32;
                    for i in 0..rows {
                        acc = (*d.add(i)).mul_add(row_value::<BF16>(x, i * f + t), acc);
                    }
                    *out.add(t) = acc;
                }
            }

            /// G^T [K][F] += R^T X, C vectors of features at a time; R rows `r_stride` apart.
            #[target_feature(enable = $feature)]
            unsafe fn gradient_narrow_chunks<const K: usize, const C: usize>(
                x: *const f32, f: usize, rows: usize, r: *const f32, r_stride: usize, gt: *mut f32,
            ) {
                let step = C * LANES;
                let mut j = 0;
                while j + step <= f {
                    let mut acc: [[$vector; K]; C] = [[$zero(); K]; C];
                    for c in 0..C {
                        for k in 0..K {
                            acc[c][k] = $load(gt.add(k * f + j + c * LANES));
                        }
                    }
                    for row in 0..rows {
                        let mut xv: [$vector; C] = [$zero(); C];
                        for c in 0..C {
                            xv[c] = $load(x.add(row * f + j + c * LANES));
                        }
                        for k in 0..K {
                            let b = $set1(*r.add(row * r_stride + k));
                            for c in 0..C {
                                acc[c][k] = $fmadd(b, xv[c], acc[c][k]);
                            }
                        }
                    }
                    for c in 0..C {
                        for k in 0..K {
                            $store(gt.add(k * f + j + c * LANES), acc[c][k]);
                        }
                    }
                    j += step;
                }
                for t in j..f {
                    for row in 0..rows {
                        let xv = *x.add(row * f + t);
                        for k in 0..K {
                            *gt.add(k * f + t) += *r.add(row * r_stride + k) * xv;
                        }
                    }
                }
            }

            /// S = X V in the narrow layout, K <= 8, S rows `s_stride` apart.
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn scores_narrow(x: *const f32, f: usize, rows: usize, vt: *const f32, k: usize, s: *mut f32, s_stride: usize, ahead: &[u8]) {
                scores_narrow_any::<false>(x as *const u8, 4, f, rows, vt, k, s, s_stride, ahead)
            }

            /// S = X V in the narrow layout from f32 rows, or (BF16) bf16 rows widened in
            /// registers; `size` bytes a value. The leftover rows in halving steps.
            #[allow(clippy::too_many_arguments)]
            unsafe fn scores_narrow_any<const BF16: bool>(x: *const u8, size: usize, f: usize, rows: usize, vt: *const f32, k: usize, s: *mut f32, s_stride: usize, ahead: &[u8]) {
                seq_macro_narrow!(k, K => {
                    const RB: usize = $narrow(K);
                    let mut ahead = super::Prefetch::new(ahead, rows.div_ceil(RB) * (f / LANES));
                    let mut done = scores_narrow_rows::<K, RB, BF16>(x, f, rows, vt, s, s_stride, &mut ahead);
                    done += scores_narrow_rows::<K, { super::half_of(RB) }, BF16>(x.add(done * f * size), f, rows - done, vt, s.add(done * s_stride), s_stride, &mut ahead);
                    scores_narrow_rows::<K, 1, BF16>(x.add(done * f * size), f, rows - done, vt, s.add(done * s_stride), s_stride, &mut ahead);
                })
            }

            /// S = X V in the narrow layout from bf16 X, widened in registers.
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn scores_narrow_bf16(x: *const u16, f: usize, rows: usize, vt: *const f32, k: usize, s: *mut f32, ahead: &[u8]) {
                scores_narrow_any::<true>(x as *const u8, 2, f, rows, vt, k, s, k, ahead)
            }

            /// G += X^T R in the narrow layout, K <= 8, R rows `r_stride` apart.
            #[allow(clippy::too_many_arguments)]
            pub unsafe fn gradient_narrow(x: *const f32, f: usize, rows: usize, r: *const f32, r_stride: usize, k: usize, gt: *mut f32) {
                seq_macro_narrow!(k, K => gradient_narrow_chunks::<K, { $narrow(K) }>(x, f, rows, r, r_stride, gt))
            }
        }
    };
}

/// Two f32 values rounded to bf16 (nearest even) in one 32-bit word, `low` in the low half,
/// kept in an f32 slot of a packed V (only ever copied as bits).
#[inline]
fn bf16_pair(low: f32, high: f32) -> f32 {
    let bits = |v: f32| half::bf16::from_f32(v).to_bits() as u32;
    f32::from_bits(bits(low) | bits(high) << 16)
}

/// Fetches the rows a caller reads next into L2, spread evenly over a kernel's steps, so
/// that memory streams while the kernel computes rather than between kernels.
#[cfg(target_arch = "x86_64")]
pub(crate) struct Prefetch {
    /// The next line to fetch, how far the fetches should have come, and the end.
    at: *const u8,
    due: *const u8,
    end: *const u8,
    /// Bytes to fetch per step.
    rate: usize,
}

#[cfg(target_arch = "x86_64")]
impl Prefetch {
    /// `ahead` spread over `steps` calls of [`Self::step`].
    fn new(ahead: &[u8], steps: usize) -> Self {
        let at = ahead.as_ptr();
        Self {
            at,
            due: at,
            end: at.wrapping_add(ahead.len()),
            rate: ahead.len().div_ceil(steps.max(1)),
        }
    }

    /// Fetches the lines now due (none once all are asked for).
    #[inline(always)]
    unsafe fn step(&mut self) {
        self.due = self.due.wrapping_add(self.rate);
        while self.at < self.due && self.at < self.end {
            std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T1 }>(
                self.at as *const i8,
            );
            self.at = self.at.wrapping_add(64);
        }
    }
}

/// Features per panel of the narrow scores for rank K: about 12 KB of V, a part of L1.
#[cfg(target_arch = "x86_64")]
const fn score_panel(k: usize, lanes: usize) -> usize {
    let features = 3072 / k / lanes * lanes;
    if features < lanes {
        lanes
    } else {
        features
    }
}

/// Half of a register blocking, at least 1: the next, smaller blocking for a block's leftover
/// rows.
#[cfg(target_arch = "x86_64")]
const fn half_of(blocking: usize) -> usize {
    if blocking > 1 {
        blocking / 2
    } else {
        1
    }
}

/// Runs `$body` with the const `$name` equal to `$k` (1..=8).
#[cfg(target_arch = "x86_64")]
macro_rules! seq_macro_narrow {
    ($k:expr, $name:ident => $body:expr) => {
        match $k {
            1 => {
                const $name: usize = 1;
                $body
            }
            2 => {
                const $name: usize = 2;
                $body
            }
            3 => {
                const $name: usize = 3;
                $body
            }
            4 => {
                const $name: usize = 4;
                $body
            }
            5 => {
                const $name: usize = 5;
                $body
            }
            6 => {
                const $name: usize = 6;
                $body
            }
            7 => {
                const $name: usize = 7;
                $body
            }
            8 => {
                const $name: usize = 8;
                $body
            }
            other => unreachable!("narrow kernel for K = {other}"),
        }
    };
}

/// Rows (for S) or feature vectors (for G) per step of the narrow kernels for rank K: as many
/// as keep the K x blocking accumulators and their operands in the 32 vector registers.
#[cfg(target_arch = "x86_64")]
const fn narrow_blocking_avx512(k: usize) -> usize {
    if k <= 6 {
        4
    } else {
        3
    }
}

/// The same for the 16 registers of AVX2.
#[cfg(target_arch = "x86_64")]
const fn narrow_blocking_avx2(k: usize) -> usize {
    if k <= 3 {
        3
    } else if k <= 6 {
        2
    } else {
        1
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn hsum512(v: std::arch::x86_64::__m512) -> f32 {
    std::arch::x86_64::_mm512_reduce_add_ps(v)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn hsum256(v: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let low = _mm256_castps256_ps128(v);
    let high = _mm256_extractf128_ps(v, 1);
    let sum = _mm_add_ps(low, high);
    let shuf = _mm_movehdup_ps(sum);
    let sums = _mm_add_ps(sum, shuf);
    let shuf = _mm_movehl_ps(shuf, sums);
    _mm_cvtss_f32(_mm_add_ss(sums, shuf))
}

/// 16 bf16 values (u16 bits) widened to f32: zero-extend, shift into the top half.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn load_bf16_512(p: *const u16) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    let half = _mm256_loadu_si256(p as *const __m256i);
    _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(half)))
}

/// 8 bf16 values (u16 bits) widened to f32.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn load_bf16_256(p: *const u16) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let half = _mm_loadu_si128(p as *const __m128i);
    _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(half)))
}

#[cfg(target_arch = "x86_64")]
simd_kernels!(avx512, "avx512f", 16, __m512, _mm512_setzero_ps, _mm512_loadu_ps, _mm512_storeu_ps,
    _mm512_set1_ps, _mm512_fmadd_ps, super::hsum512, super::load_bf16_512,
    wide_rows: [1 => 8, 2 => 8, 3 => 6, 4 => 5], wide_features: [1 => 8, 2 => 8, 3 => 6, 4 => 4],
    narrow_blocking: super::narrow_blocking_avx512);

#[cfg(target_arch = "x86_64")]
simd_kernels!(avx2, "avx2,fma", 8, __m256, _mm256_setzero_ps, _mm256_loadu_ps, _mm256_storeu_ps,
    _mm256_set1_ps, _mm256_fmadd_ps, super::hsum256, super::load_bf16_256,
    wide_rows: [1 => 6, 2 => 5, 3 => 3, 4 => 2, 5 => 2, 6 => 1, 7 => 1, 8 => 1],
    wide_features: [1 => 6, 2 => 5, 3 => 3, 4 => 2, 5 => 2, 6 => 1, 7 => 1, 8 => 1],
    narrow_blocking: super::narrow_blocking_avx2);

/// The split layout's kernels: M whole 512-bit vectors and, with H, a 256-bit half over the
/// first `wide` columns; with ONE, one more column along F in the same pass.
#[cfg(target_arch = "x86_64")]
// Indexed loops over fixed-size accumulator arrays keep them in registers once unrolled.
#[allow(clippy::needless_range_loop, clippy::too_many_arguments)]
mod avx512_split {
    use std::arch::x86_64::*;

    const LANES: usize = 16;

    /// S for RB rows at a time (S rows `s_stride` apart): V's wide part [F][wide] with wide =
    /// 16 M + 8 H and, with ONE, its next column `vt` ([F]) along F every 16 features, from the
    /// rows' cache lines the broadcasts just touched. Returns the number of rows done.
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

    /// G += X^T R, FB features at a time from `start`: G's wide part [F][wide] and, with ONE
    /// (FB = 8), its next column `gt` ([F]) for the same features from the same rows. Returns
    /// the features done.
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

    /// G += X^T R over the first `wide` columns and, with `one`, the next column (transposed,
    /// at `g + F wide`); R rows `r_stride` apart.
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

    /// The mixed-precision kernels against f64 sums of the bf16-rounded operands, over ranks
    /// that run padded and split layouts and shapes with row, feature and pair remainders.
    #[test]
    fn mixed_kernels_match_rounded_products() {
        let round = |v: f32| half::bf16::from_f32(v).to_f32();
        for k in [1, 5, 16, 17, 24, 25, 30, 33, 40, 41, 48, 50, 57, 64] {
            for (rows, f) in [(1, 2), (3, 8), (11, 40), (30, 70), (7, 37), (30, 96)] {
                let Some(kernels) = BlockKernels::mixed_bf16(f, k) else {
                    eprintln!("skipping: no AVX512-BF16 on this CPU");
                    return;
                };
                let x = pseudo_random(rows * f, k as u32 * 17 + rows as u32);
                let v = pseudo_random(f * k, 3 + k as u32);
                let mut bits = vec![0u16; x.len()];
                kernels.narrow_rows(&x, &mut bits);
                let expect_bits: Vec<u16> = x
                    .iter()
                    .map(|&v| half::bf16::from_f32(v).to_bits())
                    .collect();
                assert_eq!(bits, expect_bits, "K={k} rows={rows} F={f}: rounding");
                let mut packed = vec![f32::NAN; kernels.packed_len()];
                kernels.pack_basis(&v, &mut packed);
                let stride = kernels.score_stride();
                let mut s = vec![f32::NAN; rows * stride];
                kernels.scores_mixed(&bits, &packed, &mut s, &[]);
                for r in 0..rows {
                    for j in 0..k {
                        let want: f64 = (0..f)
                            .map(|i| round(x[r * f + i]) as f64 * round(v[i * k + j]) as f64)
                            .sum();
                        let got = s[r * stride + j] as f64;
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{:?} K={k} rows={rows} F={f} S[{r},{j}] {got} vs {want}",
                            kernels.layout()
                        );
                    }
                }
                // G is summed by the f32 kernels of the shape.
                assert_eq!(
                    kernels.gradient_kernels(),
                    BlockKernels::with_isa(Isa::Avx512, f, k)
                );
            }
        }
    }

    /// The layout follows the rank: transposed for small K, split where padding to whole
    /// 512-bit vectors wastes much, padded otherwise.
    #[test]
    fn layout_follows_rank() {
        let f = 64;
        if Isa::Avx512.is_available() && has_avx512vl() {
            let split = |k| BlockKernels::with_isa(Isa::Avx512, f, k).layout();
            assert_eq!(split(5), Layout::Narrow);
            assert_eq!(split(16), Layout::Wide { stride: 16 });
            assert_eq!(
                split(25),
                Layout::Split {
                    stride: 32,
                    wide: 24
                }
            );
            assert_eq!(split(30), Layout::Wide { stride: 32 });
            assert_eq!(
                split(50),
                Layout::Split {
                    stride: 64,
                    wide: 48
                }
            );
            assert_eq!(
                BlockKernels::padded(Isa::Avx512, f, 25).layout(),
                Layout::Wide { stride: 32 }
            );
        }
        assert!(split_pays(25) && split_pays(17) && !split_pays(30) && !split_pays(16));
        if BlockKernels::mixed_bf16(f, 25).is_some() {
            let mixed = |f, k| BlockKernels::mixed_bf16(f, k).unwrap().layout();
            assert_eq!(
                mixed(f, 25),
                Layout::PairedBf16 {
                    stride: 32,
                    wide: 24
                }
            );
            assert_eq!(
                mixed(f, 24),
                Layout::PairedBf16 {
                    stride: 32,
                    wide: 24
                }
            );
            assert_eq!(
                mixed(f, 30),
                Layout::PairedBf16 {
                    stride: 32,
                    wide: 32
                }
            );
            assert_eq!(mixed(f, 5), Layout::NarrowBf16);
            // Odd F: no transposed pairs, so K = 5 and 25 run padded.
            assert_eq!(
                mixed(63, 5),
                Layout::PairedBf16 {
                    stride: 16,
                    wide: 16
                }
            );
            assert_eq!(
                mixed(63, 25),
                Layout::PairedBf16 {
                    stride: 32,
                    wide: 32
                }
            );
            assert!(BlockKernels::mixed_bf16(f, 65).is_none());
        }
        let kernels = BlockKernels::with_isa(Isa::Portable, f, 25);
        assert_eq!(kernels.layout(), Layout::Wide { stride: 25 });
    }

    /// Every instruction set and layout against the scalar loops, over ranks that exercise
    /// each compiled variant and shapes with row and feature remainders.
    #[test]
    fn simd_kernels_match_scalar_loops() {
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            if !isa.is_available() {
                eprintln!("skipping {isa:?}: not available on this CPU");
                continue;
            }
            for k in [
                1, 2, 3, 5, 8, 9, 16, 17, 20, 24, 25, 32, 33, 40, 48, 50, 56, 57, 64, 65,
            ] {
                // Longer rows for small K: several panels of the narrow scores, and more rows
                // than their groups hold.
                let long: &[(usize, usize, bool)] = match k {
                    1 | 2 => &[(9, 3100, false)],
                    3..=8 => &[(45, 1300, false)],
                    _ => &[],
                };
                for &(rows, f, padded) in [
                    (1, 1, false),
                    (3, 7, false),
                    (11, 40, false),
                    (23, 70, false),
                    (30, 37, false),
                    (30, 37, true),
                ]
                .iter()
                .chain(long)
                {
                    let kernels = if padded {
                        BlockKernels::padded(isa, f, k)
                    } else {
                        BlockKernels::with_isa(isa, f, k)
                    };
                    let x = pseudo_random(rows * f, k as u32 * 31 + rows as u32);
                    let v = pseudo_random(f * k, 7 + k as u32);
                    let mut expect_s = vec![0.0; rows * k];
                    block_scores(&x, f, &v, k, &mut expect_s);
                    let mut packed = vec![f32::NAN; kernels.packed_len()];
                    kernels.pack_basis(&v, &mut packed);
                    let stride = kernels.score_stride();
                    let mut s = vec![f32::NAN; rows * stride];
                    // The rows themselves as the ones "read next": prefetching only hints.
                    let x_bytes: Vec<u8> = x.iter().flat_map(|v| v.to_le_bytes()).collect();
                    kernels.scores(&x, &packed, &mut s, &x_bytes);
                    for r in 0..rows {
                        for j in 0..k {
                            let (got, want) = (s[r * stride + j], expect_s[r * k + j]);
                            assert!(
                                (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{isa:?} K={k} rows={rows} F={f} S[{r},{j}] {got} vs {want}"
                            );
                        }
                    }
                    // bf16 rows streamed: the same scores, bit for bit, as from the rows
                    // widened first.
                    let bits: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
                    let wide: Vec<f32> = bits
                        .iter()
                        .map(|&b| f32::from_bits((b as u32) << 16))
                        .collect();
                    if kernels.streams_bf16() {
                        let mut s_wide = vec![f32::NAN; rows * stride];
                        kernels.scores(&wide, &packed, &mut s_wide, &[]);
                        let mut s_bf16 = vec![f32::NAN; rows * stride];
                        kernels.scores_bf16(&bits, &packed, &mut s_bf16, &[]);
                        assert_eq!(
                            s_bf16.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            s_wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{isa:?} K={k} rows={rows} F={f}"
                        );
                    }
                    // Residuals with zero padding, as the pass writes them.
                    let r_plain = pseudo_random(rows * k, 99 + k as u32);
                    let mut r_padded = vec![0.0; rows * stride];
                    for t in 0..rows {
                        r_padded[t * stride..t * stride + k]
                            .copy_from_slice(&r_plain[t * k..(t + 1) * k]);
                    }
                    let start = pseudo_random(f * k, 5);
                    let mut expect_g = start.clone();
                    block_accumulate_gradient(&x, f, &r_plain, k, &mut expect_g);
                    let mut g_packed = vec![0.0; kernels.packed_len()];
                    kernels.pack_basis(&start, &mut g_packed);
                    kernels.accumulate_gradient(&x, &r_padded, &mut g_packed);
                    if k == 1 {
                        // A user's weighted row sum (it does not depend on K), from f32 rows
                        // and from bf16 rows: the same bits as from the rows widened first.
                        let d = pseudo_random(rows, 41 + rows as u32);
                        let mut sum = vec![f32::NAN; f];
                        kernels.weighted_row_sum(&x, &d, &mut sum, &x_bytes);
                        for j in 0..f {
                            let want: f64 =
                                (0..rows).map(|i| d[i] as f64 * x[i * f + j] as f64).sum();
                            assert!(
                                (sum[j] as f64 - want).abs() <= 1e-4 * (1.0 + want.abs()),
                                "{isa:?} rows={rows} F={f} sum[{j}] {} vs {want}",
                                sum[j]
                            );
                        }
                        let (mut from_wide, mut from_bits) = (vec![f32::NAN; f], vec![0.0; f]);
                        kernels.weighted_row_sum(&wide, &d, &mut from_wide, &[]);
                        kernels.weighted_row_sum_bf16(&bits, &d, &mut from_bits, &[]);
                        assert_eq!(
                            from_bits.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            from_wide.iter().map(|v| v.to_bits()).collect::<Vec<_>>(),
                            "{isa:?} rows={rows} F={f}: bf16 row sum"
                        );
                    }
                    let mut g = vec![f32::NAN; f * k];
                    kernels.unpack_gradient(&g_packed, &mut g);
                    for (i, (&got, &want)) in g.iter().zip(&expect_g).enumerate() {
                        assert!(
                            (got - want).abs() <= 1e-4 * (1.0 + want.abs()),
                            "{isa:?} K={k} rows={rows} F={f} G[{i}] {got} vs {want}"
                        );
                    }
                }
            }
        }
    }
}
