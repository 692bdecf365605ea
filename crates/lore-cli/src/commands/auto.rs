//! `lore auto`: chooses rank, BT anchor, prior and iterations on the seen users only, then
//! fits, personalizes and evaluates like `lore sweep`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{anyhow, Context, Result};
use clap::Args;
use lore_core::{EarlyStopping, Method};
use lore_experiment::report::{self as experiment_report, candidate_cells, CANDIDATE_HEADER};
use lore_experiment::{
    auto, AutoParams, AutoResults, CheckedAutoParams, ExperimentSets, Selection,
};
use lore_io::{OutputFolder, SplitFolder};
use serde::{Deserialize, Serialize};

use crate::choice;
use crate::config::{self, is_false, ConfigFlag, Configurable};
use crate::progress::Ui;
use crate::report;

/// Chooses the configuration honestly, from the seen users alone, then fits and evaluates it.
///
/// A sweep table invites choosing K on the unseen users' test rows, which is cheating. `lore
/// auto` deals the seen users into --folds folds; each fold in turn stands in for new users
/// while, for every candidate:
///   - the basis is fitted on the other folds' users, stopping early on a fifth of their rows
///     (--holdout-rows);
///   - the stand-ins are personalized from as many pairs as the unseen users have (MAP with a
///     prior toward the population's mean weights, each --prior-strengths value) and scored on
///     their other pairs; the prior and few-shot steps applied to one fold are those that
///     scored best on the other folds.
///
/// So every seen user is a stand-in exactly once, and no score is tuned on its own pairs.
///
/// Candidates: one shared Bradley-Terry reward (K = 1), and each rank K >= 2 with each pull
/// toward the BT direction (--alpha-scales, in units scaled to the data; 0 = no pull). BT is
/// the default: a larger candidate replaces it only if its paired advantage over BT across the
/// stand-ins is significant after a Bonferroni correction for the number of candidates
/// (--significance); among those, the simplest within one paired standard error of the best
/// wins. The best of many noisy estimates looks better than it is; the correction keeps noise
/// from buying a larger model (--selection best shows the uncorrected choice). The choice is
/// then fitted on all seen users, the unseen users are personalized from their few-shot
/// pairs, and all four sets are evaluated. The unseen users' test pairs are read only by that
/// final evaluation.
///
/// Writes into --out: results.json (the layout of `lore sweep`, plus `chosen`, `candidates`
/// with each one's advantage over BT and corrected interval, and `selection` with why the
/// winner won), results.csv, candidates.csv and candidates.png (each candidate's advantage
/// over BT against rank, a line per pull, bars the corrected intervals), model.safetensors
/// (basis and seen users), unseen_users.safetensors, v_ref_bt.safetensors (the BT direction)
/// and config.toml. The model and users files name their users (`user_ids`) and record the
/// sets' embedder (`embedder`) like `lore fit` and `lore personalize`.
///
/// Example: lore auto --splits splits/ --out auto/
#[derive(Args, Debug, Serialize)]
#[command(verbatim_doc_comment)]
#[serde(rename_all = "kebab-case")]
pub struct AutoArgs {
    #[command(flatten)]
    #[serde(skip)]
    config: ConfigFlag,

    /// Split folder (as written by `lore split` or `lore simulate`) [required]
    #[arg(long, value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    splits: Option<PathBuf>,

    /// Training method: `lore` or `regularized`
    #[arg(long, value_name = "METHOD", value_parser = choice::parser::<Method>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    method: Option<Method>,

    /// Candidate ranks, comma-separated (1 = one shared BT reward)
    #[arg(long, value_delimiter = ',', value_name = "K,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    ranks: Option<Vec<usize>>,

    /// Pulls toward the BT direction in data-scaled units, comma-separated; 0 = none
    #[arg(long, value_delimiter = ',', value_name = "A,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    alpha_scales: Option<Vec<f64>>,

