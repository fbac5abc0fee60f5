//! The durable outbox: attendance records go into a local SQLite file before they go to the server, and leave it
//! only when the server acknowledged them (its `Ack` comes after its database commit). A crash anywhere means a
//! re-send, which the server's unique key makes harmless; nothing is dropped before the ack.
//!
//! - One connection does all the work, reads included: no statement of ours ever waits for a lock held by another
//!   of ours, and the in-memory request tags change under the same lock as the rows they describe. The file is
//!   opened in exclusive locking mode, so a second agent pointed at the same file fails instead of sharing it.
//! - WAL with `synchronous=FULL`: a committed read survives a power cut, not only a crash.
//! - Each terminal read is one transaction: its batches, and the watermark it will leave once every batch of it
//!   is acknowledged (`plan`). A read with nothing new advances the watermark at once.
//! - Disk use is bounded: above `max_bytes` new records are refused (they stay on the terminal), queued ones are
//!   never dropped. Crossing 80 % of the bound is logged as a warning, once per crossing (again only after the
//!   fill went back under 70 %); the fill goes to the server with every reachability report (`stats`).
//! - `recover`: a damaged file at start is moved aside and what can be read of it is carried into a fresh one.

mod plan;
mod recover;
#[cfg(test)]
mod tests;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use essl_wire::{AgentMsg, DeviceUser, MAX_PUNCHES_PER_BATCH, MAX_USERS_PER_BATCH, Punch};
use sqlx::sqlite::{
    SqliteAutoVacuum, SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqliteLockingMode, SqliteSynchronous,
};
use sqlx::{ConnectOptions, Connection, Row, SqliteExecutor};
use tokio::sync::{Mutex, watch};

pub use plan::{Reset, Watermark, plan};
pub use recover::Recovery;

/// The fill, in percent of the bound, at which the outbox warns (once) ...
pub const WARN_AT_PERCENT: u64 = 80;
/// ... and under which it is ready to warn again: no storm of warnings while the fill hovers around the line.
pub const REARM_BELOW_PERCENT: u64 = 70;

/// Whether a fill of `used` bytes of `max` crosses the warning line: `Some(true)` upwards (warn), `Some(false)`
/// back under the re-arm line, `None` no crossing. `high`: the warning was given and not re-armed.
fn fill_crossing(high: bool, used: u64, max: u64) -> Option<bool> {
    let percent = fill_percent(used, max);
    if !high && percent >= WARN_AT_PERCENT {
        Some(true)
    } else if high && percent < REARM_BELOW_PERCENT {
        Some(false)
    } else {
        None
    }
}

fn fill_percent(used: u64, max: u64) -> u64 {
    let percent = u128::from(used) * 100 / u128::from(max.max(1));
    u64::try_from(percent).unwrap_or(u64::MAX)
}

