//! Connection lifecycle: liveness, TLS, graceful shutdown, who synced.

use std::time::{Duration, Instant};

use essl_e2e::*;
use essl_server::hub::{HubConfig, HubEvent};
use essl_zk_sim::generate;
use futures_util::{SinkExt, StreamExt};
use reqwest::StatusCode;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn raw_agent(
    server: &Server,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws_url())
        .expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.expect("connects");
    let hello = essl_wire::encode_agent(&essl_wire::AgentMsg::Hello {
        min_protocol: 1,
        max_protocol: 1,
        agent_version: "raw".into(),
        hostname: "raw".into(),
        os: "test".into(),
    })
    .expect("encode");
    ws.send(Message::Binary(hello.into())).await.expect("hello");
    match tokio::time::timeout(Duration::from_secs(5), ws.next()).await {
        Ok(Some(Ok(Message::Binary(b)))) => {
            assert!(matches!(essl_wire::decode_server(&b), Ok(essl_wire::ServerMsg::Welcome { .. })));
        }
        other => panic!("expected Welcome, got {other:?}"),
    }
    ws
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_silent_agent_is_dropped_within_two_intervals() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let ping = Duration::from_millis(400);
    let server = Server::start_with(&db, HubConfig { ping_interval: ping, ..test_hub() }).await;
    let (_, token) = server.add_agent("mute", "HQ").await;
    let mut events = server.events();
    // Connects, greets, then never reads again: pings go unanswered and nothing is sent.
    let _ws = raw_agent(&server, &token).await;
    wait_event(&mut events, Duration::from_secs(2), |e| matches!(e, HubEvent::AgentConnected { .. })).await;
    let since = Instant::now();
    wait_event(&mut events, ping * 2 + Duration::from_millis(600), |e| matches!(e, HubEvent::AgentDisconnected { .. }))
        .await;
    assert!(since.elapsed() >= ping, "dropped too early: {:?}", since.elapsed());
    server.stop().await;
}

/// A self-signed certificate for `localhost` and its key, in PEM files of a temporary directory.
struct TlsFiles {
    dir: std::path::PathBuf,
    /// The certificate (DER), for agents to trust.
    der: Vec<u8>,
    cert_path: std::path::PathBuf,
    key_path: std::path::PathBuf,
}

impl TlsFiles {
    fn new() -> TlsFiles {
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).expect("certificate");
        let dir = std::env::temp_dir().join(format!("essl-tls-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let (cert_path, key_path) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).expect("write cert");
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).expect("write key");
        TlsFiles { dir, der: cert.cert.der().to_vec(), cert_path, key_path }
    }

    /// An agent of site HQ over wss, trusting the certificate.
    fn agent(&self, server: &Server, token: &str) -> Agent {
        let url = format!("wss://localhost:{}/agent/ws", server.addr.port());
        Agent::start_with(&url, token, vec![self.der.clone()])
    }
}

