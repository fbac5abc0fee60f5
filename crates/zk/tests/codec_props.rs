//! Property tests of the codec: decoders never panic on hostile bytes, lengths from the wire are checked before
//! anything is allocated, the TCP frame decoder survives arbitrary read boundaries, every encoder round-trips
//! through its decoder, and the packet checksum catches every single-bit error.

use essl_zk::attendance::{self, AttendanceRecord, RecordLayout, RecordTime};
use essl_zk::commkey::{make_commkey, verify_commkey};
use essl_zk::event::{self, AttendanceEvent, EventForm};
use essl_zk::frame::{self, MAGIC, MAX_PACKET_LEN, PREFIX_LEN};
use essl_zk::packet::{HEADER_LEN, Packet};
use essl_zk::sizes::FreeSizes;
use essl_zk::user::{self, User, UserLayout};
use essl_zk::{CodecError, text, time};
use jiff::civil::{Date, DateTime, date};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;

const ATT_LAYOUTS: [RecordLayout; 3] = [RecordLayout::Short8, RecordLayout::Medium16, RecordLayout::Long40];
const USER_LAYOUTS: [UserLayout; 2] = [UserLayout::Short28, UserLayout::Long72];

// ---------------------------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------------------------

fn arb_packet(max_payload: usize) -> impl Strategy<Value = Packet> {
    (any::<u16>(), any::<u16>(), any::<u16>(), vec(any::<u8>(), 0..=max_payload))
        .prop_map(|(command, session_id, reply_id, payload)| Packet { command, session_id, reply_id, payload })
}

/// A valid wall-clock time in `years`.
fn arb_datetime(years: std::ops::RangeInclusive<i16>) -> impl Strategy<Value = DateTime> {
    (years, 1i8..=12)
        .prop_flat_map(|(y, m)| {
            let days = date(y, m, 1).days_in_month();
            (Just(y), Just(m), 1..=days, 0i8..24, 0i8..60, 0i8..60)
        })
        .prop_map(|(y, m, d, h, mi, s)| date(y, m, d).at(h, mi, s, 0))
}

/// Text without NUL whose UTF-8 form is at most `max_bytes` long; mixes ASCII, Latin-1 and anything else.
fn arb_text(max_bytes: usize) -> impl Strategy<Value = String> {
    let ch = prop_oneof![
        3 => proptest::char::range(' ', '~'),
        1 => proptest::char::range('\u{a0}', '\u{ff}'),
        1 => any::<char>().prop_filter("no NUL", |c| *c != '\0'),
    ];
    vec(ch, 0..=max_bytes).prop_map(move |chars| {
        let mut s = String::new();
        for c in chars {
            if s.len() + c.len_utf8() > max_bytes {
                break;
            }
            s.push(c);
        }
        s
    })
}

fn arb_record(layout: RecordLayout) -> BoxedStrategy<AttendanceRecord> {
    // Mostly real times, sometimes a raw field that is no date (a corrupt record), which must survive as it is.
    let ts = prop_oneof![
        4 => arb_datetime(2000..=2099).prop_map(RecordTime::Valid),
        1 => any::<u32>().prop_filter_map("no date", |v| time::decode_packed(v).is_err().then_some(RecordTime::Invalid(v))),
    ];
    match layout {
        RecordLayout::Long40 => (any::<u16>(), arb_text(23), ts, any::<u8>(), any::<u8>())
            .prop_map(|(uid, user_id, timestamp, status, punch)| AttendanceRecord {
                uid,
                user_id,
                timestamp,
                status,
                punch,
            })
            .boxed(),
        RecordLayout::Medium16 => (any::<u32>(), ts, any::<u8>(), any::<u8>())
            .prop_map(|(pin, timestamp, status, punch)| AttendanceRecord {
                uid: 0,
                user_id: pin.to_string(),
                timestamp,
                status,
                punch,
            })
            .boxed(),
        RecordLayout::Short8 => (any::<u16>(), ts, any::<u8>(), any::<u8>())
            .prop_map(|(uid, timestamp, status, punch)| AttendanceRecord {
                uid,
                user_id: uid.to_string(),
                timestamp,
                status,
                punch,
            })
            .boxed(),
    }
}

