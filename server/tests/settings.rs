//! `essl-server serve --config server.toml` as an operator runs it: bad settings exit with code 2 and name the key
//! and the file (or the variable); the environment wins over the file.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::process::Command;

const SERVER: &str = env!("CARGO_BIN_EXE_essl-server");

/// The ESSL_* variables a developer's shell might hold, cleared so each test says exactly what it sets.
const VARS: &[&str] = &[
    "ESSL_CONFIG",
    "ESSL_LISTEN",
    "ESSL_DATABASE_URL",
    "ESSL_TLS_CERT",
    "ESSL_TLS_KEY",
    "ESSL_SUPABASE_URL",
    "ESSL_SUPABASE_JWT_SECRET",
    "ESSL_PUSH_DELAY_SECONDS",
    "ESSL_PUSH_ERROR_DELAY_SECONDS",
    "ESSL_PUSH_JOURNAL_DAYS",
    "ESSL_PUSH_SERIAL_RATE",
    "ESSL_PUSH_SERIAL_BURST",
    "ESSL_PUSH_ADDRESS_RATE",
    "ESSL_PUSH_ADDRESS_BURST",
    "ESSL_PUSH_ATTLOG_MAX_KIB",
    "ESSL_PUSH_OPERLOG_MAX_KIB",
    "ESSL_PUSH_OTHER_MAX_KIB",
    "ESSL_PUSH_COMMAND_RESEND_SECONDS",
    "ESSL_PUSH_COMMAND_MAX_SENDS",
    "ESSL_PUSH_COMMAND_EXPIRY_DAYS",
    "ESSL_SHUTDOWN_DELAY",
];

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("essl-settings-{tag}-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p
}

fn server(args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(SERVER);
    c.args(args).env("RUST_LOG", "info");
    for v in VARS {
        c.env_remove(v);
    }
    for (k, v) in env {
        c.env(k, v);
    }
    c
}

async fn refused(args: &[&str], env: &[(&str, &str)]) -> String {
    let out = tokio::time::timeout(Duration::from_secs(30), server(args, env).output())
        .await
        .expect("exits at once")
        .expect("runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("invalid configuration") && !stderr.contains("panicked"), "{stderr}");
    stderr
}

#[tokio::test]
async fn bad_settings_exit_2_naming_key_and_file() {
    let dir = tempdir("bad");
    let f = write(&dir, "server.toml", "listen = 8080\n");
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    assert!(err.contains(&format!("`listen` in {file}")) && err.contains("line 1"), "{err}");

    let f = write(&dir, "unknown.toml", "listen = \"127.0.0.1:0\"\ndatabase = \"sqlite://x.db\"\n");
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    assert!(err.contains(file) && err.contains("database") && err.contains("line 2"), "{err}");

    let f = write(
        &dir,
        "values.toml",
        "database_url = \"mysql://root:hunter2@db/essl\"\nsupabase_jwt_secret = \"too-short\"\ntls_key = \"key.pem\"\n",
    );
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    for key in ["database_url", "supabase_jwt_secret", "tls_key"] {
        assert!(err.contains(&format!("`{key}` in {file}")), "{key}: {err}");
    }
    assert!(!err.contains("hunter2") && !err.contains("too-short"), "a secret leaked: {err}");

    // The file given through the environment, and a bad value from the environment, named as such.
    let err = refused(&["serve"], &[("ESSL_CONFIG", file)]).await;
    assert!(err.contains(&format!("`database_url` in {file}")), "{err}");
    let err = refused(&["serve"], &[("ESSL_LISTEN", "everywhere")]).await;
    assert!(err.contains("environment variable ESSL_LISTEN"), "{err}");
    let err = refused(&["serve", "--listen", "everywhere"], &[]).await;
    assert!(err.contains("--listen"), "{err}");
    let err = refused(&["serve", "--config", dir.join("missing.toml").to_str().expect("utf-8")], &[]).await;
    assert!(err.contains("missing.toml"), "{err}");

    // `token create` reads the same file.
    let err = refused(&["token", "create", "--role", "admin", "--name", "ops", "--config", file], &[]).await;
    assert!(err.contains("`database_url` in"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn environment_wins_over_the_file() {
    let dir = tempdir("env");
    let db = dir.join("essl.db");
    let f = write(
        &dir,
        "server.toml",
        &format!("listen = \"not an address\"\ndatabase_url = \"sqlite://{}\"\n", db.display()),
    );
    // An empty variable counts as unset.
    let env = [
        ("ESSL_LISTEN", "127.0.0.1:0"),
        ("ESSL_SUPABASE_URL", ""),
        ("ESSL_SUPABASE_JWT_SECRET", ""),
        ("ESSL_TLS_CERT", ""),
        ("ESSL_TLS_KEY", ""),
    ];
    let mut child = server(&["serve", "--config", f.to_str().expect("utf-8")], &env)
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let serving = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("serving HTTP") {
                return Ok(line);
            }
            seen.push(line);
        }
        Err(seen.join("\n"))
    })
    .await
    .expect("starts within 30 s");
    let _ = child.kill().await;
    let line = serving.unwrap_or_else(|log| panic!("did not start:\n{log}"));
    assert!(line.contains("127.0.0.1:") && line.contains("sqlite"), "{line}");
    assert!(db.exists(), "the database of the file was used");
    let _ = std::fs::remove_dir_all(dir);
}

/// A log line without its colours (ANSI escape sequences).
fn plain(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Starts `serve` and waits for its "serving HTTP" line; answers the child, every line logged until then, and the
/// rest of its log, read on in the background (so the server's stderr stays open) until it exits.
async fn started(
    args: &[&str],
    env: &[(&str, &str)],
) -> (tokio::process::Child, Vec<String>, tokio::task::JoinHandle<Vec<String>>) {
    let mut child = server(args, env).stderr(Stdio::piped()).kill_on_drop(true).spawn().expect("starts");
    let mut lines = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let log = tokio::time::timeout(Duration::from_secs(30), async {
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            let line = plain(&line);
            let done = line.contains("serving HTTP");
            seen.push(line);
            if done {
                return Ok(seen);
            }
        }
        Err(seen.join("\n"))
    })
    .await
    .expect("starts within 30 s")
    .unwrap_or_else(|log| panic!("did not start:\n{log}"));
    let rest = tokio::spawn(async move {
        let mut rest = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            rest.push(plain(&line));
        }
        rest
    });
    (child, log, rest)
}

