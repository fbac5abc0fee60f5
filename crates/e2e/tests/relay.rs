//! The relay end to end: a real server with a real database, real agents over a real WebSocket, simulated
//! terminals. Every scenario runs on SQLite and on PostgreSQL.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use essl_e2e::*;
use essl_server::hub::HubEvent;
use essl_zk_sim::generate;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_backends!(
    check_reachable_and_unreachable,
    sync_stores_exactly_the_terminal_records_once,
    cached_answer_without_agent,
    second_agent_serves_when_the_first_dies,
    concurrent_syncs_share_one_device_read,
    revoked_token_is_closed_and_refused,
    garbage_frames_close_only_that_connection,
    bad_requests_get_4xx,
);

/// Server, one terminal, one device, one connected agent that has probed it.
async fn office(db: &TestDb, records: usize) -> (Server, essl_zk_sim::Simulator, String, (String, String), Agent) {
    let server = Server::start(db).await;
    let sim = terminal(&generate::generate(25, records, 17)).await;
    let device = server.add_device("Front door", sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent("office-pc", "HQ").await;
    let agent = Agent::start(&server, &token);
    wait_reachable(&server, &device, &agent_id).await;
    (server, sim, device, (agent_id, token), agent)
}

async fn check_reachable_and_unreachable(db: TestDb) {
    let (server, sim, device, _, agent) = office(&db, 10).await;
    let (status, body) = server.post("/api/essl/check-device", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["success"], true);
    assert_eq!(body["reachableCount"], 1);
    assert_eq!(body["reachableDevices"][0]["deviceId"], device.as_str());
    assert_eq!(body["reachableDevices"][0]["deviceName"], "Front door");
    assert_eq!(body["reachableDevices"][0]["ipAddress"], "127.0.0.1");
    assert_eq!(body["reachableDevices"][0]["reachable"], true);

    // A terminal that hangs: the agent's 3 s probe and its one retry, then the answer.
    sim.terminal.set_faults(essl_zk_sim::Faults { mute: true, ..Default::default() });
    let started = Instant::now();
    let (status, body) = server.post("/api/essl/check-device", json!({})).await;
    let took = started.elapsed();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["reachableCount"], 0);
    assert_eq!(body["reachableDevices"][0]["reachable"], false);
    assert!(took < Duration::from_secs(8), "unreachable answer took {took:?}");

    // A terminal that is switched off answers at once.
    sim.stop().await;
    let started = Instant::now();
    let (_, body) = server.post("/api/essl/check-device", json!({"deviceId": device})).await;
    assert_eq!(body["reachableDevices"][0]["reachable"], false);
    assert!(started.elapsed() < Duration::from_secs(7), "{:?}", started.elapsed());
    agent.stop().await;
    server.stop().await;
}

