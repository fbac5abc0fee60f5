//! `GET /openapi.json`: the OpenAPI 3.1 document of this API, generated from the code. Each handler carries its
//! `#[utoipa::path]` (method, path, parameters, bodies, answers, security) and its request and response types derive
//! `ToSchema`, so the handlers and the document share their types; [`super::routes`] registers route and operation
//! together. No Swagger UI is bundled: point any OpenAPI viewer at `/openapi.json`.

use std::sync::OnceLock;

use axum::body::Bytes;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{Object, ObjectBuilder, Type};
use utoipa::{Modify, OpenApi};

use super::error::{ApiError, ErrorBody};
use crate::store::model::DeviceKind;

/// The parts of the document that belong to no route: info, tags, security schemes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "essl-relay",
        description = "Attendance terminals reached through agents on their LAN. JSON keys are camelCase; ids are \
            UUIDs; instants are RFC 3339. Errors are `{\"success\": false, \"error\": {\"code\", \"message\"}}` with \
            the status that fits. Every route needs a bearer token or the dashboard's session cookie except `/healthz`, \
            `/readyz`, `/openapi.json` and the login itself; with the cookie, state-changing requests also need the \
            session's `X-CSRF-Token` header. The `staff` role may check, sync and read, `admin` also manages \
            devices and agents. The dashboard (`/`, `/assets/...`) and the terminals' own push endpoints (`/iclock/...`, \
            plain-text ADMS protocol) are not part of this document."
    ),
    modifiers(&SecuritySchemes),
    tags(
        (name = "seed", description = "The three routes of the seed's API, with the seed's JSON"),
        (name = "devices", description = "Attendance terminals"),
        (name = "agents", description = "Agents on the sites' LANs, and their WebSocket"),
        (name = "attendance", description = "Stored punches"),
        (name = "push", description = "Push (ADMS) terminals: claiming serials, site secrets, the request journal, \
            command queues"),
        (name = "health", description = "Liveness, readiness, metrics"),
        (name = "session", description = "Dashboard logins (cookie sessions) and the live event stream"),
        (name = "docs", description = "This document"),
    )
)]
pub struct ApiDoc;

// Descriptions of the error answers many routes share.
pub const UNAUTHORIZED: &str = "No bearer token or session, or not a valid one";
pub const CSRF: &str = "Session cookie without the right `X-CSRF-Token` header, or from another site";
pub const FORBIDDEN: &str = "The caller has not the admin role";
pub const UNAVAILABLE: &str = "The database, or Supabase's signing keys, cannot be reached; try again";
pub const MALFORMED_JSON: &str = "Malformed JSON";
pub const TOO_LARGE: &str = "Body over 1 MiB";
pub const NOT_JSON: &str = "Not `Content-Type: application/json`";

/// Name of the security scheme of the HTTP API (API tokens, Supabase JWTs).
pub const BEARER: &str = "bearer";
/// Name of the security scheme of the dashboard's session cookie.
pub const SESSION: &str = "session";
/// Name of the security scheme of `/agent/ws` (agent tokens).
pub const AGENT_TOKEN: &str = "agentToken";

struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            BEARER,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("API token (essls_...) or Supabase JWT")
                    .description(Some(
                        "An API token from `essl-server token create --role admin|staff` (`essls_...`) or, when the \
                         server is configured for Supabase (`ESSL_SUPABASE_URL`, `ESSL_SUPABASE_JWT_SECRET`), a \
                         Supabase access token, its role from a claim.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            SESSION,
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::auth::session::COOKIE,
                "The dashboard's session, from `POST /api/session`. State-changing requests made with it also need \
                 the session's CSRF token (from `GET /api/session`) in `X-CSRF-Token`.",
            ))),
        );
        components.add_security_scheme(
            AGENT_TOKEN,
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("essla_...")
                    .description(Some(
                        "An agent token from `POST /api/agents`, as `Authorization: Bearer essla_...`; only for \
                         `/agent/ws`.",
                    ))
                    .build(),
            ),
        );
    }
}

/// The whole document, built from [`super::routes`].
pub fn document() -> utoipa::openapi::OpenApi {
    super::routes().into_openapi()
}

/// This OpenAPI document (`GET /openapi.json`).
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "docs",
    description = "This OpenAPI document. Public, like `/healthz`: it is documentation and holds no data.",
    responses(
        (status = 200, description = "The OpenAPI 3.1 document", content_type = "application/json", body = Object),
        (status = 500, description = "The document could not be serialized (a bug)", body = ErrorBody),
    )
)]
pub async fn openapi_json() -> Response {
    static JSON: OnceLock<Bytes> = OnceLock::new();
    let json = match JSON.get() {
        Some(json) => json.clone(),
        None => match document().to_json() {
            Ok(json) => JSON.get_or_init(|| Bytes::from(json)).clone(),
            Err(e) => return ApiError::internal(e).into_response(),
        },
    };
    ([(header::CONTENT_TYPE, "application/json")], json).into_response()
}

/// A string schema with a fixed set of values.
fn one_of(values: &[&str], description: &str) -> Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description(Some(description))
        .build()
}

/// Schema of a device's `kind`.
pub fn device_kind() -> Object {
    one_of(
        &[DeviceKind::Pull.as_str(), DeviceKind::Push.as_str()],
        "`pull`: an agent polls the terminal (the default); `push`: the terminal sends to the server.",
    )
}

/// Schema of a device's `transport`.
pub fn transport() -> Object {
    one_of(&["tcp", "udp"], "How an agent talks to the terminal: `tcp` (the default) or `udp`.")
}

/// Schema of the `format` parameter of `GET /api/attendance`.
pub fn attendance_format() -> Object {
    one_of(&["json", "csv"], "`json` (the default) or `csv`.")
}
