//! The server's settings: command-line flags, environment variables and an optional TOML file (`--config`,
//! `ESSL_CONFIG`), merged flag > environment > file > default and validated once at start. Every problem is
//! reported, each naming its key and where it came from; secrets and database passwords are never echoed.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use essl_server::auth::token::Secret;
use essl_server::auth::{Supabase, SupabaseConfig};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::Deserialize;

pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
pub const DEFAULT_DATABASE_URL: &str = "sqlite://essl-relay.db";

/// `server.toml`. Every key is optional; unknown keys are an error.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<String>,
    pub database_url: Option<String>,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub supabase_url: Option<String>,
    pub supabase_jwt_secret: Option<String>,
    pub push_delay_seconds: Option<i64>,
    pub push_error_delay_seconds: Option<i64>,
    pub push_journal_days: Option<i64>,
    pub push_serial_rate: Option<i64>,
    pub push_serial_burst: Option<i64>,
    pub push_address_rate: Option<i64>,
    pub push_address_burst: Option<i64>,
    pub push_attlog_max_kib: Option<i64>,
    pub push_operlog_max_kib: Option<i64>,
    pub push_other_max_kib: Option<i64>,
    pub push_command_resend_seconds: Option<i64>,
    pub push_command_max_sends: Option<i64>,
    pub push_command_expiry_days: Option<i64>,
    /// A duration as text, like the flag: `"15s"`, `"500ms"`, `"2m"`.
    pub shutdown_delay: Option<String>,
}

/// Keys whose values are never shown, not even in a type error.
const SECRET_KEYS: &[&str] = &["supabase_jwt_secret", "database_url"];

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

/// A value given on the command line or in the environment, and which of the two.
#[derive(Debug, Clone)]
pub struct Given<T> {
    pub value: T,
    pub origin: Origin,
}

/// What the command line and the environment gave (the caller reads them; this module merges and checks).
#[derive(Debug, Default)]
pub struct Sources {
    pub config_file: Option<Given<PathBuf>>,
    pub listen: Option<Given<String>>,
    pub database_url: Option<Given<String>>,
    pub tls_cert: Option<Given<PathBuf>>,
    pub tls_key: Option<Given<PathBuf>>,
    pub supabase_url: Option<Given<String>>,
    pub supabase_jwt_secret: Option<Given<Secret>>,
    pub push_delay_seconds: Option<Given<String>>,
    pub push_error_delay_seconds: Option<Given<String>>,
    pub push_journal_days: Option<Given<String>>,
    pub push_serial_rate: Option<Given<String>>,
    pub push_serial_burst: Option<Given<String>>,
    pub push_address_rate: Option<Given<String>>,
    pub push_address_burst: Option<Given<String>>,
    pub push_attlog_max_kib: Option<Given<String>>,
    pub push_operlog_max_kib: Option<Given<String>>,
    pub push_other_max_kib: Option<Given<String>>,
    pub push_command_resend_seconds: Option<Given<String>>,
    pub push_command_max_sends: Option<Given<String>>,
    pub push_command_expiry_days: Option<Given<String>>,
    pub shutdown_delay: Option<Given<String>>,
}

/// Bounds of the push settings (whole numbers, inclusive).
pub const PUSH_DELAY_SECONDS: (i64, i64) = (1, 3_600);
pub const PUSH_ERROR_DELAY_SECONDS: (i64, i64) = (1, 3_600);
pub const PUSH_JOURNAL_DAYS: (i64, i64) = (1, 3_650);
/// Requests per second, sustained (per serial or per client address).
pub const PUSH_RATE: (i64, i64) = (1, 100_000);
/// Requests at once (per serial or per client address).
pub const PUSH_BURST: (i64, i64) = (1, 1_000_000);
/// Largest body of a table, KiB (64 MiB at most).
pub const PUSH_BODY_KIB: (i64, i64) = (1, 65_536);
pub const PUSH_COMMAND_RESEND_SECONDS: (i64, i64) = (1, 86_400);
pub const PUSH_COMMAND_MAX_SENDS: (i64, i64) = (1, 100);
pub const PUSH_COMMAND_EXPIRY_DAYS: (i64, i64) = (1, 365);
/// The longest shutdown delay: far more than any load balancer needs to notice a failing health check, short
/// enough that a mistyped unit does not hold a stopping server for a day.
pub const SHUTDOWN_DELAY_MAX: Duration = Duration::from_secs(3_600);

