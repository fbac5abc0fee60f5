//! Never lose a punch, continued: records that look wrong are stored and flagged (never dropped), the terminal's
//! log is cleared only when the cloud holds every record of it, and the agent's outbox fill is reported. Real
//! server and database (SQLite and PostgreSQL), real agent over a real WebSocket, simulated terminal.

use std::collections::HashSet;
use std::time::Duration;

use essl_e2e::*;
use essl_server::hub::HubEvent;
use essl_server::ingest::{FLAG_INVALID_TIME, FLAG_UNKNOWN_USER};
use essl_zk_sim::fixture::PunchFixture;
use essl_zk_sim::{Fixture, Simulator, generate};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::broadcast;

on_both_backends!(
    corrupt_records_and_unknown_users_are_stored_flagged_once,
    outbox_fill_is_reported_while_the_database_refuses_punches,
    clear_after_a_sync_empties_the_terminal_and_nothing_is_lost,
    clear_is_refused_while_records_are_not_stored,
    a_punch_during_the_clear_is_not_lost,
);

/// A terminal holding `fixture`, a server with the device and an agent token, and an agent (configured by
/// `configure`) that has probed the terminal.
struct Office {
    server: Server,
    sim: Simulator,
    device: String,
    device_id: uuid::Uuid,
    agent: Agent,
}

async fn office(db: &TestDb, fixture: &Fixture, configure: impl FnOnce(&mut essl_agent::config::Config)) -> Office {
    let server = Server::start(db).await;
    let sim = terminal(fixture).await;
    let device = server.add_device("Front door", sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent("office-pc", "HQ").await;
    let agent = Agent::start_configured(&server.ws_url(), &token, configure);
    wait_reachable(&server, &device, &agent_id).await;
    let device_id = device.parse().expect("uuid");
    Office { server, sim, device, device_id, agent }
}

impl Office {
    async fn stop(self) {
        self.agent.stop().await;
        self.server.stop().await;
        self.sim.stop().await;
    }
}

/// Every stored row of the device, as the API gives it.
async fn rows(server: &Server, device: &str) -> Vec<Value> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/attendance?deviceId={device}&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        out.extend(body["items"].as_array().cloned().unwrap_or_default());
        match body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// A row as (user, local time, status, punch).
fn key(r: &Value) -> (String, String, i64, i64) {
    (
        r["userId"].as_str().unwrap_or_default().to_owned(),
        r["localTime"].as_str().unwrap_or_default().to_owned(),
        r["status"].as_i64().unwrap_or(-1),
        r["punch"].as_i64().unwrap_or(-1),
    )
}

/// A terminal record as the row it must become (an invalid time by its placeholder).
fn expected(p: &PunchFixture) -> (String, String, i64, i64) {
    let local = match p.raw_time {
        Some(raw) => essl_wire::invalid_time_placeholder(raw),
        None => p.timestamp.clone(),
    };
    (p.user_id.clone(), local, i64::from(p.status), i64::from(p.punch))
}

async fn sync(server: &Server, device: &str) -> Value {
    let (status, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true, "{body}");
    body
}

/// Records received in committed batches of the device, counted from now until `stop` says so.
fn count_received(
    mut events: broadcast::Receiver<HubEvent>,
    device: uuid::Uuid,
) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<u64>) {
    let (stop, mut stopped) = tokio::sync::oneshot::channel();
    let task = tokio::spawn(async move {
        let mut received = 0;
        loop {
            tokio::select! {
                biased;
                e = events.recv() => match e {
                    Ok(HubEvent::BatchCommitted { device_id, records, .. }) if device_id == device => received += records,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => panic!("missed {n} hub events"),
                    Err(broadcast::error::RecvError::Closed) => return received,
                },
                _ = &mut stopped => return received,
            }
        }
    });
    (stop, task)
}

