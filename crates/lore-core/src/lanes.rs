//! Personalization with one user per SIMD lane: users go in groups of 16, and every step of a
//! group runs as whole-vector operations (no short per-user loops, no horizontal sums).
//!
//! A group stores its users' scores Z = X V as [K][n_max] vectors of 16 lanes, zero-padded
//! past each user's rows; a row mask keeps padded rows out of the loss and the gradient.
//! Users are independent, so a group runs a whole segment of steps while its data stays in
//! cache; per-step losses are summed over groups in a fixed order.

use std::ops::Range;

use rayon::prelude::*;

use crate::adam::AdamStep;
use crate::data::Preferences;
use crate::kernels::Isa;
use crate::logistic::{exp_nonpositive, logistic_term};
use crate::objective::ChunkWork;

/// Users per group: one 512-bit vector of f32 (two 256-bit ones on AVX2).
const LANES: usize = 16;
/// Rows scored together: independent accumulation chains for the out-of-order core.
const ROWS_AT_ONCE: usize = 4;

type Lanes = [f32; LANES];

/// Up to 16 users' scores, state and scratch.
pub(crate) struct LaneGroup {
    users: Range<usize>,
    rank: usize,
    n_max: usize,
    /// Z [K][n_max] (lane l: user users.start + l).
    scores: Vec<Lanes>,
    /// 1 for a user's rows, 0 for padding [n_max].
    mask: Vec<Lanes>,
    /// The logit scale c, row_scale * c per lane (0 in empty lanes), and row_scale = 1 / n_u.
    c: f32,
    coef: Lanes,
    row_scale: [f64; LANES],
    logits: Vec<Lanes>,
    first_moment: Vec<Lanes>,
    second_moment: Vec<Lanes>,
    weights: Vec<Lanes>,
    grad: Vec<Lanes>,
    derivatives: Vec<Lanes>,
    /// Each step's loss (sum over the group's users, in user order) of the last segment.
    pub losses: Vec<f64>,
    /// The step of the last segment whose update made a user's logits non-finite, and whether
    /// that step's gradient was finite (then the step size is to blame, else the data or the
    /// prior); the group stops there (its `losses` end with that step's).
    pub diverged: Option<(usize, bool)>,
    /// Whether the gradient of the last step was finite for every used lane.
    gradient_finite: bool,
}

/// Packs the users' scores, computed by `chunks`, into groups of 16 (transposing each user's
/// rows into [K][n_max] lanes), with their initial logits `init` [N x K].
pub(crate) fn build_groups(
    chunks: &[ChunkWork],
    data: &Preferences,
    rank: usize,
    c: f32,
    init: &[f32],
) -> Vec<LaneGroup> {
    let offsets = data.user_offsets();
    let n_users = data.n_users();
    let starts: Vec<usize> = (0..n_users).step_by(LANES).collect();
    starts
        .par_iter()
        .map(|&start| {
            let users = start..(start + LANES).min(n_users);
            let n_max = users
                .clone()
                .map(|u| offsets[u + 1] - offsets[u])
                .max()
                .unwrap_or(0);
            let mut group = LaneGroup {
                users: users.clone(),
                rank,
                n_max,
                scores: vec![[0.0; LANES]; rank * n_max],
                mask: vec![[0.0; LANES]; n_max],
                c,
                coef: [0.0; LANES],
                row_scale: [0.0; LANES],
                logits: vec![[0.0; LANES]; rank],
                first_moment: vec![[0.0; LANES]; rank],
                second_moment: vec![[0.0; LANES]; rank],
                weights: vec![[0.0; LANES]; rank],
                grad: vec![[0.0; LANES]; rank],
                derivatives: vec![[0.0; LANES]; n_max],
                losses: Vec::with_capacity(crate::personalize::SEGMENT_STEPS),
                diverged: None,
                gradient_finite: true,
            };
            for (lane, u) in users.enumerate() {
                let n = offsets[u + 1] - offsets[u];
                let (rows, stride) = score_rows(chunks, offsets, u);
                for (i, row) in rows.chunks_exact(stride).enumerate() {
                    for (k, &z) in row[..rank].iter().enumerate() {
                        group.scores[k * n_max + i][lane] = z;
                    }
                }
                for row in &mut group.mask[..n] {
                    row[lane] = 1.0;
                }
                group.row_scale[lane] = 1.0 / n as f64;
                group.coef[lane] = (1.0 / n as f64) as f32 * c;
                for k in 0..rank {
                    group.logits[k][lane] = init[u * rank + k];
                }
            }
            group
        })
        .collect()
}

