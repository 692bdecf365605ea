//! Presenting experiment results: terminal tables, results.csv, results.json and charts.

use std::path::{Path, PathBuf};

use anyhow::Result;
use lore_experiment::{Phase, Progress, ShotsResults, Summary, SweepResults};
use serde_json::{json, Value};

use crate::plot::{category_chart, xy_chart, Line, Texts};

/// Results files written beside each other.
pub use lore_experiment::report::{RESULTS_CSV, RESULTS_JSON};

/// The four sets' keys and descriptions, in table order.
const SETS: [(&str, &str); 4] = [
    ("seen_train", "seen users, train"),
    ("seen_test", "seen users, test"),
    ("unseen_train", "unseen users, few-shot"),
    ("unseen_test", "unseen users, test"),
];

/// A rank's name in tables and charts: `ref` for K = 0.
pub fn rank_name(rank: usize) -> String {
    if rank == 0 {
        "ref".into()
    } else {
        rank.to_string()
    }
}

/// A short line for a progress bar's message.
pub fn progress_message(p: &Progress) -> String {
    let phase = match p.phase {
        Phase::Fit => "fit",
        Phase::Personalize => "personalize",
    };
    let shots = p
        .shots
        .map(|(s, t)| format!(" shots {s} trial {t}"))
        .unwrap_or_default();
    format!(
        "alpha {} K {} seed {}{shots} {phase} loss {:.5}",
        p.alpha, p.rank, p.seed, p.loss
    )
}

pub use lore_experiment::report::{summary_json, sweep_csv, sweep_json};

/// The sweep as a table: one row per (alpha, K), mean +- std over users per set.
pub fn sweep_table(results: &SweepResults, several_seeds: bool) -> String {
    let several_alphas = results.rows.windows(2).any(|w| w[0].alpha != w[1].alpha);
    let ranks: Vec<String> = results
        .rows
        .iter()
        .map(|r| {
            if r.kept_ranks.iter().any(|&k| k != r.rank.max(1)) {
                let kept: Vec<String> = r.kept_ranks.iter().map(|k| k.to_string()).collect();
                format!("{} (kept {})", rank_name(r.rank), kept.join("/"))
            } else {
                rank_name(r.rank)
            }
        })
        .collect();
    let width = ranks
        .iter()
        .map(|k| k.chars().count())
        .max()
        .unwrap_or(0)
        .max(8);
    let lead = |alpha: &dyn std::fmt::Display, rank: &str| {
        if several_alphas {
            format!("{alpha:>8} {rank:>width$}")
        } else {
            format!("{rank:>width$}")
        }
    };
    let mut out = lead(&"alpha", "K");
    for (_, name) in SETS {
        out.push_str(&format!("  {name:>24}"));
    }
    out.push('\n');
    for (r, rank) in results.rows.iter().zip(&ranks) {
        out.push_str(&lead(&r.alpha, rank));
        for s in [&r.seen_train, &r.seen_test, &r.unseen_train, &r.unseen_test] {
            out.push_str(&format!("  {:>24}", cell(s, several_seeds)));
        }
        out.push('\n');
    }
    out.push_str("accuracy: mean ± std over users");
    if several_seeds {
        out.push_str(", mean over seeds [std over seeds]");
    }
    out
}

fn cell(s: &Summary, several_runs: bool) -> String {
    if several_runs {
        format!("{:.3} ± {:.3} [{:.3}]", s.mean, s.std, s.run_std)
    } else {
        format!("{:.3} ± {:.3}", s.mean, s.std)
    }
}

