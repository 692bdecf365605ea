//! The paper's experiments over the four sets of a split: accuracy against rank ([`sweep`])
//! and accuracy against the number of few-shot pairs ([`shots_curve`]).
//!
//! For a rank K:
//! - K = 0 evaluates the reference head v_ref itself (w = [1] for every user);
//! - K = 1 fits one shared Bradley-Terry reward on the seen users; unseen users get w = [1];
//! - K >= 2 fits a basis and seen users' weights, then personalizes each unseen user from
//!   their few-shot rows with the basis fixed.
//!
//! Each run reports pairwise accuracy on the four sets (seen train, seen test, unseen few-shot,
//! unseen test) as mean and standard deviation over users; several seeds (or trials) add the
//! mean and standard deviation over runs. Results depend only on the inputs and the seeds, not
//! on the number of threads.

use std::ops::ControlFlow;

use rand::seq::index::sample;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

use crate::data::{FeatureRows, Preferences};
use crate::error::{LoreError, Result};
use crate::eval::{evaluate, mean_and_std, Evaluation};
use crate::fit::fit;
use crate::model::{RewardBasis, UserWeights};
use crate::params::{
    CheckedFitParams, CheckedPersonalizeParams, FitParams, Method, PersonalizeParams,
};
use crate::personalize::personalize;
use crate::split::{Split, SplitSet};

/// The four sets of a split as views, with how their test users map to their training users.
#[derive(Debug, Clone)]
pub struct ExperimentSets<'a> {
    seen_train: Preferences<'a>,
    seen_test: Preferences<'a>,
    seen_test_users: Vec<usize>,
    unseen_train: Preferences<'a>,
    unseen_test: Preferences<'a>,
    unseen_test_users: Vec<usize>,
}

impl<'a> ExperimentSets<'a> {
    /// Sets whose test users are the training users of the same index.
    pub fn new(
        seen_train: Preferences<'a>,
        seen_test: Preferences<'a>,
        unseen_train: Preferences<'a>,
        unseen_test: Preferences<'a>,
    ) -> Result<Self> {
        let seen_map = (0..seen_test.n_users()).collect();
        let unseen_map = (0..unseen_test.n_users()).collect();
        Self::with_user_maps(
            seen_train,
            seen_test,
            seen_map,
            unseen_train,
            unseen_test,
            unseen_map,
        )
    }

    /// Sets where user j of `seen_test` is user `seen_test_users[j]` of `seen_train`, and
    /// likewise for the unseen sets (users matched by id, say).
    pub fn with_user_maps(
        seen_train: Preferences<'a>,
        seen_test: Preferences<'a>,
        seen_test_users: Vec<usize>,
        unseen_train: Preferences<'a>,
        unseen_test: Preferences<'a>,
        unseen_test_users: Vec<usize>,
    ) -> Result<Self> {
        let f = seen_train.n_features();
        for (name, set) in [
            ("seen_test", &seen_test),
            ("unseen_train", &unseen_train),
            ("unseen_test", &unseen_test),
        ] {
            if set.n_features() != f {
                return Err(LoreError::Shape(format!(
                    "{name} has F = {} features but seen_train has F = {f}",
                    set.n_features()
                )));
            }
        }
        for (name, map, test, train) in [
            ("seen", &seen_test_users, &seen_test, &seen_train),
            ("unseen", &unseen_test_users, &unseen_test, &unseen_train),
        ] {
            if map.len() != test.n_users() {
                return Err(LoreError::Shape(format!(
                    "{} {name} test users mapped, but {name}_test has {}",
                    map.len(),
                    test.n_users()
                )));
            }
            if let Some(&u) = map.iter().find(|&&u| u >= train.n_users()) {
                return Err(LoreError::UserOutOfRange {
                    index: u as u64,
                    n_users: train.n_users(),
                });
            }
        }
        Ok(Self {
            seen_train,
            seen_test,
            seen_test_users,
            unseen_train,
            unseen_test,
            unseen_test_users,
        })
    }

    /// Feature dimension F.
    pub fn n_features(&self) -> usize {
        self.seen_train.n_features()
    }

