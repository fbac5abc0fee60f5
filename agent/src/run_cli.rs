//! `essl-agent run`: load the configuration, start logging, run the relay until Ctrl-C or SIGTERM.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use essl_agent::config::{self, Secret, Sources, TOKEN_ENV};
use tokio_util::sync::CancellationToken;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// The server's agent endpoint, wss://HOST/agent/ws (ws:// only to a loopback address).
    #[arg(long)]
    server: Option<String>,
    /// The agent token. Prefer the ESSL_AGENT_TOKEN environment variable or `token` in the config file: other
    /// local users can read command lines. Precedence: this flag, then ESSL_AGENT_TOKEN, then the file.
    #[arg(long)]
    token: Option<String>,
    /// A TOML file with any of: server, token, ca_file, probe_interval_secs, outbox, outbox_max_mb,
    /// sync_interval_secs, [log] level.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A PEM file with an extra CA to trust besides the operating system's store (self-hosted servers).
    #[arg(long)]
    ca_file: Option<PathBuf>,
    /// How often to probe the site's devices and report to the server, the outbox's fill included (e.g. 30s,
    /// 2m); default: what the server says (30 s).
    #[arg(long)]
    probe_interval: Option<String>,
    /// The outbox file, where records wait until the server confirmed it stored them; default:
    /// essl-agent-outbox.db beside the config file, or in the working directory. Bounded by outbox_max_mb (a
    /// warning past 80 %; when full, new reads wait on the terminal).
    #[arg(long)]
    outbox: Option<PathBuf>,
}

pub fn main(args: RunArgs) -> ExitCode {
    let token_env = std::env::var_os(TOKEN_ENV).map(|v| Secret::new(v.to_string_lossy()));
    let sources = Sources {
        server: args.server,
        token_flag: args.token.map(Secret::new),
        token_env,
        ca_file: args.ca_file,
        probe_interval: args.probe_interval,
        config_file: args.config,
        outbox: args.outbox,
    };
    let loaded = match config::load(sources) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("essl-agent: invalid configuration:\n{e}");
            return ExitCode::from(2);
        }
    };
    crate::init_tracing(loaded.log_level.as_deref().unwrap_or("info"));
    // One crypto provider, chosen explicitly: with two in the dependency graph rustls would not pick one.
    let _ = rustls::crypto::ring::default_provider().install_default();

    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("essl-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        tokio::spawn(stop_on_signal(shutdown.clone()));
        tracing::info!(server = %loaded.config.server, version = env!("CARGO_PKG_VERSION"), "essl-agent starting");
        match essl_agent::relay::run(loaded.config, shutdown).await {
            Ok(()) => {
                tracing::info!("essl-agent stopped");
                ExitCode::SUCCESS
            }
            Err(error) => {
                tracing::error!(%error, "essl-agent cannot run");
                ExitCode::FAILURE
            }
        }
    })
}

async fn stop_on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM; Ctrl-C only");
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
    tracing::info!("shutting down");
    shutdown.cancel();
}
