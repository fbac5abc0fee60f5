//! The running server: shared state, the listener loop, graceful shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::auth::Auth;
use crate::hub::session::{SessionCtx, device_specs};
use crate::hub::{Hub, HubConfig, HubEvent};
use crate::metrics::Metrics;
use crate::store::Store;

/// Everything a handler may use; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub hub: Hub,
    pub auth: Auth,
    /// Cancelled at the shutdown signal, `shutdown_delay` before `shutdown`: from then on `/readyz` answers 503, so
    /// load balancers that only health-check take the instance out of rotation while it still serves everything.
    pub leaving: CancellationToken,
    /// Cancelled when the server begins to shut down (HTTP stops accepting; event streams end).
    pub shutdown: CancellationToken,
    /// Cancelled at the end of a shutdown, once in-flight requests are done: agent sessions and cluster work end.
    pub agents_stop: CancellationToken,
    pub config: Arc<ServerConfig>,
    pub metrics: Arc<Metrics>,
    /// Rate limits of the push (ADMS) endpoints.
    pub push: Arc<crate::push::PushHub>,
}

/// Settings of a running server.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub hub: HubConfig,
    /// How long the server goes on serving after the shutdown signal, with `/readyz` answering 503, before it stops
    /// accepting: time for a load balancer's health checks to take it out of rotation, so no connection is sent to a
    /// closing listener. Zero: the shutdown begins at the signal.
    pub shutdown_delay: Duration,
    /// How long in-flight HTTP requests may take to finish once the shutdown begins (after `shutdown_delay`).
    pub grace: Duration,
    /// Served over TLS: session cookies get the `Secure` flag (behind a TLS proxy, `X-Forwarded-Proto: https`
    /// does the same per request).
    pub tls: bool,
    /// How often a live event stream (`/api/events`) checks that its session or token still holds.
    pub events_recheck: Duration,
    /// The push (ADMS / iclock) endpoints.
    pub push: crate::push::PushConfig,
    /// Several instances on one PostgreSQL database (ignored on SQLite).
    pub cluster: crate::cluster::ClusterConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            hub: HubConfig::default(),
            shutdown_delay: Duration::ZERO,
            grace: Duration::from_secs(20),
            tls: false,
            events_recheck: Duration::from_secs(60),
            push: crate::push::PushConfig::default(),
            cluster: crate::cluster::ClusterConfig::default(),
        }
    }
}

impl AppState {
    pub fn new(store: Store, config: ServerConfig) -> AppState {
        AppState {
            auth: Auth::new(store.clone()),
            hub: Hub::new(config.hub.clone()),
            push: Arc::new(crate::push::PushHub::new(&config.push)),
            store,
            leaving: CancellationToken::new(),
            shutdown: CancellationToken::new(),
            agents_stop: CancellationToken::new(),
            config: Arc::new(config),
            metrics: Arc::new(Metrics::default()),
        }
    }

