//! Fault tests: while punches keep happening on the terminal, something breaks (the agent is killed, the server
//! restarts, the network drops or blackholes the agent's link, the terminal cuts a bulk read, batches arrive twice,
//! two agents read the same terminal, the cloud is away, PostgreSQL loses its connections); then it heals, and the
//! database must hold exactly the terminal's records: none lost, none doubled.
//!
//! Every scenario runs on SQLite and on PostgreSQL,.
//! Nothing is timed: each step waits for what it needs (an event, a count) with a generous deadline.
//!
//! Scenarios covered elsewhere: `outbox.rs` has the agent killed mid-upload, the cloud away and a batch delivered
//! twice by hand, each without punches continuing through the fault; the versions here keep punching, and the
//! batch is delivered twice by the real agent (its acks held back by the network).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use essl_e2e::proxy::{Mode, Proxy};
use essl_e2e::*;
use essl_server::hub::HubEvent;
use essl_zk_sim::{Faults, Simulator, generate};
use serde_json::{Value, json};
use tokio::sync::broadcast;
use uuid::Uuid;

on_both_backends!(
    an_agent_killed_during_an_upload_restarts_and_loses_nothing,
    a_server_restarted_during_a_sync_loses_nothing,
    a_cut_and_a_blackholed_link_lose_nothing,
    a_terminal_that_drops_a_bulk_read_loses_nothing,
    a_batch_the_real_agent_delivers_twice_is_stored_once,
    two_agents_syncing_one_terminal_at_once_store_each_punch_once,
    punches_while_the_cloud_is_unreachable_arrive_once_it_is_back,
);

/// PostgreSQL only: the store's connections are killed from outside while it ingests.
mod a_lost_postgres_connection_during_an_ingest_loses_nothing {
    use super::*;
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres() {
        let Some(db) = TestDb::new(Backend::Postgres).await else { return };
        super::a_lost_postgres_connection_during_an_ingest_loses_nothing(db).await;
    }
}

/// How long the database may take to hold exactly the terminal's records once everything healed.
const SETTLE: Duration = Duration::from_secs(90);
/// Deadline of any one step (an event, some punches).
const STEP: Duration = Duration::from_secs(60);
/// A punch every this often while the faults happen.
const PUNCH_EVERY: Duration = Duration::from_millis(25);

/// A server, a terminal holding `records` registered as device "Front door" of site "HQ".
struct Site {
    server: Server,
    sim: Simulator,
    device: String,
    device_id: Uuid,
}

async fn site(db: &TestDb, records: usize) -> Site {
    let server = Server::start(db).await;
    let sim = terminal(&generate::generate(25, records, 29)).await;
    let device = server.add_device("Front door", sim.addr, "HQ").await;
    let device_id = device.parse().expect("uuid");
    Site { server, sim, device, device_id }
}

/// An agent of the site at `url` (the server, or a proxy in front of it) that syncs every 2 s on its own and
/// resubscribes to realtime events quickly, so every punch arrives without anyone asking; `outbox` keeps its outbox
/// across a restart.
fn agent(
    url: &str,
    token: &str,
    outbox: Option<&TempOutbox>,
    configure: impl FnOnce(&mut essl_agent::config::Config),
) -> Agent {
    let path = outbox.map(TempOutbox::path);
    Agent::start_configured(url, token, move |c| {
        c.collect.sync_interval = Duration::from_secs(2);
        c.collect.poll_interval = Duration::from_secs(1);
        c.collect.resubscribe_min = Duration::from_millis(100);
        c.collect.resubscribe_max = Duration::from_secs(1);
        if let Some(path) = path {
            c.collect.outbox = path;
        }
        configure(c);
    })
}

/// `POST /api/essl/sync-attendance` for the device, in the background (it may outlive the server it went to).
fn spawn_sync(server: &Server, device: &str) -> tokio::task::JoinHandle<Value> {
    let (url, token) = (server.url("/api/essl/sync-attendance"), server.admin.clone());
    let body = json!({"deviceId": device});
    tokio::spawn(async move {
        let sent = reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await;
        match sent {
            Ok(resp) => resp.json::<Value>().await.unwrap_or(Value::Null),
            Err(e) => json!({"transportError": e.to_string()}),
        }
    })
}

/// The hub's batch events, recorded in the background.
#[derive(Clone, Default)]
struct Batches(Arc<Mutex<Vec<HubEvent>>>);

