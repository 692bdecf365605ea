//! One pass over the packed rows: scores S = X V per block, each user's logistic loss and weight
//! gradient in closed form, optionally the user's Adam step, and G_V += X^T R. A user's
//! residuals are rank one, R_u = d_u w_u^T, so G_V takes X_u^T d_u (one weighted sum of the
//! user's rows) times w_u^T, summed for a batch of users by one blocked product.
//!
//! Rows are split into a fixed number of chunks that depends only on the data, each owning its
//! users' logits, Adam moments, scores and a partial G_V; partials are summed in chunk order, so
//! results are identical for any number of threads. S, R, V and G use the layouts of
//! [`BlockKernels`] (K padded to whole SIMD vectors, or V transposed for small K).

use std::ops::Range;

use rayon::prelude::*;

use crate::adam::AdamStep;
use crate::data::{FeatureRows, Preferences};
use crate::kernels::{BlockKernels, Isa};
use crate::logistic::{
    dot, logistic_terms, logits_from_transposed, softmax_in_place, transpose_rows,
};

/// Feature values per block of whole users: small enough that X_b (and V) stay in a core's L2
/// cache between S_b = X_b V and the users' sums X_u^T d_u.
const BLOCK_VALUES: usize = 1 << 16;
/// As [`BLOCK_VALUES`] for the mixed-precision kernels: a block of two 30-row users (rather
/// than one) ran them 2.5% faster (`examples/mixed_probe.rs`, `BLOCK=60`, measured with the
/// earlier mixed gradient, a product with K).
const MIXED_BLOCK_VALUES: usize = 1 << 18;
/// Users whose sums X_u^T d_u are gathered before one product adds them to G_V (more would
/// not stay in L2; fewer would read and write G more often).
const GRADIENT_USERS: usize = 16;
/// Feature values per chunk (the unit of parallel work), before the cap on the chunk count.
const CHUNK_VALUES: usize = 1 << 20;
/// At most this many chunks, which bounds the memory of the partial gradients.
const MAX_CHUNKS: usize = 16;

/// How each row's loss is weighted in the objective.
#[derive(Debug, Clone, Copy)]
pub(crate) enum RowWeighting {
    /// Sum over users of each user's mean (`LoRe`, `PersonalizeBatch`).
    PerUserMean,
    /// Mean over all rows (`LoRe_regularized`).
    GlobalMean { n_rows: usize },
}

/// What one pass does besides computing the loss.
#[derive(Debug, Clone, Copy)]
pub(crate) struct PassSpec<'a> {
    pub kernels: BlockKernels,
    /// V packed for `kernels`.
    pub packed_basis: &'a [f32],
    pub logit_scale: f32,
    pub weighting: RowWeighting,
    /// The step for the users' logits.
    pub weight_step: AdamStep,
    /// Residuals (and the loss after) from the updated weights: the alternating method's V-step.
    pub alternate: bool,
}

/// The rows and state of one chunk of users.
pub(crate) struct ChunkWork {
    users: Range<usize>,
    rows: Range<usize>,
    /// Consecutive user ranges, each a block of rows that fits in L2.
    blocks: Vec<Range<usize>>,
    rank: usize,
    /// Values per row of `scores`.
    stride: usize,
    /// Scores S of the chunk's rows, [rows x stride].
    scores: Vec<f32>,
    /// Logits W of the chunk's users [users x K] and their Adam moments.
    pub logits: Vec<f32>,
    first_moment: Vec<f32>,
    second_moment: Vec<f32>,
    /// This chunk's part of G_V, packed for the f32 kernels of the shape
    /// ([`BlockKernels::gradient_kernels`]).
    grad_basis: Vec<f32>,
    /// Users gathered for G_V: their sums X_u^T d_u [users x F] and weights w_u [users x
    /// stride of the gradient kernels, zero-padded], and how many are waiting.
    user_sums: Vec<f32>,
    user_weights: Vec<f32>,
    waiting: usize,
    /// Values per row of `user_weights` (K padded as the gradient kernels read it).
    gradient_stride: usize,
    /// The current block's d_i, each row's loss derivative times its weight in the objective.
    row_derivatives: Vec<f32>,
    /// A block's rows in the form the kernels read them.
    rows_buffer: RowBuffers,
    /// One user's scores transposed, [K][n_u], and one logit (then derivative) per row.
    user_scores: Vec<f32>,
    row_values: Vec<f32>,
    weights: Vec<f32>,
    grad_weights: Vec<f32>,
    /// Loss of this chunk before and after the users' update in the last pass.
    pub loss_before: f64,
    pub loss_after: f64,
}

