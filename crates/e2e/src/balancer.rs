//! A TCP load balancer for multi-instance tests (a test fixture, not a product component): listens on
//! `127.0.0.1:0` and sends each new connection to the next backend in turn, skipping backends that are switched
//! off or refuse the connection. A backend can be replaced (an instance restarted on another port) or cut off,
//! which also closes the connections it holds, as when its machine dies, or drained (out of rotation, its
//! connections going on) before a restart, as an orchestrator does.
//!
//! Started with [`Balancer::start_health_checked`], it is the other kind of load balancer, the one that only
//! health-checks: every interval it asks each backend for `GET /readyz` on a connection of its own, and sends new
//! connections only to backends whose last answer was 200 (none of them healthy: to every backend that is up,
//! as load balancers "fail open" rather than refuse everything).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Backend {
    addr: SocketAddr,
    up: bool,
    /// The last health check answered 200 (always true without health checks).
    healthy: bool,
    /// Cancelled to close every connection to this backend.
    conns: CancellationToken,
}

struct Inner {
    backends: Mutex<Vec<Backend>>,
    next: AtomicUsize,
    /// Health checks decide which backends take connections.
    health_checked: bool,
}

impl Backend {
    /// A backend at `addr` as it joins: healthy at once without health checks, after its first good check with.
    fn joining(addr: SocketAddr, health_checked: bool) -> Backend {
        Backend { addr, up: true, healthy: !health_checked, conns: CancellationToken::new() }
    }
}

impl Inner {
    fn backends(&self) -> std::sync::MutexGuard<'_, Vec<Backend>> {
        self.backends.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A running balancer; stops when dropped.
pub struct Balancer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Balancer {
    pub async fn start(backends: &[SocketAddr]) -> std::io::Result<Balancer> {
        Self::start_inner(backends, None).await
    }

    /// A balancer that only health-checks: `GET /readyz` on each backend every `interval` (a check not answered
    /// within the interval, and at least 1 s, failed); new connections go to the backends whose last check answered
    /// 200. The first round is done before it returns, as a load balancer checks its targets before routing to
    /// them.
    pub async fn start_health_checked(backends: &[SocketAddr], interval: Duration) -> std::io::Result<Balancer> {
        Self::start_inner(backends, Some(interval)).await
    }

    async fn start_inner(backends: &[SocketAddr], checks: Option<Duration>) -> std::io::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let health_checked = checks.is_some();
        let inner = Arc::new(Inner {
            backends: Mutex::new(backends.iter().map(|&addr| Backend::joining(addr, health_checked)).collect()),
            next: AtomicUsize::new(0),
            health_checked,
        });
        let stop = CancellationToken::new();
        if let Some(interval) = checks {
            let timeout = interval.max(Duration::from_secs(1));
            // Each backend on its own, so that a slow answer from one never delays what is learnt of another.
            let rounds = (0..backends.len()).map(|i| {
                let (inner, stop) = (inner.clone(), stop.clone());
                async move {
                    check(&inner, i, timeout).await;
                    tokio::spawn(async move {
                        let mut every = tokio::time::interval(interval);
                        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                        every.tick().await;
                        loop {
                            tokio::select! {
                                _ = stop.cancelled() => return,
                                _ = every.tick() => check(&inner, i, timeout).await,
                            }
                        }
                    });
                }
            });
            futures_util::future::join_all(rounds).await;
        }
        tokio::spawn(accept(listener, inner.clone(), stop.clone()));
        Ok(Balancer { addr, inner, stop })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    pub fn ws_url(&self) -> String {
        format!("ws://{}/agent/ws", self.addr)
    }

    fn backends(&self) -> std::sync::MutexGuard<'_, Vec<Backend>> {
        self.inner.backends()
    }

    /// Backend `i` now lives at `addr` (a restarted instance) and takes connections again (with health checks,
    /// once one answered 200).
    pub fn replace(&self, i: usize, addr: SocketAddr) {
        if let Some(b) = self.backends().get_mut(i) {
            *b = Backend::joining(addr, self.inner.health_checked);
        }
    }

    /// Whether backend `i`'s last health check answered 200 (always true without health checks).
    pub fn is_healthy(&self, i: usize) -> bool {
        self.backends().get(i).is_some_and(|b| b.healthy)
    }

    /// Backend `i` takes no new connections; those it has go on (an orchestrator takes an instance out of rotation
    /// before it sends SIGTERM).
    pub fn drain(&self, i: usize) {
        if let Some(b) = self.backends().get_mut(i) {
            b.up = false;
        }
    }

    /// Backend `i` takes no new connections, and every connection to it is closed now (its machine died).
    pub fn cut(&self, i: usize) {
        let mut backends = self.backends();
        if let Some(b) = backends.get_mut(i) {
            b.up = false;
            b.conns.cancel();
        }
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// One health check of backend `i`: its verdict is kept unless the backend was replaced meanwhile.
async fn check(inner: &Inner, i: usize, timeout: Duration) {
    let Some(addr) = inner.backends().get(i).map(|b| b.addr) else { return };
    let healthy = matches!(tokio::time::timeout(timeout, ready(addr)).await, Ok(Ok(true)));
    if let Some(b) = inner.backends().get_mut(i)
        && b.addr == addr
    {
        b.healthy = healthy;
    }
}

/// `GET /readyz` on a connection of its own, as a load balancer's health check: whether it answered 200.
async fn ready(addr: SocketAddr) -> std::io::Result<bool> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!("GET /readyz HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    // The whole (small) answer: the server closes the connection, not the checker.
    let mut answer = Vec::new();
    stream.take(64 * 1024).read_to_end(&mut answer).await?;
    let status_line = answer.split(|&b| b == b'\n').next().unwrap_or_default();
    Ok(String::from_utf8_lossy(status_line).split_whitespace().nth(1) == Some("200"))
}

async fn accept(listener: TcpListener, inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        let client = tokio::select! {
            _ = stop.cancelled() => return,
            c = listener.accept() => match c { Ok((c, _)) => c, Err(_) => continue },
        };
        let (inner, stop) = (inner.clone(), stop.clone());
        tokio::spawn(async move {
            let Some((mut upstream, closed)) = pick(&inner).await else { return };
            let mut client = client;
            let _ = client.set_nodelay(true);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = closed.cancelled() => {}
                _ = tokio::io::copy_bidirectional(&mut client, &mut upstream) => {}
            }
        });
    }
}

/// The next backend that is up, healthy and accepts a connection, in turn.
async fn pick(inner: &Inner) -> Option<(TcpStream, CancellationToken)> {
    let count = inner.backends().len();
    for _ in 0..count {
        let i = inner.next.fetch_add(1, Ordering::Relaxed) % count.max(1);
        let (addr, conns) = {
            let backends = inner.backends();
            // Fail open: with no healthy backend, every one that is up is tried.
            let any_healthy = backends.iter().any(|b| b.up && b.healthy);
            match backends.get(i) {
                Some(b) if b.up && (b.healthy || !any_healthy) => (b.addr, b.conns.clone()),
                _ => continue,
            }
        };
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            let _ = stream.set_nodelay(true);
            return Some((stream, conns));
        }
    }
    None
}
