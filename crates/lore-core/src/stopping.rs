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
