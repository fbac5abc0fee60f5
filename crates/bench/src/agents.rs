//! Many idle agents on one server: N real agent WebSockets (real tokens, `Hello`/`Welcome`, heartbeats at the
//! probe interval the server gives, the server's pings answered), ramped up with bounded concurrency from source
//! addresses spread over 127.0.0.0/8, while one real office (a simulated terminal and a real agent) keeps serving
//! `POST /api/essl/check-device`. For each count (ascending, the connections of the previous count kept) it
//! prints: connections made, refused and failed; the server's RSS before the first agent and with all of them,
//! per agent; the server's CPU over an idle window; the lag of the bench agents' own pings (p50/p99/max, and how
//! many went unanswered); the server's pings each agent received against the expected number; and check-device
//! latency for the office's one device while they are all connected.
//!
//! By default everything is started here, on loopback: the `essl-server` binary next to this one (`serve` as a
//! child process, its open-file limit raised to the hard limit) on a fresh SQLite file (or `--database-url`),
//! the tokens made with `essl-server token create-agents`. With `--server URL` an already running server is used
//! instead (`--tokens FILE` and `--server-pid` then; `--admin-token` for the office).
//!
//! `--instances N` (PostgreSQL) starts N servers on the one database: agent `i` connects to instance `i % N`, as a
//! load balancer spreads them; memory and CPU are the instances' sums; the office's agent is on the last instance,
//! and check-device is measured there (local), on the first instance (forwarded through PostgreSQL), and through
//! the test load balancer in front of all of them (a fresh connection each, so they alternate).

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use essl_wire::{AgentMsg, OutboxFill, ServerMsg};
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::Semaphore;
use tokio::task::{JoinError, JoinSet};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};
use tokio_util::sync::CancellationToken;

use crate::stats::percentile;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Agents to hold connected; a list (`1000,10000`) measures each count in turn, ascending, adding
    /// connections to those already open.
    #[arg(long, value_delimiter = ',', default_value = "1000", value_parser = clap::value_parser!(u32).range(1..))]
    count: Vec<u32>,
    /// Idle window at each count over which CPU and heartbeats are measured, in seconds.
    #[arg(long, default_value_t = 30)]
    seconds: u64,
    /// check-device requests measured at each count (after 20 unmeasured ones); 0 skips the office.
    #[arg(long, default_value_t = 500)]
    samples: usize,
    /// Each bench agent pings the server this often (seconds) and times the pong.
    #[arg(long, default_value_t = 5)]
    ping_seconds: u64,
    /// Connections being opened at once during the ramp.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Use this running server (http://IP:PORT) instead of starting one.
    #[arg(long, value_name = "URL", requires_all = ["tokens", "server_pid"])]
    server: Option<String>,
    /// With --server: agent tokens, one per line (`essl-server token create-agents --out FILE`).
    #[arg(long, value_name = "FILE", requires = "server")]
    tokens: Option<PathBuf>,
    /// With --server: its process id, to read its memory and CPU time from /proc.
    #[arg(long, value_name = "PID", requires = "server")]
    server_pid: Option<u32>,
    /// With --server: an admin API token, to register the office's device and agent (no office without it).
    #[arg(long, env = "ESSL_BENCH_ADMIN_TOKEN", hide_env_values = true, requires = "server")]
    admin_token: Option<String>,
    /// Database of the started server [default: a fresh SQLite file]; a PostgreSQL database you can discard
    /// (agents and a site are added to it).
    #[arg(long, value_name = "URL", conflicts_with = "server")]
    database_url: Option<String>,
    /// The `essl-server` binary to start [default: the one next to this binary].
    #[arg(long, value_name = "FILE", conflicts_with = "server")]
    server_bin: Option<PathBuf>,
    /// Servers to start on the one database (more than one needs a PostgreSQL --database-url): the agents are
    /// spread over them, and check-device is also measured on an instance without the office's agent.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=4), conflicts_with = "server")]
    instances: u8,
}

/// The server's ping interval (its default hub timing, which the started server runs with).
fn server_ping_interval() -> Duration {
    essl_server::hub::HubConfig::default().ping_interval
}

/// File descriptors this process needs besides one per agent (runtime, office, HTTP client, simulator).
const SPARE_FDS: u64 = 100;