impl Drop for TlsFiles {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An agent of site HQ made in the store (a TLS server's API is not reachable over plain HTTP): its id and token.
async fn stored_agent(server: &Server, name: &str) -> (String, String) {
    let t = essl_server::auth::token::generate(essl_server::auth::token::AGENT_PREFIX).expect("random");
    let site = server.state.store.ensure_site("HQ").await.expect("site");
    let a = server.state.store.create_agent_with_id(t.id, name, site.id, &t.hash).await.expect("agent");
    (a.id.to_string(), t.token.expose().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn agent_over_wss_with_an_extra_ca() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let tls = TlsFiles::new();
    let server = Server::start_tls(&db, &tls.cert_path, &tls.key_path).await;
    let sim = terminal(&generate::generate(3, 40, 1)).await;
    let device = {
        let site = server.state.store.ensure_site("HQ").await.expect("site");
        let d = server
            .state
            .store
            .create_device(&essl_server::store::model::NewDevice {
                name: "TLS door".into(),
                kind: essl_server::store::model::DeviceKind::Pull,
                ip_address: "127.0.0.1".into(),
                port: sim.addr.port(),
                comm_key: 0,
                udp: false,
                serial_number: None,
                timezone: "UTC".into(),
                site_id: Some(site.id),
                active: true,
            })
            .await
            .expect("device");
        d.id.to_string()
    };
    let (agent_id, token) = stored_agent(&server, "tls-pc").await;
    let agent = tls.agent(&server, &token);
    wait_reachable(&server, &device, &agent_id).await;
    agent.stop().await;
    server.stop().await;
}

/// Over TLS too the listener keeps accepting through the shutdown delay; and the shutdown cancelled directly, as a
/// second SIGTERM does in `essl-server serve`, ends the delay at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_delay_over_tls_accepts_agents_until_cut_short() {
    const DELAY: Duration = Duration::from_secs(60);
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let tls = TlsFiles::new();
    let server = Server::start_tls_configured(&db, &tls.cert_path, &tls.key_path, |c| c.shutdown_delay = DELAY).await;
    let (agent_id, token) = stored_agent(&server, "late-tls-pc").await;
    let agent_id: uuid::Uuid = agent_id.parse().expect("uuid");

    let signalled = Instant::now();
    server.signal_stop();
    poll_until(Duration::from_secs(5), "the server is leaving", async || server.state.leaving.is_cancelled()).await;
    let agent = tls.agent(&server, &token);
    poll_until(Duration::from_secs(10), "a new agent connects over wss during the delay", async || {
        server.state.hub.local_presence(agent_id).is_some()
    })
    .await;
    assert!(!server.state.shutdown.is_cancelled() && !server.has_stopped(), "the delay was not honoured");

    server.state.shutdown.cancel();
    poll_until(Duration::from_secs(10), "the server stops", async || server.has_stopped()).await;
    assert!(signalled.elapsed() < DELAY, "the shutdown waited out its delay");
    agent.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn graceful_shutdown_answers_in_flight_requests_and_tells_agents() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let sim = terminal(&generate::generate(5, 3000, 2)).await;
    let device = server.add_device("Slow door", sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent("pc", "HQ").await;
    let agent = Agent::start(&server, &token);
    wait_reachable(&server, &device, &agent_id).await;
    // A slow terminal keeps the sync in flight while the server stops.
    sim.terminal.set_faults(essl_zk_sim::Faults { latency: Duration::from_millis(300), ..Default::default() });
    let url = server.url("/api/essl/sync-attendance");
    let token_admin = server.admin.clone();
    let body = json!({"deviceId": device});
    let in_flight =
        tokio::spawn(async move { reqwest::Client::new().post(url).bearer_auth(token_admin).json(&body).send().await });
    tokio::time::sleep(Duration::from_millis(200)).await;
    let state = server.state.clone();
    server.stop().await;
    let resp = in_flight.await.expect("task").expect("the in-flight request got an answer, not a reset");
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.expect("json");
    assert!(body["success"] == true || body["deviceUnreachable"] == true, "{body}");
    // No attempt is left "in progress".
    let history = state.store.sync_history(None, 10).await.expect("history");
    assert!(!history.is_empty());
    assert!(history.iter().all(|a| a.sync_status != essl_server::store::model::SyncStatus::InProgress), "{history:?}");
    agent.stop().await;
}

/// A GET on a connection of its own (a fresh client, no pooling), as a new client behind a load balancer makes:
/// the status and the JSON body.
async fn fresh_get(
    server: &Server,
    path: &str,
    token: Option<&str>,
) -> Result<(StatusCode, serde_json::Value), String> {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().map_err(|e| e.to_string())?;
    let mut req = client.get(server.url(path)).header("connection", "close").timeout(Duration::from_secs(10));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.map_err(|e| format!("{path}: {e}"))?;
    let status = resp.status();
    let body = resp.json().await.map_err(|e| format!("{path}: {e}"))?;
    Ok((status, body))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_shutdown_delay_serves_new_connections_while_readyz_answers_503() {
    const DELAY: Duration = Duration::from_millis(1500);
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server =
        Server::start_configured(&db, "127.0.0.1:0".parse().expect("addr"), |c| c.shutdown_delay = DELAY).await;
    let (_, token) = server.add_agent("late", "HQ").await;
    let ready = fresh_get(&server, "/readyz", None).await.expect("answers");
    assert_eq!(ready, (StatusCode::OK, json!({"status": "ready", "database": "sqlite"})));

    let signalled = Instant::now();
    server.signal_stop();
    poll_until(DELAY, "/readyz answers 503", async || {
        matches!(fresh_get(&server, "/readyz", None).await, Ok((StatusCode::SERVICE_UNAVAILABLE, _)))
    })
    .await;
    // During the delay: not ready, alive, and everything else served on new connections, agents' too.
    let not_ready = fresh_get(&server, "/readyz", None).await.expect("answers during the delay");
    assert_eq!(not_ready, (StatusCode::SERVICE_UNAVAILABLE, json!({"status": "shutting down"})));
    let alive = fresh_get(&server, "/healthz", None).await.expect("answers during the delay");
    assert_eq!(alive, (StatusCode::OK, json!({"status": "ok"})));
    for _ in 0..3 {
        let (status, body) = fresh_get(&server, "/api/agents", Some(&server.admin)).await.expect("served");
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let mut ws = raw_agent(&server, &token).await;
    let told = tokio::spawn(async move { close_code(&mut ws).await });
    assert!(!server.has_stopped(), "the server stopped within its delay");

    // After the delay: the usual shutdown, the listener closed, the agent told to go away.
    poll_until(DELAY + Duration::from_secs(10), "the server stops", async || server.has_stopped()).await;
    assert!(signalled.elapsed() >= DELAY, "stopped {:?} after the signal, before the delay", signalled.elapsed());
    assert!(tokio::net::TcpStream::connect(server.addr).await.is_err(), "the listener is closed");
    assert_eq!(told.await.expect("reader"), Some(essl_wire::close::GOING_AWAY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_caller_is_recorded_as_synced_by() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let sim = terminal(&generate::generate(5, 30, 3)).await;
    let device = server.add_device("Door", sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent("pc", "HQ").await;
    let agent = Agent::start(&server, &token);
    wait_reachable(&server, &device, &agent_id).await;
    let staff = server.staff.clone();
    let (status, body) = server
        .call(reqwest::Method::POST, "/api/essl/sync-attendance", Some(&staff), Some(json!({"deviceId": device})))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (staff_id, _) =
        essl_server::auth::token::parse(&staff, essl_server::auth::token::API_PREFIX).expect("our token");
    let history = server.state.store.sync_history(None, 5).await.expect("history");
    assert_eq!(history[0].synced_by_user_id, Some(staff_id));
    assert_eq!(history[0].records_synced, 30);
    assert!(history[0].sync_duration_ms.is_some());
    agent.stop().await;
    server.stop().await;
}

async fn connect_raw(
    server: &Server,
    token: &str,
) -> tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>> {
    let mut req = tokio_tungstenite::tungstenite::client::IntoClientRequest::into_client_request(server.ws_url())
        .expect("request");
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse().expect("header"));
    let config = tokio_tungstenite::tungstenite::protocol::WebSocketConfig::default()
        .max_message_size(Some(64 << 20))
        .max_frame_size(Some(64 << 20));
    let (ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), false).await.expect("connects");
    ws
}

async fn close_code(
    ws: &mut tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
) -> Option<u16> {
    tokio::time::timeout(Duration::from_secs(5), async {
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
    .expect("the server closes the connection")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_versions_unknown_kinds_and_oversized_frames_are_refused() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let (_, token) = server.add_agent("odd", "HQ").await;

    // An agent from the future: no common protocol version.
    let mut ws = connect_raw(&server, &token).await;
    let hello = essl_wire::encode_agent(&essl_wire::AgentMsg::Hello {
        min_protocol: 9,
        max_protocol: 12,
        agent_version: "9.0".into(),
        hostname: "h".into(),
        os: "o".into(),
    })
    .expect("encode");
    ws.send(Message::Binary(hello.into())).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(essl_wire::close::INCOMPATIBLE));

    // A message kind this server does not know (a map with an unknown variant name).
    let mut ws = raw_agent(&server, &token).await;
    let unknown = [0x81, 0xa7, b'T', b'e', b'l', b'e', b'p', b'o', b'r', 0xc0];
    ws.send(Message::Binary(unknown.to_vec().into())).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(essl_wire::close::PROTOCOL_ERROR));

    // A text frame instead of MessagePack.
    let mut ws = raw_agent(&server, &token).await;
    ws.send(Message::Text("{\"hello\":1}".into())).await.expect("send");
    assert_eq!(close_code(&mut ws).await, Some(essl_wire::close::PROTOCOL_ERROR));

    // A frame over the limit: the connection is closed, nothing is buffered.
    let mut ws = raw_agent(&server, &token).await;
    let _ = ws.send(Message::Binary(vec![0u8; essl_wire::MAX_MESSAGE_BYTES + 1024].into())).await;
    let code = close_code(&mut ws).await;
    assert!(code.is_none() || code == Some(1009) || code == Some(essl_wire::close::PROTOCOL_ERROR), "{code:?}");

    // The server is still fine.
    let (status, _) = server.get("/api/agents").await;
    assert_eq!(status, StatusCode::OK);
    server.stop().await;
}
