//! The agent's connection to the cloud: connect, serve one session, wait, connect again, until shut down.
//!
//! - `connect`: WebSocket over TLS with the bearer token; `session`: `Hello`/`Welcome` and the serving loop;
//!   `outgoing`: the single writer; `jobs`: device requests, one task each; `sync`: a requested sync through the
//!   outbox; `upload`: the outbox's batches to the server, deleted on `Ack`; `devices`: the site's terminals, one
//!   working session per terminal at a time, reachability.
//!
//! What outlives connections: the outbox, the device table (the last list the server sent) and the collectors
//! that read the terminals on their own (`crate::collect`), so punches keep being queued while the cloud is away.
//!
//! Reconnect delays: failures back off exponentially with jitter (`backoff_min` doubling up to `backoff_max`,
//! reset after a session that lived `stable_after`); a refused token or an incompatible server waits
//! `backoff_max` every time (and is logged once as an error); a server going away is rejoined after a short
//! random delay without counting as a failure.

mod clear;
mod connect;
pub(crate) mod devices;
pub(crate) mod jobs;
mod outgoing;
mod session;
mod sync;
mod upload;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::collect::Collectors;
use crate::config::{Config, Timing};
use crate::outbox::{Outbox, OutboxError};
pub use connect::ConnectError;
use connect::Connector;
use devices::DeviceTable;
use session::End;

/// Why the relay could not start at all (it never gives up once started).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
    #[error("cannot open the outbox: {0}")]
    Outbox(#[from] OutboxError),
}

/// State that outlives sessions.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    pub devices: DeviceTable,
    pub outbox: Outbox,
    /// Connections so far: numbers each one, so request tags of an old connection are never sent on a new one.
    pub conns: AtomicU64,
}

/// Connects to `config.server` and serves it, reconnecting for ever, until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let config = Arc::new(config);
    let connector = Connector::new(config.clone())?;
    let path = config.collect.outbox.display().to_string();
    let (outbox, _recovery) = Outbox::open(&config.collect.outbox, config.collect.outbox_max_bytes).await?;
    match outbox.stats().await {
        Ok(s) => tracing::info!(%path, batches = s.batches, punches = s.punches, bytes = s.bytes, "outbox open"),
        Err(error) => tracing::warn!(%path, %error, "outbox open, but cannot count what it holds"),
    }
    let devices = DeviceTable::default();
    let collectors = Collectors::start(
        devices.clone(),
        outbox.clone(),
        Arc::new(config.collect.clone()),
        Arc::new(config.timing.clone()),
    );
    let shared = Shared { config: config.clone(), devices, outbox, conns: AtomicU64::new(1) };
    let result = serve(&config, &connector, &shared, &shutdown).await;
    // Collectors first, so nothing writes while the outbox is checkpointed and closed.
    drop(collectors);
    if let Err(error) = shared.outbox.clone().close().await {
        tracing::warn!(%path, %error, "cannot checkpoint the outbox on the way out (it is safe anyway)");
    }
    result
}

