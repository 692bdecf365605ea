//! `Precision::Bf16` (bf16 products summed in f32): its fits must score within half a point
//! of the f32 fits, on the golden runs' data and on simulated populations. Skipped (with a
//! note) on CPUs without AVX512-BF16, where the precision is refused.

use std::ops::ControlFlow;

mod common;
use common::{population, Golden};
use lore_core::{
    evaluate, fit, FeatureRows, FitOptions, FitParams, Method, PersonalizeParams, Precision,
    Preferences,
};
use lore_experiment::{run_rank, OwnedSets, RankRun};

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
    let init = golden.init();
    let options = FitOptions {
        v_ref: Some(&v_ref),
        init: Some(&init),
        ..FitOptions::default()
    };
    let model = fit(&params, &data, &options, |_| ControlFlow::Continue(()))
        .unwrap()
        .model;
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

/// Odd F, where one direction has no bf16 pairs (the fused pass then gives way to the pass
/// through S): fits in both methods, at ranks of both passes, run and reproduce.
#[test]
fn bf16_fits_with_odd_features() {
    if !available() {
        return;
    }
    let (n, per, f) = (6, 5, 21);
    let x: Vec<f32> = (0..n * per * f)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0)
        .collect();
    let users: Vec<u32> = (0..n * per).map(|i| (i / per) as u32).collect();
    let data = Preferences::from_sorted_users(FeatureRows::F32(&x), f, &users).unwrap();
    for method in [Method::Lore, Method::Regularized] {
        for k in [2, 12] {
            let params = FitParams::new(method, k)
                .iterations(3)
                .precision(Precision::Bf16)
                .check()
                .unwrap();
            let run = || {
                fit(&params, &data, &FitOptions::default(), |_| {
                    ControlFlow::Continue(())
                })
                .unwrap()
                .model
            };
            let (a, b) = (run(), run());
            assert!(a.basis.values().iter().all(|v| v.is_finite()));
            assert_eq!(a.basis.values(), b.basis.values(), "{method:?} K={k}");
        }
    }
}
