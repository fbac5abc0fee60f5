//! Reachability probe: open a session, measure, close. The seed's budget: 3 s, one retry.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::{ClientConfig, Transport, ZkClient};
use crate::error::ZkError;

/// How to probe.
#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub transport: Transport,
    pub comm_key: u32,
    /// Deadline of each attempt.
    pub timeout: Duration,
    /// Further attempts after the first fails as unreachable.
    pub retries: u32,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        ProbeConfig { transport: Transport::Tcp, comm_key: 0, timeout: Duration::from_secs(3), retries: 1 }
    }
}

/// Opens and closes a session; returns the time the handshake took. Only unreachability is retried: a wrong comm
/// key or a protocol violation will not change on a second try.
pub async fn probe(addr: SocketAddr, cfg: &ProbeConfig) -> Result<Duration, ZkError> {
    let client_cfg = ClientConfig {
        transport: cfg.transport,
        comm_key: cfg.comm_key,
        timeout: cfg.timeout,
        // The probe's own retry is the budget; no hidden resends inside an attempt.
        udp_retries: 0,
        ..ClientConfig::default()
    };
    let mut attempt = 0;
    loop {
        let started = Instant::now();
        match ZkClient::connect(addr, client_cfg.clone()).await {
            Ok(client) => {
                let rtt = started.elapsed();
                // Closing is courtesy: the terminal frees the session either way.
                if let Err(error) = client.disconnect().await {
                    tracing::debug!(%error, "probe: CMD_EXIT not acknowledged");
                }
                return Ok(rtt);
            }
            Err(e) if attempt < cfg.retries && e.kind() == crate::ErrorKind::Unreachable => {
                attempt += 1;
                tracing::debug!(error = %e, attempt, "probe retry");
            }
            Err(e) => return Err(e),
        }
    }
}
