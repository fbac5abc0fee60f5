//! The uploader of one connection: sends the outbox's batches oldest first, at most [`MAX_UNACKED_BATCHES`]
//! ahead of the server's `Ack`s, and deletes each batch when its `Ack` comes (the server acks after its commit).
//! A new connection starts again from the oldest batch still queued, so whatever a dropped connection left
//! unacknowledged goes first, before anything newer. A batch left unacknowledged for `ack_timeout` (the server
//! could not store it) is sent again; the server's unique key makes repeats harmless.

use std::collections::VecDeque;
use std::time::Duration;

use essl_wire::AgentMsg;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use super::outgoing::{Out, Outgoing};
use crate::outbox::Outbox;

/// Batches sent and not yet acknowledged, at most.
pub(crate) const MAX_UNACKED_BATCHES: usize = 4;

/// Wait after an outbox error before trying again (a full disk, a locked file).
const RETRY_AFTER_ERROR: Duration = Duration::from_secs(1);

/// The running uploader; dropping it stops it.
pub(crate) struct Uploader {
    acks: mpsc::UnboundedSender<u64>,
    task: JoinHandle<()>,
}

impl Uploader {
    /// Starts uploading for connection number `conn` (request tags of other connections are not sent).
    pub fn start(outbox: Outbox, out: Out, conn: u64, ack_timeout: Duration) -> Uploader {
        let (acks, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(outbox, out, conn, rx, ack_timeout));
        Uploader { acks, task }
    }

    /// The server committed `batch`.
    pub fn ack(&self, batch: u64) {
        let _ = self.acks.send(batch);
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(outbox: Outbox, out: Out, conn: u64, mut acks: mpsc::UnboundedReceiver<u64>, ack_timeout: Duration) {
    let mut queued = outbox.queued_changes();
    match outbox.stats().await {
        Ok(s) if s.batches > 0 => {
            tracing::info!(batches = s.batches, punches = s.punches, bytes = s.bytes, "flushing the outbox");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the outbox"),
    }
    // (batch id, when it was sent), oldest first.
    let mut in_flight: VecDeque<(u64, Instant)> = VecDeque::new();
    let mut last_sent = 0u64;
    loop {
        while in_flight.len() < MAX_UNACKED_BATCHES {
            queued.borrow_and_update();
            let next = match outbox.next_after(last_sent).await {
                Ok(Some(next)) => next,
                Ok(None) => break,
                Err(error) => {
                    tracing::error!(%error, "cannot read the next batch from the outbox");
                    tokio::time::sleep(RETRY_AFTER_ERROR).await;
                    continue;
                }
            };
            let request = next.tag.filter(|t| t.conn == conn).map(|t| t.request);
            let (batch, records) = (next.id, next.records.len());
            let msg = AgentMsg::Punches { batch, device: next.device, request, records: next.records };
            if out.send(Outgoing::Msg(msg)).await.is_err() {
                return;
            }
            tracing::debug!(batch, records, ?request, "batch sent");
            in_flight.push_back((batch, Instant::now()));
            last_sent = batch;
        }
        let oldest = in_flight.front().map(|(_, sent)| *sent + ack_timeout);
        tokio::select! {
            ack = acks.recv() => {
                let Some(batch) = ack else { return };
                in_flight.retain(|(b, _)| *b != batch);
                if let Err(error) = outbox.ack(batch).await {
                    // The batch stays queued and goes again on the next connection: a repeat, not a loss.
                    tracing::error!(%error, batch, "cannot delete an acknowledged batch from the outbox");
                }
            }
            changed = queued.changed(), if in_flight.len() < MAX_UNACKED_BATCHES => {
                if changed.is_err() {
                    return;
                }
            }
            _ = sleep_until(oldest.unwrap_or_else(Instant::now)), if oldest.is_some() => {
                if let Some((batch, _)) = in_flight.front() {
                    tracing::warn!(batch, ack_timeout_ms = ack_timeout.as_millis() as u64,
                        "the server did not acknowledge a batch; sending it and the ones after it again");
                    last_sent = batch.saturating_sub(1);
                }
                in_flight.clear();
            }
        }
    }
}
