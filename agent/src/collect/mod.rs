//! The agent collecting records on its own, with or without a connection to the server: for every device of the
//! last list the server sent, a realtime subscription (`realtime`) and a scheduled sync (`schedule`), both writing
//! into the outbox. The uploader of whatever connection exists sends what they queue.
//!
//! - Realtime: a punch on a terminal is queued as it happens and reaches the server within a second.
//! - Scheduled sync: every `sync_interval` (5 min by default) each terminal is read and what is past its watermark
//!   queued, so nothing depends on the event stream or on someone pressing "sync". While a terminal's event stream
//!   is down it is polled every `poll_interval` instead; after the stream comes back, and when the agent resumes a
//!   device it synced before (a restart), one sync catches up what happened in between.
//! - `read`: one read of a terminal into the outbox, shared with the server-requested sync.

mod read;
mod realtime;
mod schedule;

use std::collections::HashMap;
use std::sync::Arc;

use essl_wire::DeviceSpec;
use tokio::sync::{Notify, watch};
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

pub(crate) use read::{read_terminal, to_device_user, to_punch};

use crate::config::{Collect, Timing};
use crate::outbox::Outbox;
use crate::relay::devices::DeviceTable;

/// What a device's realtime subscription tells its scheduler.
#[derive(Default)]
struct Live {
    /// Events are flowing (subscribed, session open).
    up: watch::Sender<bool>,
    /// Sync now: the stream was down and events may have been missed.
    catch_up: Notify,
}

/// The collectors of every known device; dropping this stops them all.
pub(crate) struct Collectors {
    task: JoinHandle<()>,
}

impl Collectors {
    /// Follows `devices`: starts collecting from devices that appear, stops for devices that go, restarts for
    /// devices whose address or key changed.
    pub fn start(devices: DeviceTable, outbox: Outbox, collect: Arc<Collect>, timing: Arc<Timing>) -> Collectors {
        Collectors { task: tokio::spawn(follow(devices, outbox, collect, timing)) }
    }
}

impl Drop for Collectors {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn follow(devices: DeviceTable, outbox: Outbox, collect: Arc<Collect>, timing: Arc<Timing>) {
    let mut changes = devices.changes();
    // Dropping an entry's JoinSet aborts its two tasks.
    let mut running: HashMap<String, (DeviceSpec, JoinSet<()>)> = HashMap::new();
    loop {
        changes.borrow_and_update();
        let now = devices.all();
        running.retain(|id, (spec, _)| {
            let keep = now.iter().any(|d| d.spec == *spec);
            if !keep {
                tracing::info!(device = %id, "collection stopped");
            }
            keep
        });
        for device in now {
            if running.contains_key(&device.spec.id) {
                continue;
            }
            let spec = device.spec.clone();
            tracing::info!(
                device = %spec.id,
                addr = %spec.addr,
                sync_interval_s = collect.sync_interval.as_secs(),
                "collecting: realtime events and scheduled sync"
            );
            let live = Arc::new(Live::default());
            let mut tasks = JoinSet::new();
            let span = tracing::info_span!("collect", device = %spec.id);
            tasks.spawn(
                realtime::run(device.clone(), outbox.clone(), collect.clone(), timing.clone(), live.clone())
                    .instrument(span.clone()),
            );
            tasks.spawn(schedule::run(device, outbox.clone(), collect.clone(), timing.clone(), live).instrument(span));
            running.insert(spec.id.clone(), (spec, tasks));
        }
        if changes.changed().await.is_err() {
            return;
        }
    }
}