    /// The seen users' training rows.
    pub fn seen_train(&self) -> &Preferences<'a> {
        &self.seen_train
    }

    /// The unseen users' few-shot rows.
    pub fn unseen_train(&self) -> &Preferences<'a> {
        &self.unseen_train
    }

    /// The seen users' held-out rows.
    pub fn seen_test(&self) -> &Preferences<'a> {
        &self.seen_test
    }

    /// The unseen users' held-out rows.
    pub fn unseen_test(&self) -> &Preferences<'a> {
        &self.unseen_test
    }
}

/// The four sets of a split gathered from rows in memory (widened to f32), for callers that
/// hold all rows at once (a simulation, say) rather than four files.
#[derive(Debug, Clone, PartialEq)]
pub struct OwnedSets {
    n_features: usize,
    /// Per set: rows [P_s, F] and the set's user of each row.
    sets: [(Vec<f32>, Vec<u32>); 4],
}

impl OwnedSets {
    /// Gathers the rows of each set of `split` from `rows` ([P, F], indexed by the split).
    pub fn gather(rows: FeatureRows<'_>, n_features: usize, split: &Split) -> Result<Self> {
        if n_features == 0 || !rows.len().is_multiple_of(n_features) {
            return Err(LoreError::Shape(format!(
                "{} feature values do not form rows of {n_features}",
                rows.len()
            )));
        }
        let n_rows = rows.len() / n_features;
        let mut scratch = Vec::new();
        let gather = |set: &SplitSet, scratch: &mut Vec<f32>| -> Result<(Vec<f32>, Vec<u32>)> {
            let mut out = Vec::with_capacity(set.rows.len() * n_features);
            for &r in &set.rows {
                if r >= n_rows {
                    return Err(LoreError::Shape(format!(
                        "the split names row {r}, but there are {n_rows} rows"
                    )));
                }
                out.extend_from_slice(
                    rows.slice_f32(r * n_features..(r + 1) * n_features, scratch),
                );
            }
            Ok((out, set.users.clone()))
        };
        Ok(Self {
            n_features,
            sets: [
                gather(&split.seen_train, &mut scratch)?,
                gather(&split.seen_test, &mut scratch)?,
                gather(&split.unseen_train, &mut scratch)?,
                gather(&split.unseen_test, &mut scratch)?,
            ],
        })
    }

    /// Views of the four sets (test users are the training users of the same index).
    pub fn sets(&self) -> Result<ExperimentSets<'_>> {
        let view = |i: usize| {
            let (rows, users) = &self.sets[i];
            Preferences::from_sorted_users(FeatureRows::F32(rows), self.n_features, users)
        };
        ExperimentSets::new(view(0)?, view(1)?, view(2)?, view(3)?)
    }
}

/// Which optimization a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Fitting the basis on the seen users.
    Fit,
    /// Personalizing the unseen users.
    Personalize,
}

/// One optimizer step of an experiment, for progress bars.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Progress {
    /// Strength of the pull toward v_ref of the run.
    pub alpha: f64,
    /// Rank K of the run.
    pub rank: usize,
    /// The run's seed (sweep) or the fit's seed (shots).
    pub seed: u64,
    /// The few-shot count and trial (shots curve only).
    pub shots: Option<(usize, usize)>,
    /// The optimization the step belongs to.
    pub phase: Phase,
    /// 0-based step within the phase.
    pub step: usize,
    /// The loss before the step (the fit's NLL, or the personalization loss).
    pub loss: f64,
}

/// Hyperparameters of a rank sweep (unchecked).
#[derive(Debug, Clone, PartialEq)]
pub struct SweepParams {
    /// The fit's method and hyperparameters; its rank, alpha and seed are set by each run.
    pub fit: FitParams,
    /// Personalization's hyperparameters; its seed is set by each run.
    pub personalize: PersonalizeParams,
    /// Ranks K to run (0 = the reference head).
    pub ranks: Vec<usize>,
    /// Strengths of the pull toward v_ref.
    pub alphas: Vec<f64>,
    /// Seeds of the random starts; several give the mean and std over seeds.
    pub seeds: Vec<u64>,
}

