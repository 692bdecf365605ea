//! Helpers shared by the harness's integration tests.
#![allow(dead_code)] // each test binary uses its own part
                     // Also included by lore-core's tests/common (by path), for their simulated populations.

use lore_core::FeatureRows;
use lore_experiment::{
    simulate, synthetic_responses, OwnedSets, PopulationParams, SyntheticParams,
};

/// A simulated split: J reward directions (J = 1: every user the same reward), Dirichlet
/// weights, noise on the scores; 300 seen users with 50 training rows, 100 unseen users with
/// 10 few-shot rows, 50 test rows each.
pub fn population(n_rewards: usize, score_noise: f64, seed: u64) -> OwnedSets {
    let responses = synthetic_responses(&SyntheticParams {
        n_rewards,
        seed,
        ..SyntheticParams::default()
    })
    .unwrap();
    let pop = simulate(
        &responses.view(),
        &PopulationParams {
            score_noise,
            seed,
            ..PopulationParams::default()
        },
        None,
        |_| {},
    )
    .unwrap();
    OwnedSets::gather(FeatureRows::F32(&pop.features), pop.n_features, &pop.split).unwrap()
}
