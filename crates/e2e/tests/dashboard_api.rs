//! The dashboard's server side over real HTTP: cookie sessions, CSRF, login throttling, the live event stream,
//! sync history and the embedded files. (The page itself is tested in a real browser: `dashboard_browser.rs`.)

use std::time::Duration;

use essl_e2e::*;
use essl_zk_sim::generate;
use reqwest::StatusCode;
use reqwest::header::{HeaderMap, HeaderValue};
use serde_json::{Value, json};

on_both_backends!(
    login_cookie_csrf_and_logout,
    wrong_logins_are_alike_and_throttled,
    expired_and_forged_sessions_are_refused,
    staff_reads_but_does_not_manage,
    events_stream_agents_syncs_and_punches,
);

/// A browser-like client: no automatic cookies, so each test says exactly what it sends.
struct Client {
    http: reqwest::Client,
    base: String,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Client {
    fn new(server: &Server) -> Client {
        Client { http: reqwest::Client::new(), base: server.url("") }
    }

    async fn send(&self, method: reqwest::Method, path: &str, headers: &[(&str, &str)], body: Option<Value>) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = tokio::time::timeout(Duration::from_secs(30), req.send()).await.expect("in time").expect("sent");
        let status = resp.status();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap_or_default();
        let body =
            if text.is_empty() { Value::Null } else { serde_json::from_str(&text).unwrap_or(Value::String(text)) };
        Answer { status, headers, body }
    }

    async fn login(&self, user: &str, password: &str) -> Answer {
        self.send(reqwest::Method::POST, "/api/session", &[], Some(json!({"username": user, "password": password})))
            .await
    }

    /// Logs in and answers (`essl_session=...`, CSRF token).
    async fn session(&self, user: &str) -> (String, String) {
        let a = self.login(user, PASSWORD).await;
        assert_eq!(a.status, StatusCode::OK, "{}", a.body);
        let cookie = set_cookie(&a.headers);
        (cookie, a.body["csrfToken"].as_str().expect("csrf token").to_owned())
    }
}

fn set_cookie(headers: &HeaderMap) -> String {
    let raw = headers.get("set-cookie").and_then(|v| v.to_str().ok()).expect("Set-Cookie").to_owned();
    raw.split(';').next().expect("name=value").to_owned()
}

