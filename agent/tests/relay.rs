//! `essl_agent::relay::run` against a WebSocket server written here that speaks essl-wire, with real simulated
//! terminals (`essl-sim`) on loopback. Every wait has a deadline; nothing sleeps to synchronise.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use essl_agent::config::{Config, Secret, ServerUrl, Timing};
use essl_wire::{
    AgentMsg, DeviceSpec, ErrorKind, MAX_MESSAGE_BYTES, MAX_PUNCHES_PER_BATCH, Op, OpResult, Outcome, Punch, Reach,
    ServerMsg, close,
};
use essl_zk_sim::{Simulator, Terminal, TerminalConfig, generate};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::PrivatePkcs8KeyDer;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{StatusCode, header};
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, protocol::frame::coding::CloseCode};
use tokio_util::sync::CancellationToken;

const TOKEN: &str = "essl_test_0123456789";
/// Deadline of one step of a test.
const STEP: Duration = Duration::from_secs(15);

async fn within<F: std::future::IntoFuture>(limit: Duration, what: &str, f: F) -> F::Output {
    match tokio::time::timeout(limit, f).await {
        Ok(v) => v,
        Err(_) => panic!("timed out after {limit:?} waiting for {what}"),
    }
}

fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

// ---------------------------------------------------------------------------------------------------------------
// The fake server.

/// One TCP connection to the fake server: when it came, what the upgrade request said, the WebSocket if accepted.
struct Incoming {
    at: Instant,
    uri: String,
    authorization: Option<String>,
    ws: Option<WebSocketStream<TcpStream>>,
}

struct FakeServer {
    addr: SocketAddr,
    incoming: mpsc::UnboundedReceiver<Incoming>,
    /// HTTP status to refuse upgrades with; 0 accepts.
    refuse: Arc<AtomicU16>,
    task: JoinHandle<()>,
}

impl Drop for FakeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeServer {
    // The upgrade callback's signature is tungstenite's: its error is a whole HTTP response.
    #[allow(clippy::result_large_err)]
    async fn start() -> FakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (tx, incoming) = mpsc::unbounded_channel();
        let refuse = Arc::new(AtomicU16::new(0));
        let status = refuse.clone();
        let task = tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let at = Instant::now();
                let (tx, status) = (tx.clone(), status.load(Ordering::SeqCst));
                tokio::spawn(async move {
                    let mut seen = (String::new(), None);
                    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
                        seen.0 = req.uri().to_string();
                        seen.1 =
                            req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(String::from);
                        if status == 0 {
                            return Ok(resp);
                        }
                        let mut refusal = ErrorResponse::new(Some("token refused".into()));
                        *refusal.status_mut() = StatusCode::from_u16(status).expect("status");
                        Err(refusal)
                    };
                    let config = WebSocketConfig::default().max_message_size(Some(64 << 20));
                    let ws = tokio_tungstenite::accept_hdr_async_with_config(tcp, callback, Some(config)).await.ok();
                    let _ = tx.send(Incoming { at, uri: seen.0, authorization: seen.1, ws });
                });
            }
        });
        FakeServer { addr, incoming, refuse, task }
    }

    fn url(&self) -> ServerUrl {
        ServerUrl::parse(&format!("ws://{}/agent/ws", self.addr)).expect("url")
    }

    async fn next(&mut self) -> Incoming {
        within(STEP, "a connection from the agent", self.incoming.recv()).await.expect("server running")
    }

    /// The next accepted WebSocket.
    async fn session(&mut self) -> Peer {
        loop {
            if let Some(ws) = self.next().await.ws {
                return Peer { ws };
            }
        }
    }
}

