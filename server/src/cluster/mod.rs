//! Several `essl-server` instances on one PostgreSQL database, with no other infrastructure.
//!
//! - `registry.rs`: the shared registry (instances with leases, agent presence, reachability) in PostgreSQL.
//! - `notice.rs`: what instances tell each other by LISTEN/NOTIFY (versioned JSON envelopes, size-checked).
//!
//! Each instance holds a lease it renews every `heartbeat`; its agents count as connected only while the lease
//! holds, so a killed instance leaves no agent shown connected for longer than two heartbeats. Each instance
//! mirrors the other instances' agents in its hub (notices as they happen; leases twice per heartbeat; the whole
//! registry every 30 s and whenever its listener lost notices), so routing never waits for the database. A request
//! for a device whose best agent is on another instance goes there as a `Request` notice on that instance's
//! channel and comes back as a `Reply`; both are also kept in the database, so a notification lost while a listener
//! reconnects costs a second, not the deadline (the target claims each request once, by deleting its row). The
//! agent's punches are stored by the instance that holds the agent. Live events are re-broadcast so every
//! instance's event stream shows them.
//!
//! Trust: a notice is acted on only when its sender is an instance holding a lease; a reply only when it comes
//! from the instance that was asked, for a request still waiting; a forwarded request only for a device of the
//! agent's own site. Anything else is logged and dropped; nothing crashes.

pub mod notice;
mod registry;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use essl_wire::{ErrorKind, Op, Reach};
use jiff::Timestamp;
use sqlx::postgres::{PgListener, PgPool};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::hub::{AgentPresence, CallError, CallResult, Hub, HubEvent, MirroredAgent, Reachability};
use crate::store::Store;
use notice::{BROADCAST, Envelope, Notice, PresenceNotice, ReachNotice, channel_of};

/// Timing of the cluster.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The lease lasts two of these; an instance renews it, and reads the others' leases, twice per heartbeat.
    pub heartbeat: Duration,
    /// Added to a forwarded request's deadline for the way there and back.
    pub forward_margin: Duration,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        ClusterConfig { heartbeat: Duration::from_secs(5), forward_margin: Duration::from_secs(2) }
    }
}

impl ClusterConfig {
    pub fn lease(&self) -> Duration {
        self.heartbeat * 2
    }
}

/// A forwarded request waiting for its reply.
struct Waiting {
    to: Uuid,
    done: oneshot::Sender<Result<CallResult, CallError>>,
}

struct Inner {
    id: Uuid,
    pool: PgPool,
    config: ClusterConfig,
    waiting: Mutex<HashMap<Uuid, Waiting>>,
    /// Instances known to hold a lease (refreshed every heartbeat; a sender not in it is looked up once).
    live: Mutex<HashSet<Uuid>>,
    draining: AtomicBool,
    /// Stopped as a killed process stops: no renewals, no writes, no notices (see [`Cluster::halt`]).
    halted: CancellationToken,
    /// How many requests other instances forwarded here are still running: shutdown waits for none.
    work: tokio::sync::watch::Sender<usize>,
    /// Hub events to re-broadcast (bounded: live events are best effort, storage never waits on them).
    events: mpsc::Sender<HubEvent>,
    /// Notified when our listener lost notifications: the mirror is read whole again at once.
    resync: tokio::sync::Notify,
}

/// This instance's membership; cheap to clone.
#[derive(Clone)]
pub struct Cluster {
    inner: Arc<Inner>,
}

