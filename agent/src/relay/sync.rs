//! `SyncAttendance`: read the terminal's whole log (then release the terminal), queue in the outbox what is past the
//! device's watermark, and answer `Synced` once the server acknowledged every batch of it. The uploader sends the
//! batches, after anything queued before them; they carry this request's id while this connection lasts. If the
//! connection drops first the request fails, but the records stay queued and go on the next connection.

use std::time::{Duration, Instant};

use essl_wire::{AgentMsg, ErrorKind, OpError, OpResult};

use super::devices::Device;
use super::jobs::{JobCtx, failure, zk_error};
use super::outgoing::{Out, Outgoing};
use crate::collect::read_terminal;
use crate::outbox::{OutboxError, Tag};

pub(crate) async fn run(ctx: &JobCtx, id: u64, device: &Device) -> Result<OpResult, OpError> {
    let mut progress = Progress::new(id, ctx.out.clone(), ctx.timing.progress_every);
    let read =
        read_terminal(device, &ctx.timing, &mut |done, total| progress.report(done, total)).await.map_err(zk_error)?;
    let mut acks = ctx.outbox.acks();
    let tag = Tag { conn: ctx.conn, request: id };
    let queued = ctx.outbox.enqueue_read(&device.spec.id, &read, Some(tag)).await.map_err(outbox_error)?;
    if let Some(reset) = &queued.reset {
        tracing::warn!(%reset, records = queued.read, "log cleared or terminal replaced");
    }
    tracing::debug!(read = queued.read, queued = queued.sent, batches = queued.batches.len(), "attendance queued");
    // Wait for the server's acks; the limit restarts whenever one of ours is acknowledged.
    let mut waiting = queued.batches.len();
    while waiting > 0 {
        acks.borrow_and_update();
        waiting = ctx.outbox.still_queued(&queued.batches).await.map_err(outbox_error)?;
        if waiting == 0 {
            break;
        }
        if tokio::time::timeout(ctx.timing.ack_timeout, acks.changed()).await.is_err() {
            return Err(failure(
                ErrorKind::Internal,
                format!(
                    "the server did not acknowledge {waiting} batches within {:?} (they stay queued)",
                    ctx.timing.ack_timeout
                ),
            ));
        }
    }
    Ok(OpResult::Synced {
        records: queued.sent,
        batches: queued.batches.len() as u64,
        read: Some(queued.read),
        reset: queued.reset.map(|r| r.to_string()),
    })
}

fn outbox_error(e: OutboxError) -> OpError {
    failure(ErrorKind::Internal, format!("the agent could not queue the records: {e}"))
}

/// `Progress` of the read, in bytes: the first report, then at most one per `every`, and the last one.
struct Progress {
    id: u64,
    out: Out,
    every: Duration,
    last: Option<Instant>,
}

impl Progress {
    fn new(id: u64, out: Out, every: Duration) -> Progress {
        Progress { id, out, every, last: None }
    }

    fn report(&mut self, done: usize, total: usize) {
        let now = Instant::now();
        let finished = done >= total;
        if !finished && self.last.is_some_and(|t| now.duration_since(t) < self.every) {
            return;
        }
        self.last = Some(now);
        let msg = AgentMsg::Progress { id: self.id, done: done as u64, total: total as u64 };
        // Progress is advisory: when the queue is full it is skipped, never waited for.
        let _ = self.out.try_send(Outgoing::Msg(msg));
    }
}