impl SweepParams {
    /// The reference's `run`: ranks 0, 1, 2, 4, alpha 0, seed 0; the fit with lr 0.5 for 1000
    /// iterations, personalization with lr 0.1 for 500.
    pub fn reference(method: Method) -> Self {
        Self {
            fit: FitParams::new(method, 1)
                .learning_rate(0.5)
                .iterations(1000),
            personalize: PersonalizeParams::default(),
            ranks: vec![0, 1, 2, 4],
            alphas: vec![0.0],
            seeds: vec![0],
        }
    }

    /// Validates every value (each run's fit and personalization parameters included); the
    /// ranks are sorted.
    pub fn check(&self) -> Result<CheckedSweepParams> {
        let ranks = check_ranks(&self.ranks)?;
        check_list("alphas", &self.alphas)?;
        check_list("seeds", &self.seeds)?;
        let mut seeds = self.seeds.clone();
        seeds.sort_unstable();
        if seeds.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("seeds", "a seed appears twice".into()));
        }
        for &alpha in &self.alphas {
            with_rank(&self.fit, 1).alpha(alpha).check()?;
        }
        self.personalize.check()?;
        Ok(CheckedSweepParams(Self {
            ranks,
            ..self.clone()
        }))
    }
}

/// Validated sweep hyperparameters (ranks sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedSweepParams(SweepParams);

impl CheckedSweepParams {
    /// The parameters (ranks sorted ascending).
    pub fn params(&self) -> &SweepParams {
        &self.0
    }

    /// Checks that the sweep can run on `sets` with `v_ref` (its size; alpha > 0 and K = 0
    /// alone need one), as [`sweep`] does before any work.
    pub fn check_inputs(&self, sets: &ExperimentSets, v_ref: Option<&[f32]>) -> Result<()> {
        check_reference(sets, v_ref, &self.0.ranks, &self.0.alphas)
    }

    /// Optimizer steps [`sweep_bt`] runs: the sweep's, plus the BT fits unless the sweep has
    /// the row (alpha 0, K = 1) anyway.
    pub fn total_steps_bt(&self) -> usize {
        let p = &self.0;
        let reused = p.alphas.contains(&0.0) && p.ranks.contains(&1);
        let extra = if reused {
            0
        } else {
            p.fit.iterations * p.seeds.len()
        };
        self.total_steps() + extra
    }

    /// Optimizer steps the sweep runs (for a progress bar's length).
    pub fn total_steps(&self) -> usize {
        let p = &self.0;
        let per_alpha: usize = p
            .ranks
            .iter()
            .map(|&k| match k {
                0 => 0,
                1 => p.fit.iterations,
                _ => p.fit.iterations + p.personalize.iterations,
            })
            .sum();
        per_alpha * p.alphas.len() * p.seeds.len()
    }
}

/// An accuracy summarized over users and over runs (seeds or trials).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    /// Mean over runs of the mean over users.
    pub mean: f64,
    /// Mean over runs of the standard deviation over users.
    pub std: f64,
    /// Standard deviation over runs of the mean over users (0 for one run).
    pub run_std: f64,
    /// Each run's mean over users.
    pub runs: Vec<f64>,
}

impl Summary {
    /// Summarizes one evaluation per run.
    pub fn from_runs(runs: &[Evaluation]) -> Self {
        let means: Vec<f64> = runs.iter().map(|e| e.mean).collect();
        let stds: Vec<f64> = runs.iter().map(|e| e.std).collect();
        let (mean, run_std) = mean_and_std(&means);
        let (std, _) = mean_and_std(&stds);
        Self {
            mean,
            std,
            run_std,
            runs: means,
        }
    }
}

/// The four accuracies of one (alpha, rank) over the seeds.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepRow {
    /// Strength of the pull toward v_ref.
    pub alpha: f64,
    /// Rank K (0 = the reference head).
    pub rank: usize,
    /// Seen users on their training rows.
    pub seen_train: Summary,
    /// Seen users on their held-out rows.
    pub seen_test: Summary,
    /// Unseen users on their few-shot rows.
    pub unseen_train: Summary,
    /// Unseen users on their held-out rows.
    pub unseen_test: Summary,
    /// Basis columns kept after pruning, per seed (K itself unless the method prunes; 1 for
    /// K = 0).
    pub kept_ranks: Vec<usize>,
}

