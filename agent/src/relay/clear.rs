//! `ClearAttendance` (protocol 2): delete the terminal's log, only when every record on it is stored in the cloud,
//! and so that no punch can slip in between the check and the clear.
//!
//! 0. With `sync_first`, before holding anything (people still punch meanwhile): read the log, queue what the server
//!    has not acknowledged and wait for its acks (up to two `ack_timeout`s: a batch already in flight is sent again
//!    after one). So the terminal is held only for the few records that come in between.
//! 1. Take the terminal's working session (the device slot: no sync or probe of ours runs meanwhile) and hold the
//!    terminal: `CMD_DISABLEDEVICE`, so it takes no punches ("working...").
//! 2. Read its whole log. Every record must be acknowledged by the server: nothing of the device queued in the
//!    outbox, and its acknowledged watermark exactly this log. If not, with `sync_first` the read is queued (what
//!    is past the watermark) and the server's acks awaited (`ack_timeout`); without, or if the acks do not come,
//!    refused.
//! 3. Ask the server to confirm in its own database (`ConfirmStored` / `Stored`); refused if it does not.
//! 4. Count the records once more (a terminal that ignores "disabled" may have taken a punch: then read again),
//!    and clear (`CMD_CLEAR_ATTLOG`).
//! 5. Always enable the terminal again: on success, on refusal, on error, and when the request is cancelled. The
//!    whole sequence runs in a task of its own, so aborting the request cannot skip this; a cancellation only
//!    stops it before the clear.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use essl_wire::{AgentMsg, ErrorKind, OpError, OpResult, Punch};
use essl_zk::{ZkClient, ZkError};
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::devices::Device;
use super::jobs::{JobCtx, failure, zk_error};
use super::outgoing::Outgoing;
use crate::collect::{read_terminal, to_punch};
use crate::outbox::{OutboxError, Tag, TerminalRead};

/// How often the log is read again when the terminal took punches although held.
const ROUNDS: usize = 3;
/// Attempts to enable the terminal again on its session before trying a new one.
const ENABLE_ATTEMPTS: usize = 3;

/// The server's answer to a `ConfirmStored`: `Ok` confirmed, `Err(reason)` not.
pub(crate) type Verdict = Result<(), String>;

/// Clears waiting for the server's `Stored`, by request id; shared by a connection's session loop and its jobs.
#[derive(Clone, Default)]
pub(crate) struct Verdicts(Arc<Mutex<HashMap<u64, oneshot::Sender<Verdict>>>>);

impl Verdicts {
    fn expect(&self, id: u64) -> oneshot::Receiver<Verdict> {
        let (tx, rx) = oneshot::channel();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(id, tx);
        rx
    }

    fn forget(&self, id: u64) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
    }

    /// The server's `Stored` for request `id`; one nobody waits for (late, or never asked) is dropped.
    pub fn deliver(&self, id: u64, verdict: Verdict) {
        let waiting = self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&id);
        match waiting {
            Some(tx) => {
                let _ = tx.send(verdict);
            }
            None => tracing::debug!(id, "a Stored answer nobody waits for"),
        }
    }
}

pub(crate) async fn run(ctx: &JobCtx, id: u64, device: &Device, sync_first: bool) -> Result<OpResult, OpError> {
    if ctx.protocol < essl_wire::CLEAR_PROTOCOL_VERSION {
        return Err(failure(
            ErrorKind::Protocol,
            format!(
                "this server speaks protocol {}; clearing a terminal needs protocol {} (the server's confirmation)",
                ctx.protocol,
                essl_wire::CLEAR_PROTOCOL_VERSION
            ),
        ));
    }
    // Dropping this request (Cancel, a dead connection) cancels the token: the task stops before the clear and
    // still enables the terminal.
    let cancel = CancellationToken::new();
    let _cancel_on_drop = cancel.clone().drop_guard();
    let task = tokio::spawn(
        hold_and_clear(ctx.clone(), id, device.clone(), sync_first, cancel).instrument(tracing::Span::current()),
    );
    match task.await {
        Ok(result) => result,
        Err(error) => {
            tracing::error!(%error, "the clear task failed");
            Err(failure(ErrorKind::Internal, "the agent failed while clearing; nothing was cleared".into()))
        }
    }
}

