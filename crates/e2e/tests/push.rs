//! Push (ADMS / iclock) terminals end to end: the simulator in push mode against the real server over real HTTP,
//! on SQLite and on PostgreSQL. Each scenario ends with the database holding exactly the terminal's punches.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use essl_e2e::*;
use essl_server::hub::HubEvent;
use essl_zk_sim::generate;
use essl_zk_sim::push::{Dialect, PushConfig, PushTerminal, session_token};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

on_both_backends!(
    backlog_realtime_and_dropped_acks_store_each_punch_once,
    server_restart_in_the_middle_of_a_backlog,
    reupload_command_and_seed_routes,
    quarantine_until_claimed,
    user_commands_and_injection,
    malformed_requests_are_journaled_and_answered,
    london_punches_across_both_dst_changes,
    kolkata_is_five_and_a_half_hours_ahead,
    a_serial_claimed_by_another_site_is_refused,
    constant_stamps_and_a_drifting_clock,
    security_push_session_token,
);

/// Claims `serial` for site HQ in Asia/Kolkata; answers the device id.
async fn claim(server: &Server, serial: &str) -> String {
    claim_in(server, serial, "HQ", "Asia/Kolkata").await
}

/// Claims `serial` for `site` in the IANA zone `timezone`; answers the device id.
async fn claim_in(server: &Server, serial: &str, site: &str, timezone: &str) -> String {
    let (status, body) = server
        .post("/api/push/claim", json!({"serialNumber": serial, "name": serial, "site": site, "timezone": timezone}))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["kind"], "push");
    body["id"].as_str().expect("device id").to_owned()
}

