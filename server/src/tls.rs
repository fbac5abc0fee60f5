//! Serving HTTPS and wss with rustls, for deployments without a TLS-terminating proxy in front.

use std::net::SocketAddr;
use std::path::Path;

use axum_server::tls_rustls::RustlsConfig;
use tokio::net::TcpListener;

use crate::app::AppState;

/// Like [`crate::app::run`], over TLS with the certificate chain and key in PEM files.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    cert: &Path,
    key: &Path,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let config = RustlsConfig::from_pem_file(cert, key).await?;
    state.start_background();
    state.join_cluster().await.map_err(std::io::Error::other)?;
    let app = crate::http::router(state.clone());
    let handle = axum_server::Handle::new();
    {
        let handle = handle.clone();
        let state = state.clone();
        tokio::spawn(async move {
            // The listener keeps accepting through the shutdown delay, as over plain HTTP.
            state.shutdown_after_delay(shutdown).await;
            handle.graceful_shutdown(Some(state.config.grace));
        });
    }
    let result = axum_server::from_tcp_rustls(listener.into_std()?, config)?
        .handle(handle)
        .serve(app.into_make_service_with_connect_info::<SocketAddr>())
        .await;
    state.let_agents_go().await;
    result
}
