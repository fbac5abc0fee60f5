//! `essl-agent`: the office-LAN side of essl-relay. `run` keeps the connection to the server; `device` talks to
//! one terminal directly for troubleshooting; `service` installs the agent as a system service; `config check`
//! validates a config file and probes the terminals it lists.

mod config_cli;
mod device_cli;
mod run_cli;
mod service;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// The essl-relay agent: talks to eSSL / ZKTeco terminals on the office LAN.
#[derive(Debug, Parser)]
#[command(name = "essl-agent", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Connect to essl-server and serve its device requests until stopped.
    Run(run_cli::RunArgs),
    /// Talk to one terminal directly (troubleshooting; replaces `telnet IP 4370`).
    Device(device_cli::DeviceArgs),
    /// Install, remove, start, stop the agent as a system service (systemd on Linux, the SCM on Windows).
    Service(service::ServiceArgs),
    /// Check a config file and probe the terminals it lists.
    Config(config_cli::ConfigArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => run_cli::main(args),
        Command::Device(args) => {
            init_tracing("warn");
            let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("essl-agent: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            runtime.block_on(device_cli::run(args))
        }
        Command::Service(args) => service::main(args),
        Command::Config(args) => {
            init_tracing("warn");
            config_cli::main(args)
        }
    }
}

/// Logs to stderr; `RUST_LOG` wins over `default_filter`.
fn init_tracing(default_filter: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(default_filter))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}