/// The operator's push (ADMS) settings; `None` keeps the default of [`essl_server::push::PushConfig`].
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct PushSettings {
    /// `Delay` told to terminals: seconds between their polls.
    pub delay: Option<Duration>,
    /// `ErrorDelay` told to terminals: how long they wait after a failed request.
    pub error_delay: Option<Duration>,
    /// How long journaled push requests are kept.
    pub journal_retention: Option<Duration>,
    /// Requests per second (sustained) and burst, per serial number.
    pub serial_rate: Option<u64>,
    pub serial_burst: Option<u64>,
    /// Requests per second (sustained) and burst, per client address.
    pub address_rate: Option<u64>,
    pub address_burst: Option<u64>,
    /// Largest `ATTLOG`/`rtlog` body, bytes.
    pub attlog_max: Option<usize>,
    /// Largest `OPERLOG`/`USERINFO`/`BIODATA`/`tabledata` body, bytes.
    pub operlog_max: Option<usize>,
    /// Largest body of anything else, bytes.
    pub other_max: Option<usize>,
    /// A sent command without a result is sent again after this long.
    pub command_resend: Option<Duration>,
    /// Sends before a command expires.
    pub command_max_sends: Option<i32>,
    /// A queued command never fetched expires after this long.
    pub command_expiry: Option<Duration>,
}

impl PushSettings {
    /// `base` with these settings applied.
    pub fn apply(&self, base: essl_server::push::PushConfig) -> essl_server::push::PushConfig {
        essl_server::push::PushConfig {
            delay: self.delay.unwrap_or(base.delay),
            error_delay: self.error_delay.unwrap_or(base.error_delay),
            journal_retention: self.journal_retention.unwrap_or(base.journal_retention),
            // Whole numbers within their bounds: exact as f64.
            per_serial: (
                self.serial_rate.map_or(base.per_serial.0, |n| n as f64),
                self.serial_burst.map_or(base.per_serial.1, |n| n as f64),
            ),
            per_address: (
                self.address_rate.map_or(base.per_address.0, |n| n as f64),
                self.address_burst.map_or(base.per_address.1, |n| n as f64),
            ),
            attlog_max: self.attlog_max.unwrap_or(base.attlog_max),
            operlog_max: self.operlog_max.unwrap_or(base.operlog_max),
            other_max: self.other_max.unwrap_or(base.other_max),
            resend_after: self.command_resend.unwrap_or(base.resend_after),
            max_attempts: self.command_max_sends.unwrap_or(base.max_attempts),
            command_ttl: self.command_expiry.unwrap_or(base.command_ttl),
            ..base
        }
    }
}

/// The validated settings.
#[derive(Debug)]
pub struct Settings {
    pub listen: SocketAddr,
    pub database_url: String,
    /// Certificate chain and private key (PEM).
    pub tls: Option<(PathBuf, PathBuf)>,
    pub supabase: Option<SupabaseConfig>,
    pub push: PushSettings,
    /// How long to go on serving after the shutdown signal with `/readyz` answering 503; `None` keeps the default
    /// of [`essl_server::app::ServerConfig`] (none).
    pub shutdown_delay: Option<Duration>,
}

/// One invalid or missing value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: Origin,
    pub message: String,
}

/// Everything wrong with the settings, one problem per line.
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

