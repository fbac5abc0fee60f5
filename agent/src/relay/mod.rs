//! The agent's connection to the cloud: connect, serve one session, wait, connect again, until shut down.
//!
//! - `connect`: WebSocket over TLS with the bearer token; `session`: `Hello`/`Welcome` and the serving loop;
//!   `outgoing`: the single writer; `jobs`: device requests, one task each; `sync`: attendance upload with
//!   acknowledged batches; `devices`: the site's terminals, one session per terminal at a time, reachability.
//!
//! Reconnect delays: failures back off exponentially with jitter (`backoff_min` doubling up to `backoff_max`,
//! reset after a session that lived `stable_after`); a refused token or an incompatible server waits
//! `backoff_max` every time (and is logged once as an error); a server going away is rejoined after a short
//! random delay without counting as a failure.

mod connect;
mod devices;
mod jobs;
mod outgoing;
mod session;
mod sync;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Config, Timing};
pub use connect::ConnectError;
use connect::Connector;
use session::End;

/// Why the relay could not start at all (it never gives up once started).
#[derive(Debug, thiserror::Error)]
pub enum RelayError {
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] rustls::Error),
}

/// State that outlives sessions.
pub(crate) struct Shared {
    pub config: Arc<Config>,
    /// `Punches` batch ids: unique for the life of the process.
    pub batch_ids: Arc<AtomicU64>,
}

/// Connects to `config.server` and serves it, reconnecting for ever, until `shutdown` is cancelled.
pub async fn run(config: Config, shutdown: CancellationToken) -> Result<(), RelayError> {
    let config = Arc::new(config);
    let connector = Connector::new(config.clone())?;
    let shared = Shared { config: config.clone(), batch_ids: Arc::new(AtomicU64::new(1)) };
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
                let ended = session::run(&shared, ws, &shutdown).instrument(span).await;
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
