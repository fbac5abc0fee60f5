//! Never lose a punch, continued: records that look wrong are stored and flagged (never dropped), the terminal's
//! log is cleared only when the cloud holds every record of it, and the agent's outbox fill is reported. Real
//! server and database (SQLite and PostgreSQL), real agent over a real WebSocket, simulated terminal.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use essl_e2e::*;
use essl_server::hub::HubEvent;
use essl_server::ingest::{FLAG_INVALID_TIME, FLAG_UNKNOWN_USER};
use essl_server::store::model::DeviceUserRow;
use essl_zk_sim::fixture::PunchFixture;
use essl_zk_sim::{Fixture, Simulator, generate};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::broadcast;

macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            use super::*;
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                let db = TestDb::new(Backend::Sqlite).await.expect("sqlite is always available");
                super::$name(db).await;
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                let Some(db) = TestDb::new(Backend::Postgres).await else { return };
                super::$name(db).await;
            }
        }
    )*};
}

on_both_backends!(corrupt_records_and_unknown_users_are_stored_flagged_once,);

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
    let deadline = Instant::now() + within;
    while !pred().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    // The server knows the device's enrolled users (as a user sync leaves them).
    let users: Vec<DeviceUserRow> = fixture
        .users
        .iter()
        .map(|u| DeviceUserRow {
            device_id: o.device_id,
            uid: i32::from(u.uid),
            user_id: u.user_id.clone(),
            name: u.name.clone(),
            privilege: i16::from(u.privilege),
            card: i64::from(u.card),
            group_id: u.group_id.clone(),
        })
        .collect();
    o.server.state.store.replace_device_users(o.device_id, &users).await.expect("users stored");

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