fn sim_config(server: &Server, serial: &str) -> PushConfig {
    let mut c = PushConfig::new(server.addr, serial);
    c.min_delay = Duration::from_millis(50);
    c.initial_error_delay = Duration::from_millis(500);
    c.timeout = Duration::from_secs(5);
    c
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

/// The database holds exactly the terminal's punches (user, local time, verify, state), none twice.
async fn assert_exactly(server: &Server, device: &str, terminal: &PushTerminal) {
    let rows = all_attendance(server, device).await;
    let stored: Vec<(String, String, i64, i64)> = rows
        .iter()
        .map(|r| {
            (
                r["userId"].as_str().unwrap_or_default().to_owned(),
                r["localTime"].as_str().unwrap_or_default().to_owned(),
                r["status"].as_i64().unwrap_or(-1),
                r["punch"].as_i64().unwrap_or(-1),
            )
        })
        .collect();
    let set: HashSet<_> = stored.iter().cloned().collect();
    assert_eq!(set.len(), stored.len(), "a punch is stored twice");
    let expected: HashSet<_> = terminal
        .records()
        .iter()
        .map(|p| (p.user_id.clone(), p.timestamp.clone(), i64::from(p.status), i64::from(p.punch)))
        .collect();
    assert_eq!(set.len(), expected.len(), "stored {} punches, the terminal holds {}", set.len(), expected.len());
    assert!(set == expected, "the stored punches differ from the terminal's");
}

async fn wait_until(what: &str, within: Duration, done: impl AsyncFnMut() -> bool) {
    essl_e2e::poll_until(within, what, done).await;
}

async fn caught_up(terminal: &PushTerminal, within: Duration) {
    wait_until("the terminal has uploaded everything", within, async || terminal.caught_up()).await;
}

async fn backlog_realtime_and_dropped_acks_store_each_punch_once(db: TestDb) {
    let server = Server::start(&db).await;
    let device = claim(&server, "CEXJ201260001").await;
    let mut config = sim_config(&server, "CEXJ201260001");
    config.batch = 128;
    config.drop_acks = 0.3;
    config.crlf = true;
    config.extra_fields = true;
    config.gbk = true;
    config.form_content_type = true;
    config.seed = 7;
    let terminal = PushTerminal::start(&generate::generate(30, 1_500, 11), config);
    caught_up(&terminal, Duration::from_secs(90)).await;
    let stats = terminal.stats();
    assert!(stats.acks_dropped > 0, "{stats:?}");
    assert!(stats.handshakes >= 1, "{stats:?}");
    assert_exactly(&server, &device, &terminal).await;

    // A realtime punch reaches the event stream (the hub's events, which /api/events serves) within a second.
    terminal.set_drop_acks(0.0);
    let mut events = server.events();
    let started = Instant::now();
    let p = terminal.punch(3, 15, 0);
    wait_event(&mut events, Duration::from_secs(1), |e| matches!(e, HubEvent::PunchesStored { inserted: 1, .. })).await;
    assert!(started.elapsed() < Duration::from_secs(1), "{:?}", started.elapsed());
    caught_up(&terminal, Duration::from_secs(10)).await;
    assert_exactly(&server, &device, &terminal).await;
    let rows = all_attendance(&server, &device).await;
    let row = rows
        .iter()
        .find(|r| r["userId"] == p.user_id.as_str() && r["localTime"] == p.timestamp.as_str())
        .expect("the punch");
    // Kolkata is UTC+5:30: the instant is the local time less 5:30; a fresh punch is neither future nor unknown.
    assert_eq!(row["flags"], 0, "{row}");
    let local: jiff::civil::DateTime = p.timestamp.parse().expect("local");
    let instant: jiff::Timestamp = row["punchedAt"].as_str().expect("punchedAt").parse().expect("instant");
    assert_eq!(
        jiff::tz::TimeZone::fixed(jiff::tz::offset(0)).to_datetime(instant),
        local - jiff::SignedDuration::from_mins(330)
    );
    terminal.stop().await;
    server.stop().await;
}

async fn server_restart_in_the_middle_of_a_backlog(db: TestDb) {
    let server = Server::start(&db).await;
    let device = claim(&server, "CEXJ201260002").await;
    let addr = server.addr;
    let mut config = sim_config(&server, "CEXJ201260002");
    config.batch = 40;
    let terminal = PushTerminal::start(&generate::generate(20, 4_000, 5), config);
    wait_until("a few batches are acknowledged", Duration::from_secs(30), async || terminal.stats().uploads_acked >= 4)
        .await;
    assert!(!terminal.caught_up(), "the backlog must still be going when the server stops");
    server.stop().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let failures_before = terminal.stats().failures;
    let server = Server::start_at(&db, test_hub(), addr).await;
    caught_up(&terminal, Duration::from_secs(120)).await;
    assert!(terminal.stats().failures > failures_before || terminal.stats().failures > 0, "{:?}", terminal.stats());
    assert_exactly(&server, &device, &terminal).await;
    terminal.stop().await;
    server.stop().await;
}

async fn command_status(server: &Server, device: &str, id: i64) -> Value {
    let (status, body) = server.get(&format!("/api/devices/{device}/commands")).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["items"].as_array().and_then(|a| a.iter().find(|c| c["id"] == id).cloned()).unwrap_or(Value::Null)
}

async fn wait_command(server: &Server, device: &str, id: i64, want: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let c = command_status(server, device, id).await;
        if c["status"] == want {
            return c;
        }
        assert!(Instant::now() < deadline, "command {id} is {c}, not {want}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn reupload_command_and_seed_routes(db: TestDb) {
    let server = Server::start(&db).await;
    let device = claim(&server, "CEXJ201260003").await;
    let terminal = PushTerminal::start(&generate::generate(10, 600, 3), sim_config(&server, "CEXJ201260003"));
    caught_up(&terminal, Duration::from_secs(60)).await;

    // The terminal uploads the window again: every record a duplicate, none stored twice.
    let mut events = server.events();
    let (status, c) = server
        .post(
            &format!("/api/devices/{device}/commands"),
            json!({"type": "reupload", "from": "2025-01-01T00:00:00", "to": "2025-12-31T23:59:59"}),
        )
        .await;
    assert_eq!(status, StatusCode::ACCEPTED, "{c}");
    assert_eq!(c["command"], "DATA QUERY ATTLOG StartTime=2025-01-01 00:00:00\tEndTime=2025-12-31 23:59:59");
    let id = c["id"].as_i64().expect("id");
    wait_command(&server, &device, id, "ok").await;
    wait_event(
        &mut events,
        Duration::from_secs(20),
        |e| matches!(e, HubEvent::PushCommitted { records, inserted: 0, .. } if *records > 0),
    )
    .await;
    caught_up(&terminal, Duration::from_secs(30)).await;
    assert_exactly(&server, &device, &terminal).await;

    // INFO lands in the command and in what the terminal list shows.
    let (_, c) = server.post(&format!("/api/devices/{device}/commands"), json!({"type": "info"})).await;
    let done = wait_command(&server, &device, c["id"].as_i64().expect("id"), "ok").await;
    assert!(done["result"].as_str().unwrap_or_default().contains("TransactionCount=600"), "{done}");
    let (_, list) = server.get("/api/push/terminals").await;
    let t = list["items"]
        .as_array()
        .and_then(|a| a.iter().find(|t| t["serialNumber"] == "CEXJ201260003").cloned())
        .expect("listed");
    assert_eq!(t["status"], "claimed");
    assert_eq!(t["info"]["DeviceName"], "essl-sim push", "{t}");

    // Staff read the dialect, firmware and last contact from the device list; the terminals list stays admin-only.
    let (status, body) = server.call(Method::GET, "/api/devices", Some(&server.staff.clone()), None).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let d =
        body["items"].as_array().and_then(|a| a.iter().find(|d| d["id"] == device.as_str()).cloned()).expect("listed");
    assert_eq!(
        (&d["pushDialect"], &d["pushVersion"], &d["firmware"]),
        (&json!("att"), &json!("2.4.1"), &json!("Ver 8.0.4.2-sim")),
        "{d}"
    );
    assert!(d["lastContact"].is_string(), "{d}");
    let (status, _) = server.call(Method::GET, "/api/push/terminals", Some(&server.staff.clone()), None).await;
    assert_eq!(status, StatusCode::FORBIDDEN);

    // The seed's routes treat it like any device: reachable while it polls, sync queues a re-upload.
    let (status, body) = server.post("/api/essl/check-device", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["reachableDevices"][0]["reachable"], true, "{body}");
    let (status, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["stats"]["recordsRead"], 600, "{body}");
    let (_, cmds) = server.get(&format!("/api/devices/{device}/commands")).await;
    assert_eq!(cmds["items"][0]["kind"], "reupload", "{cmds}");
    let (_, st) = server.get("/api/essl/sync-status").await;
    let mine = st["devices"]
        .as_array()
        .and_then(|a| a.iter().find(|d| d["deviceId"] == device.as_str()).cloned())
        .expect("listed");
    assert_eq!(mine["reachable"], true, "{mine}");
    assert_eq!(mine["recordCount"], 600, "{mine}");
    let (_, history) = server.get(&format!("/api/sync-history?deviceId={device}")).await;
    assert!(
        history["items"].as_array().is_some_and(|h| h.len() >= 2),
        "uploads and the sync are in the history: {history}"
    );
    caught_up(&terminal, Duration::from_secs(30)).await;
    assert_exactly(&server, &device, &terminal).await;

    // A stopped terminal is unreachable after its poll interval; the sync answers with the cached data.
    terminal.stop().await;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (_, body) = server.post("/api/essl/check-device", json!({"deviceId": device})).await;
        if body["reachableDevices"][0]["reachable"] == false {
            break;
        }
        assert!(Instant::now() < deadline, "still reachable: {body}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let (status, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["deviceUnreachable"], true, "{body}");
    assert_eq!(body["cachedData"]["recordCount"], 600, "{body}");
    server.stop().await;
}

async fn quarantine_until_claimed(db: TestDb) {
    let server = Server::start(&db).await;
    for dialect in [Dialect::Att, Dialect::Acc] {
        let serial = if dialect == Dialect::Att { "UNKNOWN0001" } else { "UNKNOWN0003" };
        let mut config = sim_config(&server, serial);
        config.dialect = dialect;
        let terminal = PushTerminal::start(&generate::generate(5, 200, 9), config);
        wait_until("the terminal was turned away a few times", Duration::from_secs(20), async || {
            terminal.stats().failures >= 2
        })
        .await;
        let (_, list) = server.get("/api/push/terminals").await;
        let t = list["items"]
            .as_array()
            .and_then(|a| a.iter().find(|t| t["serialNumber"] == serial).cloned())
            .expect("listed");
        assert_eq!(t["status"], "quarantined", "{t}");
        assert_eq!(t["dialect"], if dialect == Dialect::Att { "att" } else { "acc" }, "{t}");
        let (_, journal) = server.get(&format!("/api/push/journal?serialNumber={serial}")).await;
        let outcomes: Vec<&str> =
            journal["items"].as_array().expect("items").iter().filter_map(|j| j["outcome"].as_str()).collect();
        assert!(outcomes.iter().any(|o| o.starts_with("quarantined")), "{outcomes:?}");
        let (_, attendance) = server.get("/api/attendance?limit=1").await;
        assert_eq!(
            attendance["items"].as_array().map(Vec::len),
            Some(0),
            "nothing is ingested from a quarantined serial"
        );
        assert!(!terminal.caught_up());

        let device = claim(&server, serial).await;
        caught_up(&terminal, Duration::from_secs(30)).await;
        assert_exactly(&server, &device, &terminal).await;
        terminal.stop().await;
        // Clean slate for the next dialect.
        let (status, _) =
            server.call(Method::DELETE, &format!("/api/devices/{device}"), Some(&server.admin.clone()), None).await;
        assert_eq!(status, StatusCode::NO_CONTENT);
    }

    // A site secret: its terminals must call through /iclock/s/<secret>/, others are refused.
    let (status, s) = server.post("/api/push/secret", json!({"site": "HQ"})).await;
    assert_eq!(status, StatusCode::CREATED, "{s}");
    let secret = s["secret"].as_str().expect("secret").to_owned();
    let device = claim(&server, "SECRET0001").await;
    let plain = PushTerminal::start(&generate::generate(3, 20, 1), sim_config(&server, "SECRET0001"));
    wait_until("the plain path was refused", Duration::from_secs(10), async || plain.stats().failures >= 2).await;
    assert!(!plain.caught_up());
    plain.stop().await;
    let mut config = sim_config(&server, "SECRET0001");
    config.prefix = format!("/iclock/s/{secret}/");
    let terminal = PushTerminal::start(&generate::generate(3, 20, 1), config);
    caught_up(&terminal, Duration::from_secs(20)).await;
    assert_exactly(&server, &device, &terminal).await;
    terminal.stop().await;
    server.stop().await;
}

async fn user_commands_and_injection(db: TestDb) {
    let server = Server::start(&db).await;
    let device = claim(&server, "CEXJ201260004").await;
    let terminal = PushTerminal::start(&generate::generate(5, 10, 2), sim_config(&server, "CEXJ201260004"));
    caught_up(&terminal, Duration::from_secs(20)).await;
    let path = format!("/api/devices/{device}/commands");
    for name in ["Bo\tPri=14", "Bo\nC:999:CLEAR DATA", "Bo\r\n", "Bo\u{0}"] {
        let (status, body) = server.post(&path, json!({"type": "upsertUser", "pin": "1003", "name": name})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{name:?}: {body}");
    }
    for pin in ["10\t03", "1003\n", "", "1 3"] {
        let (status, body) = server.post(&path, json!({"type": "deleteUser", "pin": pin})).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{pin:?}: {body}");
    }
    let (status, body) = server.post(&path, json!({"type": "shell", "command": "reboot"})).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let (_, list) = server.get(&path).await;
    assert_eq!(list["items"].as_array().map(Vec::len), Some(0), "nothing refused was queued: {list}");

    let (status, c) =
        server.post(&path, json!({"type": "upsertUser", "pin": "9001", "name": "Zoë Ng", "card": 123456})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{c}");
    wait_command(&server, &device, c["id"].as_i64().expect("id"), "ok").await;
    assert!(terminal.users().iter().any(|u| u.user_id == "9001" && u.name == "Zoë Ng" && u.card == 123_456));
    let (_, c) = server.post(&path, json!({"type": "deleteUser", "pin": "9001"})).await;
    wait_command(&server, &device, c["id"].as_i64().expect("id"), "ok").await;
    assert!(!terminal.users().iter().any(|u| u.user_id == "9001"));
    let (_, c) = server.post(&path, json!({"type": "setClock", "time": "2026-03-02T08:59:41"})).await;
    assert_eq!(
        c["command"],
        "SET OPTION DateTime=..."
            .replace("...", &(((26 * 372 + 2 * 31 + 1) * 86_400 + 8 * 3600 + 59 * 60 + 41) as i64).to_string()),
        "{c}"
    );
    wait_command(&server, &device, c["id"].as_i64().expect("id"), "ok").await;
    let now = terminal.now();
    assert!(now.year() == 2026 && now.month() == 3 && now.day() == 2, "the terminal's clock was set: {now}");
    // A command a terminal does not know is answered -1002: failed, with its code.
    terminal.stop().await;
    server.stop().await;
}

async fn malformed_requests_are_journaled_and_answered(db: TestDb) {
    let server = Server::start(&db).await;
    let device = claim(&server, "CEXJ201260005").await;
    let http = reqwest::Client::new();
    let post = |path: &str, body: Vec<u8>| {
        let req = http.post(server.url(path)).header("content-type", "application/x-www-form-urlencoded").body(body);
        async move {
            let r = req.send().await.expect("answer");
            (r.status(), r.text().await.unwrap_or_default())
        }
    };
    // Binary garbage, half a line, a good line with CRLF and trailing tabs, a future punch, an unknown PIN.
    let kolkata = jiff::tz::TimeZone::fixed(jiff::tz::Offset::from_seconds(19_800).expect("offset"));
    let future = kolkata
        .to_datetime(jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * 3))
        .strftime("%Y-%m-%d %H:%M:%S")
        .to_string();
    let mut body =
        b"\xff\xfe\x00garbage\x01\t\t\n1001\t2025-13-45 99:99:99\n1002\t2025-01-06 08:00:00\t0\t1\t\t\r\n".to_vec();
    body.extend_from_slice(format!("1001\t{future}\t0\t15\n").as_bytes());
    let (status, text) = post("/iclock/cdata?sn=CEXJ201260005&TABLE=attlog&Stamp=9999", body).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "OK:4"));
    let (status, text) =
        post("/iclock/cdata.aspx?SN=CEXJ201260005&table=OPERLOG", vec![0, 159, 146, 150, b'\n', b'U']).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "OK:2"));
    let (status, text) = post("/iclock/devicecmd?SN=CEXJ201260005", b"ID=abc&Return=x\nID=&&&\n\xff".to_vec()).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "OK"));
    let (status, _) = post("/iclock/cdata?table=ATTLOG", b"1\t2025-01-06 08:00:00".to_vec()).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = post("/iclock/cdata?SN=CEXJ201260005&table=ATTLOG", vec![b'1'; 2 * 1024 * 1024]).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let r = http.get(server.url("/iclock/getrequest?SN=CEXJ201260005")).send().await.expect("answer");
    assert_eq!(r.text().await.unwrap_or_default(), "OK");

    let (_, journal) = server.get("/api/push/journal?limit=20").await;
    let items = journal["items"].as_array().expect("items");
    assert!(items.len() >= 5, "{journal}");
    assert!(
        items.iter().any(|j| j["outcome"].as_str().is_some_and(|o| o.starts_with("ok: 4 lines, 2 records"))),
        "{journal}"
    );
    assert!(items.iter().any(|j| j["outcome"] == "refused: no valid SN"), "{journal}");
    assert!(
        items
            .iter()
            .any(|j| j["bodyLength"] == 2 * 1024 * 1024
                && j["outcome"].as_str().is_some_and(|o| o.starts_with("refused"))),
        "{journal}"
    );
    let rows = all_attendance(&server, &device).await;
    assert_eq!(rows.len(), 2, "{rows:?}");
    let flags: Vec<i64> = rows.iter().map(|r| r["flags"].as_i64().unwrap_or(-1)).collect();
    assert!(flags.contains(&4), "the future punch is flagged: {flags:?}");
    let (status, _) = server.get("/healthz").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}

