//! The seed's three routes, with the seed's JSON exactly (camelCase): existing front-ends keep working.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody, ErrorDetail};
use super::extract::{Caller, OptionalJson};
use super::openapi;
use crate::app::AppState;
use crate::store::StoreError;
use crate::sync;

/// Optional body of the seed's POST routes: no body, `{}` or no `deviceId` means every active device, pulled or push.
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelector {
    pub device_id: Option<Uuid>,
}

/// The answer of `POST /api/essl/check-device`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckDeviceResponse {
    /// Always `true`.
    pub success: bool,
    /// Every device checked, reachable or not.
    pub reachable_devices: Vec<ReachableDevice>,
    pub reachable_count: usize,
}

/// One device of a check.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReachableDevice {
    pub device_id: Uuid,
    pub device_name: String,
    pub ip_address: String,
    /// Whether a connected agent reached the device just now (a push terminal: whether it called within its poll
    /// interval).
    pub reachable: bool,
}

/// `POST /api/essl/sync-attendance` with HTTP 200: synced, or the seed's cached-data answer.
#[derive(Debug, Serialize, ToSchema)]
#[serde(untagged)]
pub enum SyncOutcome {
    Completed(SyncCompleted),
    Unreachable(SyncUnreachable),
}

/// At least one device was synced (or there was none to sync).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncCompleted {
    /// Always `true`.
    pub success: bool,
    /// `Attendance sync completed`, or `No active devices to sync`.
    pub message: String,
    /// Records new to the database.
    pub total_records: u64,
    pub stats: SyncStats,
}

/// No agent reached any of the devices: what the database holds instead (HTTP 200, as in the seed).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncUnreachable {
    /// Always `false`.
    pub success: bool,
    /// Always `true`.
    pub device_unreachable: bool,
    /// `Device unreachable. Using cached data from N minutes ago.` or `Device unreachable. No cached data
    /// available.`
    pub message: String,
    pub cached_data: CachedData,
    pub stats: SyncStats,
}

/// The seed's `cachedData`: what is stored for the unreachable devices together.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CachedData {
    pub available: bool,
    /// Punches stored for these devices.
    pub record_count: i64,
    /// When the last successful sync started.
    #[schema(format = DateTime)]
    pub last_sync_time: Option<String>,
    /// Records that sync stored.
    pub last_sync_records: Option<i32>,
    pub minutes_since_sync: Option<i64>,
}

/// Every device that was tried failed, and not for want of a connection (HTTP 502).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncFailed {
    /// Always `false`.
    pub success: bool,
    /// Always `false`.
    pub device_unreachable: bool,
    /// `Attendance sync failed: ...`
    pub message: String,
    /// `code` is `device_error`.
    pub error: ErrorDetail,
    pub stats: SyncStats,
}

/// Figures of one sync call.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStats {
    pub devices: Vec<DeviceSyncStats>,
    /// Records on the terminals (agents send only those past their watermark; the rest are stored already).
    pub records_read: u64,
    /// Of those, rows new to the database.
    pub new_records: u64,
    /// Of those, rows already stored.
    pub duplicates: u64,
}

/// How the sync of one device went.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSyncStats {
    pub device_id: Uuid,
    pub device_name: String,
    pub duration_ms: u64,
    pub status: DeviceSyncStatus,
    /// Only when `status` is `success`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub records_read: Option<u64>,
    /// Only when `status` is `success`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub new_records: Option<u64>,
    /// Only when `status` is not `success`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub error: Option<String>,
}

/// Outcome of one device's sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum DeviceSyncStatus {
    Success,
    /// No agent could reach the terminal.
    Unreachable,
    Failed,
}

/// The answer of `GET /api/essl/sync-status`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncStatusResponse {
    /// Always `true`.
    pub success: bool,
    pub devices: Vec<DeviceSyncState>,
}

