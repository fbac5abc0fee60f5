//! `POST /api/essl/check-device` for one device through the relay (HTTP -> server -> WebSocket -> agent -> terminal
//! and back, all on loopback) against the agent's own work done directly in this process (`essl_zk::probe` of the
//! same simulator), interleaved, after a warm-up; percentiles of each and what the relay adds.

use std::time::Instant;

use anyhow::{Context, ensure};
use essl_e2e::{Backend, terminal};
use essl_zk::ProbeConfig;
use essl_zk_sim::generate;
use serde_json::json;

use crate::office::{Db, Office, fresh_db, name};
use crate::stats::percentile;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Measured requests of each kind.
    #[arg(long, default_value_t = 2000)]
    samples: usize,
    /// Requests of each kind before measuring.
    #[arg(long, default_value_t = 200)]
    warmup: usize,
    /// Database of the server (it reads the caller's token and the device on every request).
    #[arg(long, value_enum, default_value_t = Db::Sqlite)]
    db: Db,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let sim = terminal(&generate::generate(25, 10, 17)).await;
    for backend in args.db.backends() {
        let Some(db) = fresh_db(backend).await else { continue };
        let office = Office::open(&db, sim.addr).await?;
        let result = measure(&office, sim.addr, &args).await;
        office.close().await;
        let (relay, direct) = result?;
        report(backend, &relay, &direct);
    }
    sim.stop().await;
    Ok(())
}

/// Latencies in milliseconds: (through the relay, direct probe). The order alternates, so neither always runs
/// right after the other.
async fn measure(office: &Office, terminal: std::net::SocketAddr, args: &Args) -> anyhow::Result<(Vec<f64>, Vec<f64>)> {
    let body = json!({"deviceId": office.device});
    // What the agent uses: TCP, comm key 0, 3 s per attempt, one retry.
    let probe = ProbeConfig::default();
    let (mut relay, mut direct) = (Vec::with_capacity(args.samples), Vec::with_capacity(args.samples));
    for i in 0..args.warmup + args.samples {
        let mut one = [0.0; 2];
        for k in [i % 2, 1 - i % 2] {
            let started = Instant::now();
            if k == 0 {
                let (status, answer) = office.server.post("/api/essl/check-device", body.clone()).await;
                ensure!(status.is_success() && answer["reachableCount"] == 1, "check-device: HTTP {status} {answer}");
            } else {
                essl_zk::probe(terminal, &probe).await.context("direct probe")?;
            }
            one[k] = started.elapsed().as_secs_f64() * 1e3;
        }
        if i >= args.warmup {
            relay.push(one[0]);
            direct.push(one[1]);
        }
    }
    Ok((relay, direct))
}

fn report(backend: Backend, relay: &[f64], direct: &[f64]) {
    let line = |what: &str, v: &[f64]| {
        println!(
            "{what} samples={} p50_ms={:.3} p90_ms={:.3} p99_ms={:.3}",
            v.len(),
            percentile(v, 50.0),
            percentile(v, 90.0),
            percentile(v, 99.0)
        );
    };
    println!("check-device, server on {}:", name(backend));
    line("  relay  (POST /api/essl/check-device)", relay);
    line("  direct (essl_zk::probe)            ", direct);
    let paired: Vec<f64> = relay.iter().zip(direct).map(|(r, d)| r - d).collect();
    println!(
        "  relay adds p50 {:.3} ms (difference of the p50s); median of paired differences {:.3} ms",
        percentile(relay, 50.0) - percentile(direct, 50.0),
        percentile(&paired, 50.0)
    );
}
