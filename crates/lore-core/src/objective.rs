//! One pass of the fit over the packed rows. The fused pass works per user: the user's reward
//! direction v_u = V w_u, its rows' scores s = c X_u v_u, their logistic loss and derivatives
//! d, and the weighted row sum g_u = X_u^T d in one sweep of the rows (each row read once from
//! memory, again from L1); the weights' gradient V^T g_u in closed form, the Adam step, and
//! G_V += g_u w_u^T (the user's residuals are rank one, R_u = d w_u^T), summed for a batch of
//! users by one blocked product. A group of users shares each read of V. That is about
//! 4 n_u F + 6 F K flops per user instead of the 2 n_u F K of S = X_u V; the alternating method
//! scores again with the updated weights (a second sweep of X_u, from L2). The pass through S
//! (`scored.rs`) stays for the alternating method at small K, where it is faster
//! ([`fused_pays`]).
//!
//! Rows are split into a fixed number of chunks that depends only on the data, each owning its
//! users' logits, Adam moments, scores and a partial G_V; partials are summed in chunk order, so
//! results are identical for any number of threads. S, R, V and G use the layouts of
//! [`BlockKernels`] (K padded to whole SIMD vectors, or V transposed for small K).

use std::ops::Range;

use rayon::prelude::*;

use crate::adam::AdamStep;
use crate::data::{FeatureRows, Preferences};
use crate::kernels::group::LANE;
use crate::kernels::{BlockKernels, Isa};
use crate::logistic::{logistic_term, logistic_terms, softmax_in_place};

pub(crate) use crate::kernels::group::pack_panels;

mod scored;

/// Feature values per block of whole users: small enough that X_b (and V) stay in a core's L2
/// cache between S_b = X_b V and the users' sums X_u^T d_u.
const BLOCK_VALUES: usize = 1 << 16;
/// As [`BLOCK_VALUES`] for the mixed-precision kernels: a block of two 30-row users (rather
/// than one) ran them 2.5% faster (`examples/mixed_probe.rs`, `BLOCK=60`, measured with the
/// earlier mixed gradient, a product with K).
const MIXED_BLOCK_VALUES: usize = 1 << 18;
/// Users per group of the fit: one read of V serves their directions v = V w and their
/// gradients V^T g (at most this many, as many as [`JOINT_GROUP_VALUES`] or
/// [`ALTERNATE_GROUP_VALUES`] allow).
const GROUP_USERS: usize = crate::kernels::group::MAX_GROUP;
/// Feature values per group of the joint method (rows are read once; the bound keeps
/// buffers for widened rows small).
const JOINT_GROUP_VALUES: usize = 1 << 20;
/// Feature values per group of the alternating method: its second pass reads the group's rows
/// again, which must still be in L2 (with V and G).
const ALTERNATE_GROUP_VALUES: usize = 1 << 17;
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
    /// The kernels of the shape (F, K): G_V's layout and the instruction set.
    pub kernels: BlockKernels,
    /// The kernels of the shape (F, 1) that score rows against one direction v_u (f32 or
    /// mixed precision, as `kernels`); see [`row_kernels`].
    pub row_kernels: BlockKernels,
    /// The kernels of the users' row sums and G_V: `kernels.gradient_kernels()`.
    pub gradient_kernels: BlockKernels,
    /// The fused pass ([`fused_pays`]), or the pass through S.
    pub fused: bool,
    /// V packed as panels ([`pack_panels`]), for the fused pass.
    pub basis_panels: &'a [f32],
    /// V packed for `kernels`, for the pass through S.
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
    /// A block's rows in the form the kernels read them.
    rows_buffer: RowBuffers,
    /// The scored pass: one user's scores transposed, [K][n_u]; its weights and their
    /// gradient; the current block's d_i (each row's loss derivative times its weight).
    user_scores: Vec<f32>,
    weights: Vec<f32>,
    grad_weights: Vec<f32>,
    row_derivatives: Vec<f32>,
    /// One user's rows' scores (then derivatives).
    row_values: Vec<f32>,
    /// A group's directions v_u = V w_u [users x F], one packed for the row kernels, the
    /// alternating method's first row sums [users x F], the weights [users x K] and their
    /// gradients, and the partial sums of V^T g [K x users x LANE].
    directions: Vec<f32>,
    packed_direction: Vec<f32>,
    first_sums: Vec<f32>,
    group_weights: Vec<f32>,
    group_grads: Vec<f32>,
    projections: Vec<f32>,
    /// Loss of this chunk before and after the users' update in the last pass.
    pub loss_before: f64,
    pub loss_after: f64,
}

