//! `essl-server demo` as a newcomer runs it: the real binary on port 0, its own simulated terminal and agent; the
//! first sync happens by itself and the attendance is then served over HTTP.
#![cfg(feature = "demo")]

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const SERVER: &str = env!("CARGO_BIN_EXE_essl-server");

#[tokio::test]
async fn demo_syncs_by_itself_and_serves_the_attendance() {
    // A working directory of its own, to see that the demo leaves nothing behind in it.
    let cwd = std::env::temp_dir().join(format!("essl-demo-test-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&cwd).expect("mkdir");
    let db = std::env::temp_dir().join(format!("essl-demo-test-{}.db", uuid::Uuid::new_v4().simple()));
    let mut child = Command::new(SERVER)
        .current_dir(&cwd)
        .args(["demo", "--listen", "127.0.0.1:0", "--records", "300", "--punch-every", "1", "--database"])
        .arg(&db)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the binary starts");
    let mut stderr = child.stderr.take().expect("stderr");
    let log = tokio::spawn(async move {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text).await;
        text
    });
    let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();

    let (mut addr, mut admin, mut login, mut first_sync, mut printed) = (None, None, None, None, Vec::new());
    let read = tokio::time::timeout(Duration::from_secs(120), async {
        while let Some(line) = lines.next_line().await.expect("stdout is text") {
            if let Some(a) = line.strip_prefix("listening on http://") {
                addr = Some(a.parse::<std::net::SocketAddr>().expect("a socket address"));
            } else if let Some(t) = line.strip_prefix("admin token: ") {
                admin = Some(t.to_owned());
            } else if let Some(l) = line.strip_prefix("dashboard login: ") {
                login = l.split_once(" / ").map(|(u, p)| (u.to_owned(), p.to_owned()));
            } else if let Some(r) = line.strip_prefix("first sync: ") {
                first_sync = Some(r.to_owned());
            }
            printed.push(line);
            if first_sync.is_some() {
                break;
            }
        }
    })
    .await;
    if read.is_err() || first_sync.is_none() {
        let _ = child.kill().await;
        panic!("no first sync line; stdout:\n{}\nstderr:\n{}", printed.join("\n"), log.await.unwrap_or_default());
    }
    let (addr, admin, first_sync) =
        (addr.expect("address line"), admin.expect("token line"), first_sync.unwrap_or_default());
    assert_ne!(addr.port(), 0);
    assert!(admin.starts_with("essls_"), "{admin}");
    let stored: u64 = first_sync
        .strip_prefix("ok in ")
        .and_then(|r| r.split(": ").nth(1))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("not a success line: {first_sync}"));
    assert!(stored >= 300, "{first_sync}");
    let text = printed.join("\n");
    for route in ["/api/essl/check-device", "/api/essl/sync-attendance", "/api/essl/sync-status", "/api/attendance"] {
        assert!(text.contains(route), "no curl example for {route}:\n{text}");
    }

    let (status, body) = get(addr, "/api/attendance?limit=500", &admin).await;
    assert_eq!(status, 200, "{body}");
    let items = body["items"].as_array().expect("items");
    assert!(items.len() >= 300, "{} rows stored", items.len());
    let (status, body) = get(addr, "/api/essl/sync-status", &admin).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["devices"][0]["syncStatus"], "success", "{body}");
    let (status, _) = get(addr, "/api/attendance", "essls_wrong").await;
    assert_eq!(status, 401);

    // The dashboard, with the printed login.
    assert!(text.contains(&format!("dashboard: http://{addr}/")), "{text}");
    let (user, password) = login.expect("a dashboard login line");
    let page = raw(addr, "GET / HTTP/1.1", &[], "").await;
    assert!(page.starts_with("HTTP/1.1 200") && page.contains("/assets/app.js"), "{page}");
    let body = serde_json::json!({ "username": user, "password": password }).to_string();
    let answer = raw(addr, "POST /api/session HTTP/1.1", &["Content-Type: application/json"], &body).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let cookie = answer
        .lines()
        .find_map(|l| l.strip_prefix("set-cookie: "))
        .and_then(|c| c.split(';').next())
        .expect("a session cookie")
        .to_owned();
    let me = raw(addr, "GET /api/session HTTP/1.1", &[&format!("Cookie: {cookie}")], "").await;
    assert!(me.contains("\"name\":\"admin\"") && me.contains("\"role\":\"admin\""), "{me}");

    // SIGTERM: the demo stops everything and exits cleanly.
    let pid = child.id().expect("running").to_string();
    let killed = std::process::Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success());
    let exit = if killed { tokio::time::timeout(Duration::from_secs(20), child.wait()).await.ok() } else { None };
    if exit.is_none() {
        let _ = child.kill().await;
    }
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", db.display()));
    }
    let exit = exit.expect("exits within 20 s of SIGTERM").expect("wait");
    assert!(exit.success(), "{exit:?}\n{}", log.await.unwrap_or_default());
    let left: Vec<_> = std::fs::read_dir(&cwd).expect("cwd").flatten().map(|e| e.file_name()).collect();
    assert!(left.is_empty(), "the demo left files in its working directory: {left:?}");
    assert!(!std::path::Path::new(&format!("{}.agent-outbox", db.display())).exists(), "the agent's outbox was kept");
    let _ = std::fs::remove_dir(&cwd);
}

/// A plain HTTP/1.1 GET with a bearer token: the status and the JSON body.
async fn get(addr: std::net::SocketAddr, path: &str, token: &str) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 30 s")
        .expect("read");
    let answer = String::from_utf8(answer).expect("utf-8");
    let (head, body) = answer.split_once("\r\n\r\n").expect("a header");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    (status, serde_json::from_str(body).unwrap_or(serde_json::Value::String(body.to_owned())))
}

/// A plain HTTP/1.1 request: the whole answer as text.
async fn raw(addr: std::net::SocketAddr, request_line: &str, headers: &[&str], body: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("{request_line}\r\nHost: {addr}\r\nConnection: close\r\n");
    for h in headers {
        request.push_str(h);
        request.push_str("\r\n");
    }
    request.push_str(&format!("Content-Length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(request.as_bytes()).await.expect("send");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut answer))
        .await
        .expect("answer within 30 s")
        .expect("read");
    String::from_utf8_lossy(&answer).into_owned()
}
