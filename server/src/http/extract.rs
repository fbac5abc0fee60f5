//! Extractors: JSON and query strings with our error shape, and the authenticated caller.

use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::request::Parts;
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::error::ApiError;
use crate::app::AppState;
use crate::auth::session;
use crate::store::model::Role;

/// `Json<T>` whose rejections are `ApiError`s (400 malformed, 413 too large, 415 wrong type, 422 wrong shape).
pub struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match axum::Json::<T>::from_request(req, state).await {
            Ok(axum::Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => Err(ApiError::invalid(e.body_text())),
            Err(JsonRejection::JsonSyntaxError(e)) => Err(ApiError::bad_request(e.body_text())),
            Err(JsonRejection::MissingJsonContentType(_)) => Err(ApiError::new(
                axum::http::StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
                "send JSON with Content-Type: application/json",
            )),
            Err(JsonRejection::BytesRejection(e)) if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE => {
                Err(ApiError::too_large())
            }
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// A JSON body that may be absent (the seed's routes take an optional body): empty body = `T::default()`.
pub struct OptionalJson<T>(pub T);

impl<T: DeserializeOwned + Default, S: Send + Sync> FromRequest<S> for OptionalJson<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = axum::body::Bytes::from_request(req, state).await.map_err(|e| {
            if e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::too_large()
            } else {
                ApiError::bad_request(e.body_text())
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(OptionalJson(T::default()));
        }
        match serde_json::from_slice::<T>(&bytes) {
            Ok(v) => Ok(OptionalJson(v)),
            Err(e) if e.is_data() => Err(ApiError::invalid(e.to_string())),
            Err(e) => Err(ApiError::bad_request(format!("malformed JSON: {e}"))),
        }
    }
}

/// `Query<T>` with our error shape.
pub struct ApiQuery<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        match axum::extract::Query::<T>::from_request_parts(parts, state).await {
            Ok(axum::extract::Query(v)) => Ok(ApiQuery(v)),
            Err(QueryRejection::FailedToDeserializeQueryString(e)) => Err(ApiError::bad_request(e.body_text())),
            Err(e) => Err(ApiError::bad_request(e.body_text())),
        }
    }
}

/// Who is calling: an API token, a Supabase user or a dashboard user.
#[derive(Debug, Clone, PartialEq)]
pub struct Caller {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    /// A bearer token (scripts, the seed's front-end) or the dashboard's session cookie; with the cookie, a
    /// state-changing request must also pass the CSRF check.
    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        if let Some(token) = bearer(parts) {
            return state.auth.caller(&token).await;
        }
        let cookie = session::cookie(&parts.headers).ok_or_else(ApiError::unauthorized)?;
        let found = state.auth.session(&cookie).await?.ok_or_else(ApiError::unauthorized)?;
        if !parts.method.is_safe() {
            session::check_csrf(&parts.headers, &found.csrf_token).map_err(|e| {
                tracing::info!(reason = %e, user = %found.user.username, "cross-site request refused");
                ApiError::new(axum::http::StatusCode::FORBIDDEN, "csrf", e.to_string())
            })?;
        }
        Ok(Caller { id: found.user.id, name: found.user.username, role: found.user.role })
    }
}

/// A caller with the admin role.
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let caller = Caller::from_request_parts(parts, state).await?;
        if caller.role != Role::Admin {
            return Err(ApiError::forbidden());
        }
        Ok(Admin(caller))
    }
}

/// The bearer token of the `Authorization` header.
pub fn bearer(parts: &Parts) -> Option<String> {
    bearer_in(&parts.headers)
}

/// The bearer token among `headers` (for code that kept the headers, not the request parts).
pub fn bearer_in(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim().to_owned()).filter(|t| !t.is_empty())
}