/// Waits until `pred` holds, polling every 50 ms, at most `within`.
async fn eventually<F: std::future::Future<Output = bool>>(within: Duration, what: &str, mut pred: impl FnMut() -> F) {
    essl_e2e::poll_until(within, what, async || pred().await).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Records that look wrong: stored, flagged, never dropped, never doubled.

/// 31 February 2018 and one second past 2099-12-31 23:59:59, as a terminal packs them: neither is a date.
const FEB_31: u32 = ((18 * 372 + 31 + 30) * 86_400) as u32;
const PAST_2099: u32 = 3_214_080_000;

async fn corrupt_records_and_unknown_users_are_stored_flagged_once(db: TestDb) {
    let mut fixture = generate::generate(10, 300, 41);
    let corrupt = |user: &str, raw: u32| PunchFixture {
        uid: 3,
        user_id: user.into(),
        timestamp: String::new(),
        raw_time: Some(raw),
        status: 1,
        punch: 0,
    };
    // One corrupt record among good ones, one as the very last record (the agent's watermark rests on it), and a
    // punch of a user the terminal does not have enrolled.
    fixture.attendance.insert(120, corrupt("1003", FEB_31));
    let mut stranger = fixture.attendance[200].clone();
    stranger.user_id = "777".into();
    stranger.uid = 0;
    fixture.attendance.insert(201, stranger);
    fixture.attendance.push(corrupt("1004", PAST_2099));
    let o = office(&db, &fixture, |_| {}).await;
    // Nothing tells the server who is enrolled: the staff sync reads the terminal's users before its punches, and
    // the stranger's punch is flagged against that list.

    let first = sync(&o.server, &o.device).await;
    assert_eq!(first["totalRecords"], 303, "every record is new: {first}");
    let stored = rows(&o.server, &o.device).await;
    assert_eq!(stored.len(), 303, "no record dropped");
    let want: HashSet<_> = fixture.attendance.iter().map(expected).collect();
    let got: HashSet<_> = stored.iter().map(key).collect();
    assert_eq!(got, want, "the database holds exactly the terminal's records");
    for r in &stored {
        let flags = r["flags"].as_i64().expect("flags");
        match (r["userId"].as_str(), r["rawTime"].as_u64()) {
            (_, Some(raw)) => {
                assert_eq!(flags, i64::from(FLAG_INVALID_TIME), "{r}");
                assert!([FEB_31, PAST_2099].contains(&(raw as u32)), "{r}");
                assert_eq!(r["localTime"], essl_wire::invalid_time_placeholder(raw as u32), "{r}");
                assert!(r["punchedAt"].as_str().is_some_and(|t| t.starts_with("1")), "a placeholder instant: {r}");
            }
            (Some("777"), None) => assert_eq!(flags, i64::from(FLAG_UNKNOWN_USER), "{r}"),
            _ => assert_eq!(flags, 0, "a good record is not flagged: {r}"),
        }
    }
    let flagged = stored.iter().filter(|r| r["flags"] != 0).count();
    assert_eq!(flagged, 3);

    // A second sync sends nothing and stores nothing: the watermark covers the corrupt last record too.
    let (stop, received) = count_received(o.server.events(), o.device_id);
    let second = sync(&o.server, &o.device).await;
    let _ = stop.send(());
    assert_eq!(second["totalRecords"], 0, "{second}");
    assert_eq!(received.await.expect("counter"), 0, "the second sync sent records");
    // Sent again in full (as after a reset), the corrupt records hit their rows: nothing doubles.
    let again: Vec<essl_wire::Punch> = fixture
        .attendance
        .iter()
        .filter(|p| p.raw_time.is_some())
        .map(|p| essl_wire::Punch {
            uid: p.uid,
            user_id: p.user_id.clone(),
            local_time: expected(p).1,
            status: p.status,
            punch: p.punch,
            raw_time: p.raw_time,
        })
        .collect();
    let device = o.server.state.store.get_device(o.device_id).await.expect("device").expect("exists");
    let stats = essl_server::ingest::store_punches(&o.server.state.store, &device, &again).await.expect("stored");
    assert_eq!((stats.inserted, stats.invalid_time), (0, 2));
    eventually(Duration::from_secs(5), "the row count", || async {
        o.server.state.store.count_attendance(Some(o.device_id)).await.expect("count") == 303
    })
    .await;
    o.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// The outbox's fill, reported.

/// The value of `name{agent="<agent>"}` on `/metrics`, if the series is there.
async fn agent_gauge(server: &Server, name: &str, agent: &str) -> Option<u64> {
    let (status, body) = server.get("/metrics").await;
    assert_eq!(status, StatusCode::OK);
    let text = body.as_str().expect("metrics are text").to_owned();
    let prefix = format!("{name}{{agent=\"{agent}\"}} ");
    text.lines().find_map(|l| l.strip_prefix(&prefix)).map(|v| v.trim().parse().expect("a number"))
}

/// The agent's `outbox` in `GET /api/agents`.
async fn agent_outbox(server: &Server, agent: &str) -> Value {
    let (status, body) = server.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let items = body["items"].as_array().cloned().unwrap_or_default();
    items.into_iter().find(|a| a["id"] == agent).expect("the agent is listed")["outbox"].clone()
}

async fn outbox_fill_is_reported_while_the_database_refuses_punches(db: TestDb) {
    const LIMIT: u64 = 256 << 10;
    const RECORDS: usize = 3_000;
    let server = Server::start(&db).await;
    let mut events = server.events();
    // The database refuses every punch from the start: nothing the agent reads is acknowledged.
    db.refuse_punches(true).await;
    let sim = terminal(&generate::generate(20, RECORDS, 7)).await;
    let device = server.add_device("Front door", sim.addr, "HQ").await;
    let device_id: uuid::Uuid = device.parse().expect("uuid");
    let (agent_id, token) = server.add_agent("office-pc", "HQ").await;
    let agent = Agent::start_configured(&server.ws_url(), &token, |c| {
        c.collect.outbox_max_bytes = LIMIT;
        c.collect.sync_interval = Duration::from_secs(1);
        c.timing.ack_timeout = Duration::from_secs(1);
        // The heartbeat (the reachability report) every 300 ms instead of every 30 s.
        c.probe_interval = Some(Duration::from_millis(300));
    });
    wait_reachable(&server, &device, &agent_id).await;

    // The scheduled sync queues the terminal's log; the heartbeat reports the outbox filling up.
    let agent_uuid: uuid::Uuid = agent_id.parse().expect("uuid");
    let event = wait_event(&mut events, Duration::from_secs(20), |e| {
        matches!(e, HubEvent::OutboxFill { agent_id, bytes, limit_bytes }
            if *agent_id == agent_uuid && *limit_bytes == LIMIT && *bytes * 100 >= LIMIT * 80)
    })
    .await;
    println!("{:?}: {event:?}", db.backend);
    eventually(Duration::from_secs(10), "the gauge over 80 %", || async {
        agent_gauge(&server, "essl_agent_outbox_bytes", &agent_id).await.is_some_and(|b| b * 100 >= LIMIT * 80)
    })
    .await;
    assert_eq!(agent_gauge(&server, "essl_agent_outbox_limit_bytes", &agent_id).await, Some(LIMIT));
    assert_eq!(agent_gauge(&server, "essl_agent_outbox_pending_records", &agent_id).await, Some(RECORDS as u64));
    let outbox = agent_outbox(&server, &agent_id).await;
    assert_eq!(outbox["limitBytes"], LIMIT, "{outbox}");
    assert_eq!(outbox["pendingRecords"], RECORDS, "the whole log waits in the outbox: {outbox}");
    assert!(outbox["bytes"].as_u64().is_some_and(|b| b * 100 >= LIMIT * 80), "{outbox}");
    assert_eq!(server.state.store.count_attendance(Some(device_id)).await.expect("count"), 0);

    // The database takes punches again: the queued batch goes (re-sent after the ack timeout), the outbox drains,
    // and the figures say so.
    db.refuse_punches(false).await;
    eventually(Duration::from_secs(30), "the log stored", || async {
        server.state.store.count_attendance(Some(device_id)).await.expect("count") == RECORDS as i64
    })
    .await;
    eventually(Duration::from_secs(10), "the outbox reported empty", || async {
        agent_gauge(&server, "essl_agent_outbox_pending_records", &agent_id).await == Some(0)
    })
    .await;
    let bytes = agent_gauge(&server, "essl_agent_outbox_bytes", &agent_id).await.expect("series");
    assert!(bytes * 100 < LIMIT * 80, "{bytes} bytes after the flush");
    assert_eq!(agent_outbox(&server, &agent_id).await["pendingRecords"], 0);

    // A disconnected agent leaves no series behind, and the API says it has no figures now.
    agent.stop().await;
    eventually(Duration::from_secs(10), "the series gone", || async {
        agent_gauge(&server, "essl_agent_outbox_bytes", &agent_id).await.is_none()
    })
    .await;
    assert_eq!(agent_outbox(&server, &agent_id).await, Value::Null);
    server.stop().await;
    sim.stop().await;
}

// ---------------------------------------------------------------------------------------------------------------
// Clearing the terminal's log: only when every record is stored, and no punch slips through.

async fn clear(server: &Server, device: &str, body: Option<Value>) -> (StatusCode, Value) {
    let path = format!("/api/devices/{device}/clear-attendance");
    server.call(reqwest::Method::POST, &path, Some(&server.admin.clone()), body).await
}

fn assert_refused(status: StatusCode, body: &Value, why: &str) {
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    assert_eq!(body["success"], false, "{body}");
    assert_eq!(body["error"]["code"], "not_confirmed", "{body}");
    let message = body["error"]["message"].as_str().unwrap_or_default();
    assert!(message.contains(why), "the reason {message:?} should say {why:?}");
}

/// The terminal's records as (user, local time, status, punch).
fn on_terminal(sim: &Simulator) -> HashSet<(String, String, i64, i64)> {
    sim.terminal.to_fixture().attendance.iter().map(expected).collect()
}

async fn in_database(server: &Server, device: &str) -> HashSet<(String, String, i64, i64)> {
    let rows = rows(server, device).await;
    let set: HashSet<_> = rows.iter().map(key).collect();
    assert_eq!(set.len(), rows.len(), "a punch is stored twice");
    set
}

async fn clear_after_a_sync_empties_the_terminal_and_nothing_is_lost(db: TestDb) {
    let o = office(&db, &generate::generate(15, 500, 9), |_| {}).await;
    assert_eq!(sync(&o.server, &o.device).await["totalRecords"], 500);
    let before = on_terminal(&o.sim);

    // Staff may read, not clear.
    let path = format!("/api/devices/{}/clear-attendance", o.device);
    let (status, body) = o.server.call(reqwest::Method::POST, &path, Some(&o.server.staff.clone()), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");

    let (status, body) = clear(&o.server, &o.device, None).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"cleared": 500})));
    assert_eq!(o.sim.terminal.record_count(), 0, "the terminal's log is empty");
    assert!(o.sim.terminal.is_enabled(), "and it takes punches again");
    assert_eq!(in_database(&o.server, &o.device).await, before, "every cleared record is stored");
    let log = o.server.state.store.sync_log(o.device_id, 5).await.expect("sync log");
    assert!(log.iter().any(|l| l.message.contains("attendance log cleared") && l.message.contains("500")), "{log:?}");

    // New punches: a clear that may not sync first is refused while they are not acknowledged as part of a read
    // (realtime alone does not move the watermark) ...
    let new: Vec<_> = (0..3).map(|u| o.sim.terminal.try_punch(u, 1, 0).expect("an enabled terminal")).collect();
    let (status, body) = clear(&o.server, &o.device, Some(json!({"syncFirst": false}))).await;
    assert_refused(status, &body, "not yet acknowledged");
    assert_eq!(o.sim.terminal.record_count(), 3, "refused: the terminal keeps its records");
    assert!(o.sim.terminal.is_enabled());
    // ... and one that may sends them first, then clears.
    let (status, body) = clear(&o.server, &o.device, Some(json!({}))).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"cleared": 3})));
    let stored = in_database(&o.server, &o.device).await;
    assert_eq!(stored.len(), 503);
    for r in &new {
        assert!(stored.iter().any(|s| s.0 == r.user_id && s.1 == r.timestamp.to_string()), "{r:?} lost");
    }
    // The log starts again from empty: the next sync is no "reset", and sends nothing twice.
    let after = sync(&o.server, &o.device).await;
    assert_eq!((after["totalRecords"].as_u64(), after["stats"]["recordsRead"].as_u64()), (Some(0), Some(0)));
    let log = o.server.state.store.sync_log(o.device_id, 10).await.expect("sync log");
    assert!(!log.iter().any(|l| l.message.contains("cleared?")), "a deliberate clear is no surprise: {log:?}");
    o.stop().await;
}

