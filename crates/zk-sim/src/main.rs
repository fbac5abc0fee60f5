//! `essl-sim`: a simulated terminal on TCP and UDP at once, or (`essl-sim push`) one that calls an ADMS server.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use essl_zk::attendance::RecordLayout;
use essl_zk::user::UserLayout;
use essl_zk_sim::{Faults, Fixture, Simulator, Terminal, TerminalConfig, generate};

/// A simulated eSSL / ZKTeco terminal speaking the port-4370 protocol over TCP and UDP on one port; or, with
/// `push`, one that calls an ADMS (iclock) server over HTTP.
#[derive(Debug, Parser)]
#[command(name = "essl-sim", version, args_conflicts_with_subcommands = true)]
struct Args {
    #[command(subcommand)]
    mode: Option<Mode>,
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

#[derive(Debug, Subcommand)]
enum Mode {
    /// Push mode: call an ADMS (iclock) server as a terminal set to "Cloud Server" does: handshake, backlog upload
    /// in batches (each sent again until the server answers OK:<n>), realtime punches, a poll every Delay seconds,
    /// queued commands executed against this terminal's own data.
    Push(PushArgs),
}

#[derive(Debug, clap::Args)]
struct PushArgs {
    /// The server, http://HOST:PORT (loopback or LAN; plain HTTP, as most terminals speak).
    #[arg(long)]
    server: String,
    /// Serial number sent as SN.
    #[arg(long)]
    serial: String,
    /// Secret path segment of the site (the server's POST /api/push/secret): calls /iclock/s/<secret>/...
    #[arg(long)]
    secret: Option<String>,
    /// Load users and the backlog of punches from this JSON fixture.
    #[arg(long, conflicts_with_all = ["users", "records"])]
    fixture: Option<PathBuf>,
    /// Generate this many users.
    #[arg(long, default_value_t = 20)]
    users: usize,
    /// Generate this many punches as the backlog.
    #[arg(long, default_value_t = 500)]
    records: usize,
    /// Seed of the generated data and of random faults.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// A realtime punch by a random user every interval (e.g. 2s, 500ms).
    #[arg(long, value_parser = parse_duration)]
    punch_every: Option<Duration>,
    /// 2: attendance PUSH (ATTLOG, OK:<n>); 3: security PUSH (registry, push, rtlog).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(2..=3))]
    dialect: u8,
    /// Records per backlog upload.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// Send Stamp=9999 on every upload (new firmware) instead of a resume marker.
    #[arg(long)]
    constant_stamp: bool,
    /// User names in GBK, language=83 (Chinese-language firmware).
    #[arg(long)]
    gbk: bool,
    /// CRLF line ends.
    #[arg(long)]
    crlf: bool,
    /// Extra and empty trailing ATTLOG fields.
    #[arg(long)]
    extra_fields: bool,
    /// Probability (0..1) of losing the server's acknowledgement: the batch is sent again.
    #[arg(long, default_value_t = 0.0)]
    drop_acks: f64,
    /// Seconds the terminal's clock is off (may be negative).
    #[arg(long, default_value_t = 0, allow_hyphen_values = true)]
    clock_drift: i64,
    /// Label bodies application/x-www-form-urlencoded, as some firmware does.
    #[arg(long)]
    form_content_type: bool,
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
    if let Some(Mode::Push(push)) = args.mode {
        return run_push(push).await;
    }
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

async fn run_push(args: PushArgs) -> anyhow::Result<()> {
    use essl_zk_sim::push::{Dialect, PushConfig, PushTerminal};
    let fixture = match &args.fixture {
        Some(path) => {
            let text = tokio::fs::read_to_string(path).await.with_context(|| format!("reading {}", path.display()))?;
            Fixture::from_json(&text).with_context(|| format!("fixture {}", path.display()))?
        }
        None => generate::generate(args.users, args.records, args.seed),
    };
    let Some(hostport) = args.server.strip_prefix("http://") else {
        bail!("--server must be http://HOST:PORT (terminals in push mode speak plain HTTP here)");
    };
    let hostport = hostport.trim_end_matches('/');
    let server = tokio::net::lookup_host(hostport)
        .await
        .with_context(|| format!("resolving {hostport}"))?
        .next()
        .with_context(|| format!("{hostport} resolves to no address"))?;
    if !(0.0..=1.0).contains(&args.drop_acks) {
        bail!("--drop-acks must be between 0 and 1");
    }
    if args.serial.is_empty() || args.serial.len() > 64 || !args.serial.bytes().all(|b| b.is_ascii_alphanumeric()) {
        bail!("--serial must be 1 to 64 letters or digits");
    }
    let mut config = PushConfig::new(server, &args.serial);
    if let Some(secret) = &args.secret {
        config.prefix = format!("/iclock/s/{secret}/");
    }
    config.dialect = if args.dialect == 3 { Dialect::Acc } else { Dialect::Att };
    config.batch = args.batch.max(1);
    config.constant_stamp = args.constant_stamp;
    config.gbk = args.gbk;
    config.crlf = args.crlf;
    config.extra_fields = args.extra_fields;
    config.drop_acks = args.drop_acks;
    config.clock_drift = jiff::SignedDuration::from_secs(args.clock_drift);
    config.form_content_type = args.form_content_type;
    config.seed = args.seed;
    let terminal = PushTerminal::start(&fixture, config);
    println!(
        "essl-sim push: serial {} calling {server}: {} users, {} punches to upload",
        args.serial,
        fixture.users.len(),
        fixture.attendance.len()
    );
    let mut tick = args.punch_every.map(tokio::time::interval);
    if let Some(t) = tick.as_mut() {
        t.tick().await;
    }
    let mut n = 0usize;
    let stop = shutdown_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            () = &mut stop => break,
            _ = async { match tick.as_mut() { Some(t) => { t.tick().await; } None => std::future::pending::<()>().await } } => {
                let p = terminal.punch(n.wrapping_mul(7919), 15, (n % 2) as u8);
                tracing::info!(user_id = %p.user_id, timestamp = %p.timestamp, "punch");
                n += 1;
            }
        }
    }
    let stats = terminal.stats();
    terminal.stop().await;
    println!(
        "essl-sim push: {} uploads ({} acknowledged), {} polls, {} commands, {} failures",
        stats.uploads, stats.uploads_acked, stats.polls, stats.commands, stats.failures
    );
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
