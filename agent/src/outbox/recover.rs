//! A damaged outbox file at start (a crash on a disk that lied about flushing, a truncated copy, garbage): it is
//! moved aside, every batch that can still be read is carried into a fresh file in its order and with its id, and
//! the report says what could not be read. The agent then runs on the fresh file.
//!
//! Watermarks and pending reads are not carried over: without them the next sync of every device sends its whole
//! log again, so records of lost batches that are still on the terminal reach the server after all (re-sends are
//! harmless). Only punches that were both in a lost batch and already gone from the terminal are lost, and the
//! report says how many rows could not be read.

use std::path::{Path, PathBuf};

use essl_wire::Punch;
use sqlx::sqlite::{SqliteConnectOptions, SqliteConnection};
use sqlx::{ConnectOptions, Connection, Row};

use super::{OutboxError, SCHEMA, options};

/// What recovery did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recovery {
    /// Where the damaged file was moved (kept for inspection).
    pub damaged_copy: PathBuf,
    /// What was wrong with it.
    pub problem: String,
    /// Batches and punches carried into the fresh file.
    pub batches: u64,
    pub punches: u64,
    /// What could not be read, one line each (row ranges, undecodable batches, a wholly unreadable file).
    pub unreadable: Vec<String>,
}

/// Checks the file at `path` and, if it is damaged, recovers it. `None` when there is no file yet or it is sound.
pub(super) async fn check(path: &Path) -> Result<Option<Recovery>, OutboxError> {
    if !tokio::fs::try_exists(path).await? {
        return Ok(None);
    }
    let problem = match quick_check(path).await {
        Ok(None) => return Ok(None),
        Ok(Some(problem)) => problem,
        Err(e) if is_damage(&e) => e.to_string(),
        // Locked by another process, no permission, a full disk: not damage, and not ours to fix.
        Err(e) => return Err(e.into()),
    };
    tracing::error!(path = %path.display(), %problem, "the outbox file is damaged; recovering what can be read");
    let recovery = repair(path, problem).await?;
    tracing::warn!(
        path = %path.display(),
        damaged_copy = %recovery.damaged_copy.display(),
        batches = recovery.batches,
        punches = recovery.punches,
        unreadable = recovery.unreadable.len(),
        "outbox recovered; every device's next sync sends its whole log again"
    );
    for what in &recovery.unreadable {
        tracing::error!(path = %recovery.damaged_copy.display(), unreadable = %what, "part of the outbox was lost");
    }
    Ok(Some(recovery))
}

/// `Ok(None)` when SQLite's quick check passes, `Ok(Some(what))` when it finds damage.
async fn quick_check(path: &Path) -> Result<Option<String>, sqlx::Error> {
    let mut conn = options(path).create_if_missing(false).connect().await?;
    let lines: Vec<String> = sqlx::query_scalar("PRAGMA quick_check").fetch_all(&mut conn).await?;
    conn.close().await?;
    if lines.len() == 1 && lines[0] == "ok" {
        return Ok(None);
    }
    Ok(Some(lines.into_iter().take(5).collect::<Vec<_>>().join("; ")))
}

/// SQLite's "corrupt" and "not a database" (primary codes 11 and 26), and short reads of a truncated file.
fn is_damage(e: &sqlx::Error) -> bool {
    let Some(db) = e.as_database_error() else { return false };
    let code: i64 = db.code().and_then(|c| c.parse().ok()).unwrap_or(0);
    matches!(code & 0xff, 11 | 26) || code == 522
}

async fn repair(path: &Path, problem: String) -> Result<Recovery, OutboxError> {
    let damaged_copy = aside(path);
    // The WAL belongs to its database: it moves with it. The shared-memory index is rebuilt from the WAL.
    tokio::fs::rename(path, &damaged_copy).await?;
    let _ = tokio::fs::rename(suffixed(path, "-wal"), suffixed(&damaged_copy, "-wal")).await;
    let _ = tokio::fs::remove_file(suffixed(path, "-shm")).await;

    let mut unreadable = Vec::new();
    let (batches, last_id) = salvage(&damaged_copy, &mut unreadable).await;
    let mut conn = options(path).connect().await?;
    sqlx::raw_sql(SCHEMA).execute(&mut conn).await?;
    let mut tx = conn.begin_with("BEGIN IMMEDIATE").await?;
    let mut punches = 0u64;
    for b in &batches {
        sqlx::query(
            "INSERT INTO batch (id, device, read_id, punches, created_ms, records) VALUES (?, ?, NULL, ?, ?, ?)",
        )
        .bind(b.id)
        .bind(&b.device)
        .bind(b.records.len() as i64)
        .bind(b.created_ms)
        .bind(serde_json::to_string(&b.records)?)
        .execute(&mut *tx)
        .await?;
        punches += b.records.len() as u64;
    }
    // Ids of lost batches are not handed out again.
    // (sqlite_sequence has no key: update the row the inserts made, or make one.)
    let updated = sqlx::query("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'batch'")
        .bind(last_id)
        .execute(&mut *tx)
        .await?;
    if updated.rows_affected() == 0 {
        sqlx::query("INSERT INTO sqlite_sequence (name, seq) VALUES ('batch', ?)")
            .bind(last_id)
            .execute(&mut *tx)
            .await?;
    }
    tx.commit().await?;
    conn.close().await?;
    Ok(Recovery { damaged_copy, problem, batches: batches.len() as u64, punches, unreadable })
}

