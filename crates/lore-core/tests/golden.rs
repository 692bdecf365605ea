//! Golden runs of the reference PyTorch classes (tests/fixtures/reference, copied from
//! ../shared/fixtures/reference): traces within 1e-4 relative, final parameters within 1e-3
//! absolute, accuracies and kept columns exactly.

use std::ops::ControlFlow;

use lore_core::{
    evaluate, fit, personalize, FeatureRows, FitOptions, Method, PersonalizeOptions,
    PersonalizeParams, Preferences, RewardBasis, UserWeights,
};

mod common;
use common::Golden;

fn assert_trace(name: &str, got: &[f64], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}: trace length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-4 * w.abs().max(1e-6);
        assert!(
            (g - w).abs() <= tol,
            "{name}[{i}]: got {g}, want {w} (rel {})",
            (g - w).abs() / w.abs()
        );
    }
}

fn assert_close(name: &str, got: &[f32], want: &[f64]) {
    assert_eq!(got.len(), want.len(), "{name}: length");
    let worst = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| (g as f64 - w).abs())
        .fold(0.0, f64::max);
    assert!(worst <= 1e-3, "{name}: max abs error {worst}");
}

fn assert_accuracy(golden: &Golden, basis: &RewardBasis, users: &UserWeights, data: &Preferences) {
    let eval = evaluate(basis, users, data).unwrap();
    let want = golden.f64("accuracy");
    for (u, (&g, &w)) in eval.per_user.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() < 1e-6,
            "accuracy of user {u}: got {g}, want {w}"
        );
    }
}

fn run_lore(file: &str) {
    let golden = Golden::load(file);
    let x = golden.f32("x");
    let users = golden.users();
    let f = golden.shape("x")[1];
    let data = Preferences::from_sorted_users(FeatureRows::F32(&x), f, &users).unwrap();
    let k = golden.shape("V0")[1];
    let (params, init) = golden.fit_setup(Method::Lore, k);
    let v_ref = golden.f32("v_ref");
    let (mut nll, mut reg) = (Vec::new(), Vec::new());
    let options = FitOptions {
        v_ref: Some(&v_ref),
        init: Some(&init),
        ..FitOptions::default()
    };
    let model = fit(&params, &data, &options, |s| {
        nll.push(s.nll);
        reg.push(s.reg);
        ControlFlow::Continue(())
    })
    .unwrap()
    .model;
    assert_trace("nll", &nll, golden.f64("nll"));
    assert_trace("reg", &reg, golden.f64("reg"));
    assert_close("V", model.basis.values(), golden.f64("V"));
    assert_close("W", model.users.weights(), golden.f64("W"));
    assert_eq!(model.kept, (0..k).collect::<Vec<_>>());
    assert_accuracy(&golden, &model.basis, &model.users, &data);
}

fn run_regularized(file: &str) {
    let golden = Golden::load(file);
    let x = golden.f32("x");
    let users = golden.users();
    let f = golden.shape("x")[1];
    let data = Preferences::from_sorted_users(FeatureRows::F32(&x), f, &users).unwrap();
    let k = golden.shape("V0")[1];
    let (params, init) = golden.fit_setup(Method::Regularized, k);
    let v_ref = golden.f32("v_ref");
    let (mut nll_w, mut nll_v, mut reg, mut alpha) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let options = FitOptions {
        v_ref: Some(&v_ref),
        init: Some(&init),
        ..FitOptions::default()
    };
    let model = fit(&params, &data, &options, |s| {
        nll_w.push(s.nll);
        nll_v.push(s.nll_after_weights.unwrap());
        reg.push(s.reg);
        alpha.push(s.alpha);
        ControlFlow::Continue(())
    })
    .unwrap()
    .model;
    assert_trace("nll_w", &nll_w, golden.f64("nll_w"));
    assert_trace("nll_v", &nll_v, golden.f64("nll_v"));
    assert_trace("reg", &reg, golden.f64("reg"));
    assert_trace("alpha_at_step", &alpha, golden.f64("alpha_at_step"));
    assert_close("V_all", &model.unpruned_basis, golden.f64("V_all"));
    assert_close(
        "W_all_logits",
        &model.unpruned_logits,
        golden.f64("W_all_logits"),
    );
    let kept_flags: Vec<f64> = (0..k)
        .map(|j| model.kept.contains(&j) as u8 as f64)
        .collect();
    assert_eq!(kept_flags, golden.f64("kept"), "kept columns");
    assert_close("V", model.basis.values(), golden.f64("V"));
    assert_close("W", model.users.weights(), golden.f64("W"));
    assert_accuracy(&golden, &model.basis, &model.users, &data);
}

fn run_personalize(file: &str) {
    let golden = Golden::load(file);
    let x = golden.f32("x");
    let users = golden.users();
    let f = golden.shape("x")[1];
    let data = Preferences::from_sorted_users(FeatureRows::F32(&x), f, &users).unwrap();
    let k = golden.shape("V")[1];
    let basis = RewardBasis::new(f, k, golden.f32("V"), 0.01).unwrap();
    let params = PersonalizeParams::default()
        .iterations(golden.meta_f64("iterations") as usize)
        .learning_rate(golden.meta_f64("learning_rate"))
        .check()
        .unwrap();
    let mut loss = Vec::new();
    let w0 = golden.f32("w0");
    let options = PersonalizeOptions {
        init_logits: Some(&w0),
        ..PersonalizeOptions::default()
    };
    let users = personalize(&params, &basis, &data, &options, |s| {
        loss.push(s.loss);
        ControlFlow::Continue(())
    })
    .unwrap()
    .users;
    assert_trace("loss", &loss, golden.f64("loss"));
    assert_close("W", users.weights(), golden.f64("W"));
    assert_accuracy(&golden, &basis, &users, &data);
}

#[test]
fn lore_alpha0() {
    run_lore("lore_alpha0.safetensors");
}

#[test]
fn lore_l2() {
    run_lore("lore_l2.safetensors");
}

#[test]
fn lore_paper_lr() {
    run_lore("lore_paper_lr.safetensors");
}

#[test]
fn regularized_warmup() {
    run_regularized("regularized_warmup.safetensors");
}

#[test]
fn regularized_paper_lr() {
    run_regularized("regularized_paper_lr.safetensors");
}

#[test]
fn personalize_default_lr() {
    run_personalize("personalize.safetensors");
}

#[test]
fn personalize_paper_lr() {
    run_personalize("personalize_paper.safetensors");
}