fn stored_set(items: &[Value]) -> HashSet<(String, String, i64, i64)> {
    items
        .iter()
        .map(|r| {
            (
                r["userId"].as_str().unwrap_or_default().to_owned(),
                r["localTime"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_i64().unwrap_or(-1),
                r["punch"].as_i64().unwrap_or(-1),
            )
        })
        .collect()
}

async fn all_attendance(server: &Server, device: &str) -> Vec<Value> {
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

async fn sync_stores_exactly_the_terminal_records_once(db: TestDb) {
    let (server, sim, device, _, agent) = office(&db, 12_345).await;
    let (status, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["message"], "Attendance sync completed");
    assert_eq!(body["totalRecords"], 12_345);

    let stored = all_attendance(&server, &device).await;
    assert_eq!(stored.len(), 12_345);
    let expected: HashSet<_> = sim
        .terminal
        .to_fixture()
        .attendance
        .iter()
        .map(|p| (p.user_id.clone(), p.timestamp.clone(), i64::from(p.status), i64::from(p.punch)))
        .collect();
    assert_eq!(stored_set(&stored), expected);
    // The instant is the terminal's wall-clock time in the device's zone (Asia/Kolkata, +05:30).
    let first = &stored[0];
    let local = jiff::civil::DateTime::strptime("%Y-%m-%dT%H:%M:%S", first["localTime"].as_str().expect("localTime"))
        .expect("parse");
    let instant: jiff::Timestamp = first["punchedAt"].as_str().expect("punchedAt").parse().expect("RFC 3339");
    let tz = jiff::tz::TimeZone::get("Asia/Kolkata").expect("zone");
    assert_eq!(tz.to_ambiguous_timestamp(local).compatible().expect("instant"), instant);

    // Again: nothing new.
    let (_, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(body["success"], true);
    assert_eq!(body["totalRecords"], 0);
    assert_eq!(body["stats"]["recordsRead"], 12_345);
    assert_eq!(all_attendance(&server, &device).await.len(), 12_345);

    // Sync status shows the last attempt.
    let (_, status_body) = server.get("/api/essl/sync-status").await;
    let d = &status_body["devices"][0];
    assert_eq!(d["syncStatus"], "success");
    assert_eq!(d["recordCount"], 12_345);
    agent.stop().await;
    server.stop().await;
}

async fn cached_answer_without_agent(db: TestDb) {
    let (server, _sim, device, _, agent) = office(&db, 300).await;
    let (_, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(body["totalRecords"], 300);
    let synced_at = body["success"].clone();
    assert_eq!(synced_at, true);

    let mut events = server.events();
    agent.stop().await;
    wait_event(&mut events, Duration::from_secs(5), |e| matches!(e, HubEvent::AgentDisconnected { .. })).await;

    let (status, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], false);
    assert_eq!(body["deviceUnreachable"], true);
    assert_eq!(body["message"], "Device unreachable. Using cached data from 0 minutes ago.");
    let cached = &body["cachedData"];
    assert_eq!(cached["available"], true);
    assert_eq!(cached["recordCount"], 300);
    assert_eq!(cached["lastSyncRecords"], 300);
    assert_eq!(cached["minutesSinceSync"], 0);
    let last: jiff::Timestamp = cached["lastSyncTime"].as_str().expect("lastSyncTime").parse().expect("RFC 3339");
    assert!(jiff::Timestamp::now().as_second() - last.as_second() < 60);

    // The failed attempt is recorded as a connection error.
    let (_, status_body) = server.get("/api/essl/sync-status").await;
    assert_eq!(status_body["devices"][0]["syncStatus"], "failed");
    server.stop().await;
}

async fn second_agent_serves_when_the_first_dies(db: TestDb) {
    let (server, sim, device, (first_id, _), first) = office(&db, 50).await;
    let (second_id, second_token) = server.add_agent("backup-pc", "HQ").await;
    let second = Agent::start(&server, &second_token);
    wait_reachable(&server, &device, &second_id).await;
    assert_ne!(first_id, second_id);

    first.kill();
    let (_, body) = server.post("/api/essl/check-device", json!({"deviceId": device})).await;
    assert_eq!(body["reachableCount"], 1, "{body}");
    let (_, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["totalRecords"], 50);
    assert_eq!(sim.terminal.stats().attendance_reads, 1);
    second.stop().await;
    server.stop().await;
}

async fn concurrent_syncs_share_one_device_read(db: TestDb) {
    let (server, sim, device, _, agent) = office(&db, 20_000).await;
    let before = sim.terminal.stats().attendance_reads;
    let server = std::sync::Arc::new(server);
    for (status, body) in essl_e2e::syncs_at_once(std::slice::from_ref(&server), &device, 10).await {
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["success"], true, "{body}");
        assert_eq!(body["totalRecords"], 20_000);
    }
    assert_eq!(sim.terminal.stats().attendance_reads - before, 1, "ten syncs, one device read");
    assert_eq!(all_attendance(&server, &device).await.len(), 20_000);
    agent.stop().await;
    if let Ok(server) = std::sync::Arc::try_unwrap(server) {
        server.stop().await;
    }
}

async fn revoked_token_is_closed_and_refused(db: TestDb) {
    let (server, _sim, _device, (agent_id, token), agent) = office(&db, 5).await;
    let mut events = server.events();
    let revoked_at = Instant::now();
    let (status, _) =
        server.call(Method::DELETE, &format!("/api/agents/{agent_id}"), Some(&server.admin.clone()), None).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    wait_event(&mut events, Duration::from_secs(1), |e| matches!(e, HubEvent::AgentDisconnected { .. })).await;
    assert!(revoked_at.elapsed() < Duration::from_secs(1));

    // The same token cannot connect again.
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws_url())
        .expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => assert_eq!(resp.status(), 401),
        Err(e) => panic!("expected HTTP 401, got {e}"),
        Ok(_) => panic!("revoked token was accepted"),
    }
    // And the agent list says so.
    let (_, list) = server.get("/api/agents").await;
    let me = list["items"]
        .as_array()
        .and_then(|a| a.iter().find(|x| x["id"] == agent_id.as_str()))
        .cloned()
        .expect("listed");
    assert_eq!(me["revoked"], true);
    assert_eq!(me["connected"], false);
    agent.stop().await;
    server.stop().await;
}

