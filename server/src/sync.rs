//! The seed's two operations, on top of the hub and the store: check which devices are reachable, and sync
//! attendance (single flight per device, every attempt recorded, the cached-data answer when nothing reaches the
//! device).

use std::time::{Duration, Instant};

use essl_wire::{Op, OpResult};
use futures_util::future::join_all;
use jiff::Timestamp;
use uuid::Uuid;

use crate::app::AppState;
use crate::hub::CallError;
use crate::metrics::OpLabels;
use crate::store::StoreError;
use crate::store::model::{Device, DeviceKind, ErrorKind, NewSyncAttempt, SyncEnd, SyncStatus};

/// Probe budget through the relay: the agent's 3 s with one retry, plus the way there and back.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(8);

/// The devices a seed route acts on: one (by id) or every active device, pulled and push.
pub async fn targets(state: &AppState, device_id: Option<Uuid>) -> Result<Vec<Device>, StoreError> {
    match device_id {
        Some(id) => state.store.get_device(id).await?.map(|d| vec![d]).ok_or(StoreError::NotFound),
        None => Ok(state.store.list_devices(true).await?),
    }
}

/// Live reachability of each device: a pulled one through its site's agents, a push one by whether it called
/// within its poll interval.
pub async fn check(state: &AppState, devices: &[Device]) -> Vec<bool> {
    join_all(devices.iter().map(|d| async move {
        if d.kind == DeviceKind::Push {
            return match crate::push::reachable(state, d).await {
                Ok(r) => r,
                Err(error) => {
                    tracing::warn!(device_id = %d.id, %error, "cannot read when the push terminal last called");
                    false
                }
            };
        }
        let ok = match state.hub.call(d, Op::Probe, CHECK_TIMEOUT).await {
            Ok(_) => true,
            Err(error) => {
                tracing::debug!(device_id = %d.id, %error, "device not reachable");
                false
            }
        };
        let outcome = if ok { "ok" } else { "unreachable" };
        state.metrics.device_requests.get_or_create(&OpLabels { op: "probe", outcome }).inc();
        ok
    }))
    .await
}

/// The outcome of syncing one device.
#[derive(Debug)]
pub struct DeviceSync {
    pub device: Device,
    pub result: Result<Synced, CallError>,
    pub duration: Duration,
}

/// A successful sync.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Synced {
    /// Records the terminal holds.
    pub read: u64,
    /// Records the agent sent: those past its watermark for the device (agents before the outbox send all).
    pub received: u64,
    /// Of those, rows new to the database.
    pub inserted: u64,
    /// Why the agent sent everything again (log cleared, terminal replaced), if it did.
    pub reset: Option<String>,
}

