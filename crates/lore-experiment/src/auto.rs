//! Choosing a configuration honestly: rank, pull toward the Bradley-Terry direction, fit
//! length, few-shot prior and few-shot length, all from the seen users' training rows.
//!
//! The seen users are split once (seeded) into *inner* users and *held-out* users:
//! - each inner user's training rows are split into fit rows and validation rows; every
//!   candidate basis is fitted on the fit rows with early stopping on the validation rows;
//! - the held-out users stand in for new users: each is personalized from as many of its rows
//!   as an unseen user has few-shot rows (drawn from the unseen users' counts), and scored on
//!   the rest. This chooses the prior strength and the few-shot iterations of each candidate,
//!   and ranks the candidates.
//!
//! Among the candidates, the simplest one (lowest rank; for a rank, the strongest pull toward
//! the BT direction) whose held-out accuracy is within one paired standard error of the best is
//! chosen, so that noise alone never buys a more complex model. Then the chosen configuration
//! is fitted on all seen training rows, the unseen users are personalized from their few-shot
//! rows, and the four sets are evaluated. The unseen users' test rows are read only by that
//! final evaluation; the unseen few-shot rows only for their count, and for personalization.

use std::ops::ControlFlow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sets::{ExperimentSets, OwnedRows};
use crate::sweep::{evaluate_run, summarize, Phase, RankRun, SweepResults, PAPER_LEARNING_RATE};
use lore_core::{
    fit, fit_bradley_terry, hold_out_rows, mean_and_std, personalize, pick_rows, shuffled_rows,
    EarlyStopping, FitOptions, FitParams, HeldOutRows, LoreError, Method, PersonalizeOptions,
    PersonalizeParams, Result, RewardBasis, UserWeights, Validation,
};

/// Hyperparameters of the search (unchecked).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoParams {
    /// The fit's method, learning rate, logit scale and pruning; its iterations are the most
    /// any fit may run (early stopping chooses how many). Rank, alpha and seed are set here.
    pub fit: FitParams,
    /// Personalization's learning rate; its iterations are the most the search tries.
    pub personalize: PersonalizeParams,
    /// Candidate ranks (1 = one shared Bradley-Terry reward).
    pub ranks: Vec<usize>,
    /// Strengths of the pull toward the BT direction, in units of [`alpha_unit`] (0 = none).
    pub alpha_scales: Vec<f64>,
    /// Candidate strengths of the few-shot prior toward the population's mean weights.
    pub prior_strengths: Vec<f64>,
    /// Share of the seen users held out to simulate new users, in (0, 1).
    pub holdout_users: f64,
    /// Share of the other seen users' rows held out to stop their fits early, in (0, 1).
    pub holdout_rows: f64,
    /// Early stopping of the fits (and the evaluation period of personalization).
    pub stopping: EarlyStopping,
    /// Seed of the held-out draws and of every random start.
    pub seed: u64,
}

impl AutoParams {
    /// The reference's `run()` settings ([`PAPER_LEARNING_RATE`], up to the default fit steps;
    /// personalization's defaults as the most few-shot steps) searched over ranks 1, 2, 4, 8, 16, pulls 0, 0.1, 1, 10 units, priors 0,
    /// 0.001, 0.01, 0.1, 1; a quarter of the seen users and a fifth of the others' rows held
    /// out; evaluations every 20 steps with patience 5.
    pub fn new(method: Method) -> Self {
        Self {
            fit: FitParams::new(method, 1).learning_rate(PAPER_LEARNING_RATE),
            personalize: PersonalizeParams::default(),
            ranks: vec![1, 2, 4, 8, 16],
            alpha_scales: vec![0.0, 0.1, 1.0, 10.0],
            prior_strengths: vec![0.0, 1e-3, 1e-2, 1e-1, 1.0],
            holdout_users: 0.25,
            holdout_rows: 0.2,
            stopping: EarlyStopping {
                eval_every: 20,
                ..EarlyStopping::default()
            },
            seed: 0,
        }
    }