pub async fn run(args: Args) -> anyhow::Result<()> {
    let mut counts = args.count.clone();
    counts.sort_unstable();
    counts.dedup();
    let most = u64::from(*counts.last().context("no --count")?);
    let own = open_files_limit("self").context("reading this process's open-file limit")?;
    ensure!(
        most + SPARE_FDS <= own,
        "--count {most} needs about {} open files in this process, and its limit is {own} (RLIMIT_NOFILE; raise it \
         with `ulimit -n`, up to the hard limit)",
        most + SPARE_FDS
    );
    ensure!(
        args.instances == 1 || args.database_url.as_deref().is_some_and(|u| u.starts_with("postgres")),
        "--instances {} needs a PostgreSQL --database-url (several instances share one PostgreSQL database)",
        args.instances
    );
    let server = match &args.server {
        Some(url) => Target {
            servers: vec![Instance {
                url: url.trim_end_matches('/').to_owned(),
                pid: args.server_pid.context("--server-pid")?,
            }],
            tokens: args.tokens.clone().context("--tokens")?,
            admin: args.admin_token.clone(),
            spawned: Vec::new(),
            dir: None,
        },
        None => Target::spawn(&args, most).await?,
    };
    let result = measure(&args, &counts, &server).await;
    server.stop().await;
    result
}

/// The servers under test (one, unless `--instances`).
struct Target {
    servers: Vec<Instance>,
    tokens: PathBuf,
    admin: Option<String>,
    /// The servers this bench started (none with `--server`), and the directory of their database, tokens and logs.
    spawned: Vec<tokio::process::Child>,
    dir: Option<PathBuf>,
}

/// One server: `http://IP:PORT` and its process.
struct Instance {
    url: String,
    pid: u32,
}

impl Instance {
    fn addr(&self) -> anyhow::Result<SocketAddr> {
        let addr: SocketAddr = self
            .url
            .strip_prefix("http://")
            .context("--server must be http://IP:PORT (loopback, no TLS)")?
            .parse()
            .context("--server must be http://IP:PORT")?;
        ensure!(addr.ip().is_loopback(), "the bench only runs on loopback: {addr}");
        Ok(addr)
    }
}

impl Target {
    async fn spawn(args: &Args, most: u64) -> anyhow::Result<Target> {
        let bin = match &args.server_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name(format!("essl-server{}", std::env::consts::EXE_SUFFIX)),
        };
        ensure!(
            bin.is_file(),
            "no server binary at {} (build it: cargo build --release -p essl-server, or give --server-bin)",
            bin.display()
        );
        let dir = std::env::temp_dir().join(format!("essl-bench-agents-{}", uuid::Uuid::new_v4().simple()));
        tokio::fs::create_dir_all(&dir).await?;
        let db = match &args.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}", dir.join("bench.db").display()),
        };
        let admin =
            cli(&bin, &["token", "create", "--role", "admin", "--name", "bench", "--database-url", &db]).await?;
        let tokens = dir.join("agent-tokens");
        let started = Instant::now();
        let (count, out) = (most.to_string(), tokens.to_string_lossy().into_owned());
        let site = "Bench idle agents";
        let made =
            ["token", "create-agents", "--count", &count, "--site", site, "--name-prefix", "idle", "--out", &out];
        cli(&bin, &[&made[..], &["--database-url", &db]].concat()).await?;
        println!(
            "agent tokens: {most} made in {:.1} s (essl-server token create-agents)",
            started.elapsed().as_secs_f64()
        );
        let mut target = Target { servers: Vec::new(), tokens, admin: Some(admin), spawned: Vec::new(), dir: None };
        for i in 0..args.instances {
            let addr = free_port()?;
            let log = std::fs::File::create(dir.join(format!("server-{i}.log")))?;
            // The shell raises the soft open-file limit to the hard one and then becomes the server (same pid).
            let child = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(r#"ulimit -n "$(ulimit -H -n)" && exec "$0" serve --listen "$1" --database-url "$2""#)
                .arg(&bin)
                .arg(addr.to_string())
                .arg(&db)
                .env("RUST_LOG", "warn")
                .env_remove("ESSL_CONFIG")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .kill_on_drop(true)
                .spawn()
                .context("starting the server")?;
            let pid = child.id().context("the server's pid")?;
            target.spawned.push(child);
            target.servers.push(Instance { url: format!("http://{addr}"), pid });
        }
        target.dir = Some(dir);
        for server in &target.servers {
            wait_ready(&server.url).await?;
        }
        Ok(target)
    }

    async fn stop(self) {
        // SIGTERM (their graceful shutdown), then SIGKILL if one lingers.
        for (server, mut child) in self.servers.iter().zip(self.spawned) {
            let _ = tokio::process::Command::new("kill").arg("-TERM").arg(server.pid.to_string()).status().await;
            if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
                let _ = child.kill().await;
            }
        }
        if let Some(dir) = self.dir {
            let _ = tokio::fs::remove_dir_all(&dir).await;
        }
    }

    /// The servers' summed resident memory, KiB.
    fn rss_kib(&self) -> anyhow::Result<u64> {
        self.servers.iter().map(|s| rss_kib(s.pid)).sum()
    }

    /// The servers' summed CPU time, clock ticks.
    fn cpu_ticks(&self) -> anyhow::Result<u64> {
        self.servers.iter().map(|s| cpu_ticks(s.pid)).sum()
    }
}