/// Reads the file (if any), merges it under the flags and the environment, and checks everything once.
pub fn load(sources: Sources) -> Result<Settings, ConfigError> {
    let (file, path) = match &sources.config_file {
        Some(given) => match read_file(&given.value) {
            Ok(file) => (file, Some(given.value.clone())),
            Err(p) => return Err(ConfigError { problems: vec![p] }),
        },
        None => (FileSettings::default(), None),
    };
    let in_file = |key: &str| Origin::File { path: path.clone().unwrap_or_default(), key: key.to_owned() };
    // The command line (or environment) first, then the file.
    fn pick<T: Clone, F>(
        given: &Option<Given<T>>,
        file: Option<F>,
        origin: Origin,
        map: impl Fn(F) -> T,
    ) -> Option<(T, Origin)> {
        match (given, file) {
            (Some(g), _) => Some((g.value.clone(), g.origin.clone())),
            (None, Some(v)) => Some((map(v), origin)),
            (None, None) => None,
        }
    }
    let mut problems = Vec::new();
    let mut problem = |origin: Origin, message: String| problems.push(Problem { origin, message });

    let listen = match pick(&sources.listen, file.listen, in_file("listen"), |v| v) {
        Some((text, origin)) => text.trim().parse::<SocketAddr>().map_err(|_| {
            problem(origin, format!("{text:?} is not an address to listen on; write IP:PORT, e.g. 0.0.0.0:8080"))
        }),
        None => DEFAULT_LISTEN.parse().map_err(|_| ()),
    };

    let database_url = match pick(&sources.database_url, file.database_url, in_file("database_url"), |v| v) {
        Some((url, origin)) => {
            let url = url.trim().to_owned();
            if ["sqlite:", "postgres://", "postgresql://"].iter().any(|p| url.starts_with(p)) {
                Ok(url)
            } else {
                // Never the URL itself: it may hold a password.
                problem(origin, "must start with sqlite:, postgres:// or postgresql://".into());
                Err(())
            }
        }
        None => Ok(DEFAULT_DATABASE_URL.to_owned()),
    };

    // Relative paths in the file are relative to the file, so the file can move with its certificates.
    let cert = pick(&sources.tls_cert, file.tls_cert, in_file("tls_cert"), |p| relative_to(path.as_deref(), &p));
    let key = pick(&sources.tls_key, file.tls_key, in_file("tls_key"), |p| relative_to(path.as_deref(), &p));
    let tls = match (cert, key) {
        (Some((cert, cert_origin)), Some((key, key_origin))) => {
            let c = check_certs(&cert).map_err(|m| problem(cert_origin, m));
            let k = check_key(&key).map_err(|m| problem(key_origin, m));
            if c.is_ok() && k.is_ok() { Ok(Some((cert, key))) } else { Err(()) }
        }
        (Some((_, origin)), None) => {
            problem(origin, "given without a key: set tls_key (--tls-key, ESSL_TLS_KEY) too".into());
            Err(())
        }
        (None, Some((_, origin))) => {
            problem(origin, "given without a certificate: set tls_cert (--tls-cert, ESSL_TLS_CERT) too".into());
            Err(())
        }
        (None, None) => Ok(None),
    };

    let url = pick(&sources.supabase_url, file.supabase_url, in_file("supabase_url"), |v| v)
        .filter(|(u, _)| !u.trim().is_empty());
    let secret =
        pick(&sources.supabase_jwt_secret, file.supabase_jwt_secret, in_file("supabase_jwt_secret"), Secret::new)
            .filter(|(s, _)| !s.expose().trim().is_empty());
    // Each part is checked on its own, so that a problem names its own key.
    if let Some((url, origin)) = &url
        && let Some(config) = SupabaseConfig::new(None, Some(url.clone()))
        && let Err(e) = Supabase::new(config)
    {
        problem(origin.clone(), e.to_string());
    }
    if let Some((secret, origin)) = &secret
        && let Some(config) = SupabaseConfig::new(Some(secret.expose().to_owned()), None)
        && let Err(e) = Supabase::new(config)
    {
        problem(origin.clone(), e.to_string());
    }
    let supabase = SupabaseConfig::new(secret.map(|(s, _)| s.expose().to_owned()), url.map(|(u, _)| u));

    // A duration in the agent's syntax (`30s`, `500ms`, `2m`, or seconds), wherever it comes from.
    let shutdown_delay = pick(&sources.shutdown_delay, file.shutdown_delay, in_file("shutdown_delay"), |v| v).and_then(
        |(text, origin)| match essl_wire::parse_duration(&text) {
            Ok(delay) if delay <= SHUTDOWN_DELAY_MAX => Some(delay),
            Ok(delay) => {
                problem(origin, format!("{delay:?} is out of range; want 0s to {SHUTDOWN_DELAY_MAX:?}"));
                None
            }
            Err(message) => {
                problem(origin, message);
                None
            }
        },
    );

    // Whole numbers within bounds; from the command line or environment they arrive as text.
    let mut whole = |key: &str, given: &Option<Given<String>>, file: Option<i64>, (min, max): (i64, i64)| {
        let (value, origin) = match (given, file) {
            (Some(g), _) => match g.value.trim().parse::<i64>() {
                Ok(n) => (n, g.origin.clone()),
                Err(_) => {
                    problem(g.origin.clone(), format!("{:?} is not a whole number; want {min} to {max}", g.value));
                    return None;
                }
            },
            (None, Some(n)) => (n, in_file(key)),
            (None, None) => return None,
        };
        if (min..=max).contains(&value) {
            Some(u64::try_from(value).unwrap_or_default())
        } else {
            problem(origin, format!("{value} is out of range; want {min} to {max}"));
            None
        }
    };
    let push = PushSettings {
        delay: whole("push_delay_seconds", &sources.push_delay_seconds, file.push_delay_seconds, PUSH_DELAY_SECONDS)
            .map(Duration::from_secs),
        error_delay: whole(
            "push_error_delay_seconds",
            &sources.push_error_delay_seconds,
            file.push_error_delay_seconds,
            PUSH_ERROR_DELAY_SECONDS,
        )
        .map(Duration::from_secs),
        journal_retention: whole(
            "push_journal_days",
            &sources.push_journal_days,
            file.push_journal_days,
            PUSH_JOURNAL_DAYS,
        )
        .map(|days| Duration::from_secs(days * 86_400)),
        serial_rate: whole("push_serial_rate", &sources.push_serial_rate, file.push_serial_rate, PUSH_RATE),
        serial_burst: whole("push_serial_burst", &sources.push_serial_burst, file.push_serial_burst, PUSH_BURST),
        address_rate: whole("push_address_rate", &sources.push_address_rate, file.push_address_rate, PUSH_RATE),
        address_burst: whole("push_address_burst", &sources.push_address_burst, file.push_address_burst, PUSH_BURST),
        attlog_max: whole("push_attlog_max_kib", &sources.push_attlog_max_kib, file.push_attlog_max_kib, PUSH_BODY_KIB)
            .map(kib),
        operlog_max: whole(
            "push_operlog_max_kib",
            &sources.push_operlog_max_kib,
            file.push_operlog_max_kib,
            PUSH_BODY_KIB,
        )
        .map(kib),
        other_max: whole("push_other_max_kib", &sources.push_other_max_kib, file.push_other_max_kib, PUSH_BODY_KIB)
            .map(kib),
        command_resend: whole(
            "push_command_resend_seconds",
            &sources.push_command_resend_seconds,
            file.push_command_resend_seconds,
            PUSH_COMMAND_RESEND_SECONDS,
        )
        .map(Duration::from_secs),
        command_max_sends: whole(
            "push_command_max_sends",
            &sources.push_command_max_sends,
            file.push_command_max_sends,
            PUSH_COMMAND_MAX_SENDS,
        )
        .map(|n| i32::try_from(n).unwrap_or(i32::MAX)),
        command_expiry: whole(
            "push_command_expiry_days",
            &sources.push_command_expiry_days,
            file.push_command_expiry_days,
            PUSH_COMMAND_EXPIRY_DAYS,
        )
        .map(|days| Duration::from_secs(days * 86_400)),
    };

    match (listen, database_url, tls) {
        (Ok(listen), Ok(database_url), Ok(tls)) if problems.is_empty() => {
            Ok(Settings { listen, database_url, tls, supabase, push, shutdown_delay })
        }
        _ => Err(ConfigError { problems }),
    }
}

