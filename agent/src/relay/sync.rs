//! `SyncAttendance`: read every record from the terminal, then send them as `Punches` batches, at most
//! [`MAX_UNACKED_BATCHES`] ahead of the server's `Ack`s (which come only after the database commit), and answer
//! `Synced` once every batch is acknowledged. The terminal is released before the upload starts.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use essl_wire::{AgentMsg, ErrorKind, MAX_PUNCHES_PER_BATCH, OpError, OpResult, Punch};
use essl_zk::attendance::AttendanceRecord;
use tokio::sync::oneshot;

use super::devices::Device;
use super::jobs::{JobCtx, failure, format_local_time, zk_error};
use super::outgoing::{Out, Outgoing};

/// Batches sent and not yet acknowledged, at most, per sync.
pub(crate) const MAX_UNACKED_BATCHES: usize = 4;

/// Syncs waiting for `Ack { batch }`.
#[derive(Clone, Default)]
pub(crate) struct Acks(Arc<Mutex<HashMap<u64, oneshot::Sender<()>>>>);

impl Acks {
    fn expect(&self, batch: u64) -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        self.0.lock().unwrap_or_else(PoisonError::into_inner).insert(batch, tx);
        rx
    }

    fn forget(&self, batch: u64) {
        self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&batch);
    }

    /// Wakes the sync waiting for `batch`; false if none does.
    pub fn ack(&self, batch: u64) -> bool {
        let waiter = self.0.lock().unwrap_or_else(PoisonError::into_inner).remove(&batch);
        waiter.is_some_and(|tx| tx.send(()).is_ok())
    }
}

pub(crate) async fn run(ctx: &JobCtx, id: u64, device: &Device) -> Result<OpResult, OpError> {
    let records = read(ctx, id, device).await?;
    // outbox: this is where the records go to the durable outbox (and the terminal's watermark advances) before
    // anything is sent; `send` would then flush from the outbox, so a dropped connection no longer fails the sync.
    send(ctx, id, &device.spec.id, &records).await
}

async fn read(ctx: &JobCtx, id: u64, device: &Device) -> Result<Vec<AttendanceRecord>, OpError> {
    let mut session = device.session(&ctx.timing).await.map_err(zk_error)?;
    let mut progress = Progress::new(id, ctx.out.clone(), ctx.timing.progress_every);
    let read = session.client.read_attendance(&mut |done, total| progress.report(done, total)).await;
    session.close().await;
    let read = read.map_err(zk_error)?;
    tracing::debug!(records = read.records.len(), layout = ?read.layout, "attendance read");
    Ok(read.records)
}

async fn send(ctx: &JobCtx, id: u64, device: &str, records: &[AttendanceRecord]) -> Result<OpResult, OpError> {
    let mut window = Window { acks: ctx.acks.clone(), pending: VecDeque::new(), limit: ctx.timing.ack_timeout };
    let mut batches = 0u64;
    for chunk in records.chunks(MAX_PUNCHES_PER_BATCH) {
        if window.pending.len() >= MAX_UNACKED_BATCHES {
            window.wait_oldest().await?;
        }
        let batch = ctx.batch_ids.fetch_add(1, Ordering::Relaxed);
        window.pending.push_back((batch, ctx.acks.expect(batch)));
        let records = chunk.iter().map(to_punch).collect();
        let msg = AgentMsg::Punches { batch, device: device.to_string(), request: Some(id), records };
        ctx.out.send(Outgoing::Msg(msg)).await.map_err(|_| connection_lost())?;
        batches += 1;
        tracing::debug!(batch, records = chunk.len(), "batch sent");
    }
    while !window.pending.is_empty() {
        window.wait_oldest().await?;
    }
    Ok(OpResult::Synced { records: records.len() as u64, batches })
}

fn to_punch(r: &AttendanceRecord) -> Punch {
    Punch {
        uid: r.uid,
        user_id: r.user_id.clone(),
        local_time: format_local_time(r.timestamp),
        status: r.status,
        punch: r.punch,
    }
}

fn connection_lost() -> OpError {
    failure(ErrorKind::Internal, "the connection to the server was lost during the sync".into())
}

/// The batches of one sync waiting for their `Ack`, oldest first; forgotten if the sync ends early.
struct Window {
    acks: Acks,
    pending: VecDeque<(u64, oneshot::Receiver<()>)>,
    limit: Duration,
}

impl Window {
    async fn wait_oldest(&mut self) -> Result<(), OpError> {
        let Some((batch, rx)) = self.pending.front_mut() else { return Ok(()) };
        let batch = *batch;
        match tokio::time::timeout(self.limit, rx).await {
            Ok(Ok(())) => {
                self.pending.pop_front();
                Ok(())
            }
            Ok(Err(_)) => Err(connection_lost()),
            Err(_) => Err(failure(
                ErrorKind::Internal,
                format!("the server did not acknowledge batch {batch} within {:?}", self.limit),
            )),
        }
    }
}

impl Drop for Window {
    fn drop(&mut self) {
        for (batch, _) in &self.pending {
            self.acks.forget(*batch);
        }
    }
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
