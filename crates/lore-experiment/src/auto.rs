//! Choosing a configuration honestly: rank, pull toward the Bradley-Terry direction, fit
//! length, few-shot prior and few-shot length, all from the seen users' training rows.
//!
//! The seen users are split (seeded) into folds. Each fold in turn stands in for new users
//! while every candidate is fitted on the other folds' users (a share of their rows held out
//! to stop the fit early); each stand-in is personalized from as many of its rows as an unseen
//! user has few-shot rows and scored on the rest. So every seen user is a stand-in exactly
//! once, and the estimate of each candidate uses all of them. The few-shot prior strength and
//! step count applied to one fold's stand-ins are chosen on the other folds' stand-ins, so no
//! user's score is tuned on its own test rows.
//!
//! Selection ([`Selection::Corrected`], the default): one shared BT reward (K = 1) is the
//! choice unless a larger candidate's paired advantage over BT, across all stand-ins, is
//! significant after a Bonferroni correction for the number of candidates compared; among
//! those that are, the simplest within one paired standard error of the best wins. The best of
//! many noisy estimates is biased upward (the winner's curse); the correction is what keeps
//! noise from buying a larger model. Then the choice is fitted on all seen training rows, the
//! unseen users are personalized from their few-shot rows, and the four sets are evaluated.
//! The unseen users' test rows are read only by that final evaluation; the unseen few-shot
//! rows only for their count, and for personalization.

use std::ops::ControlFlow;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::sets::{ExperimentSets, OwnedRows};
use crate::sweep::{evaluate_run, summarize, Phase, RankRun, SweepResults, PAPER_LEARNING_RATE};
use lore_core::{
    fit, fit_bradley_terry, hold_out_rows, personalize, pick_rows, shuffled_rows, EarlyStopping,
    FitOptions, FitParams, LoreError, Method, PersonalizeOptions, PersonalizeParams, Preferences,
    Result, RewardBasis, UserWeights, Validation, ValidationScore,
};

/// How the search chooses among its candidates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Selection {
    /// BT unless a larger candidate's paired advantage over BT is significant after a
    /// Bonferroni correction for the candidates compared; then the simplest within one
    /// paired standard error of the best significant one.
    #[default]
    Corrected,
    /// The highest stand-in accuracy, uncorrected (prone to the winner's curse; for
    /// comparison).
    Best,
    /// The candidate of the largest rank with the weakest pull, whatever the scores: evaluates
    /// one given configuration with the search's early stopping and few-shot tuning.
    Fixed,
}

impl Selection {
    /// Every rule, in the order `--help` lists them.
    pub const ALL: &'static [Selection] =
        &[Selection::Corrected, Selection::Best, Selection::Fixed];

    /// The rule's name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Selection::Corrected => "corrected",
            Selection::Best => "best",
            Selection::Fixed => "fixed",
        }
    }
}

impl std::fmt::Display for Selection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Selection {
    type Err = LoreError;
    fn from_str(s: &str) -> Result<Self> {
        Selection::ALL
            .iter()
            .copied()
            .find(|rule| rule.name() == s)
            .ok_or_else(|| {
                invalid(
                    "selection",
                    format!("unknown rule `{s}` (expected `corrected`, `best` or `fixed`)"),
                )
            })
    }
}

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
    /// Folds of the seen users (at least 2): each stands in for new users once, while the
    /// candidates are fitted on the others.
    pub folds: usize,
    /// Share of the fitted users' rows held out to stop their fits early, in (0, 1).
    pub holdout_rows: f64,
    /// Early stopping of the fits (and the evaluation period of personalization).
    pub stopping: EarlyStopping,
    /// How the candidates are chosen among.
    pub selection: Selection,
    /// Family-wise error rate of the corrected comparison with BT, in (0, 1).
    pub significance: f64,
    /// Seed of the folds, the held-out draws and every random start.
    pub seed: u64,
}

