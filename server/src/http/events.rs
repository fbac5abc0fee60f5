//! `GET /api/events`: the hub's events as Server-Sent Events, for the dashboard's live view.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::error::ErrorBody;
use super::extract::{Caller, bearer_in};
use super::openapi;
use crate::app::AppState;
use crate::auth::session;
use crate::hub::HubEvent;

/// How often an idle stream carries a comment, so proxies do not time it out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Live events (`GET /api/events`, `text/event-stream`), each an SSE `event:` name with JSON `data:`:
/// `agent.connected` / `agent.disconnected` `{agentId}`; `device.reachability` `{deviceId, agentId, reachable}`;
/// `sync.progress` `{deviceId, done, total}`; `sync.finished` `{deviceId, syncId, status, recordsSynced}`;
/// `punches.stored` `{deviceId, inserted}`; `agent.outbox` `{agentId, bytes, limitBytes}` (an agent's queue of
/// punches not yet stored here, when it changes); `resync` `{missed}` when this client fell behind and should reload
/// what it shows. A `: keep-alive` comment comes every 15 s. The stream ends when the server shuts down, and within
/// a minute of its session or token ending; browsers' `EventSource` reconnects by itself.
#[utoipa::path(
    get,
    path = "/api/events",
    operation_id = "events",
    tag = "session",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "An endless `text/event-stream`", content_type = "text/event-stream", body = String),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn events(
    State(state): State<AppState>,
    _caller: Caller,
    headers: HeaderMap,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.hub.subscribe();
    // A logout, an expired session or a revoked token ends the stream within one period.
    let every = state.config.events_recheck;
    let mut recheck = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let stream = futures_util::stream::unfold((receiver, state, headers, recheck), |s| async move {
        let (mut receiver, state, headers, mut recheck) = s;
        loop {
            let received = tokio::select! {
                () = state.shutdown.cancelled() => return None,
                _ = recheck.tick() => {
                    if still_authorized(&state, &headers).await {
                        continue;
                    }
                    return None;
                }
                r = receiver.recv() => r,
            };
            let event = match received {
                Ok(e) => to_sse(&e),
                Err(RecvError::Lagged(missed)) => Some(named("resync", json!({ "missed": missed }))),
                Err(RecvError::Closed) => return None,
            };
            if let Some(event) = event {
                return Some((Ok(event), (receiver, state, headers, recheck)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
}

/// Whether the stream's bearer token or session cookie is still good (a database hiccup keeps the stream).
async fn still_authorized(state: &AppState, headers: &HeaderMap) -> bool {
    let verdict = match (bearer_in(headers), session::cookie(headers)) {
        (Some(token), _) => state.auth.caller(&token).await.map(|_| true),
        (None, Some(cookie)) => state.auth.session(&cookie).await.map(|s| s.is_some()),
        (None, None) => Ok(false),
    };
    verdict.unwrap_or_else(|e| e.status != axum::http::StatusCode::UNAUTHORIZED)
}

fn named(name: &str, data: serde_json::Value) -> Event {
    Event::default().event(name).data(data.to_string())
}

/// The public form of a hub event; `None` for internal ones.
fn to_sse(event: &HubEvent) -> Option<Event> {
    let e = match event {
        HubEvent::AgentConnected { agent_id } => named("agent.connected", json!({ "agentId": agent_id })),
        HubEvent::AgentDisconnected { agent_id } => named("agent.disconnected", json!({ "agentId": agent_id })),
        HubEvent::Reachability { device_id, agent_id, reachable } => {
            named("device.reachability", json!({ "deviceId": device_id, "agentId": agent_id, "reachable": reachable }))
        }
        HubEvent::SyncProgress { device_id, done, total } => {
            named("sync.progress", json!({ "deviceId": device_id, "done": done, "total": total }))
        }
        HubEvent::PunchesStored { device_id, inserted } => {
            named("punches.stored", json!({ "deviceId": device_id, "inserted": inserted }))
        }
        HubEvent::SyncFinished { device_id, sync_id, success, records_synced } => named(
            "sync.finished",
            json!({
                "deviceId": device_id,
                "syncId": sync_id,
                "status": if *success { "success" } else { "failed" },
                "recordsSynced": records_synced,
            }),
        ),
        HubEvent::OutboxFill { agent_id, bytes, limit_bytes } => {
            named("agent.outbox", json!({ "agentId": agent_id, "bytes": bytes, "limitBytes": limit_bytes }))
        }
        // Every batch, repeats included: for tests and metrics, not for people.
        HubEvent::BatchCommitted { .. } | HubEvent::PushCommitted { .. } | HubEvent::BatchFailed { .. } => return None,
    };
    Some(e)
}