    /// Few-shot prior strengths toward the population's mean weights, comma-separated
    #[arg(long, value_delimiter = ',', value_name = "L,...")]
    #[serde(skip_serializing_if = "Option::is_none")]
    prior_strengths: Option<Vec<f64>>,

    /// Most fit steps of any candidate (early stopping picks fewer)
    #[arg(long, short = 't', value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    iterations: Option<usize>,

    /// Fit: Adam learning rate
    #[arg(long, value_name = "LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    lr: Option<f64>,

    /// Most few-shot steps tried
    #[arg(long, value_name = "T")]
    #[serde(skip_serializing_if = "Option::is_none")]
    personalize_iterations: Option<usize>,

    /// Few-shot Adam learning rate
    #[arg(long, value_name = "LR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    personalize_lr: Option<f64>,

    /// c in P(chosen > rejected) = sigmoid(c * x . V w)
    #[arg(long, value_name = "C")]
    #[serde(skip_serializing_if = "Option::is_none")]
    logit_scale: Option<f64>,

    /// Folds of the seen users; each stands in for new users once while the others fit
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    folds: Option<usize>,

    /// Share of the fitted users' rows held out for early stopping
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    holdout_rows: Option<f64>,

    /// Steps between validation evaluations
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    eval_every: Option<usize>,

    /// Evaluations without improvement before a fit stops
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    patience: Option<usize>,

    /// How to choose: `corrected` (BT unless a larger model's advantage is significant after
    /// correcting for the candidates compared), `best` (the highest stand-in accuracy,
    /// uncorrected) or `fixed` (the largest rank given with its weakest pull, to evaluate one
    /// configuration)
    #[arg(long, value_name = "RULE", value_parser = choice::parser::<Selection>())]
    #[serde(with = "choice::optional", skip_serializing_if = "Option::is_none")]
    selection: Option<Selection>,

    /// Family-wise error rate of the corrected comparisons with BT
    #[arg(long, value_name = "P")]
    #[serde(skip_serializing_if = "Option::is_none")]
    significance: Option<f64>,

    /// Seed of the folds, the held-out draws and random starts
    #[arg(long, value_name = "S")]
    #[serde(skip_serializing_if = "Option::is_none")]
    seed: Option<u64>,

    /// Output folder (created if missing; a folder lore wrote is replaced whole)
    #[arg(long, short = 'o', value_name = "DIR")]
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    out: Option<PathBuf>,

    /// Replace --out even when it is a non-empty folder that lore did not write (or that holds
    /// another command's output); it is replaced whole, never merged. Inputs are never replaced
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    force: bool,

    /// Print results.json's object on stdout instead of the tables
    #[arg(long)]
    #[serde(skip_serializing_if = "is_false")]
    json: bool,
}

/// The resolved options of `lore auto`.
#[derive(Serialize, Deserialize, Debug)]
#[serde(rename_all = "kebab-case")]
pub struct AutoConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    #[serde(with = "crate::config::path", default)]
    splits: Option<PathBuf>,
    #[serde(with = "choice::name")]
    method: Method,
    ranks: Vec<usize>,
    alpha_scales: Vec<f64>,
    prior_strengths: Vec<f64>,
    iterations: usize,
    lr: f64,
    personalize_iterations: usize,
    personalize_lr: f64,
    logit_scale: f64,
    folds: usize,
    holdout_rows: f64,
    eval_every: usize,
    patience: usize,
    #[serde(with = "choice::name")]
    selection: Selection,
    significance: f64,
    seed: u64,
    #[serde(with = "crate::config::path::required")]
    out: PathBuf,
    json: bool,
    /// --force: never written into config.toml, so that a rerun from it does not force.
    #[serde(default, skip_serializing)]
    force: bool,
}

