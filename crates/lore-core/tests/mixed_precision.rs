//! `Precision::Bf16` (bf16 products summed in f32): its fits must score within half a point
//! of the f32 fits, on the golden runs' data and on simulated populations. Skipped (with a
//! note) on CPUs without AVX512-BF16, where the precision is refused.

use std::collections::HashMap;
use std::ops::ControlFlow;
use std::path::PathBuf;

use lore_core::experiment::{run_rank, OwnedSets, RankRun};
use lore_core::{
    evaluate, fit, simulate, synthetic_responses, FeatureRows, FitInit, FitParams, Method,
    PersonalizeParams, PopulationParams, Precision, Preferences, SyntheticParams,
};
use safetensors::{Dtype, SafeTensors};

const HALF_A_POINT: f64 = 0.005;

fn available() -> bool {
    let yes = Precision::Bf16.is_available();
    if !yes {
        eprintln!("skipping: this CPU has no AVX512-BF16");
    }
    yes
}

/// A fixture's tensors (shape, values as f32) by name.
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

/// The f32 tensors and metadata of a golden fixture.
fn golden(name: &str) -> (Tensors, HashMap<String, String>) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/reference")
        .join(name);
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("fixture {path:?}: {e}"));
    let (_, metadata) = SafeTensors::read_metadata(&bytes).unwrap();
    let meta = metadata.metadata().clone().unwrap_or_default();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors = HashMap::new();
    for (name, view) in st.tensors() {
        let values: Vec<f32> = match view.dtype() {
            Dtype::F32 => view
                .data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes(b.try_into().unwrap()))
                .collect(),
            Dtype::I64 => view
                .data()
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes(b.try_into().unwrap()) as f32)
                .collect(),
            other => panic!("unexpected dtype {other:?}"),
        };
        tensors.insert(name, (view.shape().to_vec(), values));
    }
    (tensors, meta)
}

/// Mean training accuracy of the golden run's fit, from its initial values, in `precision`.
fn golden_accuracy(name: &str, method: Method, precision: Precision) -> f64 {
    let (tensors, meta) = golden(name);
    let (shape, x) = &tensors["x"];
    let f = shape[1];
    let users: Vec<u32> = tensors["user"].1.iter().map(|&u| u as u32).collect();
    let data = Preferences::from_sorted_users(FeatureRows::F32(x), f, &users).unwrap();
    let k = tensors["V0"].0[1];
    let number = |key: &str| -> f64 { meta[key].parse().unwrap() };
    let params = FitParams::new(method, k)
        .alpha(number("alpha"))
        .iterations(number("iterations") as usize)
        .learning_rate(number("learning_rate"))
        .precision(precision)
        .check()
        .unwrap();
    let init = FitInit {
        logits: tensors["W0"].1.clone(),
        basis: tensors["V0"].1.clone(),
    };
    let v_ref = &tensors["v_ref"].1;
    let model = fit(&params, &data, Some(v_ref), Some(&init), |_| {
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

/// A simulated split with a planted rank-4 population (the simulator's defaults).
fn population(seed: u64) -> OwnedSets {
    let responses = synthetic_responses(&SyntheticParams {
        seed,
        ..SyntheticParams::default()
    })
    .unwrap();
    let pop = simulate(
        &responses.view(),
        &PopulationParams {
            seed,
            ..PopulationParams::default()
        },
        None,
        |_| {},
    )
    .unwrap();
    OwnedSets::gather(FeatureRows::F32(&pop.features), pop.n_features, &pop.split).unwrap()
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
    let sets = population(5);
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
    let sets = population(6);
    let a = simulated_run(&sets, Method::Lore, 25, Precision::Bf16);
    let b = simulated_run(&sets, Method::Lore, 25, Precision::Bf16);
    let c = simulated_run(&sets, Method::Lore, 25, Precision::F32);
    assert_eq!(a.basis.values(), b.basis.values(), "same seed, same bits");
    // The rounding is real: the mixed fit is not the f32 fit.
    assert_ne!(a.basis.values(), c.basis.values());
}
