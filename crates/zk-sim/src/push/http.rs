//! A minimal HTTP/1.1 client, as terminals have: one request per connection (`Connection: close`), a fixed
//! `Content-Length`, the answer read to its length or to the end of the connection. Only what push mode needs.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest answer read.
const MAX_RESPONSE: usize = 1024 * 1024;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
}

/// An answer: status and body.
#[derive(Debug, Clone)]
pub struct Answer {
    pub status: u16,
    pub body: String,
}

/// Sends one request and reads its answer. `cookie`: the value of a `Cookie` header (3.x session token).
pub async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    content_type: Option<&str>,
    cookie: Option<&str>,
    body: &[u8],
    timeout: Duration,
) -> Result<Answer, HttpError> {
    tokio::time::timeout(timeout, exchange(addr, method, target, content_type, cookie, body))
        .await
        .map_err(|_| HttpError::Timeout(timeout))?
}

async fn exchange(
    addr: SocketAddr,
    method: &str,
    target: &str,
    content_type: Option<&str>,
    cookie: Option<&str>,
    body: &[u8],
) -> Result<Answer, HttpError> {
    let mut stream = TcpStream::connect(addr).await?;
    let mut head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: iClock Proxy/1.09\r\nConnection: close\r\n\
         Accept: */*\r\nContent-Length: {}\r\n",
        body.len()
    );
    if let Some(ct) = content_type {
        head.push_str(&format!("Content-Type: {ct}\r\n"));
    }
    if let Some(cookie) = cookie {
        head.push_str(&format!("Cookie: {cookie}\r\n"));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body).await?;
    stream.flush().await?;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let (header_end, length) = loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(HttpError::Malformed("connection closed before the headers ended"));
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(HttpError::Malformed("answer too large"));
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).into_owned();
            let length = head.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim().eq_ignore_ascii_case("content-length").then(|| v.trim().parse::<usize>().ok()).flatten()
            });
            break (end + 4, length);
        }
    };
    let status = std::str::from_utf8(&buf[..header_end])
        .ok()
        .and_then(|h| h.split_whitespace().nth(1))
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(HttpError::Malformed("no status line"))?;
    loop {
        let have = buf.len() - header_end;
        if length.is_some_and(|l| have >= l) {
            break;
        }
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        if buf.len() > MAX_RESPONSE {
            return Err(HttpError::Malformed("answer too large"));
        }
    }
    let end = length.map_or(buf.len(), |l| (header_end + l).min(buf.len()));
    Ok(Answer { status, body: String::from_utf8_lossy(&buf[header_end..end]).into_owned() })
}
