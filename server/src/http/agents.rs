//! `/api/agents` (admin) and the agents' own WebSocket endpoint `/agent/ws`.

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{Admin, ApiJson, bearer};
use super::validate;
use crate::app::AppState;
use crate::auth::token;
use crate::hub::session;
use crate::store::model::Agent;

/// Body of `POST /api/agents`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAgent {
    pub name: String,
    /// Site name; created if new.
    pub site: String,
}

async fn agent_json(state: &AppState, a: &Agent) -> Result<Value, ApiError> {
    let site = state.store.get_site(a.site_id).await?.map(|s| s.name);
    let presence = state.hub.presence(a.id);
    let devices: Vec<Value> = state
        .hub
        .reach_of_agent(a.id)
        .into_iter()
        .map(|(device, r)| {
            json!({"deviceId": device, "reachable": r.reachable, "rttMs": r.rtt_us.map(|us| us as f64 / 1000.0),
                   "checkedAt": r.checked_at.to_string(), "error": r.error})
        })
        .collect();
    Ok(json!({
        "id": a.id,
        "name": a.name,
        "site": site,
        "connected": presence.is_some(),
        "version": presence.as_ref().map(|p| p.version.clone()).or_else(|| a.version.clone()),
        "hostname": presence.as_ref().map(|p| p.hostname.clone()).or_else(|| a.hostname.clone()),
        "os": presence.as_ref().map(|p| p.os.clone()),
        "connectedSince": presence.as_ref().map(|p| p.connected_since.to_string()),
        "lastSeen": presence.as_ref().map(|p| p.last_seen).or(a.last_seen).map(|t| t.to_string()),
        "revoked": a.revoked_at.is_some(),
        "devices": devices,
    }))
}

/// `POST /api/agents` (admin): the token is in this answer and nowhere else, ever.
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    validate::name("name", &body.name)?;
    validate::name("site", &body.site)?;
    let site = state.store.ensure_site(&body.site).await?;
    let new = token::generate(token::AGENT_PREFIX).map_err(ApiError::internal)?;
    let agent = state.store.create_agent_with_id(new.id, &body.name, site.id, &new.hash).await?;
    Ok((StatusCode::CREATED, Json(json!({"agent": agent_json(&state, &agent).await?, "token": new.token.expose()}))))
}

/// `GET /api/agents` (admin)
pub async fn list(State(state): State<AppState>, _admin: Admin) -> Result<Json<Value>, ApiError> {
    let agents = state.store.list_agents().await?;
    let mut items = Vec::with_capacity(agents.len());
    for a in &agents {
        items.push(agent_json(&state, a).await?);
    }
    Ok(Json(json!({"items": items, "nextCursor": null})))
}

/// `DELETE /api/agents/{id}` (admin): revokes the token and closes the agent's connection at once.
pub async fn revoke(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = validate::uuid("agent id", &id)?;
    state.store.revoke_agent(id).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::not_found("agent"),
        other => other.into(),
    })?;
    state.hub.disconnect(id, essl_wire::close::UNAUTHORIZED, "token revoked");
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /agent/ws`: agents authenticate with their bearer token in the upgrade request.
pub async fn ws(
    State(state): State<AppState>,
    parts: Parts,
    upgrade: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Response {
    let Some(presented) = bearer(&parts) else {
        return ApiError::unauthorized().into_response();
    };
    let agent = match state.auth.agent(&presented).await {
        Ok(Some(a)) => a,
        Ok(None) => return ApiError::unauthorized().into_response(),
        Err(e) => return e.into_response(),
    };
    let upgrade = match upgrade {
        Ok(u) => u,
        Err(e) => return ApiError::bad_request(e.body_text()).into_response(),
    };
    if state.shutdown.is_cancelled() {
        return ApiError::unavailable("server is shutting down").into_response();
    }
    let ctx = state.session_ctx();
    upgrade
        .max_message_size(essl_wire::MAX_MESSAGE_BYTES)
        .max_frame_size(essl_wire::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session::serve(socket, agent, ctx))
}