/// Splits the users into chunks and blocks and allocates every buffer a pass needs.
/// `logits` are the initial W [N x K].
pub(crate) fn build_chunks(
    data: &Preferences,
    kernels: &BlockKernels,
    rank: usize,
    logits: &[f32],
    with_gradient: bool,
) -> Vec<ChunkWork> {
    let f = data.n_features();
    let offsets = data.user_offsets();
    let n_rows = data.n_rows();
    let n_chunks = (n_rows * f).div_ceil(CHUNK_VALUES).clamp(1, MAX_CHUNKS);
    let chunk_rows = n_rows.div_ceil(n_chunks);
    let widen = match data.features() {
        crate::data::FeatureRows::F32(_) => false,
        crate::data::FeatureRows::Bf16(_) => !kernels.streams_bf16(),
        _ => true,
    };
    let mixed = kernels.is_mixed_bf16();
    let block_values = if mixed {
        MIXED_BLOCK_VALUES
    } else {
        BLOCK_VALUES
    };
    let block_rows = (block_values / f).max(1);
    let narrow = mixed && !matches!(data.features(), crate::data::FeatureRows::Bf16(_));
    let stride = kernels.score_stride();
    let gradient_kernels = kernels.gradient_kernels();

    let mut chunks = Vec::new();
    let mut start_user = 0;
    while start_user < data.n_users() {
        let mut end_user = start_user + 1;
        while end_user < data.n_users() && offsets[end_user] - offsets[start_user] < chunk_rows {
            end_user += 1;
        }
        let users = start_user..end_user;
        let rows = offsets[start_user]..offsets[end_user];
        let mut blocks = Vec::new();
        let mut max_block_rows = 0;
        let mut b = start_user;
        while b < end_user {
            let mut e = b + 1;
            while e < end_user && offsets[e + 1] - offsets[b] <= block_rows {
                e += 1;
            }
            max_block_rows = max_block_rows.max(offsets[e] - offsets[b]);
            blocks.push(b..e);
            b = e;
        }
        let n_users = users.len();
        let max_user_rows = users
            .clone()
            .map(|u| offsets[u + 1] - offsets[u])
            .max()
            .unwrap_or(0);
        // Room for a whole block beyond the batch's fill level.
        let max_block_users = blocks.iter().map(|b| b.len()).max().unwrap_or(0);
        let batch = GRADIENT_USERS.max(max_block_users);
        chunks.push(ChunkWork {
            logits: logits[users.start * rank..users.end * rank].to_vec(),
            first_moment: vec![0.0; n_users * rank],
            second_moment: vec![0.0; n_users * rank],
            scores: vec![0.0; rows.len() * stride],
            grad_basis: if with_gradient {
                vec![0.0; gradient_kernels.packed_len()]
            } else {
                Vec::new()
            },
            rows_buffer: RowBuffers {
                widened: Vec::with_capacity(if widen { max_block_rows * f } else { 0 }),
                narrowed: vec![0; if narrow { max_block_rows * f } else { 0 }],
            },
            user_sums: vec![0.0; if with_gradient { batch * f } else { 0 }],
            user_weights: vec![
                0.0;
                if with_gradient {
                    batch * gradient_kernels.score_stride()
                } else {
                    0
                }
            ],
            waiting: 0,
            gradient_stride: gradient_kernels.score_stride(),
            row_derivatives: vec![0.0; max_block_rows],
            user_scores: vec![0.0; max_user_rows * rank],
            row_values: vec![0.0; max_user_rows],
            weights: vec![0.0; rank],
            grad_weights: vec![0.0; rank],
            loss_before: 0.0,
            loss_after: 0.0,
            users,
            rows,
            blocks,
            rank,
            stride,
        });
        start_user = end_user;
    }
    chunks
}

impl ChunkWork {
    /// S = X V for every row of the chunk (kept for passes that never touch X again).
    pub fn compute_scores(
        &mut self,
        data: &Preferences,
        kernels: &BlockKernels,
        packed_basis: &[f32],
    ) {
        let offsets = data.user_offsets();
        for b in 0..self.blocks.len() {
            let users = self.blocks[b].clone();
            let ahead = self.next_block_bytes(data, b);
            let rows = offsets[users.start]..offsets[users.end];
            let local = (rows.start - self.rows.start) * self.stride
                ..(rows.end - self.rows.start) * self.stride;
            block_scores(
                data,
                rows,
                kernels,
                packed_basis,
                &mut self.scores[local],
                &mut self.rows_buffer,
                ahead,
            );
        }
    }