async fn hold_and_clear(
    ctx: JobCtx,
    id: u64,
    device: Device,
    sync_first: bool,
    cancel: CancellationToken,
) -> Result<OpResult, OpError> {
    if sync_first {
        let log = read_terminal(&device, &ctx.timing, &mut |_, _| {}).await.map_err(zk_error)?;
        if let Err(missing) = ctx.outbox.confirms(&device.spec.id, &log).await.map_err(outbox_error)? {
            tracing::info!(%missing, "sending what the server has not acknowledged before holding the terminal");
            sync_and_wait(&ctx, id, &device.spec.id, &log, &cancel, ctx.timing.ack_timeout * 2).await?;
        }
    }
    let mut session = device.session(&ctx.timing).await.map_err(zk_error)?;
    if let Err(e) = session.client.disable_device().await {
        // Some terminals refuse it; then a punch could slip between the read and the clear: not worth the risk.
        session.close().await;
        return Err(failure(
            zk_error(e).kind,
            "the terminal could not be held (CMD_DISABLEDEVICE); nothing cleared".into(),
        ));
    }
    tracing::info!("terminal held (disabled) for the clear");
    let result = held(&ctx, id, &device, &mut session.client, sync_first, &cancel).await;
    let enabled = enable(&mut session.client).await;
    session.close().await;
    if let Err(error) = enabled {
        // The session broke: a new one, so the terminal does not stay on "working...".
        tracing::warn!(%error, "enabling the terminal on the clear's session failed; trying a new session");
        match device.session(&ctx.timing).await {
            Ok(mut again) => {
                if let Err(error) = enable(&mut again.client).await {
                    tracing::error!(%error, "the terminal could not be enabled again: it may show \"working...\" until restarted");
                }
                again.close().await;
            }
            Err(error) => {
                tracing::error!(%error, "the terminal could not be enabled again: it may show \"working...\" until restarted");
            }
        }
    } else {
        tracing::info!("terminal enabled again");
    }
    result
}

async fn enable(client: &mut ZkClient) -> Result<(), ZkError> {
    let mut last = None;
    for _ in 0..ENABLE_ATTEMPTS {
        match client.enable_device().await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or(ZkError::Closed))
}

fn refused(message: String) -> OpError {
    tracing::info!(reason = %message, "clear refused; nothing cleared");
    failure(ErrorKind::NotConfirmed, message)
}

/// Steps 2 to 4, with the terminal held.
async fn held(
    ctx: &JobCtx,
    id: u64,
    device: &Device,
    client: &mut ZkClient,
    sync_first: bool,
    cancel: &CancellationToken,
) -> Result<OpResult, OpError> {
    let device_id = device.spec.id.as_str();
    for round in 1..=ROUNDS {
        let serial = client.read_option("~SerialNumber").await.map_err(zk_error)?.unwrap_or_default();
        let read = client.read_attendance(&mut |_, _| {}).await.map_err(zk_error)?;
        // No user list: the clear is about records, and a queued list would only delay the confirmation.
        let log = TerminalRead { serial, records: read.records.iter().map(to_punch).collect(), users: None };
        tracing::debug!(round, records = log.records.len(), "log read while held");

        if let Err(missing) = ctx.outbox.confirms(device_id, &log).await.map_err(outbox_error)? {
            if !sync_first {
                return Err(refused(format!("{missing} (syncFirst is off)")));
            }
            tracing::info!(%missing, "sending what the server has not acknowledged before clearing");
            sync_and_wait(ctx, id, device_id, &log, cancel, ctx.timing.ack_timeout).await?;
            if let Err(missing) = ctx.outbox.confirms(device_id, &log).await.map_err(outbox_error)? {
                return Err(refused(format!("after sending, still: {missing}")));
            }
        }

        ask_server(ctx, id, &log.records, cancel).await?;
        if cancel.is_cancelled() {
            return Err(failure(ErrorKind::Cancelled, "cancelled before the clear; nothing cleared".into()));
        }
        // Held terminals take no punches, but some models ignore "disabled": the count says whether one came.
        let now = client.read_sizes().await.map_err(zk_error)?.records;
        if usize::try_from(now).ok() != Some(log.records.len()) {
            tracing::warn!(read = log.records.len(), now, "the terminal took punches although held; reading it again");
            continue;
        }
        client.clear_attendance().await.map_err(zk_error)?;
        let records = log.records.len() as u64;
        tracing::info!(records, "terminal log cleared; every record was confirmed stored");
        match ctx.outbox.mark_cleared(device_id, &log.serial).await {
            Ok(true) => {}
            Ok(false) => tracing::debug!("records were queued meanwhile; the next read sends the whole log again"),
            Err(error) => {
                tracing::warn!(%error, "cannot record the clear in the outbox; the next read sends everything")
            }
        }
        return Ok(OpResult::Cleared { records });
    }
    Err(refused(format!(
        "the terminal kept taking punches although held (it ignores CMD_DISABLEDEVICE), {ROUNDS} reads in a row"
    )))
}

