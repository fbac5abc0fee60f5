//! From a terminal's records to attendance rows: the terminal's wall-clock time is read in the device's IANA zone
//! (DST-correct; a time in a fold or gap is resolved the "compatible" way and flagged), and the batch is stored in
//! one transaction, duplicates ignored by the unique key.

use essl_wire::Punch;
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use crate::store::model::{Device, NewPunch};
use crate::store::{Store, StoreError};

/// Flag: the local time occurs twice (clocks went back); the earlier instant was taken.
pub const FLAG_AMBIGUOUS: i32 = 1;
/// Flag: the local time does not exist (clocks went forward); shifted forward by the gap.
pub const FLAG_NONEXISTENT: i32 = 2;
/// Flag: more than a day in the future by the server's clock.
pub const FLAG_FUTURE: i32 = 4;
/// Flag: the terminal's time field is no date (a corrupt record). `local_time` is the placeholder
/// `1000-01-01T00:00:00` + the raw value in seconds (`essl_wire::invalid_time_placeholder`: years 1000-1136, one
/// time per raw value, so the unique key still holds) and `punched_at` that placeholder read as UTC.
pub const FLAG_INVALID_TIME: i32 = 8;
/// Flag: the user id is not among the device's enrolled users (`essl_device_users`); only set when that list is
/// known (not empty) when the punch is first stored.
pub const FLAG_UNKNOWN_USER: i32 = 16;

/// What one batch did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct IngestStats {
    /// Rows new to the database.
    pub inserted: u64,
    /// Records whose time could not be read at all (not stored; logged).
    pub rejected: u64,
}

/// Why a batch was not stored.
#[derive(Debug, thiserror::Error)]
pub enum IngestError {
    #[error("device {device} has an unknown time zone {zone:?}")]
    TimeZone { device: uuid::Uuid, zone: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Looks up an IANA zone (bundled database, so the server behaves the same on every host).
pub fn zone(name: &str) -> Option<TimeZone> {
    jiff::tz::db().get(name).ok()
}

/// The instant of a terminal's wall-clock time in `tz`, with flags for folds and gaps.
pub fn instant(local: DateTime, tz: &TimeZone) -> (Timestamp, i32) {
    let ambiguous = tz.to_ambiguous_timestamp(local);
    let flags = match ambiguous.offset() {
        AmbiguousOffset::Unambiguous { .. } => 0,
        AmbiguousOffset::Fold { .. } => FLAG_AMBIGUOUS,
        AmbiguousOffset::Gap { .. } => FLAG_NONEXISTENT,
    };
    match ambiguous.compatible() {
        Ok(ts) => (ts, flags),
        // Only at the edges of the representable range; treat as UTC rather than lose the record.
        Err(_) => (TimeZone::UTC.to_ambiguous_timestamp(local).compatible().unwrap_or(Timestamp::UNIX_EPOCH), flags),
    }
}

/// Converts and stores one batch of a device's records.
pub async fn store_punches(store: &Store, device: &Device, records: &[Punch]) -> Result<IngestStats, IngestError> {
    let tz = zone(&device.timezone)
        .ok_or_else(|| IngestError::TimeZone { device: device.id, zone: device.timezone.clone() })?;
    let horizon = Timestamp::now().saturating_add(SignedDuration::from_hours(24)).unwrap_or(Timestamp::MAX);
    let mut rows = Vec::with_capacity(records.len());
    let mut rejected = 0;
    for r in records {
        let Ok(local) = DateTime::strptime("%Y-%m-%dT%H:%M:%S", &r.local_time) else {
            tracing::warn!(device_id = %device.id, user_id = %r.user_id, local_time = %r.local_time, "unreadable punch time");
            rejected += 1;
            continue;
        };
        let (punched_at, mut flags) = instant(local, &tz);
        if punched_at > horizon {
            flags |= FLAG_FUTURE;
        }
        rows.push(NewPunch {
            user_id: r.user_id.clone(),
            uid: i32::from(r.uid),
            local_time: local,
            punched_at,
            status: i16::from(r.status),
            punch: i16::from(r.punch),
            flags,
        });
    }
    let inserted = store.insert_punches(device.id, &rows).await?;
    Ok(IngestStats { inserted, rejected })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::civil::date;

    #[test]
    fn dst_and_half_hour_zones() {
        let london = zone("Europe/London").expect("bundled tzdb");
        // 2025-03-30 01:30 does not exist in London; 2025-10-26 01:30 happens twice.
        let (gap, flags) = instant(date(2025, 3, 30).at(1, 30, 0, 0), &london);
        assert_eq!(flags, FLAG_NONEXISTENT);
        assert_eq!(gap.to_string(), "2025-03-30T01:30:00Z");
        let (fold, flags) = instant(date(2025, 10, 26).at(1, 30, 0, 0), &london);
        assert_eq!(flags, FLAG_AMBIGUOUS);
        assert_eq!(fold.to_string(), "2025-10-26T00:30:00Z");
        let (summer, flags) = instant(date(2025, 7, 1).at(9, 0, 0, 0), &london);
        assert_eq!((summer.to_string().as_str(), flags), ("2025-07-01T08:00:00Z", 0));
        let kolkata = zone("Asia/Kolkata").expect("bundled tzdb");
        let (t, _) = instant(date(2025, 11, 24).at(9, 1, 2, 0), &kolkata);
        assert_eq!(t.to_string(), "2025-11-24T03:31:02Z");
        assert!(zone("Mars/Olympus").is_none());
    }
}