    /// One fused pass: per block S_b = X_b V, the users' losses, gradients and Adam steps, then
    /// each user's X_u^T d_u while X_b is still in cache; G_V gathers them a batch at a time.
    pub fn fit_pass(&mut self, data: &Preferences, spec: &PassSpec) {
        let offsets = data.user_offsets();
        let gradient_kernels = spec.kernels.gradient_kernels();
        let f = data.n_features();
        self.grad_basis.fill(0.0);
        self.waiting = 0;
        self.loss_before = 0.0;
        self.loss_after = 0.0;
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
                self.add_waiting_users(&gradient_kernels, f);
            }
            let (before, after) = self.update_users(offsets, users.clone(), spec);
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
        self.add_waiting_users(&gradient_kernels, f);
        self.rows_buffer = buffer;
    }

    /// G_V += sum over the waiting users of (X_u^T d_u) w_u^T, one blocked product (F features).
    fn add_waiting_users(&mut self, gradient_kernels: &BlockKernels, f: usize) {
        let n = self.waiting;
        if n == 0 {
            return;
        }
        gradient_kernels.accumulate_gradient(
            &self.user_sums[..n * f],
            &self.user_weights[..n * self.gradient_stride],
            &mut self.grad_basis,
        );
        self.waiting = 0;
    }

    /// The stored bytes of block `b + 1`'s rows (empty after the last block).
    fn next_block_bytes<'d>(&self, data: &'d Preferences, b: usize) -> &'d [u8] {
        let offsets = data.user_offsets();
        self.blocks.get(b + 1).map_or(&[], |next| {
            data.row_bytes(offsets[next.start]..offsets[next.end])
        })
    }

    /// The chunk's users.
    pub fn users(&self) -> Range<usize> {
        self.users.clone()
    }

    /// User u's scores after [`Self::compute_scores`]: its rows of S, [n_u x stride], and
    /// the stride (K, or K padded to whole vectors).
    pub fn user_score_rows(&self, offsets: &[usize], u: usize) -> (&[f32], usize) {
        debug_assert!(self.users.contains(&u));
        let n = offsets[u + 1] - offsets[u];
        let base = (offsets[u] - self.rows.start) * self.stride;
        (&self.scores[base..base + n * self.stride], self.stride)
    }

    /// [`Self::user_update`] for `users`, compiled for the kernels' instruction set so that
    /// the per-row logistic terms vectorize (the same operations, so the same bits, on any).
    fn update_users(
        &mut self,
        offsets: &[usize],
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        match spec.kernels.isa() {
            // SAFETY: a `BlockKernels` holds only an instruction set this CPU runs (its
            // constructors check): here AVX512-F.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.update_users_avx512(offsets, users, spec) },
            // SAFETY: as above: here AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.update_users_avx2(offsets, users, spec) },
            _ => self.update_users_inline(offsets, users, spec),
        }
    }

    /// [`Self::update_users_inline`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX512-F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn update_users_avx512(
        &mut self,
        offsets: &[usize],
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        self.update_users_inline(offsets, users, spec)
    }

    /// [`Self::update_users_inline`] compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn update_users_avx2(
        &mut self,
        offsets: &[usize],
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        self.update_users_inline(offsets, users, spec)
    }

    #[inline(always)]
    fn update_users_inline(
        &mut self,
        offsets: &[usize],
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        let (mut before, mut after) = (0.0, 0.0);
        let (first_user, first_row) = (users.start, offsets[users.start]);
        for u in users {
            let slot = self.waiting + u - first_user;
            let (b, a) = self.user_update(offsets, u, spec, slot, offsets[u] - first_row);
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
    fn user_update(
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

/// Buffers for a block's rows in the form the kernels read them.
#[derive(Default)]
struct RowBuffers {
    /// The rows widened to f32 (half-precision files).
    widened: Vec<f32>,
    /// Mixed precision: the rows rounded to bf16 (files stored wider).
    narrowed: Vec<u16>,
}

/// A block's rows as the gradient reads them.
enum BlockRows<'w> {
    F32(&'w [f32]),
    /// bf16 rows (their bits): as stored, or rounded for mixed precision; the row sums widen
    /// them in registers.
    Bf16(&'w [u16]),
}

/// S_b = X_b V for the rows `rows`; returns X_b for the gradient. bf16 rows stream straight
/// from memory through the narrow kernels, which widen them in registers (in both products);
/// other half-precision rows are widened first. The mixed-precision kernels read bf16 rows
/// (rounded first when stored wider). The SIMD kernels fetch `ahead` (stored bytes of the
/// rows read next) into L2 on the way.
fn block_scores<'w>(
    data: &'w Preferences,
    rows: Range<usize>,
    kernels: &BlockKernels,
    packed_basis: &[f32],
    scores: &mut [f32],
    buffer: &'w mut RowBuffers,
    ahead: &[u8],
) -> BlockRows<'w> {
    use half::slice::HalfFloatSliceExt;
    let f = data.n_features();
    if kernels.is_mixed_bf16() {
        let bits: &[u16] = match data.features() {
            FeatureRows::Bf16(values) => values[rows.start * f..rows.end * f].reinterpret_cast(),
            _ => {
                let x = data.rows_f32(rows, &mut buffer.widened);
                let out = &mut buffer.narrowed[..x.len()];
                kernels.narrow_rows(x, out);
                out
            }
        };
        kernels.scores_mixed(bits, packed_basis, scores, ahead);
        return BlockRows::Bf16(bits);
    }
    if let (FeatureRows::Bf16(values), true) = (data.features(), kernels.streams_bf16()) {
        let bits = values[rows.start * f..rows.end * f].reinterpret_cast();
        kernels.scores_bf16(bits, packed_basis, scores, ahead);
        return BlockRows::Bf16(bits);
    }
    let x = data.rows_f32(rows, &mut buffer.widened);
    kernels.scores(x, packed_basis, scores, ahead);
    BlockRows::F32(x)
}

/// Runs `work` on every chunk in parallel.
pub(crate) fn for_each_chunk(
    chunks: &mut [ChunkWork],
    work: impl Fn(&mut ChunkWork) + Sync + Send,
) {
    if chunks.len() == 1 {
        work(&mut chunks[0]);
    } else {
        chunks.par_iter_mut().for_each(work);
    }
}

/// Sums the chunks' packed partial gradients in chunk order (thread-count independent) into
/// `packed_total`, then unpacks it into `grad` [F x K].
pub(crate) fn reduce_gradients(
    chunks: &[ChunkWork],
    kernels: &BlockKernels,
    packed_total: &mut [f32],
    grad: &mut [f32],
) {
    const VALUES_PER_TASK: usize = 1 << 12;
    packed_total
        .par_chunks_mut(VALUES_PER_TASK)
        .enumerate()
        .for_each(|(t, out)| {
            let range = t * VALUES_PER_TASK..t * VALUES_PER_TASK + out.len();
            out.copy_from_slice(&chunks[0].grad_basis[range.clone()]);
            for chunk in &chunks[1..] {
                for (o, &g) in out.iter_mut().zip(&chunk.grad_basis[range.clone()]) {
                    *o += g;
                }
            }
        });
    kernels
        .gradient_kernels()
        .unpack_gradient(packed_total, grad);
}

/// The chunks' losses (before, after) summed in chunk order.
pub(crate) fn total_losses(chunks: &[ChunkWork]) -> (f64, f64) {
    chunks.iter().fold((0.0, 0.0), |(b, a), c| {
        (b + c.loss_before, a + c.loss_after)
    })
}

/// All users' logits [N x K], gathered from the chunks.
pub(crate) fn gather_logits(chunks: &[ChunkWork]) -> Vec<f32> {
    chunks
        .iter()
        .flat_map(|c| c.logits.iter().copied())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adam::AdamClock;
    use crate::data::{FeatureRows, Preferences};
    use rand::{Rng, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    use rand_distr::StandardNormal;

    fn normal(n: usize, scale: f32, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n)
            .map(|_| rng.sample::<f32, _>(StandardNormal) * scale)
            .collect()
    }

    fn softmax64(logits: &[f64]) -> Vec<f64> {
        let max = logits.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = logits.iter().map(|l| (l - max).exp()).collect();
        let sum: f64 = e.iter().sum();
        e.iter().map(|v| v / sum).collect()
    }

    fn nls64(s: f64) -> f64 {
        if s >= 0.0 {
            (-s).exp().ln_1p()
        } else {
            -s + s.exp().ln_1p()
        }
    }

    /// The objective in f64 straight from its definition, for finite differences.
    fn reference_loss(
        data: &Preferences,
        basis: &[f64],
        logits: &[f64],
        k: usize,
        c: f64,
        global: bool,
    ) -> f64 {
        let f = data.n_features();
        let mut scratch = Vec::new();
        let x = data.rows_f32(0..data.n_rows(), &mut scratch).to_vec();
        let mut total = 0.0;
        for u in 0..data.n_users() {
            let w = softmax64(&logits[u * k..(u + 1) * k]);
            let rows = data.user_rows(u);
            let n = rows.len() as f64;
            for i in rows {
                let mut s = 0.0;
                for j in 0..f {
                    let d: f64 = (0..k).map(|t| basis[j * k + t] * w[t]).sum();
                    s += x[i * f + j] as f64 * d;
                }
                total += nls64(c * s) / if global { data.n_rows() as f64 } else { n };
            }
        }
        total
    }

    fn assert_gradient(name: &str, analytic: &[f32], numeric: &[f64]) {
        for (i, (&a, &n)) in analytic.iter().zip(numeric).enumerate() {
            let tol = 2e-3 * n.abs().max(1e-3);
            assert!(
                (a as f64 - n).abs() <= tol,
                "{name}[{i}]: analytic {a}, numeric {n}"
            );
        }
    }

    #[test]
    fn logit_gradient_matches_finite_differences() {
        let (n, k, c, row_scale) = (7, 4, 0.05f32, 1.0 / 7.0);
        let scores = normal(n * k, 20.0, 1);
        let logits = normal(k, 1.0, 2);
        let mut weights = logits.clone();
        softmax_in_place(&mut weights);
        let mut grad = vec![0.0; k];
        let mut zt = vec![0.0; n * k];
        transpose_rows(&scores, k, k, &mut zt);
        let mut s = vec![0.0; n];
        let loss = user_loss_and_gradient(&zt, &weights, c, row_scale, &mut s, &mut grad);
        let loss64 = |l: &[f64]| -> f64 {
            let w = softmax64(l);
            scores
                .chunks_exact(k)
                .map(|row| {
                    let s: f64 = row.iter().zip(&w).map(|(&z, &w)| z as f64 * w).sum();
                    nls64(c as f64 * s)
                })
                .sum::<f64>()
                * row_scale
        };
        let base: Vec<f64> = logits.iter().map(|&v| v as f64).collect();
        assert!((loss - loss64(&base)).abs() < 1e-5);
        let h = 1e-4;
        let numeric: Vec<f64> = (0..k)
            .map(|t| {
                let (mut up, mut down) = (base.clone(), base.clone());
                up[t] += h;
                down[t] -= h;
                (loss64(&up) - loss64(&down)) / (2.0 * h)
            })
            .collect();
        assert_gradient("dW", &grad, &numeric);
    }

    fn basis_gradient_check(global: bool) {
        let (f, k, c) = (6, 3, 0.05f32);
        let users = [0u32, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2];
        let x = normal(users.len() * f, 10.0, 3);
        let data = Preferences::from_sorted_users(FeatureRows::F32(&x), f, &users).unwrap();
        let basis = normal(f * k, 1.0, 4);
        let logits = normal(3 * k, 1.0, 5);
        let kernels = BlockKernels::new(f, k);
        let mut packed = vec![0.0; kernels.packed_len()];
        kernels.pack_basis(&basis, &mut packed);
        let mut chunks = build_chunks(&data, &kernels, k, &logits, true);
        let spec = PassSpec {
            kernels,
            packed_basis: &packed,
            logit_scale: c,
            weighting: if global {
                RowWeighting::GlobalMean {
                    n_rows: users.len(),
                }
            } else {
                RowWeighting::PerUserMean
            },
            weight_step: AdamClock::new(0.1).begin_step(),
            alternate: global,
        };
        for_each_chunk(&mut chunks, |chunk| chunk.fit_pass(&data, &spec));
        let mut grad = vec![0.0; f * k];
        let mut packed_total = vec![0.0; kernels.gradient_kernels().packed_len()];
        reduce_gradients(&chunks, &kernels, &mut packed_total, &mut grad);
        // Joint: the gradient at the W the pass started from; alternating: at the updated W.
        let at_logits: Vec<f64> = if global {
            gather_logits(&chunks)
        } else {
            logits.clone()
        }
        .iter()
        .map(|&v| v as f64)
        .collect();
        let base: Vec<f64> = basis.iter().map(|&v| v as f64).collect();
        let (before, after) = total_losses(&chunks);
        let reported = if global { after } else { before };
        assert!(
            (reported - reference_loss(&data, &base, &at_logits, k, c as f64, global)).abs() < 1e-5
        );
        let h = 1e-3;
        let numeric: Vec<f64> = (0..f * k)
            .map(|t| {
                let (mut up, mut down) = (base.clone(), base.clone());
                up[t] += h;
                down[t] -= h;
                (reference_loss(&data, &up, &at_logits, k, c as f64, global)
                    - reference_loss(&data, &down, &at_logits, k, c as f64, global))
                    / (2.0 * h)
            })
            .collect();
        assert_gradient("dV", &grad, &numeric);
    }

    #[test]
    fn joint_basis_gradient_matches_finite_differences() {
        basis_gradient_check(false);
    }

    #[test]
    fn alternating_basis_gradient_matches_finite_differences() {
        basis_gradient_check(true);
    }
}
