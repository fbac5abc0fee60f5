//! Liveness and readiness, for load balancers and orchestrators (unauthenticated: they reveal nothing).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use super::error::ErrorBody;
use super::openapi;
use crate::app::AppState;
use crate::metrics::AgentFigures;

/// The answer of `/healthz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    pub status: &'static str,
}

/// The answer of `/readyz`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Readiness {
    /// `ready`, `shutting down` (from the shutdown signal on, through the shutdown delay while everything else is
    /// still served) or `database unavailable`.
    pub status: &'static str,
    /// `sqlite` or `postgres`; only when ready.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(nullable = false)]
    pub database: Option<&'static str>,
}

/// Liveness: the process answers (`GET /healthz`).
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "The process answers", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok" })
}

/// Readiness: the database answers and the server is not shutting down (`GET /readyz`).
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Ready: the database answers", body = Readiness),
        (status = 503, description = "Shutting down, or the database does not answer (this body, not the error \
            shape). From the shutdown signal on: during the shutdown delay (`shutdown_delay`) every other route \
            is still served, so that a load balancer's health check takes the instance out of rotation before \
            it stops accepting connections",
            body = Readiness),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Readiness>) {
    let not_ready = |status| (StatusCode::SERVICE_UNAVAILABLE, Json(Readiness { status, database: None }));
    if state.leaving.is_cancelled() || state.shutdown.is_cancelled() {
        return not_ready("shutting down");
    }
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(Readiness { status: "ready", database: Some(state.store.backend()) })),
        Err(error) => {
            tracing::warn!(%error, "readiness: database not answering");
            not_ready("database unavailable")
        }
    }
}

/// Prometheus metrics, authenticated (`GET /metrics`).
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "Prometheus metrics (OpenMetrics text format); any role. Per connected \
            agent (label `agent`, its id), from its latest heartbeat: `essl_agent_outbox_bytes`, \
            `essl_agent_outbox_limit_bytes`, `essl_agent_outbox_pending_records`",
            content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8", body = String),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn metrics(
    State(state): State<AppState>,
    _caller: crate::http::extract::Caller,
) -> impl axum::response::IntoResponse {
    let agents: Vec<AgentFigures> = state
        .hub
        .local_presences()
        .into_iter()
        .map(|(p, _)| AgentFigures { agent_id: p.agent_id, outbox: p.outbox })
        .collect();
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render_with_agents(&agents),
    )
}