/// Tables of a fresh outbox. `batch.id` is the wire batch id: AUTOINCREMENT, so an id is never reused.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS batch (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    read_id INTEGER,
    punches INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    records TEXT NOT NULL,
    users TEXT
);
CREATE INDEX IF NOT EXISTS batch_read_idx ON batch (read_id);
CREATE TABLE IF NOT EXISTS pending_read (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    device TEXT NOT NULL,
    serial TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_record TEXT,
    newest_time TEXT,
    created_ms INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_read_device_idx ON pending_read (device, id);
CREATE TABLE IF NOT EXISTS watermark (
    device TEXT PRIMARY KEY,
    serial TEXT NOT NULL,
    count INTEGER NOT NULL,
    last_record TEXT,
    newest_time TEXT,
    read_id INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS user_list (
    device TEXT PRIMARY KEY,
    users TEXT NOT NULL,
    updated_ms INTEGER NOT NULL
);
";

/// Outbox files written before `batch.users` existed get the column (`NULL`: no user list) when opened.
async fn upgrade(conn: &mut SqliteConnection) -> Result<(), OutboxError> {
    let has_users: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pragma_table_info('batch') WHERE name = 'users')")
            .fetch_one(&mut *conn)
            .await?;
    if !has_users {
        sqlx::query("ALTER TABLE batch ADD COLUMN users TEXT").execute(&mut *conn).await?;
    }
    Ok(())
}

/// Why the outbox could not do something.
#[derive(Debug, thiserror::Error)]
pub enum OutboxError {
    #[error(
        "the outbox is full ({used} bytes queued, limit {max}): the server has not acknowledged what is queued; \
         new records stay on the terminal until it does"
    )]
    Full { used: u64, max: u64 },
    #[error("outbox database: {0}")]
    Db(#[from] sqlx::Error),
    #[error("outbox record encoding: {0}")]
    Encoding(#[from] serde_json::Error),
    #[error("outbox file: {0}")]
    Io(#[from] std::io::Error),
}

/// Which request of which connection a read was made for: its batches carry `request: Some(id)` when sent on that
/// connection, and `None` on any later one (the request is gone by then).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tag {
    pub conn: u64,
    pub request: u64,
}

/// One read of a terminal's whole log.
#[derive(Debug, Clone)]
pub struct TerminalRead {
    pub serial: String,
    pub records: Vec<Punch>,
    /// The users enrolled on the terminal, read in the same session; `None` when they could not be read.
    pub users: Option<Vec<DeviceUser>>,
}

/// What [`Outbox::enqueue_read`] queued.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Enqueued {
    /// Records on the terminal.
    pub read: u64,
    /// Of those, records queued to be sent (past the watermark, or all of them).
    pub sent: u64,
    /// The batches holding them, in send order.
    pub batches: Vec<u64>,
    /// Set when a watermark existed but everything was queued again.
    pub reset: Option<Reset>,
}

/// One queued batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Queued {
    pub id: u64,
    pub device: String,
    pub records: Vec<Punch>,
    /// The terminal's user list, when this batch carries it (then usually without records).
    pub users: Option<Vec<DeviceUser>>,
    pub tag: Option<Tag>,
}

/// What is queued now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stats {
    pub batches: u64,
    pub punches: u64,
    /// Bytes the database uses (free pages excluded).
    pub bytes: u64,
    pub max_bytes: u64,
}

/// The outbox; cheap to clone, every clone shares the one connection.
#[derive(Clone)]
pub struct Outbox {
    inner: Arc<Inner>,
}

struct Inner {
    db: Mutex<Db>,
    path: PathBuf,
    max_bytes: u64,
    /// Bumped after every enqueue: the uploader waits on it.
    queued: watch::Sender<u64>,
    /// Bumped after every ack: syncs waiting for their batches wait on it.
    acked: watch::Sender<u64>,
    /// The last enqueue was refused for want of space (warn once, then say when it clears).
    full: AtomicBool,
    /// The fill crossed [`WARN_AT_PERCENT`] and has not been under [`REARM_BELOW_PERCENT`] since.
    high: AtomicBool,
}

struct Db {
    conn: SqliteConnection,
    tags: HashMap<u64, Tag>,
}

/// The connection settings of an outbox file (also used by recovery for the fresh file).
fn options(path: &Path) -> SqliteConnectOptions {
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .locking_mode(SqliteLockingMode::Exclusive)
        .auto_vacuum(SqliteAutoVacuum::Incremental)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        // Only another process can hold the lock (a previous agent still closing): wait for it a while.
        .busy_timeout(Duration::from_secs(10))
}

