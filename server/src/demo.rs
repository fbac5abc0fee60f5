//! `essl-server demo`: the whole system on this computer in one command. A server on a fresh SQLite file, a
//! simulated terminal with realistic data (a new punch every few seconds), and the real agent connected over a
//! real WebSocket; the first sync runs by itself and its result is printed.
//!
//! A module of the binary, not of the library, compiled only with the `demo` feature: the simulator and the agent
//! speak the terminal protocol (`essl-zk`), which the server itself never does.

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use essl_server::app::{AppState, ServerConfig};
use essl_server::auth::token;
use essl_server::hub::{HubConfig, HubEvent};
use essl_server::store::Store;
use essl_server::store::model::{DeviceKind, NewDevice, Role};
use essl_zk_sim::{Simulator, Terminal, TerminalConfig};
use tokio_util::sync::CancellationToken;

/// Prefix of the line that gives the bound address (scripts and tests read it).
pub const LISTENING: &str = "listening on http://";
/// Prefix of the line that gives the admin token.
pub const ADMIN_TOKEN: &str = "admin token: ";
/// Prefix of the line that gives the dashboard's address.
pub const DASHBOARD: &str = "dashboard: ";
/// Prefix of the line that gives the dashboard login, `<user> / <password>`.
pub const LOGIN: &str = "dashboard login: ";
/// Prefix of the line that gives the first sync's result.
pub const FIRST_SYNC: &str = "first sync: ";

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Address of the server (port 0 picks a free port; the address is printed).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Attendance records the simulated terminal starts with.
    #[arg(long, default_value_t = 2000, value_parser = clap::value_parser!(u32).range(0..=200_000))]
    records: u32,
    /// Enrolled users of the simulated terminal.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u16).range(1..))]
    users: u16,
    /// Seconds between two punches on the simulated terminal (0: none).
    #[arg(long, default_value_t = 5)]
    punch_every: u64,
    /// A new SQLite file to keep; default: a fresh file in the temporary directory, removed on exit.
    #[arg(long, value_name = "PATH")]
    database: Option<PathBuf>,
}

/// Runs the demo until `shutdown` completes.
pub async fn run(args: DemoArgs, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
    let (db_path, temporary) = match &args.database {
        Some(p) if p.exists() => anyhow::bail!("{} exists; the demo starts from a new database file", p.display()),
        Some(p) => (p.clone(), false),
        None => (std::env::temp_dir().join(format!("essl-demo-{}.db", uuid::Uuid::new_v4().simple())), true),
    };
    let outbox = PathBuf::from(format!("{}.agent-outbox", db_path.display()));
    let result = demo(&args, &db_path, &outbox, shutdown).await;
    for suffix in ["", "-wal", "-shm"] {
        // The agent's outbox is the demo's own; the database only when it was a temporary one.
        let _ = std::fs::remove_file(format!("{}{suffix}", outbox.display()));
        if temporary {
            let _ = std::fs::remove_file(format!("{}{suffix}", db_path.display()));
        }
    }
    result
}

