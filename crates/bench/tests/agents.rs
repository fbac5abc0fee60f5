//! `essl-bench agents` as a correctness test (not a timing test): 200 real agent WebSockets against the real
//! `essl-server` binary (the one built next to `essl-bench`), and then every agent connected, none was dropped,
//! every ping was answered, and check-device answered through the office's agent. Reads the bench's summary.

use std::process::Command;

/// The value of `key=` in the first line that starts with `line` (after its indentation).
fn field(out: &str, line: &str, key: &str) -> Option<u64> {
    let l = out.lines().find(|l| l.trim_start().starts_with(line))?;
    l.split_whitespace().find_map(|w| w.strip_prefix(key)?.strip_prefix('=')?.parse().ok())
}

/// `essl-bench agents` for 200 agents, 3 s, with `extra` arguments, against `server`: its standard output (printed).
fn run_bench(extra: &[&str], server: &std::path::Path) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_essl-bench"))
        .args(["agents", "--count", "200", "--seconds", "3", "--ping-seconds", "1", "--samples", "20"])
        .args(extra)
        .arg("--server-bin")
        .arg(server)
        .output()
        .expect("essl-bench runs");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(out.status.success(), "the bench failed: {}\n{stdout}\n{stderr}", out.status);
    stdout
}

/// The `essl-server` binary built next to `essl-bench` (the bench starts the real server).
fn server_binary() -> std::path::PathBuf {
    let bench = std::path::Path::new(env!("CARGO_BIN_EXE_essl-bench"));
    let server = bench.with_file_name(format!("essl-server{}", std::env::consts::EXE_SUFFIX));
    assert!(
        server.is_file(),
        "no {} (the bench starts the real server binary: cargo build -p essl-server first; `cargo test --workspace` \
         builds it)",
        server.display()
    );
    server
}

#[test]
fn two_hundred_idle_agents_all_connect_and_every_ping_is_answered() {
    let stdout = run_bench(&[], &server_binary());
    assert_eq!(field(&stdout, "agents=", "connected"), Some(200), "{stdout}");
    assert_eq!(field(&stdout, "agents=", "refused"), Some(0), "{stdout}");
    assert_eq!(field(&stdout, "agents=", "failed"), Some(0), "{stdout}");
    assert_eq!(field(&stdout, "agents=", "dropped"), Some(0), "{stdout}");
    // One ping a second for 3 s: at least two from each agent, each one answered.
    let sent = field(&stdout, "pings", "sent").expect("pings sent");
    assert!(sent >= 400, "{stdout}");
    assert_eq!(field(&stdout, "pings", "answered"), Some(sent), "{stdout}");
    assert_eq!(field(&stdout, "pings", "unanswered"), Some(0), "{stdout}");
    assert!(field(&stdout, "server rss_", "rss_after_kib").is_some_and(|kib| kib > 0), "{stdout}");
    assert_eq!(field(&stdout, "check-device", "samples"), Some(20), "{stdout}");
}

/// `--instances 2` on PostgreSQL: the agents are spread over two real servers on one database, and check-device
/// answers on the instance without the office's agent too (forwarded through PostgreSQL).
#[test]
fn two_instances_share_the_agents_and_forward_check_device() {
    let Ok(runtime) = tokio::runtime::Runtime::new() else { panic!("a runtime") };
    let Some(db) = runtime.block_on(essl_e2e::TestDb::new(essl_e2e::Backend::Postgres)) else { return };
    let stdout = run_bench(&["--instances", "2", "--database-url", &db.url], &server_binary());
    assert_eq!(stdout.lines().filter(|l| l.starts_with("server pid")).count(), 2, "{stdout}");
    assert_eq!(field(&stdout, "agents=", "connected"), Some(200), "{stdout}");
    assert_eq!(field(&stdout, "agents=", "dropped"), Some(0), "{stdout}");
    assert_eq!(field(&stdout, "pings", "unanswered"), Some(0), "{stdout}");
    assert_eq!(field(&stdout, "check-device", "samples"), Some(20), "{stdout}");
    assert_eq!(field(&stdout, "forwarded check-device", "samples"), Some(20), "{stdout}");
    assert_eq!(field(&stdout, "check-device through the balancer", "samples"), Some(20), "{stdout}");
    drop(runtime);
}

#[test]
fn several_instances_need_postgres() {
    let out = Command::new(env!("CARGO_BIN_EXE_essl-bench"))
        .args(["agents", "--count", "10", "--instances", "2"])
        .output()
        .expect("essl-bench runs");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("needs a PostgreSQL --database-url"));
}
