//! Never lose a punch: the agent's durable outbox, incremental sync, realtime punches and scheduled sync, end to end
//! (real server and database, real agent, simulated terminal). Every scenario runs on SQLite and on PostgreSQL.
//! Afterwards the database must hold exactly what the terminal holds: none lost, none doubled.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use essl_e2e::*;
use essl_server::hub::HubEvent;
use essl_zk_sim::{Simulator, generate};
use reqwest::StatusCode;
use serde_json::{Value, json};
use tokio::sync::broadcast;

on_both_backends!(
    a_realtime_punch_is_stored_within_a_second,
    punches_while_the_cloud_is_away_arrive_once_it_is_back,
    an_agent_killed_mid_upload_finishes_from_its_outbox,
    a_batch_delivered_twice_is_stored_once,
    a_second_sync_of_an_unchanged_terminal_sends_nothing,
    a_cleared_log_is_detected_and_sent_again,
    the_agent_syncs_on_schedule_without_being_asked,
    realtime_makes_room_on_a_terminal_with_one_session,
);

/// A terminal, a server with the device and an agent token, and an agent (configured by `configure`) that has
/// probed the terminal.
struct Office {
    server: Server,
    sim: Simulator,
    device: String,
    device_id: uuid::Uuid,
    token: String,
    agent: Agent,
}

async fn office(db: &TestDb, records: usize, configure: impl FnOnce(&mut essl_agent::config::Config)) -> Office {
    let server = Server::start(db).await;
    let sim = terminal(&generate::generate(25, records, 23)).await;
    office_with(server, sim, configure).await
}

