//! `lore`: learn personalized reward models with LoRe (low-rank reward modeling).
//!
//! A thin binary over lore-core (the model), lore-io (the files), lore-experiment (the paper's
//! harness) and lore-embed (text to features): each subcommand translates flags into library
//! calls and presents the result.
// The doc comments of the clap structs are `--help` text, where `[F]` or `[P, F]` is a shape,
// not a rustdoc link.
#![allow(rustdoc::broken_intra_doc_links)]

mod choice;
mod commands;
mod config;
mod plot;
mod progress;
mod report;
mod signals;
mod sizes;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// Learn personalized reward models with LoRe (low-rank reward modeling, Bose et al. 2025).
///
/// Each preference is a feature row x = e(chosen) - e(rejected). A shared basis V [F x K] and
/// per-user weights w_u = softmax(W_u) give user u the reward direction V w_u, and
/// P(chosen > rejected | u) = sigmoid(c * x . V w_u) with a logit scale c.
///
/// Typical flow: `lore fit` learns V and W on many users, `lore personalize` fits w for new
/// users from a few pairs with V fixed, and `lore eval` reports pairwise accuracy per user.
/// All files are safetensors: open them in Python with `safetensors.torch.load_file`.
#[derive(Parser)]
#[command(name = "lore", version, propagate_version = true, max_term_width = 100)]
struct Cli {
    /// Worker threads (default: all cores; at most 4 per core). Results are identical for any
    /// thread count.
    #[arg(long, global = true, value_name = "N")]
    threads: Option<usize>,

    /// No progress bars or summaries; errors are still printed.
    #[arg(long, short, global = true)]
    quiet: bool,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    Fit(commands::fit::FitArgs),
    Personalize(commands::personalize::PersonalizeArgs),
    Eval(commands::eval::EvalArgs),
    Score(commands::score::ScoreArgs),
    Bench(commands::bench::BenchArgs),
    Demo(commands::demo::DemoArgs),
    Simulate(commands::simulate::SimulateArgs),
    Split(commands::split::SplitArgs),
    Sweep(commands::sweep::SweepArgs),
    Auto(commands::auto::AutoArgs),
    Shots(commands::shots::ShotsArgs),
    #[cfg(feature = "embed")]
    Embed(commands::embed::EmbedArgs),
    CheckData(commands::check_data::CheckDataArgs),
    #[cfg(feature = "serve")]
    Serve(commands::serve::ServeArgs),
}

fn main() -> ExitCode {
    signals::install();
    let parsed = accept_negative_values(commands::document_defaults(Cli::command()))
        .try_get_matches()
        .and_then(|matches| Cli::from_arg_matches(&matches));
    let cli = match parsed {
        Ok(cli) => cli,
        Err(e) => return report_usage_error(e),
    };
    if let Err(e) = run(cli) {
        eprintln!("error: {}", one_line(&format!("{e:#}")));
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn run(cli: Cli) -> anyhow::Result<()> {
    if let Some(threads) = cli.threads {
        sizes::check_threads(threads)?;
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build_global()
            .map_err(|e| anyhow::anyhow!("cannot start {threads} threads: {e}"))?;
    }
    let ui = progress::Ui::new(cli.quiet);
    match cli.command {
        Command::Fit(args) => commands::fit::run(args, &ui),
        Command::Personalize(args) => commands::personalize::run(args, &ui),
        Command::Eval(args) => commands::eval::run(args, &ui),
        Command::Score(args) => commands::score::run(args, &ui),
        Command::Bench(args) => bench(args, &ui),
        Command::Demo(args) => commands::demo::run(args, &ui),
        Command::Simulate(args) => commands::simulate::run(args, &ui),
        Command::Split(args) => commands::split::run(args, &ui),
        Command::Sweep(args) => commands::sweep::run(args, &ui),
        Command::Auto(args) => commands::auto::run(args, &ui),
        Command::Shots(args) => commands::shots::run(args, &ui),
        #[cfg(feature = "embed")]
        Command::Embed(args) => commands::embed::run(args, &ui),
        Command::CheckData(args) => commands::check_data::run(args, &ui),
        #[cfg(feature = "serve")]
        Command::Serve(args) => commands::serve::run(args, &ui),
    }
}

/// `lore bench`, or `lore bench serve`.
#[cfg_attr(not(feature = "serve"), allow(unused_mut))]
fn bench(mut args: commands::bench::BenchArgs, ui: &progress::Ui) -> anyhow::Result<()> {
    #[cfg(feature = "serve")]
    if let Some(commands::bench::BenchCommand::Serve(serve)) = args.command.take() {
        return commands::bench_serve::run(serve, ui);
    }
    commands::bench::run(args, ui)
}

/// Help and version go to stdout as clap renders them; usage errors become one line.
fn report_usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    match e.kind() {
        ErrorKind::DisplayHelp
        | ErrorKind::DisplayVersion
        | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = e.print();
            if e.kind() == ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            }
        }
        _ => {
            let rendered = e.render().to_string();
            // clap's first paragraph is the message; the rest is usage and a --help hint.
            let message: Vec<&str> = rendered
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let message = message.join(" ");
            let message = message.strip_prefix("error: ").unwrap_or(&message);
            eprintln!("error: {message} (see `lore --help`)");
            ExitCode::from(2)
        }
    }
}

/// Lets numbers start with a hyphen in `cmd` and its subcommands: `--seed -1` and
/// `--test-fraction -0.5` are values, as are `--lr -inf` and `--alpha -nan` for the float flags
/// (which clap would otherwise read as flags `-i`, `-n`), so that each reaches its range check.
fn accept_negative_values(mut cmd: clap::Command) -> clap::Command {
    use std::any::TypeId;
    let floats: Vec<clap::Id> = cmd
        .get_arguments()
        .filter(|a| {
            let parsed = a.get_value_parser().type_id();
            parsed == TypeId::of::<f64>() || parsed == TypeId::of::<f32>()
        })
        .map(|a| a.get_id().clone())
        .collect();
    for id in floats {
        cmd = cmd.mut_arg(id, |a| a.allow_hyphen_values(true));
    }
    let subcommands: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    for name in subcommands {
        cmd = cmd.mut_subcommand(name, accept_negative_values);
    }
    cmd.allow_negative_numbers(true)
}

/// Collapses any line breaks so that an error is exactly one line.
fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}
