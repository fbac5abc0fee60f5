//! Configuration of `essl-agent run`: command-line flags, the environment and an optional TOML file, merged
//! (flag > environment > file) and validated once at start. Every problem is reported, each naming its key and
//! where it came from; nothing here panics on bad input.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde::Deserialize;
use tokio_tungstenite::tungstenite::http::{HeaderValue, Uri};

mod collect;
pub use collect::Collect;

/// Environment variable holding the agent token.
pub const TOKEN_ENV: &str = "ESSL_AGENT_TOKEN";

/// A bearer token. `Debug` and `Display` print `***`, so it never reaches a log or an error message.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The token itself, for the one place that sends it (the `Authorization` header).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The server's WebSocket URL: `wss://HOST[:PORT]/PATH`, or `ws://` to a loopback address (tests, local proxies).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerUrl(Uri);

impl ServerUrl {
    /// Checks the scheme, the host and that no credentials hide in the URL.
    pub fn parse(text: &str) -> Result<ServerUrl, String> {
        let uri: Uri = text.parse().map_err(|e| format!("{text:?} is not a URL ({e})"))?;
        let Some(host) = uri.host().filter(|h| !h.is_empty()) else {
            return Err(format!("{text:?} has no host; want wss://HOST/agent/ws"));
        };
        if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
            return Err(
                "credentials do not belong in the URL; give the token with --token, ESSL_AGENT_TOKEN or `token`".into(),
            );
        }
        match uri.scheme_str() {
            Some("wss") => {}
            Some("ws") if is_loopback(host) => {}
            Some("ws") => {
                return Err(format!(
                    "ws:// sends the token in clear text and is allowed only to a loopback address, not {host:?}; use wss://"
                ));
            }
            _ => return Err(format!("{text:?}: the scheme must be wss:// (or ws:// to a loopback address)")),
        }
        Ok(ServerUrl(uri))
    }

    pub fn as_str(&self) -> String {
        self.0.to_string()
    }

    pub fn uri(&self) -> &Uri {
        &self.0
    }

    pub fn is_tls(&self) -> bool {
        self.0.scheme_str() == Some("wss")
    }
}

impl fmt::Display for ServerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.eq_ignore_ascii_case("localhost") || bare.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

/// Delays and deadlines of the relay. The defaults are the production values; tests shorten them.
#[derive(Debug, Clone)]
pub struct Timing {
    /// First reconnect delay after a failure (exponential, jittered, up to `backoff_max`).
    pub backoff_min: Duration,
    /// Longest reconnect delay; also the wait after a refused token or an incompatible server.
    pub backoff_max: Duration,
    /// A session that lived longer than this resets the backoff.
    pub stable_after: Duration,
    /// Range of the short, jittered delay after the server said it is going away.
    pub going_away_min: Duration,
    pub going_away_max: Duration,
    /// TCP + TLS + HTTP upgrade.
    pub connect_timeout: Duration,
    /// From `Hello` to `Welcome`.
    pub hello_timeout: Duration,
    /// WebSocket ping period; a server silent for two periods is dead.
    pub ping_interval: Duration,
    /// Longest time one frame may take to write before the connection counts as dead.
    pub write_timeout: Duration,
    /// Reachability probe: deadline of one attempt, and further attempts after an unreachable one.
    pub probe_timeout: Duration,
    pub probe_retries: u32,
    /// Deadline of connecting to a terminal and of each of its replies, for device work.
    pub device_timeout: Duration,
    /// How long a `Punches` batch may wait for its `Ack`.
    pub ack_timeout: Duration,
    /// Smallest gap between two `Progress` messages of one request.
    pub progress_every: Duration,
}

impl Default for Timing {
    fn default() -> Self {
        Timing {
            backoff_min: Duration::from_millis(500),
            backoff_max: Duration::from_secs(60),
            stable_after: Duration::from_secs(60),
            going_away_min: Duration::from_millis(200),
            going_away_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(20),
            hello_timeout: Duration::from_secs(10),
            ping_interval: Duration::from_secs(15),
            write_timeout: Duration::from_secs(30),
            probe_timeout: Duration::from_secs(3),
            probe_retries: 1,
            device_timeout: Duration::from_secs(10),
            ack_timeout: Duration::from_secs(120),
            progress_every: Duration::from_millis(200),
        }
    }
}

