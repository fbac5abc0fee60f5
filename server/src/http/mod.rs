//! The HTTP API: routes, extractors, errors. Handlers stay thin; the work is in `sync`, `hub` and `store`.
//!
//! Every route is registered once, in [`routes`], together with its OpenAPI operation (the `#[utoipa::path]` on its
//! handler): the router and `/openapi.json` come from that one list, so the document cannot miss a route.

pub mod agents;
pub mod attendance;
pub mod dashboard;
pub mod devices;
pub mod error;
pub mod events;
pub mod extract;
pub mod health;
pub mod history;
pub mod openapi;
pub mod push;
pub mod seed;
pub mod session;
pub mod validate;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use serde::Serialize;
use utoipa::{OpenApi, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::app::AppState;

/// Largest request body accepted.
pub const MAX_BODY_BYTES: usize = 1024 * 1024;

/// A list, as every list route answers: `{"items": [...], "nextCursor": "..." | null}`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct List<T> {
    pub items: Vec<T>,
    /// Pass it back as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// Every route of the server with its OpenAPI operation. One `routes!` per path: the handlers given together
/// share one path (utoipa-axum registers the combined methods on each path it is given).
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(openapi::openapi_json))
        .routes(routes!(agents::ws))
        .routes(routes!(seed::check_device))
        .routes(routes!(seed::sync_attendance))
        .routes(routes!(seed::sync_status))
        .routes(routes!(devices::create, devices::list))
        .routes(routes!(devices::get, devices::update, devices::delete))
        .routes(routes!(devices::clear_attendance))
        .routes(routes!(agents::create, agents::list))
        .routes(routes!(agents::revoke))
        .routes(routes!(attendance::list))
        .routes(routes!(history::list))
        .routes(routes!(session::current, session::login, session::logout))
        .routes(routes!(events::events))
        .routes(routes!(push::terminals))
        .routes(routes!(push::claim))
        .routes(routes!(push::secret))
        .routes(routes!(push::journal))
        .routes(routes!(push::queue_command, push::list_commands))
}

/// The server's router: [`routes`], the dashboard's files, our 404 for anything else, the body limit.
pub fn router(state: AppState) -> Router {
    let (router, _document) = routes().split_for_parts();
    let api = router
        .merge(dashboard::routes())
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(refuse_oversized));
    // The terminals' own endpoints: body limits of their own (per table), not part of the API document.
    let push = crate::push::routes(&state.config.push);
    api.merge(push)
        .fallback(|| async { error::ApiError::not_found("route") })
        .method_not_allowed_fallback(|| async {
            error::ApiError::new(axum::http::StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed", "method not allowed")
        })
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

/// Refuses a body announced larger than [`MAX_BODY_BYTES`] from its `Content-Length` alone, before reading any of
/// it; bodies without the header are still cut at the limit while they are read.
async fn refuse_oversized(req: axum::extract::Request, next: axum::middleware::Next) -> axum::response::Response {
    let announced = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_BODY_BYTES as u64) {
        return axum::response::IntoResponse::into_response(error::ApiError::too_large());
    }
    next.run(req).await
}