impl Batches {
    fn record(&self, server: &Server) {
        let (mut events, log) = (server.events(), self.0.clone());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(e @ (HubEvent::BatchCommitted { .. } | HubEvent::BatchFailed { .. })) => {
                        log.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => panic!("missed {n} hub events"),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    fn all(&self) -> Vec<HubEvent> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Commits per (agent, batch id).
    fn commits(&self) -> HashMap<(Uuid, u64), Vec<(u64, u64)>> {
        let mut out: HashMap<(Uuid, u64), Vec<(u64, u64)>> = HashMap::new();
        for e in self.all() {
            if let HubEvent::BatchCommitted { agent_id, batch, records, inserted, .. } = e {
                out.entry((agent_id, batch)).or_default().push((records, inserted));
            }
        }
        out
    }

    /// Records received from one agent so far.
    fn received_from(&self, agent: Uuid) -> u64 {
        self.all()
            .iter()
            .map(|e| match e {
                HubEvent::BatchCommitted { agent_id, records, .. } if *agent_id == agent => *records,
                _ => 0,
            })
            .sum()
    }

    fn failed(&self) -> Vec<(Uuid, u64, Option<u64>)> {
        self.all()
            .iter()
            .filter_map(|e| match e {
                HubEvent::BatchFailed { agent_id, batch, request, .. } => Some((*agent_id, *batch, *request)),
                _ => None,
            })
            .collect()
    }
}

/// Waits until a whole batch (5,000 records: a sync's, not a realtime punch's) of the device is committed.
async fn a_full_batch_committed(events: &mut broadcast::Receiver<HubEvent>, device: Uuid) {
    wait_event(events, STEP, |e| {
        matches!(e, HubEvent::BatchCommitted { device_id, records, .. }
            if *device_id == device && *records == essl_wire::MAX_PUNCHES_PER_BATCH as u64)
    })
    .await;
}

async fn disconnected(events: &mut broadcast::Receiver<HubEvent>, agent: Uuid) {
    wait_event(events, STEP, |e| matches!(e, HubEvent::AgentDisconnected { agent_id } if *agent_id == agent)).await;
}

async fn connected(events: &mut broadcast::Receiver<HubEvent>, agent: Uuid) {
    wait_event(events, STEP, |e| matches!(e, HubEvent::AgentConnected { agent_id } if *agent_id == agent)).await;
}

/// Stops punching, then waits until the database holds exactly the terminal's records.
async fn heal_and_check(server: &Server, sim: &Simulator, device: Uuid, puncher: Puncher) -> Comparison {
    let made = puncher.stop().await;
    let c = assert_exact(&server.state.store, device, &sim.terminal, SETTLE).await;
    println!("{made} punches during the test; {c}");
    c
}

// ---------------------------------------------------------------------------------------------------------------

async fn an_agent_killed_during_an_upload_restarts_and_loses_nothing(db: TestDb) {
    let s = site(&db, 60_000).await;
    let (agent_id, token) = s.server.add_agent("office-pc", "HQ").await;
    let outbox = TempOutbox::new();
    let first = agent(&s.server.ws_url(), &token, Some(&outbox), |_| {});
    wait_reachable(&s.server, &s.device, &agent_id).await;
    let puncher = Puncher::start(s.sim.terminal.clone(), PUNCH_EVERY);

    let mut events = s.server.events();
    let request = spawn_sync(&s.server, &s.device);
    a_full_batch_committed(&mut events, s.device_id).await;
    first.kill();
    let stored_then = s.server.state.store.count_attendance(Some(s.device_id)).await.expect("count");
    assert!(stored_then < 60_000, "the upload was cut short ({stored_then} stored)");
    let answer = request.await.expect("request task");
    assert_ne!(answer["success"], true, "the agent died during the sync: {answer}");
    // Punches go on while the agent is down, and after it is back on the same outbox.
    puncher.wait_for(20, STEP).await;
    let second = agent(&s.server.ws_url(), &token, Some(&outbox), |_| {});
    wait_reachable(&s.server, &s.device, &agent_id).await;
    puncher.wait_for(20, STEP).await;

    heal_and_check(&s.server, &s.sim, s.device_id, puncher).await;
    second.stop().await;
    s.server.stop().await;
}

async fn a_server_restarted_during_a_sync_loses_nothing(db: TestDb) {
    // A restart finishes in-flight requests within its grace period (plus a second) before letting agents go; this
    // sync of 200,000 records outlasts a short one by far, so the restart cuts it.
    const RECORDS: usize = 200_000;
    let mut s = site(&db, RECORDS).await;
    s.server.stop().await;
    s.server = Server::start_with_grace(&db, Duration::from_millis(100)).await;
    let (agent_id, token) = s.server.add_agent("office-pc", "HQ").await;
    let a = agent(&s.server.ws_url(), &token, None, |_| {});
    wait_reachable(&s.server, &s.device, &agent_id).await;
    let puncher = Puncher::start(s.sim.terminal.clone(), PUNCH_EVERY);

    let mut events = s.server.events();
    let request = spawn_sync(&s.server, &s.device);
    a_full_batch_committed(&mut events, s.device_id).await;
    let addr = s.server.addr;
    s.server.stop().await;
    // The request in flight is answered as the server goes (the cached-data reply), not left hanging.
    let answer = request.await.expect("request task");
    assert_ne!(answer["success"], true, "the server stopped during the sync: {answer}");
    puncher.wait_for(20, STEP).await;

    let server = Server::start_at(&db, test_hub(), addr).await;
    let stored_then = server.state.store.count_attendance(Some(s.device_id)).await.expect("count");
    assert!(stored_then < RECORDS as i64, "the sync was cut short ({stored_then} stored)");
    wait_reachable(&server, &s.device, &agent_id).await;
    puncher.wait_for(20, STEP).await;

    heal_and_check(&server, &s.sim, s.device_id, puncher).await;
    a.stop().await;
    server.stop().await;
}

async fn a_cut_and_a_blackholed_link_lose_nothing(db: TestDb) {
    let s = site(&db, 30_000).await;
    let proxy = Proxy::start(s.server.addr).await.expect("proxy");
    let (agent_id, token) = s.server.add_agent("office-pc", "HQ").await;
    let agent_uuid: Uuid = agent_id.parse().expect("uuid");
    let a = agent(&format!("ws://{}/agent/ws", proxy.addr()), &token, None, |_| {});
    wait_reachable(&s.server, &s.device, &agent_id).await;
    let puncher = Puncher::start(s.sim.terminal.clone(), PUNCH_EVERY);

    // The link drops (both ends reset, reconnects refused) in the middle of a sync.
    let mut events = s.server.events();
    let request = spawn_sync(&s.server, &s.device);
    a_full_batch_committed(&mut events, s.device_id).await;
    proxy.set_mode(Mode::Drop);
    disconnected(&mut events, agent_uuid).await;
    let answer = request.await.expect("request task");
    assert_ne!(answer["success"], true, "the link dropped during the sync: {answer}");
    let resets = proxy.resets();
    puncher.wait_for(20, STEP).await;
    // Refused while it lasts: the agent kept trying.
    while proxy.resets() < resets + 2 {
        puncher.wait_for(1, STEP).await;
    }
    proxy.set_mode(Mode::Pass);
    connected(&mut events, agent_uuid).await;
    puncher.wait_for(20, STEP).await;

    // Then the link goes silent: nothing passes, nothing is closed. Both ends notice by their pings.
    let accepted = proxy.accepted();
    proxy.set_mode(Mode::Blackhole);
    disconnected(&mut events, agent_uuid).await;
    puncher.wait_for(20, STEP).await;
    // The agent gave up on the silent connection and is trying a new one (held by the blackhole too).
    while proxy.accepted() == accepted {
        puncher.wait_for(1, STEP).await;
    }
    proxy.set_mode(Mode::Pass);
    connected(&mut events, agent_uuid).await;

    heal_and_check(&s.server, &s.sim, s.device_id, puncher).await;
    println!(
        "through the proxy: {} bytes agent -> server, {} bytes server -> agent, {} connections, {} reset",
        proxy.bytes_up(),
        proxy.bytes_down(),
        proxy.accepted(),
        proxy.resets()
    );
    a.stop().await;
    s.server.stop().await;
}

async fn a_terminal_that_drops_a_bulk_read_loses_nothing(db: TestDb) {
    // 30,000 records of 40 bytes: 19 chunks. The terminal closes the connection after the third.
    let s = site(&db, 30_000).await;
    let (agent_id, token) = s.server.add_agent("office-pc", "HQ").await;
    let a = agent(&s.server.ws_url(), &token, None, |_| {});
    wait_reachable(&s.server, &s.device, &agent_id).await;
    let puncher = Puncher::start(s.sim.terminal.clone(), PUNCH_EVERY);

    s.sim.terminal.set_faults(Faults { cut_bulk_after: Some(3), ..Faults::default() });
    let reads = s.sim.terminal.stats().attendance_reads;
    let answer = spawn_sync(&s.server, &s.device).await.expect("request task");
    assert_eq!(answer["success"], false, "the terminal cut the read: {answer}");
    assert!(s.sim.terminal.stats().attendance_reads > reads, "the read was attempted");
    // Scheduled syncs and polls are cut too while it lasts; realtime punches still come.
    puncher.wait_for(40, STEP).await;
    let stored = s.server.state.store.count_attendance(Some(s.device_id)).await.expect("count");
    assert!(stored < 30_000, "nothing of a cut read is stored ({stored} rows)");
    s.sim.terminal.set_faults(Faults::default());
    puncher.wait_for(20, STEP).await;

    heal_and_check(&s.server, &s.sim, s.device_id, puncher).await;
    a.stop().await;
    s.server.stop().await;
}

async fn a_batch_the_real_agent_delivers_twice_is_stored_once(db: TestDb) {
    let s = site(&db, 30_000).await;
    let proxy = Proxy::start(s.server.addr).await.expect("proxy");
    let (agent_id, token) = s.server.add_agent("office-pc", "HQ").await;
    // A batch unacknowledged for a second is sent again.
    let a = agent(&format!("ws://{}/agent/ws", proxy.addr()), &token, None, |c| {
        c.timing.ack_timeout = Duration::from_secs(1);
    });
    wait_reachable(&s.server, &s.device, &agent_id).await;
    let batches = Batches::default();
    batches.record(&s.server);
    let puncher = Puncher::start(s.sim.terminal.clone(), PUNCH_EVERY);

    // The sync's batches reach the server and are committed; the Acks are held back by the network.
    let mut events = s.server.events();
    let request = spawn_sync(&s.server, &s.device);
    a_full_batch_committed(&mut events, s.device_id).await;
    proxy.set_mode(Mode::HoldReplies);
    let deadline = tokio::time::Instant::now() + STEP;
    while !batches.commits().values().any(|c| c.len() >= 2 && c[0].0 > 1) {
        assert!(tokio::time::Instant::now() < deadline, "no batch of the sync was delivered twice");
        puncher.wait_for(1, STEP).await;
    }
    proxy.set_mode(Mode::Pass);
    let _ = request.await;
    puncher.wait_for(20, STEP).await;

    heal_and_check(&s.server, &s.sim, s.device_id, puncher).await;
    let commits = batches.commits();
    let twice: Vec<_> = commits.iter().filter(|(_, c)| c.len() >= 2).collect();
    assert!(!twice.is_empty());
    for ((_, batch), c) in &twice {
        let inserted: u64 = c.iter().map(|(_, i)| i).sum();
        assert!(inserted <= c[0].0, "batch {batch} stored more rows than it holds: {c:?}");
    }
    println!("{} batches delivered more than once", twice.len());
    a.stop().await;
    s.server.stop().await;
}

async fn two_agents_syncing_one_terminal_at_once_store_each_punch_once(db: TestDb) {
    let s = site(&db, 30_000).await;
    let (first_id, first_token) = s.server.add_agent("front-desk-pc", "HQ").await;
    let (second_id, second_token) = s.server.add_agent("backup-pc", "HQ").await;
    let batches = Batches::default();
    batches.record(&s.server);
    // Both start together: their scheduled syncs read the terminal at the same moments, both subscribe to its
    // realtime events, and a requested sync goes to one of them meanwhile.
    let first = agent(&s.server.ws_url(), &first_token, None, |_| {});
    let second = agent(&s.server.ws_url(), &second_token, None, |_| {});
    wait_reachable(&s.server, &s.device, &first_id).await;
    wait_reachable(&s.server, &s.device, &second_id).await;
    let puncher = Puncher::start(s.sim.terminal.clone(), PUNCH_EVERY);
    let requests = [spawn_sync(&s.server, &s.device), spawn_sync(&s.server, &s.device)];

    // Each agent sends the whole log once on its own.
    let (a, b) = (first_id.parse().expect("uuid"), second_id.parse().expect("uuid"));
    let deadline = tokio::time::Instant::now() + STEP;
    while batches.received_from(a) < 30_000 || batches.received_from(b) < 30_000 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "both agents should have sent the log: {} and {}",
            batches.received_from(a),
            batches.received_from(b)
        );
        puncher.wait_for(1, STEP).await;
    }
    for r in requests {
        let answer = r.await.expect("request task");
        assert_eq!(answer["success"], true, "{answer}");
    }
    puncher.wait_for(20, STEP).await;

