//! Validation scores, early stopping of fits and personalization, and the few-shot prior.

use std::ops::ControlFlow;

use lore_core::{
    evaluate, fit, personalize, random_user_logits, EarlyStopping, FeatureRows, FitOptions,
    FitOutcome, FitParams, Method, PersonalizeOptions, PersonalizeOutcome, PersonalizeParams,
    UserWeights, Validation,
};
use lore_experiment::OwnedSets;
use lore_experiment::{simulate, synthetic_responses, PopulationParams, SyntheticParams};

/// A small planted population: seen users with 50 rows, unseen users with 10.
fn population() -> OwnedSets {
    let responses = synthetic_responses(&SyntheticParams {
        n_features: 32,
        seed: 5,
        ..SyntheticParams::default()
    })
    .unwrap();
    let pop = simulate(
        &responses.view(),
        &PopulationParams {
            n_seen_users: 60,
            n_unseen_users: 30,
            score_noise: 1.0,
            seed: 5,
            ..PopulationParams::default()
        },
        None,
        |_| {},
    )
    .unwrap();
    OwnedSets::gather(FeatureRows::F32(&pop.features), 32, &pop.split).unwrap()
}

fn softplus(t: f64) -> f64 {
    if t > 0.0 {
        t + (-t).exp().ln_1p()
    } else {
        t.exp().ln_1p()
    }
}

