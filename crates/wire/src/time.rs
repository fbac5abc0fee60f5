//! The stand-in time of a record whose time field is no date (31 February, a year past 2099: a corrupt record).
//!
//! Such a record is kept and sent, never dropped, and it needs a `local_time` all the same: the server's unique
//! key is (device, local time, user), and a re-send of the same record must hit the same row. The placeholder is
//! 1000-01-01T00:00:00 plus the raw packed value in seconds: one distinct time per raw value, all of them in years
//! 1000 to 1136, long before 2000-01-01, the earliest time a terminal can hold. So a placeholder never collides
//! with a real punch, and the raw value can be read back from it.

use jiff::SignedDuration;
use jiff::civil::{DateTime, date};

const FORMAT: &str = "%Y-%m-%dT%H:%M:%S";

fn base() -> DateTime {
    date(1000, 1, 1).at(0, 0, 0, 0)
}

/// The `local_time` a punch with the raw time field `raw` travels and is stored with (`YYYY-MM-DDTHH:MM:SS`).
pub fn invalid_time_placeholder(raw: u32) -> String {
    // 1000-01-01 + at most 2^32 s (136 years) is far inside jiff's range: the addition cannot fail.
    let t = base().checked_add(SignedDuration::from_secs(i64::from(raw))).unwrap_or(base());
    t.strftime(FORMAT).to_string()
}

/// The raw value a placeholder stands for; `None` for any other text (a real time, garbage).
pub fn raw_of_placeholder(local_time: &str) -> Option<u32> {
    let t = DateTime::strptime(FORMAT, local_time).ok()?;
    let secs = base().duration_until(t).as_secs();
    let raw = u32::try_from(secs).ok()?;
    (invalid_time_placeholder(raw) == local_time).then_some(raw)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_distinct_before_2000_and_reversible() {
        assert_eq!(invalid_time_placeholder(0), "1000-01-01T00:00:00");
        assert_eq!(invalid_time_placeholder(86_400 + 61), "1000-01-02T00:01:01");
        assert_eq!(invalid_time_placeholder(u32::MAX), "1136-02-08T06:28:15");
        // 31 February 2018 as a terminal packs it.
        let feb31 = 583_804_800;
        let p = invalid_time_placeholder(feb31);
        assert_eq!(raw_of_placeholder(&p), Some(feb31));
        assert_ne!(invalid_time_placeholder(feb31 + 1), p);
        for raw in [0, 1, 59, 3_214_080_000, u32::MAX] {
            let p = invalid_time_placeholder(raw);
            assert!(p.as_str() < "2000-01-01T00:00:00", "{p}");
            assert_eq!(raw_of_placeholder(&p), Some(raw));
        }
        for other in ["2025-11-24T09:01:02", "0999-12-31T23:59:59", "1136-02-08T06:28:16", "", "garbage"] {
            assert_eq!(raw_of_placeholder(other), None, "{other}");
        }
    }
}