/// User u's rows of S and their stride, from the chunk that holds it.
fn score_rows<'c>(chunks: &'c [ChunkWork], offsets: &[usize], u: usize) -> (&'c [f32], usize) {
    let chunk = chunks
        .iter()
        .find(|c| c.users().contains(&u))
        .expect("every user is in a chunk");
    chunk.user_score_rows(offsets, u)
}

/// The logits of all groups' users [N x K], in user order.
pub(crate) fn gather_group_logits(groups: &[LaneGroup], n_users: usize, rank: usize) -> Vec<f32> {
    let mut logits = vec![0.0f32; n_users * rank];
    for group in groups {
        for (lane, u) in group.users.clone().enumerate() {
            for k in 0..rank {
                logits[u * rank + k] = group.logits[k][lane];
            }
        }
    }
    logits
}

/// Runs `steps` on every group (in parallel; each group's results do not depend on the
/// others), leaving each step's loss in the groups' `losses`.
pub(crate) fn run_segment(
    groups: &mut [LaneGroup],
    isa: Isa,
    steps: &[AdamStep],
    prior: Option<(&[f32], f32)>,
) {
    // A `BlockKernels`' instruction set, which this CPU runs; checked again (a cached flag)
    // so that the dispatch below is sound for any `isa`.
    let isa = if isa.is_available() {
        isa
    } else {
        Isa::Portable
    };
    groups.par_iter_mut().for_each(|group| match isa {
        // SAFETY: `isa.is_available()` above: this CPU has AVX512-F.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx512 => unsafe { group.segment_avx512(steps, prior) },
        // SAFETY: `isa.is_available()` above: this CPU has AVX2 and FMA.
        #[cfg(target_arch = "x86_64")]
        Isa::Avx2 => unsafe { group.segment_avx2(steps, prior) },
        _ => group.segment(steps, prior),
    });
}

impl LaneGroup {
    /// [`Self::segment`] compiled for AVX-512.
    ///
    /// # Safety
    /// The CPU has AVX512-F.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f")]
    unsafe fn segment_avx512(&mut self, steps: &[AdamStep], prior: Option<(&[f32], f32)>) {
        self.segment(steps, prior)
    }

    /// [`Self::segment`] compiled for AVX2 and FMA.
    ///
    /// # Safety
    /// The CPU has AVX2 and FMA.
    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn segment_avx2(&mut self, steps: &[AdamStep], prior: Option<(&[f32], f32)>) {
        self.segment(steps, prior)
    }

    #[inline(always)]
    fn segment(&mut self, steps: &[AdamStep], prior: Option<(&[f32], f32)>) {
        self.losses.clear();
        self.diverged = None;
        for (t, step) in steps.iter().enumerate() {
            let loss = self.step(step, prior);
            self.losses.push(loss);
            if !lanes_finite(&self.logits, self.users.len()) {
                self.diverged = Some((t, self.gradient_finite));
                break;
            }
        }
    }

    /// The first of the group's users whose logits are not finite, with the value.
    pub(crate) fn first_non_finite_user(&self) -> Option<(usize, f32)> {
        (0..self.users.len()).find_map(|l| {
            self.logits
                .iter()
                .map(|row| row[l])
                .find(|v| !v.is_finite())
                .map(|v| (self.users.start + l, v))
        })
    }

