//! The agent hub: who is connected, which devices each reaches, and how a device request finds its agent.
//!
//! - `session.rs`: one agent's WebSocket, from `Hello` to close.
//! - `routing.rs`: ordering the candidate agents for a device.
//! - `flight.rs`: single flight, so concurrent syncs of one device share one device read.
//!
//! State is in-memory behind short `std::sync::Mutex` sections (never held across `.await`); each connection's
//! writer is fed through a bounded channel.

mod flight;
mod routing;
pub mod session;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use essl_wire::{ErrorKind, Op, OpResult, OutboxFill, Outcome, Reach, ServerMsg};
use jiff::Timestamp;
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::store::model::Device;

pub use flight::SyncFlights;

/// Timing of the hub.
#[derive(Debug, Clone)]
pub struct HubConfig {
    /// WebSocket ping interval; a peer silent for two intervals is dropped.
    pub ping_interval: Duration,
    /// Deadline for the agent's `Hello`.
    pub hello_timeout: Duration,
    /// How often agents probe their devices (sent in `Welcome`).
    pub probe_interval: Duration,
    /// Deadline of ordinary requests (probe, info, clock...).
    pub request_timeout: Duration,
    /// Deadline of a whole attendance sync.
    pub sync_timeout: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ping_interval: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
            sync_timeout: Duration::from_secs(600),
        }
    }
}

impl HubConfig {
    /// A probe older than this no longer counts as fresh.
    pub fn reach_fresh(&self) -> Duration {
        self.probe_interval * 2 + Duration::from_secs(5)
    }
}

/// What the hub knows of a connected agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentPresence {
    pub agent_id: Uuid,
    pub site_id: Uuid,
    pub version: String,
    pub hostname: String,
    pub os: String,
    /// The protocol version negotiated at `Hello` (what the hub may ask of this agent).
    pub protocol: u16,
    pub connected_since: Timestamp,
    pub last_seen: Timestamp,
    /// The fill of its outbox, from its latest heartbeat (`None` until one says).
    pub outbox: Option<OutboxFill>,
}

/// One agent's latest probe of one device.
#[derive(Debug, Clone, PartialEq)]
pub struct Reachability {
    pub agent_id: Uuid,
    pub reachable: bool,
    pub rtt_us: Option<u64>,
    pub checked_at: Timestamp,
    pub error: Option<String>,
}

/// Something happened that dashboards may want to show live.
#[derive(Debug, Clone, PartialEq)]
pub enum HubEvent {
    AgentConnected {
        agent_id: Uuid,
    },
    AgentDisconnected {
        agent_id: Uuid,
    },
    Reachability {
        device_id: Uuid,
        agent_id: Uuid,
        reachable: bool,
    },
    SyncProgress {
        device_id: Uuid,
        done: u64,
        total: u64,
    },
    /// Rows new to the database (only when there are some).
    PunchesStored {
        device_id: Uuid,
        inserted: u64,
    },
    /// Every committed batch: which agent sent it (and its batch id), how many records came and how many were new
    /// (tests and metrics see what agents send, including repeats).
    BatchCommitted {
        device_id: Uuid,
        agent_id: Uuid,
        batch: u64,
        records: u64,
        inserted: u64,
    },
    /// A sync attempt (a staff request) ended and is recorded.
    SyncFinished {
        device_id: Uuid,
        sync_id: Uuid,
        success: bool,
        /// Rows it stored.
        records_synced: u64,
    },
    /// An agent's outbox fill changed (from its heartbeat): what it holds that is not yet stored here, against its
    /// bound. A dashboard shows it as the SSE event `agent.outbox`.
    OutboxFill {
        agent_id: Uuid,
        bytes: u64,
        limit_bytes: u64,
    },
    /// A push terminal's upload is committed: how many records came and how many were new.
    PushCommitted {
        device_id: Uuid,
        records: u64,
        inserted: u64,
    },
    /// A batch that could not be stored (the database failed): not acknowledged, the agent sends it again.
    BatchFailed {
        device_id: Uuid,
        agent_id: Uuid,
        batch: u64,
        /// The sync request it belonged to, which failed with it.
        request: Option<u64>,
    },
}

