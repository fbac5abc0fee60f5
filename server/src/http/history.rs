//! `GET /api/sync-history`: the recorded sync attempts, newest first.

use std::collections::HashMap;

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, Caller};
use super::{List, openapi};
use crate::app::AppState;
use crate::store::model::ErrorKind;

/// Query of `GET /api/sync-history`.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct HistoryQuery {
    /// Only this device's attempts.
    #[param(format = Uuid)]
    pub device_id: Option<String>,
    /// 1 to 500, default 50.
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<u32>,
}

/// One sync attempt.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SyncAttemptView {
    pub id: Uuid,
    pub device_id: Uuid,
    pub device_name: Option<String>,
    /// When it started.
    #[schema(format = DateTime)]
    pub started_at: String,
    /// `success`, `failed` or `in_progress`.
    pub status: &'static str,
    /// Rows it stored.
    pub records_synced: i32,
    /// Records the terminal held.
    pub records_total: Option<i32>,
    pub duration_ms: Option<i32>,
    pub error_message: Option<String>,
    /// `connection` or `other`.
    pub error_kind: Option<&'static str>,
    /// The agent that served it.
    pub agent_id: Option<Uuid>,
    pub agent_name: Option<String>,
    /// Who asked (an API token's, a dashboard user's or a Supabase user's id).
    pub requested_by: Option<Uuid>,
}

/// Sync attempts, newest first (`GET /api/sync-history`). No paging: `limit` bounds it.
#[utoipa::path(
    get,
    path = "/api/sync-history",
    operation_id = "syncHistory",
    tag = "devices",
    params(HistoryQuery),
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "Attempts, newest first; `nextCursor` is always null", body = List<SyncAttemptView>),
        (status = 400, description = "A malformed query", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<List<SyncAttemptView>>, ApiError> {
    let device_id = match q.device_id.as_deref().filter(|s| !s.is_empty()) {
        Some(s) => Some(Uuid::try_parse(s).map_err(|_| ApiError::bad_request("deviceId must be a UUID"))?),
        None => None,
    };
    let limit = q.limit.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 500"));
    }
    let attempts = state.store.sync_history(device_id, limit).await?;
    let devices: HashMap<Uuid, String> =
        state.store.list_devices(false).await?.into_iter().map(|d| (d.id, d.name)).collect();
    let agents: HashMap<Uuid, String> = state.store.list_agents().await?.into_iter().map(|a| (a.id, a.name)).collect();
    let items = attempts
        .into_iter()
        .map(|a| SyncAttemptView {
            id: a.id,
            device_id: a.device_id,
            device_name: devices.get(&a.device_id).cloned(),
            started_at: a.last_sync_time.to_string(),
            status: a.sync_status.as_str(),
            records_synced: a.records_synced,
            records_total: a.records_total,
            duration_ms: a.sync_duration_ms,
            error_message: a.error_message,
            error_kind: a.error_kind.map(|k| match k {
                ErrorKind::Connection => "connection",
                ErrorKind::Other => "other",
            }),
            agent_id: a.agent_id,
            agent_name: a.agent_id.and_then(|id| agents.get(&id).cloned()),
            requested_by: a.synced_by_user_id,
        })
        .collect();
    Ok(Json(List { items, next_cursor: None }))
}