fn arb_user(layout: UserLayout) -> BoxedStrategy<User> {
    match layout {
        UserLayout::Short28 => {
            (any::<u16>(), any::<u8>(), arb_text(4), arb_text(7), any::<u32>(), any::<u8>(), any::<u32>())
                .prop_map(|(uid, privilege, password, name, card, group, pin)| User {
                    uid,
                    privilege,
                    password,
                    name,
                    card,
                    group_id: group.to_string(),
                    user_id: pin.to_string(),
                })
                .boxed()
        }
        UserLayout::Long72 => {
            (any::<u16>(), any::<u8>(), arb_text(7), arb_text(23), any::<u32>(), "[0-9]{0,7}", arb_text(23))
                .prop_map(|(uid, privilege, password, name, card, group_id, user_id)| User {
                    uid,
                    privilege,
                    password,
                    name,
                    card,
                    group_id,
                    user_id,
                })
                .boxed()
        }
    }
}

/// What the 72-byte decoder documents for the group: printable text at byte 40 wins, otherwise byte 39 as a
/// number. The encoder writes the group as text and its `u8` value (or 0) at byte 39, so an empty group comes back
/// as "0".
fn expected_long72_group(group_id: &str) -> String {
    if group_id.is_empty() { "0".to_owned() } else { group_id.to_owned() }
}

/// A table (u32 size, then `n` random records of `size` bytes) whose header matches its body.
fn table_shaped(sizes: &'static [usize]) -> impl Strategy<Value = Vec<u8>> {
    (proptest::sample::select(sizes), 0usize..12).prop_flat_map(|(size, n)| {
        vec(any::<u8>(), size * n).prop_map(|body| {
            let mut t = (body.len() as u32).to_le_bytes().to_vec();
            t.extend_from_slice(&body);
            t
        })
    })
}

/// Arbitrary bytes, plus inputs biased toward what the decoders accept so they get past their first check.
fn hostile_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Plain noise.
        3 => vec(any::<u8>(), 0..4096),
        // TCP magic with a random length field and a random tail.
        2 => (any::<u32>(), vec(any::<u8>(), 0..256)).prop_map(|(len, tail)| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&tail);
            b
        }),
        // TCP magic with a small, plausible length field.
        1 => (0u32..300, vec(any::<u8>(), 0..300)).prop_map(|(len, tail)| {
            let mut b = MAGIC.to_vec();
            b.extend_from_slice(&len.to_le_bytes());
            b.extend_from_slice(&tail);
            b
        }),
        // A packet with a valid checksum.
        2 => arb_packet(512).prop_map(|p| p.encode()),
        // A valid TCP frame, possibly cut short, possibly followed by noise.
        2 => (arb_packet(256), any::<Index>(), vec(any::<u8>(), 0..32)).prop_map(|(p, cut, tail)| {
            let mut b = p.encode_tcp();
            b.truncate(cut.index(b.len() + 1));
            b.extend_from_slice(&tail);
            b
        }),
        // Tables whose header matches the body, for both record families.
        1 => table_shaped(&[8, 16, 40, 24, 80, 120]),
        1 => table_shaped(&[28, 72, 56, 144, 504]),
        // Event payloads of the lengths the decoder knows, and their neighbours.
        1 => proptest::sample::select(vec![9usize, 10, 11, 12, 13, 14, 15, 31, 32, 33, 36, 37, 38, 51, 52, 60])
            .prop_flat_map(|n| vec(any::<u8>(), n)),
        // Free-sizes blocks around their two lengths.
        1 => (76usize..100).prop_flat_map(|n| vec(any::<u8>(), n)),
    ]
}