    /// Background work of a running server: metrics follow the hub's events; expired sessions are swept.
    pub fn start_background(&self) {
        self.start_session_sweeper();
        let mut events = self.hub.subscribe();
        let metrics = self.metrics.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let event = tokio::select! {
                    _ = shutdown.cancelled() => return,
                    e = events.recv() => e,
                };
                match event {
                    Ok(HubEvent::PunchesStored { inserted, .. }) => {
                        metrics.punches_stored.inc_by(inserted);
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Forgets expired dashboard sessions and push journal entries past their retention every hour (this keeps
    /// the tables small).
    fn start_session_sweeper(&self) {
        let store = self.store.clone();
        let retention = self.config.push.journal_retention;
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(3600));
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => return,
                    _ = every.tick() => {}
                }
                match store.delete_expired_sessions().await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(sessions = n, "expired dashboard sessions forgotten"),
                    Err(error) => tracing::warn!(%error, "cannot forget expired sessions"),
                }
                let before = jiff::Timestamp::now()
                    .checked_sub(jiff::SignedDuration::try_from(retention).unwrap_or(jiff::SignedDuration::MAX))
                    .unwrap_or(jiff::Timestamp::MIN);
                match store.prune_journal(before).await {
                    Ok(0) => {}
                    Ok(n) => tracing::debug!(entries = n, "old push journal entries forgotten"),
                    Err(error) => tracing::warn!(%error, "cannot prune the push journal"),
                }
            }
        });
    }

    pub fn session_ctx(&self) -> SessionCtx {
        SessionCtx { hub: self.hub.clone(), store: self.store.clone(), shutdown: self.agents_stop.clone() }
    }

    /// On PostgreSQL, joins the other instances on the same database (see [`crate::cluster`]); on SQLite, nothing.
    pub async fn join_cluster(&self) -> Result<(), crate::cluster::JoinError> {
        let Some(pool) = self.store.postgres_pool() else { return Ok(()) };
        crate::cluster::Cluster::join(
            pool,
            self.hub.clone(),
            self.store.clone(),
            self.config.cluster.clone(),
            self.agents_stop.clone(),
        )
        .await?;
        Ok(())
    }

    /// Waits for the shutdown `signal`, then serves on for `shutdown_delay` with `/readyz` answering 503, then begins
    /// the shutdown proper (`shutdown` cancelled). Cancelling `shutdown` directly, as a second signal does
    /// (`essl-server serve`), ends the wait at once, whether for the signal or through the delay.
    pub async fn shutdown_after_delay(&self, signal: impl std::future::Future<Output = ()>) {
        tokio::select! {
            () = signal => {}
            () = self.shutdown.cancelled() => {}
        }
        self.leaving.cancel();
        let delay = self.config.shutdown_delay;
        if !delay.is_zero() && !self.shutdown.is_cancelled() {
            tracing::info!(
                delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX),
                "shutting down after a delay: /readyz answers 503, everything else is served as before"
            );
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                () = self.shutdown.cancelled() => tracing::info!("shutdown delay cut short"),
            }
        }
        tracing::info!("shutting down: no new requests, finishing in-flight ones");
        self.shutdown.cancel();
    }

    /// The end of a shutdown, once HTTP work is done: forwarded requests finish, agents are told to reconnect
    /// elsewhere (a short jittered delay on their side), and this instance leaves the cluster.
    pub async fn let_agents_go(&self) {
        if let Some(cluster) = self.hub.cluster() {
            cluster.drain(self.config.grace).await;
        }
        self.hub.close_all(essl_wire::close::GOING_AWAY, "server shutting down");
        self.agents_stop.cancel();
        if let Some(cluster) = self.hub.cluster() {
            cluster.leave().await;
        }
    }

    /// Tells the site's connected agents its device list changed.
    pub async fn notify_site(&self, site_id: Option<Uuid>) {
        let Some(site_id) = site_id else { return };
        match self.store.devices_for_site(site_id).await {
            Ok(devices) => self.hub.devices_changed(site_id, device_specs(&devices)),
            Err(error) => tracing::warn!(%error, %site_id, "cannot tell agents about device changes"),
        }
    }
}

/// Serves HTTP (and agent WebSockets) on `listener` until `shutdown` completes and the shutdown delay has passed
/// (see [`AppState::shutdown_after_delay`]); then stops accepting, lets in-flight requests finish within the grace
/// period, tells agents to reconnect elsewhere, and returns.
pub async fn run(
    listener: TcpListener,
    state: AppState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    state.start_background();
    state.join_cluster().await.map_err(std::io::Error::other)?;
    let app = crate::http::router(state.clone());
    let signal = state.shutdown.clone();
    let stop = {
        let state = state.clone();
        async move { state.shutdown_after_delay(shutdown).await }
    };
    tokio::spawn(stop);
    let serve = axum::serve(listener, app.into_make_service_with_connect_info::<SocketAddr>())
        .with_graceful_shutdown(async move { signal.cancelled().await });
    let grace = state.config.grace;
    // The grace period starts when the shutdown begins (after the delay), not with the server. Agents are told once
    // HTTP work has had its chance; their sessions end when `let_agents_go` cancels `agents_stop`.
    let stopping = state.shutdown.clone();
    let mut serve = std::pin::pin!(std::future::IntoFuture::into_future(serve));
    let result = tokio::select! {
        r = &mut serve => r,
        () = async {
            stopping.cancelled().await;
            tokio::time::sleep(grace + Duration::from_secs(1)).await;
        } => {
            tracing::warn!("in-flight requests did not finish within the grace period");
            Ok(())
        }
    };
    state.let_agents_go().await;
    result
}
