//! The soak: a simulated terminal punching continuously, one server, agents reaching it through a TCP proxy each,
//! and random faults every few seconds for `--seconds`; then everything heals, the system is left to go quiet, and
//! the database is compared with the terminal. Prints what was made, stored, lost and doubled, the faults by kind
//! and what the agents sent; fails (exit code 1) if a punch was lost or doubled.
//!
//! Faults (each held for a random while, then healed): an agent killed and restarted on its outbox, the server
//! restarted (graceful stop, same port and database), an agent's link dropped (resets) or blackholed (held open,
//! nothing forwarded), the terminal cutting its bulk reads, an agent's acks held back by the network so it sends
//! its batches again (a duplicate delivery), and on PostgreSQL the server's database connections killed. Half the
//! time a sync is requested over HTTP just before the fault, so faults also land in the middle of requested syncs.
//! Everything is seeded (`--seed`); the interleaving with the machine's timing is not.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use essl_e2e::proxy::{Mode, Proxy};
use essl_e2e::{Agent, Backend, Puncher, Server, TempOutbox, TestDb, terminal, test_hub, wait_exact, wait_reachable};
use essl_server::hub::{HubConfig, HubEvent};
use essl_zk_sim::{Faults, Simulator, generate};
use serde_json::json;
use tokio::sync::broadcast;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// How long faults are injected (then the system heals and goes quiet).
    #[arg(long, default_value_t = 120)]
    seconds: u64,
    /// The server's database.
    #[arg(long, value_enum, default_value_t = SoakDb::Sqlite)]
    backend: SoakDb,
    /// PostgreSQL: a database on the server where the user may create databases (a fresh one is made and dropped);
    /// default `TEST_DATABASE_URL`.
    #[arg(long)]
    database_url: Option<String>,
    /// Seed of the punches and of the fault schedule.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Agents of the site, each with its own outbox and its own link (1 or 2).
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u8).range(1..=2))]
    agents: u8,
    /// Punches every this many milliseconds, at random between the two.
    #[arg(long, default_value_t = 20)]
    punch_min_ms: u64,
    #[arg(long, default_value_t = 50)]
    punch_max_ms: u64,
    /// Records on the terminal before the soak starts.
    #[arg(long, default_value_t = 5_000)]
    records: usize,
    /// How long the system may take to hold exactly the terminal's records once healed.
    #[arg(long, default_value_t = 180)]
    settle_seconds: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum SoakDb {
    Sqlite,
    Postgres,
}

/// The kinds of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    AgentKill,
    ServerRestart,
    LinkDrop,
    LinkBlackhole,
    TerminalCut,
    DuplicateBatch,
    PostgresKill,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::AgentKill => "agent-kill",
            Kind::ServerRestart => "server-restart",
            Kind::LinkDrop => "link-drop",
            Kind::LinkBlackhole => "link-blackhole",
            Kind::TerminalCut => "terminal-cut",
            Kind::DuplicateBatch => "duplicate-batch",
            Kind::PostgresKill => "postgres-kill",
        }
    }
}

/// What the server's hubs saw, over every server instance.
#[derive(Default)]
struct Received {
    records: AtomicU64,
    inserted: AtomicU64,
    failed: AtomicU64,
}

impl Received {
    /// Counts the committed and failed batches of `server` until it stops.
    fn follow(self: &Arc<Self>, server: &Server) {
        let (mut events, me) = (server.events(), self.clone());
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(HubEvent::BatchCommitted { records, inserted, .. }) => {
                        me.records.fetch_add(records, Ordering::Relaxed);
                        me.inserted.fetch_add(inserted, Ordering::Relaxed);
                    }
                    Ok(HubEvent::BatchFailed { .. }) => {
                        me.failed.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(n)) => eprintln!("soak: missed {n} hub events"),
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }
}

/// One agent of the site: its token, outbox and link, and the agent itself while it runs.
struct OfficeAgent {
    id: String,
    token: String,
    outbox: TempOutbox,
    proxy: Proxy,
    running: Option<Agent>,
}

impl OfficeAgent {
    fn start(&mut self) {
        let (url, path) = (format!("ws://{}/agent/ws", self.proxy.addr()), self.outbox.path());
        self.running = Some(Agent::start_configured(&url, &self.token, move |c| {
            c.collect.outbox = path;
            c.collect.sync_interval = Duration::from_secs(3);
            c.collect.poll_interval = Duration::from_secs(1);
            c.collect.resubscribe_min = Duration::from_millis(100);
            c.collect.resubscribe_max = Duration::from_secs(1);
            // Held-back acks make it send batches again soon (the duplicate-delivery fault).
            c.timing.ack_timeout = Duration::from_secs(3);
        }));
    }
}

/// The running system.
struct Soak {
    db: TestDb,
    addr: SocketAddr,
    server: Option<Server>,
    sim: Simulator,
    device: String,
    device_id: uuid::Uuid,
    agents: Vec<OfficeAgent>,
    received: Arc<Received>,
    rng: fastrand::Rng,
    syncs: Vec<tokio::task::JoinHandle<bool>>,
}