async fn demo(
    args: &DemoArgs,
    db_path: &Path,
    outbox: &Path,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let store = Store::connect(&format!("sqlite://{}", db_path.display()))
        .await
        .with_context(|| format!("opening the demo database {}", db_path.display()))?;

    // The terminal: generated staff and punches, TCP and UDP on a free loopback port.
    let fixture = essl_zk_sim::generate::generate(usize::from(args.users), args.records as usize, 42);
    let terminal = Terminal::new(&fixture, TerminalConfig { max_sessions: 16, ..TerminalConfig::default() })
        .context("the generated terminal data")?;
    let sim = Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), terminal)
        .await
        .context("starting the simulated terminal")?;

    // What an admin would set up through the API: a token for themselves, an office, its terminal, its agent.
    let admin = token::generate(token::API_PREFIX).context("no random source")?;
    store.create_api_token_with_id(admin.id, "demo admin", Role::Admin, &admin.hash).await?;
    // And a dashboard login, with a random password (the demo's server listens on loopback, but even so).
    let password = essl_server::auth::password::generate().context("no random source")?;
    let hash = {
        let password = password.clone();
        tokio::task::spawn_blocking(move || essl_server::auth::password::hash(&password)).await??
    };
    store.create_user("admin", Role::Admin, &hash).await?;
    let site = store.ensure_site("Demo office").await?;
    let device = store
        .create_device(&NewDevice {
            name: "Front door (simulated)".into(),
            kind: DeviceKind::Pull,
            ip_address: sim.addr.ip().to_string(),
            port: sim.addr.port(),
            comm_key: 0,
            udp: false,
            serial_number: Some(fixture.device.serial_number.clone()),
            timezone: "Asia/Kolkata".into(),
            site_id: Some(site.id),
            active: true,
        })
        .await?;
    let agent_token = token::generate(token::AGENT_PREFIX).context("no random source")?;
    store.create_agent_with_id(agent_token.id, "demo-agent", site.id, &agent_token.hash).await?;

    // The server.
    let hub = HubConfig { probe_interval: Duration::from_secs(10), ..HubConfig::default() };
    let state = AppState::new(store, ServerConfig { hub, grace: Duration::from_secs(3), ..ServerConfig::default() });
    let listener =
        tokio::net::TcpListener::bind(args.listen).await.with_context(|| format!("listening on {}", args.listen))?;
    let addr = listener.local_addr()?;
    let mut events = state.hub.subscribe();
    let stop_server = CancellationToken::new();
    let server = {
        let stop = stop_server.clone();
        tokio::spawn(essl_server::app::run(listener, state.clone(), async move { stop.cancelled().await }))
    };

    // The agent, as `essl-agent run` would start it, over a real WebSocket.
    let ws = format!("ws://{addr}/agent/ws");
    let url = essl_agent::config::ServerUrl::parse(&ws).map_err(anyhow::Error::msg)?;
    let mut config = essl_agent::config::Config::new(url, essl_agent::config::Secret::new(agent_token.token.expose()));
    // The agent's outbox beside the demo's database, not in the working directory.
    config.collect = essl_agent::config::Collect::new(outbox.to_path_buf());
    let stop_agent = CancellationToken::new();
    let agent = {
        let stop = stop_agent.clone();
        tokio::spawn(async move {
            if let Err(error) = essl_agent::relay::run(config, stop).await {
                tracing::error!(%error, "the demo agent cannot run");
            }
        })
    };

    // A punch every few seconds, as staff come and go.
    let stop_punches = CancellationToken::new();
    if args.punch_every > 0 {
        let terminal = sim.terminal.clone();
        let stop = stop_punches.clone();
        let every = Duration::from_secs(args.punch_every);
        tokio::spawn(async move {
            let mut n: usize = 0;
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(every) => {}
                }
                n = n.wrapping_add(1);
                let record = terminal.punch(n.wrapping_mul(7) % 1000, 1, u8::from(n.is_multiple_of(2)));
                tracing::debug!(user = %record.user_id, time = %record.timestamp, "simulated punch");
            }
        });
    }

    let admin = admin.token.expose();
    let base = format!("http://{addr}");
    println!("{LISTENING}{addr}");
    println!("{ADMIN_TOKEN}{admin}");
    println!("{DASHBOARD}{base}/");
    println!("{LOGIN}admin / {}", password.expose());
    println!();
    println!("essl-relay demo: a server, a simulated terminal and an agent, all on this computer. Ctrl-C stops it.");
    println!("  dashboard  {base}/   (user admin, the password above)");
    println!("  API        {base}/api/...   (every route takes Authorization: Bearer <admin token>)");
    println!("  database   {} (SQLite)", db_path.display());
    println!(
        "  terminal   {} (simulated {}, {} users, {} punches{})",
        sim.addr,
        fixture.device.device_name,
        fixture.users.len(),
        fixture.attendance.len(),
        if args.punch_every > 0 { format!(", one more every {} s", args.punch_every) } else { String::new() }
    );
    println!("  device     {} ({})", device.name, device.id);
    println!("  agent      demo-agent, connected to {ws}");
    println!();
    println!("Try the seed's routes:");
    println!("  export ESSL={base} ADMIN={admin}");
    println!("  curl -s -X POST -H \"Authorization: Bearer $ADMIN\" $ESSL/api/essl/check-device");
    println!(
        "  curl -s -X POST -H \"Authorization: Bearer $ADMIN\" -H 'content-type: application/json' \
         $ESSL/api/essl/sync-attendance -d '{{\"deviceId\":\"{}\"}}'",
        device.id
    );
    println!("  curl -s -H \"Authorization: Bearer $ADMIN\" $ESSL/api/essl/sync-status");
    println!("  curl -s -H \"Authorization: Bearer $ADMIN\" \"$ESSL/api/attendance?deviceId={}&limit=5\"", device.id);
    println!("  curl -s -H \"Authorization: Bearer $ADMIN\" \"$ESSL/api/attendance?format=csv\" > attendance.csv");
    println!();

    // The first sync, once the agent has said it reaches the terminal.
    let reached = tokio::time::timeout(Duration::from_secs(30), async {
        if state.hub.reachability(device.id).iter().any(|r| r.reachable) {
            return true;
        }
        loop {
            match events.recv().await {
                Ok(HubEvent::Reachability { device_id, reachable: true, .. }) if device_id == device.id => {
                    return true;
                }
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return false,
            }
        }
    })
    .await
    .unwrap_or(false);
    if reached {
        let sync = essl_server::sync::sync_device(&state, device.clone(), None).await?;
        let ms = sync.duration.as_millis();
        match sync.result {
            Ok(s) => {
                // The agent also syncs on its own (at connect, then on a schedule): count what is stored.
                let stored = state.store.count_attendance(Some(device.id)).await?;
                println!(
                    "{FIRST_SYNC}ok in {ms} ms: {stored} attendance records stored for this device ({} new from this sync)",
                    s.inserted
                );
            }
            Err(e) => println!("{FIRST_SYNC}failed after {ms} ms: {e}"),
        }
    } else {
        println!("{FIRST_SYNC}failed: the agent did not report the terminal reachable within 30 s (see the log)");
    }
    println!("New punches reach the database by themselves (realtime); POST the sync route to fetch everything again.");

    shutdown.await;
    eprintln!("essl-relay demo: stopping");
    stop_punches.cancel();
    stop_agent.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(5), agent).await;
    stop_server.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(10), server).await;
    sim.stop().await;
    state.store.close().await;
    Ok(())
}