/// The rows of a sweep, alpha-major then by rank.
#[derive(Debug, Clone, PartialEq)]
pub struct SweepResults {
    /// One row per (alpha, rank).
    pub rows: Vec<SweepRow>,
    /// True when K = 0 was asked for but no v_ref was given, so it was left out.
    pub reference_skipped: bool,
}

/// The four evaluations of one run, and what it fitted.
#[derive(Debug, Clone, PartialEq)]
pub struct RankRun {
    /// Seen users on their training rows.
    pub seen_train: Evaluation,
    /// Seen users on their held-out rows.
    pub seen_test: Evaluation,
    /// Unseen users on their few-shot rows.
    pub unseen_train: Evaluation,
    /// Unseen users on their held-out rows.
    pub unseen_test: Evaluation,
    /// The basis used (v_ref as one column for K = 0).
    pub basis: RewardBasis,
    /// The seen users' weights (of `seen_train`'s users).
    pub seen_users: UserWeights,
    /// The unseen users' weights (of `unseen_train`'s users).
    pub unseen_users: UserWeights,
}

/// Runs the sweep: for each alpha, rank and seed one [`run_rank`], summarized per (alpha,
/// rank). `v_ref` ([F]) is needed for K = 0 (skipped without it) and for alpha > 0.
pub fn sweep(
    sets: &ExperimentSets,
    v_ref: Option<&[f32]>,
    params: &CheckedSweepParams,
    mut observer: impl FnMut(&Progress),
) -> Result<SweepResults> {
    let p = params.params();
    params.check_inputs(sets, v_ref)?;
    let mut results = SweepResults {
        rows: Vec::new(),
        reference_skipped: false,
    };
    let mut reference_row: Option<SweepRow> = None;
    for &alpha in &p.alphas {
        for &rank in &p.ranks {
            if rank == 0 {
                let Some(v_ref) = v_ref else {
                    results.reference_skipped = true;
                    continue;
                };
                // The reference head does not depend on alpha or the seed: run it once, and
                // report it for every seed.
                let row = match &reference_row {
                    Some(row) => row.clone(),
                    None => {
                        let run = reference_run(sets, v_ref, p.fit.logit_scale)?;
                        let runs = vec![run; p.seeds.len()];
                        let row = summarize(alpha, 0, &runs, vec![1; p.seeds.len()]);
                        reference_row = Some(row.clone());
                        row
                    }
                };
                results.rows.push(SweepRow { alpha, ..row });
                continue;
            }
            let mut runs = Vec::with_capacity(p.seeds.len());
            let mut kept = Vec::with_capacity(p.seeds.len());
            for &seed in &p.seeds {
                let run = sweep_run(sets, p, (rank, alpha, seed), v_ref, &mut observer)?;
                kept.push(run.basis.rank());
                runs.push(run);
            }
            results.rows.push(summarize(alpha, rank, &runs, kept));
        }
    }
    Ok(results)
}

/// One (rank, alpha, seed) run of a sweep, reporting its steps as [`Progress`].
fn sweep_run(
    sets: &ExperimentSets,
    p: &SweepParams,
    (rank, alpha, seed): (usize, f64, u64),
    v_ref: Option<&[f32]>,
    observer: &mut impl FnMut(&Progress),
) -> Result<RankRun> {
    let fit_params = with_rank(&p.fit, rank).alpha(alpha).seed(seed).check()?;
    let personalize_params = p.personalize.clone().seed(seed).check()?;
    run_rank(
        sets,
        v_ref,
        &fit_params,
        &personalize_params,
        |phase, step, loss| {
            observer(&Progress {
                alpha,
                rank,
                seed,
                shots: None,
                phase,
                step,
                loss,
            })
        },
    )
}