async fn login_cookie_csrf_and_logout(db: TestDb) {
    let server = Server::start(&db).await;
    let c = Client::new(&server);

    // Nobody logged in: 200 with nulls (the page asks at every load; a 401 would be a console error).
    let a = c.send(reqwest::Method::GET, "/api/session", &[], None).await;
    assert_eq!((a.status, &a.body["user"]), (StatusCode::OK, &Value::Null), "{}", a.body);

    let a = c.login("Admin", PASSWORD).await; // names compare without case
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.body["user"]["role"], "admin");
    let raw_cookie = a.headers.get("set-cookie").and_then(|v| v.to_str().ok()).expect("cookie").to_owned();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/"] {
        assert!(raw_cookie.contains(flag), "{raw_cookie} lacks {flag}");
    }
    assert!(!raw_cookie.contains("Secure"), "plain HTTP: no Secure flag, or browsers drop the cookie");
    let cookie = set_cookie(&a.headers);
    let csrf = a.body["csrfToken"].as_str().expect("csrf").to_owned();
    // Behind a TLS proxy the cookie is Secure.
    let b = c
        .send(
            reqwest::Method::POST,
            "/api/session",
            &[("x-forwarded-proto", "https")],
            Some(json!({"username": ADMIN_USER, "password": PASSWORD})),
        )
        .await;
    assert!(b.headers.get("set-cookie").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("; Secure")));

    let me = c.send(reqwest::Method::GET, "/api/session", &[("cookie", &cookie)], None).await;
    assert_eq!(me.body["user"]["name"], "admin");
    assert_eq!(me.body["csrfToken"], csrf.as_str());

    // Reads need only the cookie.
    let a = c.send(reqwest::Method::GET, "/api/devices", &[("cookie", &cookie)], None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);

    // Writes need the CSRF token too, and a same-site origin.
    let device = json!({"name": "Door", "ipAddress": "127.0.0.1", "port": 4370, "site": "HQ"});
    let a = c.send(reqwest::Method::POST, "/api/devices", &[("cookie", &cookie)], Some(device.clone())).await;
    assert_eq!((a.status, &a.body["error"]["code"]), (StatusCode::FORBIDDEN, &json!("csrf")), "{}", a.body);
    let a = c
        .send(
            reqwest::Method::POST,
            "/api/devices",
            &[("cookie", &cookie), ("x-csrf-token", "not-the-token")],
            Some(device.clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let a = c
        .send(
            reqwest::Method::POST,
            "/api/devices",
            &[("cookie", &cookie), ("x-csrf-token", &csrf), ("origin", "https://evil.example")],
            Some(device.clone()),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let own_origin = format!("http://{}", server.addr);
    let a = c
        .send(
            reqwest::Method::POST,
            "/api/devices",
            &[("cookie", &cookie), ("x-csrf-token", &csrf), ("origin", &own_origin)],
            Some(device),
        )
        .await;
    assert_eq!(a.status, StatusCode::CREATED, "{}", a.body);
    // A login from a foreign page (login CSRF) is refused.
    let a = c
        .send(
            reqwest::Method::POST,
            "/api/session",
            &[("origin", "https://evil.example")],
            Some(json!({"username": ADMIN_USER, "password": PASSWORD})),
        )
        .await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);

    // Logout needs the token, then the cookie is dead.
    let a = c.send(reqwest::Method::DELETE, "/api/session", &[("cookie", &cookie)], None).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let a =
        c.send(reqwest::Method::DELETE, "/api/session", &[("cookie", &cookie), ("x-csrf-token", &csrf)], None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert!(a.headers.get("set-cookie").and_then(|v| v.to_str().ok()).is_some_and(|v| v.contains("Max-Age=0")));
    let a = c.send(reqwest::Method::GET, "/api/devices", &[("cookie", &cookie)], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{}", a.body);
    server.stop().await;
}

async fn wrong_logins_are_alike_and_throttled(db: TestDb) {
    let server = Server::start(&db).await;
    let c = Client::new(&server);
    let wrong_password = c.login(ADMIN_USER, "not the password").await;
    let unknown_user = c.login("nobody-here", "not the password").await;
    assert_eq!(wrong_password.status, StatusCode::UNAUTHORIZED);
    assert_eq!(wrong_password.body, unknown_user.body, "a wrong name and a wrong password look alike");
    assert_eq!(wrong_password.body["error"]["code"], "invalid_login");
    // Malformed bodies are clear errors, not 500s.
    let a = c.send(reqwest::Method::POST, "/api/session", &[], Some(json!({"username": 5}))).await;
    assert_eq!(a.status, StatusCode::UNPROCESSABLE_ENTITY, "{}", a.body);

    // Four more wrong passwords make five; then even the right one waits, and so does an unknown name.
    for _ in 0..4 {
        assert_eq!(c.login(ADMIN_USER, "guess").await.status, StatusCode::UNAUTHORIZED);
    }
    let a = c.login(ADMIN_USER, PASSWORD).await;
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS, "{}", a.body);
    assert_eq!(a.body["error"]["code"], "rate_limited");
    let wait: u64 = a.headers.get("retry-after").and_then(|v| v.to_str().ok()?.parse().ok()).expect("Retry-After");
    assert!((1..=900).contains(&wait), "{wait}");
    for _ in 0..5 {
        c.login("nobody-here", "guess").await;
    }
    assert_eq!(c.login("nobody-here", "guess").await.status, StatusCode::TOO_MANY_REQUESTS);
    // Another user is not locked out by admin's failures.
    assert_eq!(c.login(STAFF_USER, PASSWORD).await.status, StatusCode::OK);
    server.stop().await;
}

async fn expired_and_forged_sessions_are_refused(db: TestDb) {
    let server = Server::start(&db).await;
    let c = Client::new(&server);
    let (cookie, _) = c.session(ADMIN_USER).await;
    let (other, _) = c.session(STAFF_USER).await;
    // The same id with another secret, garbage, and an empty value: all plain 401s.
    let (id_part, _) = cookie.rsplit_once('_').expect("shape");
    let forged = format!("{id_part}_{}", "0".repeat(64));
    for bad in [forged.as_str(), "essl_session=garbage", "essl_session=", "essl_session=esslc_%00"] {
        let a = c.send(reqwest::Method::GET, "/api/devices", &[("cookie", bad)], None).await;
        assert_eq!(a.status, StatusCode::UNAUTHORIZED, "{bad}: {}", a.body);
    }
    // Expire the admin's session in the database, as time would.
    let sql = match db.backend {
        Backend::Sqlite => {
            "UPDATE essl_sessions SET expires_at = 0 WHERE user_id IN \
                            (SELECT id FROM essl_users WHERE username = 'admin')"
        }
        Backend::Postgres => {
            "UPDATE essl_sessions SET expires_at = now() - interval '1 minute' WHERE user_id IN \
                              (SELECT id FROM essl_users WHERE username = 'admin')"
        }
    };
    execute(&db, sql).await;
    let a = c.send(reqwest::Method::GET, "/api/devices", &[("cookie", &cookie)], None).await;
    assert_eq!((a.status, &a.body["error"]["code"]), (StatusCode::UNAUTHORIZED, &json!("unauthorized")));
    let me = c.send(reqwest::Method::GET, "/api/session", &[("cookie", &cookie)], None).await;
    assert_eq!(me.body["user"], Value::Null);
    let a = c.send(reqwest::Method::GET, "/api/devices", &[("cookie", &other)], None).await;
    assert_eq!(a.status, StatusCode::OK, "the staff session is untouched");
    server.stop().await;
}

async fn staff_reads_but_does_not_manage(db: TestDb) {
    let server = Server::start(&db).await;
    let c = Client::new(&server);
    let (cookie, csrf) = c.session(STAFF_USER).await;
    let h = [("cookie", cookie.as_str()), ("x-csrf-token", csrf.as_str())];
    for path in ["/api/agents", "/api/devices", "/api/sync-history", "/api/attendance", "/api/essl/sync-status"] {
        let a = c.send(reqwest::Method::GET, path, &h, None).await;
        assert_eq!(a.status, StatusCode::OK, "{path}: {}", a.body);
    }
    let a = c.send(reqwest::Method::POST, "/api/agents", &h, Some(json!({"name": "x", "site": "HQ"}))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    let a =
        c.send(reqwest::Method::POST, "/api/devices", &h, Some(json!({"name": "x", "ipAddress": "127.0.0.1"}))).await;
    assert_eq!(a.status, StatusCode::FORBIDDEN, "{}", a.body);
    // The seed's routes are staff's: a check with the cookie and token works.
    let a = c.send(reqwest::Method::POST, "/api/essl/check-device", &h, None).await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    server.stop().await;
}

async fn events_stream_agents_syncs_and_punches(db: TestDb) {
    let server = Server::start(&db).await;
    let fixture = generate::generate(5, 120, 7);
    let sim = terminal(&fixture).await;
    let device = server.add_device("Gate <b>1</b>", sim.addr, "HQ").await;
    let (agent_id, token) = server.add_agent("office", "HQ").await;

    // The stream, with a cookie as the dashboard opens it.
    let c = Client::new(&server);
    let (cookie, _) = c.session(STAFF_USER).await;
    let resp = reqwest::Client::new()
        .get(server.url("/api/events"))
        .header("cookie", &cookie)
        .send()
        .await
        .expect("stream opens");
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers().get("content-type").is_some_and(|v| v == HeaderValue::from_static("text/event-stream")));
    let mut stream = SseReader { resp, buf: String::new() };
    // Without a login: 401.
    let a = c.send(reqwest::Method::GET, "/api/events", &[], None).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);

    let agent = Agent::start(&server, &token);
    let data = stream.until("agent.connected").await;
    assert_eq!(data["agentId"], agent_id.as_str());
    wait_reachable(&server, &device, &agent_id).await;

    let (status, body) = server.post("/api/essl/sync-attendance", json!({"deviceId": device})).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let data = stream.until("sync.finished").await;
    assert_eq!((data["deviceId"].as_str(), data["status"].as_str()), (Some(device.as_str()), Some("success")));

    // A punch on the terminal arrives live (realtime events) as punches.stored.
    sim.terminal.punch(3, 1, 0);
    let data = stream.until("punches.stored").await;
    assert_eq!(data["deviceId"], device.as_str());

    // The sync is in the history, with the device's name as stored (escaping is the page's job).
    let a = c
        .send(reqwest::Method::GET, &format!("/api/sync-history?deviceId={device}"), &[("cookie", &cookie)], None)
        .await;
    assert_eq!(a.status, StatusCode::OK);
    let first = &a.body["items"][0];
    assert_eq!((first["status"].as_str(), first["deviceName"].as_str()), (Some("success"), Some("Gate <b>1</b>")));
    assert_eq!(first["agentName"], "office");
    let a = c.send(reqwest::Method::GET, "/api/sync-history?limit=0", &[("cookie", &cookie)], None).await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);

    agent.kill();
    let data = stream.until("agent.disconnected").await;
    assert_eq!(data["agentId"], agent_id.as_str());

    // Logging out ends the stream (within the server's re-check period).
    let me = c.send(reqwest::Method::GET, "/api/session", &[("cookie", &cookie)], None).await;
    let csrf = me.body["csrfToken"].as_str().expect("csrf").to_owned();
    let a =
        c.send(reqwest::Method::DELETE, "/api/session", &[("cookie", &cookie), ("x-csrf-token", &csrf)], None).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    stream.ends().await;
    sim.stop().await;
    server.stop().await;
}