fn arb_count_hint() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![
        Just(None),
        Just(Some(0)),
        (1usize..200).prop_map(Some),
        Just(Some(usize::MAX)),
        any::<usize>().prop_map(Some),
    ]
}

/// The accumulate-and-decode loop the TCP client runs: append what a read returned, then take out every complete
/// frame.
fn feed(buf: &mut Vec<u8>, piece: &[u8], out: &mut Vec<Packet>) -> Result<(), CodecError> {
    buf.extend_from_slice(piece);
    while let Some((packet, used)) = frame::decode_tcp_frame(buf)? {
        assert!(used >= PREFIX_LEN + HEADER_LEN && used <= buf.len(), "used {used} of {}", buf.len());
        buf.drain(..used);
        out.push(packet);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------------------------
// Decoders never panic
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decoders_never_panic(bytes in hostile_bytes(), hint in arb_count_hint()) {
        let b = bytes.as_slice();

        match Packet::decode_unverified(b) {
            Ok(p) => prop_assert_eq!(p.wire_len(), b.len()),
            Err(e) => prop_assert_eq!(e, CodecError::Short { len: b.len(), need: HEADER_LEN }),
        }
        if let Ok(p) = Packet::decode(b) {
            // A packet that verifies re-encodes to exactly the same bytes.
            prop_assert_eq!(p.encode(), bytes.clone());
        }

        let _ = frame::frame_len(b);
        match frame::decode_tcp_frame(b) {
            Ok(Some((p, used))) => {
                prop_assert!(used <= b.len());
                prop_assert_eq!(p.encode_tcp(), b[..used].to_vec());
            }
            Ok(None) => {
                // Only a prefix of a frame that could still become valid asks for more bytes.
                if b.len() >= PREFIX_LEN {
                    let len = frame::frame_len(b).expect("Ok(None) implies a valid header");
                    prop_assert!(matches!(len, Some(n) if b.len() < PREFIX_LEN + n));
                }
            }
            Err(_) => {}
        }

        for layout in ATT_LAYOUTS {
            match attendance::decode_record(layout, b) {
                Err(CodecError::RecordLength { len, expected, .. }) => {
                    prop_assert_eq!((len, expected), (b.len(), layout.size()));
                }
                other => prop_assert_eq!(b.len(), layout.size(), "{:?}", other),
            }
            if let Some(rec) = b.get(..layout.size()) {
                let _ = attendance::decode_record(layout, rec);
            }
        }
        if let Ok((layout, recs)) = attendance::decode_table(b, hint) {
            prop_assert_eq!(recs.len() * layout.size(), b.len() - 4);
        }

        for layout in USER_LAYOUTS {
            match user::decode_record(layout, b) {
                Err(CodecError::RecordLength { len, expected, .. }) => {
                    prop_assert_eq!((len, expected), (b.len(), layout.size()));
                }
                other => prop_assert_eq!(b.len(), layout.size(), "{:?}", other),
            }
            if let Some(rec) = b.get(..layout.size()) {
                let _ = user::decode_record(layout, rec);
            }
        }
        if let Ok((layout, users)) = user::decode_table(b, hint) {
            prop_assert_eq!(users.len() * layout.size(), b.len() - 4);
        }

        match FreeSizes::decode(b) {
            Ok(s) => {
                prop_assert!(b.len() >= FreeSizes::SHORT_LEN);
                prop_assert_eq!(s.faces.is_some(), b.len() >= FreeSizes::LONG_LEN);
            }
            Err(e) => prop_assert_eq!(e, CodecError::Short { len: b.len(), need: FreeSizes::SHORT_LEN }),
        }

        let _ = event::decode_attendance_event(b);
        let _ = time::decode_event_time(b);
        if let Some(word) = b.get(..4) {
            let _ = time::decode_packed(u32::from_le_bytes([word[0], word[1], word[2], word[3]]));
        }

        let s = text::decode(b);
        prop_assert!(!s.contains('\0'));
        let cut = &b[..b.iter().position(|&x| x == 0).unwrap_or(b.len())];
        if let Ok(utf8) = std::str::from_utf8(cut) {
            prop_assert_eq!(s, utf8);
        } else {
            // The single-byte fallback keeps one character per byte.
            prop_assert_eq!(s.chars().count(), cut.len());
        }
    }

    #[test]
    fn every_packed_u32_decodes_to_its_inverse_or_an_error(v in any::<u32>()) {
        if let Ok(dt) = time::decode_packed(v) {
            if dt.year() <= 2099 {
                prop_assert_eq!(time::encode_packed(dt), Ok(v));
            } else {
                prop_assert!(time::encode_packed(dt).is_err());
            }
        }
    }

    #[test]
    fn event_time_bytes_decode_to_their_inverse_or_an_error(raw in any::<[u8; 6]>(), tail in vec(any::<u8>(), 0..4)) {
        let mut b = raw.to_vec();
        b.extend_from_slice(&tail);
        match time::decode_event_time(&b) {
            Ok(dt) => prop_assert_eq!(time::encode_event_time(dt), Ok(raw)),
            Err(e) => prop_assert_eq!(e, CodecError::BadEventTime(raw)),
        }
        for n in 0..6 {
            prop_assert_eq!(time::decode_event_time(&b[..n]), Err(CodecError::Short { len: n, need: 6 }));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Lengths from the wire are checked before use
// ---------------------------------------------------------------------------------------------------------------

fn prefix(len: u32) -> Vec<u8> {
    let mut b = MAGIC.to_vec();
    b.extend_from_slice(&len.to_le_bytes());
    b
}

#[test]
fn u32_max_frame_length_is_refused_at_once() {
    let b = prefix(u32::MAX);
    let want = CodecError::FrameTooLarge { len: u32::MAX as usize, max: MAX_PACKET_LEN };
    assert_eq!(frame::frame_len(&b), Err(want.clone()));
    assert_eq!(frame::decode_tcp_frame(&b), Err(want));
}

#[test]
fn the_largest_allowed_frame_decodes() {
    let p = Packet::new(1501, 7, 9).with_payload(vec![0xA5; MAX_PACKET_LEN - HEADER_LEN]);
    let b = p.encode_tcp();
    assert_eq!(frame::frame_len(&b), Ok(Some(MAX_PACKET_LEN)));
    assert_eq!(frame::decode_tcp_frame(&b), Ok(Some((p, b.len()))));
    assert_eq!(frame::decode_tcp_frame(&b[..b.len() - 1]), Ok(None));
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn oversized_frame_lengths_are_errors_without_more_bytes(
        len in (MAX_PACKET_LEN as u32 + 1)..=u32::MAX,
        tail in vec(any::<u8>(), 0..64),
    ) {
        let want = CodecError::FrameTooLarge { len: len as usize, max: MAX_PACKET_LEN };
        let mut b = prefix(len);
        // The 8-byte prefix alone is enough to refuse it: the decoder does not ask for more.
        prop_assert_eq!(frame::frame_len(&b), Err(want.clone()));
        prop_assert_eq!(frame::decode_tcp_frame(&b), Err(want.clone()));
        b.extend_from_slice(&tail);
        prop_assert_eq!(frame::frame_len(&b), Err(want.clone()));
        prop_assert_eq!(frame::decode_tcp_frame(&b), Err(want));
    }

    #[test]
    fn undersized_frame_lengths_are_errors(len in 0u32..HEADER_LEN as u32, tail in vec(any::<u8>(), 0..64)) {
        let mut b = prefix(len);
        b.extend_from_slice(&tail);
        prop_assert_eq!(frame::decode_tcp_frame(&b), Err(CodecError::FrameTooSmall(len as usize)));
    }

    #[test]
    fn plausible_frame_lengths_wait_for_exactly_their_bytes(
        len in HEADER_LEN as u32..=MAX_PACKET_LEN as u32,
        have in any::<Index>(),
    ) {
        // Only the prefix and fewer than `len` bytes: more bytes are needed, nothing is decoded yet.
        let mut b = prefix(len);
        b.resize(PREFIX_LEN + have.index(len as usize), 0);
        prop_assert_eq!(frame::frame_len(&b), Ok(Some(len as usize)));
        prop_assert_eq!(frame::decode_tcp_frame(&b), Ok(None));
    }

    #[test]
    fn wrong_magic_is_an_error_once_the_prefix_is_there(
        magic in any::<[u8; 4]>().prop_filter("not the magic", |m| *m != MAGIC),
        rest in vec(any::<u8>(), 4..64),
    ) {
        let mut b = magic.to_vec();
        b.extend_from_slice(&rest);
        prop_assert_eq!(frame::decode_tcp_frame(&b), Err(CodecError::BadMagic(magic)));
    }

    #[test]
    fn table_sizes_that_disagree_with_the_buffer_are_refused(
        (body, declared) in vec(any::<u8>(), 0..512).prop_flat_map(|body| {
            let n = body.len() as i64;
            let declared = prop_oneof![
                any::<u32>(),
                (-80i64..=80).prop_map(move |d| (n + d).clamp(0, i64::from(u32::MAX)) as u32),
                Just(u32::MAX),
                0u32..4096,
            ];
            (Just(body), declared)
        }),
        hint in arb_count_hint(),
    ) {
        prop_assume!(declared as usize != body.len());
        let mut b = declared.to_le_bytes().to_vec();
        b.extend_from_slice(&body);
        let att = attendance::decode_table(&b, hint);
        prop_assert_eq!(
            att,
            Err(CodecError::SizeMismatch { what: "attendance table", declared: declared as usize, actual: body.len() })
        );
        let users = user::decode_table(&b, hint);
        prop_assert_eq!(
            users,
            Err(CodecError::SizeMismatch { what: "user table", declared: declared as usize, actual: body.len() })
        );
    }

    #[test]
    fn tables_shorter_than_their_header_are_refused(b in vec(any::<u8>(), 0..4), hint in arb_count_hint()) {
        let short = CodecError::Short { len: b.len(), need: 4 };
        prop_assert_eq!(attendance::decode_table(&b, hint), Err(short.clone()));
        prop_assert_eq!(user::decode_table(&b, hint), Err(short));
    }
}

#[test]
fn u32_max_table_size_is_a_size_mismatch() {
    for body in [vec![], vec![0u8; 40], vec![0u8; 72]] {
        let mut b = u32::MAX.to_le_bytes().to_vec();
        b.extend_from_slice(&body);
        for hint in [None, Some(1), Some(usize::MAX)] {
            assert!(matches!(
                attendance::decode_table(&b, hint),
                Err(CodecError::SizeMismatch { declared, actual, .. }) if declared == u32::MAX as usize && actual == body.len()
            ));
            assert!(matches!(
                user::decode_table(&b, hint),
                Err(CodecError::SizeMismatch { declared, actual, .. }) if declared == u32::MAX as usize && actual == body.len()
            ));
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Streaming
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn frames_survive_arbitrary_read_boundaries(
        packets in vec(arb_packet(300), 1..8),
        cuts in vec(any::<Index>(), 0..24),
    ) {
        let mut stream = Vec::new();
        for p in &packets {
            frame::encode_tcp_into(p, &mut stream);
        }
        let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
        cuts.push(0);
        cuts.push(stream.len());
        cuts.sort_unstable();

        let mut buf = Vec::new();
        let mut out = Vec::new();
        for w in cuts.windows(2) {
            feed(&mut buf, &stream[w[0]..w[1]], &mut out).expect("a well-formed stream never errors");
        }
        prop_assert!(buf.is_empty(), "{} bytes left over", buf.len());
        prop_assert_eq!(out, packets);
    }

    #[test]
    fn frames_survive_byte_at_a_time_reads(packets in vec(arb_packet(64), 1..4)) {
        let mut stream = Vec::new();
        for p in &packets {
            frame::encode_tcp_into(p, &mut stream);
        }
        let mut buf = Vec::new();
        let mut out = Vec::new();
        for byte in &stream {
            feed(&mut buf, std::slice::from_ref(byte), &mut out).expect("a well-formed stream never errors");
        }
        prop_assert!(buf.is_empty());
        prop_assert_eq!(out, packets);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Round trips
// ---------------------------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn packet_round_trips(p in arb_packet(1024)) {
        let bare = p.encode();
        prop_assert_eq!(bare.len(), p.wire_len());
        prop_assert_eq!(Packet::decode(&bare), Ok(p.clone()));
        prop_assert_eq!(Packet::decode_unverified(&bare), Ok(p.clone()));
        let tcp = p.encode_tcp();
        prop_assert_eq!(&tcp[PREFIX_LEN..], &bare[..]);
        prop_assert_eq!(frame::decode_tcp_frame(&tcp), Ok(Some((p, tcp.len()))));
    }

    #[test]
    fn packed_time_round_trips(dt in arb_datetime(2000..=2099)) {
        let v = time::encode_packed(dt).expect("in range");
        prop_assert_eq!(time::decode_packed(v), Ok(dt));
    }

    #[test]
    fn packed_time_refuses_years_terminals_cannot_store(
        dt in prop_oneof![arb_datetime(1000..=1999), arb_datetime(2100..=9999)],
    ) {
        prop_assert!(matches!(time::encode_packed(dt), Err(CodecError::TimeOutOfRange(_))));
    }

    #[test]
    fn event_time_round_trips(dt in arb_datetime(2000..=2255)) {
        let b = time::encode_event_time(dt).expect("in range");
        prop_assert_eq!(time::decode_event_time(&b), Ok(dt));
    }

    #[test]
    fn attendance_events_round_trip(
        pin in any::<u16>(),
        text_pin in arb_text(23),
        status in any::<u8>(),
        punch in any::<u8>(),
        timestamp in arb_datetime(2000..=2255),
    ) {
        let short = AttendanceEvent { user_id: pin.to_string(), status, punch, timestamp };
        let p = event::encode_attendance_event(EventForm::Short10, &short).expect("encodes");
        prop_assert_eq!(p.len(), 10);
        prop_assert_eq!(event::decode_attendance_event(&p), Ok(short));
        let long = AttendanceEvent { user_id: text_pin, status, punch, timestamp };
        let p = event::encode_attendance_event(EventForm::Text36, &long).expect("encodes");
        prop_assert_eq!(p.len(), 36);
        prop_assert_eq!(event::decode_attendance_event(&p), Ok(long));
    }

    #[test]
    fn free_sizes_round_trip(ints in any::<[i32; 12]>(), faces in any::<Option<(i32, i32)>>()) {
        let s = FreeSizes {
            users: ints[0],
            fingers: ints[1],
            records: ints[2],
            oplogs: ints[3],
            admins: ints[4],
            passwords: ints[5],
            fingers_cap: ints[6],
            users_cap: ints[7],
            records_cap: ints[8],
            fingers_av: ints[9],
            users_av: ints[10],
            records_av: ints[11],
            faces: faces.map(|f| f.0),
            faces_cap: faces.map(|f| f.1),
        };
        let b = s.encode();
        let want_len = if faces.is_some() { FreeSizes::LONG_LEN } else { FreeSizes::SHORT_LEN };
        prop_assert_eq!(b.len(), want_len);
        prop_assert_eq!(FreeSizes::decode(&b), Ok(s));
    }

    #[test]
    fn commkey_verifies(key in any::<u32>(), session in any::<u16>(), ticks in any::<u8>()) {
        let payload = make_commkey(key, session, ticks);
        prop_assert_eq!(payload[2], ticks);
        prop_assert!(verify_commkey(&payload, key, session));
        for n in 0..4 {
            prop_assert!(!verify_commkey(&payload[..n], key, session));
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn attendance_tables_round_trip(
        (layout, records) in proptest::sample::select(ATT_LAYOUTS.to_vec())
            .prop_flat_map(|l| (Just(l), vec(arb_record(l), 0..24))),
    ) {
        let table = attendance::encode_table(layout, &records).expect("encodes");
        prop_assert_eq!(table.len(), 4 + records.len() * layout.size());
        let (got_layout, got) = attendance::decode_table(&table, Some(records.len())).expect("decodes");
        if !records.is_empty() {
            prop_assert_eq!(got_layout, layout);
        }
        prop_assert_eq!(got, records);
    }

    /// Whatever the record bytes, a well-framed table gives back every record, in order: a time field that is no
    /// date is kept raw (and written back byte for byte), never a reason to drop the record or the table.
    #[test]
    fn decoding_never_drops_a_record_of_a_well_framed_table(
        (layout, bodies) in proptest::sample::select(ATT_LAYOUTS.to_vec())
            .prop_flat_map(|l| (Just(l), vec(vec(any::<u8>(), l.size()), 1..40))),
        hinted in any::<bool>(),
    ) {
        let count = bodies.len();
        let mut table = ((count * layout.size()) as u32).to_le_bytes().to_vec();
        for b in &bodies {
            table.extend_from_slice(b);
        }
        // With the terminal's record count the layout is known; without it, a size that also divides the table
        // may be picked, but still no byte of it is dropped.
        let (got_layout, records) = attendance::decode_table(&table, hinted.then_some(count)).expect("a well-framed table decodes");
        prop_assert_eq!(records.len() * got_layout.size(), count * layout.size());
        if hinted {
            prop_assert_eq!(got_layout, layout);
            prop_assert_eq!(records.len(), count);
            let at = match layout {
                RecordLayout::Short8 => 3,
                RecordLayout::Medium16 => 4,
                RecordLayout::Long40 => 27,
            };
            for (r, b) in records.iter().zip(&bodies) {
                let raw = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
                match time::decode_packed(raw) {
                    Ok(t) => prop_assert_eq!(r.timestamp, RecordTime::Valid(t)),
                    Err(_) => prop_assert_eq!(r.timestamp, RecordTime::Invalid(raw)),
                }
                prop_assert_eq!(r.timestamp.to_packed(), Ok(raw));
            }
            // The 8- and 16-byte layouts keep every byte that means something: they re-encode exactly.
            if layout != RecordLayout::Long40 {
                let again = attendance::encode_table(layout, &records).expect("re-encodes");
                let mut want = table.clone();
                if layout == RecordLayout::Medium16 {
                    // Bytes 10..16 (reserved, work code) are not kept.
                    for rec in want[4..].chunks_exact_mut(16) {
                        rec[10..].fill(0);
                    }
                }
                prop_assert_eq!(again, want);
            }
        }
    }

    #[test]
    fn user_tables_round_trip(
        (layout, users) in proptest::sample::select(USER_LAYOUTS.to_vec())
            .prop_flat_map(|l| (Just(l), vec(arb_user(l), 0..16))),
    ) {
        let table = user::encode_table(layout, &users);
        prop_assert_eq!(table.len(), 4 + users.len() * layout.size());
        let (got_layout, got) = user::decode_table(&table, Some(users.len())).expect("decodes");
        if !users.is_empty() {
            prop_assert_eq!(got_layout, layout);
        }
        let want: Vec<User> = match layout {
            UserLayout::Short28 => users,
            UserLayout::Long72 => users
                .into_iter()
                .map(|u| User { group_id: expected_long72_group(&u.group_id), ..u })
                .collect(),
        };
        prop_assert_eq!(got, want);
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Exhaustive checks
// ---------------------------------------------------------------------------------------------------------------

/// Every date 2000-01-01..=2099-12-31 at three times of day round-trips, and the packed value grows with time.
#[test]
fn every_storable_date_round_trips_packed() {
    let mut day = date(2000, 1, 1);
    let last = date(2099, 12, 31);
    let mut prev: Option<u32> = None;
    loop {
        for (h, m, s) in [(0, 0, 0), (12, 34, 56), (23, 59, 59)] {
            let dt = day.at(h, m, s, 0);
            let v = time::encode_packed(dt).expect("in range");
            assert_eq!(time::decode_packed(v), Ok(dt), "{dt} -> {v:#x}");
            assert!(prev.is_none_or(|p| p < v), "{dt}: {v} not after {prev:?}");
            prev = Some(v);
        }
        if day == last {
            break;
        }
        day = day.tomorrow().expect("before 9999");
    }
    assert_eq!(prev, Some(3_214_079_999), "the notes' maximum");
    assert!(time::encode_packed(Date::MIN.at(0, 0, 0, 0)).is_err());
}

// ---------------------------------------------------------------------------------------------------------------
// Checksum
// ---------------------------------------------------------------------------------------------------------------

/// The checksum as RFC 1071 writes it: add every little-endian word (bytes 2..4 counted as zero, a lone last byte
/// as the low byte of a word) in a wide accumulator, fold the carries back in at the end, complement.
fn reference_checksum(bytes: &[u8]) -> u16 {
    let mut sum: u64 = 0;
    for (i, pair) in bytes.chunks(2).enumerate() {
        if i != 1 {
            sum += u64::from(pair[0]) + (u64::from(pair.get(1).copied().unwrap_or(0)) << 8);
        }
    }
    while sum > 0xFFFF {
        sum = (sum & 0xFFFF) + (sum >> 16);
    }
    !(sum as u16)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn checksum_matches_the_rfc_1071_reference(
        bytes in prop_oneof![
            vec(any::<u8>(), 0..2048),
            // Mostly 0xFF, so the running sum keeps carrying.
            vec(prop_oneof![9 => Just(0xFFu8), 1 => any::<u8>()], 0..2048),
            vec(Just(0u8), 0..16),
        ],
    ) {
        prop_assert_eq!(essl_zk::packet::checksum(&bytes), reference_checksum(&bytes));
    }

    /// Ones'-complement sums detect every single-bit error: any flipped bit anywhere in the packet (header, payload,
    /// odd trailing byte, or the checksum field itself) is a checksum mismatch.
    #[test]
    fn every_single_bit_flip_is_caught(p in arb_packet(200)) {
        let good = p.encode();
        for bit in 0..good.len() * 8 {
            let mut bad = good.clone();
            bad[bit / 8] ^= 1 << (bit % 8);
            let res = Packet::decode(&bad);
            prop_assert!(
                matches!(res, Err(CodecError::Checksum { .. })),
                "flipping bit {} of {:02x?} gave {:?}", bit, good, res
            );
            prop_assert_ne!(res, Ok(p.clone()));
        }
    }
}

/// The same, exhaustively, on the packets where a ones'-complement sum is most fragile: all-zero and all-0xFF
/// contents (where the sum sits on 0 / 0xFFFF), even and odd lengths.
#[test]
fn single_bit_flips_are_caught_on_degenerate_packets() {
    for fill in [0x00u8, 0xFF] {
        for payload_len in 0..=9 {
            let w = u16::from(fill) * 257;
            let p = Packet { command: w, session_id: w, reply_id: w, payload: vec![fill; payload_len] };
            let good = p.encode();
            assert_eq!(Packet::decode(&good), Ok(p.clone()));
            for bit in 0..good.len() * 8 {
                let mut bad = good.clone();
                bad[bit / 8] ^= 1 << (bit % 8);
                assert!(
                    matches!(Packet::decode(&bad), Err(CodecError::Checksum { .. })),
                    "fill {fill:#x} len {payload_len} bit {bit}"
                );
            }
        }
    }
}
