//! One pass over the packed rows: scores S = X V per block, each user's logistic loss and weight
//! gradient in closed form, optionally the user's Adam step, residuals R, and G_V += X^T R.
//!
//! Rows are split into a fixed number of chunks that depends only on the data, each owning its
//! users' logits, Adam moments, scores and a partial G_V; partials are summed in chunk order, so
//! results are identical for any number of threads. S, R, V and G use the layouts of
//! [`BlockKernels`] (K padded to whole SIMD vectors, or V transposed for small K).

use std::ops::Range;

use rayon::prelude::*;

use crate::adam::AdamStep;
use crate::data::Preferences;
use crate::kernels::BlockKernels;
use crate::model::softmax_in_place;

/// Feature values per block of whole users: small enough that X_b (and V) stay in a core's L2
/// cache between S_b = X_b V and G += X_b^T R_b.
const BLOCK_VALUES: usize = 1 << 16;
/// Feature values per chunk (the unit of parallel work), before the cap on the chunk count.
const CHUNK_VALUES: usize = 1 << 20;
/// At most this many chunks, which bounds the memory of the partial gradients.
const MAX_CHUNKS: usize = 16;

/// -log sigmoid(s), computed without overflow.
#[inline]
pub fn neg_log_sigmoid(s: f32) -> f32 {
    if s >= 0.0 {
        (-s).exp().ln_1p()
    } else {
        -s + s.exp().ln_1p()
    }
}

/// d/ds of -log sigmoid(s) = -sigmoid(-s).
#[inline]
fn neg_log_sigmoid_derivative(s: f32) -> f32 {
    -1.0 / (1.0 + s.exp())
}

#[inline]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(&x, &y)| x * y).sum()
}

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
    /// Scores S (then residuals R) of the chunk's rows, [rows x stride].
    scores: Vec<f32>,
    /// Logits W of the chunk's users [users x K] and their Adam moments.
    pub logits: Vec<f32>,
    first_moment: Vec<f32>,
    second_moment: Vec<f32>,
    /// This chunk's part of G_V, packed like V.
    grad_basis: Vec<f32>,
    widened: Vec<f32>,
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
    let block_rows = (BLOCK_VALUES / f).max(1);
    let widen = !matches!(data.features(), crate::data::FeatureRows::F32(_));
    let stride = kernels.score_stride();

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
        chunks.push(ChunkWork {
            logits: logits[users.start * rank..users.end * rank].to_vec(),
            first_moment: vec![0.0; n_users * rank],
            second_moment: vec![0.0; n_users * rank],
            scores: vec![0.0; rows.len() * stride],
            grad_basis: if with_gradient {
                vec![0.0; kernels.packed_len()]
            } else {
                Vec::new()
            },
            widened: Vec::with_capacity(if widen { max_block_rows * f } else { 0 }),
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
        let mut widened = std::mem::take(&mut self.widened);
        for users in &self.blocks {
            let rows = offsets[users.start]..offsets[users.end];
            let local = (rows.start - self.rows.start) * self.stride
                ..(rows.end - self.rows.start) * self.stride;
            let x = data.rows_f32(rows, &mut widened);
            kernels.scores(x, packed_basis, &mut self.scores[local]);
        }
        self.widened = widened;
    }

    /// One fused pass: per block S_b = X_b V, the users' losses, gradients and Adam steps, then
    /// G_V += X_b^T R_b while X_b is still in cache.
    pub fn fit_pass(&mut self, data: &Preferences, spec: &PassSpec) {
        let offsets = data.user_offsets();
        self.grad_basis.fill(0.0);
        self.loss_before = 0.0;
        self.loss_after = 0.0;
        // Moved out for the pass so that the widened block and the users' state borrow apart.
        let mut widened = std::mem::take(&mut self.widened);
        for b in 0..self.blocks.len() {
            let users = self.blocks[b].clone();
            let rows = offsets[users.start]..offsets[users.end];
            let local = (rows.start - self.rows.start) * self.stride
                ..(rows.end - self.rows.start) * self.stride;
            let x = data.rows_f32(rows, &mut widened);
            spec.kernels
                .scores(x, spec.packed_basis, &mut self.scores[local.clone()]);
            for u in users {
                let (before, after) = self.user_update(offsets, u, spec, true);
                self.loss_before += before;
                self.loss_after += after;
            }
            spec.kernels
                .accumulate_gradient(x, &self.scores[local], &mut self.grad_basis);
        }
        self.widened = widened;
    }

    /// One Adam step of every user's logits on the stored scores (personalization).
    pub fn scores_pass(&mut self, data: &Preferences, spec: &PassSpec) {
        let offsets = data.user_offsets();
        self.loss_before = 0.0;
        for u in self.users.clone() {
            let (before, _) = self.user_update(offsets, u, spec, false);
            self.loss_before += before;
        }
    }

    /// User u's loss and weight gradient from its scores, its Adam step, and (when
    /// `residuals`) its rows' residuals R written over the scores. Returns the loss before and
    /// after the update (after only for the alternating method).
    fn user_update(
        &mut self,
        offsets: &[usize],
        u: usize,
        spec: &PassSpec,
        residuals: bool,
    ) -> (f64, f64) {
        let k = self.rank;
        let c = spec.logit_scale;
        let row_scale = match spec.weighting {
            RowWeighting::PerUserMean => 1.0 / (offsets[u + 1] - offsets[u]) as f64,
            RowWeighting::GlobalMean { n_rows } => 1.0 / n_rows as f64,
        };
        let lu = u - self.users.start;
        let logit_range = lu * k..(lu + 1) * k;
        let rows = (offsets[u] - self.rows.start) * self.stride
            ..(offsets[u + 1] - self.rows.start) * self.stride;
        let scores = &mut self.scores[rows];
        let weights = &mut self.weights;
        let grad = &mut self.grad_weights;

        weights.copy_from_slice(&self.logits[logit_range.clone()]);
        softmax_in_place(weights);
        let before = loss_and_logit_gradient(scores, self.stride, weights, c, row_scale, grad);
        let step = |logits: &mut [f32], m: &mut [f32], v: &mut [f32]| {
            let range = logit_range.clone();
            spec.weight_step.apply(
                &mut logits[range.clone()],
                grad,
                &mut m[range.clone()],
                &mut v[range],
            );
        };
        if spec.alternate {
            step(
                &mut self.logits,
                &mut self.first_moment,
                &mut self.second_moment,
            );
            weights.copy_from_slice(&self.logits[logit_range.clone()]);
            softmax_in_place(weights);
        }
        let after = if residuals {
            residuals_in_place(scores, self.stride, weights, c, row_scale)
        } else {
            0.0
        };
        if !spec.alternate {
            step(
                &mut self.logits,
                &mut self.first_moment,
                &mut self.second_moment,
            );
        }
        (before, if spec.alternate { after } else { 0.0 })
    }
}