/// KiB to bytes (the bounds keep it far from overflowing).
fn kib(n: u64) -> usize {
    usize::try_from(n.saturating_mul(1024)).unwrap_or(usize::MAX)
}

fn read_file(path: &Path) -> Result<FileSettings, Problem> {
    let whole_file =
        |message: String| Problem { origin: Origin::File { path: path.to_path_buf(), key: String::new() }, message };
    let text = std::fs::read_to_string(path).map_err(|e| whole_file(format!("cannot read the settings file: {e}")))?;
    toml::from_str(&text).map_err(|e| {
        // The message only, never toml's excerpt of the source: that line could hold a secret.
        let (line, key) = e.span().map(|s| locate(&text, s.start)).unwrap_or((0, String::new()));
        let detail = if SECRET_KEYS.contains(&key.as_str()) {
            "invalid value (not shown: it may be secret); want a string".to_owned()
        } else {
            e.message().trim().to_owned()
        };
        let message = if line > 0 { format!("line {line}: {detail}") } else { detail };
        Problem { origin: Origin::File { path: path.to_path_buf(), key }, message }
    })
}

/// The 1-based line of `offset` and the key assigned on that line, if it looks like `key = ...`.
fn locate(text: &str, offset: usize) -> (usize, String) {
    let offset = offset.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line_no = before.matches('\n').count() + 1;
    let line = text.lines().nth(line_no - 1).unwrap_or("");
    let key = line.split_once('=').map(|(k, _)| k.trim().to_owned()).unwrap_or_default();
    let key = if key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.') {
        key
    } else {
        String::new()
    };
    (line_no, key)
}