/// The attendance handshake of a 2.x terminal (`GET cdata?options=all`): the option lines the server answers.
async fn handshake_options(server: &Server, serial: &str) -> Vec<String> {
    let url = server.url(&format!("/iclock/cdata?SN={serial}&options=all&pushver=2.4.1&language=69"));
    let r = reqwest::get(url).await.expect("answer");
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.expect("body");
    assert!(text.starts_with(&format!("GET OPTION FROM: {serial}\n")), "{text}");
    text.lines().map(str::to_owned).collect()
}

/// A fixture of three users whose punches are `(user index, local time)`, oldest first.
fn fixture_with(punches: &[(usize, &str)]) -> essl_zk_sim::Fixture {
    let mut fixture = generate::generate(3, 0, 4);
    fixture.attendance = punches
        .iter()
        .map(|&(user, time)| {
            let u = &fixture.users[user];
            essl_zk_sim::fixture::PunchFixture {
                uid: u.uid,
                user_id: u.user_id.clone(),
                timestamp: time.to_owned(),
                raw_time: None,
                status: 1,
                punch: 0,
            }
        })
        .collect();
    fixture
}

/// The stored row of `user` at `local` (the terminal's wall clock, `YYYY-MM-DDTHH:MM:SS`).
fn row_at<'a>(rows: &'a [Value], user: &str, local: &str) -> &'a Value {
    rows.iter()
        .find(|r| r["userId"] == user && r["localTime"] == local)
        .unwrap_or_else(|| panic!("no row of {user} at {local}: {rows:?}"))
}

