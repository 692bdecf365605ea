//! Unit tests of the sweep and the few-shot curve on small simulated populations.

use crate::sets::*;
use crate::shots::*;
use crate::simulate::{simulate, synthetic_responses, PopulationParams, SyntheticParams};
use crate::sweep::*;
use lore_core::*;

/// A planted rank-4 population: F = 32, 120 seen users (50 training rows each), 60 unseen
/// users (10 few-shot rows each), 50 test rows per user.
fn population(seed: u64) -> (OwnedSets, Vec<f32>) {
    let responses = synthetic_responses(&SyntheticParams {
        n_features: 32,
        n_rewards: 4,
        seed,
        ..SyntheticParams::default()
    })
    .unwrap();
    let pop = simulate(
        &responses.view(),
        &PopulationParams {
            n_seen_users: 120,
            n_unseen_users: 60,
            seed,
            ..PopulationParams::default()
        },
        None,
        |_| {},
    )
    .unwrap();
    let sets = OwnedSets::gather(FeatureRows::F32(&pop.features), 32, &pop.split).unwrap();
    (sets, pop.v_ref)
}

fn quick(ranks: Vec<usize>) -> SweepParams {
    let mut p = SweepParams::reference(Method::Lore);
    p.ranks = ranks;
    p.fit.iterations = 200;
    p.personalize.iterations = 200;
    p
}

/// The acceptance check: on a population of planted rank 4, personalizing unseen
/// users with K = 4 beats one shared reward (K = 1) by at least 5 points on their test rows.
#[test]
fn planted_rank_four_beats_one_shared_reward() {
    for seed in [0, 1, 2] {
        let (owned, v_ref) = population(seed);
        let sets = owned.sets().unwrap();
        let params = quick(vec![1, 4]).check().unwrap();
        let results = sweep(&sets, Some(&v_ref), &params, |_| {}).unwrap();
        let [k1, k4] = &results.rows[..] else {
            panic!("two rows expected")
        };
        assert_eq!((k1.rank, k4.rank), (1, 4));
        assert!(
            k4.unseen_test.mean >= k1.unseen_test.mean + 0.05,
            "seed {seed}: K = 4 {:.3} vs K = 1 {:.3}",
            k4.unseen_test.mean,
            k1.unseen_test.mean
        );
        assert!(k4.seen_test.mean >= k1.seen_test.mean + 0.05);
    }
}

#[test]
fn sweep_rows_follow_the_reference_conventions() {
    let (owned, v_ref) = population(4);
    let sets = owned.sets().unwrap();
    let mut p = quick(vec![2, 0, 1]);
    p.fit.iterations = 20;
    p.personalize.iterations = 10;
    p.alphas = vec![0.0, 0.5];
    p.seeds = vec![3, 1];
    let params = p.check().unwrap();
    let mut steps = 0;
    let results = sweep(&sets, Some(&v_ref), &params, |_| steps += 1).unwrap();
    assert_eq!(steps, params.total_steps());
    assert_eq!(steps, 2 * 2 * (20 + 20 + 10));
    let keys: Vec<(f64, usize)> = results.rows.iter().map(|r| (r.alpha, r.rank)).collect();
    assert_eq!(
        keys,
        vec![(0.0, 0), (0.0, 1), (0.0, 2), (0.5, 0), (0.5, 1), (0.5, 2)]
    );
    // K = 0 is the reference head, whatever alpha and seed.
    let head = RewardBasis::reference_head(&v_ref, 0.01).unwrap();
    let direct = evaluate(&head, &UserWeights::single_column(60), &sets.unseen_test).unwrap();
    assert_eq!(results.rows[0].unseen_test.mean, direct.mean);
    assert_eq!(results.rows[0].seen_test, results.rows[3].seen_test);
    assert_eq!(results.rows[0].unseen_test.runs.len(), 2);
    assert_eq!(results.rows[0].unseen_test.run_std, 0.0);
    // Two seeds: two runs per row, sorted seeds do not change the results' order.
    assert_eq!(results.rows[2].unseen_test.runs.len(), 2);
    assert_eq!(results.rows[2].kept_ranks, vec![2, 2]);
    // The same sweep again gives the same numbers, bit for bit.
    assert_eq!(
        results,
        sweep(&sets, Some(&v_ref), &params, |_| {}).unwrap()
    );
}