/// The validated configuration the relay runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub server: ServerUrl,
    pub token: Secret,
    /// Extra CAs trusted besides the operating system's store (`--ca-file`).
    pub extra_roots: Vec<CertificateDer<'static>>,
    /// Overrides the server's `probe_interval_ms` when set.
    pub probe_interval: Option<Duration>,
    /// The outbox and the agent's own syncing of its terminals.
    pub collect: Collect,
    pub timing: Timing,
}

impl Config {
    /// A configuration with the production timing and no extra CA.
    pub fn new(server: ServerUrl, token: Secret) -> Config {
        Config {
            server,
            token,
            extra_roots: Vec::new(),
            probe_interval: None,
            collect: Collect::default(),
            timing: Timing::default(),
        }
    }
}

/// `agent.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub server: Option<String>,
    pub token: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub probe_interval_secs: Option<u64>,
    // Outbox and scheduled sync (`config/collect.rs`).
    pub outbox: Option<PathBuf>,
    pub outbox_max_mb: Option<u64>,
    pub sync_interval_secs: Option<u64>,
    #[serde(default)]
    pub log: LogSection,
    /// `[[devices]]`: the terminals this agent should reach, for `essl-agent config check` (the relay itself takes
    /// its devices from the server).
    #[serde(default)]
    pub devices: Vec<DeviceEntry>,
}

/// One `[[devices]]` entry of `agent.toml`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceEntry {
    /// A label for people.
    pub name: String,
    /// `HOST`, `IP`, `HOST:PORT` or `[v6]:PORT`; port 4370 unless given.
    pub addr: String,
    /// UDP instead of TCP.
    #[serde(default)]
    pub udp: bool,
    /// The terminal's comm key (0 = none).
    #[serde(default)]
    pub comm_key: u32,
}

/// `[log]` of `agent.toml`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSection {
    /// A tracing filter: `info`, `debug`, `essl_agent=debug,warn`.
    pub level: Option<String>,
}

/// What the command line and the environment gave (the caller reads them; this module only merges).
#[derive(Debug, Default, Clone)]
pub struct Sources {
    pub server: Option<String>,
    pub token_flag: Option<Secret>,
    pub token_env: Option<Secret>,
    pub ca_file: Option<PathBuf>,
    pub probe_interval: Option<String>,
    pub config_file: Option<PathBuf>,
    /// `--outbox`.
    pub outbox: Option<PathBuf>,
}

/// The result of [`load`]: the relay's configuration and the log filter from the file, if any.
#[derive(Debug)]
pub struct Loaded {
    pub config: Config,
    pub log_level: Option<String>,
    /// `[[devices]]` of the file, checked (names and address shapes), not resolved.
    pub devices: Vec<DeviceEntry>,
}

/// Where a value came from, for error messages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    Flag(&'static str),
    Env(&'static str),
    File { path: PathBuf, key: String },
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::Flag(name) => write!(f, "--{name}"),
            Origin::Env(name) => write!(f, "environment variable {name}"),
            Origin::File { path, key } if key.is_empty() => write!(f, "{}", path.display()),
            Origin::File { path, key } => write!(f, "`{key}` in {}", path.display()),
        }
    }
}

/// One invalid or missing value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: Origin,
    pub message: String,
}

/// Everything wrong with the configuration, one problem per line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigError {
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, p) in self.problems.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}: {}", p.origin, p.message)?;
        }
        Ok(())
    }
}

