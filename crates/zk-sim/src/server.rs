//! The transports: a TCP listener (one task per connection) and one UDP socket, both on the same port, both
//! feeding [`Session`]s. Faults are applied here, on the way out.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use essl_zk::client::Transport;
use essl_zk::consts::CMD_DATA;
use essl_zk::frame;
use essl_zk::packet::Packet;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UdpSocket};
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::faults::Faults;
use crate::rng::Rng;
use crate::session::{Outcome, Session};
use crate::terminal::Terminal;

/// A running simulator. Dropping it does not stop it; call [`Simulator::stop`].
pub struct Simulator {
    /// TCP and UDP address (same port).
    pub addr: SocketAddr,
    pub terminal: Terminal,
    shutdown: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Simulator {
    /// Binds TCP and UDP on `listen` (port 0 picks a port free for both) and starts serving.
    pub async fn start(listen: SocketAddr, terminal: Terminal) -> std::io::Result<Simulator> {
        let (tcp, udp) = bind_pair(listen).await?;
        let addr = tcp.local_addr()?;
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(run(terminal.clone(), tcp, udp, shutdown.clone()));
        Ok(Simulator { addr, terminal, shutdown, task })
    }

    /// Closes the listeners and every session, as a terminal that was switched off.
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = self.task.await;
    }
}

/// Binds TCP and UDP on one port. With port 0 the TCP port is chosen first and UDP tried on it; if UDP is taken
/// there, another port is tried.
pub async fn bind_pair(listen: SocketAddr) -> std::io::Result<(TcpListener, UdpSocket)> {
    let mut last_err = None;
    for _ in 0..20 {
        let tcp = TcpListener::bind(listen).await?;
        let addr = tcp.local_addr()?;
        match UdpSocket::bind(addr).await {
            Ok(udp) => return Ok((tcp, udp)),
            Err(e) if listen.port() == 0 => last_err = Some(e),
            Err(e) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| std::io::Error::other("no port free for both TCP and UDP")))
}

