//! Several `essl-server` instances on one PostgreSQL database (the cluster registry, requests and events across
//! instances, a killed instance, a rolling restart, many agents, forged notices). PostgreSQL only: SQLite serves one
//! instance. Skipped without `TEST_DATABASE_URL`, failed instead under `ESSL_REQUIRE_POSTGRES`.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use essl_e2e::*;
use essl_server::hub::HubEvent;
use essl_zk_sim::generate;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use uuid::Uuid;

async fn postgres() -> Option<TestDb> {
    TestDb::new(Backend::Postgres).await
}

/// Polls `check` every 50 ms until it holds; panics with `what` after `within`.
async fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    poll_until(within, what, async || check()).await;
}

/// The agents a server lists as connected, by id (with how often each is listed).
async fn connected_agents(server: &Server) -> HashMap<String, usize> {
    let mut seen = HashMap::new();
    let mut path = "/api/agents?limit=1000".to_owned();
    loop {
        let (status, body) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for a in body["items"].as_array().expect("items") {
            if a["connected"] == true {
                *seen.entry(a["id"].as_str().expect("id").to_owned()).or_insert(0) += 1;
            }
        }
        match body["nextCursor"].as_str() {
            Some(c) => path = format!("/api/agents?limit=1000&cursor={c}"),
            None => return seen,
        }
    }
}

/// Rows in the registry that count (their instance holds its lease), per agent.
async fn registry_rows(db: &TestDb, agent: Uuid) -> i64 {
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connects");
    let n: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM essl_agent_presence p JOIN essl_instances i ON i.id = p.instance_id \
         WHERE p.agent_id = $1 AND i.lease_until > now()",
    )
    .bind(agent)
    .fetch_one(&pool)
    .await
    .expect("query");
    pool.close().await;
    n
}

/// Two instances on one database, a terminal of `records` punches, and its agent connected to B, mirrored by A.
struct AgentOnB {
    a: Server,
    b: Server,
    sim: essl_zk_sim::Simulator,
    device: String,
    agent_id: String,
    agent_uuid: Uuid,
    agent: Agent,
}

async fn agent_on_b(db: &TestDb, records: usize, seed: u64) -> AgentOnB {
    agent_on(Server::start(db).await, Server::start(db).await, records, seed).await
}

