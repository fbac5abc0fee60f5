//! `essl-agent config check`: validate `agent.toml` exactly as `essl-agent run --config` would, then probe each
//! terminal listed in its `[[devices]]` and print a table.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};
use essl_agent::config::{self, DeviceEntry, Secret, Sources, TOKEN_ENV};
use essl_zk::{ProbeConfig, Transport};
use futures_util::future::join_all;

/// Exit code: the configuration is invalid.
const EXIT_INVALID: u8 = 2;
/// Exit code: a listed terminal could not be probed.
const EXIT_UNREACHABLE: u8 = 3;

#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Validate a config file as `run` would (with ESSL_AGENT_TOKEN if set), then probe each `[[devices]]` entry.
    /// Exit codes: 0 all good, 2 invalid configuration, 3 a listed terminal is unreachable.
    Check {
        /// The file [default: /etc/essl-agent/agent.toml; on Windows %ProgramData%\essl-agent\agent.toml].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Deadline of each probe attempt, in milliseconds (one retry).
        #[arg(long, default_value_t = 3000)]
        timeout_ms: u64,
    },
}

pub fn main(args: ConfigArgs) -> ExitCode {
    let What::Check { config, timeout_ms } = args.what;
    let path = config.unwrap_or_else(crate::service::default_config_path);
    let sources = Sources {
        token_env: std::env::var_os(TOKEN_ENV).map(|v| Secret::new(v.to_string_lossy())),
        config_file: Some(path.clone()),
        ..Sources::default()
    };
    let loaded = match config::load(sources) {
        Ok(loaded) => loaded,
        Err(e) => {
            eprintln!("essl-agent: invalid configuration:\n{e}");
            return ExitCode::from(EXIT_INVALID);
        }
    };
    println!("{}: valid", path.display());
    println!("  server          {}", loaded.config.server);
    match loaded.config.probe_interval {
        Some(d) => println!("  probe interval  {} s", d.as_secs()),
        None => println!("  probe interval  the server's (30 s by default)"),
    }
    if !loaded.config.extra_roots.is_empty() {
        println!("  extra CA        {} certificate(s)", loaded.config.extra_roots.len());
    }
    if loaded.devices.is_empty() {
        println!("  devices         none listed (add [[devices]] entries with name and addr to probe them)");
        return ExitCode::SUCCESS;
    }

    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("essl-agent: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let timeout = Duration::from_millis(timeout_ms.max(1));
    let results = runtime.block_on(join_all(loaded.devices.iter().map(|d| probe(d, timeout))));

    println!();
    let rows: Vec<[String; 4]> = loaded
        .devices
        .iter()
        .zip(&results)
        .map(|(d, r)| {
            let transport = if d.udp { "udp" } else { "tcp" };
            let result = match r {
                Ok(rtt) => format!("reachable, handshake {:.1} ms", rtt.as_secs_f64() * 1000.0),
                Err(e) => e.clone(),
            };
            [d.name.clone(), essl_agent::addr::with_default_port(d.addr.trim()), transport.to_owned(), result]
        })
        .collect();
    let header = ["NAME", "ADDRESS", "TRANSPORT", "RESULT"];
    let width = |i: usize| rows.iter().map(|r| r[i].chars().count()).chain([header[i].len()]).max().unwrap_or(0);
    let (w0, w1, w2) = (width(0), width(1), width(2));
    println!("{:w0$}  {:w1$}  {:w2$}  {}", header[0], header[1], header[2], header[3]);
    for r in &rows {
        println!("{:w0$}  {:w1$}  {:w2$}  {}", r[0], r[1], r[2], r[3]);
    }
    let failed = results.iter().filter(|r| r.is_err()).count();
    if failed == 0 {
        ExitCode::SUCCESS
    } else {
        eprintln!(
            "essl-agent: {failed} of {} terminals unreachable from this computer; \
             `essl-agent device probe --addr ...` shows one in detail",
            results.len()
        );
        ExitCode::from(EXIT_UNREACHABLE)
    }
}

/// One probe: the handshake time, or why it failed (with a hint by error kind).
async fn probe(device: &DeviceEntry, timeout: Duration) -> Result<Duration, String> {
    let addr = essl_agent::addr::resolve(device.addr.trim()).await.map_err(|e| format!("unreachable: {e}"))?;
    let cfg = ProbeConfig {
        transport: if device.udp { Transport::Udp } else { Transport::Tcp },
        comm_key: device.comm_key,
        timeout,
        ..ProbeConfig::default()
    };
    essl_zk::probe(addr, &cfg).await.map_err(|e| {
        let what = match e.kind() {
            essl_zk::ErrorKind::Unreachable => "unreachable",
            essl_zk::ErrorKind::AuthFailed => "comm key refused",
            essl_zk::ErrorKind::Busy => "busy",
            essl_zk::ErrorKind::Protocol => "not a terminal",
        };
        format!("{what}: {e}")
    })
}
