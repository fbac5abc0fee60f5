//! Terminal time encodings (zk-protocol.md §9). Terminals keep local wall-clock time with no zone, so every
//! value here is a [`jiff::civil::DateTime`]; the zone is the caller's business.

use jiff::civil::{Date, DateTime, Time};

use crate::error::CodecError;

/// Decodes the packed u32 of attendance records and `CMD_GET_TIME` (a calendar of 12 months of 31 days).
pub fn decode_packed(v: u32) -> Result<DateTime, CodecError> {
    let mut t = v;
    let second = (t % 60) as i8;
    t /= 60;
    let minute = (t % 60) as i8;
    t /= 60;
    let hour = (t % 24) as i8;
    t /= 24;
    let day = (t % 31 + 1) as i8;
    t /= 31;
    let month = (t % 12 + 1) as i8;
    t /= 12;
    // Terminals store the year modulo 100: values past 2099-12-31 23:59:59 are corrupt, not the 22nd century.
    if t > 99 {
        return Err(CodecError::BadTime(v));
    }
    let year = 2000 + t as i16;
    let date = Date::new(year, month, day).map_err(|_| CodecError::BadTime(v))?;
    let time = Time::new(hour, minute, second, 0).map_err(|_| CodecError::BadTime(v))?;
    Ok(DateTime::from_parts(date, time))
}

/// Encodes a wall-clock time as the packed u32. Years outside 2000..=2099 cannot be stored by terminals.
pub fn encode_packed(dt: DateTime) -> Result<u32, CodecError> {
    let year = i32::from(dt.year());
    if !(2000..=2099).contains(&year) {
        return Err(CodecError::TimeOutOfRange(dt.to_string()));
    }
    let days = ((year - 2000) as u32 * 12 + (dt.month() as u32 - 1)) * 31 + (dt.day() as u32 - 1);
    let secs = dt.hour() as u32 * 3600 + dt.minute() as u32 * 60 + dt.second() as u32;
    Ok(days * 86_400 + secs)
}

/// Decodes the six-byte time of realtime events: `[Y-2000, M, D, h, m, s]`.
pub fn decode_event_time(b: &[u8]) -> Result<DateTime, CodecError> {
    let Some(b) = b.get(..6) else {
        return Err(CodecError::Short { len: b.len(), need: 6 });
    };
    let raw = [b[0], b[1], b[2], b[3], b[4], b[5]];
    let bad = || CodecError::BadEventTime(raw);
    let date = Date::new(2000 + i16::from(b[0]), to_i8(b[1]).ok_or_else(bad)?, to_i8(b[2]).ok_or_else(bad)?)
        .map_err(|_| bad())?;
    let time = Time::new(to_i8(b[3]).ok_or_else(bad)?, to_i8(b[4]).ok_or_else(bad)?, to_i8(b[5]).ok_or_else(bad)?, 0)
        .map_err(|_| bad())?;
    Ok(DateTime::from_parts(date, time))
}

/// Encodes the six-byte event time.
pub fn encode_event_time(dt: DateTime) -> Result<[u8; 6], CodecError> {
    let year = i32::from(dt.year());
    if !(2000..=2255).contains(&year) {
        return Err(CodecError::TimeOutOfRange(dt.to_string()));
    }
    Ok([(year - 2000) as u8, dt.month() as u8, dt.day() as u8, dt.hour() as u8, dt.minute() as u8, dt.second() as u8])
}

fn to_i8(b: u8) -> Option<i8> {
    i8::try_from(b).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn check_values_from_the_notes() {
        assert_eq!(decode_packed(0x2368B36B), Ok(date(2018, 6, 25).at(17, 50, 35, 0)));
        assert_eq!(decode_packed(0x234F15EC), Ok(date(2018, 6, 6).at(7, 31, 56, 0)));
        assert_eq!(encode_packed(date(2018, 6, 25).at(17, 50, 35, 0)), Ok(0x2368B36B));
        assert_eq!(decode_event_time(&[0x12, 0x06, 0x19, 0x11, 0x29, 0x05]), Ok(date(2018, 6, 25).at(17, 41, 5, 0)));
    }

    #[test]
    fn impossible_dates_are_errors() {
        // 31 February 2018.
        let v = ((18 * 372 + 31 + 30) * 86_400) as u32;
        assert_eq!(decode_packed(v), Err(CodecError::BadTime(v)));
        assert!(decode_event_time(&[18, 13, 1, 0, 0, 0]).is_err());
        assert!(decode_event_time(&[18, 1, 1, 25, 0, 0]).is_err());
        assert!(encode_packed(date(1999, 12, 31).at(0, 0, 0, 0)).is_err());
        // 3,214,079,999 is the last second a terminal can store; beyond it is corruption.
        assert_eq!(decode_packed(3_214_079_999), Ok(date(2099, 12, 31).at(23, 59, 59, 0)));
        assert_eq!(decode_packed(3_214_080_000), Err(CodecError::BadTime(3_214_080_000)));
    }
}