async fn wait_ready(url: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Ok(r) = http.get(format!("{url}/readyz")).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        ensure!(Instant::now() < deadline, "the server at {url} did not become ready within 30 s");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Runs an `essl-server` command and answers its standard output, trimmed.
async fn cli(bin: &Path, args: &[&str]) -> anyhow::Result<String> {
    let out = tokio::process::Command::new(bin)
        .args(args)
        .env("RUST_LOG", "warn")
        .env_remove("ESSL_CONFIG")
        .env_remove("ESSL_DATABASE_URL")
        .output()
        .await
        .with_context(|| format!("running {}", bin.display()))?;
    ensure!(
        out.status.success(),
        "essl-server {} failed: {}",
        args.first().copied().unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// A loopback address and port nothing listens on now (the server is told to listen there).
fn free_port() -> anyhow::Result<SocketAddr> {
    let probe = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(probe.local_addr()?)
}

/// The soft `Max open files` of a process (`self` or a pid), from /proc.
fn open_files_limit(pid: &str) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    let line = text.lines().find(|l| l.starts_with("Max open files")).context("no `Max open files` line")?;
    let soft = line.trim_start_matches("Max open files").split_whitespace().next().context("no soft limit")?;
    Ok(if soft == "unlimited" { u64::MAX } else { soft.parse()? })
}

/// Resident memory of a process in KiB (`VmRSS` of /proc/PID/status).
fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).context("the server's /proc status")?;
    let line = text.lines().find(|l| l.starts_with("VmRSS:")).context("no VmRSS")?;
    Ok(line.split_whitespace().nth(1).context("VmRSS value")?.parse()?)
}

/// User plus system CPU time of a process (/proc/PID/stat), in clock ticks.
fn cpu_ticks(pid: u32) -> anyhow::Result<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("the server's /proc stat")?;
    // The command name may hold spaces: the fields counted from after its closing parenthesis, state first.
    let rest = &text[text.rfind(')').context("stat format")? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let (utime, stime): (u64, u64) =
        (fields.get(11).context("utime")?.parse()?, fields.get(12).context("stime")?.parse()?);
    Ok(utime + stime)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux if it cannot be asked).
async fn clock_ticks() -> f64 {
    let out = tokio::process::Command::new("getconf").arg("CLK_TCK").output().await;
    out.ok().and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok()).unwrap_or(100.0)
}

/// What the bench agents count, shared by all of them.
#[derive(Default)]
struct Tally {
    /// Pings and heartbeats are counted, and pong lags kept, only while this is set (the idle window).
    measuring: AtomicBool,
    pings_sent: AtomicU64,
    pongs: AtomicU64,
    /// Pong lags in milliseconds, of pings sent while measuring.
    lags: Mutex<Vec<f64>>,
    server_pings: AtomicU64,
    heartbeats: AtomicU64,
    /// Connections that ended before the bench closed them.
    dropped: AtomicU64,
    drop_reason: Mutex<Option<String>>,
}

impl Tally {
    fn reset(&self) {
        for c in [&self.pings_sent, &self.pongs, &self.server_pings, &self.heartbeats] {
            c.store(0, Ordering::Relaxed);
        }
        if let Ok(mut lags) = self.lags.lock() {
            lags.clear();
        }
    }

    fn dropped(&self, why: String) {
        self.dropped.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut first) = self.drop_reason.lock() {
            first.get_or_insert(why);
        }
    }
}

/// Why a connection was not made.
enum Failure {
    /// The server answered the upgrade with an HTTP error.
    Refused(String),
    /// TCP, the handshake, or no `Welcome` in time.
    Failed(String),
}

/// One WebSocket client config for the bench agents: small buffers (grown on demand), so that 20,000 of them fit
/// in this process too.
fn ws_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(essl_wire::MAX_MESSAGE_BYTES + 64)
        .max_message_size(Some(essl_wire::MAX_MESSAGE_BYTES))
        .max_frame_size(Some(essl_wire::MAX_MESSAGE_BYTES))
}

