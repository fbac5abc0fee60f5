//! The SQLite backend: the embedded default for a single server instance.
//!
//! Writes go through one connection (`writer`, a pool of one) and write transactions start with `BEGIN IMMEDIATE`,
//! so writers queue in the pool instead of failing with SQLITE_BUSY; another process on the same file waits on
//! the busy timeout. Reads use their own pool and, in WAL mode, never wait for the writer. An in-memory database
//! lives in one connection that serves both. Inputs were checked by [`super::Store`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::check::{self, StoreError, ms_to_ts, opt_ms_to_ts};
use super::model::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a writer of another process waits for the file lock before SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Punches per INSERT: 9 parameters each, under SQLite's 32,766 bound parameters.
const PUNCH_ROWS: usize = 3_000;
/// Device users per INSERT: 7 parameters each.
const USER_ROWS: usize = 2_000;

/// SQLite pools; cheap to clone.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    writer: SqlitePool,
    reader: SqlitePool,
}

macro_rules! site_cols {
    () => {
        "id, name, created_at"
    };
}
macro_rules! device_cols {
    () => {
        "id, device_name, kind, ip_address, port, comm_key, udp, serial_number, timezone, site_id, is_active, \
         created_at, updated_at"
    };
}
macro_rules! agent_cols {
    () => {
        "id, name, site_id, created_at, revoked_at, last_seen, version, hostname"
    };
}
macro_rules! token_cols {
    () => {
        "id, name, role, created_at, revoked_at"
    };
}
macro_rules! punch_cols {
    () => {
        "id, device_id, user_id, uid, local_time, punched_at, status, punch, flags, inserted_at"
    };
}
macro_rules! sync_cols {
    () => {
        "id, device_id, last_sync_time, sync_status, records_synced, records_total, error_message, error_kind, \
         synced_by_user_id, sync_duration_ms, agent_id"
    };
}

