//! Misbehaving terminals and networks: every failure is a typed error within the deadline, never a hang or a
//! panic; the simulator survives any client.

mod common;

use std::time::{Duration, Instant};

use common::*;
use essl_zk::{ErrorKind, ProbeConfig, Transport, ZkClient, ZkError};
use essl_zk_sim::fixture::PunchFixture;
use essl_zk_sim::{Faults, TerminalConfig, generate};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};

fn short(transport: Transport, ms: u64) -> essl_zk::ClientConfig {
    essl_zk::ClientConfig { timeout: Duration::from_millis(ms), ..client(transport, 0) }
}

#[tokio::test]
async fn switched_off_terminal_is_unreachable_quickly() {
    let sim = start_generated(1, 1, TerminalConfig::default()).await;
    let addr = sim.addr;
    sim.stop().await;
    for transport in BOTH {
        let started = Instant::now();
        let err = ZkClient::connect(addr, short(transport, 500)).await.err().expect("nothing listens");
        assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
        assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
        let cfg = ProbeConfig { transport, timeout: Duration::from_millis(300), ..ProbeConfig::default() };
        let err = essl_zk::probe(addr, &cfg).await.expect_err("probe fails");
        assert_eq!(err.kind(), ErrorKind::Unreachable);
    }
}