/// [`sweep`] anchored on one shared Bradley-Terry reward: per seed, K = 1 with alpha 0 is
/// fitted first (it is also the row (alpha 0, K = 1) when asked for), and its direction is
/// v_ref of that seed's other runs. K = 0 is skipped (`reference_skipped` when asked for).
pub fn sweep_bt(
    sets: &ExperimentSets,
    params: &CheckedSweepParams,
    mut observer: impl FnMut(&Progress),
) -> Result<SweepResults> {
    let p = params.params();
    if p.ranks.iter().all(|&k| k == 0) {
        return Err(invalid(
            "ranks",
            "a Bradley-Terry anchor is not a reference head: ask for a rank K >= 1".into(),
        ));
    }
    let mut one_run = |rank: usize, alpha: f64, seed: u64, v_ref: Option<&[f32]>| {
        sweep_run(sets, p, (rank, alpha, seed), v_ref, &mut observer)
    };
    let bt_runs = p
        .seeds
        .iter()
        .map(|&seed| one_run(1, 0.0, seed, None))
        .collect::<Result<Vec<RankRun>>>()?;
    let mut results = SweepResults {
        rows: Vec::new(),
        reference_skipped: p.ranks.contains(&0),
    };
    for &alpha in &p.alphas {
        for &rank in p.ranks.iter().filter(|&&k| k > 0) {
            let mut runs = Vec::with_capacity(p.seeds.len());
            for (bt, &seed) in bt_runs.iter().zip(&p.seeds) {
                if alpha == 0.0 && rank == 1 {
                    runs.push(bt.clone());
                } else {
                    runs.push(one_run(rank, alpha, seed, Some(bt.basis.values()))?);
                }
            }
            let kept = runs.iter().map(|r| r.basis.rank()).collect();
            results.rows.push(summarize(alpha, rank, &runs, kept));
        }
    }
    Ok(results)
}

/// One run of rank K >= 1: fits on the seen users, personalizes the unseen users (K >= 2; with
/// K = 1, or when pruning leaves one column, unseen users get w = [1]) and evaluates the four
/// sets. `progress` gets (phase, step, loss) for every optimizer step.
pub fn run_rank(
    sets: &ExperimentSets,
    v_ref: Option<&[f32]>,
    fit_params: &CheckedFitParams,
    personalize_params: &CheckedPersonalizeParams,
    mut progress: impl FnMut(Phase, usize, f64),
) -> Result<RankRun> {
    let model = fit(fit_params, &sets.seen_train, v_ref, None, |step| {
        progress(Phase::Fit, step.step, step.nll);
        ControlFlow::Continue(())
    })?;
    let unseen_users = if fit_params.rank() >= 2 {
        personalize(
            personalize_params,
            &model.basis,
            &sets.unseen_train,
            None,
            |step| {
                progress(Phase::Personalize, step.step, step.loss);
                ControlFlow::Continue(())
            },
        )?
    } else {
        UserWeights::single_column(sets.unseen_train.n_users())
    };
    evaluate_run(sets, model.basis, model.users, unseen_users)
}

/// K = 0: the reference head with w = [1] for every user.
pub fn reference_run(sets: &ExperimentSets, v_ref: &[f32], logit_scale: f64) -> Result<RankRun> {
    let basis = RewardBasis::reference_head(v_ref, logit_scale)?;
    let seen = UserWeights::single_column(sets.seen_train.n_users());
    let unseen = UserWeights::single_column(sets.unseen_train.n_users());
    evaluate_run(sets, basis, seen, unseen)
}

pub(crate) fn evaluate_run(
    sets: &ExperimentSets,
    basis: RewardBasis,
    seen_users: UserWeights,
    unseen_users: UserWeights,
) -> Result<RankRun> {
    let seen_test_users = select_users(&seen_users, &sets.seen_test_users)?;
    let unseen_test_users = select_users(&unseen_users, &sets.unseen_test_users)?;
    Ok(RankRun {
        seen_train: evaluate(&basis, &seen_users, &sets.seen_train)?,
        seen_test: evaluate(&basis, &seen_test_users, &sets.seen_test)?,
        unseen_train: evaluate(&basis, &unseen_users, &sets.unseen_train)?,
        unseen_test: evaluate(&basis, &unseen_test_users, &sets.unseen_test)?,
        basis,
        seen_users,
        unseen_users,
    })
}