impl Default for AutoConfig {
    fn default() -> Self {
        let p = AutoParams::new(Method::default());
        Self {
            splits: None,
            method: p.fit.method,
            ranks: p.ranks,
            alpha_scales: p.alpha_scales,
            prior_strengths: p.prior_strengths,
            iterations: p.fit.iterations,
            lr: p.fit.learning_rate,
            personalize_iterations: p.personalize.iterations,
            personalize_lr: p.personalize.learning_rate,
            logit_scale: p.fit.logit_scale,
            folds: p.folds,
            holdout_rows: p.holdout_rows,
            eval_every: p.stopping.eval_every,
            patience: p.stopping.patience,
            selection: p.selection,
            significance: p.significance,
            seed: p.seed,
            out: "lore-auto".into(),
            json: false,
            force: false,
        }
    }
}

impl AutoConfig {
    fn params(&self) -> Result<CheckedAutoParams> {
        let mut p = AutoParams::new(self.method);
        p.fit = p
            .fit
            .iterations(self.iterations)
            .learning_rate(self.lr)
            .logit_scale(self.logit_scale);
        p.personalize = p
            .personalize
            .iterations(self.personalize_iterations)
            .learning_rate(self.personalize_lr)
            .logit_scale(self.logit_scale);
        p.ranks = self.ranks.clone();
        p.alpha_scales = self.alpha_scales.clone();
        p.prior_strengths = self.prior_strengths.clone();
        p.folds = self.folds;
        p.holdout_rows = self.holdout_rows;
        p.selection = self.selection;
        p.significance = self.significance;
        p.stopping = EarlyStopping {
            eval_every: self.eval_every,
            patience: self.patience,
            ..p.stopping
        };
        p.seed = self.seed;
        Ok(p.check()?)
    }
}

impl Configurable for AutoArgs {
    type Options = AutoConfig;
    fn defaults() -> AutoConfig {
        AutoConfig::default()
    }
    fn config_flag(&self) -> &ConfigFlag {
        &self.config
    }
}

pub fn run(args: AutoArgs, ui: &Ui) -> Result<()> {
    let options = config::options(&args)?;
    let splits = options.splits.as_deref().ok_or_else(|| {
        anyhow!("give --splits DIR (a folder made by `lore split` or `lore simulate`)")
    })?;
    let params = options.params()?;
    let files = SplitFolder::open(splits)?;
    let sets = ExperimentSets::from_folder(&files)?;
    crate::sizes::check_auto(&sets, &params)?;
    let folder =
        OutputFolder::create(&options.out, "auto", options.force, &[("--splits", splits)])?;
    ui.note(format!("{}: {}", splits.display(), files.describe()));

    let started = Instant::now();
    let bar = ui.steps(params.n_stages(), "fits");
    let results = auto(&sets, &params, |p| {
        bar.set_position(p.stage as u64);
        if p.step % 10 == 0 {
            let phase = match p.phase {
                lore_experiment::Phase::Fit => "fit",
                lore_experiment::Phase::Personalize => "few-shot",
            };
            bar.set_message(format!(
                "{} {phase} step {} loss {:.4}",
                p.label, p.step, p.loss
            ));
        }
    })
    .with_context(|| format!("searching on {}", splits.display()))?;
    bar.finish_and_clear();
    ui.note(format!("searched and fitted in {:.1?}", started.elapsed()));

    let dir = folder.path();
    let sweep = results.as_sweep();
    let value = experiment_report::auto_json(&results, options.seed);
    let text = serde_json::to_string_pretty(&value)? + "\n";
    lore_io::write_bytes_atomic(dir.join(report::RESULTS_JSON), text.as_bytes())?;
    lore_io::write_bytes_atomic(
        dir.join(report::RESULTS_CSV),
        report::sweep_csv(&sweep).as_bytes(),
    )?;
    lore_io::write_bytes_atomic(
        dir.join(experiment_report::CANDIDATES_CSV),
        experiment_report::candidates_csv(&results).as_bytes(),
    )?;
    experiment_report::write_auto_models(dir, &results, &params, &files)?;
    candidates_chart(&dir.join("candidates.png"), &results)?;
    config::write_effective_in(dir, &options.out, "auto", &options)?;
    folder.commit()?;
    if options.json {
        println!("{value}");
    } else {
        println!("{}", candidates_table(&results));
        println!("{}", chosen_line(&results));
        println!("{}", report::sweep_table(&sweep, false));
    }
    ui.note(format!(
        "wrote {}, {}, candidates.csv, candidates.png, model.safetensors, unseen_users.safetensors, \
         v_ref_bt.safetensors and {} in {}",
        report::RESULTS_JSON,
        report::RESULTS_CSV,
        config::CONFIG_FILE,
        options.out.display()
    ));
    Ok(())
}

