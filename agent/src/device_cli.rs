//! `essl-agent device ...`: read a terminal directly and print what it holds, as tables or as JSON lines in the
//! simulator's fixture format. Exit codes tell scripts what went wrong.

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use essl_agent::addr::with_default_port;
use essl_zk::attendance::{AttendanceRecord, RecordTime};
use essl_zk::user::User;
use essl_zk::{ClientConfig, ErrorKind, ProbeConfig, Transport, ZkClient, ZkError};
use jiff::civil::DateTime;
use serde_json::json;

/// Exit code: the terminal did not answer.
pub const EXIT_UNREACHABLE: u8 = 3;
/// Exit code: the terminal refused the comm key.
pub const EXIT_AUTH: u8 = 4;
/// Exit code: the terminal answered something we do not understand, or refused the command.
pub const EXIT_PROTOCOL: u8 = 5;
/// Exit code: the terminal is busy (too many sessions); try again later.
pub const EXIT_BUSY: u8 = 6;

#[derive(Debug, Args)]
pub struct DeviceArgs {
    #[command(subcommand)]
    what: What,
    /// Terminal address, HOST:PORT (port 4370 if omitted).
    #[arg(long, global = true, default_value = "")]
    addr: String,
    /// Use UDP instead of TCP.
    #[arg(long, global = true)]
    udp: bool,
    /// Comm key set on the terminal (0 = none).
    #[arg(long, global = true, default_value_t = 0)]
    comm_key: u32,
    /// Deadline for connecting and for each reply, in milliseconds [default: 10000; 3000 for probe].
    #[arg(long, global = true)]
    timeout_ms: Option<u64>,
    /// Print JSON (one object per line for users and attendance) instead of tables.
    #[arg(long, global = true)]
    json: bool,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Serial number, name, platform, firmware, MAC and counters.
    Info,
    /// The terminal's clock (and its drift from this computer's UTC clock); `--set` sets it.
    Time {
        /// New wall-clock time, YYYY-MM-DDTHH:MM:SS (the terminal's local time).
        #[arg(long)]
        set: Option<String>,
    },
    /// All enrolled users.
    Users,
    /// All attendance records.
    Attendance,
    /// Open and close a session, report the round-trip time (3 s deadline, one retry by default).
    Probe,
}

pub async fn run(args: DeviceArgs) -> ExitCode {
    match execute(&args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::Usage(msg)) => {
            eprintln!("essl-agent: {msg}");
            ExitCode::from(2)
        }
        Err(Failure::Zk(e)) => {
            let (code, hint) = match e.kind() {
                ErrorKind::Unreachable => (
                    EXIT_UNREACHABLE,
                    "check the address, that this computer is on the terminal's network, and that port 4370 is open (try --udp for UDP-only terminals)",
                ),
                ErrorKind::AuthFailed => (EXIT_AUTH, "check the comm key (terminal menu: Comm. > Comm Key)"),
                ErrorKind::Busy => (EXIT_BUSY, "the terminal is serving other sessions; try again shortly"),
                ErrorKind::Protocol => (EXIT_PROTOCOL, "the terminal answered something unexpected"),
            };
            eprintln!("essl-agent: {e}\nhint: {hint}");
            ExitCode::from(code)
        }
    }
}

enum Failure {
    Usage(String),
    Zk(ZkError),
}

impl From<ZkError> for Failure {
    fn from(e: ZkError) -> Self {
        Failure::Zk(e)
    }
}

async fn resolve(addr: &str) -> Result<SocketAddr, Failure> {
    if addr.is_empty() {
        return Err(Failure::Usage("--addr HOST:PORT is required".into()));
    }
    match tokio::net::lookup_host(with_default_port(addr)).await {
        Ok(mut addrs) => addrs.next().ok_or_else(|| Failure::Usage(format!("{addr}: no address found"))),
        Err(e) => Err(Failure::Zk(ZkError::Connect { addr: addr.to_string(), source: e })),
    }
}

