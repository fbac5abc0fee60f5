//! A scripted "terminal" that lies: sizes that contradict the data, replies that never match, garbage. The client
//! must answer each with a typed error within its deadline and allocate nothing it was merely told about.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use essl_zk::consts::*;
use essl_zk::frame::decode_tcp_frame;
use essl_zk::packet::Packet;
use essl_zk::{ClientConfig, CodecError, ErrorKind, ZkClient, ZkError};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type Script = fn(&Packet) -> Vec<Vec<u8>>;

/// Serves one connection, answering each request with the script's bytes.
async fn fake_terminal(script: Script) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let Ok((mut s, _)) = listener.accept().await else { return };
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            while let Ok(Some((req, used))) = decode_tcp_frame(&buf) {
                buf.drain(..used);
                for bytes in script(&req) {
                    if bytes.is_empty() {
                        return; // close
                    }
                    if s.write_all(&bytes).await.is_err() {
                        return;
                    }
                }
            }
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    });
    addr
}

fn ok(req: &Packet, payload: &[u8]) -> Vec<u8> {
    Packet::new(CMD_ACK_OK, 9, req.reply_id).with_payload(payload).encode_tcp()
}

/// Answers connect and free-sizes normally; `bulk` answers the buffered-read commands.
fn terminal_with(req: &Packet, bulk: impl Fn(&Packet) -> Vec<Vec<u8>>) -> Vec<Vec<u8>> {
    match req.command {
        CMD_GET_FREE_SIZES => {
            let sizes = essl_zk::sizes::FreeSizes { records: 10, ..Default::default() };
            vec![ok(req, &sizes.encode())]
        }
        CMD_PREPARE_BUFFER | CMD_READ_BUFFER => bulk(req),
        _ => vec![ok(req, &[])],
    }
}

fn stat(size: u32) -> Vec<u8> {
    let mut s = vec![0];
    s.extend_from_slice(&size.to_le_bytes());
    s.extend_from_slice(&size.to_le_bytes());
    s.extend_from_slice(&[0; 4]);
    s
}

fn cfg() -> ClientConfig {
    ClientConfig { timeout: Duration::from_millis(300), chunk_retries: 1, ..ClientConfig::default() }
}

async fn read_attendance(script: Script) -> (ZkError, Duration) {
    let addr = fake_terminal(script).await;
    let mut c = ZkClient::connect(addr, cfg()).await.expect("connect");
    let started = Instant::now();
    let err = c.read_attendance(&mut |_, _| {}).await.expect_err("must fail");
    (err, started.elapsed())
}

#[tokio::test]
async fn announced_table_of_4_gib_is_refused_up_front() {
    let (err, _) = read_attendance(|req| terminal_with(req, |r| vec![ok(r, &stat(u32::MAX))])).await;
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}

#[tokio::test]
async fn chunk_announcing_another_length_is_refused() {
    let (err, _) = read_attendance(|req| {
        terminal_with(req, |r| match r.command {
            CMD_PREPARE_BUFFER => vec![ok(r, &stat(2000))],
            _ => vec![Packet::new(CMD_PREPARE_DATA, 0, r.reply_id).with_payload(500u32.to_le_bytes()).encode_tcp()],
        })
    })
    .await;
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}

#[tokio::test]
async fn more_data_than_asked_for_is_refused() {
    let (err, _) = read_attendance(|req| {
        terminal_with(req, |r| match r.command {
            CMD_PREPARE_BUFFER => vec![ok(r, &stat(2000))],
            _ => vec![
                Packet::new(CMD_PREPARE_DATA, 0, r.reply_id).with_payload(2000u32.to_le_bytes()).encode_tcp(),
                Packet::new(CMD_DATA, 0, r.reply_id).with_payload(vec![0; 2500]).encode_tcp(),
            ],
        })
    })
    .await;
    assert!(matches!(err, ZkError::Unexpected(_)), "{err}");
}

#[tokio::test]
async fn table_whose_size_field_contradicts_its_bytes() {
    let (err, _) = read_attendance(|req| {
        terminal_with(req, |r| {
            // Inline table claiming 400 bytes of records while carrying 40.
            let mut table = 400u32.to_le_bytes().to_vec();
            table.extend_from_slice(&[0; 40]);
            vec![Packet::new(CMD_DATA, 0, r.reply_id).with_payload(table).encode_tcp()]
        })
    })
    .await;
    assert!(matches!(err, ZkError::Codec(CodecError::SizeMismatch { .. })), "{err}");
}

#[tokio::test]
async fn replies_that_never_match_time_out() {
    let (err, took) = read_attendance(|req| {
        terminal_with(req, |r| vec![Packet::new(CMD_ACK_OK, 9, r.reply_id.wrapping_add(7)).encode_tcp()])
    })
    .await;
    assert!(matches!(err, ZkError::Timeout(_)), "{err}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn garbage_instead_of_a_frame_is_a_protocol_error() {
    let (err, _) =
        read_attendance(|req| terminal_with(req, |_| vec![b"HTTP/1.1 400 Bad Request\r\n\r\n".to_vec()])).await;
    assert_eq!(err.kind(), ErrorKind::Protocol, "{err}");
}

#[tokio::test]
async fn terminal_closing_mid_transfer() {
    let (err, _) = read_attendance(|req| {
        terminal_with(req, |r| match r.command {
            CMD_PREPARE_BUFFER => vec![ok(r, &stat(5000))],
            _ => vec![
                Packet::new(CMD_PREPARE_DATA, 0, r.reply_id).with_payload(5000u32.to_le_bytes()).encode_tcp(),
                Packet::new(CMD_DATA, 0, r.reply_id).with_payload(vec![0; 1008]).encode_tcp(),
                Vec::new(),
            ],
        })
    })
    .await;
    assert!(matches!(err, ZkError::Closed), "{err}");
}

#[tokio::test]
async fn events_interleaved_with_replies_are_queued_not_mistaken() {
    let addr = fake_terminal(|req| match req.command {
        CMD_GET_TIME => {
            let mut event = b"1001".to_vec();
            event.resize(24, 0);
            event.extend_from_slice(&[1, 0, 25, 11, 24, 9, 1, 2, 0, 0, 0, 0]);
            vec![
                Packet::new(CMD_REG_EVENT, EF_ATTLOG, 0).with_payload(event).encode_tcp(),
                ok(
                    req,
                    &essl_zk::time::encode_packed(jiff::civil::date(2025, 1, 1).at(0, 0, 0, 0))
                        .unwrap_or(0)
                        .to_le_bytes(),
                ),
            ]
        }
        _ => vec![ok(req, &[])],
    })
    .await;
    let mut c = ZkClient::connect(addr, cfg()).await.expect("connect");
    assert_eq!(c.get_time().await.expect("time"), jiff::civil::date(2025, 1, 1).at(0, 0, 0, 0));
    match c.next_event(Duration::from_millis(10)).await.expect("queued") {
        Some(essl_zk::RealtimeEvent::Attendance(e)) => assert_eq!(e.user_id, "1001"),
        other => panic!("expected the queued event, got {other:?}"),
    }
}