struct Salvaged {
    id: i64,
    device: String,
    created_ms: i64,
    records: Vec<Punch>,
}

/// Every batch of the damaged file that can be read, in id order, and the highest id it ever handed out. A damaged
/// region of the table is stepped over by asking for rows past ever larger ids, so one bad page costs only the
/// rows on it.
async fn salvage(path: &Path, unreadable: &mut Vec<String>) -> (Vec<Salvaged>, i64) {
    // No journal-mode change, no creation: read what is there. `writable_schema` makes SQLite read a file shorter
    // than its header says (a truncated file) instead of refusing it whole.
    let opts = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(false)
        .locking_mode(sqlx::sqlite::SqliteLockingMode::Exclusive)
        .pragma("writable_schema", "ON");
    let mut conn = match opts.connect().await {
        Ok(c) => c,
        Err(e) => {
            unreadable.push(format!("the whole file: {e}"));
            return (Vec::new(), 0);
        }
    };
    let seq: i64 = sqlx::query_scalar("SELECT seq FROM sqlite_sequence WHERE name = 'batch'")
        .fetch_optional(&mut conn)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    let max_id: i64 =
        sqlx::query_scalar("SELECT max(id) FROM batch").fetch_one(&mut conn).await.ok().flatten().unwrap_or(0);
    // Past the highest id known, nothing is looked for; with neither known, a generous bound.
    let horizon = seq.max(max_id).max(1_000_000);
    let mut out = Vec::new();
    let mut after = 0i64;
    // Rows left to read one at a time after a failure, so the rows right before a bad page are not given up.
    let mut careful = 0u32;
    loop {
        let limit = if careful > 0 { 1 } else { 64 };
        match page(&mut conn, after, limit).await {
            Ok(rows) if rows.is_empty() => break,
            Ok(rows) => {
                careful = careful.saturating_sub(1);
                for (id, row) in rows {
                    after = id;
                    match row {
                        Ok(b) => out.push(b),
                        Err(why) => unreadable.push(format!("batch {id}: {why}")),
                    }
                }
            }
            Err(_) if careful == 0 => careful = 64,
            Err(e) => match skip(&mut conn, after, horizon).await {
                Some(next) => {
                    unreadable.push(format!("rows with ids {}..={next}: {e}", after + 1));
                    after = next;
                }
                None => {
                    unreadable.push(format!("rows with ids above {after}: {e}"));
                    break;
                }
            },
        }
    }
    let _ = conn.close().await;
    let last = out.last().map_or(0, |b| b.id);
    (out, seq.max(max_id).max(last).max(after))
}

type Page = Vec<(i64, Result<Salvaged, String>)>;

async fn page(conn: &mut SqliteConnection, after: i64, limit: i64) -> Result<Page, sqlx::Error> {
    let rows = sqlx::query("SELECT id, device, created_ms, records FROM batch WHERE id > ? ORDER BY id LIMIT ?")
        .bind(after)
        .bind(limit)
        .fetch_all(conn)
        .await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let id: i64 = row.try_get("id")?;
        let batch = (|| {
            let records: String = row.try_get("records").map_err(|e| e.to_string())?;
            Ok(Salvaged {
                id,
                device: row.try_get("device").map_err(|e| e.to_string())?,
                created_ms: row.try_get("created_ms").unwrap_or(0),
                records: serde_json::from_str(&records).map_err(|e| format!("undecodable records ({e})"))?,
            })
        })();
        out.push((id, batch));
    }
    Ok(out)
}

/// The smallest id past `after` (stepping 1, 2, 4, ...) from which the table reads again; `None` up to `horizon`.
async fn skip(conn: &mut SqliteConnection, after: i64, horizon: i64) -> Option<i64> {
    let mut step = 1i64;
    while after.saturating_add(step) <= horizon {
        let from = after + step;
        let probe: Result<Option<i64>, _> = sqlx::query_scalar("SELECT id FROM batch WHERE id > ? ORDER BY id LIMIT 1")
            .bind(from)
            .fetch_optional(&mut *conn)
            .await;
        if probe.is_ok() {
            return Some(from);
        }
        step = step.saturating_mul(2);
    }
    None
}

/// `outbox.db` -> `outbox.damaged-<unix ms>.db`, beside it.
fn aside(path: &Path) -> PathBuf {
    let stem = path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "outbox".into());
    let ext = path.extension().map(|e| format!(".{}", e.to_string_lossy())).unwrap_or_default();
    path.with_file_name(format!("{stem}.damaged-{}{ext}", jiff::Timestamp::now().as_millisecond()))
}

fn suffixed(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}