async fn clear_is_refused_while_records_are_not_stored(db: TestDb) {
    let fixture = generate::generate(15, 500, 10);
    let o = office(&db, &fixture, |c| c.timing.ack_timeout = Duration::from_secs(2)).await;

    // The database refuses every punch: the agent sends the log, the server cannot store it, the clear is refused.
    db.refuse_punches(true).await;
    let (status, body) = clear(&o.server, &o.device, None).await;
    assert_refused(status, &body, "the server could not store");
    assert_eq!(o.sim.terminal.record_count(), 500, "the terminal keeps every record");
    assert!(o.sim.terminal.is_enabled(), "and takes punches again");
    assert_eq!(o.server.state.store.count_attendance(Some(o.device_id)).await.expect("count"), 0);
    // The agent still holds them in its outbox, unacknowledged: a second clear waits for the acks in vain ...
    let (status, body) = clear(&o.server, &o.device, None).await;
    assert_refused(status, &body, "did not acknowledge");
    assert_eq!(o.sim.terminal.record_count(), 500);
    assert!(o.sim.terminal.is_enabled());
    // ... and one that may not sync says so at once.
    let (status, body) = clear(&o.server, &o.device, Some(json!({"syncFirst": false}))).await;
    assert_refused(status, &body, "not yet acknowledged by the server");
    let log = o.server.state.store.sync_log(o.device_id, 5).await.expect("sync log");
    assert!(log.iter().any(|l| l.level == "warning" && l.message.contains("clear refused")), "{log:?}");

    // The database takes punches again: the queued batch goes, and the clear goes through.
    db.refuse_punches(false).await;
    let (status, body) = clear(&o.server, &o.device, None).await;
    assert_eq!((status, &body), (StatusCode::OK, &json!({"cleared": 500})));
    assert_eq!(o.sim.terminal.record_count(), 0);
    let want: HashSet<_> = fixture.attendance.iter().map(expected).collect();
    assert_eq!(in_database(&o.server, &o.device).await, want);

    // The agent's acks are not the only word: rows lost from the database after they were acknowledged (a
    // restore from an old backup) make the server refuse.
    for u in 0..5 {
        o.sim.terminal.try_punch(u, 1, 1).expect("an enabled terminal");
    }
    sync(&o.server, &o.device).await;
    db.execute("DELETE FROM essl_attendance").await;
    let (status, body) = clear(&o.server, &o.device, None).await;
    assert_refused(status, &body, "the database holds 0 records of this device");
    assert_eq!(o.sim.terminal.record_count(), 5, "the terminal keeps its records");
    assert!(o.sim.terminal.is_enabled());
    o.stop().await;
}