/// The reconnect loop.
async fn serve(
    config: &Arc<Config>,
    connector: &Connector,
    shared: &Shared,
    shutdown: &CancellationToken,
) -> Result<(), RelayError> {
    let server = config.server.to_string();
    let mut backoff = Backoff::new(&config.timing);
    // Errors that repeat on every attempt are logged as errors once, then quietly until something changes.
    let mut said_refused = false;
    let mut said_incompatible = false;

    loop {
        let attempt = backoff.failures + 1;
        tracing::debug!(%server, attempt, "connecting");
        let connected = tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            c = connector.connect() => c,
        };
        let (end, welcomed_at) = match connected {
            Ok(ws) => {
                let span = tracing::info_span!("session", %server);
                let ended = session::run(shared, ws, shutdown).instrument(span).await;
                (ended.end, ended.welcomed_at)
            }
            Err(ConnectError::Refused { status }) => (End::Refused(format!("HTTP {status}")), None),
            Err(e) => (End::Failed(e.to_string()), None),
        };
        if let Some(at) = welcomed_at {
            said_refused = false;
            said_incompatible = false;
            if at.elapsed() > config.timing.stable_after {
                backoff.reset();
            }
        }

        let delay = match &end {
            End::Shutdown => return Ok(()),
            End::Refused(why) => {
                let delay = backoff.longest();
                if !std::mem::replace(&mut said_refused, true) {
                    tracing::error!(
                        %server, attempt, delay_ms = ms(delay), error = %why,
                        "the server refused the agent token: it is wrong or was revoked; create a new agent token on the server and configure it (--token, ESSL_AGENT_TOKEN or `token`). Retrying slowly"
                    );
                } else {
                    tracing::debug!(%server, attempt, delay_ms = ms(delay), error = %why, "token refused again");
                }
                delay
            }
            End::Incompatible(why) => {
                let delay = backoff.longest();
                if !std::mem::replace(&mut said_incompatible, true) {
                    tracing::error!(
                        %server, attempt, delay_ms = ms(delay), error = %why,
                        agent_version = env!("CARGO_PKG_VERSION"),
                        agent_protocol = %format!("{}..={}", essl_wire::MIN_PROTOCOL_VERSION, essl_wire::PROTOCOL_VERSION),
                        "the server does not speak this agent's protocol: upgrade essl-agent to a version the server supports. Retrying slowly"
                    );
                } else {
                    tracing::debug!(%server, attempt, delay_ms = ms(delay), error = %why, "still incompatible");
                }
                delay
            }
            End::GoingAway(why) => {
                let t = &config.timing;
                let delay = random_between(t.going_away_min, t.going_away_max);
                tracing::info!(%server, delay_ms = ms(delay), reason = %why, "the server is going away; reconnecting shortly");
                delay
            }
            End::Failed(why) => {
                let delay = backoff.next();
                let what = if welcomed_at.is_some() { "connection lost" } else { "connection failed" };
                tracing::warn!(%server, attempt, delay_ms = ms(delay), error = %why, "{what}; reconnecting");
                delay
            }
        };
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(()),
            _ = tokio::time::sleep(delay) => {}
        }
    }
}

/// backon's exponential delays (with jitter, no limit on attempts), rebuilt after a stable session.
struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
    max: Duration,
    /// Consecutive failures since the last reset.
    failures: u64,
}

impl Backoff {
    fn new(t: &Timing) -> Backoff {
        let builder = ExponentialBuilder::new()
            .with_min_delay(t.backoff_min)
            .with_max_delay(t.backoff_max)
            .with_jitter()
            .without_max_times();
        Backoff { delays: builder.build(), builder, max: t.backoff_max, failures: 0 }
    }

    fn reset(&mut self) {
        self.delays = self.builder.build();
        self.failures = 0;
    }

    fn next(&mut self) -> Duration {
        self.failures += 1;
        self.delays.next().unwrap_or(self.max)
    }

    /// The longest delay plus up to a tenth of it, so refused agents do not return in lockstep.
    fn longest(&mut self) -> Duration {
        self.failures += 1;
        self.max + self.max.mul_f64(fastrand::f64() / 10.0)
    }
}

fn random_between(lo: Duration, hi: Duration) -> Duration {
    if hi <= lo {
        return lo;
    }
    lo + (hi - lo).mul_f64(fastrand::f64())
}

fn ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_within_bounds_and_resets() {
        let t = Timing {
            backoff_min: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            ..Timing::default()
        };
        let mut b = Backoff::new(&t);
        let delays: Vec<Duration> = (0..12).map(|_| b.next()).collect();
        assert!(delays[0] >= Duration::from_millis(100) && delays[0] <= Duration::from_millis(200), "{delays:?}");
        // Jitter adds at most 100 % of the base delay, which never exceeds the maximum.
        assert!(delays.iter().all(|d| *d <= Duration::from_secs(4)), "{delays:?}");
        assert!(delays[11] >= Duration::from_secs(2), "{delays:?}");
        assert_eq!(b.failures, 12);
        b.reset();
        assert_eq!(b.failures, 0);
        assert!(b.next() <= Duration::from_millis(200));
        let longest = b.longest();
        assert!(longest >= Duration::from_secs(2) && longest <= Duration::from_millis(2200), "{longest:?}");
    }

    #[test]
    fn going_away_delay_in_range() {
        for _ in 0..100 {
            let d = random_between(Duration::from_millis(200), Duration::from_secs(2));
            assert!(d >= Duration::from_millis(200) && d <= Duration::from_secs(2));
        }
    }
}
