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
//! against the plain scalar loops [`portable::scores`] and [`portable::accumulate_gradient`].

//!
//! The files: `layout.rs` packs V and G for a [`Layout`]; `portable.rs` holds the scalar
//! reference loops (the portable kernels); `simd.rs` the kernels written once over an
//! instruction set's intrinsics, generated for `avx512.rs` and `avx2.rs`; `avx512_split.rs` the
//! split layout's kernels; `dot_bf16.rs` the mixed-precision (AVX512-BF16) ones; `prefetch.rs`
//! the fetching of the rows read next.
//!
//! # Safety
//! The SIMD kernels take raw pointers and need CPU features. The methods of [`BlockKernels`]
//! are their safe wrappers: a `BlockKernels` only ever holds an instruction set (and layout)
//! that its constructors checked this CPU runs, and each method asserts the lengths of its
//! slices against the shape before it hands their pointers to a kernel.

#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_split;
#[cfg(target_arch = "x86_64")]
mod dot_bf16;
pub mod group;
mod layout;
pub mod portable;
#[cfg(target_arch = "x86_64")]
mod prefetch;
#[cfg(target_arch = "x86_64")]
mod simd;
#[cfg(test)]
mod tests;

#[cfg(target_arch = "x86_64")]
use prefetch::Prefetch;
#[cfg(target_arch = "x86_64")]
use simd::half_of;

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
///
/// Invariant (what the `unsafe` blocks of the methods rely on): `isa` is an instruction set
/// this CPU runs, and `layout` one its kernels exist for. The constructors ([`Self::new`],
/// [`Self::with_isa`], [`Self::padded`], [`Self::mixed_bf16`]) check both; the fields are
/// private, so no other value can be built.
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
    #[cfg(any(test, feature = "internals"))]
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

    /// out [users x F] = V w for each user's weights [users x K] (1 to [`group::MAX_GROUP`]
    /// users), from V packed as panels ([`group::pack_panels`]): one read of V for the group.
    /// Inlined into callers compiled for the instruction set (the portable loops then
    /// vectorize); the same bits on any.
    #[inline(always)]
    pub fn combine_group(&self, panels: &[f32], weights: &[f32], out: &mut [f32]) {
        let (f, k) = (self.n_features, self.rank);
        let users = weights.len() / k;
        assert!((1..=group::MAX_GROUP).contains(&users));
        assert_eq!(weights.len(), users * k);
        assert_eq!(out.len(), users * f);
        assert_eq!(panels.len(), group::panels_len(f, k));
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX512-F (the invariant of `BlockKernels`), and the extents asserted above.
            Isa::Avx512 => group::for_group_size!(users, B => unsafe {
                group::combine_avx512::<B>(panels, f, weights, out)
            }),
            _ => group::for_group_size!(users, B => group::combine::<B>(panels, f, weights, out)),
        }
    }

    /// out [users x K] = V^T g for each user's sums g [users x F] (1 to
    /// [`group::MAX_GROUP`] users), V packed as panels; `partial` (at least K x users x
    /// [`group::LANE`]) holds the partial sums. One read of V for the group; the same bits on
    /// any instruction set.
    #[inline(always)]
    pub fn project_group(
        &self,
        panels: &[f32],
        sums: &[f32],
        out: &mut [f32],
        partial: &mut [f32],
    ) {
        let (f, k) = (self.n_features, self.rank);
        let users = out.len() / k;
        assert!((1..=group::MAX_GROUP).contains(&users));
        assert_eq!(out.len(), users * k);
        assert_eq!(sums.len(), users * f);
        assert!(partial.len() >= k * users * group::LANE);
        assert_eq!(panels.len(), group::panels_len(f, k));
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: AVX512-F (the invariant of `BlockKernels`), and the extents asserted above.
            Isa::Avx512 => group::for_group_size!(users, B => unsafe {
                group::project_avx512::<B>(panels, f, sums, out, partial)
            }),
            _ => {
                group::for_group_size!(users, B => group::project::<B>(panels, f, sums, out, partial))
            }
        }
    }

    /// The feature dimension F these kernels are for.
    pub fn n_features(&self) -> usize {
        self.n_features
    }
    #[cfg(any(test, feature = "internals"))]
    pub fn layout(&self) -> Layout {
        self.layout
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
            (Isa::Portable, _) => portable::scores(x, f, packed_basis, self.rank, s),
            // SAFETY (every arm): the CPU runs `self.isa`, and the layout is one its kernels
            // exist for (the invariant of `BlockKernels`). The asserts above fix X to `rows`
            // rows of F, V to `packed_len()` (F rows of `stride` for Wide, K rows of F for
            // Narrow) and S to `rows` rows of `stride`: the extents each kernel reads or writes.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Wide { stride }) => {
                // SAFETY: AVX512-F, and the extents asserted above (see the first arm).
                unsafe { avx512::scores_wide(x_in, f, rows, v, stride, s_out) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Narrow) => {
                // SAFETY: AVX512-F, K <= 8 (Narrow), and the extents asserted above.
                unsafe { avx512::scores_narrow(x_in, f, rows, v, self.rank, s_out, stride, ahead) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Split { stride, wide }) => {
                let rest = self.rank - wide;
                // SAFETY: AVX512-F and -VL (checked for Split), `wide` a multiple of 8 in
                // 16..=56 (K in 17..64). V is F rows of `wide`, then the other `rest` columns
                // transposed ([rest][F], the first of them the `one` column); S rows `stride`
                // apart hold `wide + rest` = K <= stride values. The narrow kernel gets the
                // transposed part and the S columns from `wide`: the same extents.
                unsafe {
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
                }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Wide { stride }) => {
                // SAFETY: AVX2 and FMA, and the extents asserted above (see the first arm).
                unsafe { avx2::scores_wide(x_in, f, rows, v, stride, s_out) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Narrow) => {
                // SAFETY: AVX2 and FMA, K <= 8 (Narrow), and the extents asserted above.
                unsafe { avx2::scores_narrow(x_in, f, rows, v, self.rank, s_out, stride, ahead) }
            }
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
        // The packed words are bf16 pairs, kept in f32 slots.
        let v: &[u32] = bytemuck::cast_slice(packed_basis);
        let Layout::PairedBf16 { stride, wide } = self.layout else {
            // SAFETY: mixed-precision kernels exist only where this CPU has AVX512-BF16, -BW
            // and -VL (`mixed_bf16` checks; the invariant of `BlockKernels`), and NarrowBf16
            // only for 1 <= K <= 8 and F even; `scores_narrow` asserts the slices' lengths.
            #[cfg(target_arch = "x86_64")]
            unsafe {
                dot_bf16::scores_narrow(x, self.n_features, v, self.rank, s, ahead)
            }
            return;
        };
        // SAFETY: as above for the CPU; `mixed_bf16` picks `wide` and the extra column only
        // where `dot_bf16::supports` them (and F is even with it); `scores` asserts the slices'
        // lengths.
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
        // SAFETY: mixed-precision kernels exist only where this CPU has AVX512-BF16 and -VL
        // (`mixed_bf16` checks; the invariant of `BlockKernels`); `narrow_rows` takes slices.
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
            // SAFETY (both arms): the CPU runs `self.isa` (the invariant of `BlockKernels`);
            // `row_sum_shape` asserted `x` is `d.len()` rows of F and `out` F values.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // SAFETY: AVX512-F, and the extents asserted above.
                unsafe { avx512::weighted_sum::<false>(xp, f, d.len(), dp, op, ahead) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: AVX2 and FMA, and the extents asserted above.
                unsafe { avx2::weighted_sum::<false>(xp, f, d.len(), dp, op, ahead) }
            }
            _ => portable::weighted_row_sum(x.chunks_exact(f.max(1)), d, out, |v| *v),
        }
    }

    /// For each row of `x` ([rows x F]): its score s = x . v (v [F]), its derivative
    /// d = `derivative(s)` (written to `d_out`, one per row), and out [F] = sum_i d_i x_i
    /// (as [`Self::weighted_row_sum`] for those d): the fit's pass over one user's rows, each
    /// row read once from memory (or L2) and again from L1. `ahead` as for [`Self::scores`].
    #[inline(always)]
    pub fn score_and_sum(
        &self,
        x: &[f32],
        v: &[f32],
        d_out: &mut [f32],
        out: &mut [f32],
        derivative: &mut impl FnMut(f32) -> f32,
        ahead: &[u8],
    ) {
        self.score_and_sum_rows::<false, f32>(x, v, d_out, out, derivative, ahead, |v| *v)
    }

    /// As [`Self::score_and_sum`] for bf16 rows (their u16 bits), widened to f32 on the way.
    #[inline(always)]
    pub fn score_and_sum_bf16(
        &self,
        x: &[u16],
        v: &[f32],
        d_out: &mut [f32],
        out: &mut [f32],
        derivative: &mut impl FnMut(f32) -> f32,
        ahead: &[u8],
    ) {
        self.score_and_sum_rows::<true, u16>(x, v, d_out, out, derivative, ahead, |&b| {
            f32::from_bits((b as u32) << 16)
        })
    }

    /// [`Self::score_and_sum`] for rows of `T`: f32 (`BF16` false) or bf16 bits (u16, `BF16`
    /// true), `value` widening one for the portable loops.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn score_and_sum_rows<const BF16: bool, T>(
        &self,
        x: &[T],
        v: &[f32],
        d_out: &mut [f32],
        out: &mut [f32],
        derivative: &mut impl FnMut(f32) -> f32,
        ahead: &[u8],
        value: impl Fn(&T) -> f32,
    ) {
        let f = self.row_sum_shape(x.len(), d_out, out);
        assert_eq!(v.len(), f);
        assert_eq!(std::mem::size_of::<T>(), if BF16 { 2 } else { 4 });
        let rows = d_out.len();
        let (xp, vp) = (x.as_ptr() as *const u8, v.as_ptr());
        let (dp, op) = (d_out.as_mut_ptr(), out.as_mut_ptr());
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // SAFETY: the CPU runs AVX512-F (the invariant of `BlockKernels`);
                // `row_sum_shape` asserted `x` is `rows` rows of F values, of the size the
                // kernel reads for `BF16` (asserted), `out` F values, and v is F values.
                unsafe {
                    avx512::score_and_sum::<BF16, _>(xp, f, rows, vp, dp, op, derivative, ahead)
                }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: AVX2 and FMA, and the extents asserted above.
                unsafe {
                    avx2::score_and_sum::<BF16, _>(xp, f, rows, vp, dp, op, derivative, ahead)
                }
            }
            _ => {
                portable::score_and_sum(x.chunks_exact(f.max(1)), v, d_out, out, derivative, value)
            }
        }
    }

    /// As [`Self::weighted_row_sum`] for bf16 rows (their u16 bits), widened to f32 on the way:
    /// the same bits as from the rows widened first.
    pub fn weighted_row_sum_bf16(&self, x: &[u16], d: &[f32], out: &mut [f32], ahead: &[u8]) {
        let f = self.row_sum_shape(x.len(), d, out);
        let (xp, dp, op) = (x.as_ptr() as *const u8, d.as_ptr(), out.as_mut_ptr());
        match self.isa {
            // SAFETY (every arm): the CPU runs `self.isa` (the invariant of `BlockKernels`),
            // with AVX512-BW where checked; `row_sum_shape` asserted `x` is `d.len()` rows of F
            // bf16 values and `out` F values.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 if has_avx512bw() => {
                // SAFETY: AVX512-F and -BW (checked), and the extents asserted above.
                unsafe { avx512::weighted_sum_bf16_avx512bw(x.as_ptr(), f, d.len(), dp, op, ahead) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // SAFETY: AVX512-F, and the extents asserted above.
                unsafe { avx512::weighted_sum::<true>(xp, f, d.len(), dp, op, ahead) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: AVX2 and FMA, and the extents asserted above.
                unsafe { avx2::weighted_sum::<true>(xp, f, d.len(), dp, op, ahead) }
            }
            _ => portable::weighted_row_sum(x.chunks_exact(f.max(1)), d, out, |&b| {
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
            // SAFETY (both arms): the CPU runs `self.isa` (the invariant of `BlockKernels`);
            // `bf16_rows` checked the Narrow layout (K <= 8), `x` as `rows` rows of F and V as
            // K rows of F; S is asserted `rows` rows of K (`score_stride`).
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                // SAFETY: AVX512-F, and the extents checked above.
                unsafe { avx512::scores_narrow_bf16(x, f, rows, v, self.rank, s, ahead) }
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                // SAFETY: AVX2 and FMA, and the extents checked above.
                unsafe { avx2::scores_narrow_bf16(x, f, rows, v, self.rank, s, ahead) }
            }
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
            (Isa::Portable, _) => portable::accumulate_gradient(x, f, r, self.rank, packed_grad),
            // SAFETY (every arm): the CPU runs `self.isa`, and the layout is one its kernels
            // exist for (the invariant of `BlockKernels`). The asserts above fix X to `rows`
            // rows of F, R to `rows` rows of `stride` and G to `packed_len()` (F rows of
            // `stride` for Wide, K rows of F for Narrow): the extents each kernel touches.
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Wide { stride }) => {
                // SAFETY: AVX512-F, and the extents asserted above (see the first arm).
                unsafe { avx512::gradient_wide(x_in, f, rows, r_in, stride, g) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Narrow) => {
                // SAFETY: AVX512-F, K <= 8 (Narrow), and the extents asserted above.
                unsafe { avx512::gradient_narrow(x_in, f, rows, r_in, stride, self.rank, g) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Split { stride, wide }) => {
                let rest = self.rank - wide;
                // SAFETY: AVX512-F and -VL (checked for Split), `wide` a multiple of 8 in
                // 16..=56. G is F rows of `wide`, then the other `rest` columns transposed
                // ([rest][F]); R rows `stride` apart hold K <= stride values. The narrow kernel
                // gets the transposed part and R's columns from `wide`: the same extents.
                unsafe {
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
                }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Wide { stride }) => {
                // SAFETY: AVX2 and FMA, and the extents asserted above (see the first arm).
                unsafe { avx2::gradient_wide(x_in, f, rows, r_in, stride, g) }
            }
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Narrow) => {
                // SAFETY: AVX2 and FMA, K <= 8 (Narrow), and the extents asserted above.
                unsafe { avx2::gradient_narrow(x_in, f, rows, r_in, stride, self.rank, g) }
            }
            #[cfg(target_arch = "x86_64")]
            _ => unreachable!("no kernels for {:?} with {:?}", self.isa, self.layout),
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("SIMD kernels exist only on x86_64"),
        }
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
