//! Attendance records (zk-protocol.md §7): the 8-, 16- and 40-byte layouts and the table that holds them.
//!
//! A record whose time field is no date (31 February, a year past 2099: corrupt flash, a firmware bug) is kept,
//! with its raw value ([`RecordTime::Invalid`]); the rest of the table decodes as usual. Only a table that is not
//! well framed (its size field, a size that fits no layout) is an error: no record of a well-framed table is ever
//! dropped.

use std::fmt;

use jiff::civil::DateTime;

use crate::error::CodecError;
use crate::table::{self, Layout};
use crate::{text, time};

/// One punch as the terminal stores it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttendanceRecord {
    /// Internal user index (0 when the layout does not carry it and no user list resolved it).
    pub uid: u16,
    /// The user's PIN as text.
    pub user_id: String,
    /// Terminal wall-clock time, no zone; or the raw field if it is no date.
    pub timestamp: RecordTime,
    /// Verify type (pyzk's `status`): 0 password, 1 fingerprint, 2 card, ...
    pub status: u8,
    /// Punch state (pyzk's `punch`): 0 check-in, 1 check-out, ...
    pub punch: u8,
}

/// A record's time as the terminal stored it (the packed u32 of zk-protocol.md §9.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordTime {
    /// A wall-clock time, no zone.
    Valid(DateTime),
    /// A packed value that is no date (corrupt record): kept as it was, so the record is not lost.
    Invalid(u32),
}

impl RecordTime {
    /// Decodes the packed u32; a value that is no date becomes [`RecordTime::Invalid`], never an error.
    pub fn from_packed(v: u32) -> RecordTime {
        match time::decode_packed(v) {
            Ok(t) => RecordTime::Valid(t),
            Err(_) => RecordTime::Invalid(v),
        }
    }

    /// The packed u32 a terminal stores for this time (an invalid one as it was read).
    pub fn to_packed(self) -> Result<u32, CodecError> {
        match self {
            RecordTime::Valid(t) => time::encode_packed(t),
            RecordTime::Invalid(v) => Ok(v),
        }
    }

    /// The wall-clock time, if the field is one.
    pub fn valid(self) -> Option<DateTime> {
        match self {
            RecordTime::Valid(t) => Some(t),
            RecordTime::Invalid(_) => None,
        }
    }
}

impl From<DateTime> for RecordTime {
    fn from(t: DateTime) -> Self {
        RecordTime::Valid(t)
    }
}

impl fmt::Display for RecordTime {
    /// `YYYY-MM-DDTHH:MM:SS`, or `invalid time 0x........`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordTime::Valid(t) => write!(f, "{}", t.strftime("%Y-%m-%dT%H:%M:%S")),
            RecordTime::Invalid(v) => write!(f, "invalid time {v:#010x}"),
        }
    }
}

/// The record layouts of different firmware generations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordLayout {
    /// Oldest firmware: uid, no PIN.
    Short8,
    /// "ZK6" firmware: numeric PIN, no uid.
    Medium16,
    /// "ZK8" / TCP-era firmware: uid and 24-byte PIN.
    Long40,
}

impl Layout for RecordLayout {
    const WHAT: &'static str = "attendance table";
    const PREFERENCE: &'static [Self] = &[RecordLayout::Long40, RecordLayout::Medium16, RecordLayout::Short8];
    fn size(self) -> usize {
        match self {
            RecordLayout::Short8 => 8,
            RecordLayout::Medium16 => 16,
            RecordLayout::Long40 => 40,
        }
    }
}

impl RecordLayout {
    /// Bytes per record.
    pub fn size(self) -> usize {
        Layout::size(self)
    }

    /// Whether records of this layout name the uid and the PIN both.
    pub fn is_complete(self) -> bool {
        self == RecordLayout::Long40
    }
}