    heal_and_check(&s.server, &s.sim, s.device_id, puncher).await;
    println!(
        "records received: {} from one agent, {} from the other",
        batches.received_from(a),
        batches.received_from(b)
    );
    first.stop().await;
    second.stop().await;
    s.server.stop().await;
}

async fn punches_while_the_cloud_is_unreachable_arrive_once_it_is_back(db: TestDb) {
    let s = site(&db, 2_000).await;
    let (agent_id, token) = s.server.add_agent("office-pc", "HQ").await;
    let a = agent(&s.server.ws_url(), &token, None, |_| {});
    wait_reachable(&s.server, &s.device, &agent_id).await;
    let puncher = Puncher::start(s.sim.terminal.clone(), PUNCH_EVERY);
    let answer = spawn_sync(&s.server, &s.device).await.expect("request task");
    assert_eq!(answer["success"], true, "{answer}");
    puncher.wait_for(20, STEP).await;

    // The cloud goes away (connections refused) for as long as 100 punches take.
    let (addr, store, hub) = (s.server.addr, s.server.state.store.clone(), s.server.state.hub.clone());
    s.server.stop().await;
    // (A session storing a batch when the server stopped finishes that batch first.)
    while !hub.presences().is_empty() {
        puncher.wait_for(1, STEP).await;
    }
    let before = store.count_attendance(Some(s.device_id)).await.expect("count");
    puncher.wait_for(100, STEP).await;
    let server = Server::start_at(&db, test_hub(), addr).await;
    let after = store.count_attendance(Some(s.device_id)).await.expect("count");
    assert_eq!(before, after, "nothing was stored while the cloud was away");
    wait_reachable(&server, &s.device, &agent_id).await;
    puncher.wait_for(20, STEP).await;

    heal_and_check(&server, &s.sim, s.device_id, puncher).await;
    a.stop().await;
    server.stop().await;
}