/// What goes to a connection's writer.
#[derive(Debug)]
pub(crate) enum Outbound {
    Msg(ServerMsg),
    Close(u16, String),
}

/// A request waiting for its response.
pub(crate) struct Pending {
    device_id: Uuid,
    /// A `ClearAttendance`: the agent will ask the hub to confirm what is stored (`ConfirmStored`).
    clear: bool,
    done: oneshot::Sender<Outcome>,
    /// Punches stored for this request so far: (records received, rows new to the database).
    stored: Arc<(AtomicU64, AtomicU64)>,
}

pub(crate) struct Conn {
    id: u64,
    presence: AgentPresence,
    tx: mpsc::Sender<Outbound>,
    /// Cancelled to end the session from outside (revocation), even if its writer queue is full.
    kill: CancellationToken,
    pending: HashMap<u64, Pending>,
}

#[derive(Default)]
struct State {
    conns: HashMap<Uuid, Conn>,
    /// device -> agent -> latest probe.
    reach: HashMap<Uuid, HashMap<Uuid, Reachability>>,
}

struct Inner {
    config: HubConfig,
    state: Mutex<State>,
    next_id: AtomicU64,
    events: broadcast::Sender<HubEvent>,
    flights: SyncFlights,
}

/// Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Why a device request did not produce a result.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum CallError {
    #[error("no connected agent can reach this device")]
    NoAgent,
    #[error("device unreachable: {0}")]
    Unreachable(String),
    #[error("{kind:?}: {message}")]
    Failed { kind: ErrorKind, message: String },
    #[error("the agent did not answer within {0:?}")]
    Timeout(Duration),
    #[error("the agent disconnected during the request")]
    AgentGone,
    #[error(
        "the agents of this device's site speak protocol {have} at most; this needs protocol {needed}: upgrade the agent"
    )]
    Outdated { have: u16, needed: u16 },
}

impl CallError {
    /// Connection-class failures (the seed's `deviceUnreachable` answer) as opposed to other errors.
    pub fn is_connection(&self) -> bool {
        matches!(
            self,
            CallError::NoAgent
                | CallError::Unreachable(_)
                | CallError::Timeout(_)
                | CallError::AgentGone
                | CallError::Failed { kind: ErrorKind::Unreachable | ErrorKind::Busy, .. }
        )
    }

    /// Whether the next candidate agent may do better.
    fn worth_retrying(&self) -> bool {
        self.is_connection()
    }
}

/// A successful device request.
#[derive(Debug, Clone, PartialEq)]
pub struct CallResult {
    pub result: OpResult,
    pub agent_id: Uuid,
    /// Punches received with this request.
    pub records_received: u64,
    /// Of those, rows new to the database.
    pub records_inserted: u64,
}

impl Hub {
    pub fn new(config: HubConfig) -> Hub {
        let (events, _) = broadcast::channel(1024);
        Hub {
            inner: Arc::new(Inner {
                config,
                state: Mutex::new(State::default()),
                next_id: AtomicU64::new(1),
                events,
                flights: SyncFlights::default(),
            }),
        }
    }

    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn flights(&self) -> &SyncFlights {
        &self.inner.flights
    }

