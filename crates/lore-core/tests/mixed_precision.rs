//! `Precision::Bf16` (bf16 products summed in f32): its fits must score within half a point
//! of the f32 fits, on the golden runs' data and on simulated populations. Skipped (with a
//! note) on CPUs without AVX512-BF16, where the precision is refused.

use std::ops::ControlFlow;

mod common;
use common::{population, Golden};
use lore_core::experiment::{run_rank, OwnedSets, RankRun};
use lore_core::{
    evaluate, fit, FeatureRows, FitParams, Method, PersonalizeParams, Precision, Preferences,
};

const HALF_A_POINT: f64 = 0.005;

fn available() -> bool {
    let yes = Precision::Bf16.is_available();
    if !yes {
        eprintln!("skipping: this CPU has no AVX512-BF16");
    }
    yes
}

/// Mean training accuracy of the golden run's fit, from its initial values, in `precision`.
fn golden_accuracy(name: &str, method: Method, precision: Precision) -> f64 {
    let golden = Golden::load(name);
    let x = golden.f32("x");
    let f = golden.shape("x")[1];
    let users = golden.users();
    let data = Preferences::from_sorted_users(FeatureRows::F32(&x), f, &users).unwrap();
    let k = golden.shape("V0")[1];
    let params = golden
        .fit_params(method, k)
        .precision(precision)
        .check()
        .unwrap();
    let v_ref = golden.f32("v_ref");
    let model = fit(&params, &data, Some(&v_ref), Some(&golden.init()), |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    evaluate(&model.basis, &model.users, &data).unwrap().mean
}

#[test]
fn golden_fits_in_bf16_score_within_half_a_point() {
    if !available() {
        return;
    }
    for (name, method) in [
        ("lore_alpha0.safetensors", Method::Lore),
        ("lore_l2.safetensors", Method::Lore),
        ("lore_paper_lr.safetensors", Method::Lore),
        ("regularized_paper_lr.safetensors", Method::Regularized),
        ("regularized_warmup.safetensors", Method::Regularized),
    ] {
        let full = golden_accuracy(name, method, Precision::F32);
        let mixed = golden_accuracy(name, method, Precision::Bf16);
        eprintln!("{name}: training accuracy f32 {full:.4}, bf16 {mixed:.4}");
        assert!(
            (full - mixed).abs() <= HALF_A_POINT,
            "{name}: f32 accuracy {full:.4}, bf16 {mixed:.4}"
        );
    }
}

fn simulated_run(sets: &OwnedSets, method: Method, rank: usize, precision: Precision) -> RankRun {
    let fit = FitParams::new(method, rank)
        .learning_rate(0.5)
        .iterations(300)
        .precision(precision)
        .check()
        .unwrap();
    let personalize = PersonalizeParams::default().check().unwrap();
    run_rank(
        &sets.sets().unwrap(),
        None,
        &fit,
        &personalize,
        |_, _, _| {},
    )
    .unwrap()
}

#[test]
fn simulated_fits_in_bf16_score_within_half_a_point() {
    if !available() {
        return;
    }
    let sets = population(4, 0.0, 5);
    // Rank 4 runs padded kernels, 25 the split ones (24 columns wide and one along F).
    for (method, rank) in [
        (Method::Lore, 4),
        (Method::Regularized, 4),
        (Method::Regularized, 25),
    ] {
        let full = simulated_run(&sets, method, rank, Precision::F32);
        let mixed = simulated_run(&sets, method, rank, Precision::Bf16);
        for (set, a, b) in [
            ("seen test", full.seen_test.mean, mixed.seen_test.mean),
            ("unseen test", full.unseen_test.mean, mixed.unseen_test.mean),
        ] {
            eprintln!("{method:?} K={rank} {set}: f32 {a:.4}, bf16 {b:.4}");
            assert!(
                (a - b).abs() <= HALF_A_POINT,
                "{method:?} K={rank} {set}: f32 {a:.4}, bf16 {b:.4}"
            );
        }
    }
}

#[test]
fn bf16_fits_are_reproducible_and_differ_from_f32() {
    if !available() {
        return;
    }
    let sets = population(4, 0.0, 6);
    let a = simulated_run(&sets, Method::Lore, 25, Precision::Bf16);
    let b = simulated_run(&sets, Method::Lore, 25, Precision::Bf16);
    let c = simulated_run(&sets, Method::Lore, 25, Precision::F32);
    assert_eq!(a.basis.values(), b.basis.values(), "same seed, same bits");
    // The rounding is real: the mixed fit is not the f32 fit.
    assert_ne!(a.basis.values(), c.basis.values());
}

#[test]
fn bf16_fits_give_the_same_bits_on_one_and_two_threads() {
    if !available() {
        return;
    }
    // 40 users of 33 rows: two chunks, blocks of 7 users (231 rows, so a last row without a
    // partner); F = 1000 leaves 8 features past the last whole 32.
    let (n, rows, f) = (40, 33, 1000);
    let mut state = 7u64;
    let x: Vec<half::bf16> = (0..n * rows * f)
        .map(|_| {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            half::bf16::from_f32(((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5)
        })
        .collect();
    let users: Vec<u32> = (0..n * rows).map(|i| (i / rows) as u32).collect();
    let data = Preferences::from_sorted_users(FeatureRows::Bf16(&x), f, &users).unwrap();
    // K = 5 runs the transposed scores, 25 the split ones with the extra column, 40 the
    // gradient in two passes of 20 columns.
    for (method, rank) in [
        (Method::Regularized, 5),
        (Method::Regularized, 25),
        (Method::Lore, 40),
    ] {
        let params = FitParams::new(method, rank)
            .iterations(10)
            .learning_rate(0.05)
            .seed(5)
            .precision(Precision::Bf16)
            .check()
            .unwrap();
        let run = |threads: usize| {
            rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap()
                .install(|| fit(&params, &data, None, None, |_| ControlFlow::Continue(())))
                .unwrap()
        };
        let (one, two) = (run(1), run(2));
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(
            bits(&one.unpruned_basis),
            bits(&two.unpruned_basis),
            "{method:?} K={rank} V"
        );
        assert_eq!(
            bits(&one.unpruned_logits),
            bits(&two.unpruned_logits),
            "{method:?} K={rank} W"
        );
        assert!(one.unpruned_basis.iter().all(|v| v.is_finite()));
    }
}