/// Reads the file (if any), merges it under the flags and the environment, and validates everything once.
pub fn load(sources: Sources) -> Result<Loaded, ConfigError> {
    let mut problems = Vec::new();
    let (file, path) = match &sources.config_file {
        Some(path) => match read_file(path) {
            Ok(file) => (file, Some(path.clone())),
            Err(p) => return Err(ConfigError { problems: vec![p] }),
        },
        None => (FileConfig::default(), None),
    };
    let in_file = |key: &str| Origin::File { path: path.clone().unwrap_or_default(), key: key.to_string() };

    let server = match (&sources.server, &file.server) {
        (Some(s), _) => Some((s.clone(), Origin::Flag("server"))),
        (None, Some(s)) => Some((s.clone(), in_file("server"))),
        (None, None) => None,
    };
    let server = match server {
        Some((text, origin)) => {
            ServerUrl::parse(&text).map_err(|message| problems.push(Problem { origin, message })).ok()
        }
        None => {
            problems.push(Problem {
                origin: Origin::Flag("server"),
                message: "missing: give --server wss://HOST/agent/ws or `server` in the config file".into(),
            });
            None
        }
    };

    let token = match (&sources.token_flag, &sources.token_env, &file.token) {
        (Some(t), _, _) => Some((t.clone(), Origin::Flag("token"))),
        (None, Some(t), _) => Some((t.clone(), Origin::Env(TOKEN_ENV))),
        (None, None, Some(t)) => Some((t.clone(), in_file("token"))),
        _ => None,
    };
    let token = match token {
        Some((token, origin)) => {
            check_token(&token).map(|()| token).map_err(|message| problems.push(Problem { origin, message })).ok()
        }
        None => {
            problems.push(Problem {
                origin: Origin::Env(TOKEN_ENV),
                message: format!(
                    "missing: give the agent token with --token, {TOKEN_ENV} or `token` in the config file"
                ),
            });
            None
        }
    };

    let ca = match (&sources.ca_file, &file.ca_file) {
        (Some(p), _) => Some((p.clone(), Origin::Flag("ca-file"))),
        // A relative path in the file is relative to the file, so the file can be moved with its CA.
        (None, Some(p)) => Some((relative_to(path.as_deref(), p), in_file("ca_file"))),
        (None, None) => None,
    };
    let extra_roots = match ca {
        Some((p, origin)) => {
            read_roots(&p).map_err(|message| problems.push(Problem { origin, message })).unwrap_or_default()
        }
        None => Vec::new(),
    };

    let probe_interval = match (&sources.probe_interval, file.probe_interval_secs) {
        (Some(text), _) => parse_duration(text)
            .and_then(check_interval)
            .map_err(|message| problems.push(Problem { origin: Origin::Flag("probe-interval"), message }))
            .ok(),
        (None, Some(secs)) => check_interval(Duration::from_secs(secs))
            .map_err(|message| problems.push(Problem { origin: in_file("probe_interval_secs"), message }))
            .ok(),
        (None, None) => None,
    };

    let collect = collect::merge(sources.outbox.as_deref(), &file, path.as_deref(), &mut problems);

    let log_level = file.log.level.clone();
    if let Some(level) = &log_level
        && let Err(e) = tracing_subscriber::EnvFilter::try_new(level)
    {
        problems.push(Problem {
            origin: in_file("log.level"),
            message: format!("{level:?} is not a log filter ({e}); use error, warn, info, debug or trace"),
        });
    }

    for (i, device) in file.devices.iter().enumerate() {
        let key = |field: &str| in_file(&format!("devices[{i}].{field}"));
        if device.name.trim().is_empty() || device.name.chars().any(char::is_control) {
            problems.push(Problem { origin: key("name"), message: "must be a non-empty line of text".into() });
        }
        if let Err(message) = check_device_addr(&device.addr) {
            problems.push(Problem { origin: key("addr"), message });
        }
    }
    let devices = file.devices;

    match (server, token) {
        (Some(server), Some(token)) if problems.is_empty() => Ok(Loaded {
            config: Config { server, token, extra_roots, probe_interval, collect, timing: Timing::default() },
            log_level,
            devices,
        }),
        _ => Err(ConfigError { problems }),
    }
}

fn read_file(path: &Path) -> Result<FileConfig, Problem> {
    let whole_file =
        |message: String| Problem { origin: Origin::File { path: path.to_path_buf(), key: String::new() }, message };
    let text = std::fs::read_to_string(path).map_err(|e| whole_file(format!("cannot read the config file: {e}")))?;
    toml::from_str(&text).map_err(|e| {
        // The message only, never toml's excerpt of the source: that line could hold the token.
        let (line, key) = e.span().map(|s| locate(&text, s.start)).unwrap_or((0, String::new()));
        let message = if line > 0 { format!("line {line}: {}", e.message()) } else { e.message().to_string() };
        Problem { origin: Origin::File { path: path.to_path_buf(), key }, message }
    })
}

/// The 1-based line of `offset` and the key assigned on that line, if it looks like `key = ...`.
fn locate(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line.split_once('=').map(|(k, _)| k.trim().to_string()).unwrap_or_default();
    let key = if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
        key
    } else {
        String::new()
    };
    (line_no, key)
}

