//! The test harness: a real `essl-server` (in-process, on port 0, with a real database), real agents (the agent's
//! relay loop, in-process, over a real WebSocket) and simulated terminals. Nothing here is a mock.

pub mod balancer;
pub mod browser;
pub mod db;
pub mod exact;
pub mod proxy;

use std::net::SocketAddr;
use std::time::Duration;

use essl_server::app::{AppState, ServerConfig};
use essl_server::auth::token;
use essl_server::hub::{HubConfig, HubEvent};
use essl_server::store::Store;
use essl_server::store::model::Role;
use essl_zk_sim::{Fixture, Simulator, Terminal, TerminalConfig};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

pub use balancer::Balancer;
pub use db::{Backend, TestDb};
pub use exact::{Comparison, Puncher, assert_exact, wait_exact};
pub use proxy::Proxy;

/// Runs each named `async fn(TestDb)` of the calling test file twice: as `name::sqlite` on a fresh SQLite file, and
/// as `name::postgres` on a fresh PostgreSQL database (skipped, or failed under `ESSL_REQUIRE_POSTGRES`, when
/// `TEST_DATABASE_URL` is unset).
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = $crate::TestDb::new($crate::Backend::Sqlite).await.expect("sqlite is always available");
                super::$name(db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = $crate::TestDb::new($crate::Backend::Postgres).await else { return };
                super::$name(db).await;
            }
        }
    )*};
}

/// Hub timing for tests: fast probes and liveness so tests do not wait long.
pub fn test_hub() -> HubConfig {
    HubConfig {
        ping_interval: Duration::from_secs(2),
        hello_timeout: Duration::from_secs(5),
        probe_interval: Duration::from_millis(500),
        request_timeout: Duration::from_secs(10),
        sync_timeout: Duration::from_secs(120),
        ..HubConfig::default()
    }
}

/// Server settings for tests: live event streams re-check their credentials often, so tests of it are quick.
/// On PostgreSQL, instances renew their cluster lease every 500 ms (a killed one is forgotten within a second).
fn test_config() -> ServerConfig {
    ServerConfig {
        events_recheck: Duration::from_millis(300),
        cluster: essl_server::cluster::ClusterConfig {
            heartbeat: Duration::from_millis(500),
            ..essl_server::cluster::ClusterConfig::default()
        },
        ..ServerConfig::default()
    }
}

/// Push (ADMS) timing for tests: terminals poll every second and retry a second after a failure; a command
/// without a result is sent again after 3 s.
pub fn test_push() -> essl_server::push::PushConfig {
    essl_server::push::PushConfig {
        delay: Duration::from_secs(1),
        error_delay: Duration::from_secs(1),
        resend_after: Duration::from_secs(3),
        ..essl_server::push::PushConfig::default()
    }
}

/// A running server.
pub struct Server {
    pub addr: SocketAddr,
    pub state: AppState,
    pub admin: String,
    pub staff: String,
    http: reqwest::Client,
    stop: CancellationToken,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    pub async fn start(db: &TestDb) -> Server {
        Self::start_with(db, test_hub()).await
    }

    pub async fn start_with(db: &TestDb, hub: HubConfig) -> Server {
        Self::start_at(db, hub, "127.0.0.1:0".parse().expect("addr")).await
    }

    /// A server at a given address: a restarted server on the port of the one before, as agents know it.
    pub async fn start_at(db: &TestDb, hub: HubConfig, addr: SocketAddr) -> Server {
        Self::start_push(db, hub, test_push(), addr).await
    }

    /// A server at `addr` with the given push (ADMS) settings (benchmarks lift the rate limits).
    pub async fn start_push(
        db: &TestDb,
        hub: HubConfig,
        push: essl_server::push::PushConfig,
        addr: SocketAddr,
    ) -> Server {
        Self::start_configured(db, addr, |config| {
            config.hub = hub;
            config.push = push;
        })
        .await
    }