impl Outbox {
    /// Opens (or creates) the outbox at `path`. A damaged file is recovered rather than refused: the report says
    /// what was saved and what was not, and the agent goes on with the fresh file.
    pub async fn open(path: &Path, max_bytes: u64) -> Result<(Outbox, Option<Recovery>), OutboxError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            tokio::fs::create_dir_all(dir).await?;
        }
        let recovery = recover::check(path).await?;
        let mut conn = options(path).connect().await?;
        sqlx::raw_sql(SCHEMA).execute(&mut conn).await?;
        upgrade(&mut conn).await?;
        let outbox = Outbox {
            inner: Arc::new(Inner {
                db: Mutex::new(Db { conn, tags: HashMap::new() }),
                path: path.to_owned(),
                max_bytes,
                queued: watch::Sender::new(0),
                acked: watch::Sender::new(0),
                full: AtomicBool::new(false),
                high: AtomicBool::new(false),
            }),
        };
        Ok((outbox, recovery))
    }

    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Wakes on every enqueue.
    pub fn queued_changes(&self) -> watch::Receiver<u64> {
        self.inner.queued.subscribe()
    }

    /// Wakes on every ack.
    pub fn acks(&self) -> watch::Receiver<u64> {
        self.inner.acked.subscribe()
    }

    /// Queues a read of `device`'s whole log: the records past its watermark (all of them on a first read or when
    /// the log was cleared or the terminal replaced), in one transaction with the watermark the read leaves. The
    /// read's user list goes first, in a batch of its own, when it differs from the last one queued.
    pub async fn enqueue_read(
        &self,
        device: &str,
        read: &TerminalRead,
        tag: Option<Tag>,
    ) -> Result<Enqueued, OutboxError> {
        let mut db = self.inner.db.lock().await;
        self.check_space(&mut db.conn).await?;
        let mut tx = db.conn.begin_with("BEGIN IMMEDIATE").await?;
        let base = match latest_pending(&mut tx, device).await? {
            Some(pending) => Some(pending),
            None => watermark(&mut tx, device).await?,
        };
        let (start, reset) = plan(base.as_ref(), &read.serial, &read.records);
        let mark = Watermark::of(&read.serial, &read.records);
        let now = now_ms();
        let read_id: i64 = sqlx::query_scalar(
            "INSERT INTO pending_read (device, serial, count, last_record, newest_time, created_ms) \
             VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
        )
        .bind(device)
        .bind(&mark.serial)
        .bind(to_i64(mark.count))
        .bind(mark.last.as_ref().map(serde_json::to_string).transpose()?)
        .bind(&mark.newest_time)
        .bind(now)
        .fetch_one(&mut *tx)
        .await?;
        let fresh = read.records.get(start..).unwrap_or_default();
        let mut batches = Vec::new();
        if let Some(users) = &read.users {
            batches.extend(queue_user_list(&mut tx, device, Some(read_id), users, now).await?);
        }
        for chunk in fresh.chunks(MAX_PUNCHES_PER_BATCH) {
            batches.push(insert_batch(&mut *tx, device, Some(read_id), chunk, now).await?);
        }
        promote(&mut tx, device).await?;
        tx.commit().await?;
        if let Some(tag) = tag {
            db.tags.extend(batches.iter().map(|b| (*b, tag)));
        }
        self.observe_fill(&mut db.conn).await?;
        drop(db);
        if !batches.is_empty() {
            self.inner.queued.send_modify(|n| *n += 1);
        }
        Ok(Enqueued { read: mark.count, sent: fresh.len() as u64, batches, reset })
    }

    /// Queues the terminal's user list when it differs from the last one queued for `device` (the realtime
    /// subscription reads it when it starts and when an unknown PIN punches). `Ok(None)`: unchanged, nothing queued.
    pub async fn enqueue_users(&self, device: &str, users: &[DeviceUser]) -> Result<Option<u64>, OutboxError> {
        let mut db = self.inner.db.lock().await;
        self.check_space(&mut db.conn).await?;
        let mut tx = db.conn.begin_with("BEGIN IMMEDIATE").await?;
        let batch = queue_user_list(&mut tx, device, None, users, now_ms()).await?;
        tx.commit().await?;
        drop(db);
        if batch.is_some() {
            self.inner.queued.send_modify(|n| *n += 1);
        }
        Ok(batch)
    }

    /// Queues punches the terminal announced as they happened. They leave the watermark alone: the next read
    /// sends them again, which the server ignores.
    pub async fn enqueue_punches(&self, device: &str, punches: &[Punch]) -> Result<Vec<u64>, OutboxError> {
        let mut db = self.inner.db.lock().await;
        self.check_space(&mut db.conn).await?;
        let mut tx = db.conn.begin_with("BEGIN IMMEDIATE").await?;
        let mut batches = Vec::new();
        for chunk in punches.chunks(MAX_PUNCHES_PER_BATCH) {
            batches.push(insert_batch(&mut *tx, device, None, chunk, now_ms()).await?);
        }
        tx.commit().await?;
        self.observe_fill(&mut db.conn).await?;
        drop(db);
        self.inner.queued.send_modify(|n| *n += 1);
        Ok(batches)
    }

    /// The oldest queued batch after batch `after` (0: the oldest of all).
    pub async fn next_after(&self, after: u64) -> Result<Option<Queued>, OutboxError> {
        let mut db = self.inner.db.lock().await;
        let row = sqlx::query("SELECT id, device, records, users FROM batch WHERE id > ? ORDER BY id LIMIT 1")
            .bind(to_i64(after))
            .fetch_optional(&mut db.conn)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let id = to_u64(row.try_get("id")?);
        let records: String = row.try_get("records")?;
        let users: Option<String> = row.try_get("users")?;
        Ok(Some(Queued {
            id,
            device: row.try_get("device")?,
            records: serde_json::from_str(&records)?,
            users: users.as_deref().map(serde_json::from_str).transpose()?,
            tag: db.tags.get(&id).copied(),
        }))
    }

    /// The server committed `batch`: forget it, and advance its device's watermark when that was the last batch
    /// of a read. Unknown ids (acknowledged twice) are ignored.
    pub async fn ack(&self, batch: u64) -> Result<(), OutboxError> {
        let mut db = self.inner.db.lock().await;
        db.tags.remove(&batch);
        let mut tx = db.conn.begin_with("BEGIN IMMEDIATE").await?;
        let device: Option<String> = sqlx::query_scalar("DELETE FROM batch WHERE id = ? RETURNING device")
            .bind(to_i64(batch))
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(device) = &device {
            promote(&mut tx, device).await?;
        }
        tx.commit().await?;
        if device.is_some() {
            let empty: bool =
                sqlx::query_scalar("SELECT NOT EXISTS (SELECT 1 FROM batch)").fetch_one(&mut db.conn).await?;
            if empty {
                // Give the pages of a big flush back to the file system once nothing is queued.
                sqlx::query("PRAGMA incremental_vacuum").execute(&mut db.conn).await?;
            }
            self.observe_fill(&mut db.conn).await?;
        }
        drop(db);
        self.inner.acked.send_modify(|n| *n += 1);
        Ok(())
    }

    /// How many of `batches` are still queued.
    pub async fn still_queued(&self, batches: &[u64]) -> Result<usize, OutboxError> {
        let mut db = self.inner.db.lock().await;
        let mut n = 0;
        for b in batches {
            let found: Option<i64> = sqlx::query_scalar("SELECT id FROM batch WHERE id = ?")
                .bind(to_i64(*b))
                .fetch_optional(&mut db.conn)
                .await?;
            n += usize::from(found.is_some());
        }
        Ok(n)
    }

    /// What is queued now, and the disk it takes.
    pub async fn stats(&self) -> Result<Stats, OutboxError> {
        let mut db = self.inner.db.lock().await;
        let row = sqlx::query("SELECT count(*) AS batches, coalesce(sum(punches), 0) AS punches FROM batch")
            .fetch_one(&mut db.conn)
            .await?;
        Ok(Stats {
            batches: to_u64(row.try_get("batches")?),
            punches: to_u64(row.try_get("punches")?),
            bytes: used_bytes(&mut db.conn).await?,
            max_bytes: self.inner.max_bytes,
        })
    }

    /// The device's acknowledged watermark: everything up to it is stored on the server.
    pub async fn watermark(&self, device: &str) -> Result<Option<Watermark>, OutboxError> {
        let mut db = self.inner.db.lock().await;
        watermark(&mut db.conn, device).await
    }

    /// Whether everything in `read` (a read of `device`'s whole log) is acknowledged by the server: nothing of the
    /// device is queued, and its acknowledged watermark is this very log (same serial, same count, same last
    /// record). `Err` names what is missing. An empty log with nothing queued is trivially stored.
    pub async fn confirms(&self, device: &str, read: &TerminalRead) -> Result<Result<(), String>, OutboxError> {
        let mut db = self.inner.db.lock().await;
        let (batches, punches): (i64, i64) =
            // A user list alone holds no record (its read's watermark, checked below, waits for it).
            sqlx::query_as("SELECT count(*), coalesce(sum(punches), 0) FROM batch WHERE device = ? AND punches > 0")
                .bind(device)
                .fetch_one(&mut db.conn)
                .await?;
        if batches > 0 {
            return Ok(Err(format!(
                "{punches} records of this terminal in {batches} batches are not yet acknowledged by the server"
            )));
        }
        if read.records.is_empty() {
            return Ok(Ok(()));
        }
        let Some(mark) = watermark(&mut db.conn, device).await? else {
            return Ok(Err(format!(
                "none of the {} records on the terminal was sent to the server yet",
                read.records.len()
            )));
        };
        let now = Watermark::of(&read.serial, &read.records);
        if mark.serial != now.serial || mark.count != now.count || mark.last != now.last {
            let (start, _) = plan(Some(&mark), &read.serial, &read.records);
            let unsent = read.records.len() - start.min(read.records.len());
            return Ok(Err(format!(
                "{unsent} of the {} records on the terminal are not yet acknowledged by the server",
                read.records.len()
            )));
        }
        Ok(Ok(()))
    }

    /// The batches of `device` still queued, oldest first.
    pub async fn queued_for(&self, device: &str) -> Result<Vec<u64>, OutboxError> {
        let mut db = self.inner.db.lock().await;
        let ids: Vec<i64> = sqlx::query_scalar("SELECT id FROM batch WHERE device = ? ORDER BY id")
            .bind(device)
            .fetch_all(&mut db.conn)
            .await?;
        Ok(ids.into_iter().map(to_u64).collect())
    }

    /// The terminal's log was just cleared (every record of it confirmed stored): its watermark becomes the empty
    /// log of `serial`, so the next read sends whatever is new without calling it a reset. Left alone (the next
    /// read then sends everything again, harmlessly) if anything of the device was queued meanwhile.
    pub async fn mark_cleared(&self, device: &str, serial: &str) -> Result<bool, OutboxError> {
        let mut db = self.inner.db.lock().await;
        let mut tx = db.conn.begin_with("BEGIN IMMEDIATE").await?;
        let busy: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM batch WHERE device = ?1) OR EXISTS (SELECT 1 FROM pending_read WHERE device = ?1)",
        )
        .bind(device)
        .fetch_one(&mut *tx)
        .await?;
        if busy {
            return Ok(false);
        }
        sqlx::query(
            "INSERT INTO watermark (device, serial, count, last_record, newest_time, read_id, updated_ms) \
             VALUES (?, ?, 0, NULL, NULL, 0, ?) \
             ON CONFLICT (device) DO UPDATE SET serial = excluded.serial, count = 0, last_record = NULL, \
             newest_time = NULL, updated_ms = excluded.updated_ms",
        )
        .bind(device)
        .bind(serial)
        .bind(now_ms())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(true)
    }

    /// Whether the device was read before (a watermark, or a read still waiting for acks): the agent is resuming
    /// it, and what happened while it was away is worth a sync at once.
    pub async fn knows(&self, device: &str) -> Result<bool, OutboxError> {
        let mut db = self.inner.db.lock().await;
        let known: bool = sqlx::query_scalar(
            "SELECT EXISTS (SELECT 1 FROM watermark WHERE device = ?1) OR EXISTS (SELECT 1 FROM pending_read WHERE device = ?1)",
        )
        .bind(device)
        .fetch_one(&mut db.conn)
        .await?;
        Ok(known)
    }

    /// Moves the WAL into the main file and closes it (a clean stop; a crash is as safe, only slower to open).
    pub async fn close(self) -> Result<(), OutboxError> {
        let mut db = self.inner.db.lock().await;
        sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)").execute(&mut db.conn).await?;
        Ok(())
    }

    /// Logs a crossing of the warning line (see [`WARN_AT_PERCENT`]); called under the connection's lock.
    async fn observe_fill(&self, conn: &mut SqliteConnection) -> Result<(), OutboxError> {
        let used = used_bytes(conn).await?;
        self.note_fill(used);
        Ok(())
    }

    fn note_fill(&self, used: u64) {
        let max = self.inner.max_bytes;
        let high = self.inner.high.load(Ordering::Relaxed);
        let percent = fill_percent(used, max);
        match fill_crossing(high, used, max) {
            Some(true) => {
                self.inner.high.store(true, Ordering::Relaxed);
                tracing::warn!(
                    used_bytes = used,
                    max_bytes = max,
                    percent,
                    path = %self.inner.path.display(),
                    "the outbox is over {WARN_AT_PERCENT} % of its bound: the server has not acknowledged what is \
                     queued; when it is full, new terminal reads are refused (nothing queued is dropped)"
                );
            }
            Some(false) => {
                self.inner.high.store(false, Ordering::Relaxed);
                tracing::info!(
                    used_bytes = used,
                    max_bytes = max,
                    percent,
                    "the outbox is back under {REARM_BELOW_PERCENT} % of its bound"
                );
            }
            None => {}
        }
    }

    async fn check_space(&self, conn: &mut SqliteConnection) -> Result<(), OutboxError> {
        let used = used_bytes(conn).await?;
        self.note_fill(used);
        let max = self.inner.max_bytes;
        if used >= max {
            if !self.inner.full.swap(true, Ordering::Relaxed) {
                tracing::warn!(
                    used_bytes = used,
                    max_bytes = max,
                    path = %self.inner.path.display(),
                    "the outbox is full: new terminal reads are refused until the server acknowledges what is queued \
                     (nothing queued is dropped; the records stay on the terminals)"
                );
            }
            return Err(OutboxError::Full { used, max });
        }
        if self.inner.full.swap(false, Ordering::Relaxed) {
            tracing::info!(used_bytes = used, max_bytes = max, "the outbox has room again");
        }
        Ok(())
    }
}

