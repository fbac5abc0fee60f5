//! `essl-agent config check` and `essl-agent service ... --dry-run` as an administrator runs them: the real binary.
//! The service commands are only ever run with `--dry-run` here: nothing is installed, systemctl is never called.

use std::path::{Path, PathBuf};
use std::process::Output;

use essl_zk_sim::{Simulator, Terminal, TerminalConfig, generate};

const AGENT: &str = env!("CARGO_BIN_EXE_essl-agent");

async fn agent(args: &[&str]) -> Output {
    tokio::process::Command::new(AGENT)
        .args(args)
        .env_remove("ESSL_AGENT_TOKEN")
        .output()
        .await
        .expect("essl-agent runs")
}

fn text(out: &Output) -> (String, String) {
    (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned())
}

fn tempdir(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("essl-agent-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("mkdir");
    dir
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).expect("write");
    p.display().to_string()
}

const HEAD: &str = "server = \"wss://relay.example.com/agent/ws\"\ntoken = \"essla_test\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_check_probes_the_listed_devices() {
    let terminal =
        Terminal::new(&generate::generate(3, 10, 1), TerminalConfig { comm_key: 7, ..TerminalConfig::default() })
            .expect("fixture");
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), terminal).await.expect("sim");
    // A port nothing listens on: bind one, note it, close it.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr");
    let dir = tempdir("check");

    let good = write(
        &dir,
        "good.toml",
        &format!(
            "{HEAD}[[devices]]\nname = \"Front door\"\naddr = \"{}\"\ncomm_key = 7\n\n[[devices]]\nname = \"Front door (udp)\"\naddr = \"{}\"\nudp = true\ncomm_key = 7\n",
            sim.addr, sim.addr
        ),
    );
    let out = agent(&["config", "check", "--config", &good]).await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains("valid") && stdout.contains("wss://relay.example.com/agent/ws"), "{stdout}");
    assert!(!stdout.contains("essla_test"), "the token was printed: {stdout}");
    let rows: Vec<&str> = stdout.lines().filter(|l| l.starts_with("Front door")).collect();
    assert_eq!(rows.len(), 2, "{stdout}");
    assert!(rows.iter().all(|r| r.contains("reachable, handshake")), "{stdout}");
    assert!(rows[0].contains(" tcp ") && rows[1].contains(" udp "), "{stdout}");

    let mixed = write(
        &dir,
        "mixed.toml",
        &format!(
            "{HEAD}[[devices]]\nname = \"Front door\"\naddr = \"{}\"\ncomm_key = 7\n\n[[devices]]\nname = \"Wrong key\"\naddr = \"{}\"\ncomm_key = 8\n\n[[devices]]\nname = \"Switched off\"\naddr = \"{closed}\"\n",
            sim.addr, sim.addr
        ),
    );
    let out = agent(&["config", "check", "--config", &mixed, "--timeout-ms", "300"]).await;
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
    let row = |name: &str| stdout.lines().find(|l| l.starts_with(name)).unwrap_or_default().to_owned();
    assert!(row("Front door").contains("reachable, handshake"), "{stdout}");
    assert!(row("Wrong key").contains("comm key refused"), "{stdout}");
    assert!(row("Switched off").contains("unreachable"), "{stdout}");
    assert!(stderr.contains("2 of 3"), "{stderr}");

    // No devices: valid, nothing to probe.
    let plain = write(&dir, "plain.toml", HEAD);
    let out = agent(&["config", "check", "--config", &plain]).await;
    assert!(out.status.success(), "{:?}", text(&out));
    sim.stop().await;
    let _ = std::fs::remove_dir_all(dir);
}

