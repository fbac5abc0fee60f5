//! A TCP proxy for fault tests: listens on `127.0.0.1:0`, forwards every connection to a target, and can be
//! switched at any time between
//!
//! - [`Mode::Pass`]: bytes flow both ways;
//! - [`Mode::Drop`]: every open connection is reset (both sides get an RST) and new ones are reset as soon as they
//!   are accepted, as when a router drops the link or the cloud's address refuses connections;
//! - [`Mode::Blackhole`]: connections are accepted and held open, but nothing is forwarded either way (the sender's
//!   socket buffers fill up, as on a path that silently loses packets); switching back to `Pass` forwards what
//!   waited, as a healed path does, and a connection accepted meanwhile only then reaches the target;
//! - [`Mode::HoldReplies`]: client -> target flows, target -> client is held (the replies are late: an agent's
//!   batches reach the server, its `Ack`s do not, so the agent sends them again).
//!
//! It counts the bytes forwarded each way and the connections accepted. Nothing here is timed: modes change when
//! the test says so.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

/// What the proxy does with traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Drop,
    Blackhole,
    HoldReplies,
}

/// Deadline of connecting to the target (loopback: only a target that is down takes long).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Default)]
struct Counters {
    /// Bytes forwarded client -> target.
    up: AtomicU64,
    /// Bytes forwarded target -> client.
    down: AtomicU64,
    accepted: AtomicU64,
    open: AtomicU64,
    resets: AtomicU64,
}

/// A running proxy; [`Proxy::stop`] (or dropping it) closes everything.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    mode: watch::Sender<Mode>,
    counters: Arc<Counters>,
    stop: CancellationToken,
}

impl Proxy {
    /// A proxy on a free loopback port, forwarding to `target`, starting in [`Mode::Pass`].
    pub async fn start(target: SocketAddr) -> std::io::Result<Proxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (mode, _) = watch::channel(Mode::Pass);
        let counters = Arc::new(Counters::default());
        let stop = CancellationToken::new();
        tokio::spawn(accept_loop(listener, target, mode.subscribe(), counters.clone(), stop.clone()));
        Ok(Proxy { addr, target, mode, counters, stop })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn target(&self) -> SocketAddr {
        self.target
    }

    /// Switches mode; open connections follow at once.
    pub fn set_mode(&self, mode: Mode) {
        tracing::debug!(proxy = %self.addr, ?mode, "proxy mode");
        self.mode.send_replace(mode);
    }

    pub fn mode(&self) -> Mode {
        *self.mode.borrow()
    }

    /// Bytes forwarded from clients to the target.
    pub fn bytes_up(&self) -> u64 {
        self.counters.up.load(Ordering::Relaxed)
    }

    /// Bytes forwarded from the target to clients.
    pub fn bytes_down(&self) -> u64 {
        self.counters.down.load(Ordering::Relaxed)
    }

    /// Connections accepted so far.
    pub fn accepted(&self) -> u64 {
        self.counters.accepted.load(Ordering::Relaxed)
    }

    /// Connections open now (accepted and not yet closed or reset).
    pub fn open(&self) -> u64 {
        self.counters.open.load(Ordering::Relaxed)
    }

    /// Connections reset by [`Mode::Drop`] so far (open ones and new ones).
    pub fn resets(&self) -> u64 {
        self.counters.resets.load(Ordering::Relaxed)
    }

