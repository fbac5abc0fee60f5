//! The push parsers and the `/iclock/...` endpoints never panic, whatever the body or query: property tests over
//! arbitrary bytes, and over requests sent through the real router (SQLite in memory, a claimed terminal).

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use essl_server::app::{AppState, ServerConfig};
use essl_server::push::parse;
use essl_server::store::Store;
use essl_server::store::model::{DeviceKind, NewDevice};
use proptest::prelude::*;
use tower::ServiceExt as _;

/// Bodies made of what terminals send, mixed with anything.
fn body() -> impl Strategy<Value = Vec<u8>> {
    let piece = prop_oneof![
        Just(b"\t".to_vec()),
        Just(b"\r\n".to_vec()),
        Just(b"\n".to_vec()),
        Just(b"=".to_vec()),
        Just(b"&".to_vec()),
        Just(b"ID=".to_vec()),
        Just(b"Content=".to_vec()),
        Just(b"USER PIN=".to_vec()),
        Just(b"2025-01-06 08:00:00".to_vec()),
        Just(b"1001".to_vec()),
        Just("李娜Zoë".as_bytes().to_vec()),
        Just(vec![0xC0, 0xEE, 0x00, 0xFF]),
        proptest::collection::vec(any::<u8>(), 0..12),
    ];
    proptest::collection::vec(piece, 0..40).prop_map(|v| v.concat())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn parsers_take_anything(bytes in body(), chinese in any::<bool>(), raw in ".{0,200}") {
        let text = parse::decode_text(&bytes, chinese);
        prop_assert!(!text.contains('\0'));
        for line in parse::lines(&text) {
            prop_assert!(!line.contains('\n'));
            if let Ok(r) = parse::att_line(line) {
                prop_assert!(!r.pin.is_empty() && r.pin.chars().count() <= 64);
                prop_assert!((1..=9999).contains(&r.time.year()));
            }
            let _ = parse::rtlog_line(line);
            if let parse::OperLine::User(u) = parse::oper_line(line) {
                prop_assert!(!u.pin.is_empty());
                prop_assert!(u.card >= 0);
            }
            let _ = parse::key_values(line, ',');
        }
        for r in parse::cmd_results(&text) {
            prop_assert!(r.extras.len() <= text.len());
        }
        let _ = parse::poll_info(&text);
        let q = parse::Query::parse(&raw);
        let _ = q.get("SN");
        let _ = parse::percent_decode(&raw);
        let _ = parse::card(&raw);
        let _ = parse::local_time(&raw);
    }

    #[test]
    fn attlog_lines_round_trip(pin in "[0-9A-Za-z]{1,24}", y in 2000i16..2100, mo in 1i8..=12, d in 1i8..=28,
                               h in 0i8..24, mi in 0i8..60, s in 0i8..60, state in 0i16..=255, verify in 0i16..=200,
                               extra in proptest::collection::vec("[0-9.]{0,4}", 0..8), crlf in any::<bool>()) {
        let mut line = format!("{pin}\t{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}\t{state}\t{verify}");
        for e in &extra {
            line.push('\t');
            line.push_str(e);
        }
        let body = if crlf { format!("{line}\r\n") } else { format!("{line}\n") };
        let lines: Vec<&str> = parse::lines(&body).collect();
        prop_assert_eq!(lines.len(), 1);
        let r = parse::att_line(lines[0]).expect("a well-formed line parses");
        prop_assert_eq!(r.pin, pin);
        prop_assert_eq!((r.time.year(), r.time.month(), r.time.day()), (y, mo, d));
        prop_assert_eq!((r.time.hour(), r.time.minute(), r.time.second()), (h, mi, s));
        prop_assert_eq!((r.state, r.verify), (state, verify));
    }
}

/// Requests through the real router: every answer is a status, never a panic; uploads of a claimed terminal get
/// `OK:<lines>` or an error status.
#[test]
fn endpoints_answer_anything() {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let router = rt.block_on(async {
        let store = Store::connect("sqlite::memory:").await.expect("sqlite");
        store
            .create_device(&NewDevice {
                name: "push".into(),
                kind: DeviceKind::Push,
                ip_address: String::new(),
                port: 4370,
                comm_key: 0,
                udp: false,
                serial_number: Some("PROP0001".into()),
                timezone: "Asia/Kolkata".into(),
                site_id: None,
                active: true,
            })
            .await
            .expect("device");
        essl_server::http::router(AppState::new(store, ServerConfig::default()))
    });
    let endpoints = [
        "cdata",
        "CDATA.aspx",
        "getrequest",
        "devicecmd",
        "registry",
        "push",
        "ping",
        "rtdata",
        "querydata",
        "fdata",
        "nothing",
        "s/x/cdata",
        "s//",
    ];
    let tables = ["ATTLOG", "attlog", "OPERLOG", "options", "USERINFO", "rtlog", "tabledata", "ATTPHOTO", ""];
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 192, ..ProptestConfig::default() });
    let strategy = (
        0..endpoints.len(),
        0..tables.len(),
        prop_oneof![Just("PROP0001".to_owned()), "[ -~]{0,20}"],
        "[ -~]{0,40}",
        body(),
        any::<bool>(),
    );
    runner
        .run(&strategy, |(e, t, sn, junk, bytes, post)| {
            let uri = format!("/iclock/{}?SN={}&table={}&{}", endpoints[e], urlish(&sn), tables[t], urlish(&junk));
            let Ok(req) = Request::builder()
                .method(if post { Method::POST } else { Method::GET })
                .uri(&uri)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(Body::from(bytes.clone()))
            else {
                return Ok(());
            };
            let resp = rt.block_on(router.clone().oneshot(req)).expect("infallible");
            let status = resp.status();
            let text = rt.block_on(axum::body::to_bytes(resp.into_body(), 1 << 20)).expect("body");
            prop_assert!(status != StatusCode::INTERNAL_SERVER_ERROR, "{uri}: {status}");
            if post
                && sn == "PROP0001"
                && tables[t].eq_ignore_ascii_case("attlog")
                && endpoints[e].starts_with("cdata")
                && status == StatusCode::OK
            {
                let n = parse::lines(&parse::decode_text(&bytes, false)).count();
                prop_assert_eq!(String::from_utf8_lossy(&text), format!("OK:{n}"));
            }
            Ok(())
        })
        .expect("no request makes the endpoints fail");
}

fn urlish(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"=&-_.".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
