//! Pushed attendance ingested per second: a real in-process server on a fresh database, a claimed push (ADMS)
//! terminal, and `POST /iclock/cdata?SN=...&table=ATTLOG&Stamp=...` requests over one keep-alive HTTP connection per
//! terminal, each answered `OK:<n>` before the next is sent (as a terminal does), with batches of 1 line (realtime
//! punches) and of 500 lines (a backlog). Every request takes the server's whole path: rate limits, body cap,
//! journal of the raw body, identification, parse, one transaction of rows, the terminal's stamp, the journal's
//! outcome. The bodies are built before the clock starts; every line is a distinct punch, so all are new rows.
//! Medians of the runs; SQLite and PostgreSQL.

use std::time::Instant;

use anyhow::{Context, ensure};
use essl_e2e::{Backend, Server};
use jiff::civil::DateTime;
use serde_json::json;

use crate::office::{Db, bench_hub, fresh_db, name};
use crate::stats::{median, percentile};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Lines sent in each run of a batch size above 1.
    #[arg(long, default_value_t = 100_000)]
    lines: usize,
    /// Lines sent in each run of 1-line batches (one request per line).
    #[arg(long, default_value_t = 3_000)]
    single_lines: usize,
    /// Lines per request; each size is measured on its own (comma-separated).
    #[arg(long, value_delimiter = ',', default_values_t = vec![1usize, 500])]
    batch: Vec<usize>,
    /// Terminals pushing at once, each on its own connection (the lines are shared out between them).
    #[arg(long, default_value_t = 1)]
    terminals: usize,
    /// Runs of each measurement.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Databases to measure (PostgreSQL on `TEST_DATABASE_URL`).
    #[arg(long, value_enum, default_value_t = Db::Both)]
    db: Db,
}

/// The claimed terminals' zone (no DST: every line is an ordinary punch).
const ZONE: &str = "Asia/Kolkata";
/// Users the generated lines cycle through.
const USERS: usize = 200;

pub async fn run(args: Args) -> anyhow::Result<()> {
    ensure!(args.runs > 0 && args.terminals > 0, "--runs and --terminals must be at least 1");
    ensure!(!args.batch.is_empty() && args.batch.iter().all(|b| *b > 0), "--batch sizes must be at least 1");
    println!(
        "push ATTLOG over HTTP/1.1 keep-alive; {} terminal(s); batches of {:?} lines; {} runs each, medians",
        args.terminals, args.batch, args.runs
    );
    for backend in args.db.backends() {
        let db = name(backend);
        if backend == Backend::Postgres
            && let Ok(url) = std::env::var("TEST_DATABASE_URL")
        {
            // Whether the store's connections speak TLS changes the figures (see the README's Benchmarks).
            println!("postgres connection: {}", postgres_tls(&url).await.unwrap_or_else(|e| format!("unknown ({e})")));
        }
        let mut rates = Vec::new();
        for &batch in &args.batch {
            let lines = if batch == 1 { args.single_lines } else { args.lines };
            let mut secs = Vec::with_capacity(args.runs);
            let mut latencies = Vec::new();
            for i in 0..args.runs {
                let Some(run) = push_once(backend, batch, lines, args.terminals).await? else { break };
                println!(
                    "{db} batch={batch} run={i} lines={lines} requests={} seconds={:.3} lines_per_second={:.0} \
                     request_ms_p50={:.2} request_ms_p99={:.2}",
                    run.requests,
                    run.secs,
                    lines as f64 / run.secs,
                    percentile(&run.latencies_ms, 50.0),
                    percentile(&run.latencies_ms, 99.0),
                );
                secs.push(run.secs);
                latencies.extend(run.latencies_ms);
            }
            if secs.is_empty() {
                break;
            }
            let m = median(&secs);
            let rate = lines as f64 / m;
            println!(
                "{db} batch={batch:<4} lines={lines} median_seconds={m:.3} lines_per_second={rate:.0} \
                 request_ms_p50={:.2}",
                percentile(&latencies, 50.0)
            );
            rates.push((batch, rate));
        }
        if let (Some(&(small, slow)), Some(&(large, fast))) =
            (rates.iter().min_by_key(|r| r.0), rates.iter().max_by_key(|r| r.0))
            && small != large
        {
            println!("{db} ratio (lines/s, {large}-line batches / {small}-line batches) = {:.0}x", fast / slow);
        }
    }
    Ok(())
}

