//! The block products of a pass over the data: S_b = X_b V and G += X_b^T R_b.
//!
//! [`BlockKernels`] picks, once, the instruction set (AVX-512, AVX2+FMA, or portable loops) and
//! a layout for V and G: `Wide` keeps V as [F][stride] with K padded to whole vectors and
//! broadcasts x (register-blocked over rows for S and over features for G); `Narrow` (K <= 8)
//! keeps V and G transposed, [K][F], and runs along F. Every SIMD kernel is tested against the
//! plain scalar loops [`block_scores`] and [`block_accumulate_gradient`].

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

    pub fn isa(&self) -> Isa {
        self.isa
    }
    pub fn layout(&self) -> Layout {
        self.layout
    }

    /// Values per row of S (and of R).
    pub fn score_stride(&self) -> usize {
        match self.layout {
            Layout::Wide { stride } => stride,
            Layout::Narrow => self.rank,
        }
    }

    /// Length of a packed V or G.
    pub fn packed_len(&self) -> usize {
        match self.layout {
            Layout::Wide { stride } => self.n_features * stride,
            Layout::Narrow => self.n_features * self.rank,
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
            Layout::Narrow => {
                for (j, row) in basis.chunks_exact(k).enumerate() {
                    for (t, &v) in row.iter().enumerate() {
                        packed[t * f + j] = v;
                    }
                }
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
            Layout::Narrow => {
                for (j, row) in grad.chunks_exact_mut(k).enumerate() {
                    for (t, g) in row.iter_mut().enumerate() {
                        *g = packed[t * f + j];
                    }
                }
            }
        }
    }

    /// S = X V for the rows of `x` ([rows x F]); `s` is [rows x score_stride()].
    pub fn scores(&self, x: &[f32], packed_basis: &[f32], s: &mut [f32]) {
        let f = self.n_features;
        let rows = x.len() / f;
        assert_eq!(x.len(), rows * f);
        assert_eq!(packed_basis.len(), self.packed_len());
        assert_eq!(s.len(), rows * self.score_stride());
        match (self.isa, self.layout) {
            (Isa::Portable, _) => block_scores(x, f, packed_basis, self.rank, s),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Wide { stride }) => unsafe {
                avx512::scores_wide(
                    x.as_ptr(),
                    f,
                    rows,
                    packed_basis.as_ptr(),
                    stride,
                    s.as_mut_ptr(),
                )
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Narrow) => unsafe {
                avx512::scores_narrow(
                    x.as_ptr(),
                    f,
                    rows,
                    packed_basis.as_ptr(),
                    self.rank,
                    s.as_mut_ptr(),
                )
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Wide { stride }) => unsafe {
                avx2::scores_wide(
                    x.as_ptr(),
                    f,
                    rows,
                    packed_basis.as_ptr(),
                    stride,
                    s.as_mut_ptr(),
                )
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Narrow) => unsafe {
                avx2::scores_narrow(
                    x.as_ptr(),
                    f,
                    rows,
                    packed_basis.as_ptr(),
                    self.rank,
                    s.as_mut_ptr(),
                )
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("SIMD kernels exist only on x86_64"),
        }
    }

    /// Whether [`Self::scores_bf16`] streams bf16 rows (the narrow SIMD layouts); otherwise
    /// callers widen a block first and use [`Self::scores`].
    pub fn streams_bf16(&self) -> bool {
        self.isa != Isa::Portable && self.layout == Layout::Narrow
    }

    /// S = X V for bf16 rows `x` (as their u16 bits), writing the rows widened to f32 into
    /// `widened` ([rows x F]) for the gradient; needs [`Self::streams_bf16`].
    pub fn scores_bf16(&self, x: &[u16], packed_basis: &[f32], s: &mut [f32], widened: &mut [f32]) {
        let f = self.n_features;
        let rows = x.len() / f;
        assert_eq!(x.len(), rows * f);
        assert_eq!(widened.len(), x.len());
        assert_eq!(packed_basis.len(), self.packed_len());
        assert_eq!(s.len(), rows * self.score_stride());
        assert!(
            self.streams_bf16(),
            "bf16 streaming needs the narrow SIMD layout"
        );
        match self.isa {
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe {
                avx512::scores_narrow_bf16(
                    x.as_ptr(),
                    f,
                    rows,
                    packed_basis.as_ptr(),
                    self.rank,
                    s.as_mut_ptr(),
                    widened.as_mut_ptr(),
                )
            },
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe {
                avx2::scores_narrow_bf16(
                    x.as_ptr(),
                    f,
                    rows,
                    packed_basis.as_ptr(),
                    self.rank,
                    s.as_mut_ptr(),
                    widened.as_mut_ptr(),
                )
            },
            _ => unreachable!("checked: a SIMD instruction set"),
        }
    }

    /// G += X^T R for the rows of `x` ([rows x F]) and `r` ([rows x score_stride()]); G packed.
    pub fn accumulate_gradient(&self, x: &[f32], r: &[f32], packed_grad: &mut [f32]) {
        let f = self.n_features;
        let rows = x.len() / f;
        assert_eq!(x.len(), rows * f);
        assert_eq!(r.len(), rows * self.score_stride());
        assert_eq!(packed_grad.len(), self.packed_len());
        match (self.isa, self.layout) {
            (Isa::Portable, _) => block_accumulate_gradient(x, f, r, self.rank, packed_grad),
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Wide { stride }) => unsafe {
                avx512::gradient_wide(
                    x.as_ptr(),
                    f,
                    rows,
                    r.as_ptr(),
                    stride,
                    packed_grad.as_mut_ptr(),
                )
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx512, Layout::Narrow) => unsafe {
                avx512::gradient_narrow(
                    x.as_ptr(),
                    f,
                    rows,
                    r.as_ptr(),
                    self.rank,
                    packed_grad.as_mut_ptr(),
                )
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Wide { stride }) => unsafe {
                avx2::gradient_wide(
                    x.as_ptr(),
                    f,
                    rows,
                    r.as_ptr(),
                    stride,
                    packed_grad.as_mut_ptr(),
                )
            },
            #[cfg(target_arch = "x86_64")]
            (Isa::Avx2, Layout::Narrow) => unsafe {
                avx2::gradient_narrow(
                    x.as_ptr(),
                    f,
                    rows,
                    r.as_ptr(),
                    self.rank,
                    packed_grad.as_mut_ptr(),
                )
            },
            #[cfg(not(target_arch = "x86_64"))]
            _ => unreachable!("SIMD kernels exist only on x86_64"),
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
                        let done = scores_wide_rows::<$m, $rb>(x, f, rows, v, s);
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

            /// S = X V with V transposed ([K][F]), RB rows at a time; returns rows done. With
            /// `BF16`, `x` holds bf16 bits (the top halves of f32), read straight from memory,
            /// widened in registers and written to `widened` [rows x F] for the gradient.
            #[target_feature(enable = $feature)]
            unsafe fn scores_narrow_rows<const K: usize, const RB: usize, const BF16: bool>(
                x: *const u8, f: usize, rows: usize, vt: *const f32, s: *mut f32,
                widened: *mut f32,
            ) -> usize {
                let load = |at: usize| {
                    if BF16 {
                        let v = $load_bf16((x as *const u16).add(at));
                        $store(widened.add(at), v);
                        v
                    } else {
                        $load((x as *const f32).add(at))
                    }
                };
                let scalar = |at: usize| {
                    if BF16 {
                        let v = f32::from_bits((*(x as *const u16).add(at) as u32) << 16);
                        *widened.add(at) = v;
                        v
                    } else {
                        *(x as *const f32).add(at)
                    }
                };
                let full = f / LANES * LANES;
                let mut r = 0;
                while r + RB <= rows {
                    let mut acc: [[$vector; K]; RB] = [[$zero(); K]; RB];
                    let mut j = 0;
                    while j < full {
                        let mut xv: [$vector; RB] = [$zero(); RB];
                        for rr in 0..RB {
                            xv[rr] = load((r + rr) * f + j);
                        }
                        for k in 0..K {
                            let vk = $load(vt.add(k * f + j));
                            for rr in 0..RB {
                                acc[rr][k] = $fmadd(xv[rr], vk, acc[rr][k]);
                            }
                        }
                        j += LANES;
                    }
                    for rr in 0..RB {
                        let tail: [f32; LANES] = std::array::from_fn(|t| {
                            if full + t < f { scalar((r + rr) * f + full + t) } else { 0.0 }
                        });
                        for k in 0..K {
                            let mut total = $hsum(acc[rr][k]);
                            for t in full..f {
                                total += tail[t - full] * *vt.add(k * f + t);
                            }
                            *s.add((r + rr) * K + k) = total;
                        }
                    }
                    r += RB;
                }
                r
            }

            /// G^T [K][F] += R^T X, C vectors of features at a time.
            #[target_feature(enable = $feature)]
            unsafe fn gradient_narrow_chunks<const K: usize, const C: usize>(
                x: *const f32, f: usize, rows: usize, r: *const f32, gt: *mut f32,
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
                            let b = $set1(*r.add(row * K + k));
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
                            *gt.add(k * f + t) += *r.add(row * K + k) * xv;
                        }
                    }
                }
            }

            /// S = X V in the narrow layout, K <= 8.
            pub unsafe fn scores_narrow(x: *const f32, f: usize, rows: usize, vt: *const f32, k: usize, s: *mut f32) {
                let x = x as *const u8;
                let none = std::ptr::null_mut();
                seq_macro_narrow!(k, K => {
                    let done = scores_narrow_rows::<K, { $narrow(K) }, false>(x, f, rows, vt, s, none);
                    scores_narrow_rows::<K, 1, false>(x.add(done * f * 4), f, rows - done, vt, s.add(done * K), none);
                })
            }

            /// S = X V in the narrow layout from bf16 X, widening X into `widened` on the way.
            pub unsafe fn scores_narrow_bf16(x: *const u16, f: usize, rows: usize, vt: *const f32, k: usize, s: *mut f32, widened: *mut f32) {
                let x = x as *const u8;
                seq_macro_narrow!(k, K => {
                    let done = scores_narrow_rows::<K, { $narrow(K) }, true>(x, f, rows, vt, s, widened);
                    scores_narrow_rows::<K, 1, true>(x.add(done * f * 2), f, rows - done, vt, s.add(done * K), widened.add(done * f));
                })
            }

            /// G += X^T R in the narrow layout, K <= 8.
            pub unsafe fn gradient_narrow(x: *const f32, f: usize, rows: usize, r: *const f32, k: usize, gt: *mut f32) {
                seq_macro_narrow!(k, K => gradient_narrow_chunks::<K, { $narrow(K) }>(x, f, rows, r, gt))
            }
        }
    };
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

    /// Every instruction set and layout against the scalar loops, over ranks that exercise
    /// each compiled variant and shapes with row and feature remainders.
    #[test]
    fn simd_kernels_match_scalar_loops() {
        for isa in [Isa::Avx512, Isa::Avx2, Isa::Portable] {
            if !isa.is_available() {
                eprintln!("skipping {isa:?}: not available on this CPU");
                continue;
            }
            for k in [1, 2, 3, 5, 8, 9, 16, 17, 25, 32, 33, 48, 50, 64, 65] {
                for (rows, f) in [(1, 1), (3, 7), (11, 40), (23, 70)] {
                    let kernels = BlockKernels::with_isa(isa, f, k);
                    let x = pseudo_random(rows * f, k as u32 * 31 + rows as u32);
                    let v = pseudo_random(f * k, 7 + k as u32);
                    let mut expect_s = vec![0.0; rows * k];
                    block_scores(&x, f, &v, k, &mut expect_s);
                    let mut packed = vec![f32::NAN; kernels.packed_len()];
                    kernels.pack_basis(&v, &mut packed);
                    let stride = kernels.score_stride();
                    let mut s = vec![f32::NAN; rows * stride];
                    kernels.scores(&x, &packed, &mut s);
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
                    // widened first, and the widened rows written out exactly.
                    if kernels.streams_bf16() {
                        let bits: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
                        let wide: Vec<f32> = bits
                            .iter()
                            .map(|&b| f32::from_bits((b as u32) << 16))
                            .collect();
                        let mut s_wide = vec![f32::NAN; rows * stride];
                        kernels.scores(&wide, &packed, &mut s_wide);
                        let mut s_bf16 = vec![f32::NAN; rows * stride];
                        let mut widened = vec![f32::NAN; rows * f];
                        kernels.scores_bf16(&bits, &packed, &mut s_bf16, &mut widened);
                        assert_eq!(widened, wide, "{isa:?} K={k} rows={rows} F={f}");
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
