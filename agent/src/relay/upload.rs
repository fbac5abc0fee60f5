//! The uploader of one connection: sends the outbox's batches oldest first, at most [`MAX_UNACKED_BATCHES`]
//! ahead of the server's `Ack`s, and deletes each batch when its `Ack` comes (the server acks after its commit).
//! A new connection starts again from the oldest batch still queued, so whatever a dropped connection left
//! unacknowledged goes first, before anything newer. A batch the server refused with `Nack` (its database failed)
//! is sent again after a short delay (1 s, doubling up to 30 s while refusals go on); one left unacknowledged for
//! `ack_timeout` (a server that never answers) is sent again too. Either way the batches after it go again with
//! it; the server's unique key makes repeats harmless.

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

/// Delay before sending a refused batch again: the first, and the longest while refusals go on.
const NACK_RETRY_MIN: Duration = Duration::from_secs(1);
const NACK_RETRY_MAX: Duration = Duration::from_secs(30);

/// What the server said about a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    Ack(u64),
    Nack(u64),
}

/// The running uploader; dropping it stops it.
pub(crate) struct Uploader {
    replies: mpsc::UnboundedSender<Reply>,
    task: JoinHandle<()>,
}

impl Uploader {
    /// Starts uploading for connection number `conn` (request tags of other connections are not sent).
    pub fn start(outbox: Outbox, out: Out, conn: u64, ack_timeout: Duration) -> Uploader {
        let (replies, rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(run(outbox, out, conn, rx, ack_timeout));
        Uploader { replies, task }
    }

    /// The server committed `batch`.
    pub fn ack(&self, batch: u64) {
        let _ = self.replies.send(Reply::Ack(batch));
    }

    /// The server could not store `batch`.
    pub fn nack(&self, batch: u64) {
        let _ = self.replies.send(Reply::Nack(batch));
    }
}

impl Drop for Uploader {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn run(outbox: Outbox, out: Out, conn: u64, mut replies: mpsc::UnboundedReceiver<Reply>, ack_timeout: Duration) {
    let mut queued = outbox.queued_changes();
    match outbox.stats().await {
        Ok(s) if s.batches > 0 => {
            tracing::info!(batches = s.batches, punches = s.punches, bytes = s.bytes, "flushing the outbox");
        }
        Ok(_) => {}
        Err(error) => tracing::warn!(%error, "cannot read the outbox"),
    }
    let mut in_flight = InFlight::default();
    let mut last_sent = 0u64;
    let mut nack_delay = NACK_RETRY_MIN;
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
            let msg =
                AgentMsg::Punches { batch, device: next.device, request, records: next.records, users: next.users };
            if out.send(Outgoing::Msg(msg)).await.is_err() {
                return;
            }
            tracing::debug!(batch, records, ?request, "batch sent");
            in_flight.sent(batch, Instant::now() + ack_timeout);
            last_sent = batch;
        }
        let due = in_flight.next_due();
        tokio::select! {
            reply = replies.recv() => match reply {
                None => return,
                Some(Reply::Ack(batch)) => {
                    in_flight.done(batch);
                    nack_delay = NACK_RETRY_MIN;
                    if let Err(error) = outbox.ack(batch).await {
                        // The batch stays queued and goes again on the next connection: a repeat, not a loss.
                        tracing::error!(%error, batch, "cannot delete an acknowledged batch from the outbox");
                    }
                }
                Some(Reply::Nack(batch)) => {
                    if in_flight.retry_at(batch, Instant::now() + nack_delay) {
                        tracing::debug!(batch, delay_ms = nack_delay.as_millis() as u64, "refused batch goes again");
                        nack_delay = (nack_delay * 2).min(NACK_RETRY_MAX);
                    }
                }
            },
            changed = queued.changed(), if in_flight.len() < MAX_UNACKED_BATCHES => {
                if changed.is_err() {
                    return;
                }
            }
            _ = sleep_until(due.map(|(_, at)| at).unwrap_or_else(Instant::now)), if due.is_some() => {
                if let Some((batch, _)) = due {
                    if in_flight.refused(batch) {
                        tracing::info!(batch, "sending a refused batch again, and the ones after it");
                    } else {
                        tracing::warn!(batch, ack_timeout_ms = ack_timeout.as_millis() as u64,
                            "the server did not acknowledge a batch; sending it and the ones after it again");
                    }
                    in_flight.resend_from(batch);
                    last_sent = batch.saturating_sub(1);
                }
            }
        }
    }
}

/// Batches sent on this connection and not acknowledged yet, oldest first, each with when to send it again (its
/// ack deadline, or sooner after a `Nack`).
#[derive(Debug, Default)]
struct InFlight(VecDeque<Entry>);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Entry {
    batch: u64,
    due: Instant,
    refused: bool,
}

impl InFlight {
    fn len(&self) -> usize {
        self.0.len()
    }

    fn sent(&mut self, batch: u64, due: Instant) {
        self.0.push_back(Entry { batch, due, refused: false });
    }

    fn done(&mut self, batch: u64) {
        self.0.retain(|e| e.batch != batch);
    }

    /// A `Nack`: send `batch` again at `at` (if it is still in flight: a late `Nack` of a batch sent again since is
    /// ignored). Returns whether it was.
    fn retry_at(&mut self, batch: u64, at: Instant) -> bool {
        match self.0.iter_mut().find(|e| e.batch == batch && !e.refused) {
            Some(e) => {
                e.due = e.due.min(at);
                e.refused = true;
                true
            }
            None => false,
        }
    }

    /// The batch to send again first, and when.
    fn next_due(&self) -> Option<(u64, Instant)> {
        self.0.iter().min_by_key(|e| (e.due, e.batch)).map(|e| (e.batch, e.due))
    }

    fn refused(&self, batch: u64) -> bool {
        self.0.iter().any(|e| e.batch == batch && e.refused)
    }

    /// `batch` and everything sent after it go again: they leave the window and are sent anew.
    fn resend_from(&mut self, batch: u64) {
        self.0.retain(|e| e.batch < batch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_batch_is_due_before_older_deadlines_and_takes_the_later_ones_with_it() {
        let now = Instant::now();
        let mut f = InFlight::default();
        for b in 1..=4 {
            f.sent(b, now + Duration::from_secs(120));
        }
        assert_eq!(f.next_due(), Some((1, now + Duration::from_secs(120))));
        assert!(f.retry_at(3, now + Duration::from_secs(1)));
        // Only once per sending: a second refusal of the same sending is not a new retry.
        assert!(!f.retry_at(3, now + Duration::from_secs(5)));
        assert!(!f.retry_at(9, now));
        assert_eq!(f.next_due(), Some((3, now + Duration::from_secs(1))));
        assert!(f.refused(3) && !f.refused(1));
        f.resend_from(3);
        assert_eq!(f.0.iter().map(|e| e.batch).collect::<Vec<_>>(), [1, 2]);
        f.done(1);
        assert_eq!(f.next_due(), Some((2, now + Duration::from_secs(120))));
    }
}