    /// Validates every value; lists are sorted and deduplicated.
    pub fn check(&self) -> Result<CheckedAutoParams> {
        let mut p = self.clone();
        p.fit.clone().check()?;
        p.personalize.check()?;
        p.stopping.check()?;
        if p.ranks.contains(&0) || p.ranks.is_empty() {
            return Err(invalid("ranks", "need ranks of at least 1".into()));
        }
        p.ranks.sort_unstable();
        p.ranks.dedup();
        for (name, list) in [
            ("alpha scales", &mut p.alpha_scales),
            ("prior strengths", &mut p.prior_strengths),
        ] {
            if list.is_empty() || list.iter().any(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(invalid(name, "need finite values >= 0".into()));
            }
            list.sort_by(f64::total_cmp);
            list.dedup();
        }
        for (name, share) in [
            ("holdout users", p.holdout_users),
            ("holdout rows", p.holdout_rows),
        ] {
            if !(share > 0.0 && share < 1.0) {
                return Err(invalid(
                    name,
                    format!("{share} (must be strictly between 0 and 1)"),
                ));
            }
        }
        Ok(CheckedAutoParams(p))
    }
}

/// Validated search hyperparameters.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckedAutoParams(AutoParams);

impl CheckedAutoParams {
    /// The parameters as given.
    pub fn params(&self) -> &AutoParams {
        &self.0
    }

    /// Fits the search runs: the BT fit, each (rank >= 2, alpha) candidate, and the final
    /// fits (for a progress bar's length).
    pub fn n_stages(&self) -> usize {
        let p = &self.0;
        let multi = p.ranks.iter().filter(|&&k| k >= 2).count();
        1 + multi * p.alpha_scales.len() + 2
    }
}

/// The unit of the pull toward the BT direction for `method`: for `lore`, about the curvature
/// of the loss (sum over users of their mean NLL) along a direction, 0.25 c^2 N E|x|^2 / F, so
/// that a pull of 1 unit competes evenly with the data; for `regularized`, whose loss is a mean
/// and whose cosine penalty is scale-free, 1.
pub fn alpha_unit(
    method: Method,
    n_users: usize,
    mean_sq_norm: f64,
    n_features: usize,
    logit_scale: f64,
) -> f64 {
    match method {
        Method::Lore => {
            0.25 * logit_scale * logit_scale * n_users as f64 * mean_sq_norm / n_features as f64
        }
        Method::Regularized => 1.0,
    }
}

/// One candidate's scores on the seen users' held-out data.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Rank K of the fit (1: one shared BT reward).
    pub rank: usize,
    /// Pull toward the BT direction, in units of [`alpha_unit`].
    pub alpha_scale: f64,
    /// The same pull as the fit's alpha.
    pub alpha: f64,
    /// The few-shot prior strength chosen for it (0 for rank 1).
    pub prior_strength: f64,
    /// Steps of the fit at its best validation loss.
    pub fit_steps: usize,
    /// Columns left after pruning.
    pub kept_rank: usize,
    /// Few-shot steps at the best held-out loss (0 for rank 1).
    pub personalize_steps: usize,
    /// Inner users' validation rows: mean NLL.
    pub validation_loss: f64,
    /// Inner users' validation rows: pairwise accuracy.
    pub validation_accuracy: f64,
    /// Held-out users, personalized from their simulated few-shot rows: loss and accuracy on
    /// their other rows.
    pub fewshot_loss: f64,
    /// The held-out users' accuracy on their other rows.
    pub fewshot_accuracy: f64,
    /// The held-out users' accuracies (for paired comparisons).
    pub fewshot_per_user: Vec<f64>,
    /// Standard error of the paired difference to the best candidate's accuracy.
    pub standard_error: f64,
}

