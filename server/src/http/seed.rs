//! The seed's three routes, with the seed's JSON exactly (camelCase): existing front-ends keep working.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Caller, OptionalJson};
use crate::app::AppState;
use crate::store::StoreError;
use crate::sync;

/// Optional body of the seed's POST routes.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceSelector {
    pub device_id: Option<Uuid>,
}

fn not_found_device(e: StoreError) -> ApiError {
    match e {
        StoreError::NotFound => ApiError::not_found("device"),
        other => other.into(),
    }
}

/// `POST /api/essl/check-device`
pub async fn check_device(
    State(state): State<AppState>,
    _caller: Caller,
    OptionalJson(body): OptionalJson<DeviceSelector>,
) -> Result<Json<Value>, ApiError> {
    let devices = sync::targets(&state, body.device_id).await.map_err(not_found_device)?;
    let reachable = sync::check(&state, &devices).await;
    let list: Vec<Value> = devices
        .iter()
        .zip(&reachable)
        .map(|(d, r)| json!({"deviceId": d.id, "deviceName": d.name, "ipAddress": d.ip_address, "reachable": r}))
        .collect();
    let count = reachable.iter().filter(|r| **r).count();
    Ok(Json(json!({"success": true, "reachableDevices": list, "reachableCount": count})))
}

/// `POST /api/essl/sync-attendance`
pub async fn sync_attendance(
    State(state): State<AppState>,
    caller: Caller,
    OptionalJson(body): OptionalJson<DeviceSelector>,
) -> Result<Response, ApiError> {
    let devices = sync::targets(&state, body.device_id).await.map_err(not_found_device)?;
    if devices.is_empty() {
        return Ok(Json(json!({
            "success": true, "message": "No active devices to sync", "totalRecords": 0,
            "stats": {"devices": [], "recordsRead": 0, "newRecords": 0, "duplicates": 0}
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
        let mut entry = json!({"deviceId": run.device.id, "deviceName": run.device.name,
            "durationMs": run.duration.as_millis() as u64});
        match &run.result {
            Ok(s) => {
                read += s.received;
                new += s.inserted;
                entry["status"] = json!("success");
                entry["recordsRead"] = json!(s.received);
                entry["newRecords"] = json!(s.inserted);
            }
            Err(e) if e.is_connection() => {
                unreachable.push(run.device.id);
                entry["status"] = json!("unreachable");
                entry["error"] = json!(e.to_string());
            }
            Err(e) => {
                failures.push(e.to_string());
                entry["status"] = json!("failed");
                entry["error"] = json!(e.to_string());
            }
        }
        per_device.push(entry);
    }
    let succeeded = runs.iter().filter(|r| r.result.is_ok()).count();
    let stats =
        json!({"devices": per_device, "recordsRead": read, "newRecords": new, "duplicates": read - new.min(read)});

    if succeeded == 0 && failures.is_empty() {
        // Nothing reached any device: the seed's cached-data answer, HTTP 200.
        let c = sync::cached(&state, &unreachable).await?;
        let message = match c.minutes_since_sync {
            Some(m) => format!("Device unreachable. Using cached data from {m} minutes ago."),
            None => "Device unreachable. No cached data available.".to_owned(),
        };
        return Ok(Json(json!({
            "success": false,
            "deviceUnreachable": true,
            "message": message,
            "cachedData": {
                "available": c.available,
                "recordCount": c.record_count,
                "lastSyncTime": c.last_sync_time.map(|t| t.to_string()),
                "lastSyncRecords": c.last_sync_records,
                "minutesSinceSync": c.minutes_since_sync,
            },
            "stats": stats,
        }))
        .into_response());
    }
    if succeeded == 0 {
        let body = json!({
            "success": false,
            "deviceUnreachable": false,
            "message": format!("Attendance sync failed: {}", failures.join("; ")),
            "error": {"code": "device_error", "message": failures.join("; ")},
            "stats": stats,
        });
        return Ok((StatusCode::BAD_GATEWAY, Json(body)).into_response());
    }
    Ok(Json(json!({
        "success": true,
        "message": "Attendance sync completed",
        "totalRecords": new,
        "stats": stats,
    }))
    .into_response())
}

/// `GET /api/essl/sync-status`
pub async fn sync_status(State(state): State<AppState>, _caller: Caller) -> Result<Json<Value>, ApiError> {
    let now = jiff::Timestamp::now();
    let summaries = state.store.device_sync_summaries().await?;
    let devices: Vec<Value> = summaries
        .iter()
        .map(|s| {
            let minutes = s.last_sync_time.map(|t| (now.as_second() - t.as_second()).max(0) / 60);
            json!({
                "deviceId": s.device_id,
                "deviceName": s.device_name,
                "ipAddress": s.ip_address,
                "lastSyncTime": s.last_sync_time.map(|t| t.to_string()),
                "syncStatus": s.sync_status.map(|st| st.as_str()),
                "recordsSynced": s.records_synced,
                "errorMessage": s.error_message,
                "minutesSinceSync": minutes,
                "lastSuccessTime": s.last_success_time.map(|t| t.to_string()),
                "lastSuccessRecords": s.last_success_records,
                "recordCount": s.attendance_count,
                "reachable": state.hub.reachability(s.device_id).iter().any(|r| r.reachable),
            })
        })
        .collect();
    Ok(Json(json!({"success": true, "devices": devices})))
}