pub(crate) fn summarize(
    alpha: f64,
    rank: usize,
    runs: &[RankRun],
    kept_ranks: Vec<usize>,
) -> SweepRow {
    let summary = |pick: fn(&RankRun) -> &Evaluation| {
        let evaluations: Vec<Evaluation> = runs.iter().map(|r| pick(r).clone()).collect();
        Summary::from_runs(&evaluations)
    };
    SweepRow {
        alpha,
        rank,
        seen_train: summary(|r| &r.seen_train),
        seen_test: summary(|r| &r.seen_test),
        unseen_train: summary(|r| &r.unseen_train),
        unseen_test: summary(|r| &r.unseen_test),
        kept_ranks,
    }
}

/// The weights of users `map[0]`, `map[1]`, ... of `users`.
pub fn select_users(users: &UserWeights, map: &[usize]) -> Result<UserWeights> {
    let k = users.rank();
    let mut logits = Vec::with_capacity(map.len() * k);
    let mut weights = Vec::with_capacity(map.len() * k);
    for &u in map {
        if u >= users.n_users() {
            return Err(LoreError::UserOutOfRange {
                index: u as u64,
                n_users: users.n_users(),
            });
        }
        logits.extend_from_slice(&users.logits()[u * k..(u + 1) * k]);
        weights.extend_from_slice(users.user(u));
    }
    UserWeights::from_parts(map.len(), k, logits, weights)
}

/// Hyperparameters of a few-shot curve (unchecked).
#[derive(Debug, Clone, PartialEq)]
pub struct ShotsParams {
    /// The fit's method and hyperparameters (alpha and seed included); its rank is set per K.
    pub fit: FitParams,
    /// Personalization's hyperparameters; its seed is set per trial.
    pub personalize: PersonalizeParams,
    /// Ranks K, one curve each (0 = the reference head, 1 = one shared reward: flat curves).
    pub ranks: Vec<usize>,
    /// Few-shot counts: each unseen user's pairs drawn from their few-shot rows (all of them
    /// when they have fewer).
    pub shots: Vec<usize>,
    /// Draws of the few-shot rows per count.
    pub trials: usize,
}

impl ShotsParams {
    /// The reference's few-shot study: ranks 1 and 4, shots 5, 10, ..., 50, 5 trials; the fit
    /// with lr 0.5 for 1000 iterations, personalization with lr 0.1 for 500.
    pub fn reference(method: Method) -> Self {
        Self {
            fit: FitParams::new(method, 1)
                .learning_rate(0.5)
                .iterations(1000),
            personalize: PersonalizeParams::default(),
            ranks: vec![1, 4],
            shots: (1..=10).map(|i| 5 * i).collect(),
            trials: 5,
        }
    }

    /// Validates every value; ranks and shots are sorted.
    pub fn check(&self) -> Result<CheckedShotsParams> {
        let ranks = check_ranks(&self.ranks)?;
        check_list("shots", &self.shots)?;
        let mut shots = self.shots.clone();
        shots.sort_unstable();
        if shots[0] == 0 {
            return Err(invalid("shots", "0 (each count must be at least 1)".into()));
        }
        if shots.windows(2).any(|w| w[0] == w[1]) {
            return Err(invalid("shots", "a count appears twice".into()));
        }
        if self.trials == 0 {
            return Err(invalid("trials", "0 (must be at least 1)".into()));
        }
        with_rank(&self.fit, 1).check()?;
        self.personalize.check()?;
        Ok(CheckedShotsParams(Self {
            ranks,
            shots,
            ..self.clone()
        }))
    }
}

/// Validated few-shot curve hyperparameters (ranks and shots sorted).
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedShotsParams(ShotsParams);

impl CheckedShotsParams {
    /// The parameters (ranks and shots sorted ascending).
    pub fn params(&self) -> &ShotsParams {
        &self.0
    }

    /// Checks that the curve can run on `sets` with `v_ref`, as [`shots_curve`] does before
    /// any work.
    pub fn check_inputs(&self, sets: &ExperimentSets, v_ref: Option<&[f32]>) -> Result<()> {
        check_reference(sets, v_ref, &self.0.ranks, &[self.0.fit.alpha])
    }