/// The configuration chosen, ready to fit on all seen users.
#[derive(Debug, Clone, PartialEq)]
pub struct Choice {
    /// Rank K.
    pub rank: usize,
    /// Pull toward the BT direction, in units of [`alpha_unit`].
    pub alpha_scale: f64,
    /// alpha for the final fit (its unit recomputed on all seen users).
    pub alpha: f64,
    /// Strength of the few-shot prior toward the population's mean weights.
    pub prior_strength: f64,
    /// Steps of the final fit (the search's best step count).
    pub fit_iterations: usize,
    /// Steps of the unseen users' personalization.
    pub personalize_iterations: usize,
    /// Iterations of the BT fit whose direction is v_ref (when alpha > 0) or the model.
    pub bt_iterations: usize,
    /// Index of the chosen candidate in [`AutoResults::candidates`].
    pub candidate: usize,
}

/// The search's outcome: every candidate, the choice, and the final run's four accuracies.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoResults {
    /// Every candidate's scores, BT first.
    pub candidates: Vec<Candidate>,
    /// The configuration chosen.
    pub choice: Choice,
    /// Held-out users and rows of the search: (inner users, held-out users, shots drawn).
    pub holdout: HoldoutSummary,
    /// The chosen configuration fitted on all seen users and evaluated on the four sets.
    pub run: RankRun,
    /// The BT direction fitted on all seen users (v_ref of the final fit when alpha > 0).
    pub bt_direction: Vec<f32>,
}

impl AutoResults {
    /// The final run as a one-row sweep (the layout of `lore sweep`'s results).
    pub fn as_sweep(&self) -> SweepResults {
        let row = summarize(
            self.choice.alpha,
            self.choice.rank,
            std::slice::from_ref(&self.run),
            vec![self.run.basis.rank()],
        );
        SweepResults {
            rows: vec![row],
            reference_skipped: false,
        }
    }
}

/// Sizes of the search's held-out data.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldoutSummary {
    /// Seen users the candidates are fitted on.
    pub inner_users: usize,
    /// Their rows used for fitting.
    pub inner_fit_rows: usize,
    /// Their rows held out to stop each fit early.
    pub inner_validation_rows: usize,
    /// Seen users held out as stand-ins for new users.
    pub heldout_users: usize,
    /// The stand-ins' few-shot rows.
    pub heldout_fewshot_rows: usize,
    /// The stand-ins' other rows, which score the candidates.
    pub heldout_test_rows: usize,
}

/// Progress of the search: which fit (stage) and which step.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoProgress<'a> {
    /// 0-based index of the current fit and how many there are.
    pub stage: usize,
    /// Number of fits in the search.
    pub n_stages: usize,
    /// What the stage does ("K=4 pull 10", "final K=4", ...).
    pub label: &'a str,
    /// Fitting the basis, or personalizing the stand-ins.
    pub phase: Phase,
    /// 0-based step within the phase.
    pub step: usize,
    /// The loss before the step.
    pub loss: f64,
}

/// The seen users' data split for the search.
struct Holdout {
    /// The inner users' rows, a share of each held out for early stopping.
    inner: HeldOutRows,
    fewshot: OwnedRows,
    fewshot_test: OwnedRows,
}