/// The shape of a terminal address (`HOST`, `IP`, `HOST:PORT`, `[v6]:PORT`), without resolving it.
fn check_device_addr(addr: &str) -> Result<(), String> {
    let full = crate::addr::with_default_port(addr.trim());
    let bad = || format!("{addr:?} is not a terminal address; write IP, HOST or HOST:PORT (port 4370 if omitted)");
    if full.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(());
    }
    let (host, port) = full.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        });
    match port.parse::<u16>() {
        Ok(p) if p > 0 && host_ok => Ok(()),
        _ => Err(bad()),
    }
}

fn relative_to(config_file: Option<&Path>, p: &Path) -> PathBuf {
    match config_file.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

fn check_token(token: &Secret) -> Result<(), String> {
    let t = token.expose();
    if t.is_empty() {
        return Err("the token is empty".into());
    }
    if !t.chars().all(|c| c.is_ascii_graphic()) || HeaderValue::from_str(&format!("Bearer {t}")).is_err() {
        // Never echo the value.
        return Err("the token may only hold printable ASCII characters without spaces".into());
    }
    Ok(())
}

fn read_roots(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs = iter
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{} is not a PEM certificate file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    // What the verifier will do with them later, done now so that a bad certificate is a configuration error.
    let mut store = rustls::RootCertStore::empty();
    for (i, cert) in certs.iter().enumerate() {
        store
            .add(cert.clone())
            .map_err(|e| format!("certificate {} in {} cannot be a trust anchor: {e}", i + 1, path.display()))?;
    }
    Ok(certs)
}

const MIN_PROBE_INTERVAL: Duration = Duration::from_secs(1);
const MAX_PROBE_INTERVAL: Duration = Duration::from_secs(3600);

fn check_interval(d: Duration) -> Result<Duration, String> {
    if (MIN_PROBE_INTERVAL..=MAX_PROBE_INTERVAL).contains(&d) {
        Ok(d)
    } else {
        Err(format!("{d:?} is out of range: the probe interval must be between 1 s and 1 h"))
    }
}

/// `250ms`, `30s`, `5m`, `1h`, or a bare number of seconds (the server reads its durations the same way).
pub use essl_wire::parse_duration;

#[cfg(test)]
mod tests {
    use super::*;

    /// A public root CA (Let's Encrypt's ISRG Root X2), as a real certificate to load.
    const ISRG_ROOT_X2: &str = "-----BEGIN CERTIFICATE-----\n\
MIICGzCCAaGgAwIBAgIQQdKd0XLq7qeAwSxs6S+HUjAKBggqhkjOPQQDAzBPMQsw\n\
CQYDVQQGEwJVUzEpMCcGA1UEChMgSW50ZXJuZXQgU2VjdXJpdHkgUmVzZWFyY2gg\n\
R3JvdXAxFTATBgNVBAMTDElTUkcgUm9vdCBYMjAeFw0yMDA5MDQwMDAwMDBaFw00\n\
MDA5MTcxNjAwMDBaME8xCzAJBgNVBAYTAlVTMSkwJwYDVQQKEyBJbnRlcm5ldCBT\n\
ZWN1cml0eSBSZXNlYXJjaCBHcm91cDEVMBMGA1UEAxMMSVNSRyBSb290IFgyMHYw\n\
EAYHKoZIzj0CAQYFK4EEACIDYgAEzZvVn4CDCuwJSvMWSj5cz3es3mcFDR0HttwW\n\
+1qLFNvicWDEukWVEYmO6gbf9yoWHKS5xcUy4APgHoIYOIvXRdgKam7mAHf7AlF9\n\
ItgKbppbd9/w+kHsOdx1ymgHDB/qo0IwQDAOBgNVHQ8BAf8EBAMCAQYwDwYDVR0T\n\
AQH/BAUwAwEB/zAdBgNVHQ4EFgQUfEKWrt5LSDv6kviejM9ti6lyN5UwCgYIKoZI\n\
zj0EAwMDaAAwZQIwe3lORlCEwkSHRhtFcP9Ymd70/aTSVaYgLXTWNLxBo1BfASdW\n\
tL4ndQavEi51mI38AjEAi/V3bNTIZargCyzuFJ0nN6T5U6VR5CmD1/iQMVtCnwr1\n\
/q4AaOeMSQ+2b1tbFfLn\n\
-----END CERTIFICATE-----\n";

    fn sources() -> Sources {
        Sources {
            server: Some("wss://relay.example.com/agent/ws".into()),
            token_flag: Some(Secret::new("essl_abc_def")),
            ..Sources::default()
        }
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("essl-agent-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        let cfg = Config::new(ServerUrl::parse("wss://x.example/agent/ws").expect("url"), s);
        assert!(!format!("{cfg:?}").contains("hunter2"));
    }

    #[test]
    fn urls() {
        assert!(ServerUrl::parse("wss://relay.example.com/agent/ws").is_ok());
        assert!(ServerUrl::parse("ws://127.0.0.1:8080/agent/ws").is_ok());
        assert!(ServerUrl::parse("ws://[::1]:8080/agent/ws").is_ok());
        assert!(ServerUrl::parse("ws://localhost/agent/ws").is_ok());
        assert!(ServerUrl::parse("ws://relay.example.com/agent/ws").expect_err("plain").contains("clear text"));
        assert!(ServerUrl::parse("https://relay.example.com/agent/ws").is_err());
        assert!(ServerUrl::parse("wss://user:pw@relay.example.com/agent/ws").is_err());
        assert!(ServerUrl::parse("relay.example.com").is_err());
        assert!(ServerUrl::parse("").is_err());
    }

    #[test]
    fn flag_beats_env_beats_file() {
        let dir = tempdir("precedence");
        let file = write(
            &dir,
            "agent.toml",
            "server = \"wss://file.example/agent/ws\"\ntoken = \"from-file\"\nprobe_interval_secs = 45\n[log]\nlevel = \"debug\"\n",
        );
        let only_file = Sources { config_file: Some(file.clone()), ..Sources::default() };
        let loaded = load(only_file.clone()).expect("valid");
        assert_eq!(loaded.config.token.expose(), "from-file");
        assert_eq!(loaded.config.server.as_str(), "wss://file.example/agent/ws");
        assert_eq!(loaded.config.probe_interval, Some(Duration::from_secs(45)));
        assert_eq!(loaded.log_level.as_deref(), Some("debug"));

        let env = Sources { token_env: Some(Secret::new("from-env")), ..only_file.clone() };
        assert_eq!(load(env.clone()).expect("valid").config.token.expose(), "from-env");
        let flag = Sources {
            token_flag: Some(Secret::new("from-flag")),
            server: Some("wss://flag.example/agent/ws".into()),
            probe_interval: Some("10s".into()),
            ..env
        };
        let loaded = load(flag).expect("valid");
        assert_eq!(loaded.config.token.expose(), "from-flag");
        assert_eq!(loaded.config.server.as_str(), "wss://flag.example/agent/ws");
        assert_eq!(loaded.config.probe_interval, Some(Duration::from_secs(10)));
    }

    #[test]
    fn bad_values_name_key_and_file() {
        let dir = tempdir("bad");
        let file = write(
            &dir,
            "agent.toml",
            "server = \"ws://relay.example.com/agent/ws\"\ntoken = \"a b\"\nprobe_interval_secs = 0\n",
        );
        let err = load(Sources { config_file: Some(file.clone()), ..Sources::default() }).expect_err("invalid");
        let text = err.to_string();
        assert_eq!(err.problems.len(), 3, "{text}");
        for key in ["`server`", "`token`", "`probe_interval_secs`"] {
            assert!(text.contains(&format!("{key} in {}", file.display())), "{key}: {text}");
        }
        assert!(!text.contains("a b"), "the token leaked: {text}");

        let file = write(&dir, "unknown.toml", "server = \"wss://x.example/agent/ws\"\nservre = 1\n");
        let err = load(Sources { config_file: Some(file.clone()), ..sources() }).expect_err("unknown key");
        let text = err.to_string();
        assert!(
            text.contains("servre") && text.contains(&file.display().to_string()) && text.contains("line 2"),
            "{text}"
        );

        let file = write(&dir, "type.toml", "token = \"secret-value\"\nprobe_interval_secs = \"soon\"\n");
        let text = load(Sources { config_file: Some(file), ..sources() }).expect_err("wrong type").to_string();
        assert!(text.contains("`probe_interval_secs`") && !text.contains("secret-value"), "{text}");

        let file = write(&dir, "level.toml", "[log]\nlevel = \"loud[\"\n");
        let text = load(Sources { config_file: Some(file), ..sources() }).expect_err("bad level").to_string();
        assert!(text.contains("`log.level`"), "{text}");

        let file = write(&dir, "ca.toml", "ca_file = \"missing.pem\"\n");
        let text = load(Sources { config_file: Some(file), ..sources() }).expect_err("missing CA").to_string();
        assert!(text.contains("`ca_file`") && text.contains("missing.pem"), "{text}");

        let text =
            load(Sources { config_file: Some(dir.join("nope.toml")), ..sources() }).expect_err("no file").to_string();
        assert!(text.contains("nope.toml"), "{text}");

        let text = load(Sources::default()).expect_err("nothing").to_string();
        assert!(text.contains("--server") && text.contains(TOKEN_ENV), "{text}");

        let text = load(Sources { probe_interval: Some("fast".into()), ..sources() }).expect_err("flag").to_string();
        assert!(text.contains("--probe-interval"), "{text}");
    }

    #[test]
    fn devices_section() {
        let dir = tempdir("devices");
        let file = write(
            &dir,
            "agent.toml",
            "[[devices]]\nname = \"Front door\"\naddr = \"192.0.2.10\"\n\n[[devices]]\nname = \"Back door\"\naddr = \"door.local:4371\"\nudp = true\ncomm_key = 1234\n",
        );
        let loaded = load(Sources { config_file: Some(file), ..sources() }).expect("valid");
        assert_eq!(
            loaded.devices,
            vec![
                DeviceEntry { name: "Front door".into(), addr: "192.0.2.10".into(), udp: false, comm_key: 0 },
                DeviceEntry { name: "Back door".into(), addr: "door.local:4371".into(), udp: true, comm_key: 1234 },
            ]
        );
        assert!(load(sources()).expect("valid").devices.is_empty());

        let file = write(
            &dir,
            "bad.toml",
            "[[devices]]\nname = \"\"\naddr = \"door.local:99999\"\n[[devices]]\nname = \"ok\"\naddr = \"a b\"\n",
        );
        let err = load(Sources { config_file: Some(file.clone()), ..sources() }).expect_err("invalid");
        let text = err.to_string();
        for key in ["devices[0].name", "devices[0].addr", "devices[1].addr"] {
            assert!(text.contains(&format!("`{key}` in {}", file.display())), "{key}: {text}");
        }
        assert_eq!(err.problems.len(), 3, "{text}");

        let file = write(&dir, "type.toml", "[[devices]]\nname = \"x\"\naddr = \"10.0.0.1\"\ncomm_key = \"1234\"\n");
        let text = load(Sources { config_file: Some(file), ..sources() }).expect_err("type").to_string();
        assert!(text.contains("`comm_key`") && text.contains("line 4"), "{text}");
        let file = write(&dir, "unknown.toml", "[[devices]]\nname = \"x\"\naddr = \"10.0.0.1\"\nport = 4370\n");
        let text = load(Sources { config_file: Some(file), ..sources() }).expect_err("unknown").to_string();
        assert!(text.contains("port") && text.contains("line 4"), "{text}");
        let file = write(&dir, "missing.toml", "[[devices]]\nname = \"x\"\n");
        let text = load(Sources { config_file: Some(file), ..sources() }).expect_err("missing addr").to_string();
        assert!(text.contains("addr"), "{text}");
    }

    #[test]
    fn ca_file_relative_to_the_config_file() {
        let dir = tempdir("ca");
        write(&dir, "ca.pem", ISRG_ROOT_X2);
        let file = write(&dir, "agent.toml", "ca_file = \"ca.pem\"\n");
        let loaded = load(Sources { config_file: Some(file), ..sources() }).expect("valid");
        assert_eq!(loaded.config.extra_roots.len(), 1);
        write(&dir, "empty.pem", "nothing here\n");
        write(&dir, "junk.pem", "-----BEGIN CERTIFICATE-----\nMIIBAA==\n-----END CERTIFICATE-----\n");
        let text = load(Sources { ca_file: Some(dir.join("junk.pem")), ..sources() }).expect_err("junk").to_string();
        assert!(text.contains("--ca-file") && text.contains("trust anchor"), "{text}");
        let text = load(Sources { ca_file: Some(dir.join("empty.pem")), ..sources() }).expect_err("empty").to_string();
        assert!(text.contains("--ca-file") && text.contains("no PEM certificate"), "{text}");
    }
}