async fn insert_batch(
    conn: impl SqliteExecutor<'_>,
    device: &str,
    read_id: Option<i64>,
    records: &[Punch],
    now: i64,
) -> Result<u64, OutboxError> {
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO batch (device, read_id, punches, created_ms, records) VALUES (?, ?, ?, ?, ?) RETURNING id",
    )
    .bind(device)
    .bind(read_id)
    .bind(records.len() as i64)
    .bind(now)
    .bind(serde_json::to_string(records)?)
    .fetch_one(conn)
    .await?;
    Ok(to_u64(id))
}

/// Queues `users` as a batch of their own (no records) unless they are the list last queued for `device`; a list
/// too big for one message is not queued at all (the device's punches are then stored unflagged), with a warning.
async fn queue_user_list(
    conn: &mut SqliteConnection,
    device: &str,
    read_id: Option<i64>,
    users: &[DeviceUser],
    now: i64,
) -> Result<Option<u64>, OutboxError> {
    let json = serde_json::to_string(users)?;
    let last: Option<String> = sqlx::query_scalar("SELECT users FROM user_list WHERE device = ?")
        .bind(device)
        .fetch_optional(&mut *conn)
        .await?;
    if last.as_deref() == Some(json.as_str()) {
        return Ok(None);
    }
    if let Err(why) = fits_one_message(device, users) {
        tracing::warn!(%device, users = users.len(), %why, "the terminal's user list is not sent: its punches are stored without the unknown-user check");
        return Ok(None);
    }
    let id: i64 = sqlx::query_scalar(
        "INSERT INTO batch (device, read_id, punches, created_ms, records, users) VALUES (?, ?, 0, ?, '[]', ?) \
         RETURNING id",
    )
    .bind(device)
    .bind(read_id)
    .bind(now)
    .bind(&json)
    .fetch_one(&mut *conn)
    .await?;
    sqlx::query(
        "INSERT INTO user_list (device, users, updated_ms) VALUES (?, ?, ?) \
         ON CONFLICT (device) DO UPDATE SET users = excluded.users, updated_ms = excluded.updated_ms",
    )
    .bind(device)
    .bind(&json)
    .bind(now)
    .execute(&mut *conn)
    .await?;
    Ok(Some(to_u64(id)))
}