/// The instant the server answers for a row.
fn punched_at(row: &Value) -> jiff::Timestamp {
    row["punchedAt"].as_str().expect("punchedAt").parse().expect("an RFC 3339 instant")
}

/// `TimeZone` of the handshake as the notes want it: hours for a whole-hour offset, minutes otherwise.
fn expected_timezone_option(zone: &str) -> String {
    let offset = jiff::tz::TimeZone::get(zone).expect("bundled zone").to_offset(jiff::Timestamp::now()).seconds();
    let value = if offset % 3600 == 0 { offset / 3600 } else { offset / 60 };
    format!("TimeZone={value}")
}

/// A realtime punch of a terminal whose clock was set by the handshake (`Date` + `TimeZone`) is stored at the
/// real instant: the zone the server told the terminal and the zone it reads the punch in agree.
async fn realtime_punch_is_now(server: &Server, device: &str, terminal: &PushTerminal) {
    let before = jiff::Timestamp::now();
    let p = terminal.punch(2, 15, 1);
    caught_up(terminal, Duration::from_secs(10)).await;
    let rows = all_attendance(server, device).await;
    let row = row_at(&rows, &p.user_id, &p.timestamp);
    let at = punched_at(row);
    let off = at.duration_since(before).abs();
    assert!(off < jiff::SignedDuration::from_secs(5), "stored at {at}, punched at about {before} ({row})");
    assert_eq!(row["flags"], 0, "{row}");
}

