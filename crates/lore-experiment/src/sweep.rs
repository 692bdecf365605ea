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

use crate::sets::ExperimentSets;
use lore_core::personalize;
use lore_core::{evaluate, mean_and_std, Evaluation};
use lore_core::{fit, fit_bradley_terry, FitOptions, PersonalizeOptions};
use lore_core::{CheckedFitParams, CheckedPersonalizeParams, FitParams, Method, PersonalizeParams};
use lore_core::{LoreError, Result};
use lore_core::{RewardBasis, UserWeights};

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

/// The fit's Adam learning rate in the paper's experiments (the reference's `run`), where
/// [`FitParams::new`] keeps the reference trainers' own default.
pub const PAPER_LEARNING_RATE: f64 = 0.5;

impl SweepParams {
    /// The reference's `run`: ranks 0, 1, 2, 4, alpha 0, seed 0; the fit with
    /// [`PAPER_LEARNING_RATE`] for the default iterations, personalization's defaults.
    pub fn reference(method: Method) -> Self {
        Self {
            fit: FitParams::new(method, 1).learning_rate(PAPER_LEARNING_RATE),
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
        crate::memory::check_ranks_fit(sets, &self.0.ranks)?;
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
            p.fit.iterations.saturating_mul(p.seeds.len())
        };
        self.total_steps().saturating_add(extra)
    }

    /// Optimizer steps the sweep runs (for a progress bar's length).
    pub fn total_steps(&self) -> usize {
        let p = &self.0;
        // Saturating: a count past usize::MAX only lengthens a progress bar.
        let per_alpha = p
            .ranks
            .iter()
            .map(|&k| match k {
                0 => 0,
                1 => p.fit.iterations,
                _ => p.fit.iterations.saturating_add(p.personalize.iterations),
            })
            .fold(0usize, usize::saturating_add);
        per_alpha
            .saturating_mul(p.alphas.len())
            .saturating_mul(p.seeds.len())
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
/// rank). `v_ref` (\[F\]) is needed for K = 0 (skipped without it) and for alpha > 0.
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
    let run = run_rank(
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
    );
    run.map_err(|e| name_the_run(e, rank, alpha, seed))
}

/// A divergence names its run (K, alpha, seed), so that a sweep says which cell to change.
fn name_the_run(error: LoreError, rank: usize, alpha: f64, seed: u64) -> LoreError {
    match error {
        LoreError::Diverged {
            step,
            iterations,
            what,
            hint,
        } => LoreError::Diverged {
            step,
            iterations,
            what: format!("in the run K = {rank}, alpha = {alpha}, seed = {seed}, {what}"),
            hint,
        },
        other => other,
    }
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
    crate::memory::check_ranks_fit(sets, &p.ranks)?;
    if p.ranks.iter().all(|&k| k == 0) {
        return Err(invalid(
            "ranks",
            "a Bradley-Terry anchor is not a reference head: ask for a rank K >= 1".into(),
        ));
    }
    // Per seed, the anchor: K = 1 with alpha 0 and that seed, its direction v_ref of the others.
    let bt_runs = p
        .seeds
        .iter()
        .map(|&seed| {
            let params = p.fit.bradley_terry().seed(seed).check()?;
            let (direction, bt) = fit_bradley_terry(&params, &sets.seen_train, None, |step| {
                observer(&Progress {
                    alpha: 0.0,
                    rank: 1,
                    seed,
                    shots: None,
                    phase: Phase::Fit,
                    step: step.step,
                    loss: step.nll,
                });
                ControlFlow::Continue(())
            })
            .map_err(|e| name_the_run(e, 1, 0.0, seed))?;
            let unseen = UserWeights::single_column(sets.unseen_train.n_users());
            let run = evaluate_run(sets, bt.model.basis, bt.model.users, unseen)?;
            Ok((direction, run))
        })
        .collect::<Result<Vec<(Vec<f32>, RankRun)>>>()?;
    let mut one_run = |rank: usize, alpha: f64, seed: u64, v_ref: Option<&[f32]>| {
        sweep_run(sets, p, (rank, alpha, seed), v_ref, &mut observer)
    };
    let mut results = SweepResults {
        rows: Vec::new(),
        reference_skipped: p.ranks.contains(&0),
    };
    for &alpha in &p.alphas {
        for &rank in p.ranks.iter().filter(|&&k| k > 0) {
            let mut runs = Vec::with_capacity(p.seeds.len());
            for ((direction, bt), &seed) in bt_runs.iter().zip(&p.seeds) {
                if alpha == 0.0 && rank == 1 {
                    runs.push(bt.clone());
                } else {
                    runs.push(one_run(rank, alpha, seed, Some(direction))?);
                }
            }
            let kept = runs.iter().map(|r| r.basis.rank()).collect();
            results.rows.push(summarize(alpha, rank, &runs, kept));
        }
    }
    Ok(results)
}

/// One run of rank K >= 1: fits on the seen users, personalizes the unseen users (K >= 2; with
/// K = 1, or when pruning leaves one column, unseen users get w = \[1\]) and evaluates the four
/// sets. `progress` gets (phase, step, loss) for every optimizer step.
pub fn run_rank(
    sets: &ExperimentSets,
    v_ref: Option<&[f32]>,
    fit_params: &CheckedFitParams,
    personalize_params: &CheckedPersonalizeParams,
    mut progress: impl FnMut(Phase, usize, f64),
) -> Result<RankRun> {
    let options = FitOptions {
        v_ref,
        ..FitOptions::default()
    };
    let model = fit(fit_params, &sets.seen_train, &options, |step| {
        progress(Phase::Fit, step.step, step.nll);
        ControlFlow::Continue(())
    })?
    .model;
    let unseen_users = if fit_params.rank() >= 2 {
        personalize(
            personalize_params,
            &model.basis,
            &sets.unseen_train,
            &PersonalizeOptions::default(),
            |step| {
                progress(Phase::Personalize, step.step, step.loss);
                ControlFlow::Continue(())
            },
        )?
        .users
    } else {
        UserWeights::single_column(sets.unseen_train.n_users())
    };
    evaluate_run(sets, model.basis, model.users, unseen_users)
}

/// K = 0: the reference head with w = \[1\] for every user.
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

/// Checks v_ref's size, and that alpha > 0 comes with a v_ref and that something can run.
pub(crate) fn check_reference(
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
pub(crate) fn with_rank(fit: &FitParams, rank: usize) -> FitParams {
    FitParams {
        rank,
        ..fit.clone()
    }
}

/// Sorted ranks; refuses an empty list and duplicates.
pub(crate) fn check_ranks(ranks: &[usize]) -> Result<Vec<usize>> {
    check_list("ranks", ranks)?;
    let mut sorted = ranks.to_vec();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(invalid("ranks", format!("{} appears twice", w[0])));
    }
    Ok(sorted)
}

pub(crate) fn check_list<T>(name: &'static str, values: &[T]) -> Result<()> {
    if values.is_empty() {
        return Err(invalid(name, "the list is empty".into()));
    }
    Ok(())
}

pub(crate) fn invalid(name: &'static str, reason: String) -> LoreError {
    LoreError::InvalidParameter { name, reason }
}
