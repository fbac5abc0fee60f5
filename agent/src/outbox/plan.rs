//! The per-device watermark: which records of a terminal read still have to go to the server.
//!
//! A terminal's attendance log only grows until someone clears it, and the terminal returns it in the order it was
//! written. So "already sent" is a position (how many records the last read saw) plus the record at that position,
//! which proves the log is still the same log. Time is no watermark: terminal clocks get set backwards, and a punch
//! stamped earlier than the newest one is still a new punch.

use std::fmt;

use essl_wire::Punch;

/// What an earlier read of a device saw: acknowledged by the server, or durably queued for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    /// The terminal's serial number (empty if it does not tell).
    pub serial: String,
    /// Records on the terminal at that read.
    pub count: u64,
    /// The last of them, in log order.
    pub last: Option<Punch>,
    /// The newest record time of that read, `YYYY-MM-DDTHH:MM:SS` (for people and for "is everything stored").
    pub newest_time: Option<String>,
}

impl Watermark {
    /// The watermark a read leaves behind.
    pub fn of(serial: &str, records: &[Punch]) -> Watermark {
        Watermark {
            serial: serial.to_owned(),
            count: records.len() as u64,
            last: records.last().cloned(),
            newest_time: records.iter().map(|r| r.local_time.as_str()).max().map(str::to_owned),
        }
    }
}

/// Why a read is sent whole although the device has a watermark.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reset {
    /// Another terminal answers at this address (replaced, or the device was re-pointed).
    SerialChanged { was: String, now: String },
    /// Fewer records than last time: the log was cleared (and may have new punches since).
    CountWentDown { was: u64, now: u64 },
    /// As many records or more, but not the ones seen last time: the log was cleared and refilled.
    LogReplaced { count: u64 },
}

impl fmt::Display for Reset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reset::SerialChanged { was, now } => {
                write!(f, "the terminal's serial number changed from {was:?} to {now:?}: every record sent again")
            }
            Reset::CountWentDown { was, now } => {
                write!(f, "the terminal's log went from {was} to {now} records (cleared?): every record sent again")
            }
            Reset::LogReplaced { count } => write!(
                f,
                "the terminal's log no longer holds the record last seen at position {count} (cleared and refilled?): \
                 every record sent again"
            ),
        }
    }
}

/// The index of the first record to send, and why everything is sent if a watermark says otherwise. Sending too
/// much is harmless (the server's unique key drops repeats); sending too little loses punches, so every doubt
/// sends everything.
pub fn plan(base: Option<&Watermark>, serial: &str, records: &[Punch]) -> (usize, Option<Reset>) {
    let Some(base) = base else { return (0, None) };
    if base.serial != serial {
        return (0, Some(Reset::SerialChanged { was: base.serial.clone(), now: serial.to_owned() }));
    }
    let now = records.len() as u64;
    if now < base.count {
        return (0, Some(Reset::CountWentDown { was: base.count, now }));
    }
    let Ok(seen) = usize::try_from(base.count) else { return (0, Some(Reset::LogReplaced { count: base.count })) };
    if seen == 0 {
        return (0, None);
    }
    if records.get(seen - 1) != base.last.as_ref() {
        return (0, Some(Reset::LogReplaced { count: base.count }));
    }
    (seen, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn punch(i: usize) -> Punch {
        Punch {
            uid: (i % 50) as u16 + 1,
            user_id: format!("{}", 1000 + i % 50),
            local_time: format!("2025-11-24T09:{:02}:{:02}", (i / 60) % 60, i % 60),
            status: 1,
            punch: 0,
            raw_time: None,
        }
    }

    fn log(n: usize) -> Vec<Punch> {
        (0..n).map(punch).collect()
    }

    #[test]
    fn first_read_sends_everything_without_a_reset() {
        assert_eq!(plan(None, "S1", &log(10)), (0, None));
    }

    #[test]
    fn unchanged_log_sends_nothing_and_a_longer_one_only_the_tail() {
        let records = log(100);
        let mark = Watermark::of("S1", &records);
        assert_eq!(plan(Some(&mark), "S1", &records), (100, None));
        assert_eq!(plan(Some(&mark), "S1", &log(130)), (100, None));
        // An empty log read twice.
        let empty = Watermark::of("S1", &[]);
        assert_eq!(plan(Some(&empty), "S1", &log(3)), (0, None));
    }

    #[test]
    fn clears_replacements_and_new_terminals_send_everything() {
        let mark = Watermark::of("S1", &log(100));
        assert_eq!(plan(Some(&mark), "S1", &log(40)).1, Some(Reset::CountWentDown { was: 100, now: 40 }));
        assert!(matches!(plan(Some(&mark), "S2", &log(100)).1, Some(Reset::SerialChanged { .. })));
        // Cleared, then more punches than before: same or higher count, different records.
        let refilled: Vec<Punch> = (500..650).map(punch).collect();
        assert_eq!(plan(Some(&mark), "S1", &refilled), (0, Some(Reset::LogReplaced { count: 100 })));
    }

    #[test]
    fn watermark_remembers_the_newest_time_not_the_last() {
        let mut records = log(3);
        records[2].local_time = "2020-01-01T00:00:00".into(); // the clock was set back
        let mark = Watermark::of("S1", &records);
        assert_eq!(mark.newest_time.as_deref(), Some("2025-11-24T09:00:01"));
        assert_eq!(mark.last.as_ref(), records.last());
    }
}
