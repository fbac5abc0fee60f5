//! Interop with pyzk, the Python client most sites use today: pyzk reads `essl-sim` over TCP and over UDP with a
//! comm key, and what it reports must equal the fixture exactly.
//!
//! Needs `ESSL_PYZK_PYTHON` (a Python with `pip install pyzk`); `.ci/run` sets it up and sets
//! `ESSL_REQUIRE_INTEROP=1`, which turns a missing interpreter into a failure instead of a skip.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::start;
use essl_zk_sim::fixture::{DeviceFixture, PunchFixture, UserFixture};
use essl_zk_sim::{Fixture, TerminalConfig, generate};
use serde_json::Value;

const KEY: u32 = 270_486;

fn python() -> Option<PathBuf> {
    match std::env::var_os("ESSL_PYZK_PYTHON") {
        Some(p) => Some(PathBuf::from(p)),
        None if std::env::var_os("ESSL_REQUIRE_INTEROP").is_some() => {
            panic!("ESSL_REQUIRE_INTEROP is set but ESSL_PYZK_PYTHON is not")
        }
        None => {
            eprintln!("SKIPPED pyzk interop: set ESSL_PYZK_PYTHON to a python with pyzk installed");
            None
        }
    }
}

fn fixture() -> Fixture {
    let mut f = generate::generate(40, 1500, 21);
    f.device = DeviceFixture {
        serial_number: "BOCK194960340".into(),
        device_name: "Reception K40".into(),
        platform: "ZEM560_TFT".into(),
        firmware: "Ver 6.60 Nov 13 2019".into(),
        mac: "00:17:61:c8:ec:17".into(),
    };
    f.users[0] = UserFixture {
        uid: 1,
        user_id: "1001".into(),
        name: "Zoë Ñúñez".into(),
        privilege: 14,
        password: "9911".into(),
        card: 4_294_967_295,
        group_id: "3".into(),
    };
    f.users[1].name = "Анна Петрова".into();
    f.users[2].name = "李娜".into();
    f
}

async fn pyzk_dump(python: &Path, addr: std::net::SocketAddr, udp: bool) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/pyzk_dump.py");
    let mut cmd = tokio::process::Command::new(python);
    cmd.arg(&script).args(["--addr", &addr.to_string(), "--comm-key", &KEY.to_string(), "--timeout", "10"]);
    cmd.args(["--set-time", "2030-05-06T07:08:09"]);
    if udp {
        cmd.arg("--udp");
    }
    let out = tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("pyzk finished within 120 s")
        .expect("python runs");
    assert!(
        out.status.success(),
        "pyzk failed (udp={udp}): {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("pyzk_dump prints JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyzk_reads_exactly_the_fixture_over_tcp_and_udp() {
    let Some(python) = python() else { return };
    let fixture = fixture();
    let sim = start(&fixture, TerminalConfig { comm_key: KEY, ..TerminalConfig::default() }).await;
    for udp in [false, true] {
        let dump = pyzk_dump(&python, sim.addr, udp).await;
        let device: DeviceFixture = serde_json::from_value(dump["device"].clone()).expect("device shape");
        assert_eq!(device, fixture.device, "udp={udp}");
        let users: Vec<UserFixture> = serde_json::from_value(dump["users"].clone()).expect("user shape");
        assert_eq!(users, fixture.users, "udp={udp}");
        let punches: Vec<PunchFixture> = serde_json::from_value(dump["attendance"].clone()).expect("punch shape");
        assert_eq!(punches.len(), fixture.attendance.len(), "udp={udp}");
        assert_eq!(punches, fixture.attendance, "udp={udp}");
        let time = dump["time"].as_str().expect("time");
        assert!(time.starts_with("2030-05-06T07:08:"), "pyzk set and read back the clock, got {time}");
        assert_eq!(dump["sizes"]["users"], 40);
        assert_eq!(dump["sizes"]["records"], 1500);
    }
    println!("pyzk interop: passed over TCP and UDP");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pyzk_live_capture_sees_simulated_punches_over_tcp_and_udp() {
    use tokio::io::{AsyncBufReadExt, BufReader};
    let Some(python) = python() else { return };
    let fixture = generate::generate(8, 5, 2);
    let sim = start(&fixture, TerminalConfig::default()).await;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/pyzk_dump.py");
    for udp in [false, true] {
        let mut cmd = tokio::process::Command::new(&python);
        cmd.arg(&script).args(["--addr", &sim.addr.to_string(), "--live", "3", "--timeout", "10"]);
        if udp {
            cmd.arg("--udp");
        }
        let mut child = cmd.stdout(std::process::Stdio::piped()).kill_on_drop(true).spawn().expect("python runs");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut punched = Vec::new();
        let mut seen: Vec<PunchFixture> = Vec::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.len() < 3 && tokio::time::Instant::now() < deadline {
            // Punches before pyzk subscribed are not events for it; those after are.
            punched.push(PunchFixture::from(&sim.terminal.punch(punched.len() + 1, 1, 0)));
            if let Ok(Ok(Some(line))) = tokio::time::timeout(Duration::from_millis(300), lines.next_line()).await {
                seen.push(serde_json::from_str(&line).expect("JSON line"));
            }
        }
        let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits").expect("status");
        assert!(status.success(), "pyzk live capture failed (udp={udp})");
        assert_eq!(seen.len(), 3, "udp={udp}");
        for event in &seen {
            assert!(punched.contains(event), "udp={udp}: pyzk saw {event:?}, punches were {punched:?}");
        }
    }
    sim.stop().await;
}
