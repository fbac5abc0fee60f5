//! The site's terminals as the server announced them, and the rule that this agent holds at most one working
//! session with each terminal at a time (terminals serve few sessions; two from one agent only make them busy).
//!
//! The one exception is the realtime subscription (`collect::realtime`): it keeps a session of its own open for
//! as long as events flow, outside the slot, so it never makes a sync wait. When a terminal with few sessions
//! answers a job or a probe "busy" while the subscription holds one, the subscription is asked to let go, the job
//! gets its session, and the subscription comes back once the slot is free again.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use essl_wire::{DeviceSpec, Reach};
use essl_zk::{ClientConfig, ProbeConfig, Transport, ZkClient, ZkError};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

/// How long a job waits for the realtime subscription to let go of its session.
const YIELD_WAIT: Duration = Duration::from_secs(5);
/// Pause between connects while the terminal frees the session the subscription let go of.
const YIELD_RETRY: Duration = Duration::from_millis(200);

use crate::config::Timing;

/// One terminal and its session slot.
#[derive(Clone)]
pub(crate) struct Device {
    pub spec: DeviceSpec,
    slot: Arc<Slot>,
}

/// Serialises sessions with one terminal and tells probes whether a session is open right now.
struct Slot {
    lock: Arc<Mutex<()>>,
    /// `Some(handshake time)` while a job holds an open session.
    open: watch::Sender<Option<Duration>>,
    /// Whether the realtime subscription holds its own session now.
    realtime: watch::Sender<bool>,
    /// Bumped to ask the realtime subscription to close its session.
    yield_realtime: watch::Sender<u64>,
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot {
            lock: Arc::new(Mutex::new(())),
            open: watch::Sender::new(None),
            realtime: watch::Sender::new(false),
            yield_realtime: watch::Sender::new(0),
        })
    }
}

/// The site's devices by id; replaced whole on `Welcome` and `DevicesChanged`, keeping the slots of devices that
/// stay. It outlives connections: the agent keeps collecting from the last known devices while the cloud is away.
#[derive(Clone)]
pub(crate) struct DeviceTable {
    map: Arc<RwLock<HashMap<String, Device>>>,
    /// Bumped on every replacement.
    changes: Arc<watch::Sender<u64>>,
}

impl Default for DeviceTable {
    fn default() -> Self {
        DeviceTable { map: Arc::default(), changes: Arc::new(watch::Sender::new(0)) }
    }
}

impl DeviceTable {
    pub fn replace(&self, specs: Vec<DeviceSpec>) {
        let mut map = self.map.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(specs.len());
        for spec in specs {
            let slot = map.remove(&spec.id).map(|d| d.slot).unwrap_or_else(Slot::new);
            next.insert(spec.id.clone(), Device { spec, slot });
        }
        *map = next;
        drop(map);
        self.changes.send_modify(|n| *n += 1);
    }

    /// Wakes after every replacement.
    pub fn changes(&self) -> watch::Receiver<u64> {
        self.changes.subscribe()
    }

    pub fn get(&self, id: &str) -> Option<Device> {
        self.map.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    /// All devices, ordered by id.
    pub fn all(&self) -> Vec<Device> {
        let mut all: Vec<Device> = self.map.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
        all.sort_by(|a, b| a.spec.id.cmp(&b.spec.id));
        all
    }
}

impl Device {
    fn transport(&self) -> Transport {
        if self.spec.udp { Transport::Udp } else { Transport::Tcp }
    }

    /// Waits for the terminal to be free, then opens a session with it.
    pub async fn session(&self, timing: &Timing) -> Result<DeviceSession, ZkError> {
        let guard = self.slot.lock.clone().lock_owned().await;
        let addr = crate::addr::resolve(&self.spec.addr).await?;
        let cfg = ClientConfig {
            transport: self.transport(),
            comm_key: self.spec.comm_key,
            timeout: timing.device_timeout,
            ..ClientConfig::default()
        };
        let started = Instant::now();
        let mut client = ZkClient::connect(addr, cfg.clone()).await;
        if matches!(client, Err(ZkError::Busy(_))) && self.realtime_yields().await {
            // The terminal may take a moment to free the session it was told to end.
            for pause in [Duration::ZERO, YIELD_RETRY, YIELD_RETRY * 2] {
                tokio::time::sleep(pause).await;
                client = ZkClient::connect(addr, cfg.clone()).await;
                if !matches!(client, Err(ZkError::Busy(_))) {
                    break;
                }
            }
        }
        let client = client?;
        self.slot.open.send_replace(Some(started.elapsed()));
        Ok(DeviceSession { client, _hold: Hold { slot: self.slot.clone(), _guard: guard } })
    }

    /// Opens the realtime subscription's own session, outside the slot (see the module doc).
    pub async fn realtime_session(&self, timing: &Timing) -> Result<RealtimeSession, ZkError> {
        let addr = crate::addr::resolve(&self.spec.addr).await?;
        let cfg = ClientConfig {
            transport: self.transport(),
            comm_key: self.spec.comm_key,
            timeout: timing.device_timeout,
            ..ClientConfig::default()
        };
        // Raised before connecting: a job answered busy while this connects asks it to make room too, and the
        // request, made before `yielded` could see it otherwise, is not lost.
        let yielded = self.slot.yield_realtime.subscribe();
        self.slot.realtime.send_replace(true);
        let flag = RealtimeFlag(self.slot.clone());
        let client = ZkClient::connect(addr, cfg).await?;
        Ok(RealtimeSession { client, yielded, _flag: flag })
    }

