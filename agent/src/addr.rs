//! Terminal addresses: `HOST`, `IP`, `HOST:PORT`, `[v6]:PORT`; port 4370 unless given.

use std::net::SocketAddr;

use essl_zk::ZkError;

/// Adds the terminal port (4370) when the address has none.
pub fn with_default_port(addr: &str) -> String {
    let port = essl_zk::consts::DEFAULT_PORT;
    if addr.parse::<SocketAddr>().is_ok() {
        return addr.to_string();
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return SocketAddr::new(ip, port).to_string();
    }
    match addr.rsplit_once(':') {
        Some((_, p)) if p.parse::<u16>().is_ok() => addr.to_string(),
        _ => format!("{addr}:{port}"),
    }
}

/// Resolves a terminal address; a name that does not resolve is an unreachable terminal.
pub async fn resolve(addr: &str) -> Result<SocketAddr, ZkError> {
    let connect_error = |source| ZkError::Connect { addr: addr.to_string(), source };
    let mut addrs = tokio::net::lookup_host(with_default_port(addr)).await.map_err(connect_error)?;
    addrs.next().ok_or_else(|| connect_error(std::io::Error::new(std::io::ErrorKind::NotFound, "no address found")))
}

#[cfg(test)]
mod tests {
    use super::with_default_port;

    #[test]
    fn default_port_is_added_only_when_missing() {
        assert_eq!(with_default_port("10.0.0.5"), "10.0.0.5:4370");
        assert_eq!(with_default_port("10.0.0.5:4371"), "10.0.0.5:4371");
        assert_eq!(with_default_port("::1"), "[::1]:4370");
        assert_eq!(with_default_port("[::1]:99"), "[::1]:99");
        assert_eq!(with_default_port("door.local"), "door.local:4370");
        assert_eq!(with_default_port("door.local:5000"), "door.local:5000");
    }
}