fn hub() -> HubConfig {
    // Probes every second: the routing table follows agents coming and going quickly.
    HubConfig { probe_interval: Duration::from_secs(1), ..test_hub() }
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let db = match args.backend {
        SoakDb::Sqlite => TestDb::new(Backend::Sqlite).await.context("a temporary SQLite database")?,
        SoakDb::Postgres => {
            let Some(url) = args.database_url.clone().or_else(|| std::env::var("TEST_DATABASE_URL").ok()) else {
                bail!("--backend postgres needs --database-url or TEST_DATABASE_URL");
            };
            TestDb::postgres_at(&url).await
        }
    };
    let backend = match args.backend {
        SoakDb::Sqlite => "sqlite",
        SoakDb::Postgres => "postgres",
    };
    println!(
        "soak backend={backend} seconds={} seed={} agents={} punch_every_ms={}..{} records_before={}",
        args.seconds, args.seed, args.agents, args.punch_min_ms, args.punch_max_ms, args.records
    );
    let mut soak = Soak::open(db, &args).await?;
    let before = soak.sim.terminal.record_count();
    let puncher = Puncher::start_with(
        soak.sim.terminal.clone(),
        Duration::from_millis(args.punch_min_ms),
        Duration::from_millis(args.punch_max_ms.max(args.punch_min_ms)),
        args.seed,
    );

    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    let mut faults: BTreeMap<Kind, u64> = BTreeMap::new();
    while Instant::now() < until {
        let gap = Duration::from_millis(soak.rng.u64(1_000..=4_000));
        tokio::time::sleep(gap.min(until.saturating_duration_since(Instant::now()))).await;
        if Instant::now() >= until {
            break;
        }
        let kind = soak.pick();
        let at = started.elapsed().as_secs_f64();
        let what = soak.inject(kind).await?;
        println!("fault t={at:.1}s kind={} {what}", kind.name());
        *faults.entry(kind).or_default() += 1;
    }

    // Heal, let the last punches happen, then wait until the database holds exactly the terminal's records.
    soak.heal();
    let made = puncher.stop().await;
    let healed_at = Instant::now();
    let server = soak.server.as_ref().context("the server runs")?;
    let comparison =
        wait_exact(&server.state.store, soak.device_id, &soak.sim.terminal, Duration::from_secs(args.settle_seconds))
            .await;
    let quiet = healed_at.elapsed().as_secs_f64();
    let mut syncs_ok = 0;
    let syncs = soak.syncs.len();
    for s in soak.syncs.drain(..) {
        syncs_ok += usize::from(s.await.unwrap_or(false));
    }

    let received = soak.received.records.load(Ordering::Relaxed);
    let inserted = soak.received.inserted.load(Ordering::Relaxed);
    let total: u64 = faults.values().sum();
    let by_kind: Vec<String> = faults.iter().map(|(k, n)| format!("{}={n}", k.name())).collect();
    let (up, down, conns) = soak
        .agents
        .iter()
        .fold((0, 0, 0), |(u, d, c), a| (u + a.proxy.bytes_up(), d + a.proxy.bytes_down(), c + a.proxy.accepted()));
    println!("healed; quiet and compared after {quiet:.1} s");
    println!(
        "punches made={made} (terminal {before} before, {} after) stored={} lost={} doubled={} not_on_terminal={}",
        comparison.on_terminal,
        comparison.stored_rows,
        comparison.lost_count,
        comparison.doubled,
        comparison.extra_count
    );
    println!("faults total={total} {}", by_kind.join(" "));
    println!(
        "records received={received} inserted={inserted} repeats_ignored={} batches_refused={} syncs_requested={syncs} syncs_ok={syncs_ok}",
        received.saturating_sub(inserted),
        soak.received.failed.load(Ordering::Relaxed)
    );
    println!("agents sent bytes={up} received bytes={down} connections={conns}");
    soak.close().await;
    if !comparison.exact() {
        bail!("the database does not hold exactly the terminal's records: {comparison}");
    }
    Ok(())
}

impl Soak {
    async fn open(db: TestDb, args: &Args) -> anyhow::Result<Soak> {
        let server = Server::start_with(&db, hub()).await;
        let received = Arc::new(Received::default());
        received.follow(&server);
        let sim = terminal(&generate::generate(30, args.records, args.seed)).await;
        let device = server.add_device("Soak door", sim.addr, "HQ").await;
        let device_id = device.parse().context("device id")?;
        let mut agents = Vec::new();
        for i in 0..args.agents {
            let (id, token) = server.add_agent(&format!("office-pc-{i}"), "HQ").await;
            let proxy = Proxy::start(server.addr).await.context("proxy")?;
            let mut a = OfficeAgent { id, token, outbox: TempOutbox::new(), proxy, running: None };
            a.start();
            agents.push(a);
        }
        for a in &agents {
            tokio::time::timeout(Duration::from_secs(30), wait_reachable(&server, &device, &a.id))
                .await
                .context("an agent did not report the terminal reachable")?;
        }
        Ok(Soak {
            db,
            addr: server.addr,
            server: Some(server),
            sim,
            device,
            device_id,
            agents,
            received,
            rng: fastrand::Rng::with_seed(args.seed),
            syncs: Vec::new(),
        })
    }