/// The same on two servers already started.
async fn agent_on(a: Server, b: Server, records: usize, seed: u64) -> AgentOnB {
    let sim = terminal(&generate::generate(25, records, seed)).await;
    let device = a.add_device("Door", sim.addr, "HQ").await;
    let (agent_id, token) = a.add_agent("office-pc", "HQ").await;
    let agent = Agent::start(&b, &token);
    wait_reachable(&b, &device, &agent_id).await;
    let agent_uuid: Uuid = agent_id.parse().expect("uuid");
    let b_id = b.instance_id().expect("on PostgreSQL every instance joins");
    eventually(Duration::from_secs(5), "A mirrors B's agent", || a.state.hub.instance_of(agent_uuid) == Some(b_id))
        .await;
    AgentOnB { a, b, sim, device, agent_id, agent_uuid, agent }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_on_one_instance_is_served_by_an_agent_on_the_other() {
    let Some(db) = postgres().await else { return };
    let AgentOnB { a, b, sim, device, agent_id, agent_uuid, agent } = agent_on_b(&db, 300, 5).await;
    eventually(Duration::from_secs(5), "A knows B's reachability report", || {
        a.state.hub.reachability(device.parse().expect("uuid")).iter().any(|r| r.reachable)
    })
    .await;

    // check-device on A, the seed's JSON as from a single instance.
    let (status, body) = a.post("/api/essl/check-device", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["reachableCount"], 1);
    assert_eq!(body["reachableDevices"][0]["deviceId"], device.as_str());
    assert_eq!(body["reachableDevices"][0]["reachable"], true);

    // sync on A: progress events from B reach A's stream; B's agent stores the records once.
    let mut events = a.events();
    let (status, body) = a.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["totalRecords"], 300, "{body}");
    wait_event(&mut events, Duration::from_secs(5), |e| matches!(e, HubEvent::PunchesStored { inserted: 300, .. }))
        .await;
    let (_, body) = a.get(&format!("/api/attendance?deviceId={device}&limit=1000")).await;
    assert_eq!(body["items"].as_array().expect("items").len(), 300);
    assert_exact(&a.state.store, device.parse().expect("uuid"), &sim.terminal, Duration::from_secs(5)).await;

    // The agent is listed once, connected, on both instances.
    assert_eq!(connected_agents(&a).await.get(&agent_id), Some(&1));
    assert_eq!(connected_agents(&b).await.get(&agent_id), Some(&1));
    assert_eq!(registry_rows(&db, agent_uuid).await, 1);

    // The agent leaves: A forgets it.
    agent.stop().await;
    eventually(Duration::from_secs(5), "A forgets the agent", || a.state.hub.presence(agent_uuid).is_none()).await;
    assert_eq!(registry_rows(&db, agent_uuid).await, 0);
    b.stop().await;
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_instance_loses_its_agents_to_the_other_and_no_punch() {
    let Some(db) = postgres().await else { return };
    let a = Server::start(&db).await;
    let b = Server::start(&db).await;
    // B first in turn: the agent's first connection lands on B.
    let balancer = Balancer::start(&[b.addr, a.addr]).await.expect("balancer");
    let sim = terminal(&generate::generate(10, 100, 9)).await;
    let device = a.add_device("Door", sim.addr, "HQ").await;
    let device_uuid: Uuid = device.parse().expect("uuid");
    let (agent_id, token) = a.add_agent("office-pc", "HQ").await;
    let agent_uuid: Uuid = agent_id.parse().expect("uuid");
    let agent = Agent::start_with(&balancer.ws_url(), &token, Vec::new());
    wait_reachable(&b, &device, &agent_id).await;
    let (_, body) = a.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(body["success"], true, "{body}");
    let puncher = Puncher::start(sim.terminal.clone(), Duration::from_millis(100));

    // kill -9 of B: no goodbye; the network drops its connections.
    let b_id = b.instance_id().expect("instance");
    b.crash();
    balancer.cut(0);
    // The agent is back within its backoff cap (500 ms in tests) plus the handshake, now on A.
    eventually(Duration::from_secs(5), "the agent reconnects to A", || {
        a.state.hub.local_presence(agent_uuid).is_some()
    })
    .await;
    // B's lease (two heartbeats of 500 ms) runs out: nothing shows the agent on B any more.
    eventually(Duration::from_secs(3), "B's lease runs out", || a.state.hub.instance_of(agent_uuid) != Some(b_id))
        .await;
    tokio::time::sleep(Duration::from_millis(1200)).await;
    assert_eq!(connected_agents(&a).await.get(&agent_id), Some(&1), "the agent is listed once");
    assert_eq!(registry_rows(&db, agent_uuid).await, 1);

    // The next request succeeds; every punch made meanwhile is stored once.
    wait_reachable(&a, &device, &agent_id).await;
    let (_, body) = a.post("/api/essl/check-device", json!({"deviceId": device})).await;
    assert_eq!(body["reachableCount"], 1, "{body}");
    puncher.wait_for(10, Duration::from_secs(10)).await;
    puncher.stop().await;
    let (_, body) = a.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(body["success"], true, "{body}");
    assert_exact(&a.state.store, device_uuid, &sim.terminal, Duration::from_secs(10)).await;
    agent.stop().await;
    a.stop().await;
}

/// One request through the balancer on a fresh connection (as behind a real load balancer, each request may land
/// on another instance); `Ok` only for the seed's success shape.
async fn through(
    client: &reqwest::Client,
    balancer: &Balancer,
    token: &str,
    path: &str,
    body: Value,
) -> Result<Value, String> {
    let started = Instant::now();
    let resp = client
        .post(balancer.url(path))
        .bearer_auth(token)
        .json(&body)
        .timeout(Duration::from_secs(20))
        .send()
        .await
        .map_err(|e| format!("{path}: {e} after {:?}", started.elapsed()))?;
    let status = resp.status();
    let body: Value = resp.json().await.map_err(|e| format!("{path}: {e}"))?;
    let ok = status == StatusCode::OK
        && body["success"] == true
        && (path != "/api/essl/check-device" || body["reachableCount"] == 1);
    if ok { Ok(body) } else { Err(format!("{path}: {status} {body}")) }
}

/// How a rolling restart takes an instance out of the load balancer's rotation.
#[derive(Clone, Copy)]
enum Rotation {
    /// As an orchestrator does: out of the balancer's rotation first, then SIGTERM, the instances having a short
    /// shutdown delay ([`DRAINED_DELAY`]) for connections the balancer had routed to them just before (as a
    /// `preStop` sleep does: without it, one such connection is now and then reset in the closing listener's
    /// backlog).
    Drained,
    /// Nobody tells the balancer: it only health-checks `/readyz`, and the instances have a shutdown delay of
    /// [`SHUTDOWN_DELAY`], several of its check intervals.
    HealthChecked,
}

const HEALTH_CHECK_INTERVAL: Duration = Duration::from_millis(250);
const SHUTDOWN_DELAY: Duration = Duration::from_millis(1500);
const DRAINED_DELAY: Duration = Duration::from_millis(300);

impl Rotation {
    async fn balancer(self, backends: &[std::net::SocketAddr]) -> Balancer {
        match self {
            Rotation::Drained => Balancer::start(backends).await,
            Rotation::HealthChecked => Balancer::start_health_checked(backends, HEALTH_CHECK_INTERVAL).await,
        }
        .expect("balancer")
    }

    async fn instance(self, db: &TestDb) -> Server {
        let delay = match self {
            Rotation::Drained => DRAINED_DELAY,
            Rotation::HealthChecked => SHUTDOWN_DELAY,
        };
        Server::start_configured(db, "127.0.0.1:0".parse().expect("addr"), |config| config.shutdown_delay = delay).await
    }

    /// Stops backend `i` of the balancer (SIGTERM, graceful) and starts a new instance on a new port in its place.
    async fn restart(self, db: &TestDb, balancer: &Balancer, i: usize, old: Server) -> Server {
        match self {
            Rotation::Drained => {
                balancer.drain(i);
                old.stop().await;
            }
            Rotation::HealthChecked => {
                let stopping = tokio::spawn(old.stop());
                // /readyz answers 503 from the signal on: the balancer sees it while the instance still accepts.
                eventually(SHUTDOWN_DELAY, "the health check takes the stopping instance out of rotation", || {
                    !balancer.is_healthy(i)
                })
                .await;
                stopping.await.expect("stops");
            }
        }
        let new = self.instance(db).await;
        balancer.replace(i, new.addr);
        new
    }
}

/// Both instances behind the balancer restarted one after the other, taken out of rotation as `rotation` says,
/// while a client loops over check and sync through the balancer: no request may fail, no punch be lost.
async fn rolling_restart_fails_no_request(rotation: Rotation) {
    let Some(db) = postgres().await else { return };
    let a = rotation.instance(&db).await;
    let b = rotation.instance(&db).await;
    let balancer = Arc::new(rotation.balancer(&[a.addr, b.addr]).await);
    let sim = terminal(&generate::generate(10, 200, 3)).await;
    let device = a.add_device("Door", sim.addr, "HQ").await;
    let (agent_id, token) = a.add_agent("office-pc", "HQ").await;
    let agent = Agent::start_with(&balancer.ws_url(), &token, Vec::new());
    eventually(Duration::from_secs(10), "the agent probes its terminal", || {
        let d: Uuid = device.parse().expect("uuid");
        let agent: Uuid = agent_id.parse().expect("uuid");
        [&a, &b].iter().any(|s| s.state.hub.reachability(d).iter().any(|r| r.agent_id == agent && r.reachable))
    })
    .await;
    let puncher = Puncher::start(sim.terminal.clone(), Duration::from_millis(150));

    // A client that loops over check and sync, each request on a new connection.
    let stop = tokio_util::sync::CancellationToken::new();
    let done = Arc::new(AtomicU64::new(0));
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().expect("client");
    let loop_task = {
        let (balancer, token, device, stop, done) =
            (balancer.clone(), a.admin.clone(), device.clone(), stop.clone(), done.clone());
        tokio::spawn(async move {
            let mut failures = Vec::new();
            while !stop.is_cancelled() {
                for path in ["/api/essl/check-device", "/api/essl/sync-attendance"] {
                    if let Err(e) = through(&client, &balancer, &token, path, json!({"deviceId": device})).await {
                        failures.push(e);
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            }
            failures
        })
    };
    let requests_before = |n: u64| {
        let done = done.clone();
        async move {
            let target = done.load(Ordering::Relaxed) + n;
            eventually(Duration::from_secs(60), "requests go on", || done.load(Ordering::Relaxed) >= target).await;
        }
    };
    requests_before(6).await;
    let a2 = rotation.restart(&db, &balancer, 0, a).await;
    requests_before(6).await;
    let b2 = rotation.restart(&db, &balancer, 1, b).await;
    requests_before(6).await;
    stop.cancel();
    let failures = loop_task.await.expect("loop");
    let total = done.load(Ordering::Relaxed);
    assert!(failures.is_empty(), "{} of {total} requests failed: {failures:#?}", failures.len());
    assert!(total >= 18, "{total}");

    puncher.stop().await;
    let (_, body) = a2.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(body["success"], true, "{body}");
    assert_exact(&a2.state.store, device.parse().expect("uuid"), &sim.terminal, Duration::from_secs(10)).await;
    agent.stop().await;
    a2.stop().await;
    b2.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_of_both_instances_fails_no_request() {
    rolling_restart_fails_no_request(Rotation::Drained).await;
}

/// Behind a load balancer that only health-checks (nobody takes the instance out of rotation before SIGTERM), the
/// shutdown delay is what keeps connections away from a closing listener.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rolling_restart_behind_a_health_checking_balancer_fails_no_request() {
    rolling_restart_fails_no_request(Rotation::HealthChecked).await;
}

/// A raw agent connection (Hello, then silent but for pongs) through `url`.
async fn raw_agent(
    url: &str,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(url).expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connects");
    let hello = essl_wire::encode_agent(&essl_wire::AgentMsg::Hello {
        min_protocol: essl_wire::MIN_PROTOCOL_VERSION,
        max_protocol: essl_wire::PROTOCOL_VERSION,
        agent_version: "load".into(),
        hostname: "load".into(),
        os: "test".into(),
    })
    .expect("encode");
    ws.send(Message::Binary(hello.into())).await.expect("hello");
    loop {
        match tokio::time::timeout(Duration::from_secs(20), ws.next()).await.expect("welcome in time") {
            Some(Ok(Message::Binary(b))) => {
                if matches!(essl_wire::decode_server(&b), Ok(essl_wire::ServerMsg::Welcome { .. })) {
                    return ws;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("no welcome: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_thousand_agents_across_two_instances_are_each_listed_once() {
    const AGENTS: usize = 1_000;
    let Some(db) = postgres().await else { return };
    let a = Server::start(&db).await;
    let b = Server::start(&db).await;
    let site = a.state.store.ensure_site("Branches").await.expect("site");
    let mut tokens = Vec::with_capacity(AGENTS);
    for i in 0..AGENTS {
        let t = essl_server::auth::token::generate(essl_server::auth::token::AGENT_PREFIX).expect("random");
        a.state.store.create_agent_with_id(t.id, &format!("branch-{i}"), site.id, &t.hash).await.expect("agent");
        tokens.push((t.id, t.token.expose().to_owned()));
    }
    // Half on each instance, 50 connecting at a time; each keeps reading (answering the server's pings) until
    // told to leave.
    let stop = tokio_util::sync::CancellationToken::new();
    let mut conns = Vec::with_capacity(AGENTS);
    for chunk in tokens.chunks(50) {
        let opened = futures_util::future::join_all(chunk.iter().enumerate().map(|(i, (_, token))| {
            let url = if i % 2 == 0 { a.ws_url() } else { b.ws_url() };
            async move { raw_agent(&url, token).await }
        }))
        .await;
        for mut ws in opened {
            let stop = stop.clone();
            conns.push(tokio::spawn(async move {
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        m = ws.next() => if m.is_none() { return },
                    }
                }
                let _ = ws.close(None).await;
            }));
        }
    }
    let ids: Vec<String> = tokens.iter().map(|(id, _)| id.to_string()).collect();
    for server in [&a, &b] {
        eventually(Duration::from_secs(20), "every agent mirrored", || server.state.hub.presences().len() >= AGENTS)
            .await;
        let listed = connected_agents(server).await;
        for id in &ids {
            assert_eq!(listed.get(id), Some(&1), "agent {id} listed once as connected");
        }
    }
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connects");
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM essl_agent_presence").fetch_one(&pool).await.expect("q");
    assert_eq!(rows, AGENTS as i64);
    // All leave: both instances forget them all.
    stop.cancel();
    for reader in conns {
        let _ = reader.await;
    }
    for server in [&a, &b] {
        eventually(Duration::from_secs(20), "every agent forgotten", || server.state.hub.presences().is_empty()).await;
    }
    // The registry follows (each goodbye is its own transaction, a thousand of them through a small pool).
    let started = Instant::now();
    loop {
        let rows: i64 =
            sqlx::query_scalar("SELECT count(*) FROM essl_agent_presence").fetch_one(&pool).await.expect("q");
        if rows == 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "{rows} agents still in the registry");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pool.close().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn forged_and_foreign_notices_are_ignored() {
    let Some(db) = postgres().await else { return };
    let AgentOnB { a, b, sim, device, agent_id, agent, .. } = agent_on_b(&db, 20, 2).await;
    let a_id = a.instance_id().expect("instance");
    let b_id = b.instance_id().expect("instance");
    let ghost = Uuid::new_v4();
    let a_channel = format!("essl_i_{}", a_id.simple());
    let forged = [
        ("essl_cluster".to_owned(), "garbage".to_owned()),
        ("essl_cluster".to_owned(), json!({"v": 99, "from": b_id, "notice": {"kind": "leaving"}}).to_string()),
        ("essl_cluster".to_owned(), json!({"v": 0}).to_string()),
        // An instance that holds no lease claims an agent and asks A to run a clear.
        (
            "essl_cluster".to_owned(),
            json!({"v": 1, "from": ghost, "notice": {"kind": "up", "presence": {"agentId": Uuid::new_v4(),
                "siteId": Uuid::new_v4(), "conn": 1, "protocol": 2, "version": "x", "hostname": "x", "os": "x",
                "connectedSinceMs": 0}}})
            .to_string(),
        ),
        (
            a_channel.clone(),
            json!({"v": 1, "from": ghost, "notice": {"kind": "request", "id": Uuid::new_v4(), "agent": agent_id,
                "device": device, "op": {"ClearAttendance": {"sync_first": false}}, "timeoutMs": 1000}})
            .to_string(),
        ),
        // A live instance's id on a reply nobody asked for.
        (
            a_channel.clone(),
            json!({"v": 1, "from": b_id, "notice": {"kind": "reply", "id": Uuid::new_v4(),
            "outcome": {"Err": "NoAgent"}}})
            .to_string(),
        ),
        // A request on the broadcast channel.
        (
            "essl_cluster".to_owned(),
            json!({"v": 1, "from": b_id, "notice": {"kind": "request", "id": Uuid::new_v4(),
            "agent": agent_id, "device": device, "op": "Probe", "timeoutMs": 1000}})
            .to_string(),
        ),
    ];
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connects");
    for (channel, payload) in &forged {
        sqlx::query("SELECT pg_notify($1, $2)").bind(channel).bind(payload).execute(&pool).await.expect("notify");
    }
    // Stored requests for B (as if their notification was lost): from an instance without a lease, under another
    // id than their row's, or unreadable. B's scan drops them without running any.
    let clear = |id: Uuid, from: Uuid| {
        json!({"v": 1, "from": from, "notice": {"kind": "request", "id": id, "agent": agent_id, "device": device,
            "op": {"ClearAttendance": {"sync_first": false}}, "timeoutMs": 10_000}})
        .to_string()
    };
    let (first, second) = (Uuid::new_v4(), Uuid::new_v4());
    for (id, body) in
        [(first, clear(first, ghost)), (second, clear(Uuid::new_v4(), a_id)), (Uuid::new_v4(), "{".into())]
    {
        sqlx::query(
            "INSERT INTO essl_cluster_requests (id, to_instance, body, expires_at, sent_at) \
             VALUES ($1, $2, $3, now() + interval '10 seconds', now() - interval '1 second')",
        )
        .bind(id)
        .bind(b_id)
        .bind(body)
        .execute(&pool)
        .await
        .expect("a stored request");
    }
    let stored = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM essl_cluster_requests")
            .fetch_one(&pool)
            .await
            .expect("count")
    };
    let started = Instant::now();
    while stored().await > 0 {
        assert!(started.elapsed() < Duration::from_secs(5), "B never looked at the stored requests");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    pool.close().await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Nothing was believed: B's agent is still known on A, no stranger appeared, the terminal still has its log.
    assert_eq!(a.state.hub.presences().len(), 1);
    assert_eq!(essl_e2e::exact::terminal_keys(&sim.terminal).len(), 20, "the forged clear never ran");
    let (_, body) = a.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["totalRecords"], 20, "{body}");
    agent.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_syncs_on_two_instances_share_one_device_read() {
    let Some(db) = postgres().await else { return };
    let AgentOnB { a, b, sim, device, agent, .. } = agent_on_b(&db, 20_000, 17).await;
    let (a, b) = (Arc::new(a), Arc::new(b));
    let before = sim.terminal.stats().attendance_reads;
    for (status, body) in syncs_at_once(&[a.clone(), b.clone()], &device, 10).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], true, "{body}");
        assert_eq!(body["totalRecords"], 20_000, "{body}");
    }
    assert_eq!(sim.terminal.stats().attendance_reads - before, 1, "ten syncs on two instances, one device read");
    assert_exact(&a.state.store, device.parse().expect("uuid"), &sim.terminal, Duration::from_secs(5)).await;
    agent.stop().await;
    for server in [a, b] {
        if let Ok(server) = Arc::try_unwrap(server) {
            server.stop().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn database_connections_lost_during_a_forwarded_sync_end_cleanly() {
    use sqlx::Connection;
    let Some(db) = postgres().await else { return };
    let (admin_url, name) = db.postgres_admin().expect("a PostgreSQL database");
    let AgentOnB { a, b, sim, device, agent_id, agent_uuid, agent } = agent_on_b(&db, 50_000, 4).await;

    // A asks B's agent for a sync; while B stores its batches, every connection to the database is cut (the
    // listeners' too), as in a failover.
    let request = {
        let (url, token, device) = (a.url("/api/essl/sync-attendance"), a.admin.clone(), device.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let resp =
                reqwest::Client::new().post(url).bearer_auth(token).json(&json!({"deviceId": device})).send().await;
            (resp.map(|r| r.status()), started.elapsed())
        })
    };
    let mut admin = sqlx::PgConnection::connect(admin_url).await.expect("admin connection");
    let started = Instant::now();
    loop {
        let ingesting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND query LIKE 'INSERT INTO essl_attendance%'",
        )
        .bind(name)
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity");
        if ingesting > 0 {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no ingest to interrupt");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let _: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
    )
    .bind(name)
    .fetch_all(&mut admin)
    .await
    .expect("terminate");
    // A clean answer within the deadline (the sync's own, plus the way back), whatever it says.
    let (status, took) = request.await.expect("task");
    let status = status.expect("an HTTP answer, not a reset");
    assert!(status == StatusCode::OK || status == StatusCode::BAD_GATEWAY, "{status}");
    assert!(took < Duration::from_secs(130), "{took:?}");
    // Both instances still serve; the outbox re-sends what was refused; a new sync completes the terminal exactly.
    wait_reachable(&b, &device, &agent_id).await;
    eventually(Duration::from_secs(10), "A mirrors the agent again", || a.state.hub.presence(agent_uuid).is_some())
        .await;
    let (_, body) = a.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(body["success"], true, "{body}");
    assert_exact(&a.state.store, device.parse().expect("uuid"), &sim.terminal, Duration::from_secs(20)).await;
    agent.stop().await;
    a.stop().await;
    b.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_request_whose_notification_was_lost_is_served_from_the_database() {
    let Some(db) = postgres().await else { return };
    // B reaches the database through a proxy the test can switch off; A directly. Heartbeats of 3 s: B's lease
    // (6 s) outlives the outage, so only B's notifications are lost, not B itself.
    let pg = db.postgres_addr().expect("a PostgreSQL address");
    let proxy = Proxy::start(pg).await.expect("proxy");
    let db_b = db.via(proxy.addr()).expect("a PostgreSQL URL");
    let slow_heartbeat = |c: &mut essl_server::app::ServerConfig| c.cluster.heartbeat = Duration::from_secs(3);
    let any: std::net::SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let a = Server::start_configured(&db, any, slow_heartbeat).await;
    let b = Server::start_configured(&db_b, any, slow_heartbeat).await;
    let AgentOnB { a, b, sim, device, agent, .. } = agent_on(a, b, 500, 21).await;
    let b_id = b.instance_id().expect("instance");

    // B loses the database: its listener cannot hear the request A now sends it.
    proxy.set_mode(proxy::Mode::Drop);
    eventually(Duration::from_secs(5), "B's database connections are gone", || proxy.open() == 0).await;
    let request = {
        let (url, token, device) = (a.url("/api/essl/sync-attendance"), a.admin.clone(), device.clone());
        tokio::spawn(async move {
            let started = Instant::now();
            let resp = reqwest::Client::new()
                .post(url)
                .bearer_auth(token)
                .json(&json!({"deviceId": device}))
                .timeout(Duration::from_secs(60))
                .send()
                .await;
            match resp {
                Ok(r) => (r.status(), r.json::<Value>().await.unwrap_or_default(), started.elapsed()),
                Err(e) => panic!("no answer: {e} after {:?}", started.elapsed()),
            }
        })
    };
    let pool = sqlx::PgPool::connect(&db.url).await.expect("connects");
    let waiting = || async {
        sqlx::query_scalar::<_, i64>("SELECT count(*) FROM essl_cluster_requests WHERE to_instance = $1")
            .bind(b_id)
            .fetch_one(&pool)
            .await
            .expect("query")
    };
    let started = Instant::now();
    while waiting().await == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "A never forwarded the sync to B");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Its notification went out while B was not listening. B comes back and finds the request in the database.
    proxy.set_mode(proxy::Mode::Pass);
    let (status, body, took) = request.await.expect("task");
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["totalRecords"], 500, "{body}");
    // Far within the sync's deadline (120 s in tests): found by B's scan, not waited out.
    assert!(took < Duration::from_secs(20), "{took:?}");
    assert_eq!(waiting().await, 0, "the request was claimed");
    assert_exact(&a.state.store, device.parse().expect("uuid"), &sim.terminal, Duration::from_secs(10)).await;
    pool.close().await;
    agent.stop().await;
    a.stop().await;
    b.stop().await;
}