    /// Optimizer steps the curve runs (for a progress bar's length).
    pub fn total_steps(&self) -> usize {
        let p = &self.0;
        p.ranks
            .iter()
            .map(|&k| match k {
                0 => 0,
                1 => p.fit.iterations,
                _ => p.fit.iterations + p.personalize.iterations * p.shots.len() * p.trials,
            })
            .sum()
    }
}

/// Accuracy of the unseen users for one (rank, shots) over the trials.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotsRow {
    /// Rank K (0 = the reference head).
    pub rank: usize,
    /// Few-shot pairs asked for per unseen user.
    pub shots: usize,
    /// Mean number of few-shot pairs per unseen user actually used (less than `shots` for
    /// users with fewer few-shot rows).
    pub mean_shots: f64,
    /// On the sampled few-shot rows.
    pub unseen_train: Summary,
    /// On the unseen users' held-out rows.
    pub unseen_test: Summary,
}

/// The rows of a few-shot curve, rank-major then by shots.
#[derive(Debug, Clone, PartialEq)]
pub struct ShotsResults {
    /// One row per (rank, shots).
    pub rows: Vec<ShotsRow>,
    /// True when K = 0 was asked for but no v_ref was given, so it was left out.
    pub reference_skipped: bool,
}

/// The few-shot curve: for each rank, one fit on the seen users (seed and alpha of
/// `params.fit`), then for each shots count and trial a fresh draw of that many few-shot rows
/// per unseen user, personalization on them, and evaluation on the unseen test rows.
pub fn shots_curve(
    sets: &ExperimentSets,
    v_ref: Option<&[f32]>,
    params: &CheckedShotsParams,
    mut observer: impl FnMut(&Progress),
) -> Result<ShotsResults> {
    let p = params.params();
    params.check_inputs(sets, v_ref)?;
    let mut results = ShotsResults {
        rows: Vec::new(),
        reference_skipped: false,
    };
    let (alpha, seed) = (p.fit.alpha, p.fit.seed);
    for &rank in &p.ranks {
        let (basis, fitted) = match (rank, v_ref) {
            (0, None) => {
                results.reference_skipped = true;
                continue;
            }
            (0, Some(v_ref)) => (
                RewardBasis::reference_head(v_ref, p.fit.logit_scale)?,
                false,
            ),
            _ => {
                let fit_params = with_rank(&p.fit, rank).check()?;
                let model = fit(&fit_params, &sets.seen_train, v_ref, None, |step| {
                    observer(&Progress {
                        alpha,
                        rank,
                        seed,
                        shots: None,
                        phase: Phase::Fit,
                        step: step.step,
                        loss: step.nll,
                    });
                    ControlFlow::Continue(())
                })?;
                (model.basis, rank >= 2)
            }
        };
        for &shots in &p.shots {
            let mut train_runs = Vec::with_capacity(p.trials);
            let mut test_runs = Vec::with_capacity(p.trials);
            let mut used = 0usize;
            for trial in 0..p.trials {
                let draw = draw_shots(&sets.unseen_train, shots, seed, trial)?;
                let sample = draw.view()?;
                used += sample.n_rows();
                let users = if fitted {
                    let params = p
                        .personalize
                        .clone()
                        .seed(seed.wrapping_add(trial as u64))
                        .check()?;
                    personalize(&params, &basis, &sample, None, |step| {
                        observer(&Progress {
                            alpha,
                            rank,
                            seed,
                            shots: Some((shots, trial)),
                            phase: Phase::Personalize,
                            step: step.step,
                            loss: step.loss,
                        });
                        ControlFlow::Continue(())
                    })?
                } else {
                    UserWeights::single_column(sample.n_users())
                };
                let test_users = select_users(&users, &sets.unseen_test_users)?;
                train_runs.push(evaluate(&basis, &users, &sample)?);
                test_runs.push(evaluate(&basis, &test_users, &sets.unseen_test)?);
            }
            results.rows.push(ShotsRow {
                rank,
                shots,
                mean_shots: used as f64 / (p.trials * sets.unseen_train.n_users()) as f64,
                unseen_train: Summary::from_runs(&train_runs),
                unseen_test: Summary::from_runs(&test_runs),
            });
        }
    }
    Ok(results)
}

