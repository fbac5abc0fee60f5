//! Record and reply payloads: attendance and user tables, single records, the free-sizes block, realtime events
//! and the time encodings.
//!
//! The first byte picks the count hint (0: none, 255: usize::MAX, else its value); the rest is the payload. Tables
//! are decoded as given and again with a header that matches the body, so the record decoders are reached even
//! when the fuzzer has not guessed the size field.

#![no_main]

use essl_zk::attendance::{self, RecordLayout};
use essl_zk::event;
use essl_zk::sizes::FreeSizes;
use essl_zk::user::{self, UserLayout};
use essl_zk::{text, time};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let hint = match first {
        0 => None,
        255 => Some(usize::MAX),
        n => Some(usize::from(n)),
    };

    let mut fixed = (rest.len() as u32).to_le_bytes().to_vec();
    fixed.extend_from_slice(rest);
    for table in [rest, fixed.as_slice()] {
        if let Ok((layout, records)) = attendance::decode_table(table, hint) {
            assert_eq!(records.len() * layout.size(), table.len() - 4);
            // The 8- and 16-byte layouts hold every decoded field exactly, so they re-encode losslessly; a time
            // field that is no date is kept raw and written back as it was, so every decoded table re-encodes.
            let exact = matches!(layout, RecordLayout::Short8 | RecordLayout::Medium16);
            let again = attendance::encode_table(layout, &records).expect("decoded records re-encode");
            if exact && !records.is_empty() {
                let (_, back) = attendance::decode_table(&again, Some(records.len())).expect("re-decodes");
                assert_eq!(back, records);
            }
        }
        if let Ok((layout, users)) = user::decode_table(table, hint) {
            assert_eq!(users.len() * layout.size(), table.len() - 4);
        }
    }
    for layout in [RecordLayout::Short8, RecordLayout::Medium16, RecordLayout::Long40] {
        if let Some(rec) = rest.get(..layout.size()) {
            let _ = attendance::decode_record(layout, rec);
        }
    }
    for layout in [UserLayout::Short28, UserLayout::Long72] {
        if let Some(rec) = rest.get(..layout.size()) {
            let _ = user::decode_record(layout, rec);
        }
    }

    if let Ok(sizes) = FreeSizes::decode(rest) {
        assert_eq!(sizes.faces.is_some(), rest.len() >= FreeSizes::LONG_LEN);
        if sizes.faces.is_some() == sizes.faces_cap.is_some() {
            assert_eq!(FreeSizes::decode(&sizes.encode()), Ok(sizes));
        }
    }

    let _ = event::decode_attendance_event(rest);
    if let Ok(t) = time::decode_event_time(rest) {
        assert_eq!(time::encode_event_time(t).ok().as_ref(), rest.get(..6).and_then(|b| <&[u8; 6]>::try_from(b).ok()));
    }
    if let Some(b) = rest.get(..4) {
        let v = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        if let Ok(t) = time::decode_packed(v)
            && t.year() <= 2099
        {
            assert_eq!(time::encode_packed(t), Ok(v));
        }
    }
    let s = text::decode(rest);
    assert!(!s.contains('\0'));
});