    /// A server whose shutdown gives in-flight requests only `grace` before its agents are let go: a restart that
    /// cuts a long sync short, as one whose sync outlasts the grace period does.
    pub async fn start_with_grace(db: &TestDb, grace: Duration) -> Server {
        Self::start_configured(db, "127.0.0.1:0".parse().expect("addr"), |config| config.grace = grace).await
    }

    /// A server at `addr` with the test settings, then whatever `configure` changes.
    pub async fn start_configured(db: &TestDb, addr: SocketAddr, configure: impl FnOnce(&mut ServerConfig)) -> Server {
        init_tracing();
        let store = Store::connect(&db.url).await.expect("database opens and migrates");
        let admin = api_token(&store, "admin", Role::Admin).await;
        let staff = api_token(&store, "staff", Role::Staff).await;
        dashboard_users(&store).await;
        let mut config =
            ServerConfig { hub: test_hub(), grace: Duration::from_secs(5), push: test_push(), ..test_config() };
        configure(&mut config);
        let state = AppState::new(store, config);
        let listener = tokio::net::TcpListener::bind(addr).await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task =
            tokio::spawn(essl_server::app::run(listener, state.clone(), async move { signal.cancelled().await }));
        Server { addr, state, admin, staff, http: reqwest::Client::new(), stop, task }
    }

    /// The same server over TLS (`https`/`wss`) with the PEM certificate chain and key at the given paths.
    pub async fn start_tls(db: &TestDb, cert: &std::path::Path, key: &std::path::Path) -> Server {
        Self::start_tls_configured(db, cert, key, |_| {}).await
    }

    /// A server over TLS with the test settings, then whatever `configure` changes.
    pub async fn start_tls_configured(
        db: &TestDb,
        cert: &std::path::Path,
        key: &std::path::Path,
        configure: impl FnOnce(&mut ServerConfig),
    ) -> Server {
        init_tracing();
        let store = Store::connect(&db.url).await.expect("database opens and migrates");
        let admin = api_token(&store, "admin", Role::Admin).await;
        let staff = api_token(&store, "staff", Role::Staff).await;
        dashboard_users(&store).await;
        let mut config = ServerConfig {
            hub: test_hub(),
            grace: Duration::from_secs(5),
            tls: true,
            push: test_push(),
            ..test_config()
        };
        configure(&mut config);
        let state = AppState::new(store, config);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let (cert, key) = (cert.to_owned(), key.to_owned());
        let st = state.clone();
        let task = tokio::spawn(async move {
            essl_server::tls::serve(listener, st, &cert, &key, async move { signal.cancelled().await }).await
        });
        Server { addr, state, admin, staff, http: reqwest::Client::new(), stop, task }
    }

    /// Ends the instance as `kill -9` would, as far as other instances can tell: its cluster membership stops
    /// without a goodbye (no lease renewal, no registry write) and it stops serving HTTP. Its agents' connections
    /// stay open until the test cuts them (`Balancer::cut`), as a dead machine's do until the network notices.
    pub fn crash(self) {
        if let Some(cluster) = self.state.hub.cluster() {
            cluster.halt();
        }
        self.task.abort();
    }

    /// This instance's id in the cluster (PostgreSQL only).
    pub fn instance_id(&self) -> Option<uuid::Uuid> {
        self.state.hub.cluster().map(|c| c.id())
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(self) {
        self.signal_stop();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.task).await;
    }

    /// The shutdown signal (SIGTERM), without waiting: the server goes through its shutdown delay and shutdown while
    /// the test looks on.
    pub fn signal_stop(&self) {
        self.stop.cancel();
    }

    /// Whether the server's task has ended (its listener closed, its agents let go).
    pub fn has_stopped(&self) -> bool {
        self.task.is_finished()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/agent/ws", self.addr)
    }

    pub fn events(&self) -> broadcast::Receiver<HubEvent> {
        self.state.hub.subscribe()
    }