#[test]
fn rank_one_gives_unseen_users_the_shared_reward() {
    let (owned, _) = population(5);
    let sets = owned.sets().unwrap();
    let fit_params = FitParams::new(Method::Lore, 1)
        .iterations(30)
        .learning_rate(0.5)
        .check()
        .unwrap();
    let run = run_rank(
        &sets,
        None,
        &fit_params,
        &PersonalizeParams::default().check().unwrap(),
        |phase, _, _| assert_eq!(phase, Phase::Fit),
    )
    .unwrap();
    assert_eq!(run.unseen_users, UserWeights::single_column(60));
    let direct = evaluate(&run.basis, &run.unseen_users, &sets.unseen_test).unwrap();
    assert_eq!(run.unseen_test, direct);
}

#[test]
fn missing_reference_is_skipped_or_refused() {
    let (owned, _) = population(6);
    let sets = owned.sets().unwrap();
    let mut p = quick(vec![0, 1]);
    p.fit.iterations = 5;
    let results = sweep(&sets, None, &p.check().unwrap(), |_| {}).unwrap();
    assert!(results.reference_skipped);
    assert_eq!(results.rows.len(), 1);
    let only_reference = quick(vec![0]).check().unwrap();
    assert!(sweep(&sets, None, &only_reference, |_| {}).is_err());
    let mut pulled = quick(vec![1]);
    pulled.alphas = vec![1.0];
    assert!(sweep(&sets, None, &pulled.check().unwrap(), |_| {}).is_err());
    assert!(sweep(
        &sets,
        Some(&[0.0; 3]),
        &quick(vec![1]).check().unwrap(),
        |_| {}
    )
    .is_err());
    for bad in [quick(vec![]), quick(vec![1, 1])] {
        assert!(bad.check().is_err());
    }
    let mut no_seeds = quick(vec![1]);
    no_seeds.seeds.clear();
    assert!(no_seeds.check().is_err());
}

#[test]
fn shots_curve_draws_and_personalizes() {
    let (owned, v_ref) = population(7);
    let sets = owned.sets().unwrap();
    let mut p = ShotsParams::reference(Method::Lore);
    p.ranks = vec![4, 0, 1];
    p.shots = vec![20, 2, 5];
    p.trials = 2;
    p.fit.iterations = 200;
    p.personalize.iterations = 200;
    let params = p.check().unwrap();
    let mut steps = 0;
    let results = shots_curve(&sets, Some(&v_ref), &params, |_| steps += 1).unwrap();
    assert_eq!(steps, params.total_steps());
    let keys: Vec<(usize, usize)> = results.rows.iter().map(|r| (r.rank, r.shots)).collect();
    let mut expected = Vec::new();
    for k in [0, 1, 4] {
        for s in [2, 5, 20] {
            expected.push((k, s));
        }
    }
    assert_eq!(keys, expected);
    // Unseen users have 10 few-shot rows: 20 shots use all 10.
    assert_eq!(results.rows[1].mean_shots, 5.0);
    assert_eq!(results.rows[2].mean_shots, 10.0);
    // Flat curves for K = 0 and 1 (no personalization); K = 4 learns from 5 shots on.
    let row = |k: usize, s: usize| {
        results
            .rows
            .iter()
            .find(|r| (r.rank, r.shots) == (k, s))
            .unwrap()
    };
    assert_eq!(row(1, 2).unseen_test.mean, row(1, 20).unseen_test.mean);
    assert_eq!(row(1, 2).unseen_test.run_std, 0.0);
    assert!(row(4, 5).unseen_test.mean > row(1, 5).unseen_test.mean + 0.03);
    assert_eq!(row(4, 5).unseen_test.runs.len(), 2);
    assert_eq!(
        results,
        shots_curve(&sets, Some(&v_ref), &params, |_| {}).unwrap()
    );
}

#[test]
fn test_users_are_matched_through_the_maps() {
    let users = UserWeights::from_logits(3, 2, vec![0.0, 1.0, 2.0, 0.0, 5.0, 5.0]).unwrap();
    let picked = select_users(&users, &[2, 0]).unwrap();
    assert_eq!(picked.user(0), users.user(2));
    assert_eq!(picked.user(1), users.user(0));
    assert!(select_users(&users, &[3]).is_err());

    let (owned, _) = population(8);
    let s = owned.sets().unwrap();
    let bad = ExperimentSets::with_user_maps(
        s.seen_train.clone(),
        s.seen_test.clone(),
        vec![0; 3],
        s.unseen_train.clone(),
        s.unseen_test.clone(),
        s.unseen_test_users.clone(),
    );
    assert!(bad.is_err());
    let mut out_of_range = s.seen_test_users.clone();
    out_of_range[0] = 120;
    assert!(ExperimentSets::with_user_maps(
        s.seen_train.clone(),
        s.seen_test.clone(),
        out_of_range,
        s.unseen_train.clone(),
        s.unseen_test.clone(),
        s.unseen_test_users.clone(),
    )
    .is_err());
}