#[tokio::test]
async fn hung_terminal_times_out_within_the_deadline() {
    let sim = start_generated(2, 10, TerminalConfig::default()).await;
    sim.terminal.set_faults(Faults { mute: true, ..Faults::default() });
    for transport in BOTH {
        let started = Instant::now();
        let err = ZkClient::connect(sim.addr, short(transport, 300)).await.err().expect("no answer");
        assert!(matches!(err, ZkError::Timeout(_)), "{err}");
        // UDP resends twice: three deadlines at most, plus scheduling slack.
        assert!(started.elapsed() < Duration::from_millis(1500), "{:?}", started.elapsed());
        // The seed's probe budget: one try and one retry.
        let cfg = ProbeConfig { transport, timeout: Duration::from_millis(300), ..ProbeConfig::default() };
        let started = Instant::now();
        assert_eq!(essl_zk::probe(sim.addr, &cfg).await.err().map(|e| e.kind()), Some(ErrorKind::Unreachable));
        let took = started.elapsed();
        assert!(took >= Duration::from_millis(600) && took < Duration::from_millis(1200), "{took:?}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn terminal_stops_answering_in_the_middle_of_a_bulk_read() {
    let sim = start_generated(5, 5000, TerminalConfig::default()).await;
    let mut c = ZkClient::connect(sim.addr, short(Transport::Tcp, 400)).await.expect("connect");
    sim.terminal.set_faults(Faults { cut_bulk_after: Some(2), ..Faults::default() });
    let started = Instant::now();
    let err = c.read_attendance(&mut |_, _| {}).await.expect_err("cut");
    assert_eq!(err.kind(), ErrorKind::Unreachable, "{err}");
    assert!(started.elapsed() < Duration::from_secs(2));
    // Over UDP the cut looks like silence: retried, then a timeout.
    sim.terminal.set_faults(Faults::default());
    let mut c = ZkClient::connect(sim.addr, short(Transport::Udp, 200)).await.expect("connect");
    sim.terminal.set_faults(Faults { cut_bulk_after: Some(3), ..Faults::default() });
    let err = c.read_attendance(&mut |_, _| {}).await.expect_err("cut");
    assert!(matches!(err.kind(), ErrorKind::Unreachable | ErrorKind::Protocol), "{err}");
    sim.stop().await;
}

#[tokio::test]
async fn lost_and_corrupted_datagrams_are_recovered_over_udp() {
    let fixture = generate::generate(20, 3000, 9);
    let sim = start(&fixture, TerminalConfig::default()).await;
    for (i, faults) in [
        Faults { drop_rate: 0.03, seed: 1, ..Faults::default() },
        Faults { corrupt_rate: 0.03, seed: 2, ..Faults::default() },
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = ZkClient::connect(sim.addr, short(Transport::Udp, 150)).await.expect("connect");
        sim.terminal.set_faults(faults);
        let read = c.read_attendance(&mut |_, _| {}).await.expect("recovered by retries");
        let got: Vec<PunchFixture> = read.records.iter().map(PunchFixture::from).collect();
        assert_eq!(got, fixture.attendance, "case {i}");
        sim.terminal.set_faults(Faults::default());
    }
    sim.stop().await;
}

#[tokio::test]
async fn corrupted_tcp_stream_gives_a_typed_error_or_the_right_data() {
    let fixture = generate::generate(10, 2000, 4);
    let sim = start(&fixture, TerminalConfig::default()).await;
    let mut errors = 0;
    for seed in 0..12 {
        sim.terminal.set_faults(Faults::default());
        let Ok(mut c) = ZkClient::connect(sim.addr, short(Transport::Tcp, 300)).await else { continue };
        sim.terminal.set_faults(Faults { corrupt_rate: 0.02, seed, ..Faults::default() });
        let started = Instant::now();
        match c.read_attendance(&mut |_, _| {}).await {
            Ok(read) => {
                let got: Vec<PunchFixture> = read.records.iter().map(PunchFixture::from).collect();
                assert_eq!(got, fixture.attendance, "seed {seed}: wrong data accepted");
            }
            Err(_) => errors += 1,
        }
        // Every chunk has its own deadline, each retried 3 times: bounded.
        assert!(started.elapsed() < Duration::from_secs(10), "seed {seed}: {:?}", started.elapsed());
    }
    assert!(errors > 0, "2% corruption over 12 reads should break some");
    sim.stop().await;
}

#[tokio::test]
async fn added_latency_beyond_the_timeout_is_a_timeout() {
    let sim = start_generated(1, 1, TerminalConfig::default()).await;
    let mut c = ZkClient::connect(sim.addr, short(Transport::Tcp, 200)).await.expect("connect");
    sim.terminal.set_faults(Faults { latency: Duration::from_millis(400), ..Faults::default() });
    assert!(matches!(c.get_time().await, Err(ZkError::Timeout(_))));
    sim.terminal.set_faults(Faults { latency: Duration::from_millis(50), ..Faults::default() });
    let mut c = ZkClient::connect(sim.addr, short(Transport::Tcp, 1000)).await.expect("slow but fine");
    assert!(c.get_time().await.is_ok());
    sim.stop().await;
}

#[tokio::test]
async fn session_limit_answers_busy() {
    let sim = start_generated(1, 1, TerminalConfig { max_sessions: 2, ..TerminalConfig::default() }).await;
    let a = ZkClient::connect(sim.addr, client(Transport::Tcp, 0)).await.expect("first");
    let _b = ZkClient::connect(sim.addr, client(Transport::Udp, 0)).await.expect("second");
    let err = ZkClient::connect(sim.addr, client(Transport::Tcp, 0)).await.err().expect("third refused");
    assert_eq!(err.kind(), ErrorKind::Busy, "{err}");
    a.disconnect().await.expect("exit frees the slot");
    ZkClient::connect(sim.addr, client(Transport::Tcp, 0)).await.expect("slot free again");
    sim.stop().await;
}

#[tokio::test]
async fn simulator_survives_garbage_clients() {
    let sim = start_generated(3, 30, TerminalConfig::default()).await;
    // Not the protocol at all.
    let mut s = TcpStream::connect(sim.addr).await.expect("tcp");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.expect("write");
    let mut buf = [0u8; 16];
    assert_eq!(s.read(&mut buf).await.expect("closed"), 0, "connection closed without a reply");
    // A frame announcing 4 GiB.
    let mut s = TcpStream::connect(sim.addr).await.expect("tcp");
    s.write_all(&[0x50, 0x50, 0x82, 0x7D, 0xFF, 0xFF, 0xFF, 0xFF]).await.expect("write");
    assert_eq!(s.read(&mut buf).await.expect("closed"), 0);
    // A frame with a bad checksum is dropped, the connection lives on.
    let mut s = TcpStream::connect(sim.addr).await.expect("tcp");
    let mut bad = essl_zk::packet::Packet::new(1000, 0, 0).encode_tcp();
    bad[10] ^= 0xFF;
    s.write_all(&bad).await.expect("write");
    let good = essl_zk::packet::Packet::new(1000, 0, 1).encode_tcp();
    s.write_all(&good).await.expect("write");
    let mut reply = [0u8; 16];
    s.read_exact(&mut reply).await.expect("reply to the good packet");
    let (p, _) = essl_zk::frame::decode_tcp_frame(&reply).expect("valid").expect("complete");
    assert_eq!((p.command, p.reply_id), (essl_zk::consts::CMD_ACK_OK, 1));
    // Random datagrams, short datagrams, commands without a session.
    let u = UdpSocket::bind("127.0.0.1:0").await.expect("udp");
    for junk in [&b""[..], b"\x01", b"\xe8\x03\x00\x00", &[0xAB; 2000]] {
        u.send_to(junk, sim.addr).await.expect("send");
    }
    let data_without_session = essl_zk::packet::Packet::new(1504, 77, 3).with_payload([0; 8]).encode();
    u.send_to(&data_without_session, sim.addr).await.expect("send");
    // Still a working terminal for everybody.
    for transport in BOTH {
        let mut c = ZkClient::connect(sim.addr, client(transport, 0)).await.expect("connect after garbage");
        assert_eq!(c.read_attendance(&mut |_, _| {}).await.expect("read").records.len(), 30);
    }
    assert!(sim.terminal.stats().bad_packets >= 3);
    sim.stop().await;
}
