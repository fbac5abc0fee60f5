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

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use essl_wire::{ErrorKind, Op, OpResult, OutboxFill, Outcome, Reach, ServerMsg};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::cluster::Cluster;
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
    /// A request that finds no agent for a device whose site had one within this window waits up to
    /// [`HubConfig::handoff_wait`] for it to reconnect (here or on another instance) instead of failing.
    pub handoff_window: Duration,
    pub handoff_wait: Duration,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            ping_interval: Duration::from_secs(15),
            hello_timeout: Duration::from_secs(10),
            probe_interval: Duration::from_secs(30),
            request_timeout: Duration::from_secs(15),
            sync_timeout: Duration::from_secs(600),
            handoff_window: Duration::from_secs(15),
            handoff_wait: Duration::from_secs(5),
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

/// Something happened that dashboards may want to show live. With several instances, each instance's events reach
/// every other instance's subscribers too (`cluster`), so they are serializable.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
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

/// An agent connected to another instance, as mirrored here from the shared registry (see `cluster`).
struct RemoteConn {
    instance: Uuid,
    conn: u64,
    presence: AgentPresence,
}

/// An agent of another instance as the shared registry lists it (see [`Hub::replace_remote`]).
pub(crate) struct MirroredAgent {
    pub instance: Uuid,
    pub conn: u64,
    pub presence: AgentPresence,
    /// Its latest probe of each device.
    pub reports: Vec<(Uuid, Reachability)>,
}

/// Where a request for an agent goes.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Target {
    agent: Uuid,
    /// The instance holding the agent's connection, when it is not this one.
    instance: Option<Uuid>,
}

#[derive(Default)]
struct State {
    conns: HashMap<Uuid, Conn>,
    /// Agents connected to other instances (empty without a cluster).
    remote: HashMap<Uuid, RemoteConn>,
    /// device -> agent -> latest probe (agents of this instance and mirrored ones alike).
    reach: HashMap<Uuid, HashMap<Uuid, Reachability>>,
    /// site -> when an agent of it last went away: a request that finds no agent waits a moment for it to come
    /// back (a rolling restart moves agents from one instance to another).
    left: HashMap<Uuid, Instant>,
    /// instance -> until when its lease holds, as the registry said at the last refresh: agents of an instance
    /// whose lease ran out are not shown or used, even before the next refresh.
    leases: HashMap<Uuid, Instant>,
}

impl State {
    /// Mirrored agents whose instance still holds its lease.
    fn live_remote(&self) -> impl Iterator<Item = &RemoteConn> {
        let now = Instant::now();
        self.remote.values().filter(move |r| self.leases.get(&r.instance).is_some_and(|until| *until > now))
    }

    /// One mirrored agent, if its instance still holds its lease.
    fn live_remote_agent(&self, agent_id: Uuid) -> Option<&RemoteConn> {
        let now = Instant::now();
        self.remote.get(&agent_id).filter(|r| self.leases.get(&r.instance).is_some_and(|until| *until > now))
    }

    /// Drops the probe reports of the agents `gone` says, in one pass over the devices.
    fn forget_reports(&mut self, gone: impl Fn(&Uuid) -> bool) {
        for reach in self.reach.values_mut() {
            reach.retain(|agent, _| !gone(agent));
        }
    }
}

struct Inner {
    config: HubConfig,
    state: Mutex<State>,
    next_id: AtomicU64,
    events: broadcast::Sender<HubEvent>,
    flights: SyncFlights,
    /// Set once when this instance joins a cluster (PostgreSQL only).
    cluster: OnceLock<Cluster>,
}

/// Cheap to clone; all clones share one registry.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

/// Why a device request did not produce a result (serializable: it crosses instances).
#[derive(Debug, Clone, PartialEq, thiserror::Error, Serialize, Deserialize)]
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

