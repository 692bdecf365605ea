//! `lore serve`: personalized rewards over HTTP (lore-serve), until SIGTERM or Ctrl-C; SIGHUP
//! swaps in the model file again (re-read) and re-personalizes stored users.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use lore_serve::{RefitParams, ServeOptions, Server};

use crate::progress::Ui;

/// Serve personalized rewards over HTTP: r_u(text) = c * e(text) . V w_u for each user u.
///
/// Routes: GET /health, /info, /metrics; POST /get_reward (OpenRLHF's remote reward model,
/// user ids in `labels`), POST /v1/rewards (text or features items), POST/GET/DELETE
/// /v1/users/{id}[/preferences] (a user's pairs, stored durably, and their refitted weights),
/// POST /admin/reload (or SIGHUP) to swap in a new model file. Unknown users get the
/// population's mean weights. The first line on stdout is `listening on http://ADDR:PORT`.
///
/// With an API key (--api-key or the environment variable LORE_API_KEY) every route but
/// /health and /metrics needs `Authorization: Bearer KEY`; without one only loopback addresses
/// are served.
///
/// Example: lore serve --model model.safetensors --embedder minilm --store users.db
///          --bind 127.0.0.1:8080
#[derive(Args, Debug)]
#[command(verbatim_doc_comment)]
pub struct ServeArgs {
    /// Model file (V, prior_logits; its own users W named by user_ids are served too).
    #[arg(long, short = 'm', value_name = "FILE")]
    model: PathBuf,

    /// Embedder for text items: `minilm` or a model directory (default: the model's recorded
    /// embedder; without either only features are accepted).
    #[arg(long, value_name = "NAME|DIR")]
    embedder: Option<String>,

    /// Folder of the durable user store (created if missing; default: in memory, lost on exit).
    #[arg(long, value_name = "DIR")]
    store: Option<PathBuf>,

    /// Users file (`lore personalize` output) to import, matched by user_ids (repeatable).
    #[arg(long, value_name = "FILE")]
    users: Vec<PathBuf>,

    /// Address to listen on (`127.0.0.1:0` picks a free port).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:8080")]
    bind: SocketAddr,

    /// Key for `Authorization: Bearer KEY` (also from LORE_API_KEY); required off loopback.
    #[arg(long, value_name = "KEY")]
    api_key: Option<String>,

    /// Strength of the prior toward the population when refitting a user (as `lore
    /// personalize --prior-strength`).
    #[arg(long, value_name = "S", default_value_t = RefitParams::default().prior_strength)]
    prior_strength: f64,

    /// Adam steps of each refit (as `lore personalize --iterations`).
    #[arg(long, value_name = "N", default_value_t = RefitParams::default().iterations)]
    iterations: usize,

    /// Adam learning rate of each refit (as `lore personalize --lr`).
    #[arg(long, value_name = "L", default_value_t = RefitParams::default().lr)]
    lr: f64,
}

pub fn run(args: ServeArgs, ui: &Ui) -> Result<()> {
    let api_key = match args.api_key {
        Some(key) => Some(key),
        None => match std::env::var("LORE_API_KEY") {
            Ok(key) if !key.is_empty() => Some(key),
            Ok(_) | Err(std::env::VarError::NotPresent) => None,
            Err(std::env::VarError::NotUnicode(_)) => bail!("LORE_API_KEY is not UTF-8"),
        },
    };
    if !(args.prior_strength.is_finite() && args.prior_strength >= 0.0) {
        bail!(
            "--prior-strength {}: must be finite and >= 0",
            args.prior_strength
        );
    }
    // Before any candle work: the batching queue's workers run batches side by side with
    // candle's element-wise ops on their own thread, as `lore embed` and `lore bench serve` do.
    #[cfg(feature = "embed")]
    lore_embed::prefer_batch_parallelism();
    let mut options = ServeOptions::new(args.model);
    options.embedder = args.embedder;
    options.store = args.store;
    options.users = args.users;
    options.bind = args.bind;
    options.api_key = api_key;
    options.refit = RefitParams {
        prior_strength: args.prior_strength,
        iterations: args.iterations,
        lr: args.lr,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(serve(options, ui))
}

async fn serve(options: ServeOptions, ui: &Ui) -> Result<()> {
    let model = options.model.clone();
    let server = Server::bind(options)
        .await
        .with_context(|| format!("serving {}", model.display()))?;
    let handle = server.handle();
    let addr = server.local_addr();
    // SIGINT/SIGTERM stop the server gracefully and SIGHUP reloads: take them over from the
    // process-wide handlers (which would exit).
    reset_signals();
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())
        .context("listening for SIGHUP")?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("listening for SIGTERM")?;
    let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
        .context("listening for SIGINT")?;
    {
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "listening on http://{addr}").context("writing to stdout")?;
        stdout.flush().context("writing to stdout")?;
    }
    ui.note(format!(
        "serving {} ({})",
        model.display(),
        handle.model_version()
    ));
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let signals = {
        let handle = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = hangup.recv() => {
                        match handle.reload(None).await {
                            Ok(r) if r.swapped => eprintln!("reloaded: now serving {} (was {}); re-personalizing stored users", r.model_version, r.previous_version),
                            Ok(r) => eprintln!("reload: {} is unchanged", r.model_version),
                            Err(e) => eprintln!("error: reload refused: {}", e.message),
                        }
                    }
                    _ = terminate.recv() => break,
                    _ = interrupt.recv() => break,
                }
            }
            let _ = stop_tx.send(());
        })
    };
    server
        .run(async move {
            let _ = stop_rx.await;
        })
        .await?;
    signals.abort();
    ui.note("stopped");
    Ok(())
}

/// Restores the default action of SIGINT, SIGTERM and SIGHUP so that tokio's handlers are the
/// only ones (lore's process-wide handler would exit on them).
#[allow(unsafe_code)]
fn reset_signals() {
    for signal in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: setting a standard signal's disposition to SIG_DFL has no preconditions.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
        }
    }
}
