//! One agent's WebSocket, from `Hello` to close: handshake with a deadline, then a reader (this task) and a writer
//! (its own task, fed by the hub and by pings). Anything undecodable closes this connection only.

use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use essl_wire::{AgentMsg, DeviceSpec, ServerMsg, close};
use futures_util::{SinkExt, StreamExt};
use jiff::Timestamp;
use jiff::civil::DateTime;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::{AgentPresence, Hub, HubEvent, Outbound};
use crate::ingest;
use crate::store::Store;
use crate::store::model::{Agent, Device};

/// Everything a session needs, passed explicitly.
#[derive(Clone)]
pub struct SessionCtx {
    pub hub: Hub,
    pub store: Store,
    /// Cancelled when the server lets its agents go: at the end of a shutdown, after in-flight requests (its own
    /// and those other instances forwarded) had their chance to finish through them.
    pub shutdown: CancellationToken,
}

/// The WebSocket spec of a site's devices.
pub fn device_specs(devices: &[Device]) -> Vec<DeviceSpec> {
    devices
        .iter()
        .filter(|d| d.active && d.kind == crate::store::model::DeviceKind::Pull)
        .map(|d| DeviceSpec {
            id: d.id.to_string(),
            name: d.name.clone(),
            addr: format!("{}:{}", d.ip_address, d.port),
            udp: d.udp,
            comm_key: d.comm_key,
        })
        .collect()
}

/// Serves one authenticated agent until it goes away, is revoked, or the server shuts down.
pub async fn serve(ws: WebSocket, agent: Agent, ctx: SessionCtx) {
    let (mut sink, mut stream) = ws.split();
    let cfg = ctx.hub.config().clone();

    // Handshake.
    let hello = match tokio::time::timeout(cfg.hello_timeout, stream.next()).await {
        Ok(Some(Ok(Message::Binary(bytes)))) => essl_wire::decode_agent(&bytes).ok(),
        _ => None,
    };
    let Some(AgentMsg::Hello { min_protocol, max_protocol, agent_version, hostname, os }) = hello else {
        let _ = sink.send(close_msg(close::PROTOCOL_ERROR, "expected Hello")).await;
        return;
    };
    let Some(protocol) = essl_wire::negotiate(min_protocol, max_protocol) else {
        tracing::warn!(agent_id = %agent.id, min_protocol, max_protocol, "agent speaks no protocol version we do");
        let reason = format!(
            "server speaks protocol {}..={}, agent {min_protocol}..={max_protocol}: upgrade the agent",
            essl_wire::MIN_PROTOCOL_VERSION,
            essl_wire::PROTOCOL_VERSION
        );
        let _ = sink.send(close_msg(close::INCOMPATIBLE, &reason)).await;
        return;
    };
    let devices = match ctx.store.devices_for_site(agent.site_id).await {
        Ok(d) => d,
        Err(error) => {
            tracing::error!(%error, "cannot load the site's devices");
            let _ = sink.send(close_msg(close::GOING_AWAY, "server storage unavailable")).await;
            return;
        }
    };
    let welcome = ServerMsg::Welcome {
        protocol,
        agent_id: agent.id.to_string(),
        site: agent.site_id.to_string(),
        devices: device_specs(&devices),
        probe_interval_ms: u64::try_from(cfg.probe_interval.as_millis()).unwrap_or(u64::MAX),
    };
    match essl_wire::encode_server(&welcome) {
        Ok(bytes) => {
            if sink.send(Message::Binary(bytes.into())).await.is_err() {
                return;
            }
        }
        Err(error) => {
            tracing::error!(%error, "cannot encode Welcome");
            return;
        }
    }
    let now = Timestamp::now();
    let (tx, rx) = mpsc::channel::<Outbound>(256);
    let presence = AgentPresence {
        agent_id: agent.id,
        site_id: agent.site_id,
        version: agent_version.clone(),
        hostname: hostname.clone(),
        os,
        protocol,
        connected_since: now,
        last_seen: now,
        outbox: None,
    };
    let (conn_id, kill) = ctx.hub.register(presence.clone(), tx.clone());
    if let Some(cluster) = ctx.hub.cluster() {
        cluster.agent_up(&presence, conn_id).await;
    }
    if let Err(error) = ctx.store.touch_agent(agent.id, now, Some(&agent_version), Some(&hostname)).await {
        tracing::warn!(%error, "cannot record the agent's last contact");
    }
    tracing::info!(agent_id = %agent.id, %hostname, version = %agent_version, protocol, "agent connected");

    let writer_done = CancellationToken::new();
    let writer = tokio::spawn(write_loop(sink, rx, cfg.ping_interval, writer_done.clone()));
    let peer = Peer { agent: &agent, protocol };
    let reason = read_loop(&mut stream, &peer, &ctx, tx.clone(), cfg.ping_interval * 2, &writer_done, &kill).await;
    tracing::info!(agent_id = %agent.id, reason, "agent session ended");
    // Tell the peer why, unless the writer already closed for a reason of its own.
    let _ = tx.try_send(Outbound::Close(close_code_for(reason), reason.to_owned()));
    drop(tx);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    ctx.hub.unregister(agent.id, conn_id);
    if let Some(cluster) = ctx.hub.cluster() {
        let moving = matches!(reason, "shutdown" | "closed by server");
        cluster.agent_down(agent.id, conn_id, moving).await;
    }
    if let Err(error) = ctx.store.touch_agent(agent.id, Timestamp::now(), None, None).await {
        tracing::debug!(%error, "cannot record the agent's last contact");
    }
}