/// What a connection made with `url` (as the server's store makes them) negotiated: TLS and its version, or none.
async fn postgres_tls(url: &str) -> anyhow::Result<String> {
    use sqlx::Connection;
    let mut conn = sqlx::PgConnection::connect(url).await?;
    let (ssl, version): (bool, Option<String>) =
        sqlx::query_as("SELECT ssl, version FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
            .fetch_one(&mut conn)
            .await?;
    conn.close().await?;
    Ok(if ssl { format!("TLS ({})", version.unwrap_or_default()) } else { "no TLS".to_owned() })
}

/// One measured run.
struct Run {
    secs: f64,
    requests: usize,
    latencies_ms: Vec<f64>,
}

/// The ATTLOG bodies of one terminal: `lines` distinct punches (a user and a second each) in batches of `batch`.
fn bodies(lines: usize, batch: usize) -> anyhow::Result<Vec<String>> {
    let start: DateTime = "2025-03-03T08:00:00".parse().context("start time")?;
    let mut out = Vec::with_capacity(lines.div_ceil(batch));
    let mut body = String::with_capacity(batch * 40);
    for i in 0..lines {
        let pin = 1_000 + (i % USERS);
        let secs = i64::try_from(i).context("line count")?;
        let t = start.checked_add(jiff::SignedDuration::from_secs(secs)).context("time")?;
        let state = i % 2;
        let verify = if i % 3 == 0 { 15 } else { 1 };
        body.push_str(&format!("{pin}\t{}\t{state}\t{verify}\t0\t0\t0\n", t.strftime("%Y-%m-%d %H:%M:%S")));
        if (i + 1) % batch == 0 {
            out.push(std::mem::take(&mut body));
        }
    }
    if !body.is_empty() {
        out.push(body);
    }
    Ok(out)
}

/// Push settings of the bench: the production defaults without the rate limits (10 requests/s per serial would
/// measure the limiter, not the ingest).
fn push_config() -> essl_server::push::PushConfig {
    essl_server::push::PushConfig {
        per_serial: (1e9, 1e9),
        per_address: (1e9, 1e9),
        ..essl_server::push::PushConfig::default()
    }
}

/// One run into a fresh database: start a server, claim the terminals, let each say hello, then time every
/// terminal sending its bodies one after the other; `None` if the database is not available here.
async fn push_once(backend: Backend, batch: usize, lines: usize, terminals: usize) -> anyhow::Result<Option<Run>> {
    let Some(db) = fresh_db(backend).await else { return Ok(None) };
    let addr = "127.0.0.1:0".parse().context("address")?;
    let server = Server::start_push(&db, bench_hub(), push_config(), addr).await;
    let result = measure(&server, batch, lines, terminals).await;
    server.stop().await;
    result.map(Some)
}

async fn measure(server: &Server, batch: usize, lines: usize, terminals: usize) -> anyhow::Result<Run> {
    let per = lines.div_ceil(terminals);
    let (mut devices, mut work) = (Vec::with_capacity(terminals), Vec::with_capacity(terminals));
    for t in 0..terminals {
        let serial = format!("BENCH{t:08}");
        let (status, body) = server
            .post("/api/push/claim", json!({"serialNumber": serial, "name": serial, "site": "HQ", "timezone": ZONE}))
            .await;
        ensure!(status.as_u16() == 201, "claim of {serial}: HTTP {status} {body}");
        let device: uuid::Uuid = body["id"].as_str().context("device id")?.parse()?;
        let count = per.min(lines.saturating_sub(per * t));
        // One client per terminal: its own keep-alive connection, as a terminal on its own LAN would have.
        let http = reqwest::Client::builder().pool_max_idle_per_host(1).build()?;
        let base = server.url(&format!("/iclock/cdata?SN={serial}"));
        // The handshake (the terminal row, its push version) and one line outside the measured ones, so the
        // connection is open and the first measured request does no set-up.
        let hello = http.get(format!("{base}&options=all&pushver=2.4.1&language=69")).send().await?;
        ensure!(hello.status().is_success(), "handshake: HTTP {}", hello.status());
        hello.text().await?;
        let warm =
            http.post(format!("{base}&table=ATTLOG&Stamp=1")).body("1\t2020-01-01 00:00:00\t0\t1\n").send().await?;
        ensure!(warm.text().await? == "OK:1", "warm-up line refused");
        devices.push(device);
        work.push((http, base, bodies(count, batch)?));
    }
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for (http, base, bodies) in work {
        tasks.spawn(async move {
            let mut latencies = Vec::with_capacity(bodies.len());
            for (i, body) in bodies.into_iter().enumerate() {
                let n = body.bytes().filter(|b| *b == b'\n').count();
                let sent = Instant::now();
                let resp = http.post(format!("{base}&table=ATTLOG&Stamp={}", i + 2)).body(body).send().await?;
                let status = resp.status();
                let text = resp.text().await?;
                latencies.push(sent.elapsed().as_secs_f64() * 1e3);
                ensure!(status.is_success() && text == format!("OK:{n}"), "upload {i}: HTTP {status} {text:?}");
            }
            anyhow::Ok(latencies)
        });
    }
    let mut latencies_ms = Vec::new();
    while let Some(done) = tasks.join_next().await {
        latencies_ms.extend(done.context("a terminal's task")??);
    }
    let secs = started.elapsed().as_secs_f64();
    let mut stored = 0;
    for device in &devices {
        stored += server.state.store.count_attendance(Some(*device)).await?;
    }
    let expected = i64::try_from(lines + terminals).context("line count")?;
    ensure!(stored == expected, "{stored} rows stored, expected {expected} (lines and warm-ups)");
    Ok(Run { secs: secs.max(1e-9), requests: latencies_ms.len(), latencies_ms })
}