    /// Waits until no job holds the terminal (a subscription that made room comes back only then).
    pub async fn wait_free(&self) {
        drop(self.slot.lock.clone().lock_owned().await);
    }

    /// If the realtime subscription holds a session, asks it to close it and waits until it has: true if so.
    async fn realtime_yields(&self) -> bool {
        let mut realtime = self.slot.realtime.subscribe();
        if !*realtime.borrow_and_update() {
            return false;
        }
        tracing::debug!(device = %self.spec.id, "terminal busy; asking the realtime subscription to make room");
        self.slot.yield_realtime.send_modify(|n| *n += 1);
        matches!(tokio::time::timeout(YIELD_WAIT, realtime.wait_for(|open| !open)).await, Ok(Ok(_)))
    }

    /// Opens and closes a session and returns the handshake time (`timing.probe_timeout`, `probe_retries`).
    /// While a job holds a session with the terminal, that session's handshake time is the answer: the terminal
    /// is evidently reachable, and a second session would only make it busy.
    pub async fn probe(&self, timing: &Timing) -> Result<Duration, ZkError> {
        let mut open = self.slot.open.subscribe();
        loop {
            if let Ok(guard) = self.slot.lock.clone().try_lock_owned() {
                return self.probe_locked(guard, timing).await;
            }
            if let Some(rtt) = *open.borrow_and_update() {
                return Ok(rtt);
            }
            // A job is still connecting: whichever comes first, its session or the terminal being free.
            tokio::select! {
                guard = self.slot.lock.clone().lock_owned() => return self.probe_locked(guard, timing).await,
                _ = open.changed() => {}
            }
        }
    }

    async fn probe_locked(&self, _guard: OwnedMutexGuard<()>, timing: &Timing) -> Result<Duration, ZkError> {
        let addr = crate::addr::resolve(&self.spec.addr).await?;
        let cfg = ProbeConfig {
            transport: self.transport(),
            comm_key: self.spec.comm_key,
            timeout: timing.probe_timeout,
            retries: timing.probe_retries,
        };
        match essl_zk::probe(addr, &cfg).await {
            Err(ZkError::Busy(_)) if self.realtime_yields().await => essl_zk::probe(addr, &cfg).await,
            other => other,
        }
    }
}

/// An open session with a terminal; the terminal is free again when this is closed or dropped.
pub(crate) struct DeviceSession {
    pub client: ZkClient,
    _hold: Hold,
}

impl DeviceSession {
    /// Ends the session politely (`CMD_EXIT`); the terminal frees it anyway if that fails.
    pub async fn close(self) {
        if let Err(error) = self.client.disconnect().await {
            tracing::debug!(%error, "CMD_EXIT not acknowledged");
        }
    }
}

/// The slot's lock, and the "session open" flag cleared when it is released.
struct Hold {
    slot: Arc<Slot>,
    _guard: OwnedMutexGuard<()>,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.slot.open.send_replace(None);
    }
}

/// The realtime subscription's session. `yielded` changes when a job needs the terminal's session back.
pub(crate) struct RealtimeSession {
    pub client: ZkClient,
    pub yielded: watch::Receiver<u64>,
    _flag: RealtimeFlag,
}

impl RealtimeSession {
    /// Ends the session politely (`CMD_EXIT`); the terminal frees it anyway if that fails.
    pub async fn close(self) {
        let RealtimeSession { client, _flag, .. } = self;
        if let Err(error) = client.disconnect().await {
            tracing::debug!(%error, "CMD_EXIT of the realtime session not acknowledged");
        }
        // Only now: a job waiting for room retries its connect when the flag drops.
        drop(_flag);
    }
}

/// Tells the slot the subscription's session is gone, however it ends.
struct RealtimeFlag(Arc<Slot>);

impl Drop for RealtimeFlag {
    fn drop(&mut self) {
        self.0.realtime.send_replace(false);
    }
}

/// Probes every device concurrently; one report per device, in id order.
pub(crate) async fn probe_all(devices: Vec<Device>, timing: &Timing) -> Vec<Reach> {
    let probes = devices.into_iter().map(|device| async move {
        let result = device.probe(timing).await;
        let checked_at_ms = jiff::Timestamp::now().as_millisecond();
        match result {
            Ok(rtt) => Reach {
                device: device.spec.id,
                reachable: true,
                rtt_us: Some(u64::try_from(rtt.as_micros()).unwrap_or(u64::MAX)),
                checked_at_ms,
                error: None,
            },
            Err(e) => Reach {
                device: device.spec.id,
                reachable: false,
                rtt_us: None,
                checked_at_ms,
                error: Some(e.to_string()),
            },
        }
    });
    futures_util::future::join_all(probes).await
}
