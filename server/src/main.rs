//! `essl-server`: serve the API and the agent hub, or manage tokens.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser, Subcommand, ValueEnum};
use config::{Given, Origin, Settings, Sources};
use essl_server::app::{AppState, ServerConfig};
use essl_server::auth::token;
use essl_server::store::Store;
use essl_server::store::model::Role;

mod agent_tokens;
mod config;
#[cfg(feature = "demo")]
mod demo;
mod user_cli;

/// The cloud side of essl-relay: HTTP API for staff, WebSocket hub for office agents.
#[derive(Debug, Parser)]
#[command(name = "essl-server", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the API and the agent hub.
    // Boxed: its many settings would make every other variant as large.
    Serve(Box<ServeArgs>),
    /// Manage API tokens (for scripts and front-ends).
    #[command(subcommand)]
    Token(TokenCommand),
    /// Manage dashboard logins (people).
    #[command(subcommand)]
    User(UserCommand),
    /// Everything on this computer in one command: the server on a fresh SQLite file, a simulated terminal and
    /// an agent; prints the URL and an admin token, and runs the first sync.
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
}

#[derive(Debug, clap::Args)]
struct DbArgs {
    /// Database: `sqlite://PATH` (created on first run) or `postgres://...` [default: sqlite://essl-relay.db].
    #[arg(long, env = "ESSL_DATABASE_URL", hide_env_values = true)]
    database_url: Option<String>,
    /// A TOML settings file (keys: listen, database_url, tls_cert, tls_key, supabase_url, supabase_jwt_secret,
    /// push_delay_seconds, push_error_delay_seconds, push_journal_days, push_serial_rate, push_serial_burst,
    /// push_address_rate, push_address_burst, push_attlog_max_kib, push_operlog_max_kib, push_other_max_kib,
    /// push_command_resend_seconds, push_command_max_sends, push_command_expiry_days, shutdown_delay).
    /// Flags win over environment variables, which win over the file.
    #[arg(long, env = "ESSL_CONFIG", value_name = "FILE")]
    config: Option<String>,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "ESSL_LISTEN", value_name = "IP:PORT")]
    listen: Option<String>,
    #[command(flatten)]
    db: DbArgs,
    /// TLS certificate chain (PEM); with --tls-key, serve HTTPS and wss.
    #[arg(long, env = "ESSL_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<String>,
    /// TLS private key (PEM).
    #[arg(long, env = "ESSL_TLS_KEY", value_name = "FILE")]
    tls_key: Option<String>,
    /// Supabase project URL (https://<project>.supabase.co): accept Supabase-issued JWTs signed with the
    /// project's signing keys (ES256/RS256; public keys fetched from <url>/auth/v1/.well-known/jwks.json), and
    /// require the issuer <url>/auth/v1 of every Supabase token.
    #[arg(long, env = "ESSL_SUPABASE_URL", value_name = "URL")]
    supabase_url: Option<String>,
    /// Supabase project's legacy JWT secret: accept Supabase-issued HS256 JWTs signed with it. Prefer the
    /// environment variable or the settings file: command lines are visible to other users of the machine.
    #[arg(long, env = "ESSL_SUPABASE_JWT_SECRET", hide_env_values = true, value_name = "SECRET")]
    supabase_jwt_secret: Option<token::Secret>,
    /// Push (ADMS) terminals: seconds between their polls, told to them as `Delay` (1 to 3600) [default: 10].
    /// A push terminal counts as reachable while it called within three of these.
    #[arg(long, env = "ESSL_PUSH_DELAY_SECONDS", value_name = "SECONDS")]
    push_delay_seconds: Option<String>,
    /// Push terminals: seconds they wait after a failed request, told to them as `ErrorDelay` (1 to 3600)
    /// [default: 30].
    #[arg(long, env = "ESSL_PUSH_ERROR_DELAY_SECONDS", value_name = "SECONDS")]
    push_error_delay_seconds: Option<String>,
    /// Days the push request journal is kept (1 to 3650) [default: 30].
    #[arg(long, env = "ESSL_PUSH_JOURNAL_DAYS", value_name = "DAYS")]
    push_journal_days: Option<String>,
    /// Push terminals: requests per second one serial number may send, sustained (1 to 100000) [default: 10].
    #[arg(long, env = "ESSL_PUSH_SERIAL_RATE", value_name = "N")]
    push_serial_rate: Option<String>,
    /// Push terminals: requests one serial number may send at once, above its rate (1 to 1000000) [default: 200].
    #[arg(long, env = "ESSL_PUSH_SERIAL_BURST", value_name = "N")]
    push_serial_burst: Option<String>,
    /// Push terminals: requests per second one client address may send, sustained (1 to 100000) [default: 50].
    /// Terminals behind one NAT share it.
    #[arg(long, env = "ESSL_PUSH_ADDRESS_RATE", value_name = "N")]
    push_address_rate: Option<String>,
    /// Push terminals: requests one client address may send at once (1 to 1000000) [default: 1000].
    #[arg(long, env = "ESSL_PUSH_ADDRESS_BURST", value_name = "N")]
    push_address_burst: Option<String>,
    /// Push terminals: largest ATTLOG (and rtlog) upload, KiB (1 to 65536) [default: 1024]; larger is refused (413).
    #[arg(long, env = "ESSL_PUSH_ATTLOG_MAX_KIB", value_name = "KIB")]
    push_attlog_max_kib: Option<String>,
    /// Push terminals: largest OPERLOG, USERINFO, BIODATA or tabledata upload, KiB (1 to 65536) [default: 8192].
    #[arg(long, env = "ESSL_PUSH_OPERLOG_MAX_KIB", value_name = "KIB")]
    push_operlog_max_kib: Option<String>,
    /// Push terminals: largest body of any other request, KiB (1 to 65536) [default: 2048].
    #[arg(long, env = "ESSL_PUSH_OTHER_MAX_KIB", value_name = "KIB")]
    push_other_max_kib: Option<String>,
    /// Push commands: a command sent without a result is sent again after this many seconds (1 to 86400)
    /// [default: 60].
    #[arg(long, env = "ESSL_PUSH_COMMAND_RESEND_SECONDS", value_name = "SECONDS")]
    push_command_resend_seconds: Option<String>,
    /// Push commands: sends before a command without a result expires (1 to 100) [default: 5].
    #[arg(long, env = "ESSL_PUSH_COMMAND_MAX_SENDS", value_name = "N")]
    push_command_max_sends: Option<String>,
    /// Push commands: days a queued command waits for its terminal before it expires (1 to 365) [default: 7].
    #[arg(long, env = "ESSL_PUSH_COMMAND_EXPIRY_DAYS", value_name = "DAYS")]
    push_command_expiry_days: Option<String>,
    /// On SIGTERM or Ctrl-C, go on serving this long with /readyz answering 503 before the shutdown begins (stop
    /// accepting, grace period, agents told to reconnect), so that a load balancer that only health-checks takes
    /// the instance out of rotation first: a few of its health-check intervals, e.g. 15s (500ms, 30s, 2m; 0 to
    /// 1h) [default: 0, the shutdown begins at the signal]. A second signal ends the delay.
    #[arg(long, env = "ESSL_SHUTDOWN_DELAY", value_name = "DURATION")]
    shutdown_delay: Option<String>,
}