impl Holdout {
    /// Users: a seeded shuffle puts a share in the held-out group; the inner users' rows are
    /// held out with [`hold_out_rows`] (seeded with `p.seed`); each held-out user's few-shot
    /// rows are a [`pick_rows`] draw of an unseen user's count, the rest its test rows.
    fn draw(sets: &ExperimentSets, p: &AutoParams) -> Result<Self> {
        let seen = sets.seen_train();
        let (n, f) = (seen.n_users(), seen.n_features());
        if n < 4 {
            return Err(invalid(
                "seen users",
                format!("{n} (the search needs at least 4 seen users to hold some out)"),
            ));
        }
        let unseen = sets.unseen_train();
        let shot_counts: Vec<usize> = (0..unseen.n_users())
            .map(|u| unseen.user_rows(u).len())
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let order = shuffled_rows(&mut rng, n);
        let n_heldout = ((p.holdout_users * n as f64).round() as usize).clamp(1, n - 1);
        let mut heldout = order[..n_heldout].to_vec();
        let mut inner = order[n_heldout..].to_vec();
        heldout.sort_unstable();
        inner.sort_unstable();

        let mut scratch = Vec::new();
        let mut inner_rows = OwnedRows::new(f);
        for &u in &inner {
            inner_rows.push_user(seen.rows_f32(seen.user_rows(u), &mut scratch).to_vec());
        }
        let inner = hold_out_rows(&inner_rows.view()?, p.holdout_rows, p.seed).map_err(|_| {
            invalid(
                "seen users",
                "too few training rows per seen user to hold any out".into(),
            )
        })?;
        let mut fewshot = OwnedRows::new(f);
        let mut fewshot_test = OwnedRows::new(f);
        for &u in &heldout {
            let x = seen.rows_f32(seen.user_rows(u), &mut scratch);
            let rows: Vec<&[f32]> = x.chunks_exact(f).collect();
            let n_rows = rows.len();
            if n_rows < 2 {
                continue;
            }
            let wanted = if shot_counts.is_empty() {
                n_rows / 2
            } else {
                shot_counts[rng.gen_range(0..shot_counts.len())]
            };
            // Keep at least a third of a user's rows to score it on.
            let shots = wanted.clamp(1, (n_rows * 2 / 3).max(1));
            let picked = pick_rows(&mut rng, n_rows, shots);
            let (few, rest) = partition(&rows, &picked);
            fewshot.push_user(few.concat());
            fewshot_test.push_user(rest.concat());
        }
        if fewshot.n_users() == 0 {
            return Err(invalid(
                "seen users",
                "too few training rows per seen user to hold any out".into(),
            ));
        }
        Ok(Self {
            inner,
            fewshot,
            fewshot_test,
        })
    }

    fn summary(&self) -> HoldoutSummary {
        let rows = |r: &OwnedRows| *r.offsets.last().unwrap_or(&0);
        HoldoutSummary {
            inner_users: self.inner.train().map_or(0, |t| t.n_users()),
            inner_fit_rows: self.inner.n_train_rows(),
            inner_validation_rows: self.inner.n_held_out_rows(),
            heldout_users: self.fewshot.n_users(),
            heldout_fewshot_rows: rows(&self.fewshot),
            heldout_test_rows: rows(&self.fewshot_test),
        }
    }
}

/// (rows at the sorted indices `picked`, the other rows), each in order.
fn partition<'r>(rows: &[&'r [f32]], picked: &[usize]) -> (Vec<&'r [f32]>, Vec<&'r [f32]>) {
    let mut chosen = Vec::with_capacity(picked.len());
    let mut rest = Vec::with_capacity(rows.len() - picked.len());
    let mut next = picked.iter().peekable();
    for (i, &row) in rows.iter().enumerate() {
        if next.peek() == Some(&&i) {
            next.next();
            chosen.push(row);
        } else {
            rest.push(row);
        }
    }
    (chosen, rest)
}

