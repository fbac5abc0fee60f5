//! A device's scheduled sync: every `sync_interval` the terminal is read into the outbox (what is past its
//! watermark), without anyone asking and whether or not the server is reachable. While the realtime stream is down
//! the terminal is polled every `poll_interval` instead. A catch-up request from the realtime subscription, or a
//! device the outbox knows already when the agent starts (it was restarted), syncs at once.

use std::sync::Arc;

use tokio::time::{Instant, sleep_until};

use super::Live;
use super::read::read_terminal;
use crate::config::{Collect, Timing};
use crate::outbox::Outbox;
use crate::relay::devices::Device;

pub(super) async fn run(device: Device, outbox: Outbox, collect: Arc<Collect>, timing: Arc<Timing>, live: Arc<Live>) {
    let resumed = matches!(outbox.knows(&device.spec.id).await, Ok(true));
    let mut last = Instant::now();
    let mut next = if resumed { last } else { last + collect.sync_interval };
    let mut up = live.up.subscribe();
    let mut failing = false;
    loop {
        let polling = !*up.borrow_and_update();
        let due = if polling { next.min(last + collect.poll_interval) } else { next };
        let why = tokio::select! {
            _ = sleep_until(due) => if polling && due < next { "poll" } else { "scheduled" },
            _ = live.catch_up.notified() => "catch-up",
            changed = up.changed() => {
                if changed.is_err() {
                    return;
                }
                continue;
            }
        };
        sync(&device, &outbox, &timing, why, &mut failing).await;
        last = Instant::now();
        next = last + collect.sync_interval;
    }
}

/// One read into the outbox; failures are logged (a warning when they start, quietly while they go on).
async fn sync(device: &Device, outbox: &Outbox, timing: &Timing, why: &'static str, failing: &mut bool) {
    let started = Instant::now();
    let result = match read_terminal(device, timing, &mut |_, _| {}).await {
        Ok(read) => outbox.enqueue_read(&device.spec.id, &read, None).await.map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    let elapsed_ms = started.elapsed().as_millis() as u64;
    match result {
        Ok(queued) => {
            if let Some(reset) = &queued.reset {
                tracing::warn!(%reset, records = queued.read, "log cleared or terminal replaced");
            }
            if std::mem::replace(failing, false) {
                tracing::info!(why, "sync works again");
            }
            tracing::debug!(why, read = queued.read, queued = queued.sent, elapsed_ms, "sync");
        }
        Err(error) if !std::mem::replace(failing, true) => {
            tracing::warn!(why, %error, elapsed_ms, "sync failed; trying again on schedule");
        }
        Err(error) => tracing::debug!(why, %error, elapsed_ms, "sync failed again"),
    }
}