#[test]
fn validation_score_agrees_with_evaluate_and_the_loss_formula() {
    let owned = population();
    let sets = owned.sets().unwrap();
    let params = FitParams::new(Method::Lore, 3)
        .iterations(30)
        .learning_rate(0.5)
        .check()
        .unwrap();
    let model = fit(&params, sets.seen_train(), &FitOptions::default(), |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .model;
    let test = sets.seen_test();
    let validation = Validation::same_users(test.clone());
    let score = validation
        .score(model.basis.values(), model.users.weights(), 3, 0.01)
        .unwrap();
    let accuracy = evaluate(&model.basis, &model.users, test).unwrap();
    assert_eq!(score.per_user_accuracy, accuracy.per_user);

    // The loss by hand for the first user.
    let direction = model.basis.direction(model.users.user(0));
    let rows = test.user_rows(0);
    let n = rows.len() as f64;
    let mut scratch = Vec::new();
    let x = test.rows_f32(rows, &mut scratch);
    let by_hand: f64 = x
        .chunks_exact(32)
        .map(|row| {
            let s: f64 = row
                .iter()
                .zip(&direction)
                .map(|(&a, &b)| a as f64 * b)
                .sum();
            softplus(-0.01 * s)
        })
        .sum::<f64>()
        / n;
    let user_zero_only = Validation::new(
        lore_core::Preferences::new(FeatureRows::F32(x), 32, vec![0, x.len() / 32]).unwrap(),
        vec![0],
    )
    .unwrap();
    let single = user_zero_only
        .score(model.basis.values(), model.users.weights(), 3, 0.01)
        .unwrap();
    assert!(
        (single.loss - by_hand).abs() < 1e-9,
        "{} vs {by_hand}",
        single.loss
    );
    // A validation user mapped past the model's users is refused.
    let bad = Validation::new(test.clone(), vec![10_000; test.n_users()]).unwrap();
    assert!(bad
        .score(model.basis.values(), model.users.weights(), 3, 0.01)
        .is_err());
}

#[test]
fn early_stopping_returns_the_best_state_and_stops() {
    let owned = population();
    let sets = owned.sets().unwrap();
    // A large rank, a large learning rate, and only the seen test rows to judge: it overfits.
    let params = FitParams::new(Method::Lore, 16)
        .iterations(3000)
        .learning_rate(0.5)
        .check()
        .unwrap();
    let validation = Validation::same_users(sets.seen_test().clone());
    let rule = EarlyStopping {
        eval_every: 10,
        patience: 3,
        min_delta: 0.0,
    };
    let options = FitOptions {
        validation: Some((&validation, rule)),
        ..FitOptions::default()
    };
    let FitOutcome { model, stopping } = fit(&params, sets.seen_train(), &options, |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    let report = stopping.unwrap();
    assert!(report.stopped_early, "{:?}", report.history.last());
    assert!(model.steps < 3000);
    assert_eq!(model.steps, report.best_steps + 3 * 10);
    let best = report
        .history
        .iter()
        .map(|h| h.1)
        .fold(f64::INFINITY, f64::min);
    assert_eq!(report.best.loss, best);
    let again = validation
        .score(model.basis.values(), model.users.weights(), 16, 0.01)
        .unwrap();
    assert!(
        (again.loss - best).abs() < 1e-12,
        "the kept state is the best one"
    );
}

#[test]
fn a_strong_prior_holds_new_users_at_the_population_mean() {
    let owned = population();
    let sets = owned.sets().unwrap();
    let params = FitParams::new(Method::Lore, 4)
        .iterations(100)
        .learning_rate(0.5)
        .check()
        .unwrap();
    let model = fit(&params, sets.seen_train(), &FitOptions::default(), |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .model;
    let prior = model.users.prior_logits();
    let unseen = sets.unseen_train();
    let n = unseen.n_users();
    let start = random_user_logits(n, 4, 3);
    let run = |strength: f64| -> UserWeights {
        let params = PersonalizeParams::default()
            .prior_strength(strength)
            .check()
            .unwrap();
        let options = PersonalizeOptions {
            init_logits: Some(&start),
            prior_logits: Some(&prior),
            validation: None,
        };
        personalize(&params, &model.basis, unseen, &options, |_| {
            ControlFlow::Continue(())
        })
        .unwrap()
        .users
    };
    let mean = UserWeights::from_logits(1, prior.len(), prior.clone())
        .unwrap()
        .weights()
        .to_vec();
    let farthest = |users: &UserWeights| {
        (0..n)
            .flat_map(|u| users.user(u).iter().zip(&mean).map(|(a, b)| (a - b).abs()))
            .fold(0.0f32, f32::max)
    };
    let held = run(100.0);
    let free = run(0.0);
    assert!(farthest(&held) < 1e-2, "{}", farthest(&held));
    assert!(farthest(&free) > 0.1, "{}", farthest(&free));

    // A prior needs its mean.
    let params = PersonalizeParams::default()
        .prior_strength(1.0)
        .check()
        .unwrap();
    assert!(personalize(
        &params,
        &model.basis,
        unseen,
        &PersonalizeOptions::default(),
        |_| ControlFlow::Continue(())
    )
    .is_err());
    assert!(PersonalizeParams::default()
        .prior_strength(-1.0)
        .check()
        .is_err());
}

#[test]
fn personalization_can_stop_early_on_held_out_rows() {
    let owned = population();
    let sets = owned.sets().unwrap();
    let params = FitParams::new(Method::Lore, 8)
        .iterations(200)
        .learning_rate(0.5)
        .check()
        .unwrap();
    let model = fit(&params, sets.seen_train(), &FitOptions::default(), |_| {
        ControlFlow::Continue(())
    })
    .unwrap()
    .model;
    let validation = Validation::same_users(sets.unseen_test().clone());
    let params = PersonalizeParams::default()
        .iterations(5000)
        .check()
        .unwrap();
    let options = PersonalizeOptions {
        validation: Some((
            &validation,
            EarlyStopping {
                eval_every: 5,
                patience: 4,
                min_delta: 0.0,
            },
        )),
        ..Default::default()
    };
    let mut steps = 0;
    let PersonalizeOutcome {
        users,
        stopping: report,
    } = personalize(&params, &model.basis, sets.unseen_train(), &options, |_| {
        steps += 1;
        ControlFlow::Continue(())
    })
    .unwrap();
    let report = report.unwrap();
    assert!(report.stopped_early && steps < 5000, "{steps}");
    let again = validation
        .score_logits(&model.basis, users.logits())
        .unwrap();
    assert!((again.loss - report.best.loss).abs() < 1e-12);
}
