//! Pushed records to rows: the same table, unique key and time handling as punches that agents read
//! (`crate::ingest`): the terminal's wall clock read in the device's IANA zone, DST folds and gaps flagged, a day
//! or more in the future flagged, PINs the device's user list does not hold flagged (when that list is known), one
//! transaction per upload, duplicates ignored.

use std::collections::HashSet;

use jiff::{SignedDuration, Timestamp};

use super::parse::{AttLine, UserLine};
use crate::app::AppState;
use crate::hub::HubEvent;
use crate::ingest::{FLAG_FUTURE, FLAG_UNKNOWN_USER, instant, zone};
use crate::store::StoreError;
use crate::store::model::{Device, DeviceUserRow, NewPunch};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("device {device} has an unknown time zone {zone:?}")]
    TimeZone { device: uuid::Uuid, zone: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// What one upload stored.
#[derive(Debug, Clone, Copy, Default)]
pub struct Stats {
    pub inserted: u64,
}

/// Stores an upload's records in one transaction; emits `PushCommitted` and, when rows are new, `PunchesStored`.
pub async fn store(state: &AppState, device: &Device, records: &[AttLine]) -> Result<Stats, Error> {
    if records.is_empty() {
        return Ok(Stats::default());
    }
    let tz =
        zone(&device.timezone).ok_or_else(|| Error::TimeZone { device: device.id, zone: device.timezone.clone() })?;
    let horizon = Timestamp::now().saturating_add(SignedDuration::from_hours(24)).unwrap_or(Timestamp::MAX);
    let users = state.store.list_device_users(device.id).await?;
    let enrolled: HashSet<&str> = users.iter().map(|u| u.user_id.as_str()).collect();
    let rows: Vec<NewPunch> = records
        .iter()
        .map(|r| {
            let (punched_at, mut flags) = instant(r.time, &tz);
            if punched_at > horizon {
                flags |= FLAG_FUTURE;
            }
            if !enrolled.is_empty() && !enrolled.contains(r.pin.as_str()) {
                flags |= FLAG_UNKNOWN_USER;
            }
            NewPunch {
                user_id: r.pin.clone(),
                uid: 0,
                local_time: r.time,
                punched_at,
                // As the agents' rows: `status` is the verify method, `punch` the punch state.
                status: r.verify,
                punch: r.state,
                flags,
            }
        })
        .collect();
    let inserted = state.store.insert_punches(device.id, &rows).await?;
    let records = rows.len() as u64;
    state.hub.emit(HubEvent::PushCommitted { device_id: device.id, records, inserted });
    if inserted > 0 {
        state.hub.emit(HubEvent::PunchesStored { device_id: device.id, inserted });
    }
    tracing::info!(device_id = %device.id, records, inserted, "push upload stored");
    Ok(Stats { inserted })
}

/// Adds or changes users the terminal reported (OPERLOG `USER` lines, `USERINFO` uploads) in the device's user
/// list. Push terminals report no slot number: new users get the next free `uid`.
pub async fn upsert_users(state: &AppState, device: &Device, users: &[UserLine]) -> Result<(), StoreError> {
    let mut list = state.store.list_device_users(device.id).await?;
    let mut next = list.iter().map(|u| u.uid).max().unwrap_or(0);
    for u in users {
        match list.iter_mut().find(|x| x.user_id == u.pin) {
            Some(x) => {
                x.name = u.name.clone();
                x.privilege = u.privilege;
                x.card = u.card;
                x.group_id = u.group.clone();
            }
            None => {
                next = next.saturating_add(1);
                list.push(DeviceUserRow {
                    device_id: device.id,
                    uid: next,
                    user_id: u.pin.clone(),
                    name: u.name.clone(),
                    privilege: u.privilege,
                    card: u.card,
                    group_id: u.group.clone(),
                });
            }
        }
    }
    state.store.replace_device_users(device.id, &list).await
}