async fn office_with(
    server: Server,
    sim: Simulator,
    configure: impl FnOnce(&mut essl_agent::config::Config),
) -> Office {
    let device = server.add_device("Front door", sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent("office-pc", "HQ").await;
    let agent = Agent::start_configured(&server.ws_url(), &token, configure);
    wait_reachable(&server, &device, &agent_id).await;
    let device_id = device.parse().expect("uuid");
    Office { server, sim, device, device_id, token, agent }
}

/// What the terminal holds, as (user, local time, status, punch).
fn on_terminal(sim: &Simulator) -> Vec<(String, String, i64, i64)> {
    sim.terminal
        .to_fixture()
        .attendance
        .iter()
        .map(|p| (p.user_id.clone(), p.timestamp.clone(), i64::from(p.status), i64::from(p.punch)))
        .collect()
}

/// Every stored row of the device, as (user, local time, status, punch).
async fn in_database(server: &Server, device: &str) -> Vec<(String, String, i64, i64)> {
    let mut out = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut path = format!("/api/attendance?deviceId={device}&limit=1000");
        if let Some(c) = &cursor {
            path.push_str(&format!("&cursor={c}"));
        }
        let (status, body) = server.get(&path).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        for r in body["items"].as_array().cloned().unwrap_or_default() {
            out.push((
                r["userId"].as_str().unwrap_or_default().to_owned(),
                r["localTime"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_i64().unwrap_or(-1),
                r["punch"].as_i64().unwrap_or(-1),
            ));
        }
        match body["nextCursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return out,
        }
    }
}

/// The database holds exactly the terminal's records: the same set, and no row twice.
async fn assert_exactly_the_terminal(server: &Server, sim: &Simulator, device: &str) {
    let stored = in_database(server, device).await;
    let want = on_terminal(sim);
    let stored_set: HashSet<_> = stored.iter().cloned().collect();
    let want_set: HashSet<_> = want.iter().cloned().collect();
    assert_eq!(stored.len(), stored_set.len(), "a punch is stored twice");
    let lost: Vec<_> = want_set.difference(&stored_set).take(5).collect();
    let extra: Vec<_> = stored_set.difference(&want_set).take(5).collect();
    assert!(lost.is_empty() && extra.is_empty(), "lost {lost:?}, not on the terminal {extra:?}");
    assert_eq!(stored.len(), want.len());
}

/// Waits until the database holds as many rows of the device as the terminal has records.
async fn wait_stored(server: &Server, sim: &Simulator, device_id: uuid::Uuid, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let stored = server.state.store.count_attendance(Some(device_id)).await.expect("count");
        let want = sim.terminal.record_count() as i64;
        if stored == want {
            return;
        }
        assert!(Instant::now() < deadline, "{stored} rows stored, the terminal holds {want}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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

async fn sync(server: &Server, device: &str) -> Value {
    let (status, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true, "{body}");
    body
}

/// A punch on the terminal, then waits until the hub stored it; returns the time it took.
async fn punch_and_wait(o: &Office, user: usize, within: Duration) -> Duration {
    let mut events = o.server.events();
    let started = Instant::now();
    o.sim.terminal.punch(user, 1, 0);
    let id = o.device_id;
    wait_event(&mut events, within, |e| matches!(e, HubEvent::PunchesStored { device_id, .. } if *device_id == id))
        .await;
    started.elapsed()
}

/// Punches until one arrives by realtime within half a second: the subscription is up. (A punch made before it was
/// up stays on the terminal for the next sync.)
async fn wait_subscribed(o: &Office) {
    for user in 0..40 {
        let mut events = o.server.events();
        o.sim.terminal.punch(user, 1, 0);
        let id = o.device_id;
        let stored = tokio::time::timeout(Duration::from_millis(500), async {
            loop {
                match events.recv().await {
                    Ok(HubEvent::PunchesStored { device_id, .. }) if device_id == id => return,
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => panic!("hub closed"),
                }
            }
        })
        .await;
        if stored.is_ok() {
            return;
        }
    }
    panic!("no realtime punch arrived within 20 s");
}

// ---------------------------------------------------------------------------------------------------------------

async fn a_realtime_punch_is_stored_within_a_second(db: TestDb) {
    let o = office(&db, 50, |_| {}).await;
    wait_subscribed(&o).await;
    let mut took = Vec::new();
    for user in 1..=5 {
        took.push(punch_and_wait(&o, user, Duration::from_secs(5)).await);
    }
    took.sort();
    println!(
        "realtime punch -> database ({:?}): median {:?}, max {:?}",
        db.backend,
        took[took.len() / 2],
        took[took.len() - 1]
    );
    assert!(took.iter().all(|t| *t < Duration::from_secs(1)), "{took:?}");
    // The realtime rows are the terminal's own records; a sync adds the rest and repeats nothing.
    sync(&o.server, &o.device).await;
    assert_exactly_the_terminal(&o.server, &o.sim, &o.device).await;
    o.agent.stop().await;
    o.server.stop().await;
}

async fn punches_while_the_cloud_is_away_arrive_once_it_is_back(db: TestDb) {
    let o = office(&db, 300, |_| {}).await;
    wait_subscribed(&o).await;
    sync(&o.server, &o.device).await;

    let addr = o.server.addr;
    let mut gone = o.server.events();
    o.server.stop().await;
    let _ = wait_event(&mut gone, Duration::from_secs(5), |e| matches!(e, HubEvent::AgentDisconnected { .. })).await;
    // Punches keep happening; the agent queues them.
    for user in 0..20 {
        o.sim.terminal.punch(user, 1, (user % 2) as u8);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A new server on the same database and port: the agent reconnects and flushes its outbox.
    let server = Server::start_at(&db, test_hub(), addr).await;
    wait_stored(&server, &o.sim, o.device_id, Duration::from_secs(20)).await;
    assert_exactly_the_terminal(&server, &o.sim, &o.device).await;
    // And a sync afterwards finds nothing to add.
    let body = sync(&server, &o.device).await;
    assert_eq!(body["totalRecords"], 0, "{body}");
    assert_exactly_the_terminal(&server, &o.sim, &o.device).await;
    o.agent.stop().await;
    server.stop().await;
}

async fn an_agent_killed_mid_upload_finishes_from_its_outbox(db: TestDb) {
    let outbox = TempOutbox::new();
    let path = outbox.path();
    let o = office(&db, 60_000, |c| c.collect.outbox = path.clone()).await;
    let mut events = o.server.events();
    let server = std::sync::Arc::new(o.server);
    let request = {
        let (server, device) = (server.clone(), o.device.clone());
        tokio::spawn(async move { server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await })
    };
    // The first committed batch of records (not the terminal's user list): the rest are on the wire or still
    // queued. Kill the agent right there.
    let id = o.device_id;
    wait_event(
        &mut events,
        Duration::from_secs(30),
        |e| matches!(e, HubEvent::BatchCommitted { device_id, records, .. } if *device_id == id && *records > 0),
    )
    .await;
    o.agent.kill();
    let (_, body) = request.await.expect("request task");
    assert_eq!(body["success"], false, "the agent died during the sync: {body}");
    let stored_then = server.state.store.count_attendance(Some(id)).await.expect("count");
    assert!(stored_then < 60_000, "the upload was cut short ({stored_then} stored)");
    // Punches while the agent is down stay on the terminal.
    for user in 0..3 {
        o.sim.terminal.punch(user, 1, 0);
    }

    // Restarted on the same outbox: the queued batches go first, then a catch-up sync brings what it missed.
    let agent = Agent::start_configured(&server.ws_url(), &o.token, |c| c.collect.outbox = path.clone());
    wait_stored(&server, &o.sim, id, Duration::from_secs(60)).await;
    assert_exactly_the_terminal(&server, &o.sim, &o.device).await;
    agent.stop().await;
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.stop().await;
    }
    drop(outbox);
}

async fn a_batch_delivered_twice_is_stored_once(db: TestDb) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let o = office(&db, 5, |_| {}).await;
    // A second agent of the site, speaking the protocol by hand, stands in for an agent that sends a batch, misses
    // the Ack, and sends the same batch again after reconnecting. (Its own token: a second connection with the
    // first agent's token would replace that agent's connection, and be replaced back.)
    let (_, token) = o.server.add_agent("by-hand", "HQ").await;
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(o.server.ws_url())
        .expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connects");
    let send = |msg: essl_wire::AgentMsg| Message::Binary(essl_wire::encode_agent(&msg).expect("encodes").into());
    ws.send(send(essl_wire::AgentMsg::Hello {
        min_protocol: 1,
        max_protocol: 1,
        agent_version: "test".into(),
        hostname: "test".into(),
        os: "test".into(),
    }))
    .await
    .expect("hello");
    let records: Vec<essl_wire::Punch> = (0..3)
        .map(|i| essl_wire::Punch {
            uid: 1,
            user_id: "4242".into(),
            local_time: format!("2025-11-24T09:00:0{i}"),
            status: 1,
            punch: 0,
            raw_time: None,
        })
        .collect();
    let batch =
        essl_wire::AgentMsg::Punches { batch: 7, device: o.device.clone(), request: None, records, users: None };
    let mut acks = 0;
    for _ in 0..2 {
        ws.send(send(batch.clone())).await.expect("batch");
        let acked = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(Ok(msg)) = ws.next().await {
                if let Message::Binary(b) = msg
                    && let Ok(essl_wire::ServerMsg::Ack { batch }) = essl_wire::decode_server(&b)
                {
                    return batch;
                }
            }
            panic!("connection closed before the Ack");
        })
        .await
        .expect("Ack in time");
        assert_eq!(acked, 7);
        acks += 1;
    }
    assert_eq!(acks, 2, "both deliveries acknowledged");
    let rows = in_database(&o.server, &o.device).await;
    assert_eq!(rows.iter().filter(|r| r.0 == "4242").count(), 3, "stored once: {rows:?}");
    o.agent.stop().await;
    o.server.stop().await;
}

