//! Realtime events (zk-protocol.md §10): the attendance-event payloads, told apart by their length.

use jiff::civil::DateTime;

use crate::error::CodecError;
use crate::{text, time};

/// A punch announced as it happens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttendanceEvent {
    pub user_id: String,
    /// Verify type, as in attendance records.
    pub status: u8,
    /// Punch state, as in attendance records.
    pub punch: u8,
    pub timestamp: DateTime,
}

/// Decodes an `EF_ATTLOG` payload of any length pyzk knows (10, 12, 14, 32, 36, 37, 52 and longer).
pub fn decode_attendance_event(p: &[u8]) -> Result<AttendanceEvent, CodecError> {
    let (user_id, at) = match p.len() {
        10 | 14 => (u16::from_le_bytes([p[0], p[1]]).to_string(), 2),
        12 => (u32::from_le_bytes([p[0], p[1], p[2], p[3]]).to_string(), 4),
        32 | 36 | 37 => (text::decode(&p[..24]), 24),
        n if n >= 52 => (text::decode(&p[..24]), 24),
        n => return Err(CodecError::EventLength(n)),
    };
    Ok(AttendanceEvent {
        user_id,
        status: p[at],
        punch: p[at + 1],
        timestamp: time::decode_event_time(&p[at + 2..at + 8])?,
    })
}

/// The event forms a terminal may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventForm {
    /// 10 bytes: u16 PIN (some UDP terminals; pyzk 0.9 ignores this form).
    Short10,
    /// 12 bytes: u32 PIN (UDP terminals).
    Numeric12,
    /// 36 bytes: 24-byte PIN and 4 trailing bytes (TCP terminals).
    Text36,
}

/// Encodes an attendance event payload.
pub fn encode_attendance_event(form: EventForm, e: &AttendanceEvent) -> Result<Vec<u8>, CodecError> {
    let t = time::encode_event_time(e.timestamp)?;
    let mut out = Vec::with_capacity(36);
    match form {
        EventForm::Short10 => out.extend_from_slice(&e.user_id.parse::<u16>().unwrap_or(0).to_le_bytes()),
        EventForm::Numeric12 => out.extend_from_slice(&e.user_id.parse::<u32>().unwrap_or(0).to_le_bytes()),
        EventForm::Text36 => text::encode_into(&e.user_id, 24, &mut out),
    }
    out.push(e.status);
    out.push(e.punch);
    out.extend_from_slice(&t);
    if form == EventForm::Text36 {
        out.extend_from_slice(&[0; 4]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn adro_32_byte_event() {
        let mut p = b"999111333".to_vec();
        p.extend_from_slice(&[0; 15]);
        p.extend_from_slice(&[0x01, 0x00, 0x12, 0x06, 0x19, 0x11, 0x29, 0x05]);
        let e = decode_attendance_event(&p).expect("decodes");
        assert_eq!(e.user_id, "999111333");
        assert_eq!((e.status, e.punch), (1, 0));
        assert_eq!(e.timestamp, date(2018, 6, 25).at(17, 41, 5, 0));
    }

    #[test]
    fn forms_round_trip_and_unknown_lengths_fail() {
        let e =
            AttendanceEvent { user_id: "42".into(), status: 1, punch: 1, timestamp: date(2025, 1, 2).at(3, 4, 5, 0) };
        for form in [EventForm::Short10, EventForm::Numeric12, EventForm::Text36] {
            let p = encode_attendance_event(form, &e).expect("encodes");
            assert_eq!(decode_attendance_event(&p).expect("decodes"), e);
        }
        assert_eq!(decode_attendance_event(&[0; 11]), Err(CodecError::EventLength(11)));
    }
}