/// The reference's figure: the four accuracies against rank (x labels ref, 1, 2, ...), one
/// chart per alpha: `stem.png`, or `stem_alpha_A.png` for each alpha when there are several.
/// Returns the files written.
pub fn sweep_charts(dir: &Path, stem: &str, results: &SweepResults) -> Result<Vec<PathBuf>> {
    let mut alphas: Vec<f64> = results.rows.iter().map(|r| r.alpha).collect();
    alphas.dedup();
    let mut written = Vec::new();
    for &alpha in &alphas {
        let rows: Vec<_> = results.rows.iter().filter(|r| r.alpha == alpha).collect();
        let categories: Vec<String> = rows.iter().map(|r| rank_name(r.rank)).collect();
        let lines: Vec<Line> = SETS
            .iter()
            .enumerate()
            .map(|(set, (_, name))| Line {
                label: (*name).to_string(),
                points: rows
                    .iter()
                    .enumerate()
                    .map(|(i, r)| {
                        let s = [&r.seen_train, &r.seen_test, &r.unseen_train, &r.unseen_test][set];
                        (i as f64, s.mean, s.std)
                    })
                    .collect(),
            })
            .collect();
        let path = if alphas.len() == 1 {
            dir.join(format!("{stem}.png"))
        } else {
            dir.join(format!("{stem}_alpha_{alpha}.png"))
        };
        let title = format!("Accuracy against rank (alpha = {alpha})");
        category_chart(
            &path,
            &Texts {
                title: &title,
                x: "rank K (ref = the reference head)",
                y: "pairwise accuracy (mean ± std over users)",
                shares: true,
            },
            &categories,
            &lines,
        )?;
        written.push(path);
    }
    Ok(written)
}

/// `{"rows": [{rank, shots, mean_shots, unseen_train: {mean, std, trial_std, per_trial}, unseen_test: ...}]}`.
pub fn shots_json(results: &ShotsResults, trials: usize) -> Value {
    let rows: Vec<Value> = results
        .rows
        .iter()
        .map(|r| {
            json!({
                "rank": r.rank,
                "shots": r.shots,
                "mean_shots": r.mean_shots,
                "unseen_train": summary_json(&r.unseen_train, "trial"),
                "unseen_test": summary_json(&r.unseen_test, "trial"),
            })
        })
        .collect();
    json!({
        "rows": rows,
        "trials": trials,
        "reference_skipped": results.reference_skipped,
    })
}

/// The few-shot curve as a table: one row per shots count, one column per rank.
pub fn shots_table(results: &ShotsResults) -> String {
    let mut ranks: Vec<usize> = results.rows.iter().map(|r| r.rank).collect();
    ranks.dedup();
    let mut shots: Vec<usize> = results.rows.iter().map(|r| r.shots).collect();
    shots.sort_unstable();
    shots.dedup();
    let mut out = format!("{:>6}", "shots");
    for &k in &ranks {
        out.push_str(&format!("  {:>24}", format!("K = {}", rank_name(k))));
    }
    out.push('\n');
    for &s in &shots {
        out.push_str(&format!("{s:>6}"));
        for &k in &ranks {
            let text = results
                .rows
                .iter()
                .find(|r| r.rank == k && r.shots == s)
                .map(|r| cell(&r.unseen_test, true))
                .unwrap_or_default();
            out.push_str(&format!("  {text:>24}"));
        }
        out.push('\n');
    }
    out.push_str(
        "unseen users' test accuracy: mean ± std over users, mean over trials [std over trials]",
    );
    out
}

/// results.csv of a few-shot curve: one line per (rank, shots).
pub fn shots_csv(results: &ShotsResults) -> String {
    let mut out = String::from(
        "rank,shots,mean_shots,unseen_train_mean,unseen_train_std,unseen_train_trial_std,\
         unseen_test_mean,unseen_test_std,unseen_test_trial_std\n",
    );
    for r in &results.rows {
        let (a, b) = (&r.unseen_train, &r.unseen_test);
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{},{}\n",
            r.rank, r.shots, r.mean_shots, a.mean, a.std, a.run_std, b.mean, b.std, b.run_std
        ));
    }
    out
}

/// Unseen users' test accuracy against shots, one line per rank (error bars: std over trials).
pub fn shots_chart(path: &Path, results: &ShotsResults) -> Result<()> {
    let mut ranks: Vec<usize> = results.rows.iter().map(|r| r.rank).collect();
    ranks.dedup();
    let lines: Vec<Line> = ranks
        .iter()
        .map(|&k| Line {
            label: format!("K = {}", rank_name(k)),
            points: results
                .rows
                .iter()
                .filter(|r| r.rank == k)
                .map(|r| (r.shots as f64, r.unseen_test.mean, r.unseen_test.run_std))
                .collect(),
        })
        .collect();
    xy_chart(
        path,
        &Texts {
            title: "Unseen users: test accuracy against few-shot pairs",
            x: "few-shot pairs per unseen user",
            y: "pairwise accuracy (mean ± std over trials)",
            shares: true,
        },
        &lines,
    )
}