#[tokio::test]
async fn the_dashboard_files_are_served_with_a_strict_policy() {
    let db = TestDb::new(Backend::Sqlite).await.expect("sqlite");
    let server = Server::start(&db).await;
    let http = reqwest::Client::new();
    let page = http.get(server.url("/")).send().await.expect("page");
    assert_eq!(page.status(), StatusCode::OK);
    let csp = page.headers().get("content-security-policy").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    let html = page.text().await.expect("html");
    assert!(!html.contains("<script>") && !html.contains("onclick="), "no inline script");
    assert!(!html.contains("http://") && !html.contains("https://"), "no external resource");
    for (path, kind) in
        [("/assets/app.js", "text/javascript"), ("/assets/app.css", "text/css"), ("/assets/icon.svg", "image/svg+xml")]
    {
        let r = http.get(server.url(path)).send().await.expect("asset");
        assert_eq!(r.status(), StatusCode::OK, "{path}");
        let ct = r.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_owned();
        assert!(ct.starts_with(kind), "{path}: {ct}");
        assert_eq!(r.headers().get("x-content-type-options").map(|v| v.as_bytes()), Some(&b"nosniff"[..]));
    }
    assert_eq!(http.get(server.url("/assets/nothing.js")).send().await.expect("404").status(), StatusCode::NOT_FOUND);
    server.stop().await;
}