/// Whether a batch carrying `users` stays within the wire's limits.
fn fits_one_message(device: &str, users: &[DeviceUser]) -> Result<(), String> {
    if users.len() > MAX_USERS_PER_BATCH {
        return Err(format!("{} users, more than {MAX_USERS_PER_BATCH}", users.len()));
    }
    let msg = AgentMsg::Punches {
        batch: u64::MAX,
        device: device.to_owned(),
        request: Some(u64::MAX),
        records: Vec::new(),
        users: Some(users.to_vec()),
    };
    essl_wire::encode_agent(&msg).map(drop).map_err(|e| e.to_string())
}

/// Advances the device's watermark over every read, oldest first, whose batches are all acknowledged; stops at
/// the first that still has batches queued, so a watermark never passes an unacknowledged record.
async fn promote(conn: &mut SqliteConnection, device: &str) -> Result<(), OutboxError> {
    loop {
        let oldest: Option<i64> =
            sqlx::query_scalar("SELECT id FROM pending_read WHERE device = ? ORDER BY id LIMIT 1")
                .bind(device)
                .fetch_optional(&mut *conn)
                .await?;
        let Some(read_id) = oldest else { return Ok(()) };
        let waiting: bool = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM batch WHERE read_id = ?)")
            .bind(read_id)
            .fetch_one(&mut *conn)
            .await?;
        if waiting {
            return Ok(());
        }
        sqlx::query(
            "INSERT INTO watermark (device, serial, count, last_record, newest_time, read_id, updated_ms) \
             SELECT device, serial, count, last_record, newest_time, id, ? FROM pending_read WHERE id = ? \
             ON CONFLICT (device) DO UPDATE SET serial = excluded.serial, count = excluded.count, \
             last_record = excluded.last_record, newest_time = excluded.newest_time, read_id = excluded.read_id, \
             updated_ms = excluded.updated_ms",
        )
        .bind(now_ms())
        .bind(read_id)
        .execute(&mut *conn)
        .await?;
        sqlx::query("DELETE FROM pending_read WHERE id = ?").bind(read_id).execute(&mut *conn).await?;
    }
}