    /// Stops listening and resets every connection.
    pub fn stop(self) {
        self.stop.cancel();
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn accept_loop(
    listener: TcpListener,
    target: SocketAddr,
    mode: watch::Receiver<Mode>,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.cancelled() => return,
            a = listener.accept() => a,
        };
        let client = match accepted {
            Ok((client, _)) => client,
            Err(error) => {
                tracing::debug!(%error, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        counters.accepted.fetch_add(1, Ordering::Relaxed);
        let _ = client.set_nodelay(true);
        if *mode.borrow() == Mode::Drop {
            counters.resets.fetch_add(1, Ordering::Relaxed);
            reset(client);
            continue;
        }
        let open = Open::new(counters.clone());
        tokio::spawn(connection(client, target, mode.clone(), open, stop.clone()));
    }
}

/// Counts a connection as open while it lives.
struct Open(Arc<Counters>);

impl Open {
    fn new(counters: Arc<Counters>) -> Open {
        counters.open.fetch_add(1, Ordering::Relaxed);
        Open(counters)
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Closes with an RST instead of a FIN.
fn reset(stream: TcpStream) {
    let _ = stream.set_zero_linger();
    drop(stream);
}

/// Waits until `mode` lets bytes through in a direction (`up`: client -> target); `false` when the connection is
/// to be reset (or the proxy stops).
async fn wait_open(mode: &mut watch::Receiver<Mode>, up: bool, stop: &CancellationToken) -> bool {
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Drop => return false,
            Mode::Pass => return true,
            Mode::HoldReplies if up => return true,
            Mode::HoldReplies | Mode::Blackhole => {}
        }
        tokio::select! {
            _ = stop.cancelled() => return false,
            changed = mode.changed() => if changed.is_err() { return false },
        }
    }
}

async fn connection(
    client: TcpStream,
    target: SocketAddr,
    mut mode: watch::Receiver<Mode>,
    open: Open,
    stop: CancellationToken,
) {
    // A connection accepted while blackholed reaches the target only when the path heals.
    if !wait_open(&mut mode, true, &stop).await {
        open.0.resets.fetch_add(1, Ordering::Relaxed);
        reset(client);
        return;
    }
    let upstream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await {
        Ok(Ok(s)) => s,
        Ok(Err(error)) => {
            tracing::debug!(%error, %target, "proxy cannot reach the target; resetting the client");
            reset(client);
            return;
        }
        Err(_) => {
            tracing::debug!(%target, "proxy target did not accept in time; resetting the client");
            reset(client);
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (upstream_read, upstream_write) = upstream.into_split();
    // Either direction ending abnormally (a reset, our Drop mode) resets both sides.
    let kill = stop.child_token();
    let counters = open.0.clone();
    let up = tokio::spawn(pump(client_read, upstream_write, mode.clone(), true, counters.clone(), kill.clone()));
    let down = tokio::spawn(pump(upstream_read, client_write, mode, false, counters, kill.clone()));
    let (a, b) = (up.await, down.await);
    let reset_both = matches!(a, Ok(End::Reset)) || matches!(b, Ok(End::Reset));
    if reset_both {
        open.0.resets.fetch_add(1, Ordering::Relaxed);
    }
    drop(open);
}

/// How one direction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    /// The sender closed its side; the close was passed on.
    Closed,
    /// Reset (Drop mode, an error, the other direction reset, or the proxy stopped).
    Reset,
}

/// Copies one direction while the mode lets it, counting bytes.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    up: bool,
    counters: Arc<Counters>,
    kill: CancellationToken,
) -> End {
    let mut buf = vec![0u8; 64 * 1024];
    let end = loop {
        if !wait_until_open_or_killed(&mut mode, up, &kill).await {
            break End::Reset;
        }
        let n = tokio::select! {
            _ = kill.cancelled() => break End::Reset,
            changed = mode.changed() => {
                if changed.is_err() {
                    break End::Reset;
                }
                continue;
            }
            r = from.read(&mut buf) => match r {
                Ok(0) => {
                    let _ = to.shutdown().await;
                    return End::Closed;
                }
                Ok(n) => n,
                Err(_) => break End::Reset,
            },
        };
        let written = tokio::select! {
            _ = kill.cancelled() => break End::Reset,
            w = to.write_all(&buf[..n]) => w,
        };
        if written.is_err() {
            break End::Reset;
        }
        let counter = if up { &counters.up } else { &counters.down };
        counter.fetch_add(n as u64, Ordering::Relaxed);
    };
    // Reset: both sockets go with an RST, and the other direction stops too.
    kill.cancel();
    let _ = to.as_ref().set_zero_linger();
    let _ = from.as_ref().set_zero_linger();
    to.forget();
    end
}

async fn wait_until_open_or_killed(mode: &mut watch::Receiver<Mode>, up: bool, kill: &CancellationToken) -> bool {
    wait_open(mode, up, kill).await && !kill.is_cancelled()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An echo server: everything read is written back; counts bytes received.
    async fn echo() -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let received = Arc::new(AtomicU64::new(0));
        let count = received.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut buf = [0u8; 4096];
                    loop {
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                count.fetch_add(n as u64, Ordering::Relaxed);
                                if s.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        (addr, received)
    }

    async fn read_exact(s: &mut TcpStream, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        tokio::time::timeout(Duration::from_secs(10), s.read_exact(&mut buf))
            .await
            .expect("data within 10 s")
            .expect("read");
        buf
    }

    /// Whether the connection was closed or reset by the other end (a read gives EOF or an error).
    async fn closed(s: &mut TcpStream) -> bool {
        let mut buf = [0u8; 16];
        matches!(tokio::time::timeout(Duration::from_secs(10), s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
    }

    /// Nothing arrives for a while (the proxy holds it). Only a broken proxy can fail this, and then at once.
    async fn nothing_arrives(s: &mut TcpStream) {
        let mut buf = [0u8; 16];
        let got = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(got.is_err(), "something came through a blackholed connection: {got:?}");
    }

    #[tokio::test]
    async fn passes_both_ways_and_counts_bytes() {
        let (target, received) = echo().await;
        let proxy = Proxy::start(target).await.expect("proxy");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        c.write_all(b"hello proxy").await.expect("write");
        assert_eq!(read_exact(&mut c, 11).await, b"hello proxy");
        assert_eq!((proxy.bytes_up(), proxy.bytes_down()), (11, 11));
        assert_eq!(received.load(Ordering::Relaxed), 11);
        assert_eq!((proxy.accepted(), proxy.open()), (1, 1));
        // A close is passed on as a close.
        drop(c);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while proxy.open() > 0 {
            assert!(tokio::time::Instant::now() < deadline, "the proxy kept a closed connection");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(proxy.resets(), 0);
    }

    #[tokio::test]
    async fn drop_resets_open_connections_and_refuses_new_ones_until_pass() {
        let (target, _) = echo().await;
        let proxy = Proxy::start(target).await.expect("proxy");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        c.write_all(b"x").await.expect("write");
        read_exact(&mut c, 1).await;

        proxy.set_mode(Mode::Drop);
        assert!(closed(&mut c).await, "an open connection survived Drop");
        // New connections are accepted by the kernel, then reset before a byte goes through.
        let mut n = TcpStream::connect(proxy.addr()).await.expect("the listener is still there");
        let _ = n.write_all(b"y").await;
        assert!(closed(&mut n).await, "a new connection got through Drop");
        assert!(proxy.resets() >= 2, "{}", proxy.resets());
        assert_eq!(proxy.bytes_up(), 1);

        proxy.set_mode(Mode::Pass);
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        c.write_all(b"again").await.expect("write");
        assert_eq!(read_exact(&mut c, 5).await, b"again");
    }

    #[tokio::test]
    async fn blackhole_holds_connections_open_and_forwards_nothing_until_it_heals() {
        let (target, received) = echo().await;
        let proxy = Proxy::start(target).await.expect("proxy");
        let mut old = TcpStream::connect(proxy.addr()).await.expect("connect");
        old.write_all(b"1").await.expect("write");
        read_exact(&mut old, 1).await;

        proxy.set_mode(Mode::Blackhole);
        old.write_all(b"held").await.expect("the socket stays open");
        let mut new = TcpStream::connect(proxy.addr()).await.expect("accepted while blackholed");
        new.write_all(b"late").await.expect("write");
        nothing_arrives(&mut old).await;
        nothing_arrives(&mut new).await;
        assert_eq!(received.load(Ordering::Relaxed), 1, "bytes reached the target through a blackhole");
        assert_eq!(proxy.open(), 2);

        // Healed: what waited goes through, on both connections.
        proxy.set_mode(Mode::Pass);
        assert_eq!(read_exact(&mut old, 4).await, b"held");
        assert_eq!(read_exact(&mut new, 4).await, b"late");
        assert_eq!((proxy.bytes_up(), proxy.bytes_down()), (9, 9));

        // Blackhole, then Drop: held connections are reset.
        proxy.set_mode(Mode::Blackhole);
        proxy.set_mode(Mode::Drop);
        assert!(closed(&mut old).await);
        assert!(closed(&mut new).await);
    }

    #[tokio::test]
    async fn hold_replies_lets_requests_through_and_holds_answers() {
        let (target, received) = echo().await;
        let proxy = Proxy::start(target).await.expect("proxy");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.set_mode(Mode::HoldReplies);
        c.write_all(b"req").await.expect("write");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while received.load(Ordering::Relaxed) < 3 {
            assert!(tokio::time::Instant::now() < deadline, "the request did not reach the target");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        nothing_arrives(&mut c).await;
        proxy.set_mode(Mode::Pass);
        assert_eq!(read_exact(&mut c, 3).await, b"req");
    }

    #[tokio::test]
    async fn a_target_that_is_down_resets_the_client() {
        // A port nobody listens on.
        let target = {
            let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
            l.local_addr().expect("addr")
        };
        let proxy = Proxy::start(target).await.expect("proxy");
        let mut c = TcpStream::connect(proxy.addr()).await.expect("connect");
        assert!(closed(&mut c).await);
    }
}