fn close_code_for(reason: &str) -> u16 {
    match reason {
        "silent" => close::SILENT,
        // Oversized or malformed frames surface as stream errors; a dead socket never reads the close anyway.
        "protocol error" | "connection error" => close::PROTOCOL_ERROR,
        "shutdown" => close::GOING_AWAY,
        "revoked" => close::UNAUTHORIZED,
        _ => close::GOING_AWAY,
    }
}

fn close_msg(code: u16, reason: &str) -> Message {
    // Close reasons are limited to 123 bytes by the WebSocket spec.
    let mut end = reason.len().min(120);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    Message::Close(Some(CloseFrame { code, reason: reason[..end].to_owned().into() }))
}

async fn write_loop(
    mut sink: futures_util::stream::SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    ping_every: Duration,
    done: CancellationToken,
) {
    let mut ping = tokio::time::interval(ping_every);
    ping.tick().await;
    loop {
        let msg = tokio::select! {
            out = rx.recv() => match out {
                Some(Outbound::Msg(m)) => match essl_wire::encode_server(&m) {
                    Ok(bytes) => Message::Binary(bytes.into()),
                    Err(error) => {
                        tracing::error!(%error, "cannot encode a server message");
                        continue;
                    }
                },
                Some(Outbound::Close(code, reason)) => {
                    let _ = sink.send(close_msg(code, &reason)).await;
                    break;
                }
                None => break,
            },
            _ = ping.tick() => Message::Ping(Vec::new().into()),
        };
        if sink.send(msg).await.is_err() {
            break;
        }
    }
    let _ = sink.close().await;
    done.cancel();
}

/// The agent at the other end and the protocol version agreed with it.
struct Peer<'a> {
    agent: &'a Agent,
    protocol: u16,
}

/// Reads until the connection ends; returns why.
async fn read_loop(
    stream: &mut futures_util::stream::SplitStream<WebSocket>,
    peer: &Peer<'_>,
    ctx: &SessionCtx,
    tx: mpsc::Sender<Outbound>,
    silence: Duration,
    writer_done: &CancellationToken,
    kill: &CancellationToken,
) -> &'static str {
    let agent = peer.agent;
    loop {
        let frame = tokio::select! {
            _ = kill.cancelled() => return "revoked",
            _ = ctx.shutdown.cancelled() => return "shutdown",
            _ = writer_done.cancelled() => return "closed by server",
            f = tokio::time::timeout(silence, stream.next()) => f,
        };
        let msg = match frame {
            Err(_) => return "silent",
            Ok(None) => return "connection closed",
            Ok(Some(Err(_))) => return "connection error",
            Ok(Some(Ok(m))) => m,
        };
        ctx.hub.touch(agent.id);
        let bytes = match msg {
            Message::Binary(b) => b,
            Message::Ping(_) | Message::Pong(_) => continue,
            Message::Close(_) => return "closed by agent",
            Message::Text(_) => return "protocol error",
        };
        let Ok(msg) = essl_wire::decode_agent(&bytes) else {
            tracing::warn!(agent_id = %agent.id, len = bytes.len(), "undecodable message from agent");
            return "protocol error";
        };
        if handle(msg, peer, ctx, &tx).await.is_err() {
            return "protocol error";
        }
    }
}