/// What the chunks are built for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChunkUse {
    /// S = X V once ([`ChunkWork::compute_scores`]), for personalization.
    Scores,
    /// The fit's passes ([`ChunkWork::fit_pass`]): alternating (the regularized method) or
    /// not, fused per user or through S = X V (see [`fused_pays`]).
    Fit { alternate: bool, fused: bool },
}

/// Whether the fused pass is the faster one. The joint method reads X_u once either way, and
/// the fused pass does 4 n_u F + 6 F K flops for S's 2 n_u F K. The alternating method's fused
/// pass reads X_u a second time after the weights' update (from L2), while the pass through S
/// scores again from S: measured side by side (BENCHMARKS.md, "The fused step"), S was twice
/// as fast at K = 5, the two even at K = 25 and 50 with f32 rows, and the fused pass 1.3x
/// faster with bf16 rows and 2.1x with mixed precision at K = 25. Mixed precision fuses only
/// where one direction packs into bf16 pairs (F even).
pub(crate) fn fused_pays(kernels: &BlockKernels, alternate: bool, rank: usize) -> bool {
    row_kernels(kernels).score_stride() == 1 && (!alternate || rank > 8)
}

/// Splits the users into chunks and blocks and allocates every buffer a pass needs.
/// `logits` are the initial W [N x K].
pub(crate) fn build_chunks(
    data: &Preferences,
    kernels: &BlockKernels,
    rank: usize,
    logits: &[f32],
    usage: ChunkUse,
) -> Vec<ChunkWork> {
    let with_gradient = usage != ChunkUse::Scores;
    let fused = matches!(usage, ChunkUse::Fit { fused: true, .. });
    let f = data.n_features();
    let offsets = data.user_offsets();
    let n_rows = data.n_rows();
    let n_chunks = (n_rows * f).div_ceil(CHUNK_VALUES).clamp(1, MAX_CHUNKS);
    let chunk_rows = n_rows.div_ceil(n_chunks);
    // The fit reads rows with the kernels of one direction.
    let read_kernels = if fused {
        row_kernels(kernels)
    } else {
        *kernels
    };
    let widen = match data.features() {
        crate::data::FeatureRows::F32(_) => false,
        crate::data::FeatureRows::Bf16(_) => !read_kernels.streams_bf16(),
        _ => true,
    };
    let mixed = read_kernels.is_mixed_bf16();
    let (block_values, block_users) = match usage {
        ChunkUse::Fit {
            alternate: true,
            fused: true,
        } => (ALTERNATE_GROUP_VALUES, GROUP_USERS),
        ChunkUse::Fit {
            alternate: false,
            fused: true,
        } => (JOINT_GROUP_VALUES, GROUP_USERS),
        _ if mixed => (MIXED_BLOCK_VALUES, usize::MAX),
        _ => (BLOCK_VALUES, usize::MAX),
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
            while e < end_user && e - b < block_users && offsets[e + 1] - offsets[b] <= block_rows {
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
        // Buffers of one kind of pass only.
        let sized = |used: bool, len: usize| if used { vec![0.0f32; len] } else { Vec::new() };
        let scored = !fused;
        let scored_fit = scored && with_gradient;
        chunks.push(ChunkWork {
            logits: logits[users.start * rank..users.end * rank].to_vec(),
            first_moment: vec![0.0; n_users * rank],
            second_moment: vec![0.0; n_users * rank],
            // The fused pass scores a user at a time: only the others keep S.
            scores: sized(scored, rows.len() * stride),
            grad_basis: sized(with_gradient, gradient_kernels.packed_len()),
            rows_buffer: RowBuffers {
                widened: Vec::with_capacity(if widen { max_block_rows * f } else { 0 }),
                narrowed: vec![0; if narrow { max_block_rows * f } else { 0 }],
            },
            user_sums: sized(with_gradient, batch * f),
            user_weights: sized(with_gradient, batch * gradient_kernels.score_stride()),
            waiting: 0,
            gradient_stride: gradient_kernels.score_stride(),
            user_scores: sized(scored_fit, max_user_rows * rank),
            weights: sized(scored_fit, rank),
            grad_weights: sized(scored_fit, rank),
            row_derivatives: sized(scored_fit, max_block_rows),
            directions: sized(fused, max_block_users * f),
            // Only mixed precision scores a user's rows through a packed direction.
            packed_direction: sized(fused && mixed, row_kernels(kernels).packed_len()),
            first_sums: sized(fused, max_block_users * f),
            group_weights: sized(fused, max_block_users * rank),
            group_grads: sized(fused, max_block_users * rank),
            projections: sized(fused, max_block_users * rank * LANE),
            row_values: vec![0.0; max_user_rows],
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

    /// One pass of the fit: the fused one or the one through S ([`PassSpec::fused`]).
    pub fn fit_pass(&mut self, data: &Preferences, spec: &PassSpec) {
        self.grad_basis.fill(0.0);
        self.waiting = 0;
        self.loss_before = 0.0;
        self.loss_after = 0.0;
        if spec.fused {
            self.fused_pass(data, spec)
        } else {
            self.scored_pass(data, spec)
        }
    }

    /// The fused pass: per block (a group of users), the rows in the form the kernels read
    /// them, then the group's fused step ([`Self::update_users_inline`]); G_V gathers the
    /// users' sums a batch at a time.
    fn fused_pass(&mut self, data: &Preferences, spec: &PassSpec) {
        let offsets = data.user_offsets();
        let gradient_kernels = &spec.gradient_kernels;
        let f = data.n_features();
        // Moved out for the pass so that the block's rows and the users' state borrow apart.
        let mut buffer = std::mem::take(&mut self.rows_buffer);
        for b in 0..self.blocks.len() {
            let users = self.blocks[b].clone();
            let rows = offsets[users.start]..offsets[users.end];
            let x = block_rows(data, rows.clone(), &spec.row_kernels, &mut buffer);
            if self.waiting + users.len() > self.user_sums.len() / f {
                self.add_waiting_users(gradient_kernels, f);
            }
            let (before, after) = self.update_users(x, data, users.clone(), spec);
            self.loss_before += before;
            self.loss_after += after;
            self.waiting += users.len();
        }
        self.add_waiting_users(gradient_kernels, f);
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

    /// [`Self::user_update`] for the block's `users` (rows `x`), compiled for the kernels'
    /// instruction set so that the small products with V vectorize (the same operations, so
    /// the same bits, on any).
    fn update_users(
        &mut self,
        x: BlockRows,
        data: &Preferences,
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        match spec.kernels.isa() {
            // SAFETY: a `BlockKernels` holds only an instruction set this CPU runs (its
            // constructors check): here AVX512-F.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => unsafe { self.update_users_avx512(x, data, users, spec) },
            // SAFETY: as above: here AVX2 and FMA.
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => unsafe { self.update_users_avx2(x, data, users, spec) },
            _ => self.update_users_inline(x, data, users, spec),
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
        x: BlockRows,
        data: &Preferences,
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        self.update_users_inline(x, data, users, spec)
    }

    /// [`Self::update_users_inline`] compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn update_users_avx2(
        &mut self,
        x: BlockRows,
        data: &Preferences,
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        self.update_users_inline(x, data, users, spec)
    }

    /// The fused step of a group of users (the block `users`, rows `x`): their directions
    /// v = V w in one read of V; per user s = c X_u v, the loss and d (each row's derivative
    /// times c and its weight in the objective) and g = X_u^T d; the weights' gradients V^T g
    /// in one read of V, through the softmax; the Adam steps; and G_V's factors (g and w) in
    /// the waiting slots. The alternating method takes G_V's factors (and the loss after) from
    /// the updated weights, scoring the group again (the reference's V-step runs the forward
    /// pass again). Returns the loss before and after the update (after only when alternating).
    #[inline(always)]
    fn update_users_inline(
        &mut self,
        x: BlockRows,
        data: &Preferences,
        users: Range<usize>,
        spec: &PassSpec,
    ) -> (f64, f64) {
        let (k, f, nb) = (self.rank, spec.kernels.n_features(), users.len());
        let offsets = data.user_offsets();
        let first_row = offsets[users.start];
        let user_rows = |i: usize| {
            let u = users.start + i;
            x.rows(offsets[u] - first_row..offsets[u + 1] - first_row, f)
        };
        let row_scale = |i: usize| match spec.weighting {
            RowWeighting::PerUserMean => {
                1.0 / (offsets[users.start + i + 1] - offsets[users.start + i]) as f64
            }
            RowWeighting::GlobalMean { n_rows } => 1.0 / n_rows as f64,
        };
        // Each user's passes fetch the next user's stored rows into L2: all of them in the
        // joint method's one pass, half in each of the alternating method's two.
        let chunk_end = self.users.end;
        let next_user_shares = |i: usize| {
            let next = users.start + i + 1;
            let bytes = if next < chunk_end {
                data.row_bytes(offsets[next]..offsets[next + 1])
            } else {
                &[]
            };
            if spec.alternate {
                bytes.split_at(bytes.len() / 2)
            } else {
                (bytes, &[][..])
            }
        };
        let logits_of = (users.start - self.users.start) * k..(users.end - self.users.start) * k;
        let Self {
            row_values,
            logits,
            first_moment,
            second_moment,
            user_sums,
            user_weights,
            directions,
            packed_direction,
            first_sums,
            group_weights,
            group_grads,
            projections,
            waiting,
            gradient_stride,
            ..
        } = self;
        let (weights, grads) = (&mut group_weights[..nb * k], &mut group_grads[..nb * k]);
        let directions = &mut directions[..nb * f];
        let slots = &mut user_sums[*waiting * f..(*waiting + nb) * f];
        weights.copy_from_slice(&logits[logits_of.clone()]);
        for w in weights.chunks_exact_mut(k) {
            softmax_in_place(w);
        }
        spec.kernels
            .combine_group(spec.basis_panels, weights, directions);
        // The first sums: G_V's factors for the joint method, a scratch for the alternating one.
        let first = if spec.alternate {
            &mut first_sums[..nb * f]
        } else {
            &mut *slots
        };
        let mut before = 0.0;
        for i in 0..nb {
            let n = user_rows(i).len() / f;
            let ahead = next_user_shares(i);
            before += score_rows(
                spec,
                user_rows(i),
                &directions[i * f..(i + 1) * f],
                packed_direction,
                &mut row_values[..n],
                &mut first[i * f..(i + 1) * f],
                ahead.0,
                row_scale(i),
            );
        }
        // dL/dw = V^T g (d already carries c and the row weights); through the softmax,
        // dL/dW_k = w_k (g_k - w . g).
        spec.kernels
            .project_group(spec.basis_panels, first, grads, projections);
        for (grad, w) in grads.chunks_exact_mut(k).zip(weights.chunks_exact(k)) {
            let wg: f32 = w.iter().zip(grad.iter()).map(|(&w, &g)| w * g).sum();
            for (g, &w) in grad.iter_mut().zip(w) {
                *g = w * (*g - wg);
            }
        }
        let logits = &mut logits[logits_of.clone()];
        let (m, v) = (
            &mut first_moment[logits_of.clone()],
            &mut second_moment[logits_of],
        );
        for (((l, g), m), v) in logits
            .chunks_exact_mut(k)
            .zip(grads.chunks_exact(k))
            .zip(m.chunks_exact_mut(k))
            .zip(v.chunks_exact_mut(k))
        {
            spec.weight_step.apply(l, g, m, v);
        }
        let mut after = 0.0;
        if spec.alternate {
            weights.copy_from_slice(logits);
            for w in weights.chunks_exact_mut(k) {
                softmax_in_place(w);
            }
            spec.kernels
                .combine_group(spec.basis_panels, weights, directions);
            for i in 0..nb {
                let n = user_rows(i).len() / f;
                let ahead = next_user_shares(i);
                after += score_rows(
                    spec,
                    user_rows(i),
                    &directions[i * f..(i + 1) * f],
                    packed_direction,
                    &mut row_values[..n],
                    &mut slots[i * f..(i + 1) * f],
                    ahead.1,
                    row_scale(i),
                );
            }
        }
        let stride = *gradient_stride;
        for (i, w) in weights.chunks_exact(k).enumerate() {
            let padded = &mut user_weights[(*waiting + i) * stride..][..stride];
            padded[..k].copy_from_slice(w);
            padded[k..].fill(0.0);
        }
        (before, after)
    }
}

/// The scores s = c X v of rows `x` against the direction v, their loss times `row_scale`
/// (returned), each row's derivative times c and `row_scale` (in `s`), and sums = X^T s: in
/// one pass over the rows with f32 arithmetic, in two (bf16 products, then f32 sums) with
/// mixed precision. `ahead` is fetched into L2 on the way.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn score_rows(
    spec: &PassSpec,
    x: BlockRows,
    direction: &[f32],
    packed_direction: &mut [f32],
    s: &mut [f32],
    sums: &mut [f32],
    ahead: &[u8],
    row_scale: f64,
) -> f64 {
    let c = spec.logit_scale;
    let coef = row_scale as f32 * c;
    let gradient_kernels = &spec.gradient_kernels;
    if !spec.row_kernels.is_mixed_bf16() {
        let mut loss = 0.0f64;
        let mut derivative = |score: f32| {
            let (term, d) = logistic_term(score * c);
            loss += term as f64;
            d * coef
        };
        x.score_and_sum(gradient_kernels, direction, s, sums, &mut derivative, ahead);
        return loss * row_scale;
    }
    let (ahead_scores, ahead_sums) = ahead.split_at(ahead.len() / 2);
    spec.row_kernels.pack_direction(direction, packed_direction);
    x.scores(&spec.row_kernels, packed_direction, s, ahead_scores);
    for v in s.iter_mut() {
        *v *= c;
    }
    let loss = logistic_terms(s) * row_scale;
    for v in s.iter_mut() {
        *v *= coef;
    }
    x.weighted_row_sum(gradient_kernels, s, sums, ahead_sums);
    loss
}

/// The kernels that score rows against one direction v (rank 1), in the arithmetic of the
/// pass's kernels: f32, or bf16 products summed in f32.
pub(crate) fn row_kernels(kernels: &BlockKernels) -> BlockKernels {
    let f = kernels.n_features();
    if kernels.is_mixed_bf16() {
        if let Some(mixed) = BlockKernels::mixed_bf16(f, 1) {
            return mixed;
        }
    }
    BlockKernels::with_isa(kernels.isa(), f, 1)
}

/// Buffers for a block's rows in the form the kernels read them.
#[derive(Default)]
struct RowBuffers {
    /// The rows widened to f32 (half-precision files).
    widened: Vec<f32>,
    /// Mixed precision: the rows rounded to bf16 (files stored wider).
    narrowed: Vec<u16>,
}

/// A block's rows as the kernels read them.
#[derive(Clone, Copy)]
enum BlockRows<'w> {
    F32(&'w [f32]),
    /// bf16 rows (their bits): as stored, or rounded for mixed precision; the kernels widen
    /// them in registers (or multiply them as bf16, for mixed precision).
    Bf16(&'w [u16]),
}

impl<'w> BlockRows<'w> {
    /// The rows `rows` of these (F values each).
    #[inline(always)]
    fn rows(self, rows: Range<usize>, f: usize) -> Self {
        match self {
            Self::F32(x) => Self::F32(&x[rows.start * f..rows.end * f]),
            Self::Bf16(x) => Self::Bf16(&x[rows.start * f..rows.end * f]),
        }
    }

    /// Number of values.
    #[inline(always)]
    fn len(self) -> usize {
        match self {
            Self::F32(x) => x.len(),
            Self::Bf16(x) => x.len(),
        }
    }

    /// S = X V with `kernels` (those [`block_rows`] read the rows for).
    fn scores(self, kernels: &BlockKernels, packed_basis: &[f32], s: &mut [f32], ahead: &[u8]) {
        match self {
            Self::F32(x) => kernels.scores(x, packed_basis, s, ahead),
            Self::Bf16(bits) if kernels.is_mixed_bf16() => {
                kernels.scores_mixed(bits, packed_basis, s, ahead)
            }
            Self::Bf16(bits) => kernels.scores_bf16(bits, packed_basis, s, ahead),
        }
    }

    /// Each row's score against v, its derivative in `d_out` and out = sum_i d_i x_i (see
    /// [`BlockKernels::score_and_sum`]); f32 arithmetic.
    fn score_and_sum(
        self,
        kernels: &BlockKernels,
        v: &[f32],
        d_out: &mut [f32],
        out: &mut [f32],
        derivative: &mut impl FnMut(f32) -> f32,
        ahead: &[u8],
    ) {
        match self {
            Self::F32(x) => kernels.score_and_sum(x, v, d_out, out, derivative, ahead),
            Self::Bf16(bits) => kernels.score_and_sum_bf16(bits, v, d_out, out, derivative, ahead),
        }
    }

    /// out [F] = sum_i d_i x_i, in f32 (see [`BlockKernels::weighted_row_sum`]).
    fn weighted_row_sum(self, kernels: &BlockKernels, d: &[f32], out: &mut [f32], ahead: &[u8]) {
        match self {
            Self::F32(x) => kernels.weighted_row_sum(x, d, out, ahead),
            Self::Bf16(bits) => kernels.weighted_row_sum_bf16(bits, d, out, ahead),
        }
    }
}

/// The rows `rows` in the form `kernels` read them. bf16 rows stream straight from memory
/// through the narrow kernels, which widen them in registers; other half-precision rows are
/// widened first. The mixed-precision kernels read bf16 rows (rounded first when stored wider).
fn block_rows<'w>(
    data: &'w Preferences,
    rows: Range<usize>,
    kernels: &BlockKernels,
    buffer: &'w mut RowBuffers,
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
        return BlockRows::Bf16(bits);
    }
    if let (FeatureRows::Bf16(values), true) = (data.features(), kernels.streams_bf16()) {
        return BlockRows::Bf16(values[rows.start * f..rows.end * f].reinterpret_cast());
    }
    BlockRows::F32(data.rows_f32(rows, &mut buffer.widened))
}

/// S_b = X_b V for the rows `rows` ([`block_rows`], then the kernels' product); returns X_b
/// for the gradient. The SIMD kernels fetch `ahead` (stored bytes of the rows read next) into
/// L2 on the way.
fn block_scores<'w>(
    data: &'w Preferences,
    rows: Range<usize>,
    kernels: &BlockKernels,
    packed_basis: &[f32],
    scores: &mut [f32],
    buffer: &'w mut RowBuffers,
    ahead: &[u8],
) -> BlockRows<'w> {
    let x = block_rows(data, rows, kernels, buffer);
    x.scores(kernels, packed_basis, scores, ahead);
    x
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
    use super::scored::user_loss_and_gradient;
    use super::*;
    use crate::adam::AdamClock;
    use crate::data::{FeatureRows, Preferences};
    use crate::logistic::transpose_rows;
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

    fn basis_gradient_check(global: bool, fused: bool) {
        let (f, k, c) = (6, 3, 0.05f32);
        let users = [0u32, 0, 0, 0, 1, 1, 2, 2, 2, 2, 2];
        let x = normal(users.len() * f, 10.0, 3);
        let data = Preferences::from_sorted_users(FeatureRows::F32(&x), f, &users).unwrap();
        let basis = normal(f * k, 1.0, 4);
        let logits = normal(3 * k, 1.0, 5);
        let kernels = BlockKernels::new(f, k);
        let mut panels = Vec::new();
        pack_panels(&basis, f, k, &mut panels);
        let mut packed = vec![0.0; kernels.packed_len()];
        kernels.pack_basis(&basis, &mut packed);
        let mut chunks = build_chunks(
            &data,
            &kernels,
            k,
            &logits,
            ChunkUse::Fit {
                alternate: global,
                fused,
            },
        );
        let spec = PassSpec {
            kernels,
            row_kernels: row_kernels(&kernels),
            gradient_kernels: kernels.gradient_kernels(),
            fused,
            basis_panels: &panels,
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

    #[test]
    fn joint_basis_gradient_matches_finite_differences() {
        basis_gradient_check(false, true);
        basis_gradient_check(false, false);
    }

    #[test]
    fn alternating_basis_gradient_matches_finite_differences() {
        basis_gradient_check(true, true);
        basis_gradient_check(true, false);
    }
}
