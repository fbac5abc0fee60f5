//! `essl-bench`: benchmarks that print figures and ratios, on loopback, so anyone can run them:
//! `cargo run --release -p essl-bench -- zk-read` (against an `essl-sim` process), `-- sync` and `-- check`
//! (server, agent and simulated terminal in this process, with the end-to-end harness of `essl-e2e`), `-- soak`
//! (the same under random faults, then none lost and none doubled, or exit code 1), and `-- push` (pushed ATTLOG
//! lines per second into a real server over HTTP), and `-- agents` (N idle agent WebSockets against the release
//! `essl-server` binary: its memory and CPU per agent, heartbeat lag, and check-device latency meanwhile).

mod agents;
mod check;
mod office;
mod push;
mod soak;
mod stats;
mod sync;
mod zk_read;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "essl-bench", version)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Read N attendance records from `essl-sim` over loopback TCP: our client against pyzk, same simulator.
    ZkRead(zk_read::Args),
    /// Sync N records end to end (simulator, agent, WebSocket, server, database) and the store's batched insert
    /// against one INSERT per row, on SQLite and PostgreSQL.
    Sync(sync::Args),
    /// Latency of `POST /api/essl/check-device` through the relay against a direct probe of the same terminal.
    Check(check::Args),
    /// Punches continuously while random faults hit agents, server, network, terminal and database; then heal
    /// and check that the database holds exactly the terminal's records (exit code 1 if any was lost or doubled).
    Soak(soak::Args),
    /// Pushed ATTLOG lines ingested per second over HTTP (a claimed push terminal, real server), in batches of 1
    /// and of 500 lines, on SQLite and PostgreSQL.
    Push(push::Args),
    /// N idle agents connected to one server (started here, or `--server`): server RSS per agent, server CPU,
    /// heartbeat lag, and check-device latency for one real office while they are connected.
    Agents(agents::Args),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    // The client alone on one thread; server, agent and terminal together on a runtime like the server's.
    let runtime = match cli.bench {
        Bench::ZkRead(_) => tokio::runtime::Builder::new_current_thread().enable_all().build()?,
        Bench::Sync(_) | Bench::Check(_) | Bench::Soak(_) | Bench::Push(_) | Bench::Agents(_) => {
            tokio::runtime::Builder::new_multi_thread().enable_all().build()?
        }
    };
    match cli.bench {
        Bench::ZkRead(args) => runtime.block_on(zk_read::run(args)),
        Bench::Sync(args) => runtime.block_on(sync::run(args)),
        Bench::Check(args) => runtime.block_on(check::run(args)),
        Bench::Soak(args) => runtime.block_on(soak::run(args)),
        Bench::Push(args) => runtime.block_on(push::run(args)),
        Bench::Agents(args) => runtime.block_on(agents::run(args)),
    }
}
