//! Opening the WebSocket: TCP, TLS (rustls, ring, the operating system's trust store through the platform
//! verifier, plus an optional extra CA), and the HTTP upgrade carrying the bearer token in its `Authorization`
//! header, never in the URL.

use std::sync::Arc;
use std::time::Duration;

use rustls::ClientConfig;
use rustls_platform_verifier::{BuilderVerifierExt, Verifier};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::{HeaderValue, header};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector as TlsConnector, MaybeTlsStream, WebSocketStream, tungstenite};

use crate::config::Config;

/// A connected WebSocket.
pub type WsStream = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why no WebSocket came up.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    /// HTTP 401 or 403 on the upgrade: the token is unknown, revoked or not allowed.
    #[error("the server refused the token (HTTP {status})")]
    Refused { status: u16 },
    #[error("the server answered HTTP {status} to the WebSocket upgrade{detail}")]
    Http { status: u16, detail: String },
    #[error("no connection within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    WebSocket(#[from] tungstenite::Error),
}

/// Builds the upgrade request and the TLS settings once; connects as often as asked.
pub struct Connector {
    tls: Option<Arc<ClientConfig>>,
    config: Arc<Config>,
}

impl Connector {
    /// Fails only if the TLS settings cannot be built (no usable trust store, a bad extra CA).
    pub fn new(config: Arc<Config>) -> Result<Connector, rustls::Error> {
        let tls = if config.server.is_tls() { Some(Arc::new(tls_config(&config)?)) } else { None };
        Ok(Connector { tls, config })
    }

    /// One attempt: TCP, TLS, upgrade, all within `timing.connect_timeout`.
    pub async fn connect(&self) -> Result<WsStream, ConnectError> {
        let limit = self.config.timing.connect_timeout;
        match tokio::time::timeout(limit, self.connect_inner()).await {
            Ok(result) => result,
            Err(_) => Err(ConnectError::Timeout(limit)),
        }
    }

    async fn connect_inner(&self) -> Result<WsStream, ConnectError> {
        let mut request = self.config.server.uri().clone().into_client_request()?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", self.config.token.expose()))
            .map_err(|e| ConnectError::WebSocket(tungstenite::Error::HttpFormat(e.into())))?;
        auth.set_sensitive(true);
        let headers = request.headers_mut();
        headers.insert(header::AUTHORIZATION, auth);
        headers.insert(header::USER_AGENT, HeaderValue::from_static(concat!("essl-agent/", env!("CARGO_PKG_VERSION"))));

        let ws_config = WebSocketConfig::default()
            .max_message_size(Some(essl_wire::MAX_MESSAGE_BYTES))
            .max_frame_size(Some(essl_wire::MAX_MESSAGE_BYTES));
        let connector = self.tls.clone().map(TlsConnector::Rustls);
        match tokio_tungstenite::connect_async_tls_with_config(request, Some(ws_config), true, connector).await {
            Ok((ws, _response)) => Ok(ws),
            Err(tungstenite::Error::Http(response)) => {
                let status = response.status().as_u16();
                if status == 401 || status == 403 {
                    return Err(ConnectError::Refused { status });
                }
                let detail = response
                    .body()
                    .as_deref()
                    .and_then(|b| std::str::from_utf8(b).ok())
                    .map(|s| s.chars().filter(|c| !c.is_control()).take(200).collect::<String>())
                    .filter(|s| !s.trim().is_empty())
                    .map(|s| format!(": {}", s.trim()))
                    .unwrap_or_default();
                Err(ConnectError::Http { status, detail })
            }
            Err(e) => Err(e.into()),
        }
    }
}

/// rustls with the ring provider; the platform verifier checks certificates with the operating system (Windows
/// chain engine, macOS Security framework, the system store on Linux), augmented by `--ca-file` when given.
fn tls_config(config: &Config) -> Result<ClientConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone()).with_safe_default_protocol_versions()?;
    let tls = if config.extra_roots.is_empty() {
        builder.with_platform_verifier()?.with_no_client_auth()
    } else {
        let verifier = Verifier::new_with_extra_roots(config.extra_roots.iter().cloned(), provider)?;
        builder.dangerous().with_custom_certificate_verifier(Arc::new(verifier)).with_no_client_auth()
    };
    Ok(tls)
}
