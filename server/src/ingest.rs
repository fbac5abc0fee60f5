//! From a terminal's records to attendance rows: the terminal's wall-clock time is read in the device's IANA zone
//! (DST-correct; a time in a fold or gap is resolved the "compatible" way and flagged), and the batch is stored in
//! one transaction, duplicates ignored by the unique key.
//!
//! Nothing a terminal holds is dropped for looking wrong: a record whose time field is no date is stored with a
//! placeholder time and [`FLAG_INVALID_TIME`], a user the terminal does not have enrolled with
//! [`FLAG_UNKNOWN_USER`] (when the device's users are known).

use std::collections::HashSet;

use essl_wire::{DeviceUser, Punch};
use jiff::civil::DateTime;
use jiff::tz::{AmbiguousOffset, TimeZone};
use jiff::{SignedDuration, Timestamp};

use crate::store::model::{Device, DeviceUserRow, NewPunch};
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
    /// Records whose time could not be read at all (not stored; logged). Agents never send such records: a
    /// time field that is no date arrives as `raw_time` and is stored, flagged.
    pub rejected: u64,
    /// Records stored with [`FLAG_INVALID_TIME`] (new or not).
    pub invalid_time: u64,
    /// Records of users the device does not have enrolled ([`FLAG_UNKNOWN_USER`]; new or not).
    pub unknown_user: u64,
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
    let users = store.list_device_users(device.id).await?;
    let enrolled: HashSet<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    let mut rows = Vec::with_capacity(records.len());
    let mut stats = IngestStats::default();
    for r in records {
        let (local, punched_at, mut flags) = match r.raw_time {
            Some(raw) => {
                let (local, punched_at) = invalid_time(raw);
                tracing::debug!(device_id = %device.id, user_id = %r.user_id, raw_time = raw, "punch time is no date");
                stats.invalid_time += 1;
                (local, punched_at, FLAG_INVALID_TIME)
            }
            None => {
                let Ok(local) = DateTime::strptime("%Y-%m-%dT%H:%M:%S", &r.local_time) else {
                    tracing::warn!(device_id = %device.id, user_id = %r.user_id, local_time = %r.local_time, "unreadable punch time");
                    stats.rejected += 1;
                    continue;
                };
                let (punched_at, mut flags) = instant(local, &tz);
                if punched_at > horizon {
                    flags |= FLAG_FUTURE;
                }
                (local, punched_at, flags)
            }
        };
        if !enrolled.is_empty() && !enrolled.contains(r.user_id.as_str()) {
            flags |= FLAG_UNKNOWN_USER;
            stats.unknown_user += 1;
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
    if stats.invalid_time > 0 {
        tracing::warn!(
            device_id = %device.id,
            records = stats.invalid_time,
            "punches whose time is no date on the terminal (corrupt records): stored with a placeholder time, flagged"
        );
    }
    if stats.unknown_user > 0 {
        tracing::info!(device_id = %device.id, records = stats.unknown_user, "punches of users not enrolled on the device, flagged");
    }
    stats.inserted = store.insert_punches(device.id, &rows).await?;
    Ok(stats)
}

/// Replaces the device's user list with the one its terminal holds (an agent reads it in the same terminal session
/// as the records it sends after it), so later punches are flagged against it. Entries no terminal can hold are
/// left out rather than failing the list: a NUL in a text, a user id over 64 characters, a slot number seen twice
/// (the first one counts). `Ok(n)`: the users stored. Only a database failure is an error (worth a re-send).
pub async fn store_user_list(store: &Store, device: &Device, users: &[DeviceUser]) -> Result<usize, StoreError> {
    let mut seen = HashSet::with_capacity(users.len());
    let mut rows = Vec::with_capacity(users.len());
    for u in users {
        let texts = [u.user_id.as_str(), u.name.as_str(), u.group_id.as_str()];
        if texts.iter().any(|t| t.contains('\0')) || u.user_id.chars().count() > 64 || !seen.insert(u.uid) {
            tracing::warn!(device_id = %device.id, uid = u.uid, user_id = %u.user_id.escape_debug(), "user entry left out of the device's list");
            continue;
        }
        rows.push(DeviceUserRow {
            device_id: device.id,
            uid: i32::from(u.uid),
            user_id: u.user_id.clone(),
            name: u.name.clone(),
            privilege: i16::from(u.privilege),
            card: i64::from(u.card),
            group_id: u.group_id.clone(),
        });
    }
    match store.replace_device_users(device.id, &rows).await {
        Ok(()) => {
            tracing::debug!(device_id = %device.id, users = rows.len(), "device users replaced");
            Ok(rows.len())
        }
        // Nothing in the list can be fixed by sending it again: keep the old list, store the punches.
        Err(error @ (StoreError::Invalid(_) | StoreError::Conflict(_))) => {
            tracing::warn!(%error, device_id = %device.id, "the terminal's user list was refused; the previous one stays");
            Ok(0)
        }
        Err(error) => Err(error),
    }
}

/// The placeholder local time of a record whose raw time field `raw` is no date, and its instant (read as UTC).
pub fn invalid_time(raw: u32) -> (DateTime, Timestamp) {
    let text = essl_wire::invalid_time_placeholder(raw);
    // The placeholder is always a valid time of years 1000-1136.
    let local = DateTime::strptime("%Y-%m-%dT%H:%M:%S", &text).unwrap_or(DateTime::MIN);
    let at = TimeZone::UTC.to_ambiguous_timestamp(local).compatible().unwrap_or(Timestamp::MIN);
    (local, at)
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

    #[test]
    fn invalid_times_get_distinct_placeholders_before_2000() {
        let (a, at) = invalid_time(583_804_800);
        assert_eq!(a, date(1018, 7, 3).at(0, 0, 0, 0));
        assert_eq!(at.to_string(), "1018-07-03T00:00:00Z");
        assert_ne!(invalid_time(583_804_801).0, a);
        assert!(invalid_time(u32::MAX).0 < date(2000, 1, 1).at(0, 0, 0, 0));
    }
}