/// Why joining failed.
#[derive(Debug, thiserror::Error)]
#[error("cannot join the cluster registry: {0}")]
pub struct JoinError(#[from] sqlx::Error);

impl Cluster {
    /// Registers this instance, starts listening, and attaches the membership to `hub`. Background work stops
    /// when `stop` is cancelled; call [`Cluster::leave`] at the very end of a shutdown.
    pub async fn join(
        pool: PgPool,
        hub: Hub,
        store: Store,
        config: ClusterConfig,
        stop: CancellationToken,
    ) -> Result<Cluster, JoinError> {
        let id = Uuid::new_v4();
        registry::renew(&pool, id, config.lease(), false).await?;
        let mut listener = PgListener::connect_with(&pool).await?;
        listener.listen_all([BROADCAST, channel_of(id).as_str()]).await?;
        let (events, events_rx) = mpsc::channel(4096);
        let cluster = Cluster {
            inner: Arc::new(Inner {
                id,
                pool,
                config,
                waiting: Mutex::new(HashMap::new()),
                live: Mutex::new(HashSet::new()),
                draining: AtomicBool::new(false),
                halted: CancellationToken::new(),
                work: tokio::sync::watch::Sender::new(0),
                events,
                resync: tokio::sync::Notify::new(),
            }),
        };
        hub.attach_cluster(cluster.clone());
        cluster.refresh(&hub).await;
        // Background work ends at the end of a shutdown, or at once when halted.
        let stop = {
            let (stop, halted, both) = (stop, cluster.inner.halted.clone(), CancellationToken::new());
            let end = both.clone();
            tokio::spawn(async move {
                tokio::select! { _ = stop.cancelled() => {}, _ = halted.cancelled() => {} }
                end.cancel();
            });
            both
        };
        tokio::spawn(cluster.clone().heartbeat(hub.clone(), stop.clone()));
        tokio::spawn(cluster.clone().listen(listener, hub, store, stop.clone()));
        tokio::spawn(cluster.clone().publish_events(events_rx, stop));
        tracing::info!(instance_id = %id, "joined the cluster");
        Ok(cluster)
    }

    /// This instance's id.
    pub fn id(&self) -> Uuid {
        self.inner.id
    }

    fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    fn halted(&self) -> bool {
        self.inner.halted.is_cancelled()
    }

    /// Stops taking part at once, without a word to anyone, as a killed process would: no more lease renewals,
    /// registry writes or notices; the others find out when the lease runs out. For fault tests of a crashed
    /// instance that runs in the same process as the test.
    pub fn halt(&self) {
        self.inner.halted.cancel();
    }

    fn waiting(&self) -> MutexGuard<'_, HashMap<Uuid, Waiting>> {
        self.inner.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn live(&self) -> MutexGuard<'_, HashSet<Uuid>> {
        self.inner.live.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ---- what this instance tells the others

    /// Queues a hub event for the other instances (dropped, with a log line, if the queue is full).
    pub(crate) fn publish(&self, event: &HubEvent) {
        if let Err(mpsc::error::TrySendError::Full(_)) = self.inner.events.try_send(event.clone()) {
            tracing::debug!("cluster event queue full; an event is not re-broadcast");
        }
    }

    async fn publish_events(self, mut events: mpsc::Receiver<HubEvent>, stop: CancellationToken) {
        loop {
            let event = tokio::select! {
                _ = stop.cancelled() => return,
                e = events.recv() => match e { Some(e) => e, None => return },
            };
            self.broadcast(Notice::Event { event }).await;
        }
    }

    async fn broadcast(&self, notice: Notice) {
        if self.halted() {
            return;
        }
        match Envelope::new(self.id(), notice).encode() {
            Ok(payload) => {
                if let Err(error) = registry::notify_now(self.pool(), BROADCAST, &payload).await {
                    tracing::warn!(%error, "cannot broadcast to the other instances");
                }
            }
            Err(error) => tracing::debug!(%error, "notice not broadcast"),
        }
    }

    /// Records an agent's connection to this instance and tells the others.
    pub async fn agent_up(&self, presence: &AgentPresence, conn: u64) {
        if self.halted() {
            return;
        }
        let p = presence_notice(presence, conn);
        let result = async {
            let mut tx = self.pool().begin().await?;
            registry::agent_up(&mut tx, self.id(), &p).await?;
            if let Ok(payload) = Envelope::new(self.id(), Notice::Up { presence: p.clone() }).encode() {
                registry::notify(&mut tx, BROADCAST, &payload).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, agent_id = %presence.agent_id, "cannot record the agent in the cluster registry");
        }
    }

    /// Removes an agent's connection `conn` from the registry (if it is still that one) and tells the others
    /// (`moving`: this instance is shutting down and the agent will reconnect elsewhere).
    pub async fn agent_down(&self, agent: Uuid, conn: u64, moving: bool) {
        if self.halted() {
            return;
        }
        let result = async {
            let mut tx = self.pool().begin().await?;
            if registry::agent_down(&mut tx, self.id(), agent, conn).await?
                && let Ok(payload) = Envelope::new(self.id(), Notice::Down { agent, conn, moving }).encode()
            {
                registry::notify(&mut tx, BROADCAST, &payload).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, %agent, "cannot remove the agent from the cluster registry");
        }
    }

    /// Records an agent's probe reports and tells the others.
    pub async fn reach(&self, agent: Uuid, reports: &[(Uuid, Reach)]) {
        if reports.is_empty() || self.halted() {
            return;
        }
        let reports: Vec<ReachNotice> = reports
            .iter()
            .map(|(device_id, r)| ReachNotice {
                device_id: *device_id,
                reachable: r.reachable,
                rtt_us: r.rtt_us,
                checked_at_ms: r.checked_at_ms,
                error: r.error.clone(),
            })
            .collect();
        let result = async {
            let mut tx = self.pool().begin().await?;
            registry::reach(&mut tx, self.id(), agent, &reports).await?;
            // Too long for a notification: the others see it at their next refresh.
            if let Ok(payload) = Envelope::new(self.id(), Notice::Reach { agent, reports }).encode() {
                registry::notify(&mut tx, BROADCAST, &payload).await?;
            }
            tx.commit().await
        }
        .await;
        if let Err(error) = result {
            tracing::warn!(%error, %agent, "cannot record reachability in the cluster registry");
        }
    }

    // ---- requests across instances

    /// Runs `op` on `device` through `agent`, connected to `instance`: a `Request` notice there, its `Reply` here.
    /// A lost notification is made good through the database; an instance that leaves or dies fails the request
    /// at once ([`CallError::AgentGone`], so the hub tries again); otherwise it ends in [`CallError::Timeout`] at
    /// the deadline, never later, and is withdrawn so it is never served afterwards.
    pub async fn forward(
        &self,
        instance: Uuid,
        agent: Uuid,
        device: Uuid,
        op: Op,
        timeout: Duration,
    ) -> Result<CallResult, CallError> {
        let id = Uuid::new_v4();
        let (done, rx) = oneshot::channel();
        self.waiting().insert(id, Waiting { to: instance, done });
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // Kept in the database as well as notified: a target whose listener was reconnecting finds it there.
        let sent = match Envelope::new(self.id(), Notice::Request { id, agent, device, op, timeout_ms }).encode() {
            Ok(payload) => registry::send_request(self.pool(), id, instance, &channel_of(instance), &payload, timeout)
                .await
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(error) = sent {
            self.waiting().remove(&id);
            tracing::warn!(%error, %instance, %agent, "cannot forward a request to another instance");
            return Err(CallError::AgentGone);
        }
        tracing::debug!(request = %id, %instance, %agent, %device, "request forwarded");
        let deadline = tokio::time::Instant::now() + timeout + self.inner.config.forward_margin;
        let mut rx = rx;
        // The reply's notification can be lost (our listener reconnecting); the reply itself is in the database.
        let mut poll = tokio::time::interval_at(tokio::time::Instant::now() + REPLY_POLL, REPLY_POLL);
        loop {
            tokio::select! {
                outcome = &mut rx => return outcome.unwrap_or(Err(CallError::AgentGone)),
                _ = tokio::time::sleep_until(deadline) => {
                    self.waiting().remove(&id);
                    // Never served after we stopped waiting (a late clear would run unseen).
                    if let Err(error) = registry::withdraw_request(self.pool(), id).await {
                        tracing::debug!(%error, request = %id, "cannot withdraw a forwarded request");
                    }
                    return Err(CallError::Timeout(timeout));
                }
                _ = poll.tick() => {
                    if let Ok(Some(body)) = registry::take_reply(self.pool(), id).await {
                        self.waiting().remove(&id);
                        tracing::debug!(request = %id, "reply found by polling (its notification was lost)");
                        return stored_outcome(&body, instance);
                    }
                }
            }
        }
    }

    /// Serves a request another instance forwarded: only through an agent connected here, only for a device of
    /// that agent's site, never while draining (the asking instance tries again once the agent moved).
    async fn serve_request(&self, hub: &Hub, store: &Store, from: Uuid, id: Uuid, mut req: Forwarded) {
        // Claimed first: its notification and a scan may both bring it, and a withdrawn one must not run.
        match registry::claim_request(self.pool(), id, self.id()).await {
            Ok(Some(left_ms)) if left_ms > 0 => {
                req.timeout_ms = req.timeout_ms.min(u64::try_from(left_ms).unwrap_or(0));
            }
            Ok(Some(_)) => {
                tracing::debug!(request = %id, %from, "forwarded request found after its deadline; not served");
                return;
            }
            Ok(None) => {
                tracing::debug!(request = %id, %from, "forwarded request already claimed or withdrawn");
                return;
            }
            Err(error) => {
                tracing::warn!(%error, request = %id, %from, "cannot claim a forwarded request; its asker will retry");
                return;
            }
        }
        let outcome = self.run_forwarded(hub, store, &req).await;
        if self.halted() {
            return;
        }
        tracing::debug!(request = %id, %from, agent = %req.agent, ok = outcome.is_ok(), "forwarded request served");
        let reply = Envelope::new(self.id(), Notice::Reply { id, outcome: Some(outcome) });
        let channel = channel_of(from);
        // Every reply is kept in the database too: one whose notification is lost (the asking instance's listener
        // was reconnecting) is found by its poll; one too long for a notification travels only that way. Kept and
        // notified in one statement: one round trip on the way back.
        let body = serde_json::to_string(&reply).unwrap_or_default();
        let payload =
            reply.encode().or_else(|_| Envelope::new(self.id(), Notice::Reply { id, outcome: None }).encode());
        let Ok(payload) = payload else { return };
        if let Err(error) = registry::send_reply(self.pool(), id, &body, &channel, &payload).await {
            tracing::warn!(%error, request = %id, "cannot keep a reply in the database; notifying it alone");
            if let Err(error) = registry::notify_now(self.pool(), &channel, &payload).await {
                tracing::warn!(%error, request = %id, %from, "cannot notify the asking instance of a reply");
            }
        }
    }

    async fn run_forwarded(&self, hub: &Hub, store: &Store, req: &Forwarded) -> Result<CallResult, CallError> {
        if self.inner.draining.load(Ordering::Relaxed) {
            return Err(CallError::AgentGone);
        }
        let Some(presence) = hub.local_presence(req.agent) else {
            return Err(CallError::AgentGone);
        };
        let needed = crate::hub::min_protocol(&req.op);
        if presence.protocol < needed {
            return Err(CallError::Outdated { have: presence.protocol, needed });
        }
        match store.get_device(req.device).await {
            Ok(Some(d)) if d.site_id == Some(presence.site_id) => {}
            Ok(_) => {
                tracing::warn!(agent_id = %req.agent, device_id = %req.device, "forwarded request for a device outside the agent's site refused");
                return Err(CallError::Failed {
                    kind: ErrorKind::UnknownDevice,
                    message: "the device is not one of the agent's site".into(),
                });
            }
            Err(error) => {
                tracing::warn!(%error, "cannot load the device of a forwarded request");
                return Err(CallError::Failed { kind: ErrorKind::Internal, message: "storage unavailable".into() });
            }
        }
        // Our own deadline, whatever the notice asks for.
        let cap = hub.config().sync_timeout;
        let timeout = Duration::from_millis(req.timeout_ms).min(cap);
        hub.call_agent(req.agent, req.device, req.op.clone(), timeout).await
    }

    async fn take_reply(&self, from: Uuid, id: Uuid, outcome: Option<Result<CallResult, CallError>>) {
        let Some(waiting) = self.waiting().remove(&id) else {
            tracing::debug!(request = %id, %from, "reply to a request nobody waits for");
            return;
        };
        if waiting.to != from {
            tracing::warn!(request = %id, %from, asked = %waiting.to, "reply from an instance that was not asked; ignored");
            self.waiting().insert(id, waiting);
            return;
        }
        let outcome = match outcome {
            Some(o) => {
                // Its copy in the database is not needed any more; dropped off the request's path.
                let pool = self.pool().clone();
                tokio::spawn(async move {
                    if let Err(error) = registry::take_reply(&pool, id).await {
                        tracing::debug!(%error, request = %id, "cannot drop a delivered reply's copy");
                    }
                });
                o
            }
            None => match registry::take_reply(self.pool(), id).await {
                Ok(Some(body)) => match serde_json::from_str::<Envelope>(&body) {
                    Ok(Envelope { notice: Notice::Reply { outcome: Some(o), .. }, .. }) => o,
                    _ => {
                        Err(CallError::Failed { kind: ErrorKind::Internal, message: "unreadable stored reply".into() })
                    }
                },
                Ok(None) => {
                    Err(CallError::Failed { kind: ErrorKind::Internal, message: "stored reply missing".into() })
                }
                Err(error) => {
                    tracing::warn!(%error, "cannot read a stored reply");
                    Err(CallError::Failed { kind: ErrorKind::Internal, message: "storage unavailable".into() })
                }
            },
        };
        let _ = waiting.done.send(outcome);
    }

    // ---- single flight across instances

    /// Runs `start` (a device's sync) unless another instance is already syncing `device`, in which case waits for
    /// that sync's result and answers it, as joiners of a flight on one instance do. A claim lapses when its
    /// instance loses its lease or it outlives `deadline`; then the next one takes over. If the database cannot
    /// say, this instance reads the terminal itself: a second read is harmless (the unique key), a refusal is not.
    pub async fn single_flight<F, Fut>(
        &self,
        device: Uuid,
        deadline: Duration,
        start: F,
    ) -> Result<CallResult, CallError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<CallResult, CallError>>,
    {
        let until = tokio::time::Instant::now() + deadline;
        let lasts = deadline + self.inner.config.forward_margin;
        loop {
            let theirs = match registry::claim_flight(self.pool(), self.id(), device, lasts).await {
                Ok(Some(flight)) => {
                    let result = start().await;
                    let body = serde_json::to_string(&result).unwrap_or_default();
                    if let Err(error) = registry::finish_flight(self.pool(), device, flight, &body).await {
                        tracing::warn!(%error, device_id = %device, "cannot publish a sync's result to waiting instances");
                    }
                    return result;
                }
                Ok(None) => match registry::flight(self.pool(), device).await {
                    Ok(Some((flight, _, _, _))) => flight,
                    _ => continue,
                },
                Err(error) => {
                    tracing::warn!(%error, device_id = %device, "cannot coordinate the sync with other instances; reading alone");
                    return start().await;
                }
            };
            tracing::debug!(device_id = %device, flight = %theirs, "another instance is syncing this device; waiting for it");
            loop {
                if tokio::time::Instant::now() >= until {
                    return Err(CallError::Timeout(deadline));
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                match registry::flight(self.pool(), device).await {
                    Ok(Some((flight, true, Some(result), _))) if flight == theirs => {
                        return serde_json::from_str(&result).unwrap_or_else(|_| {
                            Err(CallError::Failed {
                                kind: ErrorKind::Internal,
                                message: "unreadable result of another instance's sync".into(),
                            })
                        });
                    }
                    Ok(Some((flight, false, _, true))) if flight == theirs => {}
                    // Gone, replaced, or its instance died: claim again.
                    Ok(_) => break,
                    Err(error) => {
                        tracing::debug!(%error, "cannot read another instance's sync; retrying");
                    }
                }
            }
        }
    }

    // ---- background

    async fn heartbeat(self, hub: Hub, stop: CancellationToken) {
        // Twice per heartbeat: a lease read at any moment then holds for more than one more round, so a live
        // instance's agents never blink out of the mirror while a refresh takes less than a heartbeat.
        let mut tick = tokio::time::interval(self.inner.config.heartbeat / 2);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick.tick().await;
        let mut round: u32 = 0;
        loop {
            // The mirror follows the notices; it is read whole only every FULL_REFRESH_ROUNDS rounds (a backstop)
            // and at once when our listener lost notices. Reading every agent of every instance each round cost
            // the database and the hub's lock more than anything else an idle cluster does.
            let whole = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {
                    round = round.wrapping_add(1);
                    round.is_multiple_of(FULL_REFRESH_ROUNDS)
                }
                _ = self.inner.resync.notified() => true,
            };
            let draining = self.inner.draining.load(Ordering::Relaxed);
            match registry::renew(self.pool(), self.id(), self.inner.config.lease(), draining).await {
                Ok(true) => {
                    tracing::warn!(instance_id = %self.id(), "our lease had run out and was swept; recording our agents again");
                    for (presence, conn) in hub.local_presences() {
                        self.agent_up(&presence, conn).await;
                    }
                }
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, "cannot renew this instance's lease"),
            }
            match registry::sweep(self.pool(), self.inner.config.lease()).await {
                Ok(0) => {}
                Ok(n) => tracing::info!(instances = n, "instances whose lease ran out forgotten"),
                Err(error) => tracing::debug!(%error, "cannot sweep expired instances"),
            }
            if whole {
                self.refresh(&hub).await;
            } else if let Some(leases) = self.leases().await {
                hub.renew_leases(leases);
            }
        }
    }

    /// The instances holding a lease, until when (by our clock) and their last heartbeat; requests waiting on
    /// the others fail now.
    async fn leases(&self) -> Option<HashMap<Uuid, (std::time::Instant, Timestamp)>> {
        match registry::live_instances(self.pool()).await {
            Ok(live) => {
                let ids: HashSet<Uuid> = live.iter().map(|(id, _, _)| *id).collect();
                self.fail_waiting_on(&|instance| !ids.contains(&instance));
                *self.live() = ids;
                let now = std::time::Instant::now();
                Some(
                    live.into_iter()
                        .map(|(id, ms, beat)| {
                            let until = now + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
                            (id, (until, Timestamp::from_millisecond(beat).unwrap_or_else(|_| Timestamp::now())))
                        })
                        .collect(),
                )
            }
            Err(error) => {
                tracing::warn!(%error, "cannot read the live instances");
                None
            }
        }
    }

    /// Replaces the hub's mirror with the registry's view of the other instances.
    async fn refresh(&self, hub: &Hub) {
        let agents = match registry::remote_agents(self.pool(), self.id()).await {
            Ok(a) => a,
            Err(error) => {
                tracing::warn!(%error, "cannot read the cluster registry");
                return;
            }
        };
        let Some(leases) = self.leases().await else { return };
        let mirrored = agents
            .into_iter()
            .map(|a| {
                let last_seen = Timestamp::from_millisecond(a.heartbeat_ms).unwrap_or_else(|_| Timestamp::now());
                let reports = a.reports.iter().map(|r| (r.device_id, reachability(a.presence.agent_id, r))).collect();
                MirroredAgent {
                    instance: a.instance,
                    conn: a.presence.conn,
                    presence: presence_of(&a.presence, last_seen),
                    reports,
                }
            })
            .collect();
        hub.replace_remote(mirrored, leases.into_iter().map(|(id, (until, _))| (id, until)).collect());
    }

    async fn listen(self, mut listener: PgListener, hub: Hub, store: Store, stop: CancellationToken) {
        let own = channel_of(self.id());
        let scan = Arc::new(tokio::sync::Notify::new());
        tokio::spawn(self.clone().scan_requests(scan.clone(), hub.clone(), store.clone(), stop.clone()));
        loop {
            let notification = tokio::select! {
                _ = stop.cancelled() => return,
                n = listener.try_recv() => n,
            };
            let notification = match notification {
                Ok(Some(n)) => n,
                Ok(None) => {
                    // Reconnected and listening again: what was notified meanwhile is lost. Presence comes back with
                    // the whole refresh this asks for, requests sent to us from the database; live events are gone.
                    tracing::warn!("cluster notifications were interrupted; listening again");
                    scan.notify_one();
                    self.inner.resync.notify_one();
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "cluster notifications interrupted; reconnecting");
                    scan.notify_one();
                    self.inner.resync.notify_one();
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => continue,
                    }
                }
            };
            let envelope = match Envelope::decode(notification.payload()) {
                Ok(e) => e,
                Err(error) => {
                    tracing::warn!(%error, channel = notification.channel(), "cluster notice ignored");
                    continue;
                }
            };
            if envelope.from == self.id() {
                continue;
            }
            let direct = notification.channel() == own;
            self.handle(envelope, direct, &hub, &store).await;
        }
    }

    /// Serves requests sent to us whose notification never came (our listener was reconnecting): at once when the
    /// listener says it lost its connection, and every [`REQUEST_SCAN`] in case it could not tell.
    async fn scan_requests(self, now: Arc<tokio::sync::Notify>, hub: Hub, store: Store, stop: CancellationToken) {
        let mut tick = tokio::time::interval(REQUEST_SCAN);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let age = tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => REQUEST_SCAN / 2,
                _ = now.notified() => Duration::ZERO,
            };
            let bodies = match registry::unclaimed_requests(self.pool(), self.id(), age, 256).await {
                Ok(b) => b,
                Err(error) => {
                    tracing::debug!(%error, "cannot look for requests whose notification was lost");
                    continue;
                }
            };
            for (id, body) in bodies {
                let refused = match Envelope::decode(&body) {
                    Ok(envelope @ Envelope { notice: Notice::Request { id: named, .. }, .. })
                        if named == id && envelope.from != self.id() =>
                    {
                        if self.is_live(envelope.from).await {
                            tracing::info!(request = %id, from = %envelope.from, "serving a forwarded request whose notification was lost");
                            self.handle(envelope, true, &hub, &store).await;
                            continue;
                        }
                        "its sender holds no lease".to_owned()
                    }
                    Ok(_) => "not a request of another instance under its own id".to_owned(),
                    Err(error) => error.to_string(),
                };
                // Dropped, so it is not looked at again every second.
                tracing::warn!(request = %id, reason = %refused, "a stored forwarded request refused");
                if let Err(error) = registry::withdraw_request(self.pool(), id).await {
                    tracing::debug!(%error, request = %id, "cannot drop a refused forwarded request");
                }
            }
        }
    }

    async fn handle(&self, envelope: Envelope, direct: bool, hub: &Hub, store: &Store) {
        let from = envelope.from;
        if !self.is_live(from).await {
            tracing::warn!(%from, "cluster notice from an instance that holds no lease; ignored");
            return;
        }
        match envelope.notice {
            Notice::Request { id, agent, device, op, timeout_ms } if direct => {
                let (me, hub, store) = (self.clone(), hub.clone(), store.clone());
                let req = Forwarded { agent, device, op, timeout_ms };
                self.inner.work.send_modify(|n| *n += 1);
                tokio::spawn(async move {
                    me.serve_request(&hub, &store, from, id, req).await;
                    me.inner.work.send_modify(|n| *n = n.saturating_sub(1));
                });
            }
            Notice::Reply { id, outcome } if direct => self.take_reply(from, id, outcome).await,
            Notice::Request { .. } | Notice::Reply { .. } => {
                tracing::warn!(%from, "a request or reply on the broadcast channel; ignored");
            }
            Notice::Up { presence } => {
                let conn = presence.conn;
                hub.remote_up(from, conn, presence_of(&presence, Timestamp::now()), self.inner.config.lease());
            }
            Notice::Down { agent, conn, moving } => hub.remote_down(from, agent, conn, moving),
            Notice::Reach { agent, reports } => {
                let reports = reports.iter().map(|r| (r.device_id, reachability(agent, r))).collect();
                hub.remote_reach(from, agent, reports);
            }
            Notice::Event { event } => hub.emit_from_peer(event),
            Notice::Leaving => {
                self.live().remove(&from);
                hub.forget_instance(from);
                self.fail_waiting_on(&|instance| instance == from);
            }
        }
    }

    /// Requests forwarded to instances that left or died will get no reply: they fail now with
    /// [`CallError::AgentGone`], so the hub tries again once the agent has reconnected elsewhere.
    fn fail_waiting_on(&self, gone: &dyn Fn(Uuid) -> bool) {
        let failed: Vec<Waiting> = {
            let mut waiting = self.waiting();
            let ids: Vec<Uuid> = waiting.iter().filter(|(_, w)| gone(w.to)).map(|(id, _)| *id).collect();
            ids.into_iter().filter_map(|id| waiting.remove(&id)).collect()
        };
        for w in failed {
            tracing::debug!(instance = %w.to, "a forwarded request's instance is gone");
            let _ = w.done.send(Err(CallError::AgentGone));
        }
    }

    async fn is_live(&self, instance: Uuid) -> bool {
        if self.live().contains(&instance) {
            return true;
        }
        match registry::is_live(self.pool(), instance).await {
            Ok(true) => {
                self.live().insert(instance);
                true
            }
            Ok(false) => false,
            Err(error) => {
                tracing::warn!(%error, "cannot check a sender's lease");
                false
            }
        }
    }

    // ---- shutdown

    /// Takes no new forwarded work (asking instances wait for the agents to move) and waits up to `grace` for what
    /// was forwarded here to finish.
    pub async fn drain(&self, grace: Duration) {
        self.inner.draining.store(true, Ordering::Relaxed);
        if let Err(error) = registry::renew(self.pool(), self.id(), self.inner.config.lease(), true).await {
            tracing::debug!(%error, "cannot mark this instance as draining");
        }
        let mut running = self.inner.work.subscribe();
        if tokio::time::timeout(grace, running.wait_for(|n| *n == 0)).await.is_err() {
            tracing::warn!("forwarded requests still running at the end of the grace period");
        }
    }

    /// Leaves the registry (our agents go with our row) and tells the others at once.
    pub async fn leave(&self) {
        if self.halted() {
            return;
        }
        self.broadcast(Notice::Leaving).await;
        if let Err(error) = registry::leave(self.pool(), self.id()).await {
            tracing::warn!(%error, "cannot remove this instance from the registry; its lease will run out");
        }
        tracing::info!(instance_id = %self.id(), "left the cluster");
    }
}