async fn london_punches_across_both_dst_changes(db: TestDb) {
    let server = Server::start(&db).await;
    let serial = "LONDON000001";
    let device = claim_in(&server, serial, "London", "Europe/London").await;

    // The handshake tells the terminal the offset in force now, in hours (0 in winter, 1 in summer).
    let options = handshake_options(&server, serial).await;
    assert!(options.contains(&expected_timezone_option("Europe/London")), "{options:?}");

    // 2025: clocks went forward at 01:00 GMT on 30 March (01:00-01:59 never happened) and back at 02:00 BST on
    // 26 October (01:00-01:59 happened twice). Local time, expected instant, expected flags.
    let cases: [(usize, &str, &str, i64); 10] = [
        (0, "2025-03-30T00:59:59", "2025-03-30T00:59:59Z", 0),
        (0, "2025-03-30T01:00:00", "2025-03-30T01:00:00Z", 2),
        (1, "2025-03-30T01:30:00", "2025-03-30T01:30:00Z", 2),
        (0, "2025-03-30T02:00:00", "2025-03-30T01:00:00Z", 0),
        (1, "2025-07-01T09:00:00", "2025-07-01T08:00:00Z", 0),
        (0, "2025-10-26T00:59:59", "2025-10-25T23:59:59Z", 0),
        (0, "2025-10-26T01:00:00", "2025-10-26T00:00:00Z", 1),
        (1, "2025-10-26T01:30:00", "2025-10-26T00:30:00Z", 1),
        (2, "2025-10-26T01:59:59", "2025-10-26T00:59:59Z", 1),
        (0, "2025-10-26T02:00:00", "2025-10-26T02:00:00Z", 0),
    ];
    let fixture = fixture_with(&cases.map(|(user, local, _, _)| (user, local)));
    let terminal = PushTerminal::start(&fixture, sim_config(&server, serial));
    caught_up(&terminal, Duration::from_secs(20)).await;
    assert_exactly(&server, &device, &terminal).await;
    let rows = all_attendance(&server, &device).await;
    for (user, local, utc, flags) in cases {
        let row = row_at(&rows, &fixture.users[user].user_id, local);
        assert_eq!(row["flags"], flags, "{local}: {row}");
        assert_eq!(punched_at(row), utc.parse::<jiff::Timestamp>().expect("instant"), "{local}: {row}");
    }
    realtime_punch_is_now(&server, &device, &terminal).await;
    terminal.stop().await;
    server.stop().await;
}