/// Serves until `shutdown` is cancelled; then every session is closed.
pub async fn run(terminal: Terminal, tcp: TcpListener, udp: UdpSocket, shutdown: CancellationToken) {
    let udp_task = tokio::spawn(serve_udp(terminal.clone(), udp, shutdown.clone()));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = tcp.accept() => match accepted {
                Ok((stream, peer)) => {
                    let span = tracing::info_span!("tcp", %peer);
                    tokio::spawn(serve_tcp(terminal.clone(), stream, shutdown.clone()).instrument(span));
                }
                Err(error) => {
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    let _ = udp_task.await;
}

/// Applies the faults in force to one reply's packets; `None` in the output = cut the connection there.
struct FaultDice {
    rng: Rng,
    seed: u64,
    data_sent: u64,
}

impl FaultDice {
    fn new() -> FaultDice {
        FaultDice { rng: Rng::new(0), seed: u64::MAX, data_sent: 0 }
    }

    /// The wire bytes to send for each packet, `None` for a packet that is dropped; stops early (returning
    /// `cut = true`) when a bulk read is to be cut.
    fn apply(&mut self, faults: &Faults, packets: &[Packet], encode: fn(&Packet) -> Vec<u8>) -> (Vec<Vec<u8>>, bool) {
        if faults.seed != self.seed {
            self.seed = faults.seed;
            self.rng = Rng::new(faults.seed);
        }
        let mut out = Vec::with_capacity(packets.len());
        for p in packets {
            if p.command == CMD_DATA {
                self.data_sent += 1;
                if faults.cut_bulk_after.is_some_and(|n| self.data_sent > n) {
                    return (out, true);
                }
            }
            if self.rng.chance(faults.drop_rate) {
                continue;
            }
            let mut bytes = encode(p);
            if self.rng.chance(faults.corrupt_rate) && !bytes.is_empty() {
                let i = self.rng.below(bytes.len());
                bytes[i] ^= 0x5A;
            }
            out.push(bytes);
        }
        (out, false)
    }
}

async fn serve_tcp(terminal: Terminal, mut stream: TcpStream, shutdown: CancellationToken) {
    let _ = stream.set_nodelay(true);
    let mut session = Session::new(terminal.clone(), Transport::Tcp);
    let mut events = terminal.subscribe();
    let mut buf = BytesMut::with_capacity(4096);
    let mut dice = FaultDice::new();
    let idle = terminal.config().idle_timeout;
    let mut deadline = Instant::now() + idle;
    // One event at a time, the next only after the client acknowledged the last (pyzk loops on glued events).
    let mut awaiting_ack: Option<Instant> = None;
    loop {
        // Drain every complete frame before reading more.
        let packet = match frame::frame_len(&buf) {
            Err(error) => {
                // No way to resync a TCP stream: drop the connection, as the protocol notes advise.
                terminal.stats_ref().bad_packets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(%error, "garbage on the socket, closing");
                return;
            }
            Ok(Some(len)) if buf.len() >= frame::PREFIX_LEN + len => {
                let bytes = buf.split_to(frame::PREFIX_LEN + len);
                match Packet::decode(&bytes[frame::PREFIX_LEN..]) {
                    Ok(p) => Some(p),
                    Err(error) => {
                        terminal.stats_ref().bad_packets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::info!(%error, "dropping bad packet");
                        continue;
                    }
                }
            }
            Ok(_) => None,
        };
        if let Some(req) = packet {
            deadline = Instant::now() + idle;
            let faults = terminal.faults();
            if faults.mute {
                continue;
            }
            let (packets, close) = match session.handle(&req) {
                Outcome::Reply(p) => (p, false),
                Outcome::ReplyAndClose(p) => (p, true),
                Outcome::Nothing => {
                    awaiting_ack = None;
                    continue;
                }
            };
            if !faults.latency.is_zero() {
                tokio::time::sleep(faults.latency).await;
            }
            let (frames, cut) = dice.apply(&faults, &packets, Packet::encode_tcp);
            if write_frames(&mut stream, &frames, terminal.config().frame_gap).await.is_err() || cut || close {
                return;
            }
            continue;
        }
        if buf.len() > 256 * 1024 {
            return; // a client that never completes a frame
        }
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = tokio::time::sleep_until(deadline) => {
                tracing::debug!("idle session closed");
                return;
            }
            read = stream.read_buf(&mut buf) => match read {
                Ok(0) | Err(_) => return,
                Ok(_) => {}
            },
            _ = sleep_until_some(awaiting_ack) => {
                tracing::info!("realtime event not acknowledged within 1 s");
                awaiting_ack = None;
            }
            event = events.recv(), if session.wants_attendance_events() && awaiting_ack.is_none() => match event {
                Ok(e) => {
                    if let Some(p) = session.event_packet(&e) {
                        terminal.stats_ref().events_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if stream.write_all(&p.encode_tcp()).await.is_err() {
                            return;
                        }
                        awaiting_ack = Some(Instant::now() + EVENT_ACK_TIMEOUT);
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "event subscriber lagged"),
                Err(RecvError::Closed) => return,
            },
        }
    }
}

/// How long the terminal waits for the acknowledgement of a realtime event before sending the next one.
const EVENT_ACK_TIMEOUT: Duration = Duration::from_secs(1);

async fn sleep_until_some(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// Writes each frame with its own write, as an embedded sender does; with a gap between them if configured.
async fn write_frames(stream: &mut TcpStream, frames: &[Vec<u8>], gap: Duration) -> std::io::Result<()> {
    for (i, f) in frames.iter().enumerate() {
        if i > 0 && !gap.is_zero() {
            tokio::time::sleep(gap).await;
        }
        stream.write_all(f).await?;
    }
    Ok(())
}

struct UdpPeer {
    session: Session,
    dice: FaultDice,
    last_seen: Instant,
}

/// Most UDP peers tracked at once; the oldest idle one is forgotten beyond this.
const MAX_UDP_PEERS: usize = 1024;

async fn serve_udp(terminal: Terminal, socket: UdpSocket, shutdown: CancellationToken) {
    let mut peers: HashMap<SocketAddr, UdpPeer> = HashMap::new();
    let mut events = terminal.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    let idle = terminal.config().idle_timeout;
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            received = socket.recv_from(&mut buf) => {
                let (n, peer) = match received {
                    Ok(r) => r,
                    // ICMP errors from earlier sends surface here; they concern one peer, not the socket.
                    Err(_) => continue,
                };
                let req = match Packet::decode(&buf[..n]) {
                    Ok(p) => p,
                    Err(error) => {
                        terminal.stats_ref().bad_packets.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        tracing::debug!(%peer, %error, "dropping bad datagram");
                        continue;
                    }
                };
                let now = Instant::now();
                peers.retain(|_, p| now.duration_since(p.last_seen) < idle);
                if !peers.contains_key(&peer) && peers.len() >= MAX_UDP_PEERS {
                    continue;
                }
                let entry = peers.entry(peer).or_insert_with(|| UdpPeer {
                    session: Session::new(terminal.clone(), Transport::Udp),
                    dice: FaultDice::new(),
                    last_seen: now,
                });
                entry.last_seen = now;
                let faults = terminal.faults();
                if faults.mute {
                    continue;
                }
                let (packets, close) = match entry.session.handle(&req) {
                    Outcome::Reply(p) => (p, false),
                    Outcome::ReplyAndClose(p) => (p, true),
                    Outcome::Nothing => continue,
                };
                if !faults.latency.is_zero() {
                    tokio::time::sleep(faults.latency).await;
                }
                let (datagrams, cut) = entry.dice.apply(&faults, &packets, Packet::encode);
                for d in &datagrams {
                    let _ = socket.send_to(d, peer).await;
                }
                if close || cut {
                    peers.remove(&peer);
                }
            }
            event = events.recv() => match event {
                Ok(e) => {
                    for (addr, peer) in &peers {
                        if peer.session.wants_attendance_events()
                            && let Some(p) = peer.session.event_packet(&e)
                        {
                            terminal.stats_ref().events_sent.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                            let _ = socket.send_to(&p.encode(), addr).await;
                        }
                    }
                }
                Err(RecvError::Lagged(n)) => tracing::warn!(missed = n, "event subscriber lagged"),
                Err(RecvError::Closed) => return,
            },
        }
    }
}
