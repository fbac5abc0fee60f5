//! `essl-sim`: a simulated terminal on TCP and UDP at once.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use essl_zk::attendance::RecordLayout;
use essl_zk::user::UserLayout;
use essl_zk_sim::{Faults, Fixture, Simulator, Terminal, TerminalConfig, generate};

/// A simulated eSSL / ZKTeco terminal speaking the port-4370 protocol over TCP and UDP on one port.
#[derive(Debug, Parser)]
#[command(name = "essl-sim", version)]
struct Args {
    /// Address to listen on, TCP and UDP (port 0 picks a free port; the chosen one is printed).
    #[arg(long, default_value = "127.0.0.1:4370")]
    listen: SocketAddr,
    /// Load users and attendance from this JSON fixture.
    #[arg(long, conflicts_with_all = ["users", "records"])]
    fixture: Option<PathBuf>,
    /// Generate this many users.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Generate this many attendance records.
    #[arg(long, default_value_t = 500)]
    records: usize,
    /// Seed of the generated data.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Comm key (0 = none).
    #[arg(long, default_value_t = 0)]
    comm_key: u32,
    /// Attendance record size of the simulated firmware: 8, 16 or 40.
    #[arg(long, default_value_t = 40)]
    record_size: u8,
    /// User record size of the simulated firmware: 28 or 72.
    #[arg(long, default_value_t = 72)]
    user_size: u8,
    /// Concurrent sessions accepted; more get CMD_ACK_RETRY.
    #[arg(long, default_value_t = 8)]
    max_sessions: usize,
    /// Add a punch by a random user every interval (e.g. 2s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    punch_every: Option<Duration>,
    /// Payload bytes per CMD_DATA packet of a TCP chunk reply (default: the whole chunk in one packet; recorded
    /// terminals use 1008, for which pyzk needs --frame-gap-us 1000).
    #[arg(long, default_value_t = essl_zk::consts::MAX_CHUNK_TCP as usize)]
    tcp_packet_size: usize,
    /// Pause between the frames of a TCP chunk reply, in microseconds.
    #[arg(long, default_value_t = 0)]
    frame_gap_us: u64,
    /// Faults: latency-ms=N,drop=P,corrupt=P,cut-bulk-after=N,mute,no-events,seed=N (no-events: punches are not
    /// announced to subscribed sessions).
    #[arg(long, value_parser = Faults::parse)]
    faults: Option<Faults>,
    /// Print what the terminal holds, in the fixture format, and exit.
    #[arg(long)]
    dump: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(s.len()));
    let n: f64 = num.parse().map_err(|_| format!("bad duration {s:?} (e.g. 2s, 500ms, 1m)"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "s" | "" => n,
        "m" => n * 60.0,
        _ => return Err(format!("bad duration unit in {s:?} (ms, s or m)")),
    };
    if !(0.001..=86_400.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range (1ms..24h)"));
    }
    Ok(Duration::from_secs_f64(secs))
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("essl-sim: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("essl-sim: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> anyhow::Result<()> {
    let fixture = match &args.fixture {
        Some(path) => {
            let text = tokio::fs::read_to_string(path).await.with_context(|| format!("reading {}", path.display()))?;
            Fixture::from_json(&text).with_context(|| format!("fixture {}", path.display()))?
        }
        None => generate::generate(args.users, args.records, args.seed),
    };
    let config = TerminalConfig {
        comm_key: args.comm_key,
        record_layout: match args.record_size {
            8 => RecordLayout::Short8,
            16 => RecordLayout::Medium16,
            40 => RecordLayout::Long40,
            n => bail!("--record-size must be 8, 16 or 40, not {n}"),
        },
        user_layout: match args.user_size {
            28 => UserLayout::Short28,
            72 => UserLayout::Long72,
            n => bail!("--user-size must be 28 or 72, not {n}"),
        },
        max_sessions: args.max_sessions,
        frame_gap: Duration::from_micros(args.frame_gap_us),
        tcp_packet_size: args.tcp_packet_size.clamp(1, essl_zk::consts::MAX_CHUNK_TCP as usize),
        ..TerminalConfig::default()
    };
    let terminal = Terminal::new(&fixture, config)?;
    if args.dump {
        println!("{}", terminal.to_fixture().to_json());
        return Ok(());
    }
    if let Some(f) = args.faults {
        terminal.set_faults(f);
    }
    let sim = Simulator::start(args.listen, terminal.clone())
        .await
        .with_context(|| format!("listening on {}", args.listen))?;
    println!(
        "essl-sim listening on {} (tcp+udp): {} users, {} records, comm key {}",
        sim.addr,
        fixture.users.len(),
        terminal.record_count(),
        if args.comm_key == 0 { "none".to_string() } else { "set".to_string() }
    );
    if let Some(every) = args.punch_every {
        let t = terminal.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut n = 0usize;
            loop {
                tick.tick().await;
                let r = t.punch(n.wrapping_mul(7919), 1, (n % 2) as u8);
                tracing::info!(user_id = %r.user_id, timestamp = %r.timestamp, "punch");
                n += 1;
            }
        });
    }
    shutdown_signal().await;
    sim.stop().await;
    Ok(())
}

async fn shutdown_signal() {
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
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
