//! The HTTP API: routes, extractors, errors. Handlers stay thin; the work is in `sync`, `hub` and `store`.

pub mod agents;
pub mod attendance;
pub mod devices;
pub mod error;
pub mod extract;
pub mod health;
pub mod seed;
pub mod validate;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};

use crate::app::AppState;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// Every route of the server.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/agent/ws", get(agents::ws))
        .route("/api/essl/check-device", post(seed::check_device))
        .route("/api/essl/sync-attendance", post(seed::sync_attendance))
        .route("/api/essl/sync-status", get(seed::sync_status))
        .route("/api/devices", post(devices::create).get(devices::list))
        .route("/api/devices/{id}", get(devices::get).patch(devices::update).delete(devices::delete))
        .route("/api/agents", post(agents::create).get(agents::list))
        .route("/api/agents/{id}", axum::routing::delete(agents::revoke))
        .route("/api/attendance", get(attendance::list))
        .fallback(|| async { error::ApiError::not_found("route") })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}
