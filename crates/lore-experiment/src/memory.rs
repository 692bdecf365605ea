//! Sizes of the experiments, checked before any work: the ranks a split's data can carry and
//! the bytes a simulation, sweep, few-shot curve or search holds (upper estimates in checked
//! arithmetic, `None` when the count overflows u64), for callers to compare with what the
//! machine has.

use lore_core::{check_fit_size, fit_memory, personalize_memory, LoreError, Result};

use crate::{
    CheckedAutoParams, CheckedShotsParams, CheckedSweepParams, ExperimentSets, PopulationParams,
    SyntheticParams,
};

/// Bytes of one f32.
const F32_BYTES: u64 = 4;
/// Bytes a simulated row holds besides its features: its user and prompt (u32 each), its set's
/// row index (usize) and set user (u32), and the i64 user and prompt written to the files.
const ROW_BYTES: u64 = 4 + 4 + 8 + 4 + 16;
/// Bytes of a user's name (`user0000`, a String) beside its weights.
const USER_ID_BYTES: u64 = 48;
/// Copies of the population's features held while its files are written (the rows, the
/// population file's copy, one set's copy).
const FEATURE_COPIES: u64 = 3;
/// Bytes of a per-user accuracy (f64) and its count, in an evaluation.
const EVALUATION_USER_BYTES: u64 = 16;

/// Refuses ranks the sets cannot carry: every K at most F (see [`check_fit_size`]).
pub fn check_ranks_fit(sets: &ExperimentSets, ranks: &[usize]) -> Result<()> {
    let Some(&largest) = ranks.iter().max() else {
        return Ok(());
    };
    let seen = sets.seen_train();
    check_fit_size(
        seen.n_users(),
        seen.n_rows(),
        sets.n_features(),
        largest.max(1),
    )
}

/// The bytes of the built-in responses: embeddings [M, R, F], scores [M, R, J] and the
/// directions [J, F].
pub fn synthetic_memory(params: &SyntheticParams) -> Option<u64> {
    let (f, j) = (params.n_features as u64, params.n_rewards as u64);
    let responses = (params.n_prompts as u64).checked_mul(params.n_responses as u64)?;
    responses
        .checked_mul(f.checked_add(j)?)?
        .checked_add(j.checked_mul(f)?)?
        .checked_mul(F32_BYTES)
}

/// The bytes a simulation of `params` holds on responses of `n_prompts` prompts x
/// `n_responses` responses, F = `n_features` and J = `n_rewards` (the responses themselves
/// excluded): the rows (with the copies written to the files), the users' names and weights,
/// and the least-squares fit of v_ref. Invalid parameters are an error, as [`crate::simulate`]
/// reports them.
pub fn simulate_memory(
    params: &PopulationParams,
    n_prompts: usize,
    n_responses: usize,
    n_features: usize,
    n_rewards: usize,
) -> Result<Option<u64>> {
    let counts = params.check(n_prompts)?;
    let estimate = || -> Option<u64> {
        let (seen, unseen) = (params.n_seen_users as u64, params.n_unseen_users as u64);
        let test = counts.test.max as u64;
        let rows = seen
            .checked_mul((counts.seen.max as u64).checked_add(test)?)?
            .checked_add(unseen.checked_mul((counts.unseen.max as u64).checked_add(test)?)?)?;
        let users = seen.checked_add(unseen)?;
        let features = rows
            .checked_mul(n_features as u64)?
            .checked_mul(F32_BYTES * FEATURE_COPIES)?;
        let per_user = USER_ID_BYTES.checked_add((n_rewards as u64).checked_mul(2 * F32_BYTES)?)?;
        let responses = (n_prompts as u64).checked_mul(n_responses as u64)?;
        [
            features,
            rows.checked_mul(ROW_BYTES)?,
            users.checked_mul(per_user)?,
            (n_prompts as u64).checked_mul(3 * 4)?,
            // v_ref's conjugate gradients: a few vectors of every response and of F.
            responses.checked_mul(3 * 8)?,
            (n_features as u64).checked_mul(8 * 8)?,
        ]
        .into_iter()
        .try_fold(0u64, u64::checked_add)
    };
    Ok(estimate())
}