/// The server's side of one session (over TCP, or TLS in the wss test).
struct Peer<S = TcpStream> {
    ws: WebSocketStream<S>,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Peer<S> {
    /// The next message, or the close frame (`Err`) if the agent closed.
    async fn recv_or_close(&mut self) -> Result<AgentMsg, Option<CloseFrame>> {
        loop {
            match within(STEP, "a frame from the agent", self.ws.next()).await {
                Some(Ok(Message::Binary(bytes))) => {
                    return Ok(essl_wire::decode_agent(&bytes).expect("agent message decodes"));
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(frame))) => return Err(frame),
                Some(Ok(other)) => panic!("unexpected frame from the agent: {other:?}"),
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    async fn recv(&mut self) -> AgentMsg {
        self.recv_or_close().await.unwrap_or_else(|close| panic!("the agent closed: {close:?}"))
    }

    /// Skips messages until `pick` takes one; gives up after `limit`.
    async fn recv_until<T>(&mut self, limit: Duration, mut pick: impl FnMut(&AgentMsg) -> Option<T>) -> T {
        within(limit, "a particular message", async {
            loop {
                let msg = self.recv().await;
                if let Some(t) = pick(&msg) {
                    return t;
                }
            }
        })
        .await
    }

    async fn response(&mut self, id: u64) -> Outcome {
        self.recv_until(STEP, |m| match m {
            AgentMsg::Response { id: got, outcome } if *got == id => Some(outcome.clone()),
            _ => None,
        })
        .await
    }

    async fn send(&mut self, msg: &ServerMsg) {
        let bytes = essl_wire::encode_server(msg).expect("encodes");
        within(STEP, "sending to the agent", self.ws.send(Message::binary(bytes))).await.expect("sent");
    }

    /// Sends any frame; the agent may already have hung up on an oversized one.
    async fn send_raw(&mut self, frame: Message) -> Result<(), tokio_tungstenite::tungstenite::Error> {
        within(STEP, "sending to the agent", self.ws.send(frame)).await
    }

    /// Reads `Hello`, answers `Welcome`, returns the `Hello`.
    async fn welcome(&mut self, devices: Vec<DeviceSpec>) -> AgentMsg {
        let hello = self.recv().await;
        assert!(matches!(hello, AgentMsg::Hello { .. }), "first message: {hello:?}");
        self.send(&ServerMsg::Welcome {
            protocol: essl_wire::PROTOCOL_VERSION,
            agent_id: "agent-1".into(),
            site: "site-1".into(),
            devices,
            probe_interval_ms: 30_000,
        })
        .await;
        hello
    }

    async fn request(&mut self, id: u64, device: &str, op: Op) -> Outcome {
        self.send(&ServerMsg::Request { id, device: device.into(), op }).await;
        self.response(id).await
    }

    async fn close(&mut self, code: u16, reason: &str) {
        let frame = CloseFrame { code: CloseCode::from(code), reason: reason.into() };
        let _ = within(STEP, "closing", self.ws.close(Some(frame))).await;
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The agent and its terminals.

fn timing() -> Timing {
    Timing {
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(300),
        going_away_min: Duration::from_millis(10),
        going_away_max: Duration::from_millis(50),
        hello_timeout: Duration::from_secs(5),
        ..Timing::default()
    }
}

/// The agent under test, stopped when dropped.
struct Agent {
    shutdown: CancellationToken,
    task: JoinHandle<Result<(), essl_agent::relay::RelayError>>,
    /// Its outbox, in a directory of its own, removed when dropped.
    outbox_dir: std::path::PathBuf,
}

/// A fresh directory for one agent's outbox.
fn outbox_dir() -> std::path::PathBuf {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("essl-agent-test-outbox-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("outbox dir");
    dir
}

impl Agent {
    fn start(server: &FakeServer, timing: Timing, probe_interval: Option<Duration>) -> Agent {
        let mut config = Config::new(server.url(), Secret::new(TOKEN));
        config.timing = timing;
        config.probe_interval = probe_interval;
        Agent::with_config(config)
    }

    fn with_config(mut config: Config) -> Agent {
        init_logs();
        let outbox_dir = outbox_dir();
        config.collect.outbox = outbox_dir.join("outbox.db");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(essl_agent::relay::run(config, shutdown.clone()));
        Agent { shutdown, task, outbox_dir }
    }

    /// Stops an agent that may already have ended by itself.
    async fn stop_if_running(mut self) {
        self.shutdown.cancel();
        let _ = within(STEP, "the agent to stop", &mut self.task).await;
    }

    async fn stop(mut self) {
        self.shutdown.cancel();
        let result = within(STEP, "the agent to stop", &mut self.task).await;
        assert!(matches!(result, Ok(Ok(()))), "{result:?}");
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let _ = std::fs::remove_dir_all(&self.outbox_dir);
    }
}

async fn simulator(users: usize, records: usize) -> (Simulator, essl_zk_sim::Fixture) {
    let fixture = generate::generate(users, records, 42);
    let terminal = Terminal::new(&fixture, TerminalConfig::default()).expect("fixture");
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), terminal).await.expect("simulator");
    (sim, fixture)
}

fn spec(id: &str, addr: SocketAddr, udp: bool) -> DeviceSpec {
    DeviceSpec { id: id.into(), name: format!("terminal {id}"), addr: addr.to_string(), udp, comm_key: 0 }
}

/// A loopback port with nothing listening (TCP).
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    listener.local_addr().expect("addr")
}

fn reachability(msg: &AgentMsg) -> Option<Vec<Reach>> {
    match msg {
        AgentMsg::Reachability { reports, .. } => Some(reports.clone()),
        _ => None,
    }
}

fn ok(outcome: Outcome) -> OpResult {
    match outcome {
        Outcome::Ok(r) => r,
        Outcome::Err(e) => panic!("request failed: {e:?}"),
    }
}

fn err(outcome: Outcome) -> essl_wire::OpError {
    match outcome {
        Outcome::Err(e) => e,
        Outcome::Ok(r) => panic!("request succeeded: {r:?}"),
    }
}

// ---------------------------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hello_then_reachability_of_every_device() {
    let (sim, _) = simulator(5, 10).await;
    let mut server = FakeServer::start().await;
    let agent = Agent::start(&server, timing(), Some(Duration::from_millis(500)));

    let incoming = server.next().await;
    assert_eq!(incoming.uri, "/agent/ws", "the token never travels in the URL");
    assert_eq!(incoming.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    let mut peer = Peer { ws: incoming.ws.expect("upgraded") };
    let dead = closed_port().await;
    let devices = vec![spec("a-sim", sim.addr, false), spec("b-sim-udp", sim.addr, true), spec("c-dead", dead, false)];
    let welcomed = Instant::now();
    let before_ms = jiff::Timestamp::now().as_millisecond();
    match peer.welcome(devices).await {
        AgentMsg::Hello { min_protocol, max_protocol, agent_version, hostname, os } => {
            assert_eq!((min_protocol, max_protocol), (essl_wire::MIN_PROTOCOL_VERSION, essl_wire::PROTOCOL_VERSION));
            assert_eq!(agent_version, env!("CARGO_PKG_VERSION"));
            assert!(!hostname.is_empty());
            assert!(os.starts_with(std::env::consts::OS), "{os}");
        }
        other => panic!("{other:?}"),
    }

    // Right after Welcome: one report for all three; the dead one within the probe budget (3 s, one retry).
    let reports = peer.recv_until(Duration::from_secs(7), reachability).await;
    assert!(welcomed.elapsed() < Duration::from_secs(7));
    let ids: Vec<&str> = reports.iter().map(|r| r.device.as_str()).collect();
    assert_eq!(ids, ["a-sim", "b-sim-udp", "c-dead"]);
    for r in &reports[..2] {
        assert!(r.reachable && r.rtt_us.is_some_and(|us| us > 0) && r.error.is_none(), "{r:?}");
    }
    assert!(!reports[2].reachable && reports[2].rtt_us.is_none() && reports[2].error.is_some(), "{:?}", reports[2]);
    for r in &reports {
        assert!(r.checked_at_ms >= before_ms && r.checked_at_ms <= jiff::Timestamp::now().as_millisecond(), "{r:?}");
    }

    // Then every probe interval (overridden to 500 ms here), without being asked, with the outbox's fill.
    let (again, fill) = peer
        .recv_until(STEP, |m| match m {
            AgentMsg::Reachability { reports, outbox } => Some((reports.clone(), *outbox)),
            _ => None,
        })
        .await;
    assert_eq!(again.len(), 3);
    let fill = fill.expect("the heartbeat carries the outbox's fill");
    assert!(fill.bytes > 0 && fill.limit_bytes == 256 << 20, "{fill:?}");

    // A new device list replaces the old one and is probed at once.
    peer.send(&ServerMsg::DevicesChanged { devices: vec![spec("d-sim", sim.addr, false)] }).await;
    let reports = peer.recv_until(STEP, |m| reachability(m).filter(|r| r.len() == 1)).await;
    assert_eq!(reports[0].device, "d-sim");
    assert!(reports[0].reachable);
    // The old devices are gone for requests too.
    assert_eq!(err(peer.request(1, "a-sim", Op::Probe).await).kind, ErrorKind::UnknownDevice);

    // Shutting down says goodbye with a normal close.
    agent.shutdown.cancel();
    let closed = within(STEP, "the close frame", async {
        loop {
            if let Err(frame) = peer.recv_or_close().await {
                return frame;
            }
        }
    })
    .await;
    assert_eq!(closed.map(|f| u16::from(f.code)), Some(1000));
    agent.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_sends_acknowledged_batches_then_synced() {
    const RECORDS: usize = 23_000;
    let batches_expected = RECORDS.div_ceil(MAX_PUNCHES_PER_BATCH);
    assert_eq!(batches_expected, 5, "more batches than the window of 4");
    let (sim, fixture) = simulator(40, RECORDS).await;
    let mut server = FakeServer::start().await;
    let agent = Agent::start(&server, timing(), None);
    let mut peer = server.session().await;
    peer.welcome(vec![spec("door", sim.addr, false)]).await;
    peer.recv_until(STEP, reachability).await;

    peer.send(&ServerMsg::Request { id: 7, device: "door".into(), op: Op::SyncAttendance }).await;
    let mut progress = 0;
    let mut batches: Vec<(u64, Vec<Punch>)> = Vec::new();
    let mut user_list = None;
    let mut list_in_sync = false;
    // Four batches come without any Ack ...
    while batches.len() < 4 {
        match peer.recv().await {
            AgentMsg::Progress { id, done, total } => {
                assert_eq!(id, 7);
                assert!(done <= total);
                progress += 1;
            }
            AgentMsg::Punches { batch, device, request, records, users } => {
                assert!(records.len() <= MAX_PUNCHES_PER_BATCH);
                // The terminal's user list, once, before any record: from the realtime subscription (no request)
                // or, when the sync read it first, as the sync's first batch.
                if let Some(users) = users {
                    assert!(user_list.is_none() && batches.is_empty() && records.is_empty(), "the list first, alone");
                    user_list = Some(users);
                    if request.is_none() {
                        peer.send(&ServerMsg::Ack { batch }).await;
                        continue;
                    }
                    list_in_sync = true;
                }
                assert_eq!((device.as_str(), request), ("door", Some(7)));
                batches.push((batch, records));
            }
            AgentMsg::Reachability { .. } => {}
            other => panic!("unexpected during the sync: {other:?}"),
        }
    }
    assert!(progress >= 1, "at least the final progress report");
    // ... and no fifth until one is acknowledged (a bounded wait is the only way to see an absence).
    let early = tokio::time::timeout(Duration::from_millis(400), peer.recv()).await;
    assert!(!matches!(early, Ok(AgentMsg::Punches { .. } | AgentMsg::Response { .. })), "{early:?}");
    // Each Ack lets one more go.
    let expected = batches_expected + usize::from(list_in_sync);
    let mut acked = 0;
    while batches.len() < expected {
        peer.send(&ServerMsg::Ack { batch: batches[acked].0 }).await;
        acked += 1;
        let next = peer
            .recv_until(STEP, |m| match m {
                AgentMsg::Punches { batch, records, .. } => Some((*batch, records.clone())),
                _ => None,
            })
            .await;
        batches.push(next);
    }
    for (batch, _) in &batches[acked..expected - 1] {
        peer.send(&ServerMsg::Ack { batch: *batch }).await;
    }
    // Synced only after the last Ack.
    let early = tokio::time::timeout(Duration::from_millis(300), peer.recv()).await;
    assert!(!matches!(early, Ok(AgentMsg::Response { .. })), "{early:?}");
    peer.send(&ServerMsg::Ack { batch: batches[expected - 1].0 }).await;
    let synced = ok(peer.response(7).await);
    assert_eq!(
        synced,
        OpResult::Synced { records: RECORDS as u64, batches: expected as u64, read: Some(RECORDS as u64), reset: None }
    );
    let enrolled: Vec<(u16, String, String)> =
        fixture.users.iter().map(|u| (u.uid, u.user_id.clone(), u.name.clone())).collect();
    let listed: Vec<(u16, String, String)> =
        user_list.expect("the user list was sent").into_iter().map(|u| (u.uid, u.user_id, u.name)).collect();
    assert_eq!(listed, enrolled, "the terminal's users, read in the sync's session");

    let mut ids: Vec<u64> = batches.iter().map(|(b, _)| *b).collect();
    ids.sort_unstable();
    ids.dedup();
    assert_eq!(ids.len(), expected, "batch ids are unique");
    let got: Vec<Punch> = batches.into_iter().flat_map(|(_, r)| r).collect();
    let want: Vec<Punch> = fixture
        .attendance
        .iter()
        .map(|p| Punch {
            uid: p.uid,
            user_id: p.user_id.clone(),
            local_time: p.timestamp.clone(),
            status: p.status,
            punch: p.punch,
            raw_time: None,
        })
        .collect();
    assert_eq!(got.len(), want.len());
    assert!(got == want, "the punches differ from the simulator's records");
    assert_eq!(sim.terminal.record_count(), RECORDS, "a sync never clears the terminal");

    // A second sync of the unchanged terminal sends nothing: everything is past the watermark.
    peer.send(&ServerMsg::Request { id: 8, device: "door".into(), op: Op::SyncAttendance }).await;
    let second = ok(peer.response(8).await);
    assert_eq!(second, OpResult::Synced { records: 0, batches: 0, read: Some(RECORDS as u64), reset: None });

    // Two new punches: only they go, in a batch with a fresh id.
    let new: Vec<Punch> = (0..2)
        .map(|i| sim.terminal.punch(i, 1, 0))
        .map(|r| Punch {
            uid: r.uid,
            user_id: r.user_id,
            local_time: r.timestamp.to_string(),
            status: r.status,
            punch: r.punch,
            raw_time: None,
        })
        .collect();
    peer.send(&ServerMsg::Request { id: 9, device: "door".into(), op: Op::SyncAttendance }).await;
    // Realtime may announce them first (request: None); the sync's batch carries the request id.
    let (batch, records) = peer
        .recv_until(STEP, |m| match m {
            AgentMsg::Punches { batch, request: Some(9), records, .. } => Some((*batch, records.clone())),
            AgentMsg::Punches { batch, request: None, .. } => {
                assert!(!ids.contains(batch));
                None
            }
            _ => None,
        })
        .await;
    assert!(!ids.contains(&batch), "batch id {batch} reused");
    assert_eq!(records, new);
    peer.send(&ServerMsg::Ack { batch }).await;
    let third = ok(peer.response(9).await);
    assert_eq!(third, OpResult::Synced { records: 2, batches: 1, read: Some(RECORDS as u64 + 2), reset: None });

    agent.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_batch_is_sent_again_long_before_the_ack_timeout() {
    // Two batches; the server's database fails on the first: Nack. The ack timeout is an hour, so only the Nack
    // can bring the batch back.
    let (sim, _) = simulator(10, 6_000).await;
    let mut server = FakeServer::start().await;
    let agent = Agent::start(&server, Timing { ack_timeout: Duration::from_secs(3600), ..timing() }, None);
    let mut peer = server.session().await;
    match peer.welcome(vec![spec("door", sim.addr, false)]).await {
        AgentMsg::Hello { max_protocol, .. } => assert!(max_protocol >= essl_wire::NACK_SINCE),
        other => panic!("{other:?}"),
    }
    peer.send(&ServerMsg::Request { id: 3, device: "door".into(), op: Op::SyncAttendance }).await;
    let mut sent: Vec<(u64, Vec<Punch>)> = Vec::new();
    let mut list_in_sync = false;
    while sent.len() < 2 {
        match peer.recv().await {
            // The terminal's user list (from the realtime subscription or the sync's read), stored.
            AgentMsg::Punches { batch, users: Some(_), request, .. } => {
                list_in_sync = request == Some(3);
                peer.send(&ServerMsg::Ack { batch }).await;
            }
            AgentMsg::Punches { batch, records, .. } => sent.push((batch, records)),
            _ => {}
        }
    }
    let (refused, first) = sent[0].clone();
    peer.send(&ServerMsg::Nack { batch: refused, error: "storage failed: connection lost".into() }).await;
    peer.send(&ServerMsg::Ack { batch: sent[1].0 }).await;
    let again = peer
        .recv_until(STEP, |m| match m {
            AgentMsg::Punches { batch, records, .. } if *batch == refused => Some(records.clone()),
            AgentMsg::Response { id: 3, outcome } => {
                panic!("answered before the refused batch was stored: {outcome:?}")
            }
            _ => None,
        })
        .await;
    assert_eq!(again, first, "the same batch, whole, again");
    peer.send(&ServerMsg::Ack { batch: refused }).await;
    let synced = ok(peer.response(3).await);
    let batches = 2 + u64::from(list_in_sync);
    assert_eq!(synced, OpResult::Synced { records: 6_000, batches, read: Some(6_000), reset: None });
    agent.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_requests_run_concurrently_and_map_errors() {
    let (sim, fixture) = simulator(12, 300).await;
    // A terminal that accepts TCP but never answers: requests to it hang until their deadline.
    let hung = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let hung_addr = hung.local_addr().expect("addr");
    let _hold = tokio::spawn(async move {
        let mut conns = Vec::new();
        while let Ok((c, _)) = hung.accept().await {
            conns.push(c);
        }
    });
    let mut server = FakeServer::start().await;
    // The hung request must still be running when it is cancelled, however slow the machine.
    let t = Timing { device_timeout: Duration::from_secs(120), ..timing() };
    let agent = Agent::start(&server, t, None);
    let mut peer = server.session().await;
    peer.welcome(vec![spec("door", sim.addr, false), spec("hung", hung_addr, false)]).await;

    // A slow device does not hold up the others; Cancel aborts its request.
    peer.send(&ServerMsg::Request { id: 100, device: "hung".into(), op: Op::DeviceInfo }).await;

    match ok(peer.request(1, "door", Op::Probe).await) {
        OpResult::Probe { rtt_us } => assert!(rtt_us > 0 && rtt_us < 3_000_000),
        other => panic!("{other:?}"),
    }
    match ok(peer.request(2, "door", Op::DeviceInfo).await) {
        OpResult::Info(info) => {
            assert_eq!(info.serial_number, fixture.device.serial_number);
            assert_eq!(info.device_name, fixture.device.device_name);
            assert_eq!((info.users, info.records), (12, 300));
        }
        other => panic!("{other:?}"),
    }
    match ok(peer.request(3, "door", Op::ReadUsers).await) {
        OpResult::Users { users } => {
            assert_eq!(users.len(), fixture.users.len());
            for (u, f) in users.iter().zip(&fixture.users) {
                assert_eq!(
                    (u.uid, &u.user_id, &u.name, u.privilege, u.card, &u.group_id),
                    (f.uid, &f.user_id, &f.name, f.privilege, f.card, &f.group_id)
                );
            }
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        ok(peer.request(4, "door", Op::SetTime { local_time: "2031-02-03T04:05:06".into() }).await),
        OpResult::Done
    );
    match ok(peer.request(5, "door", Op::GetTime).await) {
        OpResult::Time { local_time } => {
            assert!(local_time.starts_with("2031-02-03T04:0"), "{local_time}");
        }
        other => panic!("{other:?}"),
    }
    let bad = err(peer.request(6, "door", Op::SetTime { local_time: "tomorrow".into() }).await);
    assert_eq!(bad.kind, ErrorKind::Protocol);
    let unknown = err(peer.request(7, "nope", Op::GetTime).await);
    assert_eq!(unknown.kind, ErrorKind::UnknownDevice);
    assert!(unknown.message.contains("nope"));

    peer.send(&ServerMsg::Cancel { id: 100 }).await;
    assert_eq!(err(peer.response(100).await).kind, ErrorKind::Cancelled);

    // An unreachable terminal says so, with the error text.
    let dead = closed_port().await;
    peer.send(&ServerMsg::DevicesChanged { devices: vec![spec("door", sim.addr, false), spec("dead", dead, false)] })
        .await;
    let e = err(peer.request(8, "dead", Op::ReadUsers).await);
    assert_eq!(e.kind, ErrorKind::Unreachable);
    assert!(!e.message.is_empty());
    assert_eq!(err(peer.request(9, "dead", Op::Probe).await).kind, ErrorKind::Unreachable);

    // Nothing of this terminal was ever sent: a clear without syncing first is refused, and the log stays.
    let refused = err(peer.request(10, "door", Op::ClearAttendance { sync_first: false }).await);
    assert_eq!(refused.kind, ErrorKind::NotConfirmed, "{refused:?}");
    assert!(refused.message.contains("none of the 300 records"), "{}", refused.message);
    assert_eq!(sim.terminal.record_count(), 300);
    assert!(sim.terminal.is_enabled(), "the terminal takes punches again");

    agent.stop().await;
    sim.stop().await;
}

/// Answers every `Punches` batch of request `id` with its `Ack` until `ConfirmStored` comes; returns it.
async fn ack_until_confirm(peer: &mut Peer, id: u64) -> (u64, u64, Option<String>, Option<String>) {
    loop {
        match peer.recv().await {
            AgentMsg::Punches { batch, request, .. } => {
                assert!(request.is_none_or(|r| r == id));
                peer.send(&ServerMsg::Ack { batch }).await;
            }
            AgentMsg::ConfirmStored { id: got, records, keys, first_local_time, last_local_time } => {
                assert_eq!(got, id);
                return (records, keys, first_local_time, last_local_time);
            }
            AgentMsg::Response { id: got, outcome } => panic!("request {got} ended before the check: {outcome:?}"),
            _ => {}
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_attendance_holds_the_terminal_and_clears_only_on_the_servers_word() {
    let (sim, fixture) = simulator(10, 400).await;
    let mut server = FakeServer::start().await;
    // The agent waits this long for acks and for the server's word.
    let agent = Agent::start(&server, Timing { ack_timeout: Duration::from_secs(2), ..timing() }, None);
    let mut peer = server.session().await;
    peer.welcome(vec![spec("door", sim.addr, false)]).await;

    // The server does not confirm: the log stays, and the terminal takes punches again.
    peer.send(&ServerMsg::Request { id: 1, device: "door".into(), op: Op::ClearAttendance { sync_first: true } }).await;
    let (records, keys, first, last) = ack_until_confirm(&mut peer, 1).await;
    assert_eq!((records, keys), (400, 400));
    let times: Vec<&str> = fixture.attendance.iter().map(|p| p.timestamp.as_str()).collect();
    assert_eq!(first.as_deref(), times.iter().min().copied());
    assert_eq!(last.as_deref(), times.iter().max().copied());
    assert!(!sim.terminal.is_enabled(), "held while the server is asked");
    assert!(sim.terminal.try_punch(1, 1, 0).is_none(), "a held terminal takes no punch");
    peer.send(&ServerMsg::Stored { id: 1, confirmed: false, reason: Some("the database holds 12 of 400".into()) })
        .await;
    let refused = err(peer.response(1).await);
    assert_eq!(refused.kind, ErrorKind::NotConfirmed);
    assert!(refused.message.contains("the database holds 12 of 400"), "{}", refused.message);
    assert_eq!(sim.terminal.record_count(), 400);
    assert!(sim.terminal.is_enabled());

    // Everything is acknowledged now: no batch goes, the server confirms, the log is cleared.
    let punched = sim.terminal.try_punch(2, 1, 0).expect("an enabled terminal takes punches");
    peer.send(&ServerMsg::Request { id: 2, device: "door".into(), op: Op::ClearAttendance { sync_first: true } }).await;
    let (records, _, _, _) = ack_until_confirm(&mut peer, 2).await;
    assert_eq!(records, 401, "the punch made in between is part of the log");
    peer.send(&ServerMsg::Stored { id: 2, confirmed: true, reason: None }).await;
    assert_eq!(ok(peer.response(2).await), OpResult::Cleared { records: 401 });
    assert_eq!(sim.terminal.record_count(), 0);
    assert!(sim.terminal.is_enabled(), "enabled again after the clear");

    // The next punch goes by the next sync, not called a reset, and nothing of before goes again.
    let after = sim.terminal.try_punch(3, 1, 0).expect("punch");
    assert_ne!(after, punched);
    peer.send(&ServerMsg::Request { id: 3, device: "door".into(), op: Op::SyncAttendance }).await;
    let batch = peer
        .recv_until(STEP, |m| match m {
            AgentMsg::Punches { batch, request: Some(3), records, .. } => {
                assert_eq!(records.len(), 1);
                assert_eq!(records[0].user_id, after.user_id);
                Some(*batch)
            }
            _ => None,
        })
        .await;
    peer.send(&ServerMsg::Ack { batch }).await;
    assert_eq!(ok(peer.response(3).await), OpResult::Synced { records: 1, batches: 1, read: Some(1), reset: None });

    // A server that never answers the check: refused after the agent's wait, terminal enabled, log kept.
    peer.send(&ServerMsg::Request { id: 4, device: "door".into(), op: Op::ClearAttendance { sync_first: true } }).await;
    ack_until_confirm(&mut peer, 4).await;
    let silent = err(peer.response(4).await);
    assert_eq!(silent.kind, ErrorKind::NotConfirmed, "{silent:?}");
    assert_eq!(sim.terminal.record_count(), 1);
    assert!(sim.terminal.is_enabled());

    // Cancelled while waiting for the server's word: nothing cleared, the terminal enabled again.
    peer.send(&ServerMsg::Request { id: 5, device: "door".into(), op: Op::ClearAttendance { sync_first: true } }).await;
    ack_until_confirm(&mut peer, 5).await;
    assert!(!sim.terminal.is_enabled());
    peer.send(&ServerMsg::Cancel { id: 5 }).await;
    assert_eq!(err(peer.response(5).await).kind, ErrorKind::Cancelled);
    within(STEP, "the terminal enabled after the cancel", async {
        while !sim.terminal.is_enabled() {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    peer.send(&ServerMsg::Stored { id: 5, confirmed: true, reason: None }).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(sim.terminal.record_count(), 1, "a late confirmation clears nothing");

    agent.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_of_protocol_1_gets_no_clear() {
    let (sim, _) = simulator(5, 20).await;
    let mut server = FakeServer::start().await;
    let agent = Agent::start(&server, timing(), None);
    let mut peer = server.session().await;
    let hello = peer.recv().await;
    assert!(matches!(hello, AgentMsg::Hello { min_protocol: 1, max_protocol: 2, .. }), "{hello:?}");
    peer.send(&ServerMsg::Welcome {
        protocol: 1,
        agent_id: "agent-1".into(),
        site: "site-1".into(),
        devices: vec![spec("door", sim.addr, false)],
        probe_interval_ms: 30_000,
    })
    .await;
    // Still speaking protocol 1: requests work ...
    assert!(matches!(ok(peer.request(1, "door", Op::GetTime).await), OpResult::Time { .. }));
    // ... but a clear needs the server's confirmation, which a protocol-1 server cannot give.
    let e = err(peer.request(2, "door", Op::ClearAttendance { sync_first: true }).await);
    assert_eq!(e.kind, ErrorKind::Protocol, "a kind a protocol-1 server knows: {e:?}");
    assert_eq!(sim.terminal.record_count(), 20);
    agent.stop().await;
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_waits_the_longest_delay() {
    let mut server = FakeServer::start().await;
    server.refuse.store(401, Ordering::SeqCst);
    let t = timing();
    let longest = t.backoff_max;
    let agent = Agent::start(&server, t, None);

    // HTTP 401 at the upgrade: every attempt waits the longest delay (a plain failure would wait 20-40 ms).
    let mut times = Vec::new();
    for _ in 0..3 {
        let incoming = server.next().await;
        assert!(incoming.ws.is_none());
        assert_eq!(incoming.authorization.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
        times.push(incoming.at);
    }
    server.refuse.store(403, Ordering::SeqCst);
    times.push(server.next().await.at);
    for pair in times.windows(2) {
        let gap = pair[1] - pair[0];
        assert!(gap >= longest, "attempts {gap:?} apart, want at least {longest:?}");
    }

    // Close code UNAUTHORIZED after Hello, and INCOMPATIBLE, are treated the same way.
    server.refuse.store(0, Ordering::SeqCst);
    for code in [close::UNAUTHORIZED, close::INCOMPATIBLE] {
        let mut peer = server.session().await;
        assert!(matches!(peer.recv().await, AgentMsg::Hello { .. }));
        peer.close(code, "server speaks protocol 7..=9").await;
        let closed_at = Instant::now();
        let next = server.next().await;
        assert!(next.at - closed_at >= longest, "reconnected {:?} after close code {code}", next.at - closed_at);
        drop(next);
    }
    // Once accepted, the agent works normally.
    let mut peer = server.session().await;
    peer.welcome(Vec::new()).await;
    assert_eq!(peer.recv_until(STEP, reachability).await, Vec::new());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reconnects_after_drops_and_garbage_without_panicking() {
    let mut server = FakeServer::start().await;
    let agent = Agent::start(&server, timing(), None);

    // The server drops the connection without a word.
    let mut peer = server.session().await;
    peer.welcome(Vec::new()).await;
    drop(peer);

    // Garbage of every kind closes the session with PROTOCOL_ERROR; the agent comes back by itself.
    let not_a_message = essl_wire::encode_agent(&AgentMsg::Progress { id: 1, done: 1, total: 2 }).expect("encodes");
    let garbage = [
        Message::binary(vec![0xc1, 0xff, 0x00]),
        Message::binary(not_a_message),
        Message::text("{\"Welcome\":{}}"),
        Message::binary(Vec::new()),
    ];
    for frame in garbage {
        let mut peer = server.session().await;
        peer.welcome(Vec::new()).await;
        peer.send_raw(frame.clone()).await.expect("sent");
        let closed = within(STEP, "the agent's close", async {
            loop {
                if let Err(close) = peer.recv_or_close().await {
                    return close;
                }
            }
        })
        .await;
        assert_eq!(closed.map(|f| u16::from(f.code)), Some(close::PROTOCOL_ERROR), "after {frame:?}");
    }

    // A frame over the limit is refused by the WebSocket layer; the agent reconnects.
    let mut peer = server.session().await;
    peer.welcome(Vec::new()).await;
    let _ = peer.send_raw(Message::binary(vec![0u8; MAX_MESSAGE_BYTES + 1])).await;
    drop(peer);

    // Garbage before Welcome too.
    let mut peer = server.session().await;
    assert!(matches!(peer.recv().await, AgentMsg::Hello { .. }));
    peer.send(&ServerMsg::Ack { batch: 1 }).await;
    drop(peer);

    // Still the same agent, still working.
    let mut peer = server.session().await;
    peer.welcome(Vec::new()).await;
    assert_eq!(err(peer.request(1, "x", Op::Probe).await).kind, ErrorKind::UnknownDevice);
    assert!(!agent.task.is_finished());
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn going_away_reconnects_quickly_without_backing_off() {
    let mut server = FakeServer::start().await;
    // Failures would wait 5 s or more; going away waits 10-50 ms here.
    let t = Timing {
        backoff_min: Duration::from_secs(5),
        backoff_max: Duration::from_secs(10),
        going_away_min: Duration::from_millis(10),
        going_away_max: Duration::from_millis(50),
        ..Timing::default()
    };
    let agent = Agent::start(&server, t, None);
    let mut peer = server.session().await;
    for _ in 0..3 {
        peer.welcome(Vec::new()).await;
        peer.close(close::GOING_AWAY, "restarting").await;
        let closed_at = Instant::now();
        let next = within(Duration::from_secs(2), "a quick reconnect", server.incoming.recv()).await.expect("server");
        assert!(next.at - closed_at < Duration::from_secs(2));
        peer = Peer { ws: next.ws.expect("upgraded") };
    }
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_server_is_dropped() {
    let mut server = FakeServer::start().await;
    let t = Timing { ping_interval: Duration::from_millis(250), hello_timeout: Duration::from_millis(300), ..timing() };
    let agent = Agent::start(&server, t, None);

    // No Welcome: the agent gives up on the handshake and tries again.
    let mut peer = server.session().await;
    assert!(matches!(peer.recv().await, AgentMsg::Hello { .. }));
    let _silent = peer;
    let mut peer = server.session().await;

    // Welcome, then nothing: the server is not even read, so no pong answers the agent's pings.
    peer.welcome(Vec::new()).await;
    let silent_since = Instant::now();
    let _silent = peer;
    let next = server.next().await;
    assert!(next.ws.is_some());
    assert!(next.at - silent_since >= Duration::from_millis(500), "dropped after {:?}", next.at - silent_since);

    // While the server answers pings, the session stays up well past two intervals.
    let mut peer = Peer { ws: next.ws.expect("ws") };
    peer.welcome(Vec::new()).await;
    peer.recv_until(STEP, reachability).await;
    let quiet = tokio::time::timeout(Duration::from_millis(1200), peer.recv_or_close()).await;
    assert!(quiet.is_err(), "the agent closed a live session: {quiet:?}");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_runs_and_rejects_bad_configuration() {
    const AGENT: &str = env!("CARGO_BIN_EXE_essl-agent");
    let dir = std::env::temp_dir().join(format!("essl-agent-relay-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("agent.toml");
    std::fs::write(&file, "server = \"wss://relay.example/agent/ws\"\ntoken = \"t\"\nprobe_interval_secs = 0\n")
        .expect("write");
    let out = within(
        STEP,
        "the agent to exit",
        tokio::process::Command::new(AGENT)
            .args(["run", "--config"])
            .arg(&file)
            .env_remove("ESSL_AGENT_TOKEN")
            .output(),
    )
    .await
    .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("probe_interval_secs") && stderr.contains(&file.display().to_string()), "{stderr}");

    let out = within(
        STEP,
        "the agent to exit",
        tokio::process::Command::new(AGENT)
            .args(["run", "--server", "wss://x.example/agent/ws"])
            .env_remove("ESSL_AGENT_TOKEN")
            .output(),
    )
    .await
    .expect("runs");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("ESSL_AGENT_TOKEN"));

    // With a good configuration (token from the environment) the binary connects and says Hello.
    let mut server = FakeServer::start().await;
    let mut child = tokio::process::Command::new(AGENT)
        .args(["run", "--server", &server.url().to_string()])
        .arg("--outbox")
        .arg(dir.join("outbox.db"))
        .env("ESSL_AGENT_TOKEN", "from-the-environment")
        .env("RUST_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .expect("spawns");
    let incoming = server.next().await;
    assert_eq!(incoming.authorization.as_deref(), Some("Bearer from-the-environment"));
    let mut peer = Peer { ws: incoming.ws.expect("ws") };
    assert!(matches!(peer.recv().await, AgentMsg::Hello { .. }));
    child.start_kill().expect("kill");
    let _ = within(STEP, "the agent to exit", child.wait()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
// The upgrade callback's signature is tungstenite's: its error is a whole HTTP response.
#[allow(clippy::result_large_err)]
async fn wss_is_verified_and_an_extra_ca_is_trusted() {
    // A private CA, and a certificate for 127.0.0.1 that it signed.
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.distinguished_name.push(rcgen::DnType::CommonName, "essl-relay test CA");
    let ca = rcgen::CertifiedIssuer::self_signed(ca_params, rcgen::KeyPair::generate().expect("key")).expect("CA");
    let key = rcgen::KeyPair::generate().expect("key");
    let params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).expect("params");
    let cert = params.signed_by(&key, &ca).expect("certificate");
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(vec![cert.der().clone()], PrivatePkcs8KeyDer::from(key.serialize_der()).into())
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));

    // A TLS WebSocket server reporting each handshake: the TLS error, or the Authorization header and the socket.
    type Accepted = Result<(Option<String>, WebSocketStream<tokio_rustls::server::TlsStream<TcpStream>>), String>;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, mut accepted) = mpsc::unbounded_channel::<Accepted>();
    let server = tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (acceptor, tx) = (acceptor.clone(), tx.clone());
            tokio::spawn(async move {
                let tls = match acceptor.accept(tcp).await {
                    Ok(tls) => tls,
                    Err(e) => return drop(tx.send(Err(e.to_string()))),
                };
                let mut auth = None;
                let callback = |req: &Request, resp: Response| {
                    auth = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()).map(String::from);
                    Ok(resp)
                };
                if let Ok(ws) = tokio_tungstenite::accept_hdr_async(tls, callback).await {
                    let _ = tx.send(Ok((auth, ws)));
                }
            });
        }
    });
    let url = format!("wss://{addr}/agent/ws");

    // The operating system's store alone does not trust a private CA: the agent aborts the TLS handshake
    // (or, on a machine with no system store at all, refuses to start).
    let mut config = Config::new(ServerUrl::parse(&url).expect("url"), Secret::new(TOKEN));
    config.timing = timing();
    let mut agent = Agent::with_config(config);
    let mut ended = false;
    tokio::select! {
        first = accepted.recv() => {
            let error = first.expect("server running").expect_err("the handshake must fail without the CA");
            assert!(!error.is_empty());
        }
        result = &mut agent.task => {
            ended = true;
            assert!(matches!(result, Ok(Err(_))), "{result:?}");
        }
        _ = tokio::time::sleep(STEP) => panic!("timed out waiting for the TLS handshake"),
    }
    if !ended {
        agent.stop_if_running().await;
    }

    // With the CA given as --ca-file (through the configuration loader), the connection comes up.
    let dir = std::env::temp_dir().join(format!("essl-agent-wss-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).expect("write CA");
    let sources = essl_agent::config::Sources {
        server: Some(url),
        token_flag: Some(Secret::new(TOKEN)),
        ca_file: Some(ca_file),
        ..Default::default()
    };
    let mut config = essl_agent::config::load(sources).expect("valid configuration").config;
    config.timing = timing();
    let agent = Agent::with_config(config);
    let (auth, ws) = within(STEP, "a TLS session", async {
        loop {
            // Failures left over from the first agent are skipped.
            if let Ok(ok) = accepted.recv().await.expect("server running") {
                return ok;
            }
        }
    })
    .await;
    assert_eq!(auth.as_deref(), Some(format!("Bearer {TOKEN}").as_str()));
    let mut peer = Peer { ws };
    peer.welcome(Vec::new()).await;
    assert_eq!(peer.recv_until(STEP, reachability).await, Vec::new());
    agent.stop().await;
    server.abort();
}