struct Violation;

async fn handle(
    msg: AgentMsg,
    peer: &Peer<'_>,
    ctx: &SessionCtx,
    tx: &mpsc::Sender<Outbound>,
) -> Result<(), Violation> {
    let agent = peer.agent;
    match msg {
        AgentMsg::Hello { .. } => return Err(Violation),
        AgentMsg::Response { id, outcome } => ctx.hub.complete(agent.id, id, outcome),
        AgentMsg::Progress { id, done, total } => {
            if let Some(device_id) = ctx.hub.pending_device(agent.id, id) {
                ctx.hub.emit(HubEvent::SyncProgress { device_id, done, total });
            }
        }
        AgentMsg::Reachability { reports, outbox } => {
            if let Some(fill) = outbox {
                ctx.hub.record_outbox(agent.id, fill);
            }
            let mut own = Vec::with_capacity(reports.len());
            for r in reports {
                let Ok(device_id) = Uuid::try_parse(&r.device) else { continue };
                if device_in_site(ctx, device_id, agent.site_id).await {
                    own.push((device_id, r));
                }
            }
            ctx.hub.record_reach(agent.id, &own);
            if let Some(cluster) = ctx.hub.cluster() {
                cluster.reach(agent.id, &own).await;
            }
        }
        AgentMsg::ConfirmStored { id, records, keys, first_local_time, last_local_time } => {
            let check = StoredCheck { records, keys, first: first_local_time, last: last_local_time };
            let verdict = match ctx.hub.pending_clear(agent.id, id) {
                Some(device_id) => confirm_stored(ctx, device_id, &check).await,
                None => Err("no clear of this terminal is waiting (it timed out or was cancelled)".into()),
            };
            if let Err(reason) = &verdict {
                tracing::warn!(agent_id = %agent.id, request = id, %reason, "clear not confirmed");
            }
            let (confirmed, reason) = match verdict {
                Ok(()) => (true, None),
                Err(reason) => (false, Some(reason)),
            };
            if tx.send(Outbound::Msg(ServerMsg::Stored { id, confirmed, reason })).await.is_err() {
                return Ok(());
            }
        }
        AgentMsg::Punches { batch, device, request, records, users } => {
            let Ok(device_id) = Uuid::try_parse(&device) else { return Err(Violation) };
            if records.len() > essl_wire::MAX_PUNCHES_PER_BATCH
                || users.as_ref().is_some_and(|u| u.len() > essl_wire::MAX_USERS_PER_BATCH)
            {
                return Err(Violation);
            }
            let device = match ctx.store.get_device(device_id).await {
                Ok(Some(d)) if d.site_id == Some(agent.site_id) => d,
                Ok(_) => {
                    tracing::warn!(agent_id = %agent.id, %device_id, "punches for a device outside the agent's site");
                    return Err(Violation);
                }
                Err(error) => {
                    // Not acknowledged: the agent keeps the batch and the request fails now rather than later.
                    tracing::error!(%error, %device_id, batch, "cannot load device for punches");
                    if let Some(id) = request {
                        ctx.hub.fail_storage(
                            agent.id,
                            id,
                            essl_wire::ErrorKind::Internal,
                            "storage unavailable".into(),
                        );
                    }
                    refuse(peer, ctx, tx, device_id, batch, request, format!("storage unavailable: {error}")).await;
                    return Ok(());
                }
            };
            // The user list first: the records after it are checked against it.
            let stored = match &users {
                Some(users) => ingest::store_user_list(&ctx.store, &device, users).await.map(drop),
                None => Ok(()),
            };
            let stored = match stored {
                Ok(()) => ingest::store_punches(&ctx.store, &device, &records).await,
                Err(error) => Err(error.into()),
            };
            match stored {
                Ok(stats) => {
                    if let Some(id) = request {
                        ctx.hub.add_stored(agent.id, id, records.len() as u64, stats.inserted);
                    }
                    let received = records.len() as u64;
                    tracing::debug!(agent_id = %agent.id, %device_id, batch, received, inserted = stats.inserted, ?request, "batch stored");
                    ctx.hub.emit(HubEvent::BatchCommitted {
                        device_id,
                        agent_id: agent.id,
                        batch,
                        records: received,
                        inserted: stats.inserted,
                    });
                    if stats.inserted > 0 {
                        ctx.hub.emit(HubEvent::PunchesStored { device_id, inserted: stats.inserted });
                    }
                    if tx.send(Outbound::Msg(ServerMsg::Ack { batch })).await.is_err() {
                        return Ok(());
                    }
                }
                Err(error) => {
                    tracing::error!(%error, %device_id, batch, "cannot store punches; batch not acknowledged");
                    if let Some(id) = request {
                        let message = format!("storage failed: {error}");
                        ctx.hub.fail_storage(agent.id, id, essl_wire::ErrorKind::Internal, message);
                    }
                    refuse(peer, ctx, tx, device_id, batch, request, format!("storage failed: {error}")).await;
                }
            }
        }
    }
    Ok(())
}

