//! Syncing N records end to end (simulator -> agent -> WebSocket -> server -> database, through
//! `POST /api/essl/sync-attendance`), each run on a fresh database; and, in the same run, the store alone: the
//! batched `Store::insert_punches` against `Store::insert_punches_naive` (one INSERT per row), each run into a fresh
//! database. Medians of the runs; SQLite and PostgreSQL.

use std::time::Instant;

use anyhow::{Context, ensure};
use essl_e2e::{Backend, terminal};
use essl_server::hub::HubEvent;
use essl_server::ingest;
use essl_server::store::{DeviceKind, NewDevice, NewPunch, Store};
use essl_zk_sim::{Fixture, generate};
use serde_json::json;
use tokio::sync::{broadcast, oneshot};

use crate::office::{Db, Office, fresh_db, name};
use crate::stats::median;

/// The device's zone, as the harness registers it.
const ZONE: &str = "Asia/Kolkata";

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Records on the simulated terminal (all distinct, so all are new to the database).
    #[arg(long, default_value_t = 100_000)]
    records: usize,
    /// Runs of each measurement.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Databases to measure (PostgreSQL on `TEST_DATABASE_URL`).
    #[arg(long, value_enum, default_value_t = Db::Both)]
    db: Db,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    let fixture = generate::generate(500, args.records, 17);
    let rows = punches(&fixture)?;
    let sim = terminal(&fixture).await;
    println!("essl-sim at {} holding {} records; {} runs each, medians", sim.addr, args.records, args.runs);
    for backend in args.db.backends() {
        let db = name(backend);
        let mut e2e = Vec::with_capacity(args.runs);
        for i in 0..args.runs {
            let Some(run) = sync_once(backend, &sim, args.records).await? else { break };
            println!(
                "{db} e2e run={i} seconds={:.3} records_per_second={:.0} {} first_sync_bytes_sent={} \
                 second_sync_bytes_sent={} second_sync_seconds={:.3} second_sync_new_records=0",
                run.secs,
                args.records as f64 / run.secs,
                run.stages,
                run.first_bytes,
                run.second_bytes,
                run.second_secs,
            );
            e2e.push(run.secs);
        }
        if e2e.is_empty() {
            continue;
        }
        let (mut batched, mut naive) = (Vec::new(), Vec::new());
        for i in 0..args.runs {
            let (Some(b), Some(n)) =
                (store_once(backend, &rows, false).await?, store_once(backend, &rows, true).await?)
            else {
                break;
            };
            println!("{db} store run={i} batched_seconds={b:.3} naive_seconds={n:.3}");
            batched.push(b);
            naive.push(n);
        }
        let rate = |secs: f64| args.records as f64 / secs;
        let (e, b, n) = (median(&e2e), median(&batched), median(&naive));
        println!("{db} e2e sync           median_seconds={e:.3} records_per_second={:.0}", rate(e));
        println!("{db} store batched      median_seconds={b:.3} records_per_second={:.0}", rate(b));
        println!("{db} store naive        median_seconds={n:.3} records_per_second={:.0}", rate(n));
        println!("{db} ratio (naive / batched, median time) = {:.1}x", n / b);
    }
    sim.stop().await;
    Ok(())
}

/// One measured run: the first sync's wall time and stages, and what each sync made the office send.
struct Run {
    secs: f64,
    stages: String,
    first_bytes: u64,
    second_bytes: u64,
    second_secs: f64,
}

/// One sync of every record through the relay into a fresh database, then a second sync of the unchanged terminal
/// (which must send no records: the agent's watermark); `None` if the database is not available here.
async fn sync_once(backend: Backend, sim: &essl_zk_sim::Simulator, records: usize) -> anyhow::Result<Option<Run>> {
    let Some(db) = fresh_db(backend).await else { return Ok(None) };
    let office = Office::open(&db, sim.addr).await?;
    let (stop, watcher) = watch(office.server.events());
    let before = office.bytes_sent();
    let started = Instant::now();
    let (status, body) = office.server.post("/api/essl/sync-attendance", json!({"deviceId": office.device})).await;
    let secs = started.elapsed().as_secs_f64();
    let first_bytes = office.bytes_sent() - before;
    let _ = stop.send(());
    let stages = stages(started, &watcher.await.unwrap_or_default());
    let device = office.device.parse().context("device id")?;
    let stored = office.server.state.store.count_attendance(Some(device)).await?;
    ensure!(status.is_success() && body["success"] == true, "sync failed: HTTP {status} {body}");
    ensure!(
        body["totalRecords"] == records as u64,
        "sync reported {} new records, expected {records}",
        body["totalRecords"]
    );
    ensure!(stored == records as i64, "{stored} records stored, expected {records}");

    let before = office.bytes_sent();
    let started = Instant::now();
    let (status, again) = office.server.post("/api/essl/sync-attendance", json!({"deviceId": office.device})).await;
    let second_secs = started.elapsed().as_secs_f64();
    let second_bytes = office.bytes_sent() - before;
    office.close().await;
    ensure!(status.is_success() && again["totalRecords"] == 0, "second sync: HTTP {status} {again}");
    ensure!(again["stats"]["recordsRead"] == records as u64, "second sync read: {again}");
    Ok(Some(Run { secs, stages, first_bytes, second_bytes, second_secs }))
}

