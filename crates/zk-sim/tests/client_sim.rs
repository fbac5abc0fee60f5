//! Our client against the simulator over real sockets: every operation, both transports, with and without a comm
//! key, every record layout, and the sizes that cross chunk boundaries.

mod common;

use std::time::Duration;

use common::*;
use essl_zk::attendance::RecordLayout;
use essl_zk::user::UserLayout;
use essl_zk::{ErrorKind, RealtimeEvent, Transport, ZkClient};
use essl_zk_sim::fixture::{PunchFixture, UserFixture};
use essl_zk_sim::{Fixture, TerminalConfig, generate};
use jiff::civil::date;

fn as_fixture_users(users: &[essl_zk::user::User]) -> Vec<UserFixture> {
    users.iter().map(UserFixture::from).collect()
}

fn as_fixture_punches(records: &[essl_zk::attendance::AttendanceRecord]) -> Vec<PunchFixture> {
    records.iter().map(PunchFixture::from).collect()
}

#[tokio::test]
async fn everything_round_trips_over_both_transports_with_and_without_key() {
    let fixture = generate::generate(30, 700, 11);
    for key in [0u32, 123_456] {
        let sim = start(&fixture, TerminalConfig { comm_key: key, ..TerminalConfig::default() }).await;
        for transport in BOTH {
            let mut c = ZkClient::connect(sim.addr, client(transport, key)).await.expect("connect");
            let info = c.device_info().await.expect("info");
            assert_eq!(info.serial_number, fixture.device.serial_number);
            assert_eq!(info.device_name, fixture.device.device_name);
            assert_eq!(info.platform, fixture.device.platform);
            assert_eq!(info.firmware, fixture.device.firmware);
            assert_eq!(info.mac, fixture.device.mac);
            assert_eq!(info.sizes.users, 30);
            assert_eq!(info.sizes.records, 700);
            let (layout, users) = c.read_users().await.expect("users");
            assert_eq!(layout, UserLayout::Long72);
            assert_eq!(as_fixture_users(&users), fixture.users, "{transport:?} key {key}");
            let read = c.read_attendance(&mut |_, _| {}).await.expect("attendance");
            assert_eq!(read.layout, RecordLayout::Long40);
            assert_eq!(as_fixture_punches(&read.records), fixture.attendance, "{transport:?} key {key}");
            c.disconnect().await.expect("exit");
        }
        sim.stop().await;
    }
}

#[tokio::test]
async fn record_counts_around_every_boundary() {
    // 0 and 1 record; tables just below, at and above the inline limit and the TCP and UDP chunk sizes.
    for n in [0usize, 1, 25, 26, 409, 410, 1636, 1637, 1638, 3274] {
        let fixture = generate::generate(5, n, n as u64);
        let sim = start(&fixture, TerminalConfig::default()).await;
        for transport in BOTH {
            let mut c = ZkClient::connect(sim.addr, client(transport, 0)).await.expect("connect");
            let read = c.read_attendance(&mut |_, _| {}).await.expect("attendance");
            assert_eq!(as_fixture_punches(&read.records), fixture.attendance, "{n} records over {transport:?}");
        }
        sim.stop().await;
    }
}

#[tokio::test]
async fn one_hundred_thousand_records_with_progress() {
    let fixture = generate::generate(200, 100_000, 3);
    let sim = start(&fixture, TerminalConfig::default()).await;
    for transport in BOTH {
        let mut c = ZkClient::connect(sim.addr, client(transport, 0)).await.expect("connect");
        let mut calls = 0usize;
        let mut last = (0, 0);
        let read = c
            .read_attendance(&mut |done, total| {
                calls += 1;
                last = (done, total);
            })
            .await
            .expect("attendance");
        assert_eq!(read.records.len(), 100_000);
        assert_eq!(as_fixture_punches(&read.records), fixture.attendance, "{transport:?}");
        assert_eq!(last, (4 + 100_000 * 40, 4 + 100_000 * 40));
        assert!(calls > 3, "progress reported per chunk");
    }
    sim.stop().await;
}

#[tokio::test]
async fn every_record_and_user_layout() {
    let fixture = generate::generate(12, 300, 5);
    for layout in [RecordLayout::Short8, RecordLayout::Medium16, RecordLayout::Long40] {
        for user_layout in [UserLayout::Short28, UserLayout::Long72] {
            let config = TerminalConfig { record_layout: layout, user_layout, ..TerminalConfig::default() };
            let sim = start(&fixture, config).await;
            for transport in BOTH {
                let mut c = ZkClient::connect(sim.addr, client(transport, 0)).await.expect("connect");
                let read = c.read_attendance(&mut |_, _| {}).await.expect("attendance");
                assert_eq!(read.layout, layout);
                // Every layout, with the user list, gives back uid and PIN.
                assert_eq!(as_fixture_punches(&read.records), fixture.attendance, "{layout:?}/{user_layout:?}");
                let (got_layout, users) = c.read_users().await.expect("users");
                assert_eq!(got_layout, user_layout);
                assert_eq!(users.len(), 12);
                if user_layout == UserLayout::Long72 {
                    assert_eq!(as_fixture_users(&users), fixture.users);
                } else {
                    // 8-byte names and 4-character passwords on the old firmware.
                    for (u, f) in users.iter().zip(&fixture.users) {
                        assert_eq!((u.uid, &u.user_id, u.card), (f.uid, &f.user_id, f.card));
                        assert!(f.name.starts_with(&u.name));
                    }
                }
            }
            sim.stop().await;
        }
    }
}

