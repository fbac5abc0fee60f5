//! A deliberately tiny HTTP(S) GET for the Supabase JWKS: one request per connection, HTTP/1.1, no redirects,
//! no proxies, no pooling; rustls with the ring provider (never a process-wide default provider), a bounded body
//! and one deadline for everything (DNS, connect, TLS, headers, body). Plain `http` is allowed only for loopback
//! hosts (a local Supabase, tests).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use hyper::body::Bytes;
use hyper::{Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

/// Where to fetch from: a checked absolute `http(s)` URL.
#[derive(Debug, Clone)]
pub struct Target {
    pub uri: Uri,
    https: bool,
    /// Host name or IP address, without IPv6 brackets (for DNS, SNI and certificate checks).
    host: String,
    port: u16,
}

/// Why a URL cannot be fetched from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadUrl {
    #[error("not an absolute http(s) URL")]
    NotAbsolute,
    #[error("plain http is allowed only for loopback hosts (localhost, 127.0.0.1, ::1); use https")]
    PlainHttp,
    #[error("user info, query strings and fragments are not allowed")]
    Extra,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, BadUrl> {
        if url.contains('#') || url.contains('?') {
            return Err(BadUrl::Extra);
        }
        let uri: Uri = url.parse().map_err(|_| BadUrl::NotAbsolute)?;
        let https = match uri.scheme_str() {
            Some("https") => true,
            Some("http") => false,
            _ => return Err(BadUrl::NotAbsolute),
        };
        let authority = uri.authority().ok_or(BadUrl::NotAbsolute)?;
        if authority.as_str().contains('@') {
            return Err(BadUrl::Extra);
        }
        let host = authority.host().trim_start_matches('[').trim_end_matches(']').to_owned();
        if host.is_empty() {
            return Err(BadUrl::NotAbsolute);
        }
        if !https && !is_loopback(&host) {
            return Err(BadUrl::PlainHttp);
        }
        let port = authority.port_u16().unwrap_or(if https { 443 } else { 80 });
        Ok(Target { uri, https, host, port })
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// A TLS connector on the ring provider trusting Mozilla's roots (as sqlx does here) and `extra_roots` (DER).
pub fn tls_connector(extra_roots: &[Vec<u8>]) -> Result<TlsConnector, rustls::Error> {
    let mut roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    for der in extra_roots {
        roots.add(rustls::pki_types::CertificateDer::from(der.clone()))?;
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConnector::from(Arc::new(config)))
}

/// Why a fetch failed (logged, never shown to API callers).
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    #[error("connecting: {0}")]
    Connect(std::io::Error),
    #[error("HTTP: {0}")]
    Http(#[from] hyper::Error),
    #[error("answered HTTP {0}")]
    Status(StatusCode),
    #[error("the body is larger than {0} bytes")]
    TooLarge(usize),
    #[error("{0}")]
    Other(String),
}

/// GETs `target`, at most `max_body` bytes of body, all within `timeout`.
pub async fn get(target: &Target, tls: &TlsConnector, max_body: usize, timeout: Duration) -> Result<Bytes, FetchError> {
    tokio::time::timeout(timeout, async {
        let tcp = TcpStream::connect((target.host.as_str(), target.port)).await.map_err(FetchError::Connect)?;
        // Best effort: a failure only costs latency.
        let _ = tcp.set_nodelay(true);
        if target.https {
            let name = rustls::pki_types::ServerName::try_from(target.host.clone())
                .map_err(|e| FetchError::Other(format!("server name: {e}")))?;
            let tls = tls.connect(name, tcp).await.map_err(FetchError::Connect)?;
            exchange(tls, target, max_body).await
        } else {
            exchange(tcp, target, max_body).await
        }
    })
    .await
    .map_err(|_| FetchError::Timeout(timeout))?
}

async fn exchange<S>(io: S, target: &Target, max_body: usize) -> Result<Bytes, FetchError>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<_, Empty<Bytes>>(TokioIo::new(io)).await?;
    let authority = target.uri.authority().map(|a| a.as_str()).unwrap_or(target.host.as_str());
    let path = target.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/");
    let request = Request::get(path)
        .header(hyper::header::HOST, authority)
        .header(hyper::header::ACCEPT, "application/json")
        .header(hyper::header::USER_AGENT, concat!("essl-server/", env!("CARGO_PKG_VERSION")))
        .header(hyper::header::CONNECTION, "close")
        .body(Empty::new())
        .map_err(|e| FetchError::Other(format!("request: {e}")))?;
    let response = async move {
        let response = sender.send_request(request).await?;
        if response.status() != StatusCode::OK {
            return Err(FetchError::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), max_body).collect().await.map_err(|e| {
            if e.is::<http_body_util::LengthLimitError>() {
                FetchError::TooLarge(max_body)
            } else {
                match e.downcast::<hyper::Error>() {
                    Ok(e) => FetchError::Http(*e),
                    Err(e) => FetchError::Other(e.to_string()),
                }
            }
        })?;
        Ok(body.to_bytes())
    };
    // The connection is driven here, not on a spawned task, so a timeout drops everything at once. Once it is
    // done, the body already read is still there for `response` to collect.
    tokio::pin!(conn, response);
    tokio::select! {
        r = &mut response => r,
        c = &mut conn => {
            c?;
            response.await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = Target::parse("https://abc.supabase.co/auth/v1/.well-known/jwks.json").expect("https");
        assert_eq!((t.host.as_str(), t.port, t.https), ("abc.supabase.co", 443, true));
        let t = Target::parse("http://127.0.0.1:54321/auth/v1/.well-known/jwks.json").expect("loopback");
        assert_eq!((t.host.as_str(), t.port, t.https), ("127.0.0.1", 54321, false));
        let t = Target::parse("http://[::1]:9/x").expect("v6 loopback");
        assert_eq!(t.host, "::1");
        assert!(Target::parse("http://localhost/x").is_ok());
        assert_eq!(Target::parse("http://abc.supabase.co/x").err(), Some(BadUrl::PlainHttp));
        assert_eq!(Target::parse("http://10.0.0.1/x").err(), Some(BadUrl::PlainHttp));
        assert_eq!(Target::parse("ftp://abc/x").err(), Some(BadUrl::NotAbsolute));
        assert_eq!(Target::parse("abc.supabase.co").err(), Some(BadUrl::NotAbsolute));
        assert_eq!(Target::parse("https://u:p@abc.supabase.co/x").err(), Some(BadUrl::Extra));
        assert_eq!(Target::parse("https://abc.supabase.co/x?y=1").err(), Some(BadUrl::Extra));
    }

    #[test]
    fn the_tls_connector_builds_on_ring() {
        assert!(tls_connector(&[]).is_ok());
    }
}