async fn a_punch_during_the_clear_is_not_lost(db: TestDb) {
    let fixture = generate::generate(20, 3_000, 11);
    let o = office(&db, &fixture, |_| {}).await;
    // No realtime events: a punch the clear lost could not come back through them, so the test sees it.
    o.sim.terminal.set_faults(essl_zk_sim::Faults { no_events: true, ..Default::default() });
    let server = std::sync::Arc::new(o.server);

    // People keep punching, every 2 ms, before, during and after the clear; a held terminal ignores them (they try
    // again), as a real one shows "working..." and ignores the finger.
    let stop = tokio_util::sync::CancellationToken::new();
    let puncher = {
        let (terminal, stop) = (o.sim.terminal.clone(), stop.clone());
        tokio::spawn(async move {
            let (mut taken, mut ignored, mut user) = (Vec::new(), 0u32, 0usize);
            while !stop.is_cancelled() {
                match terminal.try_punch(user % 20, 1, (user % 2) as u8) {
                    Some(r) => {
                        taken.push(r);
                        user += 1;
                    }
                    None => ignored += 1,
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            (taken, ignored)
        })
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (status, body) = clear(&server, &o.device, None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.cancel();
    let (taken, ignored) = puncher.await.expect("puncher");
    println!(
        "{:?}: cleared {}, {} punches taken, {ignored} tries while held",
        db.backend,
        body["cleared"],
        taken.len()
    );
    assert!(ignored > 0, "punches were tried while the terminal was held");
    assert!(!taken.is_empty());
    let cleared = body["cleared"].as_u64().expect("cleared");
    assert!(cleared >= 3_000, "the log and the punches before the hold");

    // Every punch the terminal took is stored or still on it; after one more sync, stored.
    let stored = in_database(&server, &o.device).await;
    let on_terminal = on_terminal(&o.sim);
    let key_of = |r: &essl_zk_sim::fixture::PunchFixture| expected(r);
    let lost: Vec<_> = taken
        .iter()
        .map(|r| key_of(&essl_zk_sim::fixture::PunchFixture::from(r)))
        .filter(|k| !stored.contains(k) && !on_terminal.contains(k))
        .collect();
    assert!(lost.is_empty(), "punches lost by the clear: {lost:?}");
    sync(&server, &o.device).await;
    let stored = in_database(&server, &o.device).await;
    let want: HashSet<_> = fixture.attendance.iter().map(expected).collect();
    assert!(want.is_subset(&stored), "the log of before is stored");
    assert!(
        taken.iter().all(|r| stored.contains(&key_of(&essl_zk_sim::fixture::PunchFixture::from(r)))),
        "every punch taken is stored"
    );
    o.agent.stop().await;
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.stop().await;
    }
    o.sim.stop().await;
}
