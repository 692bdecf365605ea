//! Criterion benchmarks of the block kernels (S = X V on one L2-sized block, a user's weighted
//! row sum X_u^T d, G += the outer products of 16 users' sums and weights), for each available
//! instruction set, and of one fused fit step on a small problem.
//! Run: cargo bench -p lore-core --bench kernels

use std::hint::black_box;
use std::ops::ControlFlow;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use lore_core::kernels::{BlockKernels, Isa};
use lore_core::{fit, FeatureRows, FitOptions, FitParams, Method, Preferences};

fn values(n: usize, seed: u32) -> Vec<f32> {
    let mut state = seed.wrapping_mul(2654435761) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 17;
            state ^= state << 5;
            (state % 2001) as f32 / 1000.0 - 1.0
        })
        .collect()
}

fn block_kernels(c: &mut Criterion) {
    let (rows, f) = (32, 4096);
    let x = values(rows * f, 1);
    let mut group = c.benchmark_group("block");
    for k in [5, 25] {
        for (isa, padded) in [
            (Isa::Avx512, false),
            (Isa::Avx512, true),
            (Isa::Avx2, false),
            (Isa::Portable, false),
        ] {
            if !isa.is_available() || (padded && k <= 8) {
                continue;
            }
            let kernels = if padded {
                BlockKernels::padded(isa, f, k)
            } else {
                BlockKernels::with_isa(isa, f, k)
            };
            let mut packed = vec![0.0; kernels.packed_len()];
            kernels.pack_basis(&values(f * k, 2), &mut packed);
            let stride = kernels.score_stride();
            let mut s = vec![0.0; rows * stride];
            let mut g = vec![0.0; kernels.packed_len()];
            let id = format!("{isa:?}/{:?}/K={k}", kernels.layout());
            group.throughput(Throughput::Elements((2 * rows * f * k) as u64));
            group.bench_function(BenchmarkId::new("scores", &id), |b| {
                b.iter(|| kernels.scores(black_box(&x), black_box(&packed), &mut s, &[]))
            });
            // G += the outer products of 16 users' row sums and weights, one blocked product.
            let (sums, weights) = (&x[..USERS * f], values(USERS * stride, 3));
            group.throughput(Throughput::Elements((2 * USERS * f * k) as u64));
            group.bench_function(BenchmarkId::new("gradient 16 users", &id), |b| {
                b.iter(|| kernels.accumulate_gradient(black_box(sums), black_box(&weights), &mut g))
            });
        }
    }
    // One user's weighted row sum X_u^T d, from f32 and from bf16 rows.
    let kernels = BlockKernels::new(f, 1);
    let d = values(rows, 5);
    let bits: Vec<u16> = x.iter().map(|v| (v.to_bits() >> 16) as u16).collect();
    let mut out = vec![0.0; f];
    group.throughput(Throughput::Elements((2 * rows * f) as u64));
    group.bench_function(BenchmarkId::new("row sum", "f32"), |b| {
        b.iter(|| kernels.weighted_row_sum(black_box(&x), black_box(&d), &mut out, &[]))
    });
    group.bench_function(BenchmarkId::new("row sum", "bf16"), |b| {
        b.iter(|| kernels.weighted_row_sum_bf16(black_box(&bits), black_box(&d), &mut out, &[]))
    });
    group.finish();
}

/// Users per blocked product of the gradient, as in a pass.
const USERS: usize = 16;

fn fit_step(c: &mut Criterion) {
    let (n, pairs, f) = (100, 30, 1024);
    let x = values(n * pairs * f, 4);
    let users: Vec<u32> = (0..n * pairs).map(|i| (i / pairs) as u32).collect();
    let data = Preferences::from_sorted_users(FeatureRows::F32(&x), f, &users).unwrap();
    let mut group = c.benchmark_group("fit_step");
    group.sample_size(20);
    for (method, k) in [
        (Method::Regularized, 25),
        (Method::Lore, 25),
        (Method::Regularized, 5),
    ] {
        let params = FitParams::new(method, k).iterations(5).check().unwrap();
        // Flops: S = X V, the row sums and the outer products, five steps.
        let step = 2 * (n * pairs * f * k + n * pairs * f + n * f * k);
        group.throughput(Throughput::Elements((5 * step) as u64));
        group.bench_function(format!("{}/K={k}/5 steps", method.name()), |b| {
            let options = FitOptions::default();
            b.iter(|| fit(&params, &data, &options, |_| ControlFlow::Continue(())).unwrap())
        });
    }
    group.finish();
}

criterion_group!(benches, block_kernels, fit_step);
criterion_main!(benches);