/// Agent `i`'s source address: 64 agents per address from 127.1.0.1 up, so no address runs out of ports.
fn source(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(127, 1, 0, 1)) + (i / 64) as u32)
}

/// A connected agent: its socket, its heartbeat interval, and when its `Welcome` came.
type Connected = (WebSocketStream<TcpStream>, Duration, Instant);

/// Connects, says `Hello` and waits for `Welcome`; answers the socket, the heartbeat interval and when the
/// `Welcome` came.
async fn connect(server: SocketAddr, url: &str, token: &str, from: Ipv4Addr) -> Result<Connected, Failure> {
    let failed = |what: &str, e: &dyn std::fmt::Display| Failure::Failed(format!("{what}: {e}"));
    let socket = TcpSocket::new_v4().map_err(|e| failed("socket", &e))?;
    socket.bind(SocketAddr::new(from.into(), 0)).map_err(|e| failed("bind", &e))?;
    let tcp = socket.connect(server).await.map_err(|e| failed("connect", &e))?;
    tcp.set_nodelay(true).map_err(|e| failed("nodelay", &e))?;
    let mut request = url.into_client_request().map_err(|e| failed("request", &e))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {token}")).map_err(|e| failed("token", &e))?;
    request.headers_mut().insert("authorization", bearer);
    let (mut ws, _) =
        tokio_tungstenite::client_async_with_config(request, tcp, Some(ws_config())).await.map_err(|e| match e {
            WsError::Http(r) => Failure::Refused(format!("HTTP {}", r.status())),
            other => failed("upgrade", &other),
        })?;
    let hello = AgentMsg::Hello {
        min_protocol: essl_wire::MIN_PROTOCOL_VERSION,
        max_protocol: essl_wire::PROTOCOL_VERSION,
        agent_version: format!("essl-bench {}", env!("CARGO_PKG_VERSION")),
        hostname: format!("bench-{from}"),
        os: std::env::consts::OS.to_owned(),
    };
    let bytes = essl_wire::encode_agent(&hello).map_err(|e| failed("encode", &e))?;
    ws.send(Message::Binary(bytes.into())).await.map_err(|e| failed("hello", &e))?;
    let welcome = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(frame) = ws.next().await {
            match frame {
                Ok(Message::Binary(b)) => {
                    return match essl_wire::decode_server(&b) {
                        Ok(ServerMsg::Welcome { probe_interval_ms, .. }) => Ok(probe_interval_ms),
                        Ok(_) => Err("a message before Welcome".to_owned()),
                        Err(e) => Err(format!("undecodable: {e}")),
                    };
                }
                Ok(Message::Close(c)) => return Err(format!("closed: {c:?}")),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("closed before Welcome".to_owned())
    })
    .await;
    match welcome {
        Ok(Ok(ms)) => Ok((ws, Duration::from_millis(ms.max(1000)), Instant::now())),
        Ok(Err(e)) => Err(Failure::Failed(format!("welcome: {e}"))),
        Err(_) => Err(Failure::Failed("no Welcome within 30 s".into())),
    }
}