async fn execute(args: &DeviceArgs) -> Result<(), Failure> {
    let addr = resolve(&args.addr).await?;
    let transport = if args.udp { Transport::Udp } else { Transport::Tcp };
    let timeout = |default_ms: u64| Duration::from_millis(args.timeout_ms.unwrap_or(default_ms).max(1));
    if let What::Probe = args.what {
        let cfg = ProbeConfig { transport, comm_key: args.comm_key, timeout: timeout(3_000), ..ProbeConfig::default() };
        let rtt = essl_zk::probe(addr, &cfg).await?;
        let ms = rtt.as_secs_f64() * 1000.0;
        if args.json {
            print_line(&json!({"addr": addr.to_string(), "reachable": true, "rtt_ms": ms}));
        } else {
            println!("{addr} reachable, handshake {ms:.1} ms");
        }
        return Ok(());
    }
    let cfg = ClientConfig { transport, comm_key: args.comm_key, timeout: timeout(10_000), ..ClientConfig::default() };
    let mut client = ZkClient::connect(addr, cfg).await?;
    match &args.what {
        What::Info => {
            let info = client.device_info().await?;
            if args.json {
                print_line(&json!({
                    "serial_number": info.serial_number,
                    "device_name": info.device_name,
                    "platform": info.platform,
                    "firmware": info.firmware,
                    "mac": info.mac,
                    "users": info.sizes.users,
                    "records": info.sizes.records,
                    "fingerprints": info.sizes.fingers,
                }));
            } else {
                let s = &info.sizes;
                let rows = [
                    ("serial number", info.serial_number.clone()),
                    ("device name", info.device_name.clone()),
                    ("platform", info.platform.clone()),
                    ("firmware", info.firmware.clone()),
                    ("MAC", info.mac.clone()),
                    ("users", format!("{} of {}", s.users, s.users_cap)),
                    ("fingerprints", format!("{} of {}", s.fingers, s.fingers_cap)),
                    ("records", format!("{} of {}", s.records, s.records_cap)),
                    ("admins", s.admins.to_string()),
                ];
                for (k, v) in rows {
                    println!("{k:<14} {}", sanitize(&v));
                }
            }
        }
        What::Time { set } => {
            if let Some(text) = set {
                let t = DateTime::strptime("%Y-%m-%dT%H:%M:%S", text)
                    .map_err(|e| Failure::Usage(format!("--set {text:?}: want YYYY-MM-DDTHH:MM:SS ({e})")))?;
                client.set_time(t).await?;
            }
            let t = client.get_time().await?;
            if args.json {
                print_line(&json!({"time": fmt_time(t)}));
            } else {
                let utc = jiff::tz::TimeZone::UTC.to_datetime(jiff::Timestamp::now());
                let drift = utc.duration_until(t).as_secs();
                println!(
                    "terminal time {}  (this computer: {} UTC; difference {drift:+} s)",
                    fmt_time(t),
                    fmt_time(utc)
                );
            }
        }
        What::Users => {
            let (_, users) = client.read_users().await?;
            print_users(&users, args.json);
        }
        What::Attendance => {
            let started = Instant::now();
            let read = client.read_attendance(&mut |_, _| {}).await?;
            print_attendance(&read.records, args.json);
            tracing::info!(records = read.records.len(), layout = ?read.layout, elapsed_ms = started.elapsed().as_millis() as u64, "attendance read");
        }
        What::Probe => {}
    }
    if let Err(error) = client.disconnect().await {
        tracing::debug!(%error, "CMD_EXIT not acknowledged");
    }
    Ok(())
}

fn fmt_time(t: DateTime) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Text from terminals is untrusted: no control characters reach the operator's terminal.
fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_control() { '?' } else { c }).collect()
}

fn print_line(v: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{v}");
}

fn print_users(users: &[User], as_json: bool) {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if as_json {
        for u in users {
            let v = json!({"uid": u.uid, "user_id": u.user_id, "name": u.name, "privilege": u.privilege,
                "password": u.password, "card": u.card, "group_id": u.group_id});
            let _ = writeln!(out, "{v}");
        }
    } else {
        let _ = writeln!(
            out,
            "{:>5}  {:<10} {:<24} {:>9} {:>10} {:>5}",
            "uid", "user id", "name", "privilege", "card", "group"
        );
        for u in users {
            let _ = writeln!(
                out,
                "{:>5}  {:<10} {:<24} {:>9} {:>10} {:>5}",
                u.uid,
                sanitize(&u.user_id),
                sanitize(&u.name),
                u.privilege,
                u.card,
                sanitize(&u.group_id)
            );
        }
        let _ = writeln!(out, "{} users", users.len());
    }
    let _ = out.flush();
}

fn print_attendance(records: &[AttendanceRecord], as_json: bool) {
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    if as_json {
        for r in records {
            // The fixture format: a time field that is no date is given as `raw_time` instead of `timestamp`.
            let v = match r.timestamp {
                RecordTime::Valid(t) => json!({"uid": r.uid, "user_id": r.user_id, "timestamp": fmt_time(t),
                    "status": r.status, "punch": r.punch}),
                RecordTime::Invalid(raw) => json!({"uid": r.uid, "user_id": r.user_id, "raw_time": raw,
                    "status": r.status, "punch": r.punch}),
            };
            let _ = writeln!(out, "{v}");
        }
    } else {
        let _ = writeln!(out, "{:>5}  {:<10} {:<19} {:>6} {:>5}", "uid", "user id", "time", "status", "punch");
        for r in records {
            let _ = writeln!(
                out,
                "{:>5}  {:<10} {:<19} {:>6} {:>5}",
                r.uid,
                sanitize(&r.user_id),
                r.timestamp.to_string(),
                r.status,
                r.punch
            );
        }
        let _ = writeln!(out, "{} records", records.len());
    }
    let _ = out.flush();
}