async fn kolkata_is_five_and_a_half_hours_ahead(db: TestDb) {
    let server = Server::start(&db).await;
    let serial = "KOLKATA00001";
    let device = claim_in(&server, serial, "Pune", "Asia/Kolkata").await;

    // Half-hour zones go in minutes (5.5 would be truncated to 5 by firmware), never fractional.
    let options = handshake_options(&server, serial).await;
    assert!(options.iter().any(|l| l == "TimeZone=330"), "{options:?}");

    // No DST in India: every local time is the instant plus 5:30, none flagged.
    let cases: [(usize, &str, &str); 5] = [
        (0, "2025-01-01T00:00:00", "2024-12-31T18:30:00Z"),
        (1, "2025-03-30T01:30:00", "2025-03-29T20:00:00Z"),
        (2, "2025-06-15T05:29:59", "2025-06-14T23:59:59Z"),
        (0, "2025-06-15T05:30:00", "2025-06-15T00:00:00Z"),
        (1, "2025-10-26T01:30:00", "2025-10-25T20:00:00Z"),
    ];
    let fixture = fixture_with(&cases.map(|(user, local, _)| (user, local)));
    let terminal = PushTerminal::start(&fixture, sim_config(&server, serial));
    caught_up(&terminal, Duration::from_secs(20)).await;
    assert_exactly(&server, &device, &terminal).await;
    let rows = all_attendance(&server, &device).await;
    for (user, local, utc) in cases {
        let row = row_at(&rows, &fixture.users[user].user_id, local);
        assert_eq!(row["flags"], 0, "{local}: {row}");
        assert_eq!(punched_at(row), utc.parse::<jiff::Timestamp>().expect("instant"), "{local}: {row}");
    }
    // The simulated terminal took `TimeZone=330` as minutes: its clock reads Kolkata's wall time.
    let kolkata = jiff::tz::TimeZone::get("Asia/Kolkata").expect("zone").to_datetime(jiff::Timestamp::now());
    let drift = terminal.now().duration_since(kolkata).abs();
    assert!(drift < jiff::SignedDuration::from_secs(5), "terminal clock {} vs Kolkata {kolkata}", terminal.now());
    realtime_punch_is_now(&server, &device, &terminal).await;
    terminal.stop().await;
    server.stop().await;
}