    fn pick(&mut self) -> Kind {
        let mut kinds = vec![
            Kind::AgentKill,
            Kind::ServerRestart,
            Kind::LinkDrop,
            Kind::LinkBlackhole,
            Kind::TerminalCut,
            Kind::DuplicateBatch,
        ];
        if self.db.backend == Backend::Postgres {
            kinds.push(Kind::PostgresKill);
        }
        kinds[self.rng.usize(..kinds.len())]
    }

    /// A random while, in milliseconds.
    fn hold(&mut self, min_ms: u64, max_ms: u64) -> Duration {
        Duration::from_millis(self.rng.u64(min_ms..=max_ms))
    }

    /// Injects one fault, holds it, heals it; returns what was done.
    async fn inject(&mut self, kind: Kind) -> anyhow::Result<String> {
        if self.rng.bool() {
            self.request_sync();
        }
        let which = self.rng.usize(..self.agents.len());
        Ok(match kind {
            Kind::AgentKill => {
                let held = self.hold(200, 2_000);
                if let Some(agent) = self.agents[which].running.take() {
                    agent.kill();
                }
                tokio::time::sleep(held).await;
                self.agents[which].start();
                format!("agent={which} down_ms={}", held.as_millis())
            }
            Kind::ServerRestart => {
                let held = self.hold(200, 2_000);
                if let Some(server) = self.server.take() {
                    server.stop().await;
                }
                tokio::time::sleep(held).await;
                let server = Server::start_at(&self.db, hub(), self.addr).await;
                self.received.follow(&server);
                self.server = Some(server);
                format!("down_ms={}", held.as_millis())
            }
            Kind::LinkDrop => self.link(which, Mode::Drop, 500, 3_000).await,
            // Longer than two ping intervals (4 s) now and then: both ends notice the silence.
            Kind::LinkBlackhole => self.link(which, Mode::Blackhole, 1_000, 6_000).await,
            Kind::DuplicateBatch => self.link(which, Mode::HoldReplies, 1_000, 5_000).await,
            Kind::TerminalCut => {
                let held = self.hold(1_000, 4_000);
                let after = self.rng.u64(1..=4);
                self.sim.terminal.set_faults(Faults { cut_bulk_after: Some(after), ..Faults::default() });
                // A sync to cut, besides the scheduled ones.
                self.request_sync();
                tokio::time::sleep(held).await;
                self.sim.terminal.set_faults(Faults::default());
                format!("after_chunks={after} held_ms={}", held.as_millis())
            }
            Kind::PostgresKill => {
                let killed = self.kill_postgres_connections().await?;
                format!("connections_terminated={killed}")
            }
        })
    }

    async fn link(&mut self, which: usize, mode: Mode, min_ms: u64, max_ms: u64) -> String {
        let held = self.hold(min_ms, max_ms);
        self.agents[which].proxy.set_mode(mode);
        tokio::time::sleep(held).await;
        self.agents[which].proxy.set_mode(Mode::Pass);
        format!("agent={which} held_ms={}", held.as_millis())
    }

    async fn kill_postgres_connections(&self) -> anyhow::Result<usize> {
        use sqlx::Connection;
        let Some((admin, name)) = self.db.postgres_admin() else { return Ok(0) };
        let mut conn = sqlx::PgConnection::connect(admin).await.context("PostgreSQL admin connection")?;
        let killed: Vec<bool> = sqlx::query_scalar(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()",
        )
        .bind(name)
        .fetch_all(&mut conn)
        .await
        .context("pg_terminate_backend")?;
        Ok(killed.into_iter().filter(|k| *k).count())
    }

    /// `POST /api/essl/sync-attendance` in the background; its task says whether it succeeded.
    fn request_sync(&mut self) {
        let Some(server) = &self.server else { return };
        let (url, token) = (server.url("/api/essl/sync-attendance"), server.admin.clone());
        let body = json!({"deviceId": self.device});
        self.syncs.push(tokio::spawn(async move {
            let sent = reqwest::Client::new().post(url).bearer_auth(token).json(&body).send().await;
            match sent {
                Ok(resp) => resp.json::<serde_json::Value>().await.is_ok_and(|v| v["success"] == true),
                Err(_) => false,
            }
        }));
    }

    /// Every link passes, the terminal behaves, every agent runs.
    fn heal(&mut self) {
        self.sim.terminal.set_faults(Faults::default());
        for a in &mut self.agents {
            a.proxy.set_mode(Mode::Pass);
            if a.running.is_none() {
                a.start();
            }
        }
    }

    async fn close(mut self) {
        for a in &mut self.agents {
            if let Some(agent) = a.running.take() {
                agent.stop().await;
            }
        }
        if let Some(server) = self.server.take() {
            server.stop().await;
        }
        self.sim.stop().await;
    }
}
