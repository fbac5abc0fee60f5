//! Reading 100,000 attendance records from `essl-sim` over loopback TCP, with our client and with pyzk, against
//! the same simulator process in the same run; medians of several runs and their ratio.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use essl_zk::{ClientConfig, ZkClient};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::stats::{median, thread_cpu};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Records on the simulated terminal.
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Runs per client.
    #[arg(long, default_value_t = 7)]
    runs: usize,
    /// Python interpreter with pyzk installed; without it only our client is measured.
    #[arg(long, env = "ESSL_PYZK_PYTHON")]
    pyzk_python: Option<PathBuf>,
    /// Pause between the frames of a chunk reply (microseconds), passed to essl-sim.
    #[arg(long, default_value_t = 0)]
    frame_gap_us: u64,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let (mut sim, addr) = start_simulator(&args).await?;
    println!("essl-sim at {addr} holding {} records (40-byte layout, TCP)", args.records);

    let mut ours = Vec::with_capacity(args.runs);
    let mut ours_cpu = Vec::with_capacity(args.runs);
    // One warm-up run, not counted: the simulator builds its table snapshot lazily per read anyway.
    read_once(addr, args.records).await?;
    for i in 0..args.runs {
        let cpu0 = thread_cpu();
        let started = Instant::now();
        read_once(addr, args.records).await?;
        let wall = started.elapsed().as_secs_f64();
        let cpu = thread_cpu().zip(cpu0).map(|(b, a)| (b - a).as_secs_f64());
        println!("essl-zk run={i} seconds={wall:.4} cpu={}", cpu.map_or("n/a".into(), |c| format!("{c:.4}")));
        ours.push(wall);
        ours_cpu.extend(cpu);
    }
    let ours_median = median(&ours);
    println!(
        "essl-zk median_seconds={ours_median:.4} records_per_second={:.0} median_cpu_seconds={:.4}",
        args.records as f64 / ours_median,
        median(&ours_cpu)
    );

    match &args.pyzk_python {
        Some(python) => {
            let pyzk = run_pyzk(python, addr, args.runs).await?;
            let pyzk_median = median(&pyzk);
            println!(
                "pyzk    median_seconds={pyzk_median:.4} records_per_second={:.0}",
                args.records as f64 / pyzk_median
            );
            println!("ratio (pyzk / essl-zk, median wall time) = {:.1}x", pyzk_median / ours_median);
        }
        None => println!("pyzk not measured: pass --pyzk-python or set ESSL_PYZK_PYTHON"),
    }
    let _ = sim.kill().await;
    Ok(())
}

async fn read_once(addr: SocketAddr, expected: usize) -> anyhow::Result<()> {
    let cfg = ClientConfig { timeout: Duration::from_secs(30), ..ClientConfig::default() };
    let mut client = ZkClient::connect(addr, cfg).await?;
    let read = client.read_attendance(&mut |_, _| {}).await?;
    if read.records.len() != expected {
        bail!("read {} records, expected {expected}", read.records.len());
    }
    client.disconnect().await?;
    Ok(())
}

/// `essl-sim` next to this binary (both are built into the same target directory).
fn sim_binary() -> anyhow::Result<PathBuf> {
    let me = std::env::current_exe()?;
    let dir = me.parent().context("binary has no directory")?;
    let sim = dir.join(format!("essl-sim{}", std::env::consts::EXE_SUFFIX));
    if !sim.exists() {
        bail!("{} not found: build it first (cargo build --release -p essl-zk-sim)", sim.display());
    }
    Ok(sim)
}

async fn start_simulator(args: &Args) -> anyhow::Result<(Child, SocketAddr)> {
    let mut child = Command::new(sim_binary()?)
        .args(["--listen", "127.0.0.1:0", "--users", "500", "--records", &args.records.to_string()])
        .args(["--frame-gap-us", &args.frame_gap_us.to_string(), "--max-sessions", "64"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .context("starting essl-sim")?;
    let stdout = child.stdout.take().context("essl-sim stdout")?;
    let mut lines = BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line())
        .await
        .context("essl-sim did not start within 30 s")??
        .context("essl-sim exited")?;
    let addr = line
        .split_whitespace()
        .find_map(|w| w.parse::<SocketAddr>().ok())
        .with_context(|| format!("no address in {line:?}"))?;
    Ok((child, addr))
}

async fn run_pyzk(python: &Path, addr: SocketAddr, runs: usize) -> anyhow::Result<Vec<f64>> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/interop/pyzk_read_bench.py");
    let out = Command::new(python)
        .arg(&script)
        .args(["--addr", &addr.to_string(), "--runs", &(runs + 1).to_string()])
        .output()
        .await
        .with_context(|| format!("running {}", script.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        bail!("pyzk bench failed: {}{}", text, String::from_utf8_lossy(&out.stderr));
    }
    // The first run warms up, as for our client.
    let secs: Vec<f64> = text
        .lines()
        .filter(|l| l.starts_with("run="))
        .skip(1)
        .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("seconds=")?.parse().ok()))
        .collect();
    for l in text.lines().filter(|l| l.starts_with("run=")) {
        println!("pyzk    {l}");
    }
    if secs.len() != runs {
        bail!("pyzk bench printed {} runs, expected {runs}:\n{text}", secs.len());
    }
    Ok(secs)
}