#[derive(Debug, Subcommand)]
enum TokenCommand {
    /// Create an API token and print it once (only its hash is stored).
    Create {
        #[arg(long, value_enum)]
        role: RoleArg,
        #[arg(long)]
        name: String,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Create agent tokens in bulk (for load tests and mass roll-outs): N agents of one site, their tokens
    /// written one per line to --out (created with mode 0600) or to standard output, never logged.
    CreateAgents {
        /// How many agents (1 to 100,000).
        #[arg(long, value_parser = clap::value_parser!(u32).range(1..=100_000))]
        count: u32,
        /// Site of the agents; created if new.
        #[arg(long)]
        site: String,
        /// Agent names are this, a dash and a number from 1 (e.g. `bench-00001`).
        #[arg(long, default_value = "agent")]
        name_prefix: String,
        /// File for the tokens (must not exist yet); standard output if not given.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Add a dashboard login. Prints a generated password once, unless --password-stdin.
    Create {
        /// User name: 1 to 64 letters, digits or `._@-` (compared without case).
        #[arg(long)]
        name: String,
        #[arg(long, value_enum)]
        role: RoleArg,
        /// Read the password (at least 10 characters) from the first line of standard input.
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// Set a new password (ends the user's sessions). Prints a generated one unless --password-stdin.
    Password {
        #[arg(long)]
        name: String,
        #[arg(long)]
        password_stdin: bool,
        #[command(flatten)]
        db: DbArgs,
    },
    /// List the dashboard logins.
    List {
        #[command(flatten)]
        db: DbArgs,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum RoleArg {
    Admin,
    Staff,
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The settings are checked before anything starts: a bad value exits with code 2, naming its key and source.
    let work = match cli.command {
        Command::Serve(args) => {
            let m = matches.subcommand_matches("serve").unwrap_or(&matches);
            let sources = Sources {
                listen: given(args.listen, m, "listen", "listen", "ESSL_LISTEN"),
                tls_cert: given(args.tls_cert.map(PathBuf::from), m, "tls_cert", "tls-cert", "ESSL_TLS_CERT"),
                tls_key: given(args.tls_key.map(PathBuf::from), m, "tls_key", "tls-key", "ESSL_TLS_KEY"),
                supabase_url: given(args.supabase_url, m, "supabase_url", "supabase-url", "ESSL_SUPABASE_URL"),
                supabase_jwt_secret: given(
                    args.supabase_jwt_secret,
                    m,
                    "supabase_jwt_secret",
                    "supabase-jwt-secret",
                    "ESSL_SUPABASE_JWT_SECRET",
                ),
                push_delay_seconds: given(
                    args.push_delay_seconds,
                    m,
                    "push_delay_seconds",
                    "push-delay-seconds",
                    "ESSL_PUSH_DELAY_SECONDS",
                ),
                push_error_delay_seconds: given(
                    args.push_error_delay_seconds,
                    m,
                    "push_error_delay_seconds",
                    "push-error-delay-seconds",
                    "ESSL_PUSH_ERROR_DELAY_SECONDS",
                ),
                push_journal_days: given(
                    args.push_journal_days,
                    m,
                    "push_journal_days",
                    "push-journal-days",
                    "ESSL_PUSH_JOURNAL_DAYS",
                ),
                push_serial_rate: given(
                    args.push_serial_rate,
                    m,
                    "push_serial_rate",
                    "push-serial-rate",
                    "ESSL_PUSH_SERIAL_RATE",
                ),
                push_serial_burst: given(
                    args.push_serial_burst,
                    m,
                    "push_serial_burst",
                    "push-serial-burst",
                    "ESSL_PUSH_SERIAL_BURST",
                ),
                push_address_rate: given(
                    args.push_address_rate,
                    m,
                    "push_address_rate",
                    "push-address-rate",
                    "ESSL_PUSH_ADDRESS_RATE",
                ),
                push_address_burst: given(
                    args.push_address_burst,
                    m,
                    "push_address_burst",
                    "push-address-burst",
                    "ESSL_PUSH_ADDRESS_BURST",
                ),
                push_attlog_max_kib: given(
                    args.push_attlog_max_kib,
                    m,
                    "push_attlog_max_kib",
                    "push-attlog-max-kib",
                    "ESSL_PUSH_ATTLOG_MAX_KIB",
                ),
                push_operlog_max_kib: given(
                    args.push_operlog_max_kib,
                    m,
                    "push_operlog_max_kib",
                    "push-operlog-max-kib",
                    "ESSL_PUSH_OPERLOG_MAX_KIB",
                ),
                push_other_max_kib: given(
                    args.push_other_max_kib,
                    m,
                    "push_other_max_kib",
                    "push-other-max-kib",
                    "ESSL_PUSH_OTHER_MAX_KIB",
                ),
                push_command_resend_seconds: given(
                    args.push_command_resend_seconds,
                    m,
                    "push_command_resend_seconds",
                    "push-command-resend-seconds",
                    "ESSL_PUSH_COMMAND_RESEND_SECONDS",
                ),
                push_command_max_sends: given(
                    args.push_command_max_sends,
                    m,
                    "push_command_max_sends",
                    "push-command-max-sends",
                    "ESSL_PUSH_COMMAND_MAX_SENDS",
                ),
                push_command_expiry_days: given(
                    args.push_command_expiry_days,
                    m,
                    "push_command_expiry_days",
                    "push-command-expiry-days",
                    "ESSL_PUSH_COMMAND_EXPIRY_DAYS",
                ),
                shutdown_delay: given(
                    args.shutdown_delay,
                    m,
                    "shutdown_delay",
                    "shutdown-delay",
                    "ESSL_SHUTDOWN_DELAY",
                ),
                ..db_sources(args.db, m)
            };
            match config::load(sources) {
                Ok(settings) => Work::Serve(Box::new(settings)),
                Err(e) => return invalid(&e),
            }
        }
        Command::Token(TokenCommand::Create { role, name, db }) => {
            let m =
                matches.subcommand_matches("token").and_then(|m| m.subcommand_matches("create")).unwrap_or(&matches);
            match config::load(db_sources(db, m)) {
                Ok(settings) => Work::CreateToken { role, name, database_url: settings.database_url },
                Err(e) => return invalid(&e),
            }
        }
        Command::Token(TokenCommand::CreateAgents { count, site, name_prefix, out, db }) => {
            let m = matches
                .subcommand_matches("token")
                .and_then(|m| m.subcommand_matches("create-agents"))
                .unwrap_or(&matches);
            match config::load(db_sources(db, m)) {
                Ok(settings) => Work::CreateAgents {
                    bulk: agent_tokens::Bulk { count, site, name_prefix, out },
                    database_url: settings.database_url,
                },
                Err(e) => return invalid(&e),
            }
        }
        Command::User(command) => {
            let m = matches.subcommand_matches("user").and_then(|m| m.subcommand()).map(|(_, m)| m).unwrap_or(&matches);
            let (db, action) = match command {
                UserCommand::Create { name, role, password_stdin, db } => {
                    (db, UserAction::Create { name, role: role.into(), source: source(password_stdin) })
                }
                UserCommand::Password { name, password_stdin, db } => {
                    (db, UserAction::Password { name, source: source(password_stdin) })
                }
                UserCommand::List { db } => (db, UserAction::List),
            };
            match config::load(db_sources(db, m)) {
                Ok(settings) => Work::User { action, database_url: settings.database_url },
                Err(e) => return invalid(&e),
            }
        }
        #[cfg(feature = "demo")]
        Command::Demo(args) => Work::Demo(args),
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("essl-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match work {
            Work::Serve(settings) => serve(*settings).await,
            Work::CreateToken { role, name, database_url } => create_token(role, &name, &database_url).await,
            Work::CreateAgents { bulk, database_url } => {
                let store = open_store(&database_url).await?;
                let result = agent_tokens::create(&store, &bulk).await;
                store.close().await;
                result
            }
            Work::User { action, database_url } => {
                let store = open_store(&database_url).await?;
                match action {
                    UserAction::Create { name, role, source } => user_cli::create(&store, &name, role, source).await,
                    UserAction::Password { name, source } => user_cli::set_password(&store, &name, source).await,
                    UserAction::List => user_cli::list(&store).await,
                }
            }
            #[cfg(feature = "demo")]
            Work::Demo(args) => demo::run(args, shutdown_signal()).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("essl-server: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// What `main` runs once the settings are valid.
enum Work {
    Serve(Box<Settings>),
    CreateToken {
        role: RoleArg,
        name: String,
        database_url: String,
    },
    CreateAgents {
        bulk: agent_tokens::Bulk,
        database_url: String,
    },
    User {
        action: UserAction,
        database_url: String,
    },
    #[cfg(feature = "demo")]
    Demo(demo::DemoArgs),
}

enum UserAction {
    Create { name: String, role: Role, source: user_cli::NewPassword },
    Password { name: String, source: user_cli::NewPassword },
    List,
}

fn source(stdin: bool) -> user_cli::NewPassword {
    if stdin { user_cli::NewPassword::Stdin } else { user_cli::NewPassword::Generated }
}

impl From<RoleArg> for Role {
    fn from(r: RoleArg) -> Role {
        match r {
            RoleArg::Admin => Role::Admin,
            RoleArg::Staff => Role::Staff,
        }
    }
}

fn invalid(e: &config::ConfigError) -> ExitCode {
    eprintln!("essl-server: invalid configuration:\n{e}");
    ExitCode::from(2)
}

/// A value from the command line, tagged with where clap found it (the flag or its environment variable). An
/// empty variable counts as unset (compose files write `VAR: ${VAR:-}`).
fn given<T>(value: Option<T>, m: &ArgMatches, id: &str, flag: &'static str, env: &'static str) -> Option<Given<T>> {
    let origin = match m.value_source(id) {
        Some(ValueSource::EnvVariable) if std::env::var_os(env).is_some_and(|v| v.is_empty()) => return None,
        Some(ValueSource::EnvVariable) => Origin::Env(env),
        _ => Origin::Flag(flag),
    };
    value.map(|value| Given { value, origin })
}

fn db_sources(db: DbArgs, m: &ArgMatches) -> Sources {
    Sources {
        config_file: given(db.config.map(PathBuf::from), m, "config", "config", "ESSL_CONFIG"),
        database_url: given(db.database_url, m, "database_url", "database-url", "ESSL_DATABASE_URL"),
        ..Sources::default()
    }
}

async fn open_store(database_url: &str) -> anyhow::Result<Store> {
    Store::connect(database_url).await.with_context(|| format!("opening the database {}", redact(database_url)))
}

/// A database URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &url[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{}{}:***{}", &url[..scheme + 3], user, &url[at..])
        }
        _ => url.to_owned(),
    }
}

async fn create_token(role: RoleArg, name: &str, database_url: &str) -> anyhow::Result<()> {
    anyhow::ensure!(!name.trim().is_empty() && name.len() <= 100, "--name must be 1 to 100 characters");
    let store = open_store(database_url).await?;
    let new = token::generate(token::API_PREFIX).context("no random source")?;
    let role = Role::from(role);
    store.create_api_token_with_id(new.id, name, role, &new.hash).await?;
    println!("{}", new.token.expose());
    eprintln!("Token for {name:?} ({role:?}) created. It is shown this once; only its hash is stored.");
    Ok(())
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let store = open_store(&settings.database_url).await?;
    let defaults = ServerConfig::default();
    let config = ServerConfig {
        tls: settings.tls.is_some(),
        push: settings.push.apply(essl_server::push::PushConfig::default()),
        shutdown_delay: settings.shutdown_delay.unwrap_or(defaults.shutdown_delay),
        ..defaults
    };
    tracing::info!(
        shutdown_delay_ms = u64::try_from(config.shutdown_delay.as_millis()).unwrap_or(u64::MAX),
        grace_s = config.grace.as_secs(),
        "on SIGTERM: /readyz answers 503 for the shutdown delay, then in-flight requests get the grace period"
    );
    tracing::info!(
        delay_s = config.push.delay.as_secs(),
        error_delay_s = config.push.error_delay.as_secs(),
        journal_days = config.push.journal_retention.as_secs() / 86_400,
        serial_rate = config.push.per_serial.0,
        serial_burst = config.push.per_serial.1,
        address_rate = config.push.per_address.0,
        address_burst = config.push.per_address.1,
        attlog_max_kib = config.push.attlog_max / 1024,
        operlog_max_kib = config.push.operlog_max / 1024,
        other_max_kib = config.push.other_max / 1024,
        command_resend_s = config.push.resend_after.as_secs(),
        command_max_sends = config.push.max_attempts,
        command_expiry_days = config.push.command_ttl.as_secs() / 86_400,
        "push terminals: poll interval, retry delay, journal retention, rate limits, body caps, command retries"
    );
    let mut state = AppState::new(store, config);
    if let Some(config) = settings.supabase {
        state.auth = state.auth.clone().with_supabase(config).context("Supabase logins")?;
        let supabase = state.auth.supabase();
        tracing::info!(
            hs256 = supabase.is_some_and(|s| s.accepts_hs256()),
            issuer = supabase.and_then(|s| s.issuer()).unwrap_or("(not checked)"),
            "accepting Supabase JWTs"
        );
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("listening on {}", settings.listen))?;
    let addr = listener.local_addr()?;
    let signal = first_signal_then_hurry(&state);
    match settings.tls {
        Some((cert, key)) => {
            tracing::info!(%addr, "serving HTTPS and wss");
            essl_server::tls::serve(listener, state, &cert, &key, signal).await?;
        }
        None => {
            tracing::info!(%addr, backend = state.store.backend(), "serving HTTP and ws");
            essl_server::app::run(listener, state, signal).await?;
        }
    }
    Ok(())
}

/// The shutdown signal of `serve`: completes at the first SIGTERM or Ctrl-C; a second one, during the shutdown
/// delay, begins the shutdown at once (an operator who means "now", or a supervisor that grew impatient).
fn first_signal_then_hurry(state: &AppState) -> impl Future<Output = ()> + Send + 'static {
    let shutdown = state.shutdown.clone();
    async move {
        let mut signals = Signals::new();
        signals.next().await;
        tokio::spawn(async move {
            signals.next().await;
            if !shutdown.is_cancelled() {
                tracing::info!("second signal: the shutdown begins now, without the rest of the delay");
            }
            shutdown.cancel();
        });
    }
}

#[cfg(feature = "demo")]
async fn shutdown_signal() {
    Signals::new().next().await;
}

/// SIGTERM and Ctrl-C, each time one comes. The listeners are kept from one signal to the next, so a second signal
/// that follows the first closely is not missed.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals { term: signal(SignalKind::terminate()).ok(), interrupt: signal(SignalKind::interrupt()).ok() }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    async fn next(&mut self) {
        #[cfg(unix)]
        {
            // A listener that could not be set up (or ended) never fires; the other still does.
            async fn one(signal: &mut Option<tokio::signal::unix::Signal>) {
                if let Some(s) = signal
                    && s.recv().await.is_some()
                {
                    return;
                }
                std::future::pending().await
            }
            tokio::select! {
                () = one(&mut self.term) => {}
                () = one(&mut self.interrupt) => {}
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::redact;

    #[test]
    fn passwords_are_not_printed() {
        assert_eq!(redact("postgres://u:secret@db:5432/x"), "postgres://u:***@db:5432/x");
        assert_eq!(redact("sqlite://essl.db"), "sqlite://essl.db");
    }
}