async fn garbage_frames_close_only_that_connection(db: TestDb) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (server, _sim, device, _, agent) = office(&db, 5).await;
    let (_, intruder_token) = server.add_agent("fuzzer", "HQ").await;
    for garbage in [vec![0xc1u8, 0xff, 0x00], b"not msgpack at all".to_vec(), vec![0x92; 10_000]] {
        let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws_url())
            .expect("request");
        req.headers_mut().insert("authorization", format!("Bearer {intruder_token}").parse().expect("header"));
        let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connects");
        let hello = essl_wire::encode_agent(&essl_wire::AgentMsg::Hello {
            min_protocol: 1,
            max_protocol: 1,
            agent_version: "fuzz".into(),
            hostname: "fuzz".into(),
            os: "fuzz".into(),
        })
        .expect("encode");
        ws.send(Message::Binary(hello.into())).await.expect("send hello");
        ws.send(Message::Binary(garbage.into())).await.expect("send garbage");
        let closed = tokio::time::timeout(Duration::from_secs(5), async {
            while let Some(msg) = ws.next().await {
                match msg {
                    Ok(Message::Close(frame)) => return frame.map(|f| u16::from(f.code)),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
            None
        })
        .await
        .expect("server closes the connection");
        assert_eq!(closed, Some(essl_wire::close::PROTOCOL_ERROR));
    }
    // The real agent is unaffected.
    let (_, body) = server.post("/api/essl/check-device", json!({"deviceId": device})).await;
    assert_eq!(body["reachableCount"], 1);
    agent.stop().await;
    server.stop().await;
}

async fn bad_requests_get_4xx(db: TestDb) {
    let server = Server::start(&db).await;
    let admin = server.admin.clone();
    let staff = server.staff.clone();
    let code = |v: &Value| v["error"]["code"].as_str().unwrap_or_default().to_owned();
    // No or bad token.
    let (s, _) = server.call(Method::POST, "/api/essl/check-device", None, None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let (s, b) =
        server.call(Method::GET, "/api/devices", Some("essls_00000000000000000000000000000000_00"), None).await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::UNAUTHORIZED, "unauthorized"));
    // Staff may read, not administer.
    let (s, _) = server.call(Method::GET, "/api/devices", Some(&staff), None).await;
    assert_eq!(s, StatusCode::OK);
    let (s, _) = server
        .call(Method::POST, "/api/devices", Some(&staff), Some(json!({"name": "x", "ipAddress": "10.0.0.1"})))
        .await;
    assert_eq!(s, StatusCode::FORBIDDEN);
    // Malformed JSON, wrong shapes, unknown ids.
    let (s, b) = server.raw(Method::POST, "/api/essl/sync-attendance", Some(&admin), b"{\"deviceId\":".to_vec()).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, _) = server
        .raw(Method::POST, "/api/essl/sync-attendance", Some(&admin), b"{\"deviceId\": \"not-a-uuid\"}".to_vec())
        .await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, b) = server.post("/api/essl/sync-attendance", json!({"deviceId": uuid::Uuid::new_v4()})).await;
    assert_eq!((s, code(&b).as_str()), (StatusCode::NOT_FOUND, "not_found"));
    let (s, _) = server.post("/api/essl/check-device", json!({"deviceId": uuid::Uuid::new_v4()})).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = server.get("/api/devices/not-a-uuid").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = server.get(&format!("/api/devices/{}", uuid::Uuid::new_v4())).await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) =
        server.post("/api/devices", json!({"name": "x", "ipAddress": "10.0.0.1", "timezone": "Mars/Base"})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = server.post("/api/devices", json!({"name": "x", "ipAddress": "10.0.0.1", "port": 70000})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    let (s, _) = server.post("/api/devices", json!({"name": "x", "ipAddress": "10.0.0.1", "surprise": 1})).await;
    assert_eq!(s, StatusCode::UNPROCESSABLE_ENTITY);
    // SQL metacharacters are data.
    let evil = "Robert'); DROP TABLE essl_devices; --";
    let (s, b) = server.post("/api/devices", json!({"name": evil, "ipAddress": "10.0.0.1", "site": evil})).await;
    assert_eq!(s, StatusCode::CREATED, "{b}");
    assert_eq!(b["name"], evil);
    assert_eq!(b["site"], evil);
    let (_, b) = server.get(&format!("/api/attendance?userId={}", "%27%20OR%201%3D1%20--")).await;
    assert_eq!(b["items"].as_array().map(Vec::len), Some(0));
    // Huge bodies and parameters.
    assert_eq!(oversized_post(&server, "/api/devices", &admin).await, 413);
    let (s, _) = server.get(&format!("/api/attendance?userId={}", "9".repeat(10_000))).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = server.get("/api/attendance?limit=99999999").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = server.get("/api/attendance?cursor=bogus").await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, _) = server.get("/api/nothing-here").await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    server.stop().await;
}

/// Announces a 2 MiB body and sends none of it: the server must refuse from the header alone (a client streaming
/// the body would race the server closing the connection after its 413).
async fn oversized_post(server: &Server, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(server.addr).await.expect("connect");
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: test\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        2 * 1024 * 1024
    );
    s.write_all(head.as_bytes()).await.expect("write");
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await.expect("answer").expect("read");
    let text = String::from_utf8_lossy(&buf[..n]);
    text.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0)
}
