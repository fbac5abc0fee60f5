//! Properties of the wire codec: every message round-trips; arbitrary bytes never panic and are refused cleanly.

use essl_wire::*;
use proptest::prelude::*;

fn text() -> impl Strategy<Value = String> {
    proptest::string::string_regex("[ -~é李\u{0}]{0,24}").expect("regex")
}

fn punch() -> impl Strategy<Value = Punch> {
    (any::<u16>(), text(), text(), any::<u8>(), any::<u8>(), proptest::option::of(any::<u32>())).prop_map(
        |(uid, user_id, local_time, status, punch, raw_time)| Punch {
            uid,
            user_id,
            local_time,
            status,
            punch,
            raw_time,
        },
    )
}

fn user() -> impl Strategy<Value = DeviceUser> {
    (any::<u16>(), text(), text(), any::<u8>(), any::<u32>(), text()).prop_map(
        |(uid, user_id, name, privilege, card, group_id)| DeviceUser { uid, user_id, name, privilege, card, group_id },
    )
}

fn outbox_fill() -> impl Strategy<Value = OutboxFill> {
    (any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()).prop_map(
        |(bytes, limit_bytes, pending_records, pending_batches)| OutboxFill {
            bytes,
            limit_bytes,
            pending_records,
            pending_batches,
        },
    )
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        Just(Op::Probe),
        Just(Op::SyncAttendance),
        Just(Op::ReadUsers),
        Just(Op::DeviceInfo),
        Just(Op::GetTime),
        text().prop_map(|local_time| Op::SetTime { local_time }),
        any::<bool>().prop_map(|sync_first| Op::ClearAttendance { sync_first }),
    ]
}

fn error_kind() -> impl Strategy<Value = ErrorKind> {
    prop_oneof![
        Just(ErrorKind::Unreachable),
        Just(ErrorKind::AuthFailed),
        Just(ErrorKind::Busy),
        Just(ErrorKind::Protocol),
        Just(ErrorKind::UnknownDevice),
        Just(ErrorKind::Cancelled),
        Just(ErrorKind::Internal),
        Just(ErrorKind::NotConfirmed),
    ]
}

fn outcome() -> impl Strategy<Value = Outcome> {
    prop_oneof![
        any::<u64>().prop_map(|rtt_us| Outcome::Ok(OpResult::Probe { rtt_us })),
        (any::<u64>(), any::<u64>(), any::<Option<u64>>(), proptest::option::of(text())).prop_map(
            |(records, batches, read, reset)| Outcome::Ok(OpResult::Synced { records, batches, read, reset })
        ),
        text().prop_map(|local_time| Outcome::Ok(OpResult::Time { local_time })),
        Just(Outcome::Ok(OpResult::Done)),
        any::<u64>().prop_map(|records| Outcome::Ok(OpResult::Cleared { records })),
        (error_kind(), text()).prop_map(|(kind, message)| Outcome::Err(OpError { kind, message })),
    ]
}

fn agent_msg() -> impl Strategy<Value = AgentMsg> {
    prop_oneof![
        (any::<u16>(), any::<u16>(), text(), text(), text()).prop_map(|(a, b, v, h, o)| AgentMsg::Hello {
            min_protocol: a,
            max_protocol: b,
            agent_version: v,
            hostname: h,
            os: o
        }),
        (any::<u64>(), outcome()).prop_map(|(id, outcome)| AgentMsg::Response { id, outcome }),
        (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(id, done, total)| AgentMsg::Progress { id, done, total }),
        proptest::collection::vec(
            (text(), any::<bool>(), proptest::option::of(any::<u64>()), any::<i64>(), proptest::option::of(text())),
            0..5
        )
        .prop_flat_map(|v| (Just(v), proptest::option::of(outbox_fill())))
        .prop_map(|(v, outbox)| AgentMsg::Reachability {
            outbox,
            reports: v
                .into_iter()
                .map(|(device, reachable, rtt_us, checked_at_ms, error)| Reach {
                    device,
                    reachable,
                    rtt_us,
                    checked_at_ms,
                    error
                })
                .collect()
        }),
        (
            any::<u64>(),
            text(),
            proptest::option::of(any::<u64>()),
            proptest::collection::vec(punch(), 0..20),
            proptest::option::of(proptest::collection::vec(user(), 0..8))
        )
            .prop_map(|(batch, device, request, records, users)| AgentMsg::Punches {
                batch,
                device,
                request,
                records,
                users
            }),
        (any::<u64>(), any::<u64>(), any::<u64>(), proptest::option::of(text()), proptest::option::of(text()))
            .prop_map(|(id, records, keys, first_local_time, last_local_time)| AgentMsg::ConfirmStored {
                id,
                records,
                keys,
                first_local_time,
                last_local_time
            }),
    ]
}