/// Runs the search on the seen users, then fits the choice on all of them, personalizes the
/// unseen users and evaluates the four sets.
pub fn auto(
    sets: &ExperimentSets,
    params: &CheckedAutoParams,
    mut observer: impl FnMut(&AutoProgress),
) -> Result<AutoResults> {
    let p = params.params();
    crate::memory::check_ranks_fit(sets, &p.ranks)?;
    let n_stages = params.n_stages();
    let holdout = Holdout::draw(sets, p)?;
    let inner_fit = holdout.inner.train()?;
    let inner_validation = holdout.inner.validation()?;
    let fewshot = holdout.fewshot.view()?;
    let fewshot_test = Validation::same_users(holdout.fewshot_test.view()?);
    let f = sets.n_features();
    let c = p.fit.logit_scale;
    let method = p.fit.method;
    let unit = alpha_unit(method, inner_fit.n_users(), mean_sq_norm(&inner_fit), f, c);
    let mut stage = 0usize;
    let mut candidates = Vec::new();

    // Stage 0: one shared BT reward, early-stopped; its direction anchors the others.
    let bt_fit = p.fit.bradley_terry().seed(p.seed);
    let (bt_direction, bt) = fit_bradley_terry(
        &bt_fit.check()?,
        &inner_fit,
        Some((&inner_validation, p.stopping)),
        fit_steps(report_to(&mut observer, stage, n_stages, "K=1 (BT)")),
    )?;
    let bt_report = bt.stopping.expect("validation given");
    stage += 1;
    let bt_score = fewshot_test.score(&bt_direction, &vec![1.0; fewshot.n_users()], 1, c)?;
    candidates.push(Candidate {
        rank: 1,
        alpha_scale: 0.0,
        alpha: 0.0,
        prior_strength: 0.0,
        fit_steps: bt_report.best_steps,
        kept_rank: 1,
        personalize_steps: 0,
        validation_loss: bt_report.best.loss,
        validation_accuracy: bt_report.best.accuracy,
        fewshot_loss: bt_score.loss,
        fewshot_accuracy: bt_score.accuracy,
        fewshot_per_user: bt_score.per_user_accuracy,
        standard_error: 0.0,
    });

    let few_stopping = EarlyStopping {
        eval_every: p.stopping.eval_every,
        patience: p.stopping.patience.max(1).saturating_mul(2),
        min_delta: 0.0,
    };
    for &rank in p.ranks.iter().filter(|&&k| k >= 2) {
        for &scale in &p.alpha_scales {
            let label = if scale > 0.0 {
                format!("K={rank} pull {scale}")
            } else {
                format!("K={rank}")
            };
            let fit_params = FitParams {
                rank,
                alpha: scale * unit,
                seed: p.seed,
                ..p.fit.clone()
            }
            .check()?;
            let options = FitOptions {
                v_ref: (scale > 0.0).then_some(bt_direction.as_slice()),
                init: None,
                validation: Some((&inner_validation, p.stopping)),
            };
            let outcome = fit(
                &fit_params,
                &inner_fit,
                &options,
                fit_steps(report_to(&mut observer, stage, n_stages, &label)),
            )?;
            let (model, report) = (outcome.model, outcome.stopping.expect("validation given"));
            // The few-shot simulation: each prior strength, the best step on held-out rows.
            let prior = model.users.prior_logits();
            let kept = model.basis.rank();
            let init: Vec<f32> = prior.repeat(fewshot.n_users());
            let mut best: Option<(f64, usize, lore_core::ValidationScore)> = None;
            for &strength in &p.prior_strengths {
                let personalize_params = p
                    .personalize
                    .clone()
                    .seed(p.seed)
                    .prior_strength(strength)
                    .check()?;
                let options = PersonalizeOptions {
                    init_logits: Some(&init),
                    prior_logits: Some(&prior),
                    validation: Some((&fewshot_test, few_stopping)),
                };
                let mut progress = report_to(&mut observer, stage, n_stages, &label);
                let report = personalize(
                    &personalize_params,
                    &model.basis,
                    &fewshot,
                    &options,
                    |step| {
                        progress(Phase::Personalize, step.step, step.loss);
                        ControlFlow::Continue(())
                    },
                )?
                .stopping
                .expect("validation given");
                if best
                    .as_ref()
                    .is_none_or(|(_, _, b)| report.best.loss < b.loss)
                {
                    best = Some((strength, report.best_steps, report.best));
                }
            }
            let (strength, steps, score) = best.expect("at least one prior strength");
            stage += 1;
            candidates.push(Candidate {
                rank,
                alpha_scale: scale,
                alpha: scale * unit,
                prior_strength: strength,
                fit_steps: report.best_steps,
                kept_rank: kept,
                personalize_steps: steps,
                validation_loss: report.best.loss,
                validation_accuracy: report.best.accuracy,
                fewshot_loss: score.loss,
                fewshot_accuracy: score.accuracy,
                fewshot_per_user: score.per_user_accuracy,
                standard_error: 0.0,
            });
        }
    }

    let chosen = choose(&mut candidates);
    let pick = candidates[chosen].clone();
    let seen = sets.seen_train();
    let full_unit = alpha_unit(method, seen.n_users(), mean_sq_norm(seen), f, c);

    // The final fits on all seen users.
    let bt_iterations = bt_report.best_steps.max(1);
    let (bt_full_direction, bt_full) = fit_bradley_terry(
        &bt_fit.iterations(bt_iterations).check()?,
        seen,
        None,
        fit_steps(report_to(&mut observer, stage, n_stages, "final K=1 (BT)")),
    )?;
    let bt_full = bt_full.model;
    stage += 1;
    let choice = Choice {
        rank: pick.rank,
        alpha_scale: pick.alpha_scale,
        alpha: pick.alpha_scale * full_unit,
        prior_strength: pick.prior_strength,
        fit_iterations: pick.fit_steps.max(1),
        personalize_iterations: pick.personalize_steps,
        bt_iterations,
        candidate: chosen,
    };
    let run = if pick.rank == 1 {
        let unseen = UserWeights::single_column(sets.unseen_train().n_users());
        evaluate_run(sets, bt_full.basis, bt_full.users, unseen)?
    } else {
        let fit_params = FitParams {
            rank: pick.rank,
            alpha: choice.alpha,
            iterations: choice.fit_iterations,
            seed: p.seed,
            ..p.fit.clone()
        }
        .check()?;
        let label = format!("final K={}", pick.rank);
        let options = FitOptions {
            v_ref: (choice.alpha > 0.0).then_some(bt_full_direction.as_slice()),
            ..FitOptions::default()
        };
        let model = fit(
            &fit_params,
            seen,
            &options,
            fit_steps(report_to(&mut observer, stage, n_stages, &label)),
        )?
        .model;
        let unseen = personalize_unseen(sets, &model.basis, &model.users, &choice, p)?;
        evaluate_run(sets, model.basis, model.users, unseen)?
    };
    Ok(AutoResults {
        candidates,
        choice,
        holdout: holdout.summary(),
        run,
        bt_direction: bt_full_direction,
    })
}

