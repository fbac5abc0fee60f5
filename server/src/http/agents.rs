//! `/api/agents` (admin) and the agents' own WebSocket endpoint `/agent/ws`.

use axum::Json;
use axum::extract::ws::WebSocketUpgrade;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, ApiJson, Caller, bearer};
use super::validate;
use super::{List, openapi};
use crate::app::AppState;
use crate::auth::token;
use crate::hub::session;
use crate::store::model::Agent;

/// Body of `POST /api/agents`. Unknown fields are refused (422).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateAgent {
    /// 1 to 100 characters.
    pub name: String,
    /// Site name; created if new. The agent reaches that site's devices.
    pub site: String,
}

/// An agent as the API shows it.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub id: Uuid,
    pub name: String,
    /// Site name.
    pub site: Option<String>,
    /// Whether it holds a connection now.
    pub connected: bool,
    /// Agent version, from its current or last connection.
    pub version: Option<String>,
    pub hostname: Option<String>,
    /// Only while connected.
    pub os: Option<String>,
    /// Only while connected.
    #[schema(format = DateTime)]
    pub connected_since: Option<String>,
    #[schema(format = DateTime)]
    pub last_seen: Option<String>,
    /// Its token was revoked: it cannot connect any more.
    pub revoked: bool,
    /// Its latest probe of each device of its site (while connected).
    pub devices: Vec<AgentReach>,
    /// Its outbox (records read from terminals, not yet stored here), from its latest heartbeat; `null` while it is
    /// not connected or has not reported yet.
    pub outbox: Option<AgentOutbox>,
}

/// An agent's outbox fill. At `limitBytes` the agent refuses new terminal reads (records stay on the terminals);
/// past 80 % it logs a warning.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentOutbox {
    /// Bytes the outbox file uses.
    pub bytes: u64,
    /// The bound (`outbox_max_mb` of the agent).
    pub limit_bytes: u64,
    /// Records queued, not yet acknowledged by the server.
    pub pending_records: u64,
}

/// An agent's latest probe of one device.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentReach {
    pub device_id: Uuid,
    pub reachable: bool,
    /// Round-trip time of the probe.
    pub rtt_ms: Option<f64>,
    #[schema(format = DateTime)]
    pub checked_at: String,
    /// Why it is not reachable.
    pub error: Option<String>,
}

/// The answer of `POST /api/agents`.
#[derive(Debug, Serialize, ToSchema)]
pub struct CreatedAgent {
    pub agent: AgentView,
    /// The agent's bearer token for `/agent/ws`, shown this once (only its hash is stored).
    pub token: String,
}

async fn agent_view(state: &AppState, a: &Agent) -> Result<AgentView, ApiError> {
    let site = state.store.get_site(a.site_id).await?.map(|s| s.name);
    let presence = state.hub.presence(a.id);
    let devices = state
        .hub
        .reach_of_agent(a.id)
        .into_iter()
        .map(|(device, r)| AgentReach {
            device_id: device,
            reachable: r.reachable,
            rtt_ms: r.rtt_us.map(|us| us as f64 / 1000.0),
            checked_at: r.checked_at.to_string(),
            error: r.error,
        })
        .collect();
    Ok(AgentView {
        id: a.id,
        name: a.name.clone(),
        site,
        connected: presence.is_some(),
        version: presence.as_ref().map(|p| p.version.clone()).or_else(|| a.version.clone()),
        hostname: presence.as_ref().map(|p| p.hostname.clone()).or_else(|| a.hostname.clone()),
        os: presence.as_ref().map(|p| p.os.clone()),
        connected_since: presence.as_ref().map(|p| p.connected_since.to_string()),
        last_seen: presence.as_ref().map(|p| p.last_seen).or(a.last_seen).map(|t| t.to_string()),
        revoked: a.revoked_at.is_some(),
        devices,
        outbox: presence.as_ref().and_then(|p| p.outbox).map(|o| AgentOutbox {
            bytes: o.bytes,
            limit_bytes: o.limit_bytes,
            pending_records: o.pending_records,
        }),
    })
}

