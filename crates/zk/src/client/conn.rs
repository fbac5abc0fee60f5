//! One transport to one terminal: a TCP stream with frame decoding, or a connected UDP socket.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::Instant;

use crate::error::ZkError;
use crate::frame;
use crate::packet::Packet;

/// Which transport to speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Transport {
    #[default]
    Tcp,
    Udp,
}

pub(crate) enum Conn {
    Tcp { stream: TcpStream, buf: BytesMut },
    Udp { socket: UdpSocket, buf: Vec<u8> },
}

/// Big enough for any datagram; terminals send at most ~1 KiB per datagram.
const UDP_RECV: usize = 64 * 1024;

impl Conn {
    pub(crate) async fn open(addr: SocketAddr, transport: Transport, timeout: Duration) -> Result<Conn, ZkError> {
        let connect_err = |source| ZkError::Connect { addr: addr.to_string(), source };
        match transport {
            Transport::Tcp => {
                let stream = tokio::time::timeout(timeout, TcpStream::connect(addr))
                    .await
                    .map_err(|_| ZkError::Timeout(timeout))?
                    .map_err(connect_err)?;
                stream.set_nodelay(true).map_err(connect_err)?;
                Ok(Conn::Tcp { stream, buf: BytesMut::with_capacity(128 * 1024) })
            }
            Transport::Udp => {
                let local: SocketAddr =
                    if addr.is_ipv4() { SocketAddr::from(([0, 0, 0, 0], 0)) } else { SocketAddr::from(([0u16; 8], 0)) };
                let socket = UdpSocket::bind(local).await.map_err(connect_err)?;
                socket.connect(addr).await.map_err(connect_err)?;
                Ok(Conn::Udp { socket, buf: vec![0; UDP_RECV] })
            }
        }
    }

    pub(crate) fn transport(&self) -> Transport {
        match self {
            Conn::Tcp { .. } => Transport::Tcp,
            Conn::Udp { .. } => Transport::Udp,
        }
    }

    pub(crate) async fn send(&mut self, packet: &Packet) -> Result<(), ZkError> {
        match self {
            Conn::Tcp { stream, .. } => stream.write_all(&packet.encode_tcp()).await?,
            Conn::Udp { socket, .. } => {
                socket.send(&packet.encode()).await?;
            }
        }
        Ok(())
    }

    /// The next packet before `deadline`. Over UDP a datagram that fails to decode is skipped (a corrupted datagram is
    /// as good as a lost one; the caller's retry handles both); over TCP it breaks the stream and is an error.
    pub(crate) async fn recv(&mut self, deadline: Instant, timeout: Duration) -> Result<Packet, ZkError> {
        match self {
            Conn::Tcp { stream, buf } => loop {
                if let Some((packet, used)) = frame::decode_tcp_frame(buf)? {
                    buf.advance(used);
                    return Ok(packet);
                }
                if buf.capacity() - buf.len() < 16 * 1024 {
                    buf.reserve(64 * 1024);
                }
                let n = tokio::time::timeout_at(deadline, stream.read_buf(buf))
                    .await
                    .map_err(|_| ZkError::Timeout(timeout))??;
                if n == 0 {
                    return Err(ZkError::Closed);
                }
            },
            Conn::Udp { socket, buf } => loop {
                let n = tokio::time::timeout_at(deadline, socket.recv(buf))
                    .await
                    .map_err(|_| ZkError::Timeout(timeout))??;
                match Packet::decode(&buf[..n]) {
                    Ok(p) => return Ok(p),
                    Err(e) => tracing::debug!(error = %e, len = n, "skipping undecodable datagram"),
                }
            },
        }
    }
}