/// The server's own check before an agent clears a terminal: does the database hold, for this device, at least as
/// many rows between the log's first and last local time as the log has distinct (local time, user) keys?
async fn confirm_stored(ctx: &SessionCtx, device_id: Uuid, check: &StoredCheck) -> Result<(), String> {
    if check.keys == 0 {
        return Ok(());
    }
    let (Some(first), Some(last)) = (check.first.as_deref(), check.last.as_deref()) else {
        return Err("the agent sent no time range for a log that is not empty".into());
    };
    let parse =
        |t: &str| DateTime::strptime("%Y-%m-%dT%H:%M:%S", t).map_err(|_| format!("unreadable local time {t:?}"));
    let (first, last) = (parse(first)?, parse(last)?);
    let stored = ctx.store.count_attendance_between(device_id, first, last).await.map_err(|error| {
        tracing::error!(%error, %device_id, "cannot count the stored punches for a clear");
        "the database could not be asked".to_owned()
    })?;
    if u64::try_from(stored).unwrap_or(0) >= check.keys {
        tracing::info!(%device_id, stored, keys = check.keys, records = check.records, "clear confirmed: every record is stored");
        Ok(())
    } else {
        Err(format!(
            "the database holds {stored} records of this device from {first} to {last}, the terminal {} (not all are \
             stored)",
            check.keys
        ))
    }
}

/// What an agent's `ConfirmStored` says.
struct StoredCheck {
    records: u64,
    keys: u64,
    first: Option<String>,
    last: Option<String>,
}

/// A batch that was not stored: reported, and refused with `Nack` (protocol 2 and later) so the agent sends it again
/// soon instead of waiting for its ack timeout.
async fn refuse(
    peer: &Peer<'_>,
    ctx: &SessionCtx,
    tx: &mpsc::Sender<Outbound>,
    device_id: Uuid,
    batch: u64,
    request: Option<u64>,
    error: String,
) {
    ctx.hub.emit(HubEvent::BatchFailed { device_id, agent_id: peer.agent.id, batch, request });
    if peer.protocol >= essl_wire::NACK_SINCE {
        let _ = tx.send(Outbound::Msg(ServerMsg::Nack { batch, error })).await;
    }
}

async fn device_in_site(ctx: &SessionCtx, device_id: Uuid, site_id: Uuid) -> bool {
    matches!(ctx.store.get_device(device_id).await, Ok(Some(d)) if d.site_id == Some(site_id))
}
