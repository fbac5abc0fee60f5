//! `essl-server`: serve the API and the agent hub, or manage tokens.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use essl_server::app::{AppState, ServerConfig};
use essl_server::auth::{SupabaseConfig, token};
use essl_server::store::Store;
use essl_server::store::model::Role;

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
    Serve(ServeArgs),
    /// Manage API tokens.
    #[command(subcommand)]
    Token(TokenCommand),
}

#[derive(Debug, clap::Args)]
struct DbArgs {
    /// Database: `sqlite://PATH` (created on first run) or `postgres://...`.
    #[arg(long, env = "ESSL_DATABASE_URL", default_value = "sqlite://essl-relay.db")]
    database_url: String,
}

#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "ESSL_LISTEN", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    #[command(flatten)]
    db: DbArgs,
    /// TLS certificate chain (PEM); with --tls-key, serve HTTPS and wss.
    #[arg(long, env = "ESSL_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM).
    #[arg(long, env = "ESSL_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Supabase project URL (https://<project>.supabase.co): accept Supabase-issued JWTs signed with the
    /// project's signing keys (ES256/RS256; public keys fetched from <url>/auth/v1/.well-known/jwks.json), and
    /// require the issuer <url>/auth/v1 of every Supabase token.
    #[arg(long, env = "ESSL_SUPABASE_URL", value_name = "URL")]
    supabase_url: Option<String>,
    /// Supabase project's legacy JWT secret: accept Supabase-issued HS256 JWTs signed with it. Prefer the
    /// environment variable: command lines are visible to other users of the machine.
    #[arg(long, env = "ESSL_SUPABASE_JWT_SECRET", hide_env_values = true, value_name = "SECRET")]
    supabase_jwt_secret: Option<token::Secret>,
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
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("essl-server: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => serve(args).await,
            Command::Token(TokenCommand::Create { role, name, db }) => create_token(role, &name, &db).await,
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

async fn open_store(db: &DbArgs) -> anyhow::Result<Store> {
    Store::connect(&db.database_url).await.with_context(|| format!("opening the database {}", redact(&db.database_url)))
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

async fn create_token(role: RoleArg, name: &str, db: &DbArgs) -> anyhow::Result<()> {
    anyhow::ensure!(!name.trim().is_empty() && name.len() <= 100, "--name must be 1 to 100 characters");
    let store = open_store(db).await?;
    let new = token::generate(token::API_PREFIX).context("no random source")?;
    let role = match role {
        RoleArg::Admin => Role::Admin,
        RoleArg::Staff => Role::Staff,
    };
    store.create_api_token_with_id(new.id, name, role, &new.hash).await?;
    println!("{}", new.token.expose());
    eprintln!("Token for {name:?} ({role:?}) created. It is shown this once; only its hash is stored.");
    Ok(())
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let store = open_store(&args.db).await?;
    let mut state = AppState::new(store, ServerConfig::default());
    let secret = args.supabase_jwt_secret.map(|s| s.expose().to_owned());
    if let Some(config) = SupabaseConfig::new(secret, args.supabase_url) {
        state.auth = state.auth.clone().with_supabase(config).context("Supabase logins")?;
        let supabase = state.auth.supabase();
        tracing::info!(
            hs256 = supabase.is_some_and(|s| s.accepts_hs256()),
            issuer = supabase.and_then(|s| s.issuer()).unwrap_or("(not checked)"),
            "accepting Supabase JWTs"
        );
    }
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    match (args.tls_cert, args.tls_key) {
        (Some(cert), Some(key)) => {
            tracing::info!(%addr, "serving HTTPS and wss");
            essl_server::tls::serve(listener, state, &cert, &key, shutdown_signal()).await?;
        }
        _ => {
            tracing::info!(%addr, backend = state.store.backend(), "serving HTTP and ws");
            essl_server::app::run(listener, state, shutdown_signal()).await?;
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
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
