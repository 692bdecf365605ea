//! The fit's pass through the scores S = X V (the pass before the fused one): per block of
//! rows S_b = X_b V, then each user's loss, weight gradient (from S) and Adam step, and one
//! weighted row sum X_u^T d_u per user for G_V. It reads X once and X_u again from L2 once, at
//! 2 n_u F K flops for S; the regularized method at small K runs it (its second forward pass
//! reads the rows of S, not of X). See [`super::ChunkUse`].

use std::ops::Range;

use super::{block_scores, BlockRows, ChunkWork, PassSpec, RowWeighting};
use crate::data::Preferences;
use crate::kernels::Isa;
use crate::logistic::{
    dot, logistic_terms, logits_from_transposed, softmax_in_place, transpose_rows,
};

impl ChunkWork {
    /// One pass: per block S_b = X_b V, the users' losses, gradients and Adam steps, then
    /// each user's X_u^T d_u while X_b is still in cache; G_V gathers them a batch at a time.
    pub(super) fn scored_pass(&mut self, data: &Preferences, spec: &PassSpec) {
        let offsets = data.user_offsets();
        let gradient_kernels = &spec.gradient_kernels;
        let f = data.n_features();
        // Moved out for the pass so that the block's rows and the users' state borrow apart.
        let mut buffer = std::mem::take(&mut self.rows_buffer);
        for b in 0..self.blocks.len() {
            let users = self.blocks[b].clone();
            let rows = offsets[users.start]..offsets[users.end];
            let local = (rows.start - self.rows.start) * self.stride
                ..(rows.end - self.rows.start) * self.stride;
            // The next block's rows, fetched into L2 while this one computes: the first half
            // during its scores, the rest during its users' sums.
            let ahead = self.next_block_bytes(data, b);
            let (ahead_scores, ahead_sums) = ahead.split_at(ahead.len() / 2);
            let x = block_scores(
                data,
                rows.clone(),
                &spec.kernels,
                spec.packed_basis,
                &mut self.scores[local],
                &mut buffer,
                ahead_scores,
            );
            if self.waiting + users.len() > self.user_sums.len() / f {
                self.add_waiting_users(gradient_kernels, f);
            }
            let (before, after) = self.update_scored_users(offsets, users.clone(), spec);
            self.loss_before += before;
            self.loss_after += after;
            // Each user's X_u^T d_u, the prefetch spread over the block's users.
            let mut shares = ahead_sums.chunks(ahead_sums.len().div_ceil(users.len()).max(1));
            for (i, u) in users.clone().enumerate() {
                let (first, end) = (offsets[u] - rows.start, offsets[u + 1] - rows.start);
                let d = &self.row_derivatives[first..end];
                let out = &mut self.user_sums[(self.waiting + i) * f..][..f];
                let ahead = shares.next().unwrap_or(&[]);
                match x {
                    BlockRows::F32(x) => {
                        gradient_kernels.weighted_row_sum(&x[first * f..end * f], d, out, ahead)
                    }
                    BlockRows::Bf16(bits) => gradient_kernels.weighted_row_sum_bf16(
                        &bits[first * f..end * f],
                        d,
                        out,
                        ahead,
                    ),
                }
            }
            self.waiting += users.len();
        }
        self.add_waiting_users(gradient_kernels, f);
        self.rows_buffer = buffer;
    }

    /// [`Self::scored_user_update`] for `users`, compiled for the kernels' instruction set so that
    /// the per-row logistic terms vectorize (the same operations, so the same bits, on any).
    fn update_scored_users(
        &mut self,
        offsets: &[usize],
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        match spec.kernels.isa() {
            // SAFETY: a `BlockKernels` holds only an instruction set this CPU runs (its
            // constructors check): here AVX512-F.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.update_scored_users_avx512(offsets, users, spec) },
            // SAFETY: as above: here AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.update_scored_users_avx2(offsets, users, spec) },
            _ => self.update_scored_users_inline(offsets, users, spec),
        }
    }