/// Decodes one record of the given layout. Only a wrong length is an error: a time field that is no date gives a
/// record with [`RecordTime::Invalid`].
pub fn decode_record(layout: RecordLayout, rec: &[u8]) -> Result<AttendanceRecord, CodecError> {
    if rec.len() != layout.size() {
        return Err(CodecError::RecordLength { what: "attendance record", len: rec.len(), expected: layout.size() });
    }
    let u16_at = |i: usize| u16::from_le_bytes([rec[i], rec[i + 1]]);
    let u32_at = |i: usize| u32::from_le_bytes([rec[i], rec[i + 1], rec[i + 2], rec[i + 3]]);
    Ok(match layout {
        RecordLayout::Long40 => AttendanceRecord {
            uid: u16_at(0),
            user_id: text::decode(&rec[2..26]),
            status: rec[26],
            timestamp: RecordTime::from_packed(u32_at(27)),
            punch: rec[31],
        },
        RecordLayout::Medium16 => AttendanceRecord {
            uid: 0,
            user_id: u32_at(0).to_string(),
            timestamp: RecordTime::from_packed(u32_at(4)),
            status: rec[8],
            punch: rec[9],
        },
        RecordLayout::Short8 => AttendanceRecord {
            uid: u16_at(0),
            user_id: u16_at(0).to_string(),
            status: rec[2],
            timestamp: RecordTime::from_packed(u32_at(3)),
            punch: rec[7],
        },
    })
}

/// Appends one record in the given layout. Fields a layout cannot hold are dropped (the 16-byte layout needs a
/// numeric PIN; a non-numeric one is written as 0). An invalid time is written back as it was read.
pub fn encode_record(layout: RecordLayout, r: &AttendanceRecord, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let ts = r.timestamp.to_packed()?;
    match layout {
        RecordLayout::Long40 => {
            out.extend_from_slice(&r.uid.to_le_bytes());
            text::encode_into(&r.user_id, 24, out);
            out.push(r.status);
            out.extend_from_slice(&ts.to_le_bytes());
            out.push(r.punch);
            out.extend_from_slice(&[0, 0, 0, 0, 0xFF, 0, 0, 0]);
        }
        RecordLayout::Medium16 => {
            out.extend_from_slice(&r.user_id.parse::<u32>().unwrap_or(0).to_le_bytes());
            out.extend_from_slice(&ts.to_le_bytes());
            out.push(r.status);
            out.push(r.punch);
            out.extend_from_slice(&[0; 6]);
        }
        RecordLayout::Short8 => {
            out.extend_from_slice(&r.uid.to_le_bytes());
            out.push(r.status);
            out.extend_from_slice(&ts.to_le_bytes());
            out.push(r.punch);
        }
    }
    Ok(())
}

/// Decodes a whole table (u32 size, then records). `count_hint` is the record count from `CMD_GET_FREE_SIZES`,
/// used to infer the record size, which the table does not announce. Every record of a well-framed table comes
/// back, in table order; records whose time is no date carry [`RecordTime::Invalid`].
pub fn decode_table(
    buf: &[u8],
    count_hint: Option<usize>,
) -> Result<(RecordLayout, Vec<AttendanceRecord>), CodecError> {
    let (layout, records) = table::split::<RecordLayout>(buf, count_hint)?;
    let out = records.map(|rec| decode_record(layout, rec)).collect::<Result<Vec<_>, _>>()?;
    Ok((layout, out))
}