/// Queues what of `log` the server has not acknowledged and waits until every batch of the device is; gives up
/// when no ack came for `limit`.
async fn sync_and_wait(
    ctx: &JobCtx,
    id: u64,
    device_id: &str,
    log: &TerminalRead,
    cancel: &CancellationToken,
    limit: Duration,
) -> Result<(), OpError> {
    let mut acks = ctx.outbox.acks();
    let tag = Tag { conn: ctx.conn, request: id };
    match ctx.outbox.enqueue_read(device_id, log, Some(tag)).await {
        Ok(queued) => tracing::debug!(queued = queued.sent, batches = queued.batches.len(), "queued before the clear"),
        Err(e @ OutboxError::Full { .. }) => return Err(refused(e.to_string())),
        Err(e) => return Err(outbox_error(e)),
    }
    // Everything of the device, realtime punches included: the limit restarts whenever one is acknowledged.
    let batches = ctx.outbox.queued_for(device_id).await.map_err(outbox_error)?;
    loop {
        acks.borrow_and_update();
        let waiting = ctx.outbox.still_queued(&batches).await.map_err(outbox_error)?;
        if waiting == 0 {
            return Ok(());
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                return Err(failure(ErrorKind::Cancelled, "cancelled while waiting for the server; nothing cleared".into()));
            }
            changed = tokio::time::timeout(limit, acks.changed()) => {
                if changed.is_err() {
                    return Err(refused(format!(
                        "the server did not acknowledge {waiting} batches of this terminal within {} s (they stay \
                         queued)",
                        limit.as_secs_f64()
                    )));
                }
            }
        }
    }
}

/// Step 3: the server's own word that its database holds the log.
async fn ask_server(ctx: &JobCtx, id: u64, records: &[Punch], cancel: &CancellationToken) -> Result<(), OpError> {
    let keys: HashSet<(&str, &str)> = records.iter().map(|p| (p.local_time.as_str(), p.user_id.as_str())).collect();
    let msg = AgentMsg::ConfirmStored {
        id,
        records: records.len() as u64,
        keys: keys.len() as u64,
        first_local_time: records.iter().map(|p| p.local_time.as_str()).min().map(str::to_owned),
        last_local_time: records.iter().map(|p| p.local_time.as_str()).max().map(str::to_owned),
    };
    let answer = ctx.verdicts.expect(id);
    if ctx.out.send(Outgoing::Msg(msg)).await.is_err() {
        ctx.verdicts.forget(id);
        return Err(failure(
            ErrorKind::Internal,
            "the connection closed before the server confirmed; nothing cleared".into(),
        ));
    }
    let limit: Duration = ctx.timing.ack_timeout;
    let verdict = tokio::select! {
        _ = cancel.cancelled() => None,
        v = tokio::time::timeout(limit, answer) => Some(v),
    };
    ctx.verdicts.forget(id);
    match verdict {
        None => Err(failure(ErrorKind::Cancelled, "cancelled while waiting for the server; nothing cleared".into())),
        Some(Err(_)) => Err(refused(format!("the server did not confirm within {} s", limit.as_secs_f64()))),
        Some(Ok(Err(_))) => {
            Err(failure(ErrorKind::Internal, "the connection closed before the server confirmed".into()))
        }
        Some(Ok(Ok(Ok(())))) => Ok(()),
        Some(Ok(Ok(Err(reason)))) => Err(refused(format!("the server does not confirm: {reason}"))),
    }
}

fn outbox_error(e: OutboxError) -> OpError {
    failure(ErrorKind::Internal, format!("the agent's outbox failed: {e}; nothing cleared"))
}