#[tokio::test]
async fn non_ascii_names_survive() {
    let mut fixture = generate::generate(3, 0, 1);
    fixture.users[0].name = "Zoë Ñúñez".into();
    fixture.users[1].name = "Анна Петрова".into();
    fixture.users[2].name = "李娜".into();
    let sim = start(&fixture, TerminalConfig::default()).await;
    for transport in BOTH {
        let mut c = ZkClient::connect(sim.addr, client(transport, 0)).await.expect("connect");
        let (_, users) = c.read_users().await.expect("users");
        assert_eq!(as_fixture_users(&users), fixture.users);
    }
    sim.stop().await;
}

#[tokio::test]
async fn clock_get_and_set() {
    let sim = start_generated(2, 2, TerminalConfig::default()).await;
    for transport in BOTH {
        let mut c = ZkClient::connect(sim.addr, client(transport, 0)).await.expect("connect");
        let target = date(2031, 2, 28).at(23, 59, 30, 0);
        c.set_time(target).await.expect("set");
        let got = c.get_time().await.expect("get");
        let drift = target.duration_until(got).as_secs();
        assert!((0..=2).contains(&drift), "clock {got} after setting {target}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn realtime_events_over_both_transports() {
    let sim = start_generated(5, 10, TerminalConfig::default()).await;
    for transport in BOTH {
        let mut c = ZkClient::connect(sim.addr, client(transport, 0)).await.expect("connect");
        c.subscribe_attendance().await.expect("subscribe");
        let record = sim.terminal.punch(2, 1, 0);
        let event = c.next_event(Duration::from_secs(5)).await.expect("event stream").expect("an event");
        match event {
            RealtimeEvent::Attendance(e) => {
                assert_eq!(e.user_id, record.user_id);
                assert_eq!(Some(e.timestamp), record.timestamp.valid());
                assert_eq!((e.status, e.punch), (1, 0));
            }
            other => panic!("unexpected event {other:?}"),
        }
        // Requests still work after events, and nothing more is pending.
        assert!(c.get_time().await.is_ok());
        assert_eq!(c.next_event(Duration::from_millis(100)).await.expect("quiet"), None);
    }
    sim.stop().await;
}

#[tokio::test]
async fn wrong_or_missing_comm_key_is_auth_failure() {
    let sim = start_generated(1, 1, TerminalConfig { comm_key: 4242, ..TerminalConfig::default() }).await;
    for transport in BOTH {
        let err = ZkClient::connect(sim.addr, client(transport, 4243)).await.err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
        let err = ZkClient::connect(sim.addr, client(transport, 0)).await.err().expect("refused");
        assert_eq!(err.kind(), ErrorKind::AuthFailed, "{err}");
    }
    sim.stop().await;
}

#[tokio::test]
async fn clear_enable_disable_restart() {
    let sim = start_generated(3, 50, TerminalConfig::default()).await;
    let mut c = ZkClient::connect(sim.addr, client(Transport::Tcp, 0)).await.expect("connect");
    c.disable_device().await.expect("disable");
    c.enable_device().await.expect("enable");
    c.clear_attendance().await.expect("clear");
    assert_eq!(c.read_sizes().await.expect("sizes").records, 0);
    assert!(c.read_attendance(&mut |_, _| {}).await.expect("empty read").records.is_empty());
    c.restart().await.expect("restart");
    assert_eq!(sim.terminal.record_count(), 0);
    sim.stop().await;
}

#[tokio::test]
async fn fixture_with_explicit_records_round_trips() {
    let fixture: Fixture = Fixture::from_json(
        r#"{"device":{"serial_number":"SN1","device_name":"Front door","platform":"ZEM560","firmware":"Ver 6.60","mac":"00:00:00:00:00:01"},
            "users":[{"uid":1,"user_id":"1001","name":"Ana","privilege":0,"password":"","card":0,"group_id":"1"}],
            "attendance":[{"uid":1,"user_id":"1001","timestamp":"2025-11-24T09:01:02","status":1,"punch":0}]}"#,
    )
    .expect("valid fixture");
    let sim = start(&fixture, TerminalConfig::default()).await;
    let mut c = ZkClient::connect(sim.addr, client(Transport::Udp, 0)).await.expect("connect");
    let read = c.read_attendance(&mut |_, _| {}).await.expect("attendance");
    assert_eq!(as_fixture_punches(&read.records), fixture.attendance);
    assert_eq!(sim.terminal.to_fixture(), fixture);
    sim.stop().await;
}
