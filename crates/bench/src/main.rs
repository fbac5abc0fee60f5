//! `essl-bench`: benchmarks that print figures and ratios. Each starts what it measures as real processes on
//! loopback, so anyone can run them: `cargo run --release -p essl-bench -- zk-read`.

mod stats;
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
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    match cli.bench {
        Bench::ZkRead(args) => runtime.block_on(zk_read::run(args)),
    }
}