impl AutoParams {
    /// The reference's `run()` settings ([`PAPER_LEARNING_RATE`], up to the default fit steps;
    /// personalization's defaults as the most few-shot steps) searched over ranks 1, 2, 4, 8,
    /// 16, pulls 0, 0.1, 1, 10 units, priors 0, 0.001, 0.01, 0.1, 1; 2 folds of the seen users
    /// and a fifth of the fitted users' rows held out; evaluations every 20 steps with patience
    /// 5; the corrected selection at a 5% family-wise error rate.
    pub fn new(method: Method) -> Self {
        Self {
            fit: FitParams::new(method, 1).learning_rate(PAPER_LEARNING_RATE),
            personalize: PersonalizeParams::default(),
            ranks: vec![1, 2, 4, 8, 16],
            alpha_scales: vec![0.0, 0.1, 1.0, 10.0],
            prior_strengths: vec![0.0, 1e-3, 1e-2, 1e-1, 1.0],
            folds: 2,
            holdout_rows: 0.2,
            stopping: EarlyStopping {
                eval_every: 20,
                ..EarlyStopping::default()
            },
            selection: Selection::Corrected,
            significance: 0.05,
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
        if p.folds < 2 {
            return Err(invalid(
                "folds",
                format!(
                    "{} (need at least 2: one stands in while the others fit)",
                    p.folds
                ),
            ));
        }
        for (name, share) in [
            ("holdout rows", p.holdout_rows),
            ("significance", p.significance),
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

    /// Fits the search runs: the BT fit and each (rank >= 2, alpha) candidate in every fold,
    /// and the final fits (for a progress bar's length).
    pub fn n_stages(&self) -> usize {
        let p = &self.0;
        p.folds * self.candidate_specs().len() + 2
    }

    /// (rank, pull) of every candidate, BT first.
    fn candidate_specs(&self) -> Vec<(usize, f64)> {
        let p = &self.0;
        let mut specs = vec![(1, 0.0)];
        for &rank in p.ranks.iter().filter(|&&k| k >= 2) {
            specs.extend(p.alpha_scales.iter().map(|&scale| (rank, scale)));
        }
        specs
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

/// One candidate's scores on the stand-in users, across all folds.
#[derive(Debug, Clone, PartialEq)]
pub struct Candidate {
    /// Rank K of the fit (1: one shared BT reward).
    pub rank: usize,
    /// Pull toward the BT direction, in units of [`alpha_unit`].
    pub alpha_scale: f64,
    /// The same pull as the final fit's alpha (its unit on all seen users).
    pub alpha: f64,
    /// The few-shot prior strength chosen on all folds' stand-ins (0 for rank 1).
    pub prior_strength: f64,
    /// Steps of the fit at its best validation loss (mean over folds).
    pub fit_steps: usize,
    /// Columns left after pruning (the most of any fold).
    pub kept_rank: usize,
    /// Few-shot steps at the best stand-in loss of all folds (0 for rank 1).
    pub personalize_steps: usize,
    /// Fitted users' validation rows: mean NLL (mean over folds).
    pub validation_loss: f64,
    /// Fitted users' validation rows: pairwise accuracy (mean over folds).
    pub validation_accuracy: f64,
    /// Stand-ins, personalized from their simulated few-shot rows with the prior and steps
    /// chosen on the other folds: mean NLL on their other rows.
    pub fewshot_loss: f64,
    /// The stand-ins' accuracy on their other rows (mean over users).
    pub fewshot_accuracy: f64,
    /// Each stand-in's accuracy, in the same user order for every candidate.
    pub fewshot_per_user: Vec<f64>,
    /// Mean over stand-ins of this candidate's accuracy minus BT's (0 for BT).
    pub advantage: f64,
    /// Standard error of that paired difference.
    pub standard_error: f64,
    /// The advantage's interval corrected for the candidates compared: advantage ± z se,
    /// z the one-sided normal quantile of the significance divided by their number.
    pub interval: (f64, f64),
    /// Whether the interval lies above 0: the advantage over BT is significant.
    pub significant: bool,
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

/// How the choice was made: the rule, the correction and, in words, why the winner won.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectionReport {
    /// The rule applied.
    pub rule: Selection,
    /// Candidates compared with BT (the Bonferroni divisor).
    pub comparisons: usize,
    /// Family-wise error rate of the comparisons.
    pub significance: f64,
    /// The one-sided normal quantile of significance / comparisons.
    pub z: f64,
    /// Why the chosen candidate won, in a sentence.
    pub reason: String,
}

/// The search's outcome: every candidate, the choice, and the final run's four accuracies.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoResults {
    /// Every candidate's scores, BT first.
    pub candidates: Vec<Candidate>,
    /// The configuration chosen.
    pub choice: Choice,
    /// How it was chosen.
    pub selection: SelectionReport,
    /// The folds' sizes.
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

/// Sizes of the search's folds.
#[derive(Debug, Clone, PartialEq)]
pub struct HoldoutSummary {
    /// Number of folds.
    pub folds: usize,
    /// Seen users scored as stand-ins (those with at least 2 training rows).
    pub stand_in_users: usize,
    /// The stand-ins' few-shot rows, all folds.
    pub stand_in_fewshot_rows: usize,
    /// The stand-ins' other rows, which score the candidates.
    pub stand_in_test_rows: usize,
    /// Rows each fold's fits are fitted on.
    pub fit_rows: Vec<usize>,
    /// Rows each fold's fits hold out for early stopping.
    pub validation_rows: Vec<usize>,
}

/// Progress of the search: which fit (stage) and which step.
#[derive(Debug, Clone, PartialEq)]
pub struct AutoProgress<'a> {
    /// 0-based index of the current fit and how many there are.
    pub stage: usize,
    /// Number of fits in the search.
    pub n_stages: usize,
    /// What the stage does ("K=4 pull 10, fold 2/3", "final K=4", ...).
    pub label: &'a str,
    /// Fitting the basis, or personalizing the stand-ins.
    pub phase: Phase,
    /// 0-based step within the phase.
    pub step: usize,
    /// The loss before the step.
    pub loss: f64,
}

/// The seen users in folds, with each fold's stand-ins' few-shot and test rows.
struct Folds {
    /// Seen users of each fold, sorted.
    members: Vec<Vec<usize>>,
    /// Each fold's stand-ins' few-shot rows (its members with at least 2 rows, in order).
    fewshot: Vec<OwnedRows>,
    /// Their other rows.
    fewshot_test: Vec<OwnedRows>,
}

impl Folds {
    /// A seeded shuffle deals the seen users into `p.folds` folds. Each user's few-shot rows
    /// are a [`pick_rows`] draw of an unseen user's count (users with fewer than 2 rows are
    /// never stand-ins), from a generator keyed by (seed, user), so a user's draw does not
    /// depend on the others.
    fn draw(sets: &ExperimentSets, p: &AutoParams) -> Result<Self> {
        let seen = sets.seen_train();
        let (n, f) = (seen.n_users(), seen.n_features());
        if n < 2 * p.folds {
            return Err(invalid(
                "seen users",
                format!(
                    "{n} (the search needs at least 2 per fold, {} for {} folds)",
                    2 * p.folds,
                    p.folds
                ),
            ));
        }
        let unseen = sets.unseen_train();
        let shot_counts: Vec<usize> = (0..unseen.n_users())
            .map(|u| unseen.user_rows(u).len())
            .collect();
        let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
        let order = shuffled_rows(&mut rng, n);
        let mut members = vec![Vec::new(); p.folds];
        for (i, &u) in order.iter().enumerate() {
            members[i % p.folds].push(u);
        }
        let mut scratch = Vec::new();
        let mut fewshot = Vec::with_capacity(p.folds);
        let mut fewshot_test = Vec::with_capacity(p.folds);
        for fold in members.iter_mut() {
            fold.sort_unstable();
            let mut few_rows = OwnedRows::new(f);
            let mut test_rows = OwnedRows::new(f);
            for &u in fold.iter() {
                let x = seen.rows_f32(seen.user_rows(u), &mut scratch);
                let rows: Vec<&[f32]> = x.chunks_exact(f).collect();
                let n_rows = rows.len();
                if n_rows < 2 {
                    continue;
                }
                let mut rng = ChaCha8Rng::seed_from_u64(p.seed);
                rng.set_stream(1 + u as u64);
                let wanted = if shot_counts.is_empty() {
                    n_rows / 2
                } else {
                    shot_counts[rng.gen_range(0..shot_counts.len())]
                };
                // Keep at least a third of a user's rows to score it on.
                let shots = wanted.clamp(1, (n_rows * 2 / 3).max(1));
                let picked = pick_rows(&mut rng, n_rows, shots);
                let (few, rest) = partition(&rows, &picked);
                few_rows.push_user(few.concat());
                test_rows.push_user(rest.concat());
            }
            if few_rows.n_users() == 0 {
                return Err(invalid(
                    "seen users",
                    "too few training rows per seen user to hold any out".into(),
                ));
            }
            fewshot.push(few_rows);
            fewshot_test.push(test_rows);
        }
        Ok(Self {
            members,
            fewshot,
            fewshot_test,
        })
    }

    /// The rows of every seen user outside fold `fold`, in user order.
    fn fit_rows(&self, seen: &Preferences, fold: usize) -> OwnedRows {
        let mut rows = OwnedRows::new(seen.n_features());
        let mut scratch = Vec::new();
        let members = &self.members[fold];
        for u in (0..seen.n_users()).filter(|u| members.binary_search(u).is_err()) {
            rows.push_user(seen.rows_f32(seen.user_rows(u), &mut scratch).to_vec());
        }
        rows
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

/// What one candidate's fit in one fold left for scoring.
struct FoldFit {
    /// The fitted basis (for BT, the direction as a rank-1 basis).
    basis: RewardBasis,
    /// The fitted users' mean logits (the few-shot prior and starting point).
    prior: Vec<f32>,
    /// Early stopping's best step count, validation loss and accuracy.
    fit_steps: usize,
    validation: (f64, f64),
    /// For each prior strength, the stand-ins' (steps, mean NLL) at every evaluation of an
    /// early-stopped few-shot run (empty for BT).
    curves: Vec<Vec<(usize, f64)>>,
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
    let folds = Folds::draw(sets, p)?;
    let seen = sets.seen_train();
    let f = sets.n_features();
    let c = p.fit.logit_scale;
    let method = p.fit.method;
    let specs = params.candidate_specs();
    let bt_fit = p.fit.bradley_terry().seed(p.seed);
    let mut stage = 0usize;

    // fits[candidate][fold]
    let mut fits: Vec<Vec<FoldFit>> = specs.iter().map(|_| Vec::new()).collect();
    let mut fit_rows = Vec::with_capacity(p.folds);
    let mut validation_rows = Vec::with_capacity(p.folds);
    for fold in 0..p.folds {
        let rows = folds.fit_rows(seen, fold);
        let held = hold_out_rows(&rows.view()?, p.holdout_rows, p.seed).map_err(|_| {
            invalid(
                "seen users",
                "too few training rows per seen user to hold any out".into(),
            )
        })?;
        let inner_fit = held.train()?;
        let inner_validation = held.validation()?;
        fit_rows.push(held.n_train_rows());
        validation_rows.push(held.n_held_out_rows());
        let fewshot = folds.fewshot[fold].view()?;
        let fewshot_test = Validation::same_users(folds.fewshot_test[fold].view()?);
        let unit = alpha_unit(method, inner_fit.n_users(), mean_sq_norm(&inner_fit), f, c);
        let of = |label: String| format!("{label}, fold {}/{}", fold + 1, p.folds);

        // One shared BT reward, early-stopped; its direction anchors the pulled candidates.
        let label = of("K=1 (BT)".into());
        let (bt_direction, bt) = fit_bradley_terry(
            &bt_fit.check()?,
            &inner_fit,
            Some((&inner_validation, p.stopping)),
            fit_steps(report_to(&mut observer, stage, n_stages, &label)),
        )?;
        stage += 1;
        let report = bt.stopping.expect("validation given");
        fits[0].push(FoldFit {
            basis: RewardBasis::new(f, 1, bt_direction.clone(), c)?,
            prior: vec![0.0],
            fit_steps: report.best_steps,
            validation: (report.best.loss, report.best.accuracy),
            curves: Vec::new(),
        });

        for (j, &(rank, scale)) in specs.iter().enumerate().skip(1) {
            let label = of(if scale > 0.0 {
                format!("K={rank} pull {scale}")
            } else {
                format!("K={rank}")
            });
            let data = FoldData {
                fit: &inner_fit,
                validation: &inner_validation,
                fewshot: &fewshot,
                fewshot_test: &fewshot_test,
            };
            let v_ref = (scale > 0.0).then_some(bt_direction.as_slice());
            let progress = report_to(&mut observer, stage, n_stages, &label);
            fits[j].push(fit_candidate(
                p,
                rank,
                scale * unit,
                v_ref,
                &data,
                progress,
            )?);
            stage += 1;
        }
    }

    // Score every candidate on every fold's stand-ins.
    let fold_users: Vec<usize> = folds.fewshot.iter().map(OwnedRows::n_users).collect();
    let candidates = specs
        .iter()
        .zip(&fits)
        .map(|(&(rank, scale), fold_fits)| {
            score_candidate(rank, scale, fold_fits, &folds, &fold_users, p)
        })
        .collect::<Result<Vec<_>>>()?;
    drop(fits);

    let mut candidates = candidates;
    let seen_unit = alpha_unit(method, seen.n_users(), mean_sq_norm(seen), f, c);
    for candidate in candidates.iter_mut() {
        candidate.alpha = candidate.alpha_scale * seen_unit;
    }
    let selection = choose(&mut candidates, p);
    let chosen = selection.0;
    let pick = candidates[chosen].clone();

    // The final fits on all seen users.
    let bt_iterations = candidates[0].fit_steps.max(1);
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
        alpha: pick.alpha,
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
    let rows = |r: &[OwnedRows]| r.iter().map(|x| *x.offsets.last().unwrap_or(&0)).sum();
    Ok(AutoResults {
        candidates,
        choice,
        selection: selection.1,
        holdout: HoldoutSummary {
            folds: p.folds,
            stand_in_users: fold_users.iter().sum(),
            stand_in_fewshot_rows: rows(&folds.fewshot),
            stand_in_test_rows: rows(&folds.fewshot_test),
            fit_rows,
            validation_rows,
        },
        run,
        bt_direction: bt_full_direction,
    })
}

/// One fold's data: the fitted users' rows and their early-stopping rows, the stand-ins'
/// few-shot rows and their other rows.
struct FoldData<'d, 'a> {
    fit: &'d Preferences<'a>,
    validation: &'d Validation<'a>,
    fewshot: &'d Preferences<'a>,
    fewshot_test: &'d Validation<'a>,
}

/// Fits a candidate of `rank` with pull `alpha` (toward `v_ref`) on a fold, early-stopped,
/// then personalizes the fold's stand-ins with each prior strength and keeps their loss
/// curves. The few-shot runs are evaluated every eval_every steps and stop after twice the
/// fits' patience without improvement.
fn fit_candidate(
    p: &AutoParams,
    rank: usize,
    alpha: f64,
    v_ref: Option<&[f32]>,
    data: &FoldData,
    mut progress: impl FnMut(Phase, usize, f64),
) -> Result<FoldFit> {
    let fit_params = FitParams {
        rank,
        alpha,
        seed: p.seed,
        ..p.fit.clone()
    }
    .check()?;
    let options = FitOptions {
        v_ref,
        init: None,
        validation: Some((data.validation, p.stopping)),
    };
    let outcome = fit(&fit_params, data.fit, &options, fit_steps(&mut progress))?;
    let (model, report) = (outcome.model, outcome.stopping.expect("validation given"));
    let prior = model.users.prior_logits();
    let init: Vec<f32> = prior.repeat(data.fewshot.n_users());
    let curve_stopping = EarlyStopping {
        eval_every: p.stopping.eval_every,
        patience: p.stopping.patience.max(1).saturating_mul(2),
        min_delta: 0.0,
    };
    let mut curves = Vec::with_capacity(p.prior_strengths.len());
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
            validation: Some((data.fewshot_test, curve_stopping)),
        };
        let report = personalize(
            &personalize_params,
            &model.basis,
            data.fewshot,
            &options,
            |step| {
                progress(Phase::Personalize, step.step, step.loss);
                ControlFlow::Continue(())
            },
        )?
        .stopping
        .expect("validation given");
        curves.push(report.history.iter().map(|h| (h.0, h.1)).collect());
    }
    Ok(FoldFit {
        basis: model.basis,
        prior,
        fit_steps: report.best_steps,
        validation: (report.best.loss, report.best.accuracy),
        curves,
    })
}

/// A candidate's scores over every fold's stand-ins: BT's direction as it is; a larger
/// candidate's stand-ins personalized with the prior and steps that did best on the other
/// folds. Its reported prior and steps (those of the final run) are the best on all folds.
fn score_candidate(
    rank: usize,
    alpha_scale: f64,
    fold_fits: &[FoldFit],
    folds: &Folds,
    fold_users: &[usize],
    p: &AutoParams,
) -> Result<Candidate> {
    let c = p.fit.logit_scale;
    let mut per_user = Vec::new();
    let mut loss_sum = 0.0;
    for (fold, fold_fit) in fold_fits.iter().enumerate() {
        let fewshot_test = Validation::same_users(folds.fewshot_test[fold].view()?);
        let score = if rank == 1 {
            let ones = vec![1.0; fold_users[fold]];
            fewshot_test.score(fold_fit.basis.values(), &ones, 1, c)?
        } else {
            let others: Vec<usize> = (0..fold_fits.len()).filter(|&g| g != fold).collect();
            let (strength, steps) = best_curve_point(fold_fits, fold_users, &others, p);
            let fewshot = folds.fewshot[fold].view()?;
            score_personalized(fold_fit, &fewshot, &fewshot_test, strength, steps, p)?
        };
        loss_sum += score.loss * fold_users[fold] as f64;
        per_user.extend(score.per_user_accuracy);
    }
    let (prior_strength, personalize_steps) = if rank >= 2 {
        let all: Vec<usize> = (0..fold_fits.len()).collect();
        best_curve_point(fold_fits, fold_users, &all, p)
    } else {
        (0.0, 0)
    };
    let n_folds = fold_fits.len() as f64;
    let mean = |value: fn(&FoldFit) -> f64| fold_fits.iter().map(value).sum::<f64>() / n_folds;
    let n_users = per_user.len().max(1) as f64;
    Ok(Candidate {
        rank,
        alpha_scale,
        alpha: 0.0,
        prior_strength,
        fit_steps: mean(|x| x.fit_steps as f64).round() as usize,
        kept_rank: fold_fits
            .iter()
            .map(|x| x.basis.rank())
            .max()
            .unwrap_or(rank),
        personalize_steps,
        validation_loss: mean(|x| x.validation.0),
        validation_accuracy: mean(|x| x.validation.1),
        fewshot_loss: loss_sum / n_users,
        fewshot_accuracy: per_user.iter().sum::<f64>() / n_users,
        fewshot_per_user: per_user,
        advantage: 0.0,
        standard_error: 0.0,
        interval: (0.0, 0.0),
        significant: false,
    })
}

/// The (prior strength, few-shot steps) with the lowest stand-in loss summed over the folds
/// `over` (each fold's mean NLL weighted by its stand-ins; a curve that stopped early counts
/// at its last loss for the later evaluations). Ties go to fewer steps, then to the weaker
/// prior.
fn best_curve_point(
    fold_fits: &[FoldFit],
    fold_users: &[usize],
    over: &[usize],
    p: &AutoParams,
) -> (f64, usize) {
    let mut best: Option<(f64, usize, f64)> = None;
    for (i, &strength) in p.prior_strengths.iter().enumerate() {
        let curves: Vec<&[(usize, f64)]> = over
            .iter()
            .map(|&g| fold_fits[g].curves[i].as_slice())
            .collect();
        let Some(longest) = curves.iter().copied().max_by_key(|c| c.len()) else {
            continue;
        };
        if curves.iter().any(|c| c.is_empty()) {
            continue;
        }
        for (t, &(steps, _)) in longest.iter().enumerate() {
            let loss: f64 = curves
                .iter()
                .zip(over)
                .map(|(c, &g)| c[t.min(c.len() - 1)].1 * fold_users[g] as f64)
                .sum();
            let better = best.is_none_or(|(_, s, l)| loss < l || (loss == l && steps < s));
            if loss.is_finite() && better {
                best = Some((strength, steps, loss));
            }
        }
    }
    best.map_or((0.0, 0), |(strength, steps, _)| (strength, steps))
}

/// The stand-ins' scores after `steps` few-shot steps with prior `strength`, from the fitted
/// users' mean logits.
fn score_personalized(
    fold_fit: &FoldFit,
    fewshot: &Preferences,
    fewshot_test: &Validation,
    strength: f64,
    steps: usize,
    p: &AutoParams,
) -> Result<ValidationScore> {
    let init: Vec<f32> = fold_fit.prior.repeat(fewshot.n_users());
    if steps == 0 {
        return fewshot_test.score_logits(&fold_fit.basis, &init);
    }
    let params = p
        .personalize
        .clone()
        .iterations(steps)
        .seed(p.seed)
        .prior_strength(strength)
        .check()?;
    let options = PersonalizeOptions {
        init_logits: Some(&init),
        prior_logits: Some(&fold_fit.prior),
        validation: None,
    };
    let users = personalize(&params, &fold_fit.basis, fewshot, &options, |_| {
        ControlFlow::Continue(())
    })?
    .users;
    fewshot_test.score_logits(&fold_fit.basis, users.logits())
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

/// Fills in each candidate's paired comparison with BT and picks one by `p.selection`;
/// returns its index and the report.
fn choose(candidates: &mut [Candidate], p: &AutoParams) -> (usize, SelectionReport) {
    let comparisons = candidates.len().saturating_sub(1);
    let z = normal_quantile(1.0 - p.significance / comparisons.max(1) as f64);
    let bt_scores = candidates[0].fewshot_per_user.clone();
    for candidate in candidates.iter_mut().skip(1) {
        let (mean, se) = paired_difference(&candidate.fewshot_per_user, &bt_scores);
        candidate.advantage = mean;
        candidate.standard_error = se;
        candidate.interval = (mean - z * se, mean + z * se);
        candidate.significant = mean - z * se > 0.0;
    }
    let describe = |c: &Candidate| {
        let what = if c.rank == 1 {
            "BT".to_string()
        } else if c.alpha_scale > 0.0 {
            format!("K = {}, pull {}", c.rank, c.alpha_scale)
        } else {
            format!("K = {}", c.rank)
        };
        let points = |v: f64| format!("{:+.1}", 100.0 * v);
        format!(
            "{what} ({} points over BT, corrected interval {} to {})",
            points(c.advantage),
            points(c.interval.0),
            points(c.interval.1)
        )
    };
    let by_accuracy = |list: &mut dyn Iterator<Item = usize>| {
        list.max_by(|&a, &b| {
            candidates[a]
                .fewshot_accuracy
                .total_cmp(&candidates[b].fewshot_accuracy)
                .then(b.cmp(&a))
        })
    };
    let (chosen, reason) = match p.selection {
        Selection::Best => {
            let best = by_accuracy(&mut (0..candidates.len())).unwrap_or(0);
            (
                best,
                format!(
                    "the highest stand-in accuracy, {:.3}, uncorrected: {}",
                    candidates[best].fewshot_accuracy,
                    describe(&candidates[best])
                ),
            )
        }
        Selection::Fixed => {
            let fixed = (0..candidates.len())
                .max_by(|&a, &b| {
                    let (x, y) = (&candidates[a], &candidates[b]);
                    x.rank
                        .cmp(&y.rank)
                        .then(y.alpha_scale.total_cmp(&x.alpha_scale))
                })
                .unwrap_or(0);
            (
                fixed,
                format!(
                    "fixed: the largest rank given, with the weakest pull: {}",
                    describe(&candidates[fixed])
                ),
            )
        }
        Selection::Corrected => {
            let significant: Vec<usize> = (1..candidates.len())
                .filter(|&i| candidates[i].significant)
                .collect();
            match by_accuracy(&mut significant.iter().copied()) {
                None => {
                    let leader = by_accuracy(&mut (1..candidates.len()));
                    let lead = leader.map_or(String::new(), |i| {
                        format!("; the leader is {}", describe(&candidates[i]))
                    });
                    (
                        0,
                        format!(
                            "no candidate's advantage over BT is significant after correcting for \
                             {comparisons} comparisons (z = {z:.2}){lead}"
                        ),
                    )
                }
                Some(best) => {
                    let best_scores = candidates[best].fewshot_per_user.clone();
                    let best_accuracy = candidates[best].fewshot_accuracy;
                    let complexity = |c: &Candidate| {
                        let pull = if c.alpha_scale > 0.0 {
                            1.0 / c.alpha_scale
                        } else {
                            f64::INFINITY
                        };
                        (c.rank, pull)
                    };
                    let simplest = significant
                        .iter()
                        .copied()
                        .filter(|&i| {
                            let (_, se) =
                                paired_difference(&best_scores, &candidates[i].fewshot_per_user);
                            best_accuracy - candidates[i].fewshot_accuracy <= se
                        })
                        .min_by(|&a, &b| {
                            let (ra, pa) = complexity(&candidates[a]);
                            let (rb, pb) = complexity(&candidates[b]);
                            ra.cmp(&rb).then(pa.total_cmp(&pb)).then(a.cmp(&b))
                        })
                        .unwrap_or(best);
                    let why = if simplest == best {
                        format!(
                            "the best of {} candidates significantly better than BT after \
                             correcting for {comparisons} comparisons (z = {z:.2})",
                            significant.len()
                        )
                    } else {
                        format!(
                            "significantly better than BT after correcting for {comparisons} \
                             comparisons (z = {z:.2}), and the simplest within one paired standard \
                             error of the best, {}",
                            describe(&candidates[best])
                        )
                    };
                    (
                        simplest,
                        format!("{}: {why}", describe(&candidates[simplest])),
                    )
                }
            }
        }
    };
    (
        chosen,
        SelectionReport {
            rule: p.selection,
            comparisons,
            significance: p.significance,
            z,
            reason,
        },
    )
}

/// Mean and standard error of the paired differences a - b (sample standard deviation).
fn paired_difference(a: &[f64], b: &[f64]) -> (f64, f64) {
    let n = a.len().min(b.len());
    if n == 0 {
        return (0.0, 0.0);
    }
    let d: Vec<f64> = a.iter().zip(b).map(|(x, y)| x - y).collect();
    let mean = d.iter().sum::<f64>() / n as f64;
    if n < 2 {
        return (mean, 0.0);
    }
    let var = d.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
    (mean, (var / n as f64).sqrt())
}

/// The standard normal quantile Phi^-1(q) for q in (0, 1) (Acklam's rational approximation,
/// relative error below 1.2e-9).
pub fn normal_quantile(q: f64) -> f64 {
    const A: [f64; 6] = [
        -3.969683028665376e1,
        2.209460984245205e2,
        -2.759285104469687e2,
        1.383_577_518_672_69e2,
        -3.066479806614716e1,
        2.506628277459239,
    ];
    const B: [f64; 5] = [
        -5.447609879822406e1,
        1.615858368580409e2,
        -1.556989798598866e2,
        6.680131188771972e1,
        -1.328068155288572e1,
    ];
    const C: [f64; 6] = [
        -7.784894002430293e-3,
        -3.223964580411365e-1,
        -2.400758277161838,
        -2.549732539343734,
        4.374664141464968,
        2.938163982698783,
    ];
    const D: [f64; 4] = [
        7.784695709041462e-3,
        3.224671290700398e-1,
        2.445134137142996,
        3.754408661907416,
    ];
    let q = q.clamp(f64::MIN_POSITIVE, 1.0 - f64::EPSILON);
    let tail = |r: f64| {
        (((((C[0] * r + C[1]) * r + C[2]) * r + C[3]) * r + C[4]) * r + C[5])
            / ((((D[0] * r + D[1]) * r + D[2]) * r + D[3]) * r + 1.0)
    };
    if q < 0.02425 {
        tail((-2.0 * q.ln()).sqrt())
    } else if q > 1.0 - 0.02425 {
        -tail((-2.0 * (1.0 - q).ln()).sqrt())
    } else {
        let x = q - 0.5;
        let r = x * x;
        (((((A[0] * r + A[1]) * r + A[2]) * r + A[3]) * r + A[4]) * r + A[5]) * x
            / (((((B[0] * r + B[1]) * r + B[2]) * r + B[3]) * r + B[4]) * r + 1.0)
    }
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
            advantage: 0.0,
            standard_error: 0.0,
            interval: (0.0, 0.0),
            significant: false,
        }
    }

    fn params(selection: Selection) -> AutoParams {
        AutoParams {
            selection,
            ..AutoParams::new(Method::Lore)
        }
    }

    #[test]
    fn normal_quantiles_match_tables() {
        for (q, z) in [
            (0.5, 0.0),
            (0.975, 1.959963985),
            (0.95, 1.644853627),
            (1.0 - 0.05 / 16.0, 2.734368792),
            (0.001, -3.090232306),
        ] {
            assert!(
                (normal_quantile(q) - z).abs() < 1e-6,
                "{q}: {}",
                normal_quantile(q)
            );
        }
    }

    /// Users whose per-user accuracies under BT follow a fixed pattern; a candidate adds
    /// `gain` to each and `spread` times a second pattern (noise with mean 0).
    fn shifted(bt: &[f64], gain: f64, spread: f64) -> Vec<f64> {
        bt.iter()
            .enumerate()
            .map(|(i, &b)| b + gain + spread * if i % 2 == 0 { 1.0 } else { -1.0 })
            .collect()
    }

    fn bt_scores(n: usize) -> Vec<f64> {
        (0..n)
            .map(|i| 0.6 + 0.2 * ((i * 7) % 10) as f64 / 10.0)
            .collect()
    }

    #[test]
    fn a_lead_that_noise_explains_keeps_bt() {
        // The leader is 2 points ahead, but its paired differences vary by 10 points per user:
        // se = 0.1 / sqrt(60) = 1.3 points, z = 2.7 for 16 comparisons.
        let bt = bt_scores(60);
        let mut candidates = vec![candidate(1, 0.0, &bt)];
        for k in [2, 4, 8, 16] {
            for pull in [0.0, 0.1, 1.0, 10.0] {
                let gain = if (k, pull) == (4, 0.0) { 0.02 } else { 0.0 };
                candidates.push(candidate(k, pull, &shifted(&bt, gain, 0.1)));
            }
        }
        let (chosen, report) = choose(&mut candidates, &params(Selection::Corrected));
        assert_eq!(chosen, 0, "{}", report.reason);
        assert_eq!(report.comparisons, 16);
        assert!(report.reason.contains("no candidate"), "{}", report.reason);
        // The uncorrected rule takes the bait.
        let (best, _) = choose(&mut candidates, &params(Selection::Best));
        assert_eq!(
            (candidates[best].rank, candidates[best].alpha_scale),
            (4, 0.0)
        );
        let leader = &candidates[best];
        assert!((leader.advantage - 0.02).abs() < 1e-12);
        assert!(!leader.significant && leader.interval.0 < 0.0 && leader.interval.1 > 0.0);
    }

    #[test]
    fn a_clear_gain_picks_the_simplest_significant_model_near_the_best() {
        let bt = bt_scores(60);
        let mut candidates = vec![
            candidate(1, 0.0, &bt),
            candidate(2, 0.0, &shifted(&bt, 0.05, 0.01)),
            candidate(4, 0.0, &shifted(&bt, 0.15, 0.01)),
            candidate(4, 1.0, &shifted(&bt, 0.1505, 0.02)),
            candidate(8, 0.0, &shifted(&bt, 0.151, 0.03)),
        ];
        let (chosen, report) = choose(&mut candidates, &params(Selection::Corrected));
        // K = 8 is best by 0.1 point, K = 4 pull 1 is within one paired standard error of it
        // and simpler than K = 4 without a pull.
        assert!(candidates[1..].iter().all(|c| c.significant));
        assert_eq!(
            (candidates[chosen].rank, candidates[chosen].alpha_scale),
            (4, 1.0)
        );
        assert!(report.reason.contains("simplest"), "{}", report.reason);
        let (fixed, _) = choose(&mut candidates, &params(Selection::Fixed));
        assert_eq!(fixed, 4);
    }

    #[test]
    fn selection_rules_parse_by_name() {
        for &rule in Selection::ALL {
            assert_eq!(rule.name().parse::<Selection>().unwrap(), rule);
        }
        assert!("largest".parse::<Selection>().is_err());
    }
}
