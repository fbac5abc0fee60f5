//! What the relay benches share: which databases, and an office on loopback built with the end-to-end harness (a
//! real server on a fresh database, one simulated terminal registered as a device, one real agent that has probed
//! it).

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;
use essl_e2e::proxy::Proxy;
use essl_e2e::{Agent, Backend, Server, TestDb, test_hub, wait_reachable};
use essl_server::hub::HubConfig;

/// Which databases to measure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Db {
    Sqlite,
    Postgres,
    Both,
}

impl Db {
    pub fn backends(self) -> Vec<Backend> {
        match self {
            Db::Sqlite => vec![Backend::Sqlite],
            Db::Postgres => vec![Backend::Postgres],
            Db::Both => vec![Backend::Sqlite, Backend::Postgres],
        }
    }
}

pub fn name(backend: Backend) -> &'static str {
    match backend {
        Backend::Sqlite => "sqlite",
        Backend::Postgres => "postgres",
    }
}

/// A fresh database: a temporary SQLite file, or a PostgreSQL database made on `TEST_DATABASE_URL` (dropped with
/// it); `None`, with a line saying so, when PostgreSQL is asked for and `TEST_DATABASE_URL` is not set.
pub async fn fresh_db(backend: Backend) -> Option<TestDb> {
    if backend == Backend::Postgres && std::env::var_os("TEST_DATABASE_URL").is_none() {
        println!("postgres not measured: set TEST_DATABASE_URL (e.g. postgres://postgres@127.0.0.1:5432/test)");
        return None;
    }
    TestDb::new(backend).await
}

/// The test harness's hub timing, except that agents probe once at connect and then hourly (so no background
/// probe competes with what is measured) and a sync may take an hour.
pub fn bench_hub() -> HubConfig {
    HubConfig { probe_interval: Duration::from_secs(3600), sync_timeout: Duration::from_secs(3600), ..test_hub() }
}

/// A server on `db` with the terminal at `terminal` as device "Bench door" of site "HQ", and a connected agent of
/// that site that reported the device reachable. The agent's WebSocket goes through a counting proxy, so benches
/// can say how many bytes the office sent to the cloud.
pub struct Office {
    pub server: Server,
    pub agent: Agent,
    pub device: String,
    pub link: Proxy,
}

impl Office {
    pub async fn open(db: &TestDb, terminal: SocketAddr) -> anyhow::Result<Office> {
        let server = Server::start_with(db, bench_hub()).await;
        let device = server.add_device("Bench door", terminal, "HQ").await;
        let (agent_id, token) = server.add_agent("bench-pc", "HQ").await;
        let link = Proxy::start(server.addr).await.context("the counting proxy")?;
        let agent = Agent::start_configured(&format!("ws://{}/agent/ws", link.addr()), &token, |_| {});
        tokio::time::timeout(Duration::from_secs(20), wait_reachable(&server, &device, &agent_id))
            .await
            .context("the agent did not report the terminal reachable")?;
        Ok(Office { server, agent, device, link })
    }

    /// Bytes the agent has sent to the server so far (WebSocket frames included).
    pub fn bytes_sent(&self) -> u64 {
        self.link.bytes_up()
    }

    pub async fn close(self) {
        self.agent.stop().await;
        self.server.stop().await;
        self.link.stop();
    }
}