/// The unseen users' weights: from the population's mean, then the chosen number of MAP steps.
fn personalize_unseen(
    sets: &ExperimentSets,
    basis: &RewardBasis,
    seen_users: &UserWeights,
    choice: &Choice,
    p: &AutoParams,
) -> Result<UserWeights> {
    let unseen = sets.unseen_train();
    let prior = seen_users.prior_logits();
    let init = prior.repeat(unseen.n_users());
    if choice.personalize_iterations == 0 || basis.rank() < 2 {
        return UserWeights::from_logits(unseen.n_users(), basis.rank(), init);
    }
    let params = p
        .personalize
        .clone()
        .iterations(choice.personalize_iterations)
        .prior_strength(choice.prior_strength)
        .seed(p.seed)
        .check()?;
    let options = PersonalizeOptions {
        init_logits: Some(&init),
        prior_logits: Some(&prior),
        validation: None,
    };
    personalize(&params, basis, unseen, &options, |_| {
        ControlFlow::Continue(())
    })
    .map(|outcome| outcome.users)
}

/// Picks the simplest candidate within one paired standard error of the best held-out
/// accuracy, filling in each candidate's standard error. Simpler: lower rank, then a stronger
/// pull toward the BT direction (no pull being the least constrained).
fn choose(candidates: &mut [Candidate]) -> usize {
    let best = (0..candidates.len())
        .max_by(|&a, &b| {
            candidates[a]
                .fewshot_accuracy
                .total_cmp(&candidates[b].fewshot_accuracy)
                .then(b.cmp(&a))
        })
        .expect("the BT candidate is always there");
    let best_scores = candidates[best].fewshot_per_user.clone();
    for candidate in candidates.iter_mut() {
        let differences: Vec<f64> = best_scores
            .iter()
            .zip(&candidate.fewshot_per_user)
            .map(|(b, c)| b - c)
            .collect();
        let (_, std) = mean_and_std(&differences);
        candidate.standard_error = std / (differences.len().max(1) as f64).sqrt();
    }
    let best_accuracy = candidates[best].fewshot_accuracy;
    let complexity = |c: &Candidate| {
        let pull = if c.alpha_scale > 0.0 {
            1.0 / c.alpha_scale
        } else {
            f64::INFINITY
        };
        (c.rank, pull)
    };
    (0..candidates.len())
        .filter(|&i| {
            let c = &candidates[i];
            best_accuracy - c.fewshot_accuracy <= c.standard_error
        })
        .min_by(|&a, &b| {
            let (ra, pa) = complexity(&candidates[a]);
            let (rb, pb) = complexity(&candidates[b]);
            ra.cmp(&rb).then(pa.total_cmp(&pb)).then(a.cmp(&b))
        })
        .unwrap_or(best)
}

