//! The site's terminals as the server announced them, and the rule that this agent holds at most one session
//! with each terminal at a time (terminals serve few sessions; two from one agent only make them busy).

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant};

use essl_wire::{DeviceSpec, Reach};
use essl_zk::{ClientConfig, ProbeConfig, Transport, ZkClient, ZkError};
use tokio::sync::{Mutex, OwnedMutexGuard, watch};

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
}

impl Slot {
    fn new() -> Arc<Slot> {
        Arc::new(Slot { lock: Arc::new(Mutex::new(())), open: watch::Sender::new(None) })
    }
}

/// The site's devices by id; replaced whole on `DevicesChanged`, keeping the slots of devices that stay.
#[derive(Clone, Default)]
pub(crate) struct DeviceTable(Arc<RwLock<HashMap<String, Device>>>);

impl DeviceTable {
    pub fn new(specs: Vec<DeviceSpec>) -> DeviceTable {
        let table = DeviceTable::default();
        table.replace(specs);
        table
    }

    pub fn replace(&self, specs: Vec<DeviceSpec>) {
        let mut map = self.0.write().unwrap_or_else(PoisonError::into_inner);
        let mut next = HashMap::with_capacity(specs.len());
        for spec in specs {
            let slot = map.remove(&spec.id).map(|d| d.slot).unwrap_or_else(Slot::new);
            next.insert(spec.id.clone(), Device { spec, slot });
        }
        *map = next;
    }

    pub fn get(&self, id: &str) -> Option<Device> {
        self.0.read().unwrap_or_else(PoisonError::into_inner).get(id).cloned()
    }

    /// All devices, ordered by id.
    pub fn all(&self) -> Vec<Device> {
        let mut all: Vec<Device> = self.0.read().unwrap_or_else(PoisonError::into_inner).values().cloned().collect();
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
        let client = ZkClient::connect(addr, cfg).await?;
        self.slot.open.send_replace(Some(started.elapsed()));
        Ok(DeviceSession { client, _hold: Hold { slot: self.slot.clone(), _guard: guard } })
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
        essl_zk::probe(addr, &cfg).await
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
