//! `essl-agent device ...` as a user runs it: the real binary against a simulated terminal.

use std::process::Output;

use essl_zk_sim::fixture::{PunchFixture, UserFixture};
use essl_zk_sim::{Simulator, Terminal, TerminalConfig, generate};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_essl-agent");

async fn agent(args: &[&str]) -> Output {
    tokio::process::Command::new(AGENT).args(args).output().await.expect("essl-agent runs")
}

fn lines(out: &Output) -> Vec<Value> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_output_matches_the_fixture_over_tcp_and_udp() {
    let fixture = generate::generate(15, 2500, 8);
    let terminal =
        Terminal::new(&fixture, TerminalConfig { comm_key: 99, ..TerminalConfig::default() }).expect("fixture");
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), terminal).await.expect("sim");
    let addr = sim.addr.to_string();
    for udp in [None, Some("--udp")] {
        let mut base = vec!["--addr", addr.as_str(), "--comm-key", "99", "--json"];
        base.extend(udp);
        let run = |what: &'static str| {
            let mut args = vec!["device", what];
            args.extend(base.iter().copied());
            async move { agent(&args).await }
        };

        let out = run("info").await;
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let info = lines(&out);
        assert_eq!(info.len(), 1);
        let keys: Vec<&str> = info[0].as_object().expect("object").keys().map(String::as_str).collect();
        assert_eq!(
            keys,
            ["serial_number", "device_name", "platform", "firmware", "mac", "users", "records", "fingerprints"]
        );
        assert_eq!(info[0]["serial_number"], fixture.device.serial_number.as_str());
        assert_eq!(info[0]["records"], 2500);
        assert_eq!(info[0]["users"], 15);

        let out = run("users").await;
        assert!(out.status.success());
        let users: Vec<UserFixture> =
            lines(&out).into_iter().map(|v| serde_json::from_value(v).expect("user shape")).collect();
        assert_eq!(users, fixture.users);

        let out = run("attendance").await;
        assert!(out.status.success());
        let punches: Vec<PunchFixture> =
            lines(&out).into_iter().map(|v| serde_json::from_value(v).expect("punch shape")).collect();
        assert_eq!(punches, fixture.attendance);

        let out = run("time").await;
        assert!(out.status.success());
        let t = lines(&out)[0]["time"].as_str().expect("time").to_owned();
        assert!(jiff::civil::DateTime::strptime("%Y-%m-%dT%H:%M:%S", &t).is_ok(), "{t}");
    }
    // Tables for people.
    let out = agent(&["device", "users", "--addr", &addr, "--comm-key", "99"]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains(&fixture.users[3].name) && text.trim_end().ends_with("15 users"), "{text}");
    sim.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_codes_say_what_went_wrong() {
    let terminal =
        Terminal::new(&generate::generate(2, 2, 1), TerminalConfig { comm_key: 5, ..TerminalConfig::default() })
            .expect("fixture");
    let sim = Simulator::start("127.0.0.1:0".parse().expect("addr"), terminal).await.expect("sim");
    let addr = sim.addr.to_string();
    let code = |o: Output| o.status.code();

    assert_eq!(code(agent(&["device", "info", "--addr", &addr, "--comm-key", "5"]).await), Some(0));
    assert_eq!(code(agent(&["device", "info", "--addr", &addr, "--comm-key", "6"]).await), Some(4));
    assert_eq!(code(agent(&["device", "info", "--addr", &addr, "--comm-key", "6", "--udp"]).await), Some(4));

    // Something that is not a terminal: an HTTP-ish server.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let http = listener.local_addr().expect("addr").to_string();
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = listener.accept().await {
            let _ = s.write_all(b"HTTP/1.1 400 Bad Request\r\n\r\n").await;
        }
    });
    assert_eq!(code(agent(&["device", "info", "--addr", &http]).await), Some(5));

    sim.stop().await;
    assert_eq!(code(agent(&["device", "info", "--addr", &addr, "--timeout-ms", "500"]).await), Some(3));
    assert_eq!(code(agent(&["device", "probe", "--addr", &addr, "--timeout-ms", "200", "--udp"]).await), Some(3));
    // Usage errors are clap's 2.
    assert_eq!(code(agent(&["device", "info"]).await), Some(2));
}