async fn a_second_sync_of_an_unchanged_terminal_sends_nothing(db: TestDb) {
    let o = office(&db, 100_000, |_| {}).await;
    let first = sync(&o.server, &o.device).await;
    assert_eq!(first["totalRecords"], 100_000);

    let (stop, received) = count_received(o.server.events(), o.device_id);
    let second = sync(&o.server, &o.device).await;
    let _ = stop.send(());
    assert_eq!(received.await.expect("counter"), 0, "the second sync sent records");
    assert_eq!(second["totalRecords"], 0);
    assert_eq!(second["stats"]["recordsRead"], 100_000, "recordsRead still counts the terminal's records");
    assert_eq!(second["stats"]["duplicates"], 100_000);

    // A new punch: only it goes.
    o.sim.terminal.punch(3, 1, 0);
    let (stop, received) = count_received(o.server.events(), o.device_id);
    let third = sync(&o.server, &o.device).await;
    let _ = stop.send(());
    // Realtime may have brought it first; the sync sends it once more at most.
    let got = received.await.expect("counter");
    assert!((1..=2).contains(&got), "{got} records sent for one new punch");
    assert_eq!(third["stats"]["recordsRead"], 100_001);
    assert_exactly_the_terminal(&o.server, &o.sim, &o.device).await;
    o.agent.stop().await;
    o.server.stop().await;
}