/// Encodes a whole table (u32 size, then records).
pub fn encode_table(layout: RecordLayout, records: &[AttendanceRecord]) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::with_capacity(4 + records.len() * layout.size());
    out.extend_from_slice(&((records.len() * layout.size()) as u32).to_le_bytes());
    for r in records {
        encode_record(layout, r, &mut out)?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn adro_40_byte_record() {
        let mut rec = vec![0x0D, 0x00];
        rec.extend_from_slice(b"999111333");
        rec.extend_from_slice(&[0; 15]);
        rec.extend_from_slice(&[0x01, 0x6B, 0xB3, 0x68, 0x23, 0x00, 0, 0, 0, 0, 0xFF, 0, 0, 0]);
        let r = decode_record(RecordLayout::Long40, &rec).expect("decodes");
        assert_eq!(r.uid, 13);
        assert_eq!(r.user_id, "999111333");
        assert_eq!((r.status, r.punch), (1, 0));
        assert_eq!(r.timestamp, RecordTime::Valid(date(2018, 6, 25).at(17, 50, 35, 0)));
        let mut again = Vec::new();
        encode_record(RecordLayout::Long40, &r, &mut again).expect("encodes");
        assert_eq!(again, rec);
    }

    #[test]
    fn js_zklib_16_byte_record() {
        let rec = [0x15, 0, 0, 0, 0xec, 0x15, 0x4f, 0x23, 0, 0, 0, 0, 0, 0, 0, 0];
        let r = decode_record(RecordLayout::Medium16, &rec).expect("decodes");
        assert_eq!(r.user_id, "21");
        assert_eq!(r.timestamp, RecordTime::Valid(date(2018, 6, 6).at(7, 31, 56, 0)));
    }

    #[test]
    fn table_layout_is_inferred_from_the_count() {
        let rec = AttendanceRecord {
            uid: 7,
            user_id: "7".into(),
            timestamp: date(2025, 11, 24).at(9, 1, 2, 0).into(),
            status: 1,
            punch: 0,
        };
        for layout in [RecordLayout::Short8, RecordLayout::Medium16, RecordLayout::Long40] {
            let recs = vec![rec.clone(); 10];
            let table = encode_table(layout, &recs).expect("encodes");
            let (got, decoded) = decode_table(&table, Some(10)).expect("decodes");
            assert_eq!(got, layout);
            assert_eq!(decoded.len(), 10);
            assert_eq!(decoded[0].timestamp, rec.timestamp);
        }
        // 80 bytes fit 2 x 40, 5 x 16 or 10 x 8: the count decides.
        let table = encode_table(RecordLayout::Medium16, &vec![rec.clone(); 5]).expect("encodes");
        assert_eq!(decode_table(&table, Some(5)).expect("decodes").0, RecordLayout::Medium16);
        assert_eq!(decode_table(&[0, 0, 0, 0], Some(0)).expect("empty").1, vec![]);
    }

    #[test]
    fn a_record_with_an_impossible_time_is_kept_raw_and_the_rest_decode() {
        let good = |i: u8| AttendanceRecord {
            uid: u16::from(i),
            user_id: i.to_string(),
            timestamp: date(2025, 11, 24).at(9, 0, i as i8, 0).into(),
            status: 1,
            punch: 0,
        };
        // 31 February 2018, and one second past 2099-12-31 23:59:59.
        let feb31 = ((18 * 372 + 31 + 30) * 86_400) as u32;
        for raw in [feb31, 3_214_080_000, u32::MAX] {
            for layout in [RecordLayout::Short8, RecordLayout::Medium16, RecordLayout::Long40] {
                let mut bad = good(2);
                bad.timestamp = RecordTime::Invalid(raw);
                let records = vec![good(1), bad.clone(), good(3)];
                let table = encode_table(layout, &records).expect("an invalid time is written back raw");
                let (_, decoded) = decode_table(&table, Some(3)).expect("the table decodes");
                assert_eq!(decoded.len(), 3, "{layout:?} {raw:#x}");
                assert_eq!(decoded[1].timestamp, RecordTime::Invalid(raw));
                assert_eq!(decoded[1].timestamp.to_string(), format!("invalid time {raw:#010x}"));
                assert_eq!(decoded[0].timestamp, good(1).timestamp);
                assert_eq!(decoded[2].timestamp, good(3).timestamp);
            }
        }
        assert_eq!(RecordTime::from_packed(0x2368B36B).to_string(), "2018-06-25T17:50:35");
    }
}