/// The latest sync attempt of one device, and what is stored for it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSyncState {
    pub device_id: Uuid,
    pub device_name: String,
    pub ip_address: String,
    /// Start of the latest attempt.
    #[schema(format = DateTime)]
    pub last_sync_time: Option<String>,
    /// `success`, `failed` or `in_progress`; `null` before the first attempt.
    pub sync_status: Option<&'static str>,
    pub records_synced: Option<i32>,
    pub error_message: Option<String>,
    pub minutes_since_sync: Option<i64>,
    #[schema(format = DateTime)]
    pub last_success_time: Option<String>,
    pub last_success_records: Option<i32>,
    /// Punches stored for the device.
    pub record_count: i64,
    /// Whether a connected agent reports the device reachable (a push terminal: whether it called within its poll
    /// interval).
    pub reachable: bool,
}

fn not_found_device(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("device"),
        other => other.into(),
    }
}

/// Which devices a connected agent reaches now (`POST /api/essl/check-device`, the seed's).
#[utoipa::path(
    post,
    path = "/api/essl/check-device",
    operation_id = "checkDevice",
    tag = "seed",
    security(("bearer" = []), ("session" = [])),
    request_body(content = Option<DeviceSelector>, description = "Optional: one device, or none for every active \
        device. Any content type; an empty body is allowed."),
    responses(
        (status = 200, description = "Each device probed through the agents of its site (any role)",
            body = CheckDeviceResponse),
        (status = 400, description = openapi::MALFORMED_JSON, body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "No device with this `deviceId`", body = ErrorBody),
        (status = 413, description = openapi::TOO_LARGE, body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape (e.g. `deviceId` not a UUID)", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn check_device(
    State(state): State<AppState>,
    _caller: Caller,
    OptionalJson(body): OptionalJson<DeviceSelector>,
) -> Result<Json<CheckDeviceResponse>, ApiError> {
    let devices = sync::targets(&state, body.device_id).await.map_err(not_found_device)?;
    let reachable = sync::check(&state, &devices).await;
    let reachable_devices: Vec<ReachableDevice> = devices
        .into_iter()
        .zip(&reachable)
        .map(|(d, r)| ReachableDevice { device_id: d.id, device_name: d.name, ip_address: d.ip_address, reachable: *r })
        .collect();
    let reachable_count = reachable.iter().filter(|r| **r).count();
    Ok(Json(CheckDeviceResponse { success: true, reachable_devices, reachable_count }))
}

/// Reads the punches of one or every device into the database (`POST /api/essl/sync-attendance`, the seed's).
#[utoipa::path(
    post,
    path = "/api/essl/sync-attendance",
    operation_id = "syncAttendance",
    tag = "seed",
    security(("bearer" = []), ("session" = [])),
    request_body(content = Option<DeviceSelector>, description = "Optional: one device, or none for every active \
        device. Any content type; an empty body is allowed."),
    responses(
        (status = 200, description = "Synced (`success: true`), or no agent reached any device and this is what is \
            stored (`success: false, deviceUnreachable: true`), as in the seed. Any role; the caller is recorded as \
            `synced_by_user_id`.", body = SyncOutcome),
        (status = 400, description = openapi::MALFORMED_JSON, body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "No device with this `deviceId`", body = ErrorBody),
        (status = 413, description = openapi::TOO_LARGE, body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape (e.g. `deviceId` not a UUID)", body = ErrorBody),
        (status = 502, description = "Every device tried failed other than for want of a connection (the \
            terminal answered wrongly, the agent failed)", body = SyncFailed),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn sync_attendance(
    State(state): State<AppState>,
    caller: Caller,
    OptionalJson(body): OptionalJson<DeviceSelector>,
) -> Result<Response, ApiError> {
    let devices = sync::targets(&state, body.device_id).await.map_err(not_found_device)?;
    if devices.is_empty() {
        let stats = SyncStats { devices: Vec::new(), records_read: 0, new_records: 0, duplicates: 0 };
        return Ok(Json(SyncOutcome::Completed(SyncCompleted {
            success: true,
            message: "No active devices to sync".to_owned(),
            total_records: 0,
            stats,
        }))
        .into_response());
    }
    let runs =
        futures_util::future::join_all(devices.into_iter().map(|d| sync::sync_device(&state, d, Some(caller.id))))
            .await
            .into_iter()
            .collect::<Result<Vec<_>, _>>()?;

    let mut per_device = Vec::with_capacity(runs.len());
    let (mut read, mut new) = (0u64, 0u64);
    let mut unreachable = Vec::new();
    let mut failures = Vec::new();
    for run in &runs {
        let mut entry = DeviceSyncStats {
            device_id: run.device.id,
            device_name: run.device.name.clone(),
            duration_ms: run.duration.as_millis() as u64,
            status: DeviceSyncStatus::Success,
            records_read: None,
            new_records: None,
            error: None,
        };
        match &run.result {
            Ok(s) => {
                read += s.read;
                new += s.inserted;
                entry.records_read = Some(s.read);
                entry.new_records = Some(s.inserted);
            }
            Err(e) if e.is_connection() => {
                unreachable.push(run.device.id);
                entry.status = DeviceSyncStatus::Unreachable;
                entry.error = Some(e.to_string());
            }
            Err(e) => {
                failures.push(e.to_string());
                entry.status = DeviceSyncStatus::Failed;
                entry.error = Some(e.to_string());
            }
        }
        per_device.push(entry);
    }
    let succeeded = runs.iter().filter(|r| r.result.is_ok()).count();
    let stats =
        SyncStats { devices: per_device, records_read: read, new_records: new, duplicates: read - new.min(read) };

    if succeeded == 0 && failures.is_empty() {
        // Nothing reached any device: the seed's cached-data answer, HTTP 200.
        let c = sync::cached(&state, &unreachable).await?;
        let message = match c.minutes_since_sync {
            Some(m) => format!("Device unreachable. Using cached data from {m} minutes ago."),
            None => "Device unreachable. No cached data available.".to_owned(),
        };
        return Ok(Json(SyncOutcome::Unreachable(SyncUnreachable {
            success: false,
            device_unreachable: true,
            message,
            cached_data: CachedData {
                available: c.available,
                record_count: c.record_count,
                last_sync_time: c.last_sync_time.map(|t| t.to_string()),
                last_sync_records: c.last_sync_records,
                minutes_since_sync: c.minutes_since_sync,
            },
            stats,
        }))
        .into_response());
    }
    if succeeded == 0 {
        let body = SyncFailed {
            success: false,
            device_unreachable: false,
            message: format!("Attendance sync failed: {}", failures.join("; ")),
            error: ErrorDetail { code: "device_error", message: failures.join("; ") },
            stats,
        };
        return Ok((StatusCode::BAD_GATEWAY, Json(body)).into_response());
    }
    Ok(Json(SyncOutcome::Completed(SyncCompleted {
        success: true,
        message: "Attendance sync completed".to_owned(),
        total_records: new,
        stats,
    }))
    .into_response())
}

/// The latest sync of every device (`GET /api/essl/sync-status`, the seed's).
#[utoipa::path(
    get,
    path = "/api/essl/sync-status",
    operation_id = "syncStatus",
    tag = "seed",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "The latest sync of every device (any role)", body = SyncStatusResponse),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn sync_status(State(state): State<AppState>, _caller: Caller) -> Result<Json<SyncStatusResponse>, ApiError> {
    let now = jiff::Timestamp::now();
    let summaries = state.store.device_sync_summaries().await?;
    // Push terminals are reachable when they called within their poll interval.
    let mut push_reachable = std::collections::HashSet::new();
    for d in state.store.list_devices(false).await? {
        if d.kind == crate::store::model::DeviceKind::Push && crate::push::reachable(&state, &d).await? {
            push_reachable.insert(d.id);
        }
    }
    let devices = summaries
        .into_iter()
        .map(|s| DeviceSyncState {
            device_id: s.device_id,
            minutes_since_sync: s.last_sync_time.map(|t| (now.as_second() - t.as_second()).max(0) / 60),
            last_sync_time: s.last_sync_time.map(|t| t.to_string()),
            sync_status: s.sync_status.map(|st| st.as_str()),
            records_synced: s.records_synced,
            error_message: s.error_message,
            last_success_time: s.last_success_time.map(|t| t.to_string()),
            last_success_records: s.last_success_records,
            record_count: s.attendance_count,
            reachable: push_reachable.contains(&s.device_id)
                || state.hub.reachability(s.device_id).iter().any(|r| r.reachable),
            device_name: s.device_name,
            ip_address: s.ip_address,
        })
        .collect();
    Ok(Json(SyncStatusResponse { success: true, devices }))
}
