//! The SIMD kernels written once over an instruction set's intrinsics ([`simd_kernels`],
//! expanded in `avx512.rs` and `avx2.rs`), and the constants and helpers they share.
//!
//! The generated kernels take raw pointers: their callers (the methods of
//! [`super::BlockKernels`]) check the CPU and the slices' lengths, as each one's `# Safety`
//! section states.

/// Rows at a time of the weighted row sums, their values' multipliers in registers.
pub(super) const SUM_ROWS: usize = 4;

/// The SIMD kernels of one instruction set, written once over its intrinsics, as items of the
/// module (a child of `kernels`) it is expanded in: `$feature` the target features they are
/// compiled for, `$lanes` f32 values a `$vector`, then the vector intrinsics, the register
/// blockings of the wide kernels (vectors per row => rows or features a step) and of the narrow
/// ones (a const fn of K).
///
/// Every kernel needs a CPU with `$feature`; the `# Safety` sections say which memory each
/// pointer must cover. F is `f`, in values; a row of X is F values, of S or R `stride` (or
/// `s_stride`, `r_stride`) values.
macro_rules! simd_kernels {
    ($feature:literal, $lanes:literal, $vector:ty, $zero:ident, $load:ident,
     $store:ident, $set1:ident, $fmadd:ident, $addps:ident, $hsum:path, $load_bf16:path,
     wide_rows: [$($m:literal => $rb:literal),*], wide_features: [$($gm:literal => $fb:literal),*],
     narrow_blocking: $narrow:path) => {
        use std::arch::x86_64::*;

        const LANES: usize = $lanes;
        /// Groups of rows [`scores_narrow_rows`] runs through each panel of V.
        const SCORE_GROUPS: usize = 8;

        /// S for rows [RB at a time], V as [F][stride] with stride = M * LANES; returns the
        /// number of rows done (a multiple of RB).
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `rows` rows of F values, `v` for F rows of
        /// `M * LANES` values, and `s` writable for `rows` rows of `M * LANES` values.
        #[target_feature(enable = $feature)]
        unsafe fn scores_wide_rows<const M: usize, const RB: usize>(
            x: *const f32, f: usize, rows: usize, v: *const f32, s: *mut f32,
        ) -> usize {
            // SAFETY: the caller upholds the `# Safety` contract above: the CPU has `$feature`, so
            // the intrinsics and target-feature calls are sound, and every offset below stays
            // within the extents it states (the loops run to `rows` and F, and past K's columns
            // never).
            unsafe {
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
        }

        /// G [F][stride] += X^T R, FB features at a time from `start`; returns the
        /// features done.
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `rows` rows of F values, `r` for `rows` rows
        /// of `M * LANES` values, and `g` readable and writable for F rows of `M * LANES` values.
        #[target_feature(enable = $feature)]
        unsafe fn gradient_wide_features<const M: usize, const FB: usize>(
            x: *const f32, f: usize, rows: usize, r: *const f32, g: *mut f32, start: usize,
        ) -> usize {
            // SAFETY: the caller upholds the `# Safety` contract above: the CPU has `$feature`, so
            // the intrinsics and target-feature calls are sound, and every offset below stays
            // within the extents it states (the loops run to `rows` and F, and past K's columns
            // never).
            unsafe {
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
        }

        /// S = X V in the wide layout (stride a whole number of vectors).
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `rows` rows of F values, `v` for F rows of
        /// `stride` values, and `s` writable for `rows` rows of `stride` values. (A `stride` the
        /// kernels are not compiled for panics.)
        pub unsafe fn scores_wide(x: *const f32, f: usize, rows: usize, v: *const f32, stride: usize, s: *mut f32) {
            // SAFETY: the caller upholds the `# Safety` contract above; the kernels called get the
            // same CPU and, offset past the rows done, the rest of the same extents.
            unsafe {
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
        }

        /// G += X^T R in the wide layout.
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `rows` rows of F values, `r` for `rows` rows
        /// of `stride` values, and `g` readable and writable for F rows of `stride` values.
        pub unsafe fn gradient_wide(x: *const f32, f: usize, rows: usize, r: *const f32, stride: usize, g: *mut f32) {
            // SAFETY: the caller upholds the `# Safety` contract above; the kernels called get the
            // same CPU and, offset past the rows done, the rest of the same extents.
            unsafe {
                match stride / LANES {
                    $($gm => {
                        let done = gradient_wide_features::<$gm, $fb>(x, f, rows, r, g, 0);
                        gradient_wide_features::<$gm, 1>(x, f, rows, r, g, done);
                    })*
                    other => unreachable!("wide kernel for {other} vectors"),
                }
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
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `rows` rows of F values (f32, or u16 with
        /// `BF16`), `vt` for K rows of F values, and `s` writable for K values at each of `rows`
        /// rows `s_stride` apart.
        #[target_feature(enable = $feature)]
        unsafe fn scores_narrow_rows<const K: usize, const RB: usize, const BF16: bool>(
            x: *const u8, f: usize, rows: usize, vt: *const f32, s: *mut f32,
            s_stride: usize, ahead: &mut super::Prefetch,
        ) -> usize {
            // SAFETY: the caller upholds the `# Safety` contract above: the CPU has `$feature`, so
            // the intrinsics and target-feature calls are sound, and every offset below stays
            // within the extents it states (the loops run to `rows` and F, and past K's columns
            // never).
            unsafe {
                let load = |at: usize| row_values::<BF16>(x, at);
                let scalar = |at: usize| row_value::<BF16>(x, at);
                let full = f / LANES * LANES;
                let panel = super::simd::score_panel(K, LANES);
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
        }

        /// The vector of row values at `at`: f32 rows, or bf16 rows (their bits, BF16)
        /// widened to f32.
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `LANES` values (f32, or u16 with `BF16`)
        /// from value `at`.
        #[inline(always)]
        unsafe fn row_values<const BF16: bool>(x: *const u8, at: usize) -> $vector {
            // SAFETY: the caller upholds the `# Safety` contract above (readable values, a CPU with
            // `$feature` for the load).
            unsafe {
                if BF16 {
                    $load_bf16((x as *const u16).add(at))
                } else {
                    $load((x as *const f32).add(at))
                }
            }
        }

        /// As [`row_values`], one value.
        ///
        /// # Safety
        /// `x` is readable for the value (f32, or u16 with `BF16`) at `at`.
        #[inline(always)]
        unsafe fn row_value<const BF16: bool>(x: *const u8, at: usize) -> f32 {
            // SAFETY: the caller upholds the `# Safety` contract above (a readable value at `at`).
            unsafe {
                if BF16 {
                    f32::from_bits((*(x as *const u16).add(at) as u32) << 16)
                } else {
                    *(x as *const f32).add(at)
                }
            }
        }

        /// out [F] = sum_i d_i x_i over `rows` rows of `x` (f32, or bf16 bits with BF16,
        /// widened in registers), each feature's sum in row order. A few rows at a time
        /// along all of F, the sums kept in `out` (in L1) between them: the rows then stream
        /// in order, where sweeping all rows for a few features at a time waited on L2.
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `rows` rows of F values (f32, or u16 with
        /// `BF16`), `d` for `rows` values, and `out` writable for F values.
        #[target_feature(enable = $feature)]
        pub unsafe fn weighted_sum<const BF16: bool>(
            x: *const u8, f: usize, rows: usize, d: *const f32, out: *mut f32, ahead: &[u8],
        ) {
            // SAFETY: the caller upholds the `# Safety` contract above: the CPU has `$feature`, so
            // the intrinsics and target-feature calls are sound, and every offset below stays
            // within the extents it states (the loops run to `rows` and F, and past K's columns
            // never).
            unsafe {
                const RG: usize = super::simd::SUM_ROWS;
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
        }

        /// For each of `rows` rows of `x` (f32, or bf16 bits with BF16, widened in registers):
        /// its score s = x . v, its derivative d = `derivative(s)` (stored in `d_out`), and
        /// out [F] = sum_i d_i x_i, summed in row order (the bits of [`weighted_sum`] for the
        /// same d). Each row is read from memory once and again from L1 for its sum.
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `rows` rows of F values (f32, or u16 with
        /// `BF16`), `v` for F values, `d_out` writable for `rows` values, and `out` for F values.
        #[target_feature(enable = $feature)]
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn score_and_sum<const BF16: bool, D: FnMut(f32) -> f32>(
            x: *const u8, f: usize, rows: usize, v: *const f32, d_out: *mut f32, out: *mut f32,
            derivative: &mut D, ahead: &[u8],
        ) {
            // SAFETY: the caller upholds the `# Safety` contract above: the CPU has `$feature`, so
            // the intrinsics are sound, and every offset stays within the stated extents (the
            // loops run to `rows` and F).
            unsafe {
                let whole = f / LANES * LANES;
                let quads = whole / (4 * LANES) * (4 * LANES);
                let mut ahead = super::Prefetch::new(ahead, rows * (quads / (4 * LANES) + whole / LANES));
                std::ptr::write_bytes(out, 0, f);
                for i in 0..rows {
                    let row = i * f;
                    let mut acc = [$zero(); 4];
                    let mut j = 0;
                    while j < quads {
                        ahead.step();
                        for (q, acc) in acc.iter_mut().enumerate() {
                            let at = j + q * LANES;
                            *acc = $fmadd(row_values::<BF16>(x, row + at), $load(v.add(at)), *acc);
                        }
                        j += 4 * LANES;
                    }
                    while j < whole {
                        acc[0] = $fmadd(row_values::<BF16>(x, row + j), $load(v.add(j)), acc[0]);
                        j += LANES;
                    }
                    let mut s = $hsum($addps($addps(acc[0], acc[1]), $addps(acc[2], acc[3])));
                    for t in whole..f {
                        s = row_value::<BF16>(x, row + t).mul_add(*v.add(t), s);
                    }
                    let d = derivative(s);
                    *d_out.add(i) = d;
                    let dv = $set1(d);
                    let mut j = 0;
                    while j < whole {
                        ahead.step();
                        $store(out.add(j), $fmadd(dv, row_values::<BF16>(x, row + j), $load(out.add(j))));
                        j += LANES;
                    }
                    for t in whole..f {
                        *out.add(t) = d.mul_add(row_value::<BF16>(x, row + t), *out.add(t));
                    }
                }
            }
        }

        /// G^T [K][F] += R^T X, C vectors of features at a time; R rows `r_stride` apart.
        ///
        /// # Safety
        /// The CPU has `$feature`; `x` is readable for `rows` rows of F values, `r` for K values at
        /// each of `rows` rows `r_stride` apart, and `gt` readable and writable for K rows of F
        /// values.
        #[target_feature(enable = $feature)]
        unsafe fn gradient_narrow_chunks<const K: usize, const C: usize>(
            x: *const f32, f: usize, rows: usize, r: *const f32, r_stride: usize, gt: *mut f32,
        ) {
            // SAFETY: the caller upholds the `# Safety` contract above: the CPU has `$feature`, so
            // the intrinsics and target-feature calls are sound, and every offset below stays
            // within the extents it states (the loops run to `rows` and F, and past K's columns
            // never).
            unsafe {
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
        }

        /// S = X V in the narrow layout, K <= 8, S rows `s_stride` apart.
        ///
        /// # Safety
        /// The CPU has `$feature`; 1 <= `k` <= 8 (others panic); `x` is readable for `rows` rows of
        /// F values, `vt` for `k` rows of F values, and `s` writable for `k` values at each of
        /// `rows` rows `s_stride` apart.
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn scores_narrow(x: *const f32, f: usize, rows: usize, vt: *const f32, k: usize, s: *mut f32, s_stride: usize, ahead: &[u8]) {
            // SAFETY: the caller upholds the `# Safety` contract above; the kernels called get the
            // same CPU and, offset past the rows done, the rest of the same extents.
            unsafe {
                scores_narrow_any::<false>(x as *const u8, 4, f, rows, vt, k, s, s_stride, ahead)
            }
        }

        /// S = X V in the narrow layout from f32 rows, or (BF16) bf16 rows widened in
        /// registers; `size` bytes a value. The leftover rows in halving steps.
        ///
        /// # Safety
        /// As [`scores_narrow`], with `x` rows of f32 values (`size` 4), or with `BF16` of u16
        /// values (`size` 2).
        #[allow(clippy::too_many_arguments)]
        unsafe fn scores_narrow_any<const BF16: bool>(x: *const u8, size: usize, f: usize, rows: usize, vt: *const f32, k: usize, s: *mut f32, s_stride: usize, ahead: &[u8]) {
            // SAFETY: the caller upholds the `# Safety` contract above; the kernels called get the
            // same CPU and, offset past the rows done, the rest of the same extents.
            unsafe {
                super::simd::seq_macro_narrow!(k, K => {
                    const RB: usize = $narrow(K);
                    let mut ahead = super::Prefetch::new(ahead, rows.div_ceil(RB) * (f / LANES));
                    let mut done = scores_narrow_rows::<K, RB, BF16>(x, f, rows, vt, s, s_stride, &mut ahead);
                    done += scores_narrow_rows::<K, { super::half_of(RB) }, BF16>(x.add(done * f * size), f, rows - done, vt, s.add(done * s_stride), s_stride, &mut ahead);
                    scores_narrow_rows::<K, 1, BF16>(x.add(done * f * size), f, rows - done, vt, s.add(done * s_stride), s_stride, &mut ahead);
                })
            }
        }

        /// S = X V in the narrow layout from bf16 X, widened in registers.
        ///
        /// # Safety
        /// The CPU has `$feature`; 1 <= `k` <= 8 (others panic); `x` is readable for `rows` rows of
        /// F u16 values, `vt` for `k` rows of F f32 values, and `s` writable for `rows` rows of
        /// `k`.
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn scores_narrow_bf16(x: *const u16, f: usize, rows: usize, vt: *const f32, k: usize, s: *mut f32, ahead: &[u8]) {
            // SAFETY: the caller upholds the `# Safety` contract above; the kernels called get the
            // same CPU and, offset past the rows done, the rest of the same extents.
            unsafe {
                scores_narrow_any::<true>(x as *const u8, 2, f, rows, vt, k, s, k, ahead)
            }
        }

        /// G += X^T R in the narrow layout, K <= 8, R rows `r_stride` apart.
        ///
        /// # Safety
        /// The CPU has `$feature`; 1 <= `k` <= 8 (others panic); `x` is readable for `rows` rows of
        /// F values, `r` for `k` values at each of `rows` rows `r_stride` apart, and `gt` readable
        /// and writable for `k` rows of F values.
        #[allow(clippy::too_many_arguments)]
        pub unsafe fn gradient_narrow(x: *const f32, f: usize, rows: usize, r: *const f32, r_stride: usize, k: usize, gt: *mut f32) {
            // SAFETY: the caller upholds the `# Safety` contract above; the kernels called get the
            // same CPU and, offset past the rows done, the rest of the same extents.
            unsafe {
                super::simd::seq_macro_narrow!(k, K => gradient_narrow_chunks::<K, { $narrow(K) }>(x, f, rows, r, r_stride, gt))
            }
        }
    };
}
pub(super) use simd_kernels;

/// Features per panel of the narrow scores for rank K: about 12 KB of V, a part of L1.
pub(super) const fn score_panel(k: usize, lanes: usize) -> usize {
    let features = 3072 / k / lanes * lanes;
    if features < lanes {
        lanes
    } else {
        features
    }
}

/// Half of a register blocking, at least 1: the next, smaller blocking for a block's leftover
/// rows.
pub(super) const fn half_of(blocking: usize) -> usize {
    if blocking > 1 {
        blocking / 2
    } else {
        1
    }
}

/// Runs `$body` with the const `$name` equal to `$k` (1..=8).
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
pub(super) use seq_macro_narrow;