/// A successful device request (serializable: it crosses instances).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
                cluster: OnceLock::new(),
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
        if let Some(cluster) = self.cluster() {
            cluster.publish(&event);
        }
        let _ = self.inner.events.send(event);
    }

    /// An event another instance emitted: to this instance's subscribers only. An agent's outbox fill also
    /// updates its mirrored presence, so every instance shows it.
    pub(crate) fn emit_from_peer(&self, event: HubEvent) {
        if let HubEvent::OutboxFill { agent_id, bytes, limit_bytes } = &event
            && let Some(r) = self.state().remote.get_mut(agent_id)
        {
            // The event carries the bytes; the counts stay as last known (zero until then).
            let (pending_records, pending_batches) =
                r.presence.outbox.map_or((0, 0), |o| (o.pending_records, o.pending_batches));
            r.presence.outbox =
                Some(OutboxFill { bytes: *bytes, limit_bytes: *limit_bytes, pending_records, pending_batches });
        }
        let _ = self.inner.events.send(event);
    }

    /// The cluster this instance joined, if any.
    pub fn cluster(&self) -> Option<&Cluster> {
        self.inner.cluster.get()
    }

    pub(crate) fn attach_cluster(&self, cluster: Cluster) {
        let _ = self.inner.cluster.set(cluster);
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
        let old = {
            let mut state = self.state();
            // The agent moved here from another instance.
            state.remote.remove(&agent_id);
            state.conns.insert(agent_id, conn)
        };
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
        state.forget_reports(|a| *a == agent_id);
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

    /// Connected agents, to this instance or (in a cluster) to another; each agent once.
    pub fn presences(&self) -> Vec<AgentPresence> {
        let state = self.state();
        let local = state.conns.values().map(|c| c.presence.clone());
        let remote = state.live_remote().filter(|r| !state.conns.contains_key(&r.presence.agent_id));
        local.chain(remote.map(|r| r.presence.clone())).collect()
    }

    /// Agents connected to this instance.
    pub fn local_presences(&self) -> Vec<(AgentPresence, u64)> {
        self.state().conns.values().map(|c| (c.presence.clone(), c.id)).collect()
    }

    /// Whether this agent is connected now (here or, in a cluster, to another instance).
    pub fn presence(&self, agent_id: Uuid) -> Option<AgentPresence> {
        let state = self.state();
        state
            .conns
            .get(&agent_id)
            .map(|c| c.presence.clone())
            .or_else(|| state.live_remote_agent(agent_id).map(|r| r.presence.clone()))
    }

    /// The agent's presence if its connection is to this instance.
    pub fn local_presence(&self, agent_id: Uuid) -> Option<AgentPresence> {
        self.state().conns.get(&agent_id).map(|c| c.presence.clone())
    }

    /// The instance holding the agent's connection, when it is another one.
    pub fn instance_of(&self, agent_id: Uuid) -> Option<Uuid> {
        let state = self.state();
        if state.conns.contains_key(&agent_id) {
            return None;
        }
        state.live_remote_agent(agent_id).map(|r| r.instance)
    }

    // ---- the mirror of other instances' agents (cluster)

    /// An agent connected to instance `instance`. A connection of the same agent here is older (an agent holds one
    /// connection): it is closed as replaced.
    pub(crate) fn remote_up(&self, instance: Uuid, conn: u64, presence: AgentPresence, lease: Duration) {
        let agent_id = presence.agent_id;
        let stale = {
            let mut state = self.state();
            // The sender just wrote its presence under a lease it holds; the next refresh says exactly how long.
            state.leases.entry(instance).or_insert_with(|| Instant::now() + lease);
            let stale = state.conns.remove(&agent_id);
            state.forget_reports(|a| *a == agent_id);
            state.remote.insert(agent_id, RemoteConn { instance, conn, presence });
            stale
        };
        if let Some(old) = stale {
            tracing::info!(%agent_id, %instance, "agent reconnected to another instance; closing its old connection here");
            let _ =
                old.tx.try_send(Outbound::Close(essl_wire::close::REPLACED, "replaced by a newer connection".into()));
            old.kill.cancel();
            fail_pending(old.pending, "agent reconnected elsewhere");
        }
    }

    /// Connection `conn` of an agent on `instance` ended; `moving`: because that instance is shutting down (the
    /// agent is about to reconnect, maybe here).
    pub(crate) fn remote_down(&self, instance: Uuid, agent_id: Uuid, conn: u64, moving: bool) {
        let mut state = self.state();
        let Some(r) = state.remote.get(&agent_id).filter(|r| r.instance == instance && r.conn == conn) else {
            return;
        };
        let site = r.presence.site_id;
        state.remote.remove(&agent_id);
        state.forget_reports(|a| *a == agent_id);
        if moving {
            state.left.insert(site, Instant::now());
        }
    }

    /// Probe reports of an agent connected to another instance.
    pub(crate) fn remote_reach(&self, instance: Uuid, agent_id: Uuid, reports: Vec<(Uuid, Reachability)>) {
        let mut state = self.state();
        if state.remote.get(&agent_id).is_none_or(|r| r.instance != instance) {
            return;
        }
        for (device, r) in reports {
            state.reach.entry(device).or_default().insert(agent_id, r);
        }
    }

    /// Replaces the whole mirror with what the shared registry says (the heartbeat's refresh): the other
    /// instances' agents with their reports, and how long each instance's lease still holds.
    pub(crate) fn replace_remote(&self, agents: Vec<MirroredAgent>, leases: HashMap<Uuid, Instant>) {
        let mut state = self.state();
        state.leases = leases;
        let before: Vec<(Uuid, Uuid)> =
            state.remote.values().map(|r| (r.presence.agent_id, r.presence.site_id)).collect();
        // One pass over the reports (not one per agent: thousands of agents times hundreds of devices, under the
        // hub's lock).
        if !before.is_empty() {
            let mirrored: HashSet<Uuid> = before.iter().map(|(agent, _)| *agent).collect();
            state.forget_reports(|a| mirrored.contains(a));
        }
        state.remote.clear();
        for MirroredAgent { instance, conn, presence, reports } in agents {
            let agent_id = presence.agent_id;
            if state.conns.contains_key(&agent_id) {
                continue;
            }
            for (device, r) in reports {
                state.reach.entry(device).or_default().insert(agent_id, r);
            }
            state.remote.insert(agent_id, RemoteConn { instance, conn, presence });
        }
        let now = Instant::now();
        for (agent, site) in before {
            if !state.remote.contains_key(&agent) && !state.conns.contains_key(&agent) {
                state.left.insert(site, now);
            }
        }
    }

    /// The instances' leases (until when, by our clock) and last heartbeats, between two whole refreshes: the
    /// mirrored agents' "last seen" is their instance's heartbeat.
    pub(crate) fn renew_leases(&self, leases: HashMap<Uuid, (Instant, Timestamp)>) {
        let mut state = self.state();
        for remote in state.remote.values_mut() {
            if let Some((_, beat)) = leases.get(&remote.instance) {
                remote.presence.last_seen = *beat;
            }
        }
        state.leases = leases.into_iter().map(|(id, (until, _))| (id, until)).collect();
    }

    /// Forgets every agent of an instance that left.
    pub(crate) fn forget_instance(&self, instance: Uuid) {
        let mut state = self.state();
        let gone: Vec<(Uuid, Uuid)> = state
            .remote
            .values()
            .filter(|r| r.instance == instance)
            .map(|r| (r.presence.agent_id, r.presence.site_id))
            .collect();
        let now = Instant::now();
        for (agent, site) in &gone {
            state.remote.remove(agent);
            state.left.insert(*site, now);
        }
        let gone: HashSet<Uuid> = gone.into_iter().map(|(agent, _)| agent).collect();
        state.forget_reports(|a| gone.contains(a));
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
    ///
    /// An agent connected to another instance is asked through that instance (`cluster`). When no agent is
    /// connected but one of the device's site went away moments ago (a restart moving agents between instances),
    /// the request waits a little for it to come back rather than failing.
    pub async fn call(&self, device: &Device, op: Op, timeout: Duration) -> Result<CallResult, CallError> {
        let needed = min_protocol(&op);
        let started = Instant::now();
        let mut tried: Vec<Target> = Vec::new();
        let mut last = CallError::NoAgent;
        // Round two only when an agent went away under us (moved to another instance): its new connection is a
        // new target.
        for round in 0..2 {
            let mut candidates = self.candidates(device, needed, &tried)?;
            if candidates.is_empty() {
                let left = timeout.saturating_sub(started.elapsed());
                candidates = self.await_handoff(device, needed, &tried, left).await?;
            }
            if candidates.is_empty() {
                return Err(last);
            }
            let mut moved = false;
            for target in candidates.into_iter().take(2) {
                let left = timeout.saturating_sub(started.elapsed());
                let agent_id = target.agent;
                tried.push(target);
                let result = match (target.instance, self.cluster()) {
                    (Some(instance), Some(cluster)) => {
                        cluster.forward(instance, agent_id, device.id, op.clone(), left).await
                    }
                    _ => self.call_agent(agent_id, device.id, op.clone(), left).await,
                };
                match result {
                    Ok(r) => return Ok(r),
                    Err(e) if e.worth_retrying() => {
                        tracing::info!(%agent_id, instance = ?target.instance, device_id = %device.id, error = %e, "request failed, trying the next agent");
                        moved |= e == CallError::AgentGone;
                        last = e;
                    }
                    Err(e) => return Err(e),
                }
            }
            if !moved || round == 1 {
                break;
            }
            if let Some(site) = device.site_id {
                self.state().left.insert(site, Instant::now());
            }
        }
        Err(last)
    }

    /// No agent now: if one of the site's went away within the handoff window, polls for a candidate not tried yet
    /// for up to `handoff_wait` (bounded by what is left of the request's deadline).
    async fn await_handoff(
        &self,
        device: &Device,
        needed: u16,
        tried: &[Target],
        left: Duration,
    ) -> Result<Vec<Target>, CallError> {
        let cfg = &self.inner.config;
        let Some(site) = device.site_id else { return Ok(Vec::new()) };
        let recent = self.state().left.get(&site).is_some_and(|t| t.elapsed() <= cfg.handoff_window);
        if !recent {
            return Ok(Vec::new());
        }
        let until = Instant::now() + cfg.handoff_wait.min(left / 2);
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let found = self.candidates(device, needed, tried)?;
            if !found.is_empty() {
                tracing::debug!(device_id = %device.id, "an agent of the site came back; going on");
                return Ok(found);
            }
        }
        Ok(Vec::new())
    }

    /// The site's connected agents that speak protocol `needed`, best first; [`CallError::Outdated`] when agents
    /// are connected but none speaks it.
    fn candidates(&self, device: &Device, needed: u16, tried: &[Target]) -> Result<Vec<Target>, CallError> {
        let Some(site_id) = device.site_id else {
            return Ok(Vec::new());
        };
        let state = self.state();
        // Agents here first among equals: `routing::order` keeps the input order for ties.
        let of_site: Vec<(&AgentPresence, Option<Uuid>)> = state
            .conns
            .values()
            .map(|c| (&c.presence, None))
            .chain(state.live_remote().map(|r| (&r.presence, Some(r.instance))))
            .filter(|(p, _)| p.site_id == site_id)
            .collect();
        let connected: Vec<Uuid> =
            of_site.iter().filter(|(p, _)| p.protocol >= needed).map(|(p, _)| p.agent_id).collect();
        if connected.is_empty()
            && let Some(have) = of_site.iter().map(|(p, _)| p.protocol).max()
        {
            return Err(CallError::Outdated { have, needed });
        }
        let instance: HashMap<Uuid, Option<Uuid>> = of_site.iter().map(|(p, i)| (p.agent_id, *i)).collect();
        let reports = state.reach.get(&device.id);
        let order = routing::order(&connected, reports, Timestamp::now(), self.inner.config.reach_fresh());
        Ok(order
            .into_iter()
            .map(|agent| Target { agent, instance: instance.get(&agent).copied().flatten() })
            .filter(|t| !tried.contains(t))
            .collect())
    }

    /// The device of a pending `ClearAttendance` request of this agent, if `request` is one.
    pub(crate) fn pending_clear(&self, agent_id: Uuid, request: u64) -> Option<Uuid> {
        let state = self.state();
        let pending = state.conns.get(&agent_id)?.pending.get(&request)?;
        pending.clear.then_some(pending.device_id)
    }

    /// Runs `op` through an agent connected to this instance (also for requests forwarded by another instance).
    pub(crate) async fn call_agent(
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
pub(crate) fn min_protocol(op: &Op) -> u16 {
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