/// An idle agent until `stop`: answers the server's pings (tungstenite queues the pong and sends it with the next
/// read), sends a `Reachability` heartbeat with no reports and an outbox fill every `heartbeat`, and pings the
/// server every `ping_every` to time the pong.
async fn idle(
    ws: WebSocketStream<TcpStream>,
    heartbeat: Duration,
    ping_every: Duration,
    tally: Arc<Tally>,
    stop: CancellationToken,
) {
    let (mut sink, mut stream) = ws.split();
    let start = tokio::time::Instant::now();
    // Random phases, so 20,000 agents do not all beat in the same millisecond.
    let mut beat = tokio::time::interval_at(start + heartbeat.mul_f64(fastrand::f64()), heartbeat);
    let mut ping = tokio::time::interval_at(start + ping_every.mul_f64(fastrand::f64()), ping_every);
    let fill = OutboxFill { bytes: 4096, limit_bytes: 64 << 20, pending_records: 0, pending_batches: 0 };
    let heartbeat_msg = essl_wire::encode_agent(&AgentMsg::Reachability { reports: Vec::new(), outbox: Some(fill) });
    let Ok(heartbeat_msg) = heartbeat_msg else { return };
    // The ping in flight: its number, when it was sent, and whether it counts (sent while measuring).
    let mut outstanding: Option<(u64, Instant, bool)> = None;
    let mut seq = 0u64;
    let why = loop {
        tokio::select! {
            _ = stop.cancelled() => {
                let _ = sink.send(Message::Close(None)).await;
                return;
            }
            _ = beat.tick() => {
                if tally.measuring.load(Ordering::Relaxed) {
                    tally.heartbeats.fetch_add(1, Ordering::Relaxed);
                }
                if let Err(e) = sink.send(Message::Binary(heartbeat_msg.clone().into())).await {
                    break format!("sending a heartbeat: {e}");
                }
            }
            _ = ping.tick() => {
                seq += 1;
                let counted = tally.measuring.load(Ordering::Relaxed);
                if counted {
                    tally.pings_sent.fetch_add(1, Ordering::Relaxed);
                }
                outstanding = Some((seq, Instant::now(), counted));
                if let Err(e) = sink.send(Message::Ping(seq.to_be_bytes().to_vec().into())).await {
                    break format!("sending a ping: {e}");
                }
            }
            frame = stream.next() => match frame {
                Some(Ok(Message::Pong(payload))) => {
                    if let Some((n, sent, counted)) = outstanding
                        && payload.as_ref() == n.to_be_bytes()
                    {
                        outstanding = None;
                        if counted {
                            tally.pongs.fetch_add(1, Ordering::Relaxed);
                            if let Ok(mut lags) = tally.lags.lock() {
                                lags.push(sent.elapsed().as_secs_f64() * 1e3);
                            }
                        }
                    }
                }
                Some(Ok(Message::Ping(_))) => {
                    if tally.measuring.load(Ordering::Relaxed) {
                        tally.server_pings.fetch_add(1, Ordering::Relaxed);
                    }
                    // The pong is queued by tungstenite; flushing sends it now rather than with the next write.
                    if let Err(e) = sink.flush().await {
                        break format!("answering a ping: {e}");
                    }
                }
                Some(Ok(Message::Close(c))) => break format!("closed by the server: {c:?}"),
                Some(Ok(_)) => {}
                Some(Err(e)) => break format!("connection error: {e}"),
                None => break "connection closed".to_owned(),
            },
        }
    };
    if !stop.is_cancelled() {
        tally.dropped(why);
    }
}

/// The office: a simulated terminal registered as a device and a real agent that reaches it, connected to the
/// last instance (`url`).
struct Office {
    http: reqwest::Client,
    url: String,
    admin: String,
    device: String,
    agent: essl_e2e::Agent,
    sim: essl_zk_sim::Simulator,
}

