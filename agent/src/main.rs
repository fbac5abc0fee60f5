//! `essl-agent`: the office-LAN side of essl-relay. Today: the device troubleshooting CLI.

mod device_cli;

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
    /// Talk to one terminal directly (troubleshooting; replaces `telnet IP 4370`).
    Device(device_cli::DeviceArgs),
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("essl-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Device(args) => runtime.block_on(device_cli::run(args)),
    }
}