    /// [`Self::update_scored_users_inline`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX512-F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn update_scored_users_avx512(
        &mut self,
        offsets: &[usize],
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        self.update_scored_users_inline(offsets, users, spec)
    }

    /// [`Self::update_scored_users_inline`] compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn update_scored_users_avx2(
        &mut self,
        offsets: &[usize],
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        self.update_scored_users_inline(offsets, users, spec)
    }

    #[inline(always)]
    fn update_scored_users_inline(
        &mut self,
        offsets: &[usize],
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        let (mut before, mut after) = (0.0, 0.0);
        let (first_user, first_row) = (users.start, offsets[users.start]);
        for u in users {
            let slot = self.waiting + u - first_user;
            let (b, a) = self.scored_user_update(offsets, u, spec, slot, offsets[u] - first_row);
            before += b;
            after += a;
        }
        (before, after)
    }

    /// User u's loss and weight gradient from its scores, its Adam step, and its residuals'
    /// two factors for G_V: its rows' d_i (from `first_row` of the block) and its weights
    /// (waiting slot `slot`). Returns the loss before and after the update (after only for
    /// the alternating method).
    #[inline(always)]
    fn scored_user_update(
        &mut self,
        offsets: &[usize],
        u: usize,
        spec: &PassSpec,
        slot: usize,
        first_row: usize,
    ) -> (f64, f64) {
        let (k, stride) = (self.rank, self.stride);
        let c = spec.logit_scale;
        let n = offsets[u + 1] - offsets[u];
        let row_scale = match spec.weighting {
            RowWeighting::PerUserMean => 1.0 / n as f64,
            RowWeighting::GlobalMean { n_rows } => 1.0 / n_rows as f64,
        };
        let coef = row_scale as f32 * c;
        let lu = u - self.users.start;
        let logit_range = lu * k..(lu + 1) * k;
        let base = (offsets[u] - self.rows.start) * stride;
        let Self {
            scores,
            user_scores,
            row_values,
            weights,
            grad_weights: grad,
            logits,
            first_moment,
            second_moment,
            user_weights,
            row_derivatives,
            gradient_stride,
            ..
        } = self;
        let gradient_stride = *gradient_stride;
        transpose_rows(
            &scores[base..base + n * stride],
            stride,
            k,
            &mut user_scores[..n * k],
        );
        let zt = &user_scores[..n * k];
        let s = &mut row_values[..n];

        weights.copy_from_slice(&logits[logit_range.clone()]);
        softmax_in_place(weights);
        let before = user_loss_and_gradient(zt, weights, c, row_scale, s, grad);
        let (logits, m, v) = (
            &mut logits[logit_range.clone()],
            &mut first_moment[logit_range.clone()],
            &mut second_moment[logit_range],
        );
        let mut after = 0.0;
        if spec.alternate {
            // The V-step sees the updated weights: its loss and residuals come after the step.
            spec.weight_step.apply(logits, grad, m, v);
            weights.copy_from_slice(logits);
            softmax_in_place(weights);
            logits_from_transposed(zt, weights, c, s);
            after = logistic_terms(s) * row_scale;
        }
        if !user_weights.is_empty() {
            // R_i = (d_i * row_scale * c) w: the scaled derivatives, and w zero-padded.
            for (out, &d) in row_derivatives[first_row..first_row + n]
                .iter_mut()
                .zip(s.iter())
            {
                *out = d * coef;
            }
            let padded = &mut user_weights[slot * gradient_stride..][..gradient_stride];
            padded[..k].copy_from_slice(weights);
            padded[k..].fill(0.0);
        }
        if !spec.alternate {
            spec.weight_step.apply(logits, grad, m, v);
        }
        (before, after)
    }
}

/// One user's loss row_scale * sum_i -log sigmoid(c Z_i . w) from its scores transposed, Zt
/// [K][n], and the gradient with respect to its logits (w = softmax of them) in `grad`.
/// Leaves in `s` [n] each row's d/ds of its loss term (before the row scale).
#[inline(always)]
pub(crate) fn user_loss_and_gradient(
    zt: &[f32],
    weights: &[f32],
    c: f32,
    row_scale: f64,
    s: &mut [f32],
    grad: &mut [f32],
) -> f64 {
    let n = s.len();
    logits_from_transposed(zt, weights, c, s);
    let loss = logistic_terms(s) * row_scale;
    let coef = row_scale as f32 * c;
    for (g, column) in grad.iter_mut().zip(zt.chunks_exact(n)) {
        *g = dot(column, s) * coef;
    }
    // Through the softmax: dL/dW_k = w_k (g_k - w . g).
    let wg: f32 = weights.iter().zip(grad.iter()).map(|(&w, &g)| w * g).sum();
    for (g, &w) in grad.iter_mut().zip(weights) {
        *g = w * (*g - wg);
    }
    loss
}