/// Reads Server-Sent Events off a streaming response.
struct SseReader {
    resp: reqwest::Response,
    buf: String,
}

impl SseReader {
    /// Reads until the server closes the stream; panics after 10 s.
    async fn ends(&mut self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            match tokio::time::timeout_at(deadline, self.resp.chunk()).await {
                Ok(Ok(Some(_))) => {}
                Ok(Ok(None) | Err(_)) => return,
                Err(_) => panic!("the stream is still open 10 s after the logout"),
            }
        }
    }

    /// The data of the next event named `name` (others are skipped); panics after 20 s.
    async fn until(&mut self, name: &str) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            while let Some(end) = self.buf.find("\n\n") {
                let block: String = self.buf.drain(..end + 2).collect();
                let mut event = None;
                let mut data = String::new();
                for line in block.lines() {
                    if let Some(e) = line.strip_prefix("event:") {
                        event = Some(e.trim().to_owned());
                    } else if let Some(d) = line.strip_prefix("data:") {
                        data.push_str(d.trim());
                    }
                }
                if event.as_deref() == Some(name) {
                    return serde_json::from_str(&data).expect("event data is JSON");
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .unwrap_or_else(|_| panic!("no {name} event within 20 s; buffered: {}", self.buf))
                .expect("stream readable")
                .unwrap_or_else(|| panic!("stream ended before {name}"));
            self.buf.push_str(&String::from_utf8_lossy(&chunk));
        }
    }
}

async fn execute(db: &TestDb, sql: &'static str) {
    use sqlx::Connection;
    match db.backend {
        Backend::Sqlite => {
            let mut conn = sqlx::SqliteConnection::connect(&db.url).await.expect("sqlite opens");
            sqlx::query(sql).execute(&mut conn).await.expect("sql runs");
        }
        Backend::Postgres => {
            let mut conn = sqlx::PgConnection::connect(&db.url).await.expect("postgres connects");
            sqlx::query(sql).execute(&mut conn).await.expect("sql runs");
        }
    }
}
