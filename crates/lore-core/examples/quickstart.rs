//! Quickstart: a small population built in memory, a fitted basis, and new users personalized
//! from a few pairs each. Run with `cargo run --release -p lore-core --example quickstart`.
//!
//! 200 seen users each mix 3 planted reward directions in F = 16 and label 50 pairs; a basis
//! of rank 3 is fitted on them. 50 new users are personalized from 10 pairs each with the basis
//! fixed, and scored on 40 pairs each they did not label.

use std::ops::ControlFlow;

use lore_core::{
    evaluate, fit, personalize, FeatureRows, FitOptions, FitParams, Method, PersonalizeOptions,
    PersonalizeParams, Preferences,
};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

const F: usize = 16;
const K: usize = 3;

/// Pairs of `n_users` users, `pairs` each: rows x = e(chosen) - e(rejected), each row
/// oriented so that the user's own direction prefers the chosen side. Returns (rows, users).
fn population(
    directions: &[Vec<f64>],
    n_users: usize,
    pairs: usize,
    rng: &mut ChaCha8Rng,
) -> (Vec<f32>, Vec<u32>) {
    let (mut rows, mut users) = (Vec::new(), Vec::new());
    for u in 0..n_users {
        // The user's reward: a random mixture of the planted directions.
        let mix: Vec<f64> = (0..K).map(|_| rng.gen::<f64>().powi(3)).collect();
        let reward: Vec<f64> = (0..F)
            .map(|i| (0..K).map(|j| mix[j] * directions[j][i]).sum())
            .collect();
        for _ in 0..pairs {
            let x: Vec<f64> = (0..F).map(|_| rng.sample(StandardNormal)).collect();
            let score: f64 = x.iter().zip(&reward).map(|(a, b)| a * b).sum();
            let sign = if score >= 0.0 { 100.0 } else { -100.0 };
            rows.extend(x.iter().map(|&v| (v * sign) as f32));
            users.push(u as u32);
        }
    }
    (rows, users)
}

fn main() -> Result<(), lore_core::LoreError> {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let directions: Vec<Vec<f64>> = (0..K)
        .map(|_| (0..F).map(|_| rng.sample(StandardNormal)).collect())
        .collect();

    // Fit a rank-3 basis on the seen users.
    let (seen_rows, seen_users) = population(&directions, 200, 50, &mut rng);
    let seen = Preferences::from_sorted_users(FeatureRows::F32(&seen_rows), F, &seen_users)?;
    let params = FitParams::new(Method::Lore, K)
        .learning_rate(0.5)
        .iterations(300)
        .check()?;
    let model = fit(&params, &seen, &FitOptions::default(), |_| {
        ControlFlow::Continue(())
    })?
    .model;
    let seen_accuracy = evaluate(&model.basis, &model.users, &seen)?;

    // New users: 10 pairs to personalize from, 40 more to score them on.
    let (new_rows, new_users) = population(&directions, 50, 50, &mut rng);
    let (mut shots, mut shot_users, mut test, mut test_users) = (vec![], vec![], vec![], vec![]);
    for (i, (row, &u)) in new_rows.chunks_exact(F).zip(&new_users).enumerate() {
        if i % 50 < 10 {
            shots.extend_from_slice(row);
            shot_users.push(u);
        } else {
            test.extend_from_slice(row);
            test_users.push(u);
        }
    }
    let shots = Preferences::from_sorted_users(FeatureRows::F32(&shots), F, &shot_users)?;
    let test = Preferences::from_sorted_users(FeatureRows::F32(&test), F, &test_users)?;
    let few_shot = PersonalizeParams::default().check()?;
    let options = PersonalizeOptions::default();
    let new = personalize(&few_shot, &model.basis, &shots, &options, |_| {
        ControlFlow::Continue(())
    })?
    .users;
    let accuracy = evaluate(&model.basis, &new, &test)?;

    println!(
        "fitted K = {} on {} seen users ({} pairs): training accuracy {:.3}",
        model.basis.rank(),
        seen.n_users(),
        seen.n_rows(),
        seen_accuracy.mean
    );
    println!(
        "{} new users personalized from 10 pairs each: test accuracy {:.3} ± {:.3} on 40 pairs each",
        test.n_users(),
        accuracy.mean,
        accuracy.std
    );
    Ok(())
}