/// Adds an agent and answers its token, once (`POST /api/agents`, admin).
///
/// The token is in this answer and nowhere else, ever.
#[utoipa::path(
    post,
    path = "/api/agents",
    operation_id = "createAgent",
    tag = "agents",
    security(("bearer" = []), ("session" = [])),
    request_body = CreateAgent,
    responses(
        (status = 201, description = "Created (admin role); the token is in this answer and nowhere else, ever",
            body = CreatedAgent),
        (status = 400, description = openapi::MALFORMED_JSON, body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 413, description = openapi::TOO_LARGE, body = ErrorBody),
        (status = 415, description = openapi::NOT_JSON, body = ErrorBody),
        (status = 422, description = "Wrong shape, unknown field, or a name or site out of its rules",
            body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateAgent>,
) -> Result<(StatusCode, Json<CreatedAgent>), ApiError> {
    validate::name("name", &body.name)?;
    validate::name("site", &body.site)?;
    let site = state.store.ensure_site(&body.site).await?;
    let new = token::generate(token::AGENT_PREFIX).map_err(ApiError::internal)?;
    let agent = state.store.create_agent_with_id(new.id, &body.name, site.id, &new.hash).await?;
    let token = new.token.expose().to_owned();
    Ok((StatusCode::CREATED, Json(CreatedAgent { agent: agent_view(&state, &agent).await?, token })))
}

/// Lists the agents, connected or not (`GET /api/agents`; staff may read it: the dashboard shows every user
/// which offices are online).
#[utoipa::path(
    get,
    path = "/api/agents",
    operation_id = "listAgents",
    tag = "agents",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "Every agent, connected or not, revoked or not, in one page (`nextCursor` is \
            `null`)", body = List<AgentView>),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Json<List<AgentView>>, ApiError> {
    let agents = state.store.list_agents().await?;
    let mut items = Vec::with_capacity(agents.len());
    for a in &agents {
        items.push(agent_view(&state, a).await?);
    }
    Ok(Json(List { items, next_cursor: None }))
}

/// Revokes an agent's token and closes its connection at once (`DELETE /api/agents/{id}`, admin).
#[utoipa::path(
    delete,
    path = "/api/agents/{id}",
    operation_id = "revokeAgent",
    tag = "agents",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Agent id")),
    responses(
        (status = 204, description = "Revoked, and its connection closed (admin role)"),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 404, description = "No such agent", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
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

/// The agents' WebSocket (`GET /agent/ws`): agents authenticate with their own bearer token in the upgrade.
#[utoipa::path(
    get,
    path = "/agent/ws",
    operation_id = "agentSocket",
    tag = "agents",
    description = "WebSocket upgrade (RFC 6455) for `essl-agent`: the agent presents its own token (from \
        `POST /api/agents`, not an API token) as `Authorization: Bearer ...`; after the upgrade, binary MessagePack \
        frames of the essl-wire protocol flow both ways.",
    security(("agentToken" = [])),
    params(
        ("Upgrade" = String, Header, description = "`websocket`"),
        ("Connection" = String, Header, description = "`Upgrade`"),
        ("Sec-WebSocket-Key" = String, Header, description = "Random 16 bytes, base64"),
        ("Sec-WebSocket-Version" = String, Header, description = "`13`"),
    ),
    responses(
        (status = 101, description = "Switching protocols: the agent's session begins",
            headers(("Sec-WebSocket-Accept" = String, description = "Per RFC 6455"))),
        (status = 400, description = "Not a valid WebSocket upgrade request", body = ErrorBody),
        (status = 401, description = "No agent token, or an unknown or revoked one", body = ErrorBody),
        (status = 503, description = "The server is shutting down, or the database does not answer",
            body = ErrorBody),
    )
)]
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
    // Buffers sized for tens of thousands of idle agents (`essl-bench agents`): tungstenite's default 128 KiB read
    // buffer is allocated at the upgrade, and was most of the ~150 KiB of server RSS per idle agent measured
    // before. 4 KiB holds every heartbeat; larger messages (punch batches, up to MAX_MESSAGE_BYTES) grow it on
    // demand. Frames are written at once (no write batching: every send is flushed anyway), and at most one whole
    // message may wait in the write buffer before `send` pushes back.
    upgrade
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_write_buffer_size(essl_wire::MAX_MESSAGE_BYTES + 64)
        .max_message_size(essl_wire::MAX_MESSAGE_BYTES)
        .max_frame_size(essl_wire::MAX_MESSAGE_BYTES)
        .on_upgrade(move |socket| session::serve(socket, agent, ctx))
}