    /// A request with a bearer token; the answer's status and JSON (or `Value::Null` for an empty body).
    pub async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = tokio::time::timeout(Duration::from_secs(60), req.send())
            .await
            .expect("answer within 60 s")
            .expect("HTTP request");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        let value =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        (status, value)
    }

    pub async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.call(reqwest::Method::POST, path, Some(&self.admin.clone()), Some(body)).await
    }

    pub async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.call(reqwest::Method::GET, path, Some(&self.admin.clone()), None).await
    }

    /// Raw request: method, path, token, content type and body bytes.
    pub async fn raw(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Value) {
        let mut req = self.http.request(method, self.url(path)).header("content-type", "application/json").body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("HTTP request");
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        (status, serde_json::from_str(&text).unwrap_or(Value::String(text)))
    }

    /// Registers a terminal at `addr` for `site`; returns its id.
    pub async fn add_device(&self, name: &str, addr: SocketAddr, site: &str) -> String {
        let (status, body) = self
            .post(
                "/api/devices",
                serde_json::json!({"name": name, "ipAddress": addr.ip().to_string(), "port": addr.port(),
                    "site": site, "timezone": "Asia/Kolkata"}),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        body["id"].as_str().expect("device id").to_owned()
    }

    /// Creates an agent token for `site`; returns (agent id, token).
    pub async fn add_agent(&self, name: &str, site: &str) -> (String, String) {
        let (status, body) = self.post("/api/agents", serde_json::json!({"name": name, "site": site})).await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (body["agent"]["id"].as_str().expect("agent id").to_owned(), body["token"].as_str().expect("token").to_owned())
    }
}

/// Logs to the test's output when `RUST_LOG` is set.
pub fn init_tracing() {
    if std::env::var_os("RUST_LOG").is_some() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    }
}

/// The dashboard logins every test server has: `admin` and `staff`, both with [`PASSWORD`].
pub const ADMIN_USER: &str = "admin";
pub const STAFF_USER: &str = "staff";
pub const PASSWORD: &str = "correct horse battery staple";

async fn dashboard_users(store: &Store) {
    // A low PBKDF2 cost: tests log in often; the cost travels with the hash, so the check is the real one.
    let secret = token::Secret::new(PASSWORD);
    let hash = essl_server::auth::password::hash_with(&secret, 1_000).expect("hash");
    for (name, role) in [(ADMIN_USER, Role::Admin), (STAFF_USER, Role::Staff)] {
        // A restarted server finds them already there.
        if store.user_login(name).await.expect("users readable").is_none() {
            store.create_user(name, role, &hash).await.expect("user stored");
        }
    }
}

async fn api_token(store: &Store, name: &str, role: Role) -> String {
    let t = token::generate(token::API_PREFIX).expect("random");
    store.create_api_token_with_id(t.id, name, role, &t.hash).await.expect("token stored");
    t.token.expose().to_owned()
}

/// A directory for one agent's outbox, removed when dropped. Tests that restart an agent on the same outbox
/// keep one of these for the life of the test.
pub struct TempOutbox {
    dir: std::path::PathBuf,
}

