//! One module per subcommand: flags in, one library call, results out. Commands never import
//! each other; what several share lives in [`common`].

pub mod auto;
pub mod bench;
#[cfg(feature = "serve")]
pub mod bench_serve;
pub mod check_data;
pub mod common;
pub mod demo;
#[cfg(feature = "embed")]
pub mod embed;
pub mod eval;
pub mod fit;
pub mod personalize;
pub mod score;
#[cfg(feature = "serve")]
pub mod serve;
pub mod shots;
pub mod simulate;
pub mod split;
pub mod sweep;

use crate::config::document_defaults as with_defaults;

/// `cmd` (the whole `lore` command) with each subcommand's defaults in its `--help`.
pub fn document_defaults(cmd: clap::Command) -> clap::Command {
    let cmd = cmd
        .mut_subcommand("fit", with_defaults::<fit::FitArgs>)
        .mut_subcommand("personalize", with_defaults::<personalize::PersonalizeArgs>)
        .mut_subcommand("eval", with_defaults::<eval::EvalArgs>)
        .mut_subcommand("score", with_defaults::<score::ScoreArgs>)
        .mut_subcommand("bench", with_defaults::<bench::BenchArgs>)
        .mut_subcommand("demo", with_defaults::<demo::DemoArgs>)
        .mut_subcommand("simulate", with_defaults::<simulate::SimulateArgs>)
        .mut_subcommand("split", with_defaults::<split::SplitArgs>)
        .mut_subcommand("sweep", with_defaults::<sweep::SweepArgs>)
        .mut_subcommand("auto", with_defaults::<auto::AutoArgs>)
        .mut_subcommand("shots", with_defaults::<shots::ShotsArgs>);
    #[cfg(feature = "embed")]
    let cmd = cmd.mut_subcommand("embed", with_defaults::<embed::EmbedArgs>);
    cmd
}
