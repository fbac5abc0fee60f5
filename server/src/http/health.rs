//! Liveness and readiness, for load balancers and orchestrators (unauthenticated: they reveal nothing).

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::app::AppState;

/// `GET /healthz`: the process answers.
pub async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// `GET /readyz`: the database answers and the server is not shutting down.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, Json<Value>) {
    if state.shutdown.is_cancelled() {
        return (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "shutting down"})));
    }
    match state.store.ping().await {
        Ok(()) => (StatusCode::OK, Json(json!({"status": "ready", "database": state.store.backend()}))),
        Err(error) => {
            tracing::warn!(%error, "readiness: database not answering");
            (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "database unavailable"})))
        }
    }
}

/// `GET /metrics` (authenticated): Prometheus text format.
pub async fn metrics(
    State(state): State<AppState>,
    _caller: crate::http::extract::Caller,
) -> impl axum::response::IntoResponse {
    state.metrics.agents_connected.set(i64::try_from(state.hub.presences().len()).unwrap_or(i64::MAX));
    (
        [(axum::http::header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")],
        state.metrics.render(),
    )
}
