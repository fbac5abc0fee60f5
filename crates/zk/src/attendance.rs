//! Attendance records (zk-protocol.md §7): the 8-, 16- and 40-byte layouts and the table that holds them.

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
    /// Terminal wall-clock time, no zone.
    pub timestamp: DateTime,
    /// Verify type (pyzk's `status`): 0 password, 1 fingerprint, 2 card, ...
    pub status: u8,
    /// Punch state (pyzk's `punch`): 0 check-in, 1 check-out, ...
    pub punch: u8,
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

/// Decodes one record of the given layout.
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
            timestamp: time::decode_packed(u32_at(27))?,
            punch: rec[31],
        },
        RecordLayout::Medium16 => AttendanceRecord {
            uid: 0,
            user_id: u32_at(0).to_string(),
            timestamp: time::decode_packed(u32_at(4))?,
            status: rec[8],
            punch: rec[9],
        },
        RecordLayout::Short8 => AttendanceRecord {
            uid: u16_at(0),
            user_id: u16_at(0).to_string(),
            status: rec[2],
            timestamp: time::decode_packed(u32_at(3))?,
            punch: rec[7],
        },
    })
}

/// Appends one record in the given layout. Fields a layout cannot hold are dropped (the 16-byte layout needs a
/// numeric PIN; a non-numeric one is written as 0).
pub fn encode_record(layout: RecordLayout, r: &AttendanceRecord, out: &mut Vec<u8>) -> Result<(), CodecError> {
    let ts = time::encode_packed(r.timestamp)?;
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
/// used to infer the record size, which the table does not announce.
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
        assert_eq!(r.timestamp, date(2018, 6, 25).at(17, 50, 35, 0));
        let mut again = Vec::new();
        encode_record(RecordLayout::Long40, &r, &mut again).expect("encodes");
        assert_eq!(again, rec);
    }

    #[test]
    fn js_zklib_16_byte_record() {
        let rec = [0x15, 0, 0, 0, 0xec, 0x15, 0x4f, 0x23, 0, 0, 0, 0, 0, 0, 0, 0];
        let r = decode_record(RecordLayout::Medium16, &rec).expect("decodes");
        assert_eq!(r.user_id, "21");
        assert_eq!(r.timestamp, date(2018, 6, 6).at(7, 31, 56, 0));
    }

    #[test]
    fn table_layout_is_inferred_from_the_count() {
        let rec = AttendanceRecord {
            uid: 7,
            user_id: "7".into(),
            timestamp: date(2025, 11, 24).at(9, 1, 2, 0),
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
}