    /// One Adam step of every user of the group; returns the sum of their losses (before the
    /// step, prior penalty included), in user order.
    #[inline(always)]
    fn step(&mut self, adam: &AdamStep, prior: Option<(&[f32], f32)>) -> f64 {
        let (k, n) = (self.rank, self.n_max);
        softmax_lanes(&self.logits, &mut self.weights);

        // s = c Z w per row, then each row's loss term and derivative (0 in padding).
        let mut loss: Lanes = [0.0; LANES];
        let mut i = 0;
        while i < n {
            let rows = ROWS_AT_ONCE.min(n - i);
            let mut s = [[0.0f32; LANES]; ROWS_AT_ONCE];
            for (j, w) in self.weights.iter().enumerate() {
                let column = &self.scores[j * n + i..j * n + i + rows];
                for (acc, z) in s.iter_mut().zip(column) {
                    for l in 0..LANES {
                        acc[l] += w[l] * z[l];
                    }
                }
            }
            for (r, acc) in s.iter().enumerate().take(rows) {
                let mask = &self.mask[i + r];
                let out = &mut self.derivatives[i + r];
                for l in 0..LANES {
                    let (term, derivative) = logistic_term(acc[l] * self.c);
                    loss[l] += term * mask[l];
                    out[l] = derivative * mask[l];
                }
            }
            i += rows;
        }

        // dL/dw_k = coef * sum_i Z[k][i] d_i: four k at a time in named accumulators (kept in
        // registers), then the remaining k one by one.
        let mut blocks = self.scores.chunks_exact(4 * n);
        let mut grads = self.grad.chunks_exact_mut(4);
        for (grad_block, block) in (&mut grads).zip(&mut blocks) {
            let (c0, rest) = block.split_at(n);
            let (c1, rest) = rest.split_at(n);
            let (c2, c3) = rest.split_at(n);
            let (mut a0, mut a1, mut a2, mut a3) =
                ([0.0f32; LANES], [0.0; LANES], [0.0; LANES], [0.0; LANES]);
            for ((((d, z0), z1), z2), z3) in self.derivatives.iter().zip(c0).zip(c1).zip(c2).zip(c3)
            {
                for l in 0..LANES {
                    a0[l] += z0[l] * d[l];
                    a1[l] += z1[l] * d[l];
                    a2[l] += z2[l] * d[l];
                    a3[l] += z3[l] * d[l];
                }
            }
            for (g, a) in grad_block.iter_mut().zip([a0, a1, a2, a3]) {
                for l in 0..LANES {
                    g[l] = a[l] * self.coef[l];
                }
            }
        }
        for (g, column) in grads
            .into_remainder()
            .iter_mut()
            .zip(blocks.remainder().chunks_exact(n))
        {
            let mut a = [0.0f32; LANES];
            for (z, d) in column.iter().zip(&self.derivatives) {
                for l in 0..LANES {
                    a[l] += z[l] * d[l];
                }
            }
            for l in 0..LANES {
                g[l] = a[l] * self.coef[l];
            }
        }

        // Through the softmax: dL/dW_k = w_k (g_k - w . g).
        let mut wg: Lanes = [0.0; LANES];
        for (w, g) in self.weights.iter().zip(&self.grad) {
            for l in 0..LANES {
                wg[l] += w[l] * g[l];
            }
        }
        for (w, g) in self.weights.iter().zip(self.grad.iter_mut()) {
            for l in 0..LANES {
                g[l] = w[l] * (g[l] - wg[l]);
            }
        }

        let mut penalty: Lanes = [0.0; LANES];
        if let Some((mean, strength)) = prior {
            for ((g, logit), &m) in self.grad.iter_mut().zip(&self.logits).zip(mean) {
                for l in 0..LANES {
                    let d = logit[l] - m;
                    penalty[l] += d * d;
                    g[l] += 2.0 * strength * d;
                }
            }
            for p in penalty.iter_mut() {
                *p *= strength;
            }
        }
        self.gradient_finite = lanes_finite(&self.grad, self.users.len());
        for j in 0..k {
            adam.apply(
                &mut self.logits[j],
                &self.grad[j],
                &mut self.first_moment[j],
                &mut self.second_moment[j],
            );
        }
        (0..self.users.len())
            .map(|l| loss[l] as f64 * self.row_scale[l] + penalty[l] as f64)
            .sum()
    }
}

/// Whether the first `used` lanes of `rows` are all finite (a sum of v * 0 per lane: 16
/// multiply-adds per row, no allocation).
#[inline(always)]
fn lanes_finite(rows: &[Lanes], used: usize) -> bool {
    let mut marker: Lanes = [0.0; LANES];
    for row in rows {
        for l in 0..LANES {
            marker[l] += row[l] * 0.0;
        }
    }
    marker[..used].iter().all(|&m| m == 0.0)
}

/// Softmax over k of each lane of `logits` [K] into `weights` [K].
#[inline(always)]
fn softmax_lanes(logits: &[Lanes], weights: &mut [Lanes]) {
    let mut max: Lanes = [f32::NEG_INFINITY; LANES];
    for row in logits {
        for l in 0..LANES {
            max[l] = max[l].max(row[l]);
        }
    }
    let mut sum: Lanes = [0.0; LANES];
    for (w, row) in weights.iter_mut().zip(logits) {
        for l in 0..LANES {
            w[l] = exp_nonpositive(row[l] - max[l]);
            sum[l] += w[l];
        }
    }
    for w in weights.iter_mut() {
        for l in 0..LANES {
            w[l] /= sum[l];
        }
    }
}
