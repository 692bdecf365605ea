//! lore-experiment: the LoRe paper's experiment harness on top of lore-core and lore-io.
//!
//! - [`split()`]: the paper's four sets (seen/unseen users, training/test rows) of a preference set;
//! - [`simulate()`]: a PersonalLLM-style population of users mixing planted reward directions;
//! - [`sweep()`]: accuracy against rank on the four sets, over alphas and seeds;
//! - [`shots_curve()`]: unseen users' accuracy against the number of few-shot pairs;
//! - [`auto()`]: chooses the configuration on the seen users alone, then runs it;
//! - [`report`]: the result files (results.json's object, results.csv, split.json, the search's
//!   models) shared by the `lore` command and the Python package;
//! - [`ExperimentSets::from_folder`] and [`Split::write_sets`]: the four sets in a split folder
//!   ([`lore_io::SplitFolder`]).

#![warn(missing_docs)]

mod auto;
mod folder;
mod memory;
pub mod report;
mod sets;
mod shots;
mod simulate;
mod split;
mod sweep;
#[cfg(test)]
mod tests;

pub use auto::{
    alpha_unit, auto, normal_quantile, AutoParams, AutoProgress, AutoResults, Candidate,
    CheckedAutoParams, Choice, HoldoutSummary, Selection, SelectionReport,
};
pub use memory::{
    auto_memory, check_ranks_fit, shots_memory, simulate_memory, sweep_memory, synthetic_memory,
};
pub use sets::{ExperimentSets, OwnedSets};
pub use shots::{shots_curve, CheckedShotsParams, ShotsParams, ShotsResults, ShotsRow};
pub use simulate::{
    reference_direction, simulate, synthetic_responses, PairRange, Population, PopulationParams,
    ResponseSet, SyntheticParams, SyntheticResponses,
};
pub use split::{
    canonical_user_order, split, CheckedSplitParams, Split, SplitInput, SplitParams, SplitSet,
};
pub use sweep::{
    reference_run, run_rank, select_users, sweep, sweep_bt, CheckedSweepParams, Phase, Progress,
    RankRun, Summary, SweepParams, SweepResults, SweepRow, PAPER_LEARNING_RATE,
};