impl Office {
    async fn open(target: &Target, admin: &str) -> anyhow::Result<Office> {
        let sim = essl_e2e::terminal(&essl_zk_sim::generate::generate(25, 10, 17)).await;
        let http = reqwest::Client::new();
        let url = target.servers.last().context("no server")?.url.clone();
        let site = format!("Bench office {}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let device = api(
            &http,
            &url,
            admin,
            "/api/devices",
            json!({"name": "Bench door",
            "ipAddress": sim.addr.ip().to_string(), "port": sim.addr.port(), "site": site,
            "timezone": "Asia/Kolkata"}),
        )
        .await?;
        let device = device["id"].as_str().context("device id")?.to_owned();
        let agent = api(&http, &url, admin, "/api/agents", json!({"name": "bench-office", "site": site})).await?;
        let token = agent["token"].as_str().context("agent token")?;
        let ws = format!("{}/agent/ws", url.replacen("http", "ws", 1));
        let agent = essl_e2e::Agent::start_configured(&ws, token, |_| {});
        let office = Office { http, url, admin: admin.to_owned(), device, agent, sim };
        let deadline = Instant::now() + Duration::from_secs(20);
        while office.check().await.is_err() {
            if Instant::now() > deadline {
                office.close().await;
                bail!("the office's agent did not reach its terminal within 20 s");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(office)
    }

    /// One `POST /api/essl/check-device` for the device on the instance holding the office's agent; its latency.
    async fn check(&self) -> anyhow::Result<f64> {
        self.check_on(&self.url).await
    }

    /// The same on the instance at `url` (forwarded to the office's agent when that is another instance).
    async fn check_on(&self, url: &str) -> anyhow::Result<f64> {
        self.check_with(&self.http, url).await
    }

    /// The same with another HTTP client (one that opens a connection per request, through a load balancer).
    async fn check_with(&self, http: &reqwest::Client, url: &str) -> anyhow::Result<f64> {
        let started = Instant::now();
        let answer = api(http, url, &self.admin, "/api/essl/check-device", json!({"deviceId": self.device})).await?;
        let ms = started.elapsed().as_secs_f64() * 1e3;
        ensure!(answer["reachableCount"] == 1, "check-device: {answer}");
        Ok(ms)
    }

    async fn close(self) {
        self.agent.stop().await;
        self.sim.stop().await;
    }
}

async fn api(http: &reqwest::Client, url: &str, admin: &str, path: &str, body: Value) -> anyhow::Result<Value> {
    let r = http.post(format!("{url}{path}")).bearer_auth(admin).json(&body).send().await?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or(Value::Null);
    ensure!(status.is_success(), "POST {path}: HTTP {status} {body}");
    Ok(body)
}

/// One line of the curve.
struct Row {
    count: u32,
    connected: u64,
    rss_per_agent_kib: f64,
    cpu_pct: f64,
    lag_p50: f64,
    lag_p99: f64,
    lag_max: f64,
    unanswered: u64,
    check_p50: Option<f64>,
    check_p99: Option<f64>,
    /// check-device on an instance without the office's agent (`--instances` 2 or more).
    forwarded_p50: Option<f64>,
    forwarded_p99: Option<f64>,
    /// check-device through the load balancer in front of the instances (`--instances` 2 or more).
    balanced_p50: Option<f64>,
    balanced_p99: Option<f64>,
}

async fn measure(args: &Args, counts: &[u32], target: &Target) -> anyhow::Result<()> {
    let most = u64::from(counts.last().copied().unwrap_or(0));
    let per_server = most.div_ceil(target.servers.len().max(1) as u64);
    for server in &target.servers {
        let limit = open_files_limit(&server.pid.to_string()).context("the server's open-file limit")?;
        ensure!(
            per_server + SPARE_FDS <= limit,
            "--count {most} needs about {} open files in each server, and its limit is {limit} (RLIMIT_NOFILE)",
            per_server + SPARE_FDS
        );
    }
    let tokens = tokio::fs::read_to_string(&target.tokens)
        .await
        .with_context(|| format!("reading the tokens in {}", target.tokens.display()))?;
    let tokens: Vec<String> = tokens.lines().map(str::trim).filter(|l| !l.is_empty()).map(str::to_owned).collect();
    ensure!(tokens.len() as u64 >= most, "{} tokens in {}, {most} needed", tokens.len(), target.tokens.display());
    let addrs = target.servers.iter().map(Instance::addr).collect::<anyhow::Result<Vec<_>>>()?;
    let office = match (&target.admin, args.samples) {
        (Some(admin), 1..) => Some(Office::open(target, admin).await?),
        (None, 1..) => {
            println!("check-device not measured: no --admin-token");
            None
        }
        _ => None,
    };
    let result = curve(args, counts, target, &addrs, &tokens, office.as_ref()).await;
    if let Some(office) = office {
        office.close().await;
    }
    let rows = result?;
    println!();
    let several = target.servers.len() > 1;
    let (servers, forwarded_head, forwarded_rule) = if several {
        ("servers'", " forwarded check-device p50 / p99 | through the balancer p50 / p99 |", "---:|---:|")
    } else {
        ("server", "", "")
    };
    println!(
        "| agents | connected | {servers} RSS per agent | {servers} CPU (one core) | ping lag p50 / p99 / max | unanswered | check-device p50 / p99 |{forwarded_head}"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|{forwarded_rule}");
    let ms = |p50: Option<f64>, p99: Option<f64>| match (p50, p99) {
        (Some(a), Some(b)) => format!("{a:.2} / {b:.2} ms"),
        _ => "-".to_owned(),
    };
    for r in &rows {
        let check = ms(r.check_p50, r.check_p99);
        let forwarded = if several {
            format!(" {} | {} |", ms(r.forwarded_p50, r.forwarded_p99), ms(r.balanced_p50, r.balanced_p99))
        } else {
            String::new()
        };
        println!(
            "| {} | {} | {:.1} KiB | {:.1} % | {:.2} / {:.2} / {:.1} ms | {} | {check} |{forwarded}",
            r.count, r.connected, r.rss_per_agent_kib, r.cpu_pct, r.lag_p50, r.lag_p99, r.lag_max, r.unanswered
        );
    }
    Ok(())
}

#[allow(clippy::too_many_arguments)]
async fn curve(
    args: &Args,
    counts: &[u32],
    target: &Target,
    addrs: &[SocketAddr],
    tokens: &[String],
    office: Option<&Office>,
) -> anyhow::Result<Vec<Row>> {
    let mut fleet = Fleet {
        agents: JoinSet::new(),
        tally: Arc::new(Tally::default()),
        stop: CancellationToken::new(),
        refused: 0,
        failed: 0,
        first_failure: None,
        since: Vec::new(),
    };
    let tally = fleet.tally.clone();
    // The test load balancer (round robin) in front of several instances, and a client that opens a connection per
    // request, so consecutive requests land on different instances as behind a real one.
    let balancer = match addrs {
        [_, _, ..] => Some((
            essl_e2e::Balancer::start(addrs).await.context("starting the load balancer")?,
            reqwest::Client::builder().pool_max_idle_per_host(0).build()?,
        )),
        _ => None,
    };
    let ticks = clock_ticks().await;
    let ping_every = Duration::from_secs(args.ping_seconds.max(1));
    let window = Duration::from_secs(args.seconds.max(1));
    let mut next = 0usize;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let rss_before = target.rss_kib()?;
    for server in &target.servers {
        println!("server pid {} at {}", server.pid, server.url);
    }
    println!("RSS {rss_before} KiB before any idle agent");
    let mut rows = Vec::new();
    for &count in counts {
        let ramp = Instant::now();
        let gate = Arc::new(Semaphore::new(args.concurrency.max(1)));
        let mut opening = JoinSet::new();
        while next < count as usize {
            let permit = gate.clone().acquire_owned().await?;
            // As a load balancer spreads them (directly: a balancer in this process would cost it two more
            // sockets per agent).
            let addr = addrs[next % addrs.len()];
            let (token, url, from) = (tokens[next].clone(), format!("ws://{addr}/agent/ws"), source(next));
            opening.spawn(async move {
                let made = connect(addr, &url, &token, from).await;
                drop(permit);
                made
            });
            next += 1;
            // Reap the finished ones as we go, so the set does not hold 20,000 finished tasks.
            while let Some(done) = opening.try_join_next() {
                fleet.take(done, ping_every);
            }
        }
        while let Some(done) = opening.join_next().await {
            fleet.take(done, ping_every);
        }
        let ramp_s = ramp.elapsed().as_secs_f64();
        // Tasks of dropped connections stay in the set until the end.
        let connected = (fleet.agents.len() as u64).saturating_sub(tally.dropped.load(Ordering::Relaxed));
        tokio::time::sleep(Duration::from_secs(2)).await;
        let rss_after = target.rss_kib()?;
        let per_agent = (rss_after.saturating_sub(rss_before)) as f64 / connected.max(1) as f64;

        tally.reset();
        tally.measuring.store(true, Ordering::Relaxed);
        let cpu0 = target.cpu_ticks()?;
        let t0 = Instant::now();
        tokio::time::sleep(window).await;
        let cpu1 = target.cpu_ticks()?;
        let idle_s = t0.elapsed().as_secs_f64();
        tally.measuring.store(false, Ordering::Relaxed);
        // Pongs of the pings sent at the end of the window may still come.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let cpu_pct = (cpu1 - cpu0) as f64 / ticks / idle_s * 100.0;
        let sent = tally.pings_sent.load(Ordering::Relaxed);
        let answered = tally.pongs.load(Ordering::Relaxed);
        let lags = tally.lags.lock().map(|l| l.clone()).unwrap_or_default();
        let server_pings = tally.server_pings.load(Ordering::Relaxed);
        let expected_pings = expected_server_pings(&fleet.since, t0, t0 + Duration::from_secs_f64(idle_s));

        let checks = match office {
            Some(office) => Some(sample(args.samples, || office.check()).await?),
            None => None,
        };
        let forwarded = match (office, target.servers.first()) {
            (Some(office), Some(first)) if target.servers.len() > 1 => {
                Some(sample(args.samples, || office.check_on(&first.url)).await?)
            }
            _ => None,
        };
        let balanced = match (office, &balancer) {
            (Some(office), Some((balancer, fresh))) => {
                let url = balancer.url("");
                Some(sample(args.samples, || office.check_with(fresh, &url)).await?)
            }
            _ => None,
        };
        let rss_end = target.rss_kib()?;
        let dropped = tally.dropped.load(Ordering::Relaxed);
        println!(
            "agents={count} connected={connected} refused={} failed={} dropped={dropped} ramp_s={ramp_s:.1}",
            fleet.refused, fleet.failed
        );
        if let Some(why) = &fleet.first_failure {
            println!("  first failure: {why}");
        }
        if let Some(why) = tally.drop_reason.lock().ok().and_then(|r| r.clone()) {
            println!("  first drop: {why}");
        }
        println!(
            "  server rss_before_kib={rss_before} rss_after_kib={rss_after} rss_end_kib={rss_end} \
             per_agent_kib={per_agent:.1}"
        );
        println!("  server cpu_pct={cpu_pct:.1} (of one core, over the idle window of {idle_s:.1} s)");
        println!(
            "  pings sent={sent} answered={answered} unanswered={} lag_p50_ms={:.3} lag_p99_ms={:.3} lag_max_ms={:.3}",
            sent.saturating_sub(answered),
            percentile(&lags, 50.0),
            percentile(&lags, 99.0),
            percentile(&lags, 100.0)
        );
        println!(
            "  server_pings received={server_pings} expected={expected_pings} (one per {} s per agent) \
             heartbeats_sent={}",
            server_ping_interval().as_secs(),
            tally.heartbeats.load(Ordering::Relaxed)
        );
        let measured = [
            ("check-device", &checks),
            ("forwarded check-device", &forwarded),
            ("check-device through the balancer", &balanced),
        ];
        for (what, v) in measured {
            if let Some(v) = v {
                println!(
                    "  {what} samples={} p50_ms={:.3} p99_ms={:.3} max_ms={:.3}",
                    v.len(),
                    percentile(v, 50.0),
                    percentile(v, 99.0),
                    percentile(v, 100.0)
                );
            }
        }
        rows.push(Row {
            count,
            connected,
            rss_per_agent_kib: per_agent,
            cpu_pct,
            lag_p50: percentile(&lags, 50.0),
            lag_p99: percentile(&lags, 99.0),
            lag_max: percentile(&lags, 100.0),
            unanswered: sent.saturating_sub(answered),
            check_p50: checks.as_ref().map(|v| percentile(v, 50.0)),
            check_p99: checks.as_ref().map(|v| percentile(v, 99.0)),
            forwarded_p50: forwarded.as_ref().map(|v| percentile(v, 50.0)),
            forwarded_p99: forwarded.as_ref().map(|v| percentile(v, 99.0)),
            balanced_p50: balanced.as_ref().map(|v| percentile(v, 50.0)),
            balanced_p99: balanced.as_ref().map(|v| percentile(v, 99.0)),
        });
    }
    fleet.stop.cancel();
    let agents = &mut fleet.agents;
    let _ = tokio::time::timeout(Duration::from_secs(20), async { while agents.join_next().await.is_some() {} }).await;
    agents.abort_all();
    Ok(rows)
}

/// `samples` latencies of `check`, after 20 unmeasured ones.
async fn sample<F, Fut>(samples: usize, check: F) -> anyhow::Result<Vec<f64>>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<f64>>,
{
    let mut v = Vec::with_capacity(samples);
    for i in 0..samples + 20 {
        let ms = check().await?;
        if i >= 20 {
            v.push(ms);
        }
    }
    Ok(v)
}

/// Pings the server sends in `[from, to)` to agents connected at `since`, one each ping interval after connecting.
fn expected_server_pings(since: &[Instant], from: Instant, to: Instant) -> u64 {
    let every = server_ping_interval().as_secs_f64();
    let due = |c: Instant, t: Instant| (t.saturating_duration_since(c).as_secs_f64() / every).floor() as u64;
    since.iter().map(|&c| due(c, to) - due(c, from)).sum()
}

/// The bench agents connected so far, and the connections that were not made.
struct Fleet {
    agents: JoinSet<()>,
    tally: Arc<Tally>,
    stop: CancellationToken,
    refused: u64,
    failed: u64,
    first_failure: Option<String>,
    /// When each agent got its `Welcome`: the server pings it every ping interval from then on.
    since: Vec<Instant>,
}

impl Fleet {
    /// A finished connection attempt: a new idle agent, or a refusal or failure counted.
    fn take(&mut self, done: Result<Result<Connected, Failure>, JoinError>, ping: Duration) {
        let why = match done {
            Ok(Ok((ws, heartbeat, welcomed))) => {
                self.since.push(welcomed);
                self.agents.spawn(idle(ws, heartbeat, ping, self.tally.clone(), self.stop.clone()));
                return;
            }
            Ok(Err(Failure::Refused(why))) => {
                self.refused += 1;
                why
            }
            Ok(Err(Failure::Failed(why))) => {
                self.failed += 1;
                why
            }
            Err(e) => {
                self.failed += 1;
                e.to_string()
            }
        };
        self.first_failure.get_or_insert(why);
    }
}