#[tokio::test]
async fn config_check_refuses_bad_files_with_key_and_file() {
    let dir = tempdir("bad");
    let cases = [
        ("type.toml", format!("{HEAD}probe_interval_secs = \"often\"\n"), "`probe_interval_secs` in"),
        ("unknown.toml", format!("{HEAD}servers = 1\n"), "servers"),
        (
            "device-type.toml",
            format!("{HEAD}[[devices]]\nname = \"x\"\naddr = \"10.0.0.1\"\nudp = \"yes\"\n"),
            "`udp` in",
        ),
        (
            "device-unknown.toml",
            format!("{HEAD}[[devices]]\nname = \"x\"\naddr = \"10.0.0.1\"\nip = \"10.0.0.1\"\n"),
            "ip",
        ),
        (
            "device-addr.toml",
            format!("{HEAD}[[devices]]\nname = \"x\"\naddr = \"not an address\"\n"),
            "`devices[0].addr` in",
        ),
        ("no-token.toml", "server = \"wss://relay.example.com/agent/ws\"\n".to_owned(), "ESSL_AGENT_TOKEN"),
    ];
    for (name, body, expect) in cases {
        let file = write(&dir, name, &body);
        let out = agent(&["config", "check", "--config", &file]).await;
        let (stdout, stderr) = text(&out);
        assert_eq!(out.status.code(), Some(2), "{name}: {stdout}\n{stderr}");
        assert!(stderr.contains(expect), "{name}: {stderr}");
        if expect.contains(" in") {
            assert!(stderr.contains(&file), "{name}: the file is not named: {stderr}");
        }
        assert!(!stderr.contains("essla_test") && !stderr.contains("panicked"), "{name}: {stderr}");
    }
    let out = agent(&["config", "check", "--config", &dir.join("missing.toml").display().to_string()]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(text(&out).1.contains("missing.toml"));
    let _ = std::fs::remove_dir_all(dir);
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn service_dry_runs_print_the_plan_and_the_shipped_unit() {
    let unit = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/systemd/essl-agent.service"))
        .expect("deploy/systemd/essl-agent.service");
    let out = agent(&[
        "service",
        "install",
        "--dry-run",
        "--server",
        "wss://relay.example.com/agent/ws",
        "--token",
        "essla_very_secret",
    ])
    .await;
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!("(mode 0644, owner root:root):\n{unit}")),
        "the unit is not the shipped file:\n{stdout}"
    );
    for step in [
        "useradd --system",
        "install -d -m 0750 -o root -g essl-agent /etc/essl-agent",
        "# write /etc/essl-agent/agent.toml (mode 0640, owner root:essl-agent)",
        "server = \"wss://relay.example.com/agent/ws\"",
        "systemctl daemon-reload",
        "systemctl enable essl-agent",
        "systemctl restart essl-agent",
    ] {
        assert!(stdout.contains(step), "missing {step:?}:\n{stdout}");
    }
    assert!(!stdout.contains("essla_very_secret"), "the token was printed");

    // Without --server, an existing config is kept (or a template written).
    let out = agent(&["service", "install", "--dry-run"]).await;
    let (stdout, _) = text(&out);
    assert!(out.status.success() && stdout.contains("only if there is no config file yet"), "{stdout}");

    for (cmd, expect) in [
        ("uninstall", "systemctl disable --now essl-agent"),
        ("status", "systemctl status essl-agent --no-pager"),
        ("start", "systemctl start essl-agent"),
        ("stop", "systemctl stop essl-agent"),
    ] {
        let out = agent(&["service", cmd, "--dry-run"]).await;
        let (stdout, stderr) = text(&out);
        assert!(out.status.success() && stdout.contains(expect), "{cmd}: {stdout}\n{stderr}");
    }

    // Usage errors, before anything is done.
    let out =
        agent(&["service", "install", "--dry-run", "--server", "ws://relay.example.com/agent/ws", "--token", "t"])
            .await;
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    let out = agent(&["service", "install", "--dry-run", "--server", "wss://relay.example.com/agent/ws"]).await;
    assert_eq!(out.status.code(), Some(2), "{:?}", text(&out));
    assert!(text(&out).1.contains("ESSL_AGENT_TOKEN"));
}