/// Mean squared norm of the rows of `data`.
fn mean_sq_norm(data: &lore_core::Preferences) -> f64 {
    let mut scratch = Vec::new();
    let mut total = 0.0f64;
    for u in 0..data.n_users() {
        let x = data.rows_f32(data.user_rows(u), &mut scratch);
        total += x.iter().map(|&v| (v as f64) * (v as f64)).sum::<f64>();
    }
    total / data.n_rows().max(1) as f64
}

/// An observer that reports each (phase, step, loss) of `stage` as progress.
fn report_to<'o, O: FnMut(&AutoProgress)>(
    observer: &'o mut O,
    stage: usize,
    n_stages: usize,
    label: &'o str,
) -> impl FnMut(Phase, usize, f64) + 'o {
    move |phase, step, loss| {
        observer(&AutoProgress {
            stage,
            n_stages,
            label,
            phase,
            step,
            loss,
        })
    }
}

/// A fit observer over [`report_to`].
fn fit_steps(
    mut progress: impl FnMut(Phase, usize, f64),
) -> impl FnMut(&lore_core::FitStep) -> ControlFlow<()> {
    move |step| {
        progress(Phase::Fit, step.step, step.nll);
        ControlFlow::Continue(())
    }
}

fn invalid(name: &'static str, reason: String) -> LoreError {
    LoreError::InvalidParameter { name, reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(rank: usize, alpha_scale: f64, per_user: &[f64]) -> Candidate {
        Candidate {
            rank,
            alpha_scale,
            alpha: alpha_scale,
            prior_strength: 0.0,
            fit_steps: 10,
            kept_rank: rank,
            personalize_steps: 10,
            validation_loss: 0.5,
            validation_accuracy: 0.5,
            fewshot_loss: 0.5,
            fewshot_accuracy: per_user.iter().sum::<f64>() / per_user.len() as f64,
            fewshot_per_user: per_user.to_vec(),
            standard_error: 0.0,
        }
    }

    #[test]
    fn noise_alone_never_buys_a_larger_model() {
        // K = 4 is ahead by 0.01 on average, but the paired differences vary far more.
        let mut candidates = vec![
            candidate(1, 0.0, &[0.70, 0.80, 0.60, 0.90]),
            candidate(4, 0.0, &[0.90, 0.60, 0.80, 0.74]),
        ];
        assert_eq!(choose(&mut candidates), 0);
        assert!(candidates[0].standard_error > 0.01);
        assert_eq!(candidates[1].standard_error, 0.0);
    }

    #[test]
    fn a_clear_gain_picks_the_simplest_model_that_has_it() {
        let bt = [0.60, 0.62, 0.58, 0.61];
        let strong = [0.80, 0.81, 0.79, 0.80];
        let mut candidates = vec![
            candidate(1, 0.0, &bt),
            candidate(8, 0.0, &[0.81, 0.82, 0.80, 0.81]),
            candidate(4, 0.0, &strong),
            candidate(4, 0.1, &strong),
            candidate(2, 0.0, &[0.70, 0.72, 0.68, 0.71]),
        ];
        // K = 4 ties K = 8 within its standard error? No: K = 8 is ahead by exactly 0.01 on
        // every user, so the paired standard error is 0 and K = 8 wins outright.
        assert_eq!(choose(&mut candidates), 1);
        candidates[1].fewshot_per_user = vec![0.82, 0.80, 0.79, 0.81];
        candidates[1].fewshot_accuracy = 0.805;
        // Now K = 4 is within one paired standard error of K = 8; of the two K = 4 entries
        // the one pulled toward BT is simpler.
        assert_eq!(choose(&mut candidates), 3);
    }
}