fn server_msg() -> impl Strategy<Value = ServerMsg> {
    prop_oneof![
        (any::<u64>(), text(), op()).prop_map(|(id, device, op)| ServerMsg::Request { id, device, op }),
        any::<u64>().prop_map(|id| ServerMsg::Cancel { id }),
        any::<u64>().prop_map(|batch| ServerMsg::Ack { batch }),
        (any::<u64>(), any::<bool>(), proptest::option::of(text()))
            .prop_map(|(id, confirmed, reason)| ServerMsg::Stored { id, confirmed, reason }),
        (any::<u64>(), text()).prop_map(|(batch, error)| ServerMsg::Nack { batch, error }),
        (any::<u16>(), text(), text(), any::<u64>()).prop_map(|(protocol, agent_id, site, probe_interval_ms)| {
            ServerMsg::Welcome {
                protocol,
                agent_id,
                site,
                devices: vec![DeviceSpec {
                    id: "d".into(),
                    name: "n".into(),
                    addr: "127.0.0.1:4370".into(),
                    udp: false,
                    comm_key: 0,
                }],
                probe_interval_ms,
            }
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn agent_messages_round_trip(msg in agent_msg()) {
        let bytes = encode_agent(&msg).expect("encodes");
        prop_assert_eq!(decode_agent(&bytes).expect("decodes"), msg);
    }

    #[test]
    fn server_messages_round_trip(msg in server_msg()) {
        let bytes = encode_server(&msg).expect("encodes");
        prop_assert_eq!(decode_server(&bytes).expect("decodes"), msg);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
        let _ = decode_agent(&bytes);
        let _ = decode_server(&bytes);
    }

    #[test]
    fn truncated_and_mutated_messages_never_panic(msg in agent_msg(), cut in any::<prop::sample::Index>(), flip in any::<prop::sample::Index>(), x in any::<u8>()) {
        let mut bytes = encode_agent(&msg).expect("encodes");
        let at = flip.index(bytes.len().max(1)).min(bytes.len().saturating_sub(1));
        if !bytes.is_empty() {
            bytes[at] ^= x;
        }
        let _ = decode_agent(&bytes);
        let end = cut.index(bytes.len() + 1);
        let _ = decode_agent(&bytes[..end]);
    }
}

#[test]
fn lying_lengths_do_not_allocate() {
    // MessagePack headers claiming huge strings, arrays and maps, with nothing behind them.
    for bytes in [
        &[0xdb, 0xff, 0xff, 0xff, 0xff][..], // str32 of 4 GiB
        &[0xdd, 0xff, 0xff, 0xff, 0xff],     // array32 of 4 G elements
        &[0xdf, 0xff, 0xff, 0xff, 0xff],     // map32 of 4 G entries
        &[0x81, 0xa8, b'P', b'u', b'n', b'c', b'h', b'e', b's', 0xdd, 0xff, 0xff, 0xff, 0xff],
        &[0xc6, 0xff, 0xff, 0xff, 0xff], // bin32 of 4 GiB
    ] {
        assert!(decode_agent(bytes).is_err());
        assert!(decode_server(bytes).is_err());
    }
    // Deep nesting is refused, not a stack overflow.
    let deep = vec![0x91u8; 100_000];
    assert!(decode_agent(&deep).is_err());
}

#[test]
fn oversized_messages_are_refused_both_ways() {
    let huge = AgentMsg::Punches {
        batch: 1,
        device: "d".into(),
        request: None,
        records: vec![
            Punch {
                uid: 1,
                user_id: "x".repeat(100),
                local_time: "2025-01-01T00:00:00".into(),
                status: 1,
                punch: 0,
                raw_time: None
            };
            40_000
        ],
        users: None,
    };
    assert!(matches!(encode_agent(&huge), Err(WireError::TooLarge(_))));
    assert!(matches!(decode_agent(&vec![0u8; MAX_MESSAGE_BYTES + 1]), Err(WireError::TooLarge(_))));
}