async fn a_cleared_log_is_detected_and_sent_again(db: TestDb) {
    let o = office(&db, 1_000, |_| {}).await;
    wait_subscribed(&o).await;
    sync(&o.server, &o.device).await;
    let before = on_terminal(&o.sim);
    let was = before.len();

    // The log is cleared, and five punches come after: fewer records than the watermark.
    let mut events = o.server.events();
    o.sim.terminal.replace_attendance(Vec::new());
    // (Other users than `wait_subscribed` punched: the same user in the same second is one punch to the server.)
    let new: Vec<_> = (10..15).map(|u| o.sim.terminal.punch(u, 1, 0)).collect();
    assert_eq!(o.sim.terminal.record_count(), 5);
    // Realtime brings the five first; what the sync sends is counted after that.
    let mut realtime = 0;
    while realtime < 5 {
        let id = o.device_id;
        if let HubEvent::BatchCommitted { records, .. } = wait_event(
            &mut events,
            Duration::from_secs(10),
            |e| matches!(e, HubEvent::BatchCommitted { device_id, .. } if *device_id == id),
        )
        .await
        {
            realtime += records;
        }
    }

    let (stop, received) = count_received(o.server.events(), o.device_id);
    let body = sync(&o.server, &o.device).await;
    let _ = stop.send(());
    assert_eq!(received.await.expect("counter"), 5, "everything on the terminal is sent again");
    assert_eq!(body["stats"]["recordsRead"], 5);
    let log = o.server.state.store.sync_log(o.device_id, 10).await.expect("sync log");
    let reported = format!("went from {was} to 5 records");
    assert!(log.iter().any(|l| l.message.contains(&reported)), "the clear is reported: {log:?}");
    // Everything ever seen is stored once: the records of before and the five new ones.
    let stored: HashSet<_> = in_database(&o.server, &o.device).await.into_iter().collect();
    assert_eq!(stored.len(), was + 5);
    assert!(before.iter().all(|r| stored.contains(r)));
    assert!(new.iter().all(|r| stored.iter().any(|s| s.0 == r.user_id)));
    // The watermark starts again from the new log.
    let (stop, received) = count_received(o.server.events(), o.device_id);
    sync(&o.server, &o.device).await;
    let _ = stop.send(());
    assert_eq!(received.await.expect("counter"), 0);
    o.agent.stop().await;
    o.server.stop().await;
}

async fn the_agent_syncs_on_schedule_without_being_asked(db: TestDb) {
    let o = office(&db, 400, |c| c.collect.sync_interval = Duration::from_secs(1)).await;
    // Nobody asks: the scheduled sync stores the terminal's log.
    wait_stored(&o.server, &o.sim, o.device_id, Duration::from_secs(15)).await;
    assert_exactly_the_terminal(&o.server, &o.sim, &o.device).await;
    o.agent.stop().await;
    o.server.stop().await;
}

async fn realtime_makes_room_on_a_terminal_with_one_session(db: TestDb) {
    // A terminal that serves one session at a time: the realtime subscription holds it, and gives it up for a sync.
    let server = Server::start(&db).await;
    let fixture = generate::generate(10, 200, 5);
    let t = essl_zk_sim::Terminal::new(&fixture, essl_zk_sim::TerminalConfig { max_sessions: 1, ..Default::default() })
        .expect("fixture");
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), t).await.expect("simulator");
    // Probes make room too (the first one races the subscription's connect); every 2 s keeps the churn low.
    let o = office_with(server, sim, |c| c.probe_interval = Some(Duration::from_secs(2))).await;
    wait_subscribed(&o).await;
    let body = sync(&o.server, &o.device).await;
    assert_eq!(body["stats"]["recordsRead"], o.sim.terminal.record_count(), "{body}");
    // The subscription comes back: punches arrive without a sync again.
    wait_subscribed(&o).await;
    sync(&o.server, &o.device).await;
    assert_exactly_the_terminal(&o.server, &o.sim, &o.device).await;
    o.agent.stop().await;
    o.server.stop().await;
}