fn candidates_table(results: &AutoResults) -> String {
    let rows: Vec<[String; CANDIDATE_HEADER.len()]> =
        results.candidates.iter().map(candidate_cells).collect();
    let widths: Vec<usize> = (0..CANDIDATE_HEADER.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].chars().count())
                .chain([CANDIDATE_HEADER[i].chars().count()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: Vec<&str>, mark: &str| {
        let body: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:>w$}"))
            .collect();
        format!("{mark} {}", body.join("  "))
    };
    let mut out = vec![line(CANDIDATE_HEADER.to_vec(), " ")];
    for (i, r) in rows.iter().enumerate() {
        let mark = if i == results.choice.candidate {
            "*"
        } else {
            " "
        };
        out.push(line(r.iter().map(String::as_str).collect(), mark));
    }
    out.join("\n")
}

fn chosen_line(results: &AutoResults) -> String {
    let c = &results.choice;
    let what = if c.rank == 1 {
        format!(
            "chosen: one shared BT reward (K = 1), {} fit steps",
            c.fit_iterations
        )
    } else {
        format!(
            "chosen: K = {}, pull {} (alpha {:.3e}), prior {}, {} fit steps, {} few-shot steps",
            c.rank,
            c.alpha_scale,
            c.alpha,
            c.prior_strength,
            c.fit_iterations,
            c.personalize_iterations
        )
    };
    format!("{what}\nwhy: {}", results.selection.reason)
}

/// Every candidate's advantage over BT on the stand-in users, in accuracy points, against
/// rank, one line per pull; the bars are the intervals corrected for the candidates compared
/// (a bar wholly above 0 is significant).
fn candidates_chart(path: &std::path::Path, results: &AutoResults) -> Result<()> {
    let mut ranks: Vec<usize> = results.candidates.iter().map(|c| c.rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let mut pulls: Vec<f64> = results.candidates.iter().map(|c| c.alpha_scale).collect();
    pulls.sort_by(f64::total_cmp);
    pulls.dedup();
    let lines: Vec<crate::plot::Line> = pulls
        .iter()
        .map(|&pull| crate::plot::Line {
            label: if pull > 0.0 {
                format!("pull {pull}")
            } else {
                "no pull".to_string()
            },
            points: results
                .candidates
                .iter()
                .filter(|c| c.alpha_scale == pull)
                .map(|c| {
                    let x = ranks.iter().position(|&k| k == c.rank).unwrap_or(0) as f64;
                    let half_width = (c.interval.1 - c.interval.0) / 2.0;
                    (x, 100.0 * c.advantage, 100.0 * half_width)
                })
                .collect(),
        })
        .collect();
    let categories: Vec<String> = ranks
        .iter()
        .map(|&k| {
            if k == 1 {
                "1 (BT)".into()
            } else {
                k.to_string()
            }
        })
        .collect();
    let c = &results.choice;
    let chosen = if c.rank == 1 {
        "BT".to_string()
    } else {
        format!("K = {}, pull {}", c.rank, c.alpha_scale)
    };
    let title = format!(
        "Advantage over BT on stand-in users (chosen: {chosen}, {} rule)",
        results.selection.rule
    );
    crate::plot::category_chart(
        path,
        &crate::plot::Texts {
            title: &title,
            x: "rank K",
            y: "accuracy points over BT (corrected interval)",
            shares: false,
        },
        &categories,
        &lines,
    )
}