/// A user's loss row_scale * sum_i -log sigmoid(c S_i . w) over its score rows S [n x stride]
/// (the first K values of each row), and the gradient with respect to the logits W_u
/// (w = softmax(W_u)) written to `grad`.
pub(crate) fn loss_and_logit_gradient(
    scores: &[f32],
    stride: usize,
    weights: &[f32],
    c: f32,
    row_scale: f64,
    grad: &mut [f32],
) -> f64 {
    let k = weights.len();
    let rs = row_scale as f32;
    grad.fill(0.0);
    let mut loss = 0.0f64;
    for row in scores.chunks_exact(stride) {
        let row = &row[..k];
        let s = c * dot(row, weights);
        loss += neg_log_sigmoid(s) as f64;
        let r = neg_log_sigmoid_derivative(s) * rs * c;
        for (g, &z) in grad.iter_mut().zip(row) {
            *g += r * z;
        }
    }
    // Through the softmax: dL/dW_k = w_k (g_k - w . g).
    let wg = dot(weights, grad);
    for (g, &w) in grad.iter_mut().zip(weights) {
        *g = w * (*g - wg);
    }
    loss * row_scale
}

/// Overwrites a user's score rows S [n x stride] with the residuals R = dL/dS (zero in the
/// padding, so that G_V = X^T R) and returns the user's loss at these weights.
pub(crate) fn residuals_in_place(
    scores: &mut [f32],
    stride: usize,
    weights: &[f32],
    c: f32,
    row_scale: f64,
) -> f64 {
    let k = weights.len();
    let rs = row_scale as f32;
    let mut loss = 0.0f64;
    for row in scores.chunks_exact_mut(stride) {
        let s = c * dot(&row[..k], weights);
        loss += neg_log_sigmoid(s) as f64;
        let r = neg_log_sigmoid_derivative(s) * rs * c;
        let (values, padding) = row.split_at_mut(k);
        for (z, &w) in values.iter_mut().zip(weights) {
            *z = r * w;
        }
        padding.fill(0.0);
    }
    loss * row_scale
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
    const VALUES_PER_TASK: usize = 1 << 14;
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
    kernels.unpack_gradient(packed_total, grad);
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
    use crate::adam::Adam;
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
        let loss = loss_and_logit_gradient(&scores, k, &weights, c, row_scale, &mut grad);
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
            weight_step: Adam::new(0, 0.1).begin_step(),
            alternate: global,
        };
        for_each_chunk(&mut chunks, |chunk| chunk.fit_pass(&data, &spec));
        let mut grad = vec![0.0; f * k];
        let mut packed_total = vec![0.0; kernels.packed_len()];
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

    #[test]
    fn neg_log_sigmoid_is_stable() {
        assert!((neg_log_sigmoid(0.0) - std::f32::consts::LN_2).abs() < 1e-7);
        assert_eq!(neg_log_sigmoid(1000.0), 0.0);
        assert!((neg_log_sigmoid(-1000.0) - 1000.0).abs() < 1e-3);
        assert!((neg_log_sigmoid_derivative(0.0) + 0.5).abs() < 1e-7);
        assert_eq!(neg_log_sigmoid_derivative(1e4), 0.0);
    }
}