/// The bytes one run of rank `rank` holds: the fit on the seen users, the personalization of
/// the unseen users and the four evaluations.
fn run_memory(sets: &ExperimentSets, rank: usize) -> Option<u64> {
    let (seen, unseen) = (sets.seen_train(), sets.unseen_train());
    let f = sets.n_features();
    let evaluations = (seen.n_users() as u64)
        .checked_add(unseen.n_users() as u64)?
        .checked_mul(2 * EVALUATION_USER_BYTES)?;
    fit_memory(seen.n_users(), seen.n_rows(), f, rank)?
        .checked_add(personalize_memory(
            unseen.n_users(),
            unseen.n_rows(),
            f,
            rank,
        )?)?
        .checked_add(evaluations)
}

/// The bytes a run's results keep (the basis and both users' weights, and its evaluations),
/// held for every seed of a (alpha, rank) row.
fn kept_run_memory(sets: &ExperimentSets, rank: usize) -> Option<u64> {
    let users =
        (sets.seen_train().n_users() as u64).checked_add(sets.unseen_train().n_users() as u64)?;
    let k = rank as u64;
    (sets.n_features() as u64)
        .checked_mul(k)?
        .checked_add(users.checked_mul(k)?.checked_mul(2)?)?
        .checked_mul(F32_BYTES)?
        .checked_add(users.checked_mul(2 * EVALUATION_USER_BYTES)?)
}

/// The bytes [`crate::sweep`] holds on `sets` at its largest rank, with every seed's run of a
/// row kept; checks the ranks first ([`check_ranks_fit`]).
pub fn sweep_memory(sets: &ExperimentSets, params: &CheckedSweepParams) -> Result<Option<u64>> {
    let p = params.params();
    check_ranks_fit(sets, &p.ranks)?;
    let rank = p.ranks.iter().copied().max().unwrap_or(1).max(1);
    Ok(run_memory(sets, rank).and_then(|run| {
        kept_run_memory(sets, rank)?
            .checked_mul(p.seeds.len() as u64)?
            .checked_add(run)
    }))
}

/// The bytes [`crate::shots_curve`] holds on `sets` at its largest rank: the fit, each trial's
/// draw and personalization, and two evaluations per trial; checks the ranks first.
pub fn shots_memory(sets: &ExperimentSets, params: &CheckedShotsParams) -> Result<Option<u64>> {
    let p = params.params();
    check_ranks_fit(sets, &p.ranks)?;
    let rank = p.ranks.iter().copied().max().unwrap_or(1).max(1);
    let unseen = sets.unseen_train();
    let estimate = || -> Option<u64> {
        let draw = (unseen.n_rows() as u64)
            .checked_mul(sets.n_features() as u64)?
            .checked_mul(F32_BYTES)?;
        let per_trial = (unseen.n_users() as u64).checked_mul(2 * EVALUATION_USER_BYTES)?;
        run_memory(sets, rank)?
            .checked_add(draw)?
            .checked_add(per_trial.checked_mul(p.trials as u64)?)
    };
    Ok(estimate())
}

/// The bytes [`crate::auto`] holds on `sets` at its largest rank: a candidate's fit with its
/// best state, the few-shot personalizations, and the final run, plus a copy of the seen
/// users' rows as folds and every fold's fitted bases; checks the ranks first.
pub fn auto_memory(sets: &ExperimentSets, params: &CheckedAutoParams) -> Result<Option<u64>> {
    let p = params.params();
    check_ranks_fit(sets, &p.ranks)?;
    let rank = p.ranks.iter().copied().max().unwrap_or(1).max(1);
    let f = sets.n_features() as u64;
    let estimate = || -> Option<u64> {
        let seen_rows = (sets.seen_train().n_rows() as u64)
            .checked_mul(f)?
            .checked_mul(F32_BYTES)?;
        let candidates = (p.ranks.len() * p.alpha_scales.len() + 1) as u64;
        let bases = (p.folds as u64)
            .checked_mul(candidates)?
            .checked_mul(f)?
            .checked_mul(rank as u64)?
            .checked_mul(F32_BYTES)?;
        run_memory(sets, rank)?
            .checked_mul(2)?
            .checked_add(seen_rows)?
            .checked_add(bases)
    };
    Ok(estimate())
}

/// A size that overflows: the error [`crate::simulate`] and the sweeps give for it.
pub(crate) fn too_large(name: &'static str, what: String) -> LoreError {
    LoreError::InvalidParameter {
        name,
        reason: format!("{what} is too large"),
    }
}