#[tokio::test]
async fn bad_push_settings_exit_2_naming_key_and_source() {
    let dir = tempdir("push-bad");
    let f = write(&dir, "server.toml", "push_delay_seconds = 0\npush_journal_days = \"a month\"\n");
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    assert!(err.contains(&format!("`push_journal_days` in {file}")) && err.contains("line 2"), "{err}");
    let f = write(&dir, "range.toml", "push_delay_seconds = 0\npush_error_delay_seconds = 7200\n");
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    assert!(err.contains(&format!("`push_delay_seconds` in {file}: 0 is out of range; want 1 to 3600")), "{err}");
    assert!(err.contains(&format!("`push_error_delay_seconds` in {file}: 7200 is out of range")), "{err}");

    let err = refused(&["serve"], &[("ESSL_PUSH_JOURNAL_DAYS", "forever")]).await;
    assert!(err.contains("environment variable ESSL_PUSH_JOURNAL_DAYS: \"forever\" is not a whole number"), "{err}");
    let err = refused(&["serve", "--push-error-delay-seconds=-5"], &[]).await;
    assert!(err.contains("--push-error-delay-seconds: -5 is out of range"), "{err}");
    // The flag wins over the variable, which wins over the file: a good flag hides a bad variable.
    let err = refused(
        &["serve", "--config", file, "--push-delay-seconds", "15"],
        &[("ESSL_PUSH_ERROR_DELAY_SECONDS", "3601")],
    )
    .await;
    assert!(!err.contains("push_delay_seconds"), "{err}");
    assert!(err.contains("environment variable ESSL_PUSH_ERROR_DELAY_SECONDS: 3601 is out of range"), "{err}");

    // The rate limits, body caps and command retries the same way.
    let f = write(
        &dir,
        "limits.toml",
        "push_serial_rate = 0\npush_address_burst = 2000000\npush_attlog_max_kib = 65537\n\
         push_command_max_sends = \"5\"\n",
    );
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[]).await;
    assert!(err.contains(&format!("`push_command_max_sends` in {file}")) && err.contains("line 4"), "{err}");
    let f = write(
        &dir,
        "limits-range.toml",
        "push_serial_rate = 0\npush_address_burst = 2000000\npush_attlog_max_kib = 65537\n\
         push_command_expiry_days = 366\npush_command_resend_seconds = 0\n",
    );
    let file = f.to_str().expect("utf-8");
    let err = refused(&["serve", "--config", file], &[("ESSL_PUSH_OTHER_MAX_KIB", "1 MiB")]).await;
    for (key, message) in [
        ("push_serial_rate", "0 is out of range; want 1 to 100000"),
        ("push_address_burst", "2000000 is out of range; want 1 to 1000000"),
        ("push_attlog_max_kib", "65537 is out of range; want 1 to 65536"),
        ("push_command_expiry_days", "366 is out of range; want 1 to 365"),
        ("push_command_resend_seconds", "0 is out of range; want 1 to 86400"),
    ] {
        assert!(err.contains(&format!("`{key}` in {file}: {message}")), "{key}: {err}");
    }
    assert!(err.contains("environment variable ESSL_PUSH_OTHER_MAX_KIB: \"1 MiB\" is not a whole number"), "{err}");
    let err = refused(&["serve", "--push-command-max-sends", "101", "--push-serial-burst=x"], &[]).await;
    assert!(err.contains("--push-command-max-sends: 101 is out of range; want 1 to 100"), "{err}");
    assert!(err.contains("--push-serial-burst: \"x\" is not a whole number"), "{err}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn push_settings_reach_the_terminals() {
    let dir = tempdir("push-good");
    let db = dir.join("essl.db");
    let f = write(
        &dir,
        "server.toml",
        &format!(
            "listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{}\"\npush_delay_seconds = 7\n\
             push_error_delay_seconds = 45\npush_journal_days = 3\npush_attlog_max_kib = 1\n\
             push_serial_rate = 1\npush_serial_burst = 100\npush_address_rate = 2\npush_address_burst = 500\n\
             push_operlog_max_kib = 16\npush_other_max_kib = 4\npush_command_resend_seconds = 120\n\
             push_command_max_sends = 3\npush_command_expiry_days = 2\n",
            db.display()
        ),
    );
    // The environment wins over the file's error delay.
    let (mut child, log, rest) = started(
        &["serve", "--config", f.to_str().expect("utf-8"), "--push-serial-burst", "3"],
        &[("ESSL_PUSH_ERROR_DELAY_SECONDS", "9"), ("ESSL_PUSH_SERIAL_BURST", "50")],
    )
    .await;
    let push = log.iter().find(|l| l.contains("push terminals")).unwrap_or_else(|| panic!("{log:#?}"));
    for field in [
        "delay_s=7",
        "error_delay_s=9",
        "journal_days=3",
        "serial_rate=1.0",
        "serial_burst=3.0",
        "address_rate=2.0",
        "address_burst=500.0",
        "attlog_max_kib=1",
        "operlog_max_kib=16",
        "other_max_kib=4",
        "command_resend_s=120",
        "command_max_sends=3",
        "command_expiry_days=2",
    ] {
        assert!(push.split_whitespace().any(|w| w == field), "{field}: {push}");
    }
    let serving = log.last().expect("a line");
    let addr = serving
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no address in {serving}"))
        .to_owned();

    // A terminal's handshake is told exactly those delays.
    let mut stream = tokio::net::TcpStream::connect(&addr).await.expect("connects");
    let request = format!(
        "GET /iclock/cdata?SN=SETTINGS0001&options=all&pushver=2.4.1 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answers within 10 s")
        .expect("reads");
    // The body cap (1 KiB of ATTLOG) and the serial's burst (3: the handshake was the first) are applied.
    let upload = format!(
        "POST /iclock/cdata?SN=SETTINGS0001&table=ATTLOG HTTP/1.1\r\nHost: {addr}\r\n\
         Connection: close\r\nContent-Length: 2048\r\n\r\n{}",
        "1".repeat(2048)
    );
    let too_large = exchange(&addr, &upload).await;
    let poll = format!("GET /iclock/getrequest?SN=SETTINGS0001 HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let third = exchange(&addr, &poll).await;
    // One token a second comes back: of five quick polls, at least one finds none (they would need 4 s to pass).
    let mut later = Vec::new();
    for _ in 0..5 {
        later.push(exchange(&addr, &poll).await);
    }
    let _ = child.kill().await;
    let rest = rest.await.unwrap_or_default();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}\n{}", rest.join("\n"));
    let lines: Vec<&str> = answer.lines().map(str::trim).collect();
    assert!(lines.contains(&"Delay=7") && lines.contains(&"ErrorDelay=9"), "{answer}");
    assert!(too_large.starts_with("HTTP/1.1 413"), "{too_large}");
    assert!(third.starts_with("HTTP/1.1 200"), "{third}");
    assert!(later.iter().any(|a| a.starts_with("HTTP/1.1 503") && a.ends_with("BUSY")), "{later:#?}");
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn a_second_signal_ends_the_shutdown_delay() {
    let err = refused(&["serve", "--shutdown-delay", "soon"], &[]).await;
    assert!(err.contains("--shutdown-delay: \"soon\" is not a duration"), "{err}");
    let err = refused(&["serve"], &[("ESSL_SHUTDOWN_DELAY", "2h")]).await;
    assert!(err.contains("environment variable ESSL_SHUTDOWN_DELAY: 7200s is out of range"), "{err}");

    let dir = tempdir("shutdown-delay");
    let db = dir.join("essl.db");
    let f = write(
        &dir,
        "server.toml",
        &format!("listen = \"127.0.0.1:0\"\ndatabase_url = \"sqlite://{}\"\nshutdown_delay = \"1s\"\n", db.display()),
    );
    // The flag wins over the variable (a bad one: never read), which would win over the file.
    let (mut child, log, rest) = started(
        &["serve", "--config", f.to_str().expect("utf-8"), "--shutdown-delay", "10m"],
        &[("ESSL_SHUTDOWN_DELAY", "later")],
    )
    .await;
    let delay = log.iter().find(|l| l.contains("on SIGTERM")).unwrap_or_else(|| panic!("{log:#?}"));
    assert!(delay.split_whitespace().any(|w| w == "shutdown_delay_ms=600000"), "{delay}");
    let serving = log.last().expect("a line");
    let addr = serving
        .split_whitespace()
        .find_map(|w| w.strip_prefix("addr="))
        .unwrap_or_else(|| panic!("no address in {serving}"))
        .to_owned();
    let get = |path: &str| format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    assert!(exchange(&addr, &get("/readyz")).await.starts_with("HTTP/1.1 200"));

    // SIGTERM: ten minutes of /readyz answering 503 while everything else is served...
    let pid = child.id().expect("running").to_string();
    let term = || std::process::Command::new("kill").args(["-TERM", &pid]).status().is_ok_and(|s| s.success());
    assert!(term(), "kill -TERM");
    let since = std::time::Instant::now();
    let not_ready = loop {
        let answer = exchange(&addr, &get("/readyz")).await;
        if answer.starts_with("HTTP/1.1 503") {
            break answer;
        }
        assert!(since.elapsed() < Duration::from_secs(10), "/readyz still answers {answer}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert!(not_ready.ends_with("{\"status\":\"shutting down\"}"), "{not_ready}");
    assert!(exchange(&addr, &get("/healthz")).await.starts_with("HTTP/1.1 200"));
    // ...unless a second signal says "now".
    assert!(term(), "kill -TERM");
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    if exit.is_err() {
        let _ = child.kill().await;
    }
    let rest = rest.await.unwrap_or_default().join("\n");
    let exit = exit.unwrap_or_else(|_| panic!("no exit within 20 s of the second SIGTERM:\n{rest}")).expect("wait");
    assert!(exit.success(), "{exit:?}\n{rest}");
    assert!(rest.contains("shutting down after a delay") && rest.contains("delay_ms=600000"), "{rest}");
    assert!(rest.contains("second signal"), "{rest}");
    let _ = std::fs::remove_dir_all(dir);
}

/// One request on its own connection; the whole answer.
async fn exchange(addr: &str, request: &str) -> String {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connects");
    stream.write_all(request.as_bytes()).await.expect("sends");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_string(&mut answer))
        .await
        .expect("answers within 10 s")
        .expect("reads");
    answer
}