    /// Live events for dashboards.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.inner.events.subscribe()
    }

    pub(crate) fn emit(&self, event: HubEvent) {
        let _ = self.inner.events.send(event);
    }

    fn next_id(&self) -> u64 {
        self.inner.next_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a connection; an older connection of the same agent is told it was replaced. Returns the
    /// connection id and the token that ends the session when cancelled.
    pub(crate) fn register(&self, presence: AgentPresence, tx: mpsc::Sender<Outbound>) -> (u64, CancellationToken) {
        let id = self.next_id();
        let agent_id = presence.agent_id;
        let kill = CancellationToken::new();
        let conn = Conn { id, presence, tx, kill: kill.clone(), pending: HashMap::new() };
        let old = self.state().conns.insert(agent_id, conn);
        if let Some(old) = old {
            let _ =
                old.tx.try_send(Outbound::Close(essl_wire::close::REPLACED, "replaced by a newer connection".into()));
            old.kill.cancel();
            fail_pending(old.pending, "agent reconnected");
        }
        self.emit(HubEvent::AgentConnected { agent_id });
        (id, kill)
    }

    /// Removes a connection (if it is still the current one for its agent) and everything it reported.
    pub(crate) fn unregister(&self, agent_id: Uuid, conn_id: u64) {
        let mut state = self.state();
        let Some(conn) = state.conns.get(&agent_id).filter(|c| c.id == conn_id) else {
            return;
        };
        let _ = conn;
        let conn = state.conns.remove(&agent_id);
        for reach in state.reach.values_mut() {
            reach.remove(&agent_id);
        }
        drop(state);
        if let Some(conn) = conn {
            fail_pending(conn.pending, "agent disconnected");
        }
        self.emit(HubEvent::AgentDisconnected { agent_id });
    }

    /// Marks the agent as heard from now.
    pub(crate) fn touch(&self, agent_id: Uuid) {
        if let Some(c) = self.state().conns.get_mut(&agent_id) {
            c.presence.last_seen = Timestamp::now();
        }
    }

    /// Closes the agent's connection with `code` (token revoked, ...). Returns whether it was connected.
    pub fn disconnect(&self, agent_id: Uuid, code: u16, reason: &str) -> bool {
        let state = self.state();
        let Some(conn) = state.conns.get(&agent_id) else {
            return false;
        };
        // The close frame says why; the kill token ends the session even if the writer is backed up.
        let _ = conn.tx.try_send(Outbound::Close(code, reason.to_owned()));
        conn.kill.cancel();
        true
    }

    /// Sends a site's new device list to its connected agents.
    pub fn devices_changed(&self, site_id: Uuid, devices: Vec<essl_wire::DeviceSpec>) {
        let txs: Vec<_> =
            self.state().conns.values().filter(|c| c.presence.site_id == site_id).map(|c| c.tx.clone()).collect();
        for tx in txs {
            let _ = tx.try_send(Outbound::Msg(ServerMsg::DevicesChanged { devices: devices.clone() }));
        }
    }

    /// Tells every agent to reconnect elsewhere (graceful shutdown).
    pub fn close_all(&self, code: u16, reason: &str) {
        let txs: Vec<_> = self.state().conns.values().map(|c| c.tx.clone()).collect();
        for tx in txs {
            let _ = tx.try_send(Outbound::Close(code, reason.to_owned()));
        }
    }

    /// Connected agents.
    pub fn presences(&self) -> Vec<AgentPresence> {
        self.state().conns.values().map(|c| c.presence.clone()).collect()
    }

    /// Whether this agent is connected now.
    pub fn presence(&self, agent_id: Uuid) -> Option<AgentPresence> {
        self.state().conns.get(&agent_id).map(|c| c.presence.clone())
    }

    /// Records an agent's probe reports (only for devices of its own site: the session checks that).
    pub(crate) fn record_reach(&self, agent_id: Uuid, reports: &[(Uuid, Reach)]) {
        let mut state = self.state();
        let mut changed = Vec::new();
        for (device_id, r) in reports {
            let entry = Reachability {
                agent_id,
                reachable: r.reachable,
                rtt_us: r.rtt_us,
                checked_at: Timestamp::from_millisecond(r.checked_at_ms).unwrap_or_else(|_| Timestamp::now()),
                error: r.error.clone(),
            };
            let per_device = state.reach.entry(*device_id).or_default();
            let before = per_device.insert(agent_id, entry).map(|e| e.reachable);
            if before != Some(r.reachable) {
                changed.push((*device_id, r.reachable));
            }
        }
        drop(state);
        for (device_id, reachable) in changed {
            self.emit(HubEvent::Reachability { device_id, agent_id, reachable });
        }
    }

    /// Records an agent's outbox fill from its heartbeat; emits [`HubEvent::OutboxFill`] when the bytes or the
    /// bound changed.
    pub(crate) fn record_outbox(&self, agent_id: Uuid, fill: OutboxFill) {
        let changed = {
            let mut state = self.state();
            let Some(conn) = state.conns.get_mut(&agent_id) else { return };
            let before = conn.presence.outbox.replace(fill);
            before.is_none_or(|b| (b.bytes, b.limit_bytes) != (fill.bytes, fill.limit_bytes))
        };
        if changed {
            self.emit(HubEvent::OutboxFill { agent_id, bytes: fill.bytes, limit_bytes: fill.limit_bytes });
        }
    }

    /// Latest probe reports for a device, by agent.
    pub fn reachability(&self, device_id: Uuid) -> Vec<Reachability> {
        self.state().reach.get(&device_id).map(|m| m.values().cloned().collect()).unwrap_or_default()
    }

    /// Every probe report an agent made: (device, report).
    pub fn reach_of_agent(&self, agent_id: Uuid) -> Vec<(Uuid, Reachability)> {
        let state = self.state();
        let mut out: Vec<(Uuid, Reachability)> =
            state.reach.iter().filter_map(|(d, m)| m.get(&agent_id).map(|r| (*d, r.clone()))).collect();
        out.sort_by_key(|(d, _)| *d);
        out
    }

    /// Counts punches stored for a pending request.
    pub(crate) fn add_stored(&self, agent_id: Uuid, request: u64, received: u64, inserted: u64) {
        let state = self.state();
        if let Some(p) = state.conns.get(&agent_id).and_then(|c| c.pending.get(&request)) {
            p.stored.0.fetch_add(received, Ordering::Relaxed);
            p.stored.1.fetch_add(inserted, Ordering::Relaxed);
        }
    }

    /// The device a pending request is about, if any.
    pub(crate) fn pending_device(&self, agent_id: Uuid, request: u64) -> Option<Uuid> {
        self.state().conns.get(&agent_id).and_then(|c| c.pending.get(&request)).map(|p| p.device_id)
    }

    /// Completes a pending request.
    pub(crate) fn complete(&self, agent_id: Uuid, request: u64, outcome: Outcome) {
        let pending = self.state().conns.get_mut(&agent_id).and_then(|c| c.pending.remove(&request));
        match pending {
            Some(p) => {
                let _ = p.done.send(outcome);
            }
            None => tracing::debug!(%agent_id, request, "response to an unknown or abandoned request"),
        }
    }

    /// Fails a pending request from the server side because its punches could not be stored: the caller gets
    /// `kind` (`NotConfirmed` for a clear, whatever `kind` says), and the agent is told to stop (`Cancel`), so a
    /// clear lets the terminal go at once instead of holding it until its own wait runs out.
    pub(crate) fn fail_storage(&self, agent_id: Uuid, request: u64, kind: ErrorKind, message: String) {
        let (pending, tx) = {
            let mut state = self.state();
            let Some(conn) = state.conns.get_mut(&agent_id) else { return };
            (conn.pending.remove(&request), conn.tx.clone())
        };
        let Some(p) = pending else {
            tracing::debug!(%agent_id, request, "storage failure for an unknown or abandoned request");
            return;
        };
        let (kind, message) = if p.clear {
            (ErrorKind::NotConfirmed, format!("the server could not store this terminal's records ({message})"))
        } else {
            (kind, message)
        };
        let _ = p.done.send(Outcome::Err(essl_wire::OpError { kind, message }));
        let _ = tx.try_send(Outbound::Msg(ServerMsg::Cancel { id: request }));
    }

    /// Runs `op` on `device` through the best connected agent of its site, retrying once on the next candidate
    /// when the first cannot reach the device.
    pub async fn call(&self, device: &Device, op: Op, timeout: Duration) -> Result<CallResult, CallError> {
        let needed = min_protocol(&op);
        let candidates = self.candidates(device, needed)?;
        if candidates.is_empty() {
            return Err(CallError::NoAgent);
        }
        let mut last = CallError::NoAgent;
        for agent_id in candidates.into_iter().take(2) {
            match self.call_agent(agent_id, device.id, op.clone(), timeout).await {
                Ok(r) => return Ok(r),
                Err(e) if e.worth_retrying() => {
                    tracing::info!(%agent_id, device_id = %device.id, error = %e, "request failed, trying the next agent");
                    last = e;
                }
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    /// The site's connected agents that speak protocol `needed`, best first; [`CallError::Outdated`] when agents
    /// are connected but none speaks it.
    fn candidates(&self, device: &Device, needed: u16) -> Result<Vec<Uuid>, CallError> {
        let Some(site_id) = device.site_id else {
            return Ok(Vec::new());
        };
        let state = self.state();
        let of_site: Vec<&Conn> = state.conns.values().filter(|c| c.presence.site_id == site_id).collect();
        let connected: Vec<Uuid> =
            of_site.iter().filter(|c| c.presence.protocol >= needed).map(|c| c.presence.agent_id).collect();
        if connected.is_empty()
            && let Some(have) = of_site.iter().map(|c| c.presence.protocol).max()
        {
            return Err(CallError::Outdated { have, needed });
        }
        let reports = state.reach.get(&device.id);
        Ok(routing::order(&connected, reports, Timestamp::now(), self.inner.config.reach_fresh()))
    }

    /// The device of a pending `ClearAttendance` request of this agent, if `request` is one.
    pub(crate) fn pending_clear(&self, agent_id: Uuid, request: u64) -> Option<Uuid> {
        let state = self.state();
        let pending = state.conns.get(&agent_id)?.pending.get(&request)?;
        pending.clear.then_some(pending.device_id)
    }

    async fn call_agent(
        &self,
        agent_id: Uuid,
        device_id: Uuid,
        op: Op,
        timeout: Duration,
    ) -> Result<CallResult, CallError> {
        let id = self.next_id();
        let (done_tx, done_rx) = oneshot::channel();
        let stored = Arc::new((AtomicU64::new(0), AtomicU64::new(0)));
        let tx = {
            let mut state = self.state();
            let Some(conn) = state.conns.get_mut(&agent_id) else {
                return Err(CallError::AgentGone);
            };
            let clear = matches!(op, Op::ClearAttendance { .. });
            conn.pending.insert(id, Pending { device_id, clear, done: done_tx, stored: stored.clone() });
            conn.tx.clone()
        };
        let request = ServerMsg::Request { id, device: device_id.to_string(), op };
        if tx.send(Outbound::Msg(request)).await.is_err() {
            self.abandon(agent_id, id);
            return Err(CallError::AgentGone);
        }
        let outcome = match tokio::time::timeout(timeout, done_rx).await {
            Ok(Ok(outcome)) => outcome,
            Ok(Err(_)) => return Err(CallError::AgentGone),
            Err(_) => {
                self.abandon(agent_id, id);
                let _ = tx.try_send(Outbound::Msg(ServerMsg::Cancel { id }));
                return Err(CallError::Timeout(timeout));
            }
        };
        match outcome {
            Outcome::Ok(result) => Ok(CallResult {
                result,
                agent_id,
                records_received: stored.0.load(Ordering::Relaxed),
                records_inserted: stored.1.load(Ordering::Relaxed),
            }),
            Outcome::Err(e) if e.kind == ErrorKind::Unreachable => Err(CallError::Unreachable(e.message)),
            Outcome::Err(e) => Err(CallError::Failed { kind: e.kind, message: e.message }),
        }
    }

    fn abandon(&self, agent_id: Uuid, request: u64) {
        if let Some(c) = self.state().conns.get_mut(&agent_id) {
            c.pending.remove(&request);
        }
    }
}

/// The protocol version an agent must speak to be sent `op`.
fn min_protocol(op: &Op) -> u16 {
    match op {
        Op::ClearAttendance { .. } => essl_wire::CLEAR_PROTOCOL_VERSION,
        _ => essl_wire::MIN_PROTOCOL_VERSION,
    }
}

fn fail_pending(pending: HashMap<u64, Pending>, why: &str) {
    for (_, p) in pending {
        let _ = p.done.send(Outcome::Err(essl_wire::OpError { kind: ErrorKind::Unreachable, message: why.to_owned() }));
    }
}