impl SqliteStore {
    pub(crate) async fn connect(url: &str) -> Result<Self, StoreError> {
        let options = SqliteConnectOptions::from_str(url).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")).unwrap_or(url);
        let (path, params) = rest.split_once('?').unwrap_or((rest, ""));
        let in_memory = path == ":memory:" || params.split('&').any(|kv| kv == "mode=memory");
        if path.is_empty() && !in_memory {
            return Err(StoreError::Invalid("sqlite URL names no file (use sqlite:PATH or sqlite::memory:)".into()));
        }
        let options = options
            .create_if_missing(true)
            .foreign_keys(true)
            .busy_timeout(BUSY_TIMEOUT)
            .synchronous(SqliteSynchronous::Full);
        let unavailable = |e: sqlx::Error| StoreError::Unavailable(e.to_string());

        let store = if in_memory {
            // One connection for ever: the database lives exactly as long as it.
            let pool = SqlitePoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
                .connect_with(options)
                .await
                .map_err(unavailable)?;
            MIGRATOR.run(&pool).await?;
            SqliteStore { writer: pool.clone(), reader: pool }
        } else {
            let options = options.journal_mode(SqliteJournalMode::Wal);
            let writer =
                SqlitePoolOptions::new().max_connections(1).connect_with(options.clone()).await.map_err(unavailable)?;
            MIGRATOR.run(&writer).await?;
            let readers = std::thread::available_parallelism().map_or(4, |n| n.get().clamp(2, 8) as u32);
            let reader =
                SqlitePoolOptions::new().max_connections(readers).connect_with(options).await.map_err(unavailable)?;
            SqliteStore { writer, reader }
        };
        Ok(store)
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Sqlite>, StoreError> {
        Ok(self.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.writer).await?;
        sqlx::query("SELECT 1").execute(&self.reader).await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.writer.close().await;
        self.reader.close().await;
    }
}

mod admin;
mod logins;
mod push;
mod records;

// ---- rows

fn id(r: &SqliteRow, col: &str) -> Result<Uuid, StoreError> {
    Ok(r.try_get::<Hyphenated, _>(col)?.into_uuid())
}

fn opt_id(r: &SqliteRow, col: &str) -> Result<Option<Uuid>, StoreError> {
    Ok(r.try_get::<Option<Hyphenated>, _>(col)?.map(Hyphenated::into_uuid))
}

fn int<T: TryFrom<i64>>(r: &SqliteRow, col: &str) -> Result<T, StoreError> {
    let v: i64 = r.try_get(col)?;
    T::try_from(v).map_err(|_| check::decode(format!("stored {col} {v} is out of range")))
}

fn site(r: &SqliteRow) -> Result<Site, StoreError> {
    Ok(Site { id: id(r, "id")?, name: r.try_get("name")?, created_at: ms_to_ts(r.try_get("created_at")?)? })
}

fn device(r: &SqliteRow) -> Result<Device, StoreError> {
    Ok(Device {
        id: id(r, "id")?,
        name: r.try_get("device_name")?,
        kind: check::parse(r.try_get::<&str, _>("kind")?)?,
        ip_address: r.try_get::<Option<String>, _>("ip_address")?.unwrap_or_default(),
        port: int(r, "port")?,
        comm_key: int(r, "comm_key")?,
        udp: r.try_get("udp")?,
        serial_number: r.try_get("serial_number")?,
        timezone: r.try_get("timezone")?,
        site_id: opt_id(r, "site_id")?,
        active: r.try_get("is_active")?,
        created_at: ms_to_ts(r.try_get("created_at")?)?,
        updated_at: ms_to_ts(r.try_get("updated_at")?)?,
    })
}

fn agent(r: &SqliteRow) -> Result<Agent, StoreError> {
    Ok(Agent {
        id: id(r, "id")?,
        name: r.try_get("name")?,
        site_id: id(r, "site_id")?,
        created_at: ms_to_ts(r.try_get("created_at")?)?,
        revoked_at: opt_ms_to_ts(r.try_get("revoked_at")?)?,
        last_seen: opt_ms_to_ts(r.try_get("last_seen")?)?,
        version: r.try_get("version")?,
        hostname: r.try_get("hostname")?,
    })
}

fn token(r: &SqliteRow) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        id: id(r, "id")?,
        name: r.try_get("name")?,
        role: check::parse(r.try_get::<&str, _>("role")?)?,
        created_at: ms_to_ts(r.try_get("created_at")?)?,
        revoked_at: opt_ms_to_ts(r.try_get("revoked_at")?)?,
    })
}

fn punch(r: &SqliteRow) -> Result<AttendanceRow, StoreError> {
    Ok(AttendanceRow {
        id: r.try_get("id")?,
        device_id: id(r, "device_id")?,
        user_id: r.try_get("user_id")?,
        uid: r.try_get("uid")?,
        local_time: check::text_to_local(r.try_get("local_time")?)?,
        punched_at: ms_to_ts(r.try_get("punched_at")?)?,
        status: r.try_get("status")?,
        punch: r.try_get("punch")?,
        flags: r.try_get("flags")?,
        inserted_at: ms_to_ts(r.try_get("inserted_at")?)?,
    })
}

fn sync(r: &SqliteRow) -> Result<SyncAttempt, StoreError> {
    Ok(SyncAttempt {
        id: id(r, "id")?,
        device_id: id(r, "device_id")?,
        last_sync_time: ms_to_ts(r.try_get("last_sync_time")?)?,
        sync_status: check::parse(r.try_get::<&str, _>("sync_status")?)?,
        records_synced: r.try_get("records_synced")?,
        records_total: r.try_get("records_total")?,
        error_message: r.try_get("error_message")?,
        error_kind: r.try_get::<Option<&str>, _>("error_kind")?.map(check::parse).transpose()?,
        synced_by_user_id: opt_id(r, "synced_by_user_id")?,
        sync_duration_ms: r.try_get("sync_duration_ms")?,
        agent_id: opt_id(r, "agent_id")?,
    })
}
