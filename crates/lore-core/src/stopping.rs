//! Early stopping on a validation loss, shared by [`crate::fit`] and [`crate::personalize`].

use std::ops::ControlFlow;

use crate::eval::ValidationScore;
use crate::params::EarlyStopping;

/// What early stopping saw: the validation score every `eval_every` steps and the best.
#[derive(Debug, Clone, PartialEq)]
pub struct StoppingReport {
    /// Steps taken when the kept (best) state was reached.
    pub best_steps: usize,
    /// The kept state's validation score.
    pub best: ValidationScore,
    /// (steps taken, validation loss, validation accuracy) at each evaluation.
    pub history: Vec<(usize, f64, f64)>,
    /// Whether the run stopped before its last iteration for lack of improvement.
    pub stopped_early: bool,
}

/// The bookkeeping of early stopping; the caller keeps its own copy of the best state.
pub(crate) struct StoppingTracker {
    rule: EarlyStopping,
    best: Option<(usize, ValidationScore)>,
    history: Vec<(usize, f64, f64)>,
    bad_evaluations: usize,
    pub stopped: bool,
}

/// The outcome of one evaluation.
pub(crate) struct Recorded {
    /// The state is the best so far: keep a copy.
    pub improved: bool,
    /// Break: patience has run out.
    pub flow: ControlFlow<()>,
}

impl StoppingTracker {
    pub fn new(rule: EarlyStopping) -> Self {
        Self {
            rule,
            best: None,
            history: Vec::new(),
            bad_evaluations: 0,
            stopped: false,
        }
    }

    /// Whether the state after `steps` steps is to be evaluated: every `eval_every` steps,
    /// and the final state (`last`), each once.
    pub fn due(&self, steps: usize, last: bool) -> bool {
        (last || steps.is_multiple_of(self.rule.eval_every))
            && self.history.last().is_none_or(|h| h.0 != steps)
    }

    /// Records the score of the state after `steps` steps.
    pub fn record(&mut self, steps: usize, score: ValidationScore) -> Recorded {
        self.history.push((steps, score.loss, score.accuracy));
        let improved = match &self.best {
            None => true,
            Some((_, best)) => score.loss < best.loss - self.rule.min_delta,
        };
        let mut flow = ControlFlow::Continue(());
        if improved {
            self.best = Some((steps, score));
            self.bad_evaluations = 0;
        } else {
            self.bad_evaluations += 1;
            if self.bad_evaluations >= self.rule.patience {
                self.stopped = true;
                flow = ControlFlow::Break(());
            }
        }
        Recorded { improved, flow }
    }

    /// The report; None before any evaluation.
    pub fn report(self) -> Option<StoppingReport> {
        let (best_steps, best) = self.best?;
        Some(StoppingReport {
            best_steps,
            best,
            history: self.history,
            stopped_early: self.stopped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn score(loss: f64) -> ValidationScore {
        ValidationScore {
            loss,
            accuracy: 1.0 - loss,
            per_user_accuracy: vec![1.0 - loss],
        }
    }

    #[test]
    fn stops_after_patience_evaluations_without_improvement() {
        let mut tracker = StoppingTracker::new(EarlyStopping {
            eval_every: 10,
            patience: 2,
            min_delta: 0.01,
        });
        assert!(tracker.due(0, false) && !tracker.due(5, false) && tracker.due(5, true));
        let losses = [0.9, 0.5, 0.495, 0.6, 0.4];
        let mut flows = Vec::new();
        for (i, &loss) in losses.iter().enumerate() {
            let recorded = tracker.record(i * 10, score(loss));
            flows.push((recorded.improved, recorded.flow.is_break()));
            if recorded.flow.is_break() {
                break;
            }
        }
        // 0.495 is not below 0.5 - 0.01; 0.6 is the second miss in a row.
        assert_eq!(
            flows,
            [(true, false), (true, false), (false, false), (false, true)]
        );
        assert!(!tracker.due(30, true), "a state is evaluated once");
        let report = tracker.report().unwrap();
        assert_eq!(report.best_steps, 10);
        assert_eq!(report.best.loss, 0.5);
        assert!(report.stopped_early);
        assert_eq!(report.history.len(), 4);
    }
}
