//! Few-shot personalization with a fixed basis: the reference `PersonalizeBatch`.

use std::ops::ControlFlow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use crate::adam::Adam;
use crate::data::Preferences;
use crate::error::{LoreError, Result};
use crate::kernels::BlockKernels;
use crate::model::{RewardBasis, UserWeights};
use crate::objective::{
    build_chunks, for_each_chunk, gather_logits, total_losses, PassSpec, RowWeighting,
};
use crate::params::CheckedPersonalizeParams;

/// What one personalization step reports: the loss (sum of user means) before the update.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PersonalizeStep {
    pub step: usize,
    pub loss: f64,
}

/// The seeded random start of personalization: logits ~ N(0,1) [N x K] from ChaCha8.
pub fn random_user_logits(n_users: usize, rank: usize, seed: u64) -> Vec<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n_users * rank)
        .map(|_| rng.sample::<f32, _>(StandardNormal))
        .collect()
}

/// Fits each user's weights softmax(w_u) on their rows with `basis` fixed. Z_u = X_u V is
/// computed once; the Adam iterations then never touch X again.
pub fn personalize(
    params: &CheckedPersonalizeParams,
    basis: &RewardBasis,
    data: &Preferences,
    init_logits: Option<&[f32]>,
    mut observer: impl FnMut(&PersonalizeStep) -> ControlFlow<()>,
) -> Result<UserWeights> {
    let (n, k) = (data.n_users(), basis.rank());
    if basis.n_features() != data.n_features() {
        return Err(LoreError::FeatureMismatch {
            model: basis.n_features(),
            data: data.n_features(),
        });
    }
    let random;
    let init = match init_logits {
        Some(init) => {
            if init.len() != n * k {
                return Err(LoreError::Shape(format!(
                    "initial w has {} values, expected [N = {n}, K = {k}]",
                    init.len()
                )));
            }
            if init.iter().any(|v| !v.is_finite()) {
                return Err(LoreError::InvalidParameter {
                    name: "initial values",
                    reason: "contain NaN or infinite values".into(),
                });
            }
            init
        }
        None => {
            random = random_user_logits(n, k, params.seed());
            &random
        }
    };
    let kernels = BlockKernels::new(data.n_features(), k);
    let mut packed_basis = vec![0.0f32; kernels.packed_len()];
    kernels.pack_basis(basis.values(), &mut packed_basis);
    let mut chunks = build_chunks(data, &kernels, k, init, false);
    for_each_chunk(&mut chunks, |chunk| {
        chunk.compute_scores(data, &kernels, &packed_basis)
    });
    let mut clock = Adam::new(0, params.learning_rate() as f32);
    for step in 0..params.iterations() {
        let spec = PassSpec {
            kernels,
            packed_basis: &packed_basis,
            logit_scale: basis.logit_scale() as f32,
            weighting: RowWeighting::PerUserMean,
            weight_step: clock.begin_step(),
            alternate: false,
        };
        for_each_chunk(&mut chunks, |chunk| chunk.scores_pass(data, &spec));
        let (loss, _) = total_losses(&chunks);
        if observer(&PersonalizeStep { step, loss }).is_break() {
            break;
        }
    }
    UserWeights::from_logits(n, k, gather_logits(&chunks))
}