async fn a_lost_postgres_connection_during_an_ingest_loses_nothing(db: TestDb) {
    use sqlx::Connection;
    let (admin_url, name) = db.postgres_admin().expect("a PostgreSQL database");
    let (admin_url, name) = (admin_url.to_owned(), name.to_owned());
    let s = site(&db, 100_000).await;
    let (agent_id, token) = s.server.add_agent("office-pc", "HQ").await;
    // Only the server's Nack can make it send a failed batch again: it would wait an hour for a missing Ack.
    let a = agent(&s.server.ws_url(), &token, None, |c| c.timing.ack_timeout = Duration::from_secs(3600));
    wait_reachable(&s.server, &s.device, &agent_id).await;
    let batches = Batches::default();
    batches.record(&s.server);
    let puncher = Puncher::start(s.sim.terminal.clone(), PUNCH_EVERY);

    // From outside: whenever the server is inserting attendance, kill every connection it has to its database.
    let mut admin = sqlx::PgConnection::connect(&admin_url).await.expect("TEST_DATABASE_URL connects");
    let request = spawn_sync(&s.server, &s.device);
    let mut killed = 0;
    let deadline = tokio::time::Instant::now() + STEP;
    while killed < 3 {
        assert!(tokio::time::Instant::now() < deadline, "saw {killed} ingests to interrupt, wanted 3");
        let ingesting: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND state = 'active' \
             AND query LIKE 'INSERT INTO essl_attendance%'",
        )
        .bind(&name)
        .fetch_one(&mut admin)
        .await
        .expect("pg_stat_activity");
        if ingesting == 0 {
            tokio::time::sleep(Duration::from_millis(2)).await;
            continue;
        }
        let terminated: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(&name)
        .fetch_all(&mut admin)
        .await
        .expect("pg_terminate_backend");
        println!("ingest interrupted: {} connections terminated", terminated.iter().filter(|t| **t).count());
        killed += 1;
        // Let it recover a little before the next blow.
        puncher.wait_for(10, STEP).await;
    }
    let answer = request.await.expect("request task");
    println!("the sync answered {answer}");
    puncher.wait_for(20, STEP).await;

    heal_and_check(&s.server, &s.sim, s.device_id, puncher).await;
    // At least one batch failed, was not acknowledged, and came again until it was stored.
    let failed = batches.failed();
    assert!(!failed.is_empty(), "no ingest failed: the connections were not killed during one");
    let commits = batches.commits();
    for (agent, batch, _) in &failed {
        assert!(commits.contains_key(&(*agent, *batch)), "batch {batch} failed and never came again");
    }
    if failed.iter().any(|(_, _, request)| request.is_some()) {
        assert_ne!(answer["success"], true, "a batch of the sync failed, the sync cannot have succeeded: {answer}");
    }
    a.stop().await;
    s.server.stop().await;
}
