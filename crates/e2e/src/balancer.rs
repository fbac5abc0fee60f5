//! A TCP load balancer for multi-instance tests (a test fixture, not a product component): listens on
//! `127.0.0.1:0` and sends each new connection to the next backend in turn, skipping backends that are switched
//! off or refuse the connection, as a load balancer with health checks does. A backend can be replaced (an
//! instance restarted on another port) or cut off, which also closes the connections it holds, as when its
//! machine dies, or drained (out of rotation, its connections going on) before a restart.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

struct Backend {
    addr: SocketAddr,
    up: bool,
    /// Cancelled to close every connection to this backend.
    conns: CancellationToken,
}

struct Inner {
    backends: Mutex<Vec<Backend>>,
    next: AtomicUsize,
}

/// A running balancer; stops when dropped.
pub struct Balancer {
    addr: SocketAddr,
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Balancer {
    pub async fn start(backends: &[SocketAddr]) -> std::io::Result<Balancer> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let inner = Arc::new(Inner {
            backends: Mutex::new(
                backends.iter().map(|&addr| Backend { addr, up: true, conns: CancellationToken::new() }).collect(),
            ),
            next: AtomicUsize::new(0),
        });
        let stop = CancellationToken::new();
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
        self.inner.backends.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Backend `i` now lives at `addr` (a restarted instance) and takes connections again.
    pub fn replace(&self, i: usize, addr: SocketAddr) {
        let mut backends = self.backends();
        if let Some(b) = backends.get_mut(i) {
            *b = Backend { addr, up: true, conns: CancellationToken::new() };
        }
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

/// The next backend that is up and accepts a connection, in turn.
async fn pick(inner: &Inner) -> Option<(TcpStream, CancellationToken)> {
    let count = inner.backends.lock().unwrap_or_else(|e| e.into_inner()).len();
    for _ in 0..count {
        let i = inner.next.fetch_add(1, Ordering::Relaxed) % count.max(1);
        let (addr, conns) = {
            let backends = inner.backends.lock().unwrap_or_else(|e| e.into_inner());
            match backends.get(i) {
                Some(b) if b.up => (b.addr, b.conns.clone()),
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