/// How often a forwarded request looks for its reply in the database, in case the notification was lost.
const REPLY_POLL: Duration = Duration::from_secs(1);

/// Every how many heartbeat rounds (two per heartbeat) the mirror is read whole from the registry: 30 s with the
/// default heartbeat of 5 s.
const FULL_REFRESH_ROUNDS: u32 = 12;

/// How often an instance looks in the database for requests sent to it whose notification was lost.
const REQUEST_SCAN: Duration = Duration::from_secs(1);

/// The outcome in a reply kept in the database, if it is a reply from `from`.
fn stored_outcome(body: &str, from: Uuid) -> Result<CallResult, CallError> {
    match serde_json::from_str::<Envelope>(body) {
        Ok(Envelope { from: sender, notice: Notice::Reply { outcome: Some(o), .. }, .. }) if sender == from => o,
        _ => Err(CallError::Failed { kind: ErrorKind::Internal, message: "unreadable stored reply".into() }),
    }
}

/// A request another instance forwarded.
struct Forwarded {
    agent: Uuid,
    device: Uuid,
    op: Op,
    timeout_ms: u64,
}

fn presence_notice(p: &AgentPresence, conn: u64) -> PresenceNotice {
    PresenceNotice {
        agent_id: p.agent_id,
        site_id: p.site_id,
        conn,
        protocol: p.protocol,
        version: p.version.clone(),
        hostname: p.hostname.clone(),
        os: p.os.clone(),
        connected_since_ms: p.connected_since.as_millisecond(),
    }
}

fn presence_of(p: &PresenceNotice, last_seen: Timestamp) -> AgentPresence {
    AgentPresence {
        agent_id: p.agent_id,
        site_id: p.site_id,
        version: p.version.clone(),
        hostname: p.hostname.clone(),
        os: p.os.clone(),
        protocol: p.protocol,
        connected_since: Timestamp::from_millisecond(p.connected_since_ms).unwrap_or(last_seen),
        last_seen,
        outbox: None,
    }
}

fn reachability(agent_id: Uuid, r: &ReachNotice) -> Reachability {
    Reachability {
        agent_id,
        reachable: r.reachable,
        rtt_us: r.rtt_us,
        checked_at: Timestamp::from_millisecond(r.checked_at_ms).unwrap_or_else(|_| Timestamp::now()),
        error: r.error.clone(),
    }
}
