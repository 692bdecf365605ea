//! Same inputs, same bits: for any number of threads (in f32 and in mixed precision), and for
//! f32 or bf16 storage of the same (bf16-representable) values.

use std::ops::ControlFlow;

use half::bf16;
use lore_core::{
    fit, personalize, FeatureRows, FitOptions, FitParams, FittedModel, Method, PersonalizeOptions,
    PersonalizeParams, Precision, Preferences, UserWeights,
};

/// 40 users x 30 rows x 1024 features: enough values for several parallel chunks.
fn synthetic(n_users: usize, rows: usize, f: usize) -> (Vec<f32>, Vec<u32>) {
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        state ^= state << 7;
        state ^= state >> 9;
        ((state >> 11) as f64 / (1u64 << 53) as f64) as f32 * 2.0 - 1.0
    };
    let direction: Vec<f32> = (0..f).map(|_| next()).collect();
    let mut x = Vec::with_capacity(n_users * rows * f);
    let mut users = Vec::new();
    for u in 0..n_users {
        for _ in 0..rows {
            let sign = if u % 2 == 0 { 1.0 } else { -1.0 };
            x.extend(
                direction
                    .iter()
                    .map(|&d| bf16::from_f32(sign * d + next()).to_f32()),
            );
            users.push(u as u32);
        }
    }
    (x, users)
}

fn run_fit(method: Method, rank: usize, data: &Preferences, threads: usize) -> FittedModel {
    run_fit_in(Precision::F32, method, rank, data, threads)
}

fn run_fit_in(
    precision: Precision,
    method: Method,
    rank: usize,
    data: &Preferences,
    threads: usize,
) -> FittedModel {
    let params = FitParams::new(method, rank)
        .iterations(15)
        .learning_rate(0.05)
        .seed(3)
        .precision(precision)
        .check()
        .unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    let options = FitOptions::default();
    pool.install(|| {
        fit(&params, data, &options, |_| ControlFlow::Continue(()))
            .unwrap()
            .model
    })
}

fn run_personalize(data: &Preferences, model: &FittedModel, threads: usize) -> UserWeights {
    let params = PersonalizeParams::default().iterations(20).check().unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .unwrap();
    pool.install(|| {
        let options = PersonalizeOptions::default();
        personalize(&params, &model.basis, data, &options, |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .users
    })
}

fn bits(values: &[f32]) -> Vec<u32> {
    values.iter().map(|v| v.to_bits()).collect()
}

/// The two fits' V and W are the same to the bit.
fn assert_same_fit(a: &FittedModel, b: &FittedModel, what: &str) {
    assert_eq!(bits(&a.unpruned_basis), bits(&b.unpruned_basis), "{what} V");
    assert_eq!(
        bits(&a.unpruned_logits),
        bits(&b.unpruned_logits),
        "{what} W"
    );
}

#[test]
fn one_and_two_threads_give_identical_bits() {
    let (x, users) = synthetic(40, 30, 1024);
    let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 1024, &users).unwrap();
    // Rank 4 runs the transposed kernels, 25 the split ones (on AVX-512), 32 the padded.
    for (method, rank) in [
        (Method::Lore, 4),
        (Method::Regularized, 4),
        (Method::Regularized, 25),
        (Method::Lore, 32),
    ] {
        let one = run_fit(method, rank, &data, 1);
        let two = run_fit(method, rank, &data, 2);
        assert_same_fit(&one, &two, &format!("{method:?} K={rank}"));
        let p1 = run_personalize(&data, &one, 1);
        let p2 = run_personalize(&data, &one, 2);
        assert_eq!(
            bits(p1.logits()),
            bits(p2.logits()),
            "{method:?} K={rank} personalized w"
        );
    }
}

#[test]
fn f32_and_bf16_storage_give_the_same_fit() {
    let (x, users) = synthetic(10, 12, 256);
    let x16: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let data32 = Preferences::from_sorted_users(FeatureRows::F32(&x), 256, &users).unwrap();
    let data16 = Preferences::from_sorted_users(FeatureRows::Bf16(&x16), 256, &users).unwrap();
    for (method, rank) in [
        (Method::Lore, 4),
        (Method::Regularized, 4),
        (Method::Regularized, 25),
    ] {
        let a = run_fit(method, rank, &data32, 1);
        let b = run_fit(method, rank, &data16, 1);
        assert_same_fit(&a, &b, &format!("{method:?} K={rank}"));
    }
}

#[test]
fn mixed_precision_gives_the_same_bits_on_one_and_two_threads() {
    if !Precision::Bf16.is_available() {
        eprintln!("skipping: this CPU has no AVX512-BF16");
        return;
    }
    // 40 users of 33 rows, F = 1000: two chunks, blocks of 7 users (231 rows, so a last row
    // without a partner), and 8 features past the last whole 32.
    let (x, users) = synthetic(40, 33, 1000);
    let x16: Vec<bf16> = x.iter().map(|&v| bf16::from_f32(v)).collect();
    let data = Preferences::from_sorted_users(FeatureRows::Bf16(&x16), 1000, &users).unwrap();
    // K = 5 runs the transposed scores, 25 the split ones with the extra column, 40 the
    // gradient in two passes of 20 columns.
    for (method, rank) in [
        (Method::Regularized, 5),
        (Method::Regularized, 25),
        (Method::Lore, 40),
    ] {
        let one = run_fit_in(Precision::Bf16, method, rank, &data, 1);
        let two = run_fit_in(Precision::Bf16, method, rank, &data, 2);
        assert!(one.unpruned_basis.iter().all(|v| v.is_finite()));
        assert_same_fit(&one, &two, &format!("bf16 {method:?} K={rank}"));
    }
}

#[test]
fn a_fit_learns_the_planted_split() {
    // Even users prefer +d, odd users -d: with K = 2 both groups should be fitted well.
    let (x, users) = synthetic(10, 12, 256);
    let data = Preferences::from_sorted_users(FeatureRows::F32(&x), 256, &users).unwrap();
    let params = FitParams::new(Method::Lore, 2)
        .iterations(200)
        .learning_rate(0.1)
        .check()
        .unwrap();
    let model = fit(&params, &data, &FitOptions::default(), |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .model;
    let eval = lore_core::evaluate(&model.basis, &model.users, &data).unwrap();
    assert!(eval.mean > 0.95, "mean accuracy {}", eval.mean);
}