/// The newest read of the device still waiting for acks: its records are durably queued, so the next read need
/// not queue them again.
async fn latest_pending(conn: &mut SqliteConnection, device: &str) -> Result<Option<Watermark>, OutboxError> {
    let row = sqlx::query(
        "SELECT serial, count, last_record, newest_time FROM pending_read WHERE device = ? ORDER BY id DESC LIMIT 1",
    )
    .bind(device)
    .fetch_optional(conn)
    .await?;
    row.map(|r| watermark_of(&r)).transpose()
}

async fn watermark(conn: &mut SqliteConnection, device: &str) -> Result<Option<Watermark>, OutboxError> {
    let row = sqlx::query("SELECT serial, count, last_record, newest_time FROM watermark WHERE device = ?")
        .bind(device)
        .fetch_optional(conn)
        .await?;
    row.map(|r| watermark_of(&r)).transpose()
}

fn watermark_of(row: &sqlx::sqlite::SqliteRow) -> Result<Watermark, OutboxError> {
    let last: Option<String> = row.try_get("last_record")?;
    Ok(Watermark {
        serial: row.try_get("serial")?,
        count: to_u64(row.try_get("count")?),
        last: last.as_deref().map(serde_json::from_str).transpose()?,
        newest_time: row.try_get("newest_time")?,
    })
}

/// Bytes in use by the database (pages minus free pages; the WAL is checkpointed into them regularly).
async fn used_bytes(conn: &mut SqliteConnection) -> Result<u64, OutboxError> {
    let used: i64 = sqlx::query_scalar(
        "SELECT (p.page_count - f.freelist_count) * s.page_size \
         FROM pragma_page_count() AS p, pragma_freelist_count() AS f, pragma_page_size() AS s",
    )
    .fetch_one(conn)
    .await?;
    Ok(to_u64(used))
}

fn now_ms() -> i64 {
    jiff::Timestamp::now().as_millisecond()
}

/// SQLite integers are signed; ids and counts are never negative.
fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

fn to_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
