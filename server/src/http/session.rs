//! `/api/session`: dashboard login (a cookie session), who is logged in, logout.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::Json;
use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::ApiJson;
use super::openapi;
use crate::app::AppState;
use crate::auth::session;
use crate::auth::token::Secret;
use crate::store::model::Session;

/// Body of `POST /api/session`. Unknown fields are refused (422).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Login {
    pub username: String,
    pub password: String,
}

/// Who is logged in, and the token to send back in `X-CSRF-Token`; both `null` when nobody is.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SessionView {
    pub user: Option<SessionUser>,
    pub csrf_token: Option<String>,
    /// When the session ends (RFC 3339).
    #[schema(format = DateTime)]
    pub expires_at: Option<String>,
}

/// The logged-in user.
#[derive(Debug, Serialize, ToSchema)]
pub struct SessionUser {
    pub id: Uuid,
    pub name: String,
    /// `admin` or `staff`.
    pub role: &'static str,
}

impl SessionView {
    fn of(session: Option<&Session>) -> SessionView {
        SessionView {
            user: session.map(|s| SessionUser {
                id: s.user.id,
                name: s.user.username.clone(),
                role: s.user.role.as_str(),
            }),
            csrf_token: session.map(|s| s.csrf_token.clone()),
            expires_at: session.map(|s| s.expires_at.to_string()),
        }
    }
}

/// The client's address (for login throttling); the unspecified address if the server does not know it.
pub struct ClientAddr(pub IpAddr);

impl<S: Send + Sync> FromRequestParts<S> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        let addr = parts.extensions.get::<ConnectInfo<SocketAddr>>().map(|ConnectInfo(a)| a.ip());
        Ok(ClientAddr(addr.unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
    }
}

/// Whether this request came over HTTPS (for the cookie's `Secure` flag).
pub struct Https(pub bool);

impl FromRequestParts<AppState> for Https {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        Ok(Https(session::is_https(parts, state.config.tls)))
    }
}

/// Who is logged in (`GET /api/session`). Never 401: nobody logged in is `{"user": null, ...}`.
#[utoipa::path(
    get,
    path = "/api/session",
    operation_id = "getSession",
    tag = "session",
    responses(
        (status = 200, description = "The session, or nulls", body = SessionView),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn current(State(state): State<AppState>, headers: HeaderMap) -> Result<Json<SessionView>, ApiError> {
    let found = match session::cookie(&headers) {
        Some(cookie) => state.auth.session(&cookie).await?,
        None => None,
    };
    Ok(Json(SessionView::of(found.as_ref())))
}

/// Logs in to the dashboard (`POST /api/session`): sets the `essl_session` cookie.
///
/// A wrong name and a wrong password fail alike. After 5 failures for a name (or 30 from an address) within
/// 15 minutes, further tries answer 429 with `Retry-After` until the window ends.
#[utoipa::path(
    post,
    path = "/api/session",
    operation_id = "login",
    tag = "session",
    request_body = Login,
    responses(
        (status = 200, description = "Logged in; `Set-Cookie: essl_session=...; HttpOnly; SameSite=Strict`",
            body = SessionView),
        (status = 401, description = "Wrong user name or password (`invalid_login`)", body = ErrorBody),
        (status = 403, description = "The request comes from another site", body = ErrorBody),
        (status = 422, description = "Not `{username, password}`", body = ErrorBody),
        (status = 429, description = "Too many failed logins (`rate_limited`); see `Retry-After`", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn login(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    Https(https): Https,
    headers: HeaderMap,
    ApiJson(body): ApiJson<Login>,
) -> Response {
    // Login CSRF (a foreign page logging the victim in as the attacker) is stopped by the Origin check.
    if let Err(e) = session::check_origin(&headers) {
        return ApiError::new(StatusCode::FORBIDDEN, "csrf", e.to_string()).into_response();
    }
    match state.auth.login(&body.username, Secret::new(body.password), address).await {
        Ok((session, cookie)) => {
            let mut response = Json(SessionView::of(Some(&session))).into_response();
            if let Some(value) = session::set_cookie(cookie.expose(), https) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response.headers_mut().insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            response
        }
        Err(e) => {
            let (error, wait) = e.into_api_error();
            let mut response = error.into_response();
            if let Some(value) = wait.and_then(|w| HeaderValue::from_str(&w.as_secs().max(1).to_string()).ok()) {
                response.headers_mut().insert(header::RETRY_AFTER, value);
            }
            response
        }
    }
}

/// Logs out (`DELETE /api/session`): ends the session and removes the cookie. Needs `X-CSRF-Token` when a
/// session exists (a foreign page must not log people out either).
#[utoipa::path(
    delete,
    path = "/api/session",
    operation_id = "logout",
    tag = "session",
    security(("session" = [])),
    responses(
        (status = 204, description = "Logged out (also when there was no session)"),
        (status = 403, description = openapi::CSRF, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn logout(
    State(state): State<AppState>,
    Https(https): Https,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if let Some(cookie) = session::cookie(&headers)
        && let Some(found) = state.auth.session(&cookie).await?
    {
        session::check_csrf(&headers, &found.csrf_token)
            .map_err(|e| ApiError::new(StatusCode::FORBIDDEN, "csrf", e.to_string()))?;
        state.auth.logout(&cookie).await?;
    }
    Ok((StatusCode::NO_CONTENT, [(header::SET_COOKIE, session::clear_cookie(https))]).into_response())
}
