//! One error shape for every route: `{"success": false, "error": {"code", "message"}}` with the right status.
//! Internal details are logged, never sent.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::store::StoreError;

/// The body of every error answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"success": false, "error": {"code": "not_found", "message": "device not found"}}))]
pub struct ErrorBody {
    /// Always `false`.
    pub success: bool,
    pub error: ErrorDetail,
}

/// What went wrong.
#[derive(Debug, Serialize, ToSchema)]
pub struct ErrorDetail {
    /// Stable, machine-readable: `bad_request` (400), `unauthorized` (401), `forbidden` (403), `not_found` (404),
    /// `conflict` (409), `not_confirmed` (409: a clear refused, nothing cleared), `too_large` (413), `unsupported_media_type` (415), `invalid` (422), `internal` (500),
    /// `device_error` (502), `unavailable` (503).
    pub code: &'static str,
    /// For people; may change between versions.
    pub message: String,
}

/// An error answer.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> ApiError {
        ApiError { status, code, message: message.into() }
    }
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::BAD_REQUEST, "bad_request", message)
    }
    pub fn unauthorized() -> ApiError {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", "log in, or send a valid bearer token")
    }
    pub fn forbidden() -> ApiError {
        Self::new(StatusCode::FORBIDDEN, "forbidden", "this needs the admin role")
    }
    pub fn not_found(what: &str) -> ApiError {
        Self::new(StatusCode::NOT_FOUND, "not_found", format!("{what} not found"))
    }
    pub fn conflict(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }
    pub fn invalid(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::UNPROCESSABLE_ENTITY, "invalid", message)
    }
    pub fn too_large() -> ApiError {
        Self::new(StatusCode::PAYLOAD_TOO_LARGE, "too_large", "request body too large")
    }
    pub fn unavailable(message: impl Into<String>) -> ApiError {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
    pub fn internal(error: impl std::fmt::Display) -> ApiError {
        tracing::error!(%error, "internal error");
        Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", "internal error")
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody { success: false, error: ErrorDetail { code: self.code, message: self.message } };
        (self.status, Json(body)).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound => ApiError::not_found("resource"),
            StoreError::Conflict(m) => ApiError::conflict(m),
            StoreError::Invalid(m) => ApiError::invalid(m),
            StoreError::Unavailable(m) => {
                tracing::error!(error = %m, "database unavailable");
                ApiError::unavailable("database unavailable, try again")
            }
            other => ApiError::internal(other),
        }
    }
}