fn relative_to(config_file: Option<&Path>, p: &Path) -> PathBuf {
    match config_file.and_then(Path::parent) {
        Some(dir) if p.is_relative() => dir.join(p),
        _ => p.to_path_buf(),
    }
}

fn check_certs(path: &Path) -> Result<(), String> {
    let iter = CertificateDer::pem_file_iter(path).map_err(|e| format!("cannot read {}: {e}", path.display()))?;
    let certs =
        iter.collect::<Result<Vec<_>, _>>().map_err(|e| format!("{} is not a PEM file: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)", path.display()));
    }
    Ok(())
}

fn check_key(path: &Path) -> Result<(), String> {
    // The error never quotes the file: it is a private key.
    PrivateKeyDer::from_pem_file(path)
        .map(|_| ())
        .map_err(|e| format!("{} holds no usable PEM private key ({e})", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tempdir(tag: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("essl-server-config-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("mkdir");
        dir
    }

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let p = dir.join(name);
        std::fs::write(&p, text).expect("write");
        p
    }

    fn file(p: &Path) -> Option<Given<PathBuf>> {
        Some(Given { value: p.to_path_buf(), origin: Origin::Flag("config") })
    }

    fn flag<T>(value: T, name: &'static str) -> Option<Given<T>> {
        Some(Given { value, origin: Origin::Flag(name) })
    }

    #[test]
    fn defaults() {
        let s = load(Sources::default()).expect("valid");
        assert_eq!(s.listen.to_string(), DEFAULT_LISTEN);
        assert_eq!(s.database_url, DEFAULT_DATABASE_URL);
        assert!(s.tls.is_none() && s.supabase.is_none());
    }

    #[test]
    fn flag_or_env_beats_file() {
        let dir = tempdir("precedence");
        let f = write(
            &dir,
            "server.toml",
            "listen = \"0.0.0.0:9000\"\ndatabase_url = \"postgres://u:p@db/essl\"\nsupabase_jwt_secret = \"0123456789abcdef0123456789abcdef\"\n",
        );
        let s = load(Sources { config_file: file(&f), ..Sources::default() }).expect("valid");
        assert_eq!(s.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(s.database_url, "postgres://u:p@db/essl");
        assert!(s.supabase.is_some_and(|c| c.jwt_secret.is_some()));
        let env = Some(Given { value: "127.0.0.1:7000".to_owned(), origin: Origin::Env("ESSL_LISTEN") });
        let s = load(Sources { config_file: file(&f), listen: env, ..Sources::default() }).expect("valid");
        assert_eq!(s.listen.to_string(), "127.0.0.1:7000");
        assert_eq!(s.database_url, "postgres://u:p@db/essl");
    }

    #[test]
    fn bad_values_name_key_and_file() {
        let dir = tempdir("bad");
        let f = write(
            &dir,
            "server.toml",
            "listen = \"everywhere\"\ndatabase_url = \"mysql://root:hunter2@db/x\"\nsupabase_jwt_secret = \"short-secret\"\nsupabase_url = \"http://example.com\"\ntls_cert = \"missing.pem\"\n",
        );
        let err = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("invalid");
        let text = err.to_string();
        for key in ["listen", "database_url", "supabase_jwt_secret", "supabase_url", "tls_cert"] {
            assert!(text.contains(&format!("`{key}` in {}", f.display())), "{key}: {text}");
        }
        assert_eq!(err.problems.len(), 5, "{text}");
        assert!(!text.contains("hunter2") && !text.contains("short-secret"), "a secret leaked: {text}");

        let f = write(&dir, "unknown.toml", "listen = \"0.0.0.0:8080\"\nlisten_port = 8080\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("unknown").to_string();
        assert!(text.contains("listen_port") && text.contains("line 2") && text.contains("unknown.toml"), "{text}");

        let f = write(&dir, "type.toml", "listen = 8080\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("type").to_string();
        assert!(text.contains("`listen` in") && text.contains("line 1"), "{text}");

        let f = write(&dir, "secret-type.toml", "supabase_jwt_secret = 1234567890123\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("type").to_string();
        assert!(text.contains("`supabase_jwt_secret` in") && !text.contains("1234567890123"), "{text}");

        let f = write(&dir, "syntax.toml", "listen = \"0.0.0.0:8080\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("syntax").to_string();
        assert!(text.contains("syntax.toml") && text.contains("line 1"), "{text}");

        let text = load(Sources { config_file: file(&dir.join("nope.toml")), ..Sources::default() })
            .expect_err("no file")
            .to_string();
        assert!(text.contains("nope.toml") && text.contains("cannot read"), "{text}");

        let text =
            load(Sources { listen: flag("x".into(), "listen"), ..Sources::default() }).expect_err("flag").to_string();
        assert!(text.starts_with("--listen: "), "{text}");
        let key = flag(dir.join("key.pem"), "tls-key");
        let text = load(Sources { tls_key: key, ..Sources::default() }).expect_err("half").to_string();
        assert!(text.starts_with("--tls-key: given without a certificate"), "{text}");
    }

    #[test]
    fn push_settings() {
        let dir = tempdir("push");
        let f = write(
            &dir,
            "server.toml",
            "push_delay_seconds = 30\npush_error_delay_seconds = 60\npush_journal_days = 7\n",
        );
        let s = load(Sources { config_file: file(&f), ..Sources::default() }).expect("valid");
        assert_eq!(s.push.delay, Some(Duration::from_secs(30)));
        assert_eq!(s.push.error_delay, Some(Duration::from_secs(60)));
        assert_eq!(s.push.journal_retention, Some(Duration::from_secs(7 * 86_400)));
        let applied = s.push.apply(essl_server::push::PushConfig::default());
        assert_eq!(applied.delay, Duration::from_secs(30));
        assert_eq!(applied.journal_retention, Duration::from_secs(7 * 86_400));
        // The environment (or a flag) wins over the file; nothing given keeps the defaults.
        let env = Some(Given { value: " 5 ".to_owned(), origin: Origin::Env("ESSL_PUSH_DELAY_SECONDS") });
        let s = load(Sources { config_file: file(&f), push_delay_seconds: env, ..Sources::default() }).expect("valid");
        assert_eq!(s.push.delay, Some(Duration::from_secs(5)));
        assert_eq!(load(Sources::default()).expect("valid").push, PushSettings::default());

        let f = write(
            &dir,
            "bad.toml",
            "push_delay_seconds = 0\npush_error_delay_seconds = 86400\npush_journal_days = -1\n",
        );
        let err = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("out of range");
        let text = err.to_string();
        for key in ["push_delay_seconds", "push_error_delay_seconds", "push_journal_days"] {
            assert!(text.contains(&format!("`{key}` in {}", f.display())), "{key}: {text}");
        }
        assert_eq!(err.problems.len(), 3, "{text}");
        // Rate limits, body caps and command retries: applied over the defaults, bounded like the others.
        let f = write(
            &dir,
            "limits.toml",
            "push_serial_rate = 2\npush_serial_burst = 20\npush_address_rate = 30\npush_address_burst = 300\n\
             push_attlog_max_kib = 512\npush_operlog_max_kib = 4096\npush_other_max_kib = 64\n\
             push_command_resend_seconds = 90\npush_command_max_sends = 2\npush_command_expiry_days = 1\n",
        );
        let burst = flag("25".to_owned(), "push-serial-burst");
        let s = load(Sources { config_file: file(&f), push_serial_burst: burst, ..Sources::default() }).expect("valid");
        let applied = s.push.apply(essl_server::push::PushConfig::default());
        assert_eq!((applied.per_serial, applied.per_address), ((2.0, 25.0), (30.0, 300.0)));
        assert_eq!((applied.attlog_max, applied.operlog_max, applied.other_max), (512 * 1024, 4096 * 1024, 64 * 1024));
        assert_eq!(applied.resend_after, Duration::from_secs(90));
        assert_eq!((applied.max_attempts, applied.command_ttl), (2, Duration::from_secs(86_400)));
        assert_eq!(applied.delay, essl_server::push::PushConfig::default().delay, "unset keys keep the defaults");
        let f = write(
            &dir,
            "limits-bad.toml",
            "push_serial_rate = 0\npush_serial_burst = 1000001\npush_address_rate = 100001\npush_address_burst = 0\n\
             push_attlog_max_kib = 0\npush_operlog_max_kib = 65537\npush_other_max_kib = -1\n\
             push_command_resend_seconds = 86401\npush_command_max_sends = 0\npush_command_expiry_days = 366\n",
        );
        let err = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("out of range");
        assert_eq!(err.problems.len(), 10, "{err}");
        let f = write(&dir, "type.toml", "push_journal_days = \"30\"\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("type").to_string();
        assert!(text.contains("`push_journal_days` in") && text.contains("line 1"), "{text}");
        let text = load(Sources {
            push_error_delay_seconds: flag("10s".into(), "push-error-delay-seconds"),
            ..Sources::default()
        })
        .expect_err("flag")
        .to_string();
        assert!(text.starts_with("--push-error-delay-seconds: \"10s\" is not a whole number"), "{text}");
    }

    #[test]
    fn shutdown_delay() {
        let dir = tempdir("shutdown-delay");
        assert_eq!(load(Sources::default()).expect("valid").shutdown_delay, None, "none given: the default");
        let f = write(&dir, "server.toml", "shutdown_delay = \"15s\"\n");
        let s = load(Sources { config_file: file(&f), ..Sources::default() }).expect("valid");
        assert_eq!(s.shutdown_delay, Some(Duration::from_secs(15)));
        // The environment (or a flag: clap gives one of the two) wins over the file.
        let env = Some(Given { value: "1500ms".to_owned(), origin: Origin::Env("ESSL_SHUTDOWN_DELAY") });
        let s = load(Sources { config_file: file(&f), shutdown_delay: env, ..Sources::default() }).expect("valid");
        assert_eq!(s.shutdown_delay, Some(Duration::from_millis(1500)));
        let s = load(Sources {
            config_file: file(&f),
            shutdown_delay: flag("0".into(), "shutdown-delay"),
            ..Sources::default()
        })
        .expect("valid");
        assert_eq!(s.shutdown_delay, Some(Duration::ZERO), "0 turns the delay off");
        let s =
            load(Sources { shutdown_delay: flag("2m".into(), "shutdown-delay"), ..Sources::default() }).expect("valid");
        assert_eq!(s.shutdown_delay, Some(Duration::from_secs(120)));

        // Bad values name the key and where it came from; a good flag hides a bad file.
        let f = write(&dir, "bad.toml", "shutdown_delay = \"soon\"\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("bad").to_string();
        assert_eq!(
            text,
            format!("`shutdown_delay` in {}: \"soon\" is not a duration; write e.g. 30s, 500ms, 2m", f.display())
        );
        let good = flag("10s".into(), "shutdown-delay");
        let s = load(Sources { config_file: file(&f), shutdown_delay: good, ..Sources::default() }).expect("valid");
        assert_eq!(s.shutdown_delay, Some(Duration::from_secs(10)));
        let f = write(&dir, "range.toml", "shutdown_delay = \"2h\"\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("range").to_string();
        assert_eq!(text, format!("`shutdown_delay` in {}: 7200s is out of range; want 0s to 3600s", f.display()));
        let f = write(&dir, "type.toml", "shutdown_delay = 10\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("type").to_string();
        assert!(text.contains("`shutdown_delay` in") && text.contains("line 1"), "{text}");
        let env = Some(Given { value: "-1s".to_owned(), origin: Origin::Env("ESSL_SHUTDOWN_DELAY") });
        let text = load(Sources { shutdown_delay: env, ..Sources::default() }).expect_err("env").to_string();
        assert!(text.starts_with("environment variable ESSL_SHUTDOWN_DELAY: \"-1s\" is not a duration"), "{text}");
        let text = load(Sources { shutdown_delay: flag("1.5s".into(), "shutdown-delay"), ..Sources::default() })
            .expect_err("flag")
            .to_string();
        assert!(text.starts_with("--shutdown-delay: \"1.5s\" is not a duration"), "{text}");
    }

    #[test]
    fn tls_paths_relative_to_the_file() {
        let dir = tempdir("tls");
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).expect("cert");
        write(&dir, "cert.pem", &cert.cert.pem());
        write(&dir, "key.pem", &cert.signing_key.serialize_pem());
        let f = write(&dir, "server.toml", "tls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n");
        let s = load(Sources { config_file: file(&f), ..Sources::default() }).expect("valid");
        assert_eq!(s.tls, Some((dir.join("cert.pem"), dir.join("key.pem"))));
        let f = write(&dir, "swapped.toml", "tls_cert = \"key.pem\"\ntls_key = \"cert.pem\"\n");
        let text = load(Sources { config_file: file(&f), ..Sources::default() }).expect_err("swapped").to_string();
        assert!(text.contains("`tls_cert` in") && text.contains("`tls_key` in"), "{text}");
    }
}