async fn a_serial_claimed_by_another_site_is_refused(db: TestDb) {
    let server = Server::start(&db).await;
    let serial = "CLAIMED00001";
    let device = claim_in(&server, serial, "HQ", "Asia/Kolkata").await;

    // Another site, or the same one again: refused with 409 and a message naming the serial; nothing changes.
    for (site, zone) in [("Branch", "Europe/London"), ("HQ", "Asia/Kolkata")] {
        let (status, body) = server
            .post("/api/push/claim", json!({"serialNumber": serial, "name": "Thief", "site": site, "timezone": zone}))
            .await;
        assert_eq!(status, StatusCode::CONFLICT, "{site}: {body}");
        assert_eq!(body["success"], false, "{body}");
        assert_eq!(body["error"]["code"], "conflict", "{body}");
        let message = body["error"]["message"].as_str().unwrap_or_default();
        assert!(message.contains(serial), "the message names the serial: {message}");
        assert!(message.contains("\"HQ\""), "the message names the holding site: {message}");
    }
    // The refused claim for "Branch" made no site.
    let sites = server.state.store.list_sites().await.expect("sites");
    assert!(sites.iter().all(|s| s.name != "Branch"), "{sites:?}");
    let (status, d) = server.get(&format!("/api/devices/{device}")).await;
    assert_eq!(status, StatusCode::OK, "{d}");
    assert_eq!(
        (d["name"].as_str(), d["site"].as_str(), d["timezone"].as_str()),
        (Some(serial), Some("HQ"), Some("Asia/Kolkata")),
        "{d}"
    );
    let (_, devices) = server.get("/api/devices").await;
    let with_serial = devices["items"].as_array().map(|a| a.iter().filter(|x| x["serialNumber"] == serial).count());
    assert_eq!(with_serial, Some(1), "{devices}");

    // The terminal keeps working for the site that claimed it.
    let terminal = PushTerminal::start(&generate::generate(3, 30, 8), sim_config(&server, serial));
    caught_up(&terminal, Duration::from_secs(20)).await;
    assert_exactly(&server, &device, &terminal).await;
    let (_, list) = server.get("/api/push/terminals").await;
    let t =
        list["items"].as_array().and_then(|a| a.iter().find(|t| t["serialNumber"] == serial).cloned()).expect("listed");
    assert_eq!((t["status"].as_str(), t["deviceId"].as_str()), (Some("claimed"), Some(device.as_str())), "{t}");
    terminal.stop().await;
    server.stop().await;
}

/// Two of the notes' pitfalls at once: a terminal that ignores the server's stamps (it resumes from its own count,
/// whatever the handshake says) and whose clock runs two days ahead. Its backlog and a realtime punch are stored
/// exactly once, across a server restart (the server keeps no stamp state in memory); the drifted punch is kept and
/// flagged `FUTURE` (4), not dropped.
async fn constant_stamps_and_a_drifting_clock(db: TestDb) {
    let server = Server::start(&db).await;
    let addr = server.addr;
    let device = claim(&server, "CONSTSTAMP01").await;
    let mut config = sim_config(&server, "CONSTSTAMP01");
    config.batch = 100;
    config.constant_stamp = true;
    config.clock_drift = jiff::SignedDuration::from_hours(48);
    let terminal = PushTerminal::start(&generate::generate(10, 400, 5), config);
    caught_up(&terminal, Duration::from_secs(60)).await;
    assert_exactly(&server, &device, &terminal).await;

    server.stop().await;
    let server = Server::start_at(&db, test_hub(), addr).await;
    let late = terminal.punch(2, 1, 0);
    caught_up(&terminal, Duration::from_secs(60)).await;
    assert_exactly(&server, &device, &terminal).await;
    let rows = all_attendance(&server, &device).await;
    let row = rows.iter().find(|r| r["localTime"] == late.timestamp.as_str()).expect("the drifted punch is stored");
    assert_eq!(row["flags"].as_i64().map(|f| f & 4), Some(4), "flagged as in the future: {row}");
    terminal.stop().await;
    server.stop().await;
}

/// The `key=` value of a security-PUSH configuration answer.
fn option_value(text: &str, key: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {text}"))
        .to_owned()
}