impl TempOutbox {
    pub fn new() -> TempOutbox {
        let dir = std::env::temp_dir().join(format!("essl-e2e-outbox-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("outbox dir");
        TempOutbox { dir }
    }

    pub fn path(&self) -> std::path::PathBuf {
        self.dir.join("outbox.db")
    }
}

impl Default for TempOutbox {
    fn default() -> Self {
        TempOutbox::new()
    }
}

impl Drop for TempOutbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A running agent (the real relay loop).
pub struct Agent {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    /// The outbox the harness made for it, if the test did not give one.
    _outbox: Option<TempOutbox>,
}

impl Agent {
    pub fn start(server: &Server, token: &str) -> Agent {
        Self::start_with(&server.ws_url(), token, Vec::new())
    }

    /// An agent for `url` (ws:// or wss://) trusting `extra_roots` besides the system's.
    pub fn start_with(url: &str, token: &str, extra_roots: Vec<Vec<u8>>) -> Agent {
        Self::start_configured(url, token, |config| {
            config.extra_roots = extra_roots.into_iter().map(Into::into).collect()
        })
    }

    /// An agent with the harness's short timings and a fresh outbox, then whatever `configure` changes (give
    /// `config.collect.outbox` to run on a particular outbox).
    pub fn start_configured(url: &str, token: &str, configure: impl FnOnce(&mut essl_agent::config::Config)) -> Agent {
        let url = essl_agent::config::ServerUrl::parse(url).expect("url");
        let mut config = essl_agent::config::Config::new(url, essl_agent::config::Secret::new(token));
        config.timing.backoff_min = Duration::from_millis(50);
        config.timing.backoff_max = Duration::from_millis(500);
        config.timing.going_away_min = Duration::from_millis(10);
        config.timing.going_away_max = Duration::from_millis(100);
        config.timing.ping_interval = Duration::from_secs(2);
        let outbox = TempOutbox::new();
        config.collect.outbox = outbox.path();
        configure(&mut config);
        let outbox = (config.collect.outbox == outbox.path()).then_some(outbox);
        let stop = CancellationToken::new();
        let signal = stop.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = essl_agent::relay::run(config, signal).await {
                panic!("agent failed to start: {e}");
            }
        });
        Agent { stop, task, _outbox: outbox }
    }

    /// Ends the agent as a crash would: the task and its connection vanish without a goodbye.
    pub fn kill(self) {
        self.task.abort();
    }

    /// Ends the agent politely.
    pub async fn stop(self) {
        self.stop.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(5), self.task).await;
    }
}

/// A simulated terminal on 127.0.0.1.
pub async fn terminal(fixture: &Fixture) -> Simulator {
    let t = Terminal::new(fixture, TerminalConfig { max_sessions: 64, ..TerminalConfig::default() }).expect("fixture");
    Simulator::start("127.0.0.1:0".parse().expect("addr"), t).await.expect("simulator binds")
}

/// `n` syncs of `device` at once (`POST /api/essl/sync-attendance` as admin), spread over `servers` in turn: each
/// answer, in the order sent.
pub async fn syncs_at_once(servers: &[std::sync::Arc<Server>], device: &str, n: usize) -> Vec<(StatusCode, Value)> {
    let tasks: Vec<_> = (0..n)
        .map(|i| {
            let server = servers[i % servers.len()].clone();
            let body = serde_json::json!({"deviceId": device});
            tokio::spawn(async move { server.post("/api/essl/sync-attendance", body).await })
        })
        .collect();
    let mut answers = Vec::with_capacity(n);
    for task in tasks {
        answers.push(task.await.expect("a sync task"));
    }
    answers
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `within`.
pub async fn poll_until(within: Duration, what: &str, mut check: impl AsyncFnMut() -> bool) {
    let started = std::time::Instant::now();
    while !check().await {
        assert!(started.elapsed() < within, "{what} did not happen within {within:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits for a hub event matching `pred`, at most `within`.
pub async fn wait_event(
    events: &mut broadcast::Receiver<HubEvent>,
    within: Duration,
    pred: impl Fn(&HubEvent) -> bool,
) -> HubEvent {
    tokio::time::timeout(within, async {
        loop {
            match events.recv().await {
                Ok(e) if pred(&e) => return e,
                Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                Err(broadcast::error::RecvError::Closed) => panic!("hub closed"),
            }
        }
    })
    .await
    .expect("expected hub event did not come in time")
}

/// Waits until the agent reported the device reachable.
pub async fn wait_reachable(server: &Server, device_id: &str, agent_id: &str) {
    let device: uuid::Uuid = device_id.parse().expect("uuid");
    let agent: uuid::Uuid = agent_id.parse().expect("uuid");
    let mut events = server.events();
    if server.state.hub.reachability(device).iter().any(|r| r.agent_id == agent && r.reachable) {
        return;
    }
    wait_event(&mut events, Duration::from_secs(15), |e| {
        matches!(e, HubEvent::Reachability { device_id, agent_id, reachable: true } if *device_id == device && *agent_id == agent)
    })
    .await;
}