/// What the hub reported during a sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Seen {
    /// The agent finished reading the terminal.
    ReadDone,
    /// A batch was committed.
    Stored,
}

/// When the hub reported what, until told to stop.
fn watch(
    mut events: broadcast::Receiver<HubEvent>,
) -> (oneshot::Sender<()>, tokio::task::JoinHandle<Vec<(Instant, Seen)>>) {
    let (stop, mut stopped) = oneshot::channel();
    let task = tokio::spawn(async move {
        let mut seen = Vec::new();
        loop {
            tokio::select! {
                biased;
                event = events.recv() => match event {
                    Ok(HubEvent::SyncProgress { done, total, .. }) if done >= total => seen.push((Instant::now(), Seen::ReadDone)),
                    Ok(HubEvent::PunchesStored { .. }) => seen.push((Instant::now(), Seen::Stored)),
                    Ok(_) | Err(broadcast::error::RecvError::Lagged(_)) => {}
                    Err(broadcast::error::RecvError::Closed) => return seen,
                },
                _ = &mut stopped => return seen,
            }
        }
    });
    (stop, task)
}

/// `read_seconds` (request to the end of the terminal read) and the time the server took per stored batch
/// (first, slowest, last): batches are stored one after the other, so the gaps between them are store times.
fn stages(started: Instant, seen: &[(Instant, Seen)]) -> String {
    let read = seen.iter().find(|(_, s)| *s == Seen::ReadDone).map_or(started, |(t, _)| *t);
    let mut last = read;
    let mut batches = Vec::new();
    for (t, _) in seen.iter().filter(|(_, s)| *s == Seen::Stored) {
        batches.push(t.duration_since(last).as_secs_f64() * 1e3);
        last = *t;
    }
    let slowest = batches.iter().copied().fold(0.0, f64::max);
    format!(
        "read_seconds={:.3} batches={} batch_ms_first={:.0} batch_ms_max={slowest:.0} batch_ms_last={:.0}",
        read.duration_since(started).as_secs_f64(),
        batches.len(),
        batches.first().copied().unwrap_or(0.0),
        batches.last().copied().unwrap_or(0.0)
    )
}

/// One `insert_punches` (or `insert_punches_naive`) of `rows` into a fresh database; its wall time.
async fn store_once(backend: Backend, rows: &[NewPunch], naive: bool) -> anyhow::Result<Option<f64>> {
    let Some(db) = fresh_db(backend).await else { return Ok(None) };
    let store = Store::connect(&db.url).await?;
    let device = store
        .create_device(&NewDevice {
            name: "Bench door".into(),
            kind: DeviceKind::Pull,
            ip_address: "127.0.0.1".into(),
            port: 4370,
            comm_key: 0,
            udp: false,
            serial_number: None,
            timezone: ZONE.into(),
            site_id: None,
            active: true,
        })
        .await?;
    let started = Instant::now();
    let new = if naive {
        store.insert_punches_naive(device.id, rows).await?
    } else {
        store.insert_punches(device.id, rows).await?
    };
    let secs = started.elapsed().as_secs_f64();
    store.close().await;
    ensure!(new == rows.len() as u64, "{new} rows inserted, expected {}", rows.len());
    Ok(Some(secs))
}

/// The terminal's records as the server's ingest makes them (instant in the device's zone, DST flags).
fn punches(fixture: &Fixture) -> anyhow::Result<Vec<NewPunch>> {
    let tz = ingest::zone(ZONE).context("bundled time zone")?;
    fixture
        .records()?
        .into_iter()
        .map(|r| {
            let local = r.timestamp.valid().context("generated records have real times")?;
            let (punched_at, flags) = ingest::instant(local, &tz);
            Ok(NewPunch {
                user_id: r.user_id,
                uid: i32::from(r.uid),
                local_time: local,
                punched_at,
                status: i16::from(r.status),
                punch: i16::from(r.punch),
                flags,
            })
        })
        .collect()
}
