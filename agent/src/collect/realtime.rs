//! A device's realtime subscription: its own session with the terminal (`Device::realtime_session`), subscribed to
//! attendance events; every punch announced is queued in the outbox at once. A session silent for `keepalive` is
//! asked the time, so a dead one is noticed. When the stream breaks the scheduler polls instead, and the
//! subscription is retried with exponential backoff; once it is back, one sync catches up what was missed.
//! When a job needs the session (a terminal with few sessions said busy), the subscription closes it and returns
//! as soon as the terminal is free.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use essl_wire::{DeviceUser, Punch};
use essl_zk::RealtimeEvent;
use essl_zk::event::AttendanceEvent;
use tokio::time::Instant;

use super::{Live, to_device_user};
use crate::config::{Collect, Timing};
use crate::outbox::{Outbox, OutboxError};
use crate::relay::devices::{Device, RealtimeSession};
use crate::relay::jobs::format_local_time;

/// A subscription that lasted this long was healthy: the next failure starts the backoff from the beginning.
const STABLE: Duration = Duration::from_secs(60);
/// The user list is read again for an unknown user at most this often.
const USERS_REFRESH: Duration = Duration::from_secs(60);

/// Why a subscription ended.
enum Ended {
    /// A job needed the session.
    Yielded,
    /// The terminal could not be reached, refused, or the stream broke.
    Failed(String),
}

pub(super) async fn run(device: Device, outbox: Outbox, collect: Arc<Collect>, timing: Arc<Timing>, live: Arc<Live>) {
    let backoff = ExponentialBuilder::new()
        .with_min_delay(collect.resubscribe_min)
        .with_max_delay(collect.resubscribe_max)
        .with_jitter()
        .without_max_times();
    let mut delays = backoff.build();
    let mut gap = false;
    let mut warned = false;
    loop {
        let started = Instant::now();
        let ended = subscription(&device, &outbox, &collect, &timing, &live, gap).await;
        live.up.send_replace(false);
        gap = true;
        match ended {
            Ended::Yielded => {
                tracing::debug!("realtime session handed to a job; resubscribing when the terminal is free");
                device.wait_free().await;
            }
            Ended::Failed(error) => {
                if started.elapsed() >= STABLE {
                    delays = backoff.build();
                    warned = false;
                }
                let delay = delays.next().unwrap_or(collect.resubscribe_max);
                let delay_ms = delay.as_millis() as u64;
                if !std::mem::replace(&mut warned, true) {
                    tracing::warn!(%error, delay_ms, "realtime events stopped; polling the terminal until they are back");
                } else {
                    tracing::debug!(%error, delay_ms, "realtime subscription failed again");
                }
                tokio::time::sleep(delay).await;
            }
        }
    }
}

/// One subscription, from connect to its end. `gap`: events may have been missed before it, so the scheduler is
/// asked to catch up once events flow again.
async fn subscription(
    device: &Device,
    outbox: &Outbox,
    collect: &Collect,
    timing: &Timing,
    live: &Live,
    gap: bool,
) -> Ended {
    let mut session = match device.realtime_session(timing).await {
        Ok(s) => s,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    let mut users = match Users::read(&mut session).await {
        Ok(u) => u,
        Err(e) => return fail(session, e).await,
    };
    users.queue(outbox, &device.spec.id).await;
    if let Err(e) = session.client.subscribe_attendance().await {
        return fail(session, e.to_string()).await;
    }
    live.up.send_replace(true);
    tracing::info!(users = users.by_pin.len(), "realtime events subscribed");
    if gap {
        live.catch_up.notify_one();
    }
    loop {
        let event = tokio::select! {
            _ = session.yielded.changed() => {
                session.close().await;
                return Ended::Yielded;
            }
            event = session.client.next_event(collect.keepalive) => event,
        };
        match event {
            Ok(Some(RealtimeEvent::Attendance(e))) => {
                let punch = users.punch(&mut session, outbox, &device.spec.id, e).await;
                queue(outbox, &device.spec.id, punch).await;
            }
            Ok(Some(RealtimeEvent::Other { flag, .. })) => tracing::debug!(flag, "other realtime event ignored"),
            Ok(None) => {
                if let Err(e) = session.client.get_time().await {
                    return fail(session, format!("no answer to the keepalive: {e}")).await;
                }
            }
            Err(e) => return fail(session, e.to_string()).await,
        }
    }
}

async fn fail(session: RealtimeSession, error: String) -> Ended {
    session.close().await;
    Ended::Failed(error)
}

async fn queue(outbox: &Outbox, device: &str, punch: Punch) {
    match outbox.enqueue_punches(device, std::slice::from_ref(&punch)).await {
        Ok(batches) => {
            tracing::debug!(user_id = %punch.user_id, local_time = %punch.local_time, batch = ?batches.first(), "realtime punch queued");
        }
        // The outbox said so once; the punch stays on the terminal for a later sync.
        Err(OutboxError::Full { .. }) => {}
        Err(error) => {
            tracing::warn!(%error, user_id = %punch.user_id, "cannot queue a realtime punch; the next sync brings it");
        }
    }
}

/// The terminal's users by PIN: events name only the PIN, records also carry the terminal's internal uid. The
/// list also goes to the server (through the outbox, before the punches read after it) whenever it changed, so
/// punches of users the terminal does not know are flagged.
struct Users {
    list: Vec<DeviceUser>,
    by_pin: HashMap<String, u16>,
    read_at: Instant,
}

impl Users {
    async fn read(session: &mut RealtimeSession) -> Result<Users, String> {
        let (_, users) = session.client.read_users().await.map_err(|e| format!("cannot read the users: {e}"))?;
        let list: Vec<DeviceUser> = users.into_iter().map(to_device_user).collect();
        let by_pin = list.iter().map(|u| (u.user_id.clone(), u.uid)).collect();
        Ok(Users { list, by_pin, read_at: Instant::now() })
    }

    /// Queues the list for the server unless it is the one last queued.
    async fn queue(&self, outbox: &Outbox, device: &str) {
        match outbox.enqueue_users(device, &self.list).await {
            Ok(batch) => tracing::debug!(users = self.list.len(), ?batch, "user list checked"),
            Err(OutboxError::Full { .. }) => {}
            Err(error) => tracing::warn!(%error, "cannot queue the terminal's user list"),
        }
    }

    /// The event as a record. A PIN enrolled since the list was read makes it read again (at most once a minute);
    /// a PIN still unknown gets uid 0 (the scheduled sync's record does not replace it: the server keeps the
    /// first row of a punch).
    async fn punch(
        &mut self,
        session: &mut RealtimeSession,
        outbox: &Outbox,
        device: &str,
        e: AttendanceEvent,
    ) -> Punch {
        if !self.by_pin.contains_key(&e.user_id) && self.read_at.elapsed() >= USERS_REFRESH {
            match Users::read(session).await {
                Ok(fresh) => {
                    *self = fresh;
                    self.queue(outbox, device).await;
                }
                Err(error) => tracing::debug!(%error, "user list not refreshed"),
            }
        }
        Punch {
            uid: self.by_pin.get(&e.user_id).copied().unwrap_or(0),
            user_id: e.user_id,
            local_time: format_local_time(e.timestamp),
            status: e.status,
            punch: e.punch,
            raw_time: None,
        }
    }
}