/// A 3.x terminal, once handed a session, must send `Cookie: token=<md5(RegistryCode + SN + SessionID)>`: the
/// simulator does, and gets everything stored; a request with a wrong or no token is refused (401), journaled,
/// stores nothing and is handed no command; a new registration brings a new session, and the old token stops working.
async fn security_push_session_token(db: TestDb) {
    let server = Server::start(&db).await;
    let serial = "ACCX201260001";
    let device = claim(&server, serial).await;
    let mut config = sim_config(&server, serial);
    config.dialect = Dialect::Acc;
    let terminal = PushTerminal::start(&generate::generate(3, 40, 6), config);
    caught_up(&terminal, Duration::from_secs(20)).await;
    assert_exactly(&server, &device, &terminal).await;
    let pin = terminal.users()[0].user_id.clone();
    terminal.stop().await;
    let (_, d) = server.get(&format!("/api/devices/{device}")).await;
    assert_eq!(
        (&d["pushDialect"], &d["pushVersion"], &d["firmware"]),
        (&json!("acc"), &json!("3.1.2"), &json!("Ver 8.0.4.2-sim")),
        "{d}"
    );
    let stored = all_attendance(&server, &device).await.len();

    // The session as a rebooted terminal learns it: from its handshake.
    let handshake = server.url(&format!("/iclock/cdata?SN={serial}&options=all&pushver=3.1.2&DeviceType=acc"));
    let text = reqwest::get(&handshake).await.expect("answer").text().await.expect("body");
    let (code, session) = (option_value(&text, "RegistryCode"), option_value(&text, "SessionID"));
    assert!(session.len() >= 32, "a random session id: {text}");
    let token = session_token(&code, serial, &session);
    let mut wrong = token.clone();
    wrong.replace_range(..1, if token.starts_with('0') { "1" } else { "0" });

    let http = reqwest::Client::new();
    let send = |method: Method, path: String, cookie: Option<String>, body: String| {
        let mut req = http.request(method, server.url(&path)).body(body);
        if let Some(c) = cookie {
            req = req.header("cookie", c);
        }
        async move {
            let r = req.send().await.expect("answer");
            (r.status(), r.text().await.unwrap_or_default())
        }
    };
    let rtlog = format!("/iclock/cdata?SN={serial}&table=rtlog");
    let line = format!(
        "time=2024-02-29 03:17:43\tpin={pin}\tcardno=0\tsitecode=0\tlinkid=0\teventaddr=1\tevent=0\tinoutstatus=0\tverifytype=1\tindex=0\n"
    );
    let (status, text) = send(Method::POST, rtlog.clone(), Some(format!("token={wrong}")), line.clone()).await;
    assert_eq!((status, text.as_str()), (StatusCode::UNAUTHORIZED, "ERROR: session token required"));
    let (status, _) = send(Method::POST, rtlog.clone(), None, line.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    let (status, _) = send(Method::POST, rtlog.clone(), Some("lang=en".into()), line.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(all_attendance(&server, &device).await.len(), stored, "nothing refused was stored");

    // No command is handed out, and no result is taken, without the token.
    let (status, c) = server.post(&format!("/api/devices/{device}/commands"), json!({"type": "info"})).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{c}");
    let id = c["id"].as_i64().expect("id");
    let poll = format!("/iclock/getrequest?SN={serial}");
    for cookie in [None, Some(format!("token={wrong}"))] {
        let (status, text) = send(Method::GET, poll.clone(), cookie, String::new()).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{text}");
        assert!(!text.contains("C:"), "{text}");
    }
    let result = format!("ID={id}&Return=0&CMD=INFO\n");
    let (status, _) = send(Method::POST, format!("/iclock/devicecmd?SN={serial}"), None, result).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(command_status(&server, &device, id).await["status"], "queued");
    let (_, journal) = server.get(&format!("/api/push/journal?serialNumber={serial}&limit=20")).await;
    let outcomes: Vec<&str> =
        journal["items"].as_array().expect("items").iter().filter_map(|j| j["outcome"].as_str()).collect();
    assert_eq!(outcomes.iter().filter(|o| **o == "refused: wrong session token").count(), 2, "{outcomes:?}");
    assert_eq!(outcomes.iter().filter(|o| **o == "refused: no session token").count(), 4, "{outcomes:?}");

    // The right token: stored, and the command handed out.
    let (status, text) = send(Method::POST, rtlog.clone(), Some(format!("token={token}")), line.clone()).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "OK"));
    assert_eq!(all_attendance(&server, &device).await.len(), stored + 1);
    let (status, text) = send(Method::GET, poll.clone(), Some(format!("lang=en; token={token}")), String::new()).await;
    assert_eq!(status, StatusCode::OK);
    assert!(text.contains(&format!("C:{id}:INFO")), "{text}");

    // Registering again: a new session from the next configuration request, which needs no token until then.
    let (status, text) =
        send(Method::POST, format!("/iclock/registry?SN={serial}"), None, "DeviceType=acc".into()).await;
    assert_eq!((status, text.trim()), (StatusCode::OK, format!("RegistryCode={code}").as_str()));
    let (status, text) = send(Method::POST, format!("/iclock/push?SN={serial}"), None, String::new()).await;
    assert_eq!(status, StatusCode::OK, "{text}");
    let renewed = option_value(&text, "SessionID");
    assert_ne!(renewed, session);
    let (status, _) = send(Method::POST, rtlog.clone(), Some(format!("token={token}")), line.clone()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the old session's token no longer works");
    let (status, _) = send(Method::POST, format!("/iclock/push?SN={serial}"), None, String::new()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "the new session is asked for");
    let token = session_token(&code, serial, &renewed);
    let (status, text) = send(Method::POST, rtlog, Some(format!("token={token}")), line).await;
    assert_eq!((status, text.as_str()), (StatusCode::OK, "OK"));
    server.stop().await;
}