/// Few-shot rows drawn for a trial, widened to f32 and grouped by user.
/// Rows copied out of a larger set, grouped by user (every user with at least one row).
pub(crate) struct OwnedRows {
    pub rows: Vec<f32>,
    pub n_features: usize,
    pub offsets: Vec<usize>,
}

impl OwnedRows {
    /// No rows yet.
    pub fn new(n_features: usize) -> Self {
        Self {
            rows: Vec::new(),
            n_features,
            offsets: vec![0],
        }
    }

    /// Appends one user with `rows` [n x F] (n >= 1).
    pub fn push_user(&mut self, rows: impl IntoIterator<Item = f32>) {
        self.rows.extend(rows);
        self.offsets.push(self.rows.len() / self.n_features);
    }

    /// Number of users.
    pub fn n_users(&self) -> usize {
        self.offsets.len() - 1
    }

    /// A view of the rows (values were checked where they came from).
    pub fn view(&self) -> Result<Preferences<'_>> {
        Preferences::with_checked_values(
            FeatureRows::F32(&self.rows),
            self.n_features,
            self.offsets.clone(),
        )
    }
}

/// min(shots, n_u) rows of each user u of `pool`, drawn without replacement from the ChaCha8
/// stream (shots, trial) of `seed`, kept in their original order.
fn draw_shots(pool: &Preferences, shots: usize, seed: u64, trial: usize) -> Result<OwnedRows> {
    let f = pool.n_features();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(((shots as u64) << 32) | trial as u64);
    let mut rows = Vec::new();
    let mut offsets = vec![0];
    let mut scratch = Vec::new();
    for u in 0..pool.n_users() {
        let range = pool.user_rows(u);
        let n = range.len();
        let mut picked = sample(&mut rng, n, shots.min(n)).into_vec();
        picked.sort_unstable();
        for i in picked {
            let row = range.start + i;
            rows.extend_from_slice(pool.rows_f32(row..row + 1, &mut scratch));
        }
        offsets.push(rows.len() / f);
    }
    Ok(OwnedRows {
        rows,
        n_features: f,
        offsets,
    })
}

/// Checks v_ref's size, and that alpha > 0 comes with a v_ref and that something can run.
fn check_reference(
    sets: &ExperimentSets,
    v_ref: Option<&[f32]>,
    ranks: &[usize],
    alphas: &[f64],
) -> Result<()> {
    match v_ref {
        Some(v) if v.len() != sets.n_features() => Err(LoreError::FeatureMismatch {
            model: v.len(),
            data: sets.n_features(),
        }),
        Some(v) if v.iter().any(|x| !x.is_finite()) => {
            Err(invalid("v_ref", "contains NaN or infinite values".into()))
        }
        None if ranks.iter().all(|&k| k == 0) => Err(invalid(
            "ranks",
            "only K = 0 was asked for, and the reference head needs v_ref".into(),
        )),
        None if alphas.iter().any(|&a| a > 0.0) && ranks.iter().any(|&k| k > 0) => Err(invalid(
            "v_ref",
            "alpha > 0 pulls the basis toward a reference direction: give v_ref".into(),
        )),
        _ => Ok(()),
    }
}

/// `fit` with rank K.
fn with_rank(fit: &FitParams, rank: usize) -> FitParams {
    FitParams {
        rank,
        ..fit.clone()
    }
}

/// Sorted ranks; refuses an empty list and duplicates.
fn check_ranks(ranks: &[usize]) -> Result<Vec<usize>> {
    check_list("ranks", ranks)?;
    let mut sorted = ranks.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid("ranks", format!("{} appears twice", w[0])));
    }
    Ok(sorted)
}

fn check_list<T>(name: &'static str, values: &[T]) -> Result<()> {
    if values.is_empty() {
        return Err(invalid(name, "the list is empty".into()));
    }
    Ok(())
}

fn invalid(name: &'static str, reason: String) -> LoreError {
    LoreError::InvalidParameter { name, reason }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::simulate::{simulate, synthetic_responses, PopulationParams, SyntheticParams};

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
}