/// Syncs one device on behalf of `caller`: records the attempt, joins or starts the device read, records the end.
pub async fn sync_device(state: &AppState, device: Device, caller: Option<Uuid>) -> Result<DeviceSync, StoreError> {
    if device.kind == DeviceKind::Push {
        return crate::push::sync(state, device, caller).await;
    }
    let attempt = state
        .store
        .record_sync(&NewSyncAttempt {
            device_id: device.id,
            last_sync_time: Timestamp::now(),
            sync_status: SyncStatus::InProgress,
            records_synced: 0,
            records_total: None,
            error_message: None,
            error_kind: None,
            synced_by_user_id: caller,
            sync_duration_ms: None,
            agent_id: None,
        })
        .await?;
    let started = Instant::now();
    let hub = state.hub.clone();
    let timeout = hub.config().sync_timeout;
    let target = device.clone();
    let result = state
        .hub
        .flights()
        .run(device.id, move || async move {
            // With several instances, one of them reads the terminal and the others wait for its result.
            match hub.cluster() {
                Some(cluster) => {
                    let call = || hub.call(&target, Op::SyncAttendance, timeout);
                    cluster.single_flight(target.id, timeout, call).await
                }
                None => hub.call(&target, Op::SyncAttendance, timeout).await,
            }
        })
        .await;
    let duration = started.elapsed();
    state.metrics.sync_seconds.observe(duration.as_secs_f64());
    let outcome = match &result {
        Ok(_) => "ok",
        Err(e) if e.is_connection() => "unreachable",
        Err(_) => "failed",
    };
    state.metrics.device_requests.get_or_create(&OpLabels { op: "sync", outcome }).inc();
    if let Ok(r) = &result {
        state.metrics.punches_received.inc_by(r.records_received);
    }
    let duration_ms = i32::try_from(duration.as_millis()).unwrap_or(i32::MAX);
    let served_by = result.as_ref().ok().map(|r| r.agent_id);
    let result = result.map(|r| {
        let (read, reset) = match r.result {
            OpResult::Synced { read, reset, .. } => (read.unwrap_or(r.records_received), reset),
            _ => (r.records_received, None),
        };
        Synced { read, received: r.records_received, inserted: r.records_inserted, reset }
    });
    let (status, synced, total, message, kind) = match &result {
        Ok(s) => (SyncStatus::Success, clamp(s.inserted), Some(clamp(s.read)), None, None),
        Err(e) => {
            let kind = if e.is_connection() { ErrorKind::Connection } else { ErrorKind::Other };
            (SyncStatus::Failed, 0, None, Some(e.to_string()), Some(kind))
        }
    };
    match served_by {
        Some(agent_id) => {
            let end = SyncEnd {
                status,
                records_synced: synced,
                records_total: total,
                error_message: message.clone(),
                error_kind: kind,
                duration_ms: Some(duration_ms),
            };
            state.store.finish_sync_by(attempt.id, agent_id, end).await?;
        }
        None => {
            state
                .store
                .finish_sync(attempt.id, status, synced, total, message.clone(), kind, Some(duration_ms))
                .await?;
        }
    }
    state.hub.emit(crate::hub::HubEvent::SyncFinished {
        device_id: device.id,
        sync_id: attempt.id,
        success: status == SyncStatus::Success,
        records_synced: u64::try_from(synced).unwrap_or(0),
    });
    if let Some(m) = &message {
        let _ = state.store.add_sync_log(device.id, Some(attempt.id), "error", m).await;
    }
    if let Ok(Synced { reset: Some(why), .. }) = &result {
        tracing::warn!(device_id = %device.id, reset = %why, "the agent found the terminal's log cleared or replaced");
        let _ = state.store.add_sync_log(device.id, Some(attempt.id), "warning", why).await;
    }
    Ok(DeviceSync { device, result, duration })
}

fn clamp(n: u64) -> i32 {
    i32::try_from(n).unwrap_or(i32::MAX)
}

/// What is stored for devices that could not be reached: the seed's `cachedData`.
#[derive(Debug, Clone, PartialEq)]
pub struct Cached {
    pub available: bool,
    pub record_count: i64,
    pub last_sync_time: Option<Timestamp>,
    pub last_sync_records: Option<i32>,
    pub minutes_since_sync: Option<i64>,
}

/// Cached-data figures for `devices` together.
pub async fn cached(state: &AppState, devices: &[Uuid]) -> Result<Cached, StoreError> {
    let summaries = state.store.device_sync_summaries().await?;
    let mine: Vec<_> = summaries.iter().filter(|s| devices.contains(&s.device_id)).collect();
    let record_count = mine.iter().map(|s| s.attendance_count).sum();
    let latest = mine.iter().filter(|s| s.last_success_time.is_some()).max_by_key(|s| s.last_success_time);
    let last_sync_time = latest.and_then(|s| s.last_success_time);
    let minutes_since_sync = last_sync_time.map(|t| (Timestamp::now().as_second() - t.as_second()).max(0) / 60);
    Ok(Cached {
        available: last_sync_time.is_some() || record_count > 0,
        record_count,
        last_sync_time,
        last_sync_records: latest.and_then(|s| s.last_success_records),
        minutes_since_sync,
    })
}
