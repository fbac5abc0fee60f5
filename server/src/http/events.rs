//! `GET /api/events`: the hub's events as Server-Sent Events, for the dashboard's live view.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::State;
use axum::response::sse::{Event, KeepAlive, Sse};
use futures_util::Stream;
use serde_json::json;
use tokio::sync::broadcast::error::RecvError;

use super::error::ErrorBody;
use super::extract::Caller;
use super::openapi;
use crate::app::AppState;
use crate::hub::HubEvent;

/// How often an idle stream carries a comment, so proxies do not time it out.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

/// Live events (`GET /api/events`, `text/event-stream`), each an SSE `event:` name with JSON `data:`:
/// `agent.connected` / `agent.disconnected` `{agentId}`; `device.reachability` `{deviceId, agentId, reachable}`;
/// `sync.progress` `{deviceId, done, total}`; `sync.finished` `{deviceId, syncId, status, recordsSynced}`;
/// `punches.stored` `{deviceId, inserted}`; `resync` `{missed}` when this client fell behind and should reload
/// what it shows. A `: keep-alive` comment comes every 15 s. The stream ends when the server shuts down;
/// browsers' `EventSource` reconnects by itself.
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
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let receiver = state.hub.subscribe();
    let shutdown = state.shutdown.clone();
    let stream = futures_util::stream::unfold((receiver, shutdown), |(mut receiver, shutdown)| async move {
        loop {
            let received = tokio::select! {
                () = shutdown.cancelled() => return None,
                r = receiver.recv() => r,
            };
            let event = match received {
                Ok(e) => to_sse(&e),
                Err(RecvError::Lagged(missed)) => Some(named("resync", json!({ "missed": missed }))),
                Err(RecvError::Closed) => return None,
            };
            if let Some(event) = event {
                return Some((Ok(event), (receiver, shutdown)));
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(KEEP_ALIVE).text("keep-alive"))
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
        // Every batch, repeats included: for tests and metrics, not for people.
        HubEvent::BatchCommitted { .. } => return None,
    };
    Some(e)
}
