//! The SQLite backend: the embedded default for a single server instance.
//!
//! Writes go through one connection (`writer`, a pool of one) and write transactions start with `BEGIN IMMEDIATE`,
//! so writers queue in the pool instead of failing with SQLITE_BUSY; another process on the same file waits on
//! the busy timeout. Reads use their own pool and, in WAL mode, never wait for the writer. An in-memory database
//! lives in one connection that serves both. Inputs were checked by [`super::Store`].

//! The PostgreSQL backend (also Supabase): the seed's schema, for several server instances or an existing
//! Supabase project. Times are `timestamptz`, bound and read as unix milliseconds through the schema's
//! `essl_ts(ms)` / `essl_ms(t)`. Inputs were checked by [`super::Store`].
//!
//! Statements are prepared, so a transaction-mode pooler (PgBouncer, Supavisor port 6543) needs the session port.

use std::time::Duration;

use sqlx::postgres::{PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::check::{self, StoreError, ms_to_ts, opt_ms_to_ts};
use super::model::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/postgres");

/// Punches per statement (one array per column, so no bound-parameter limit applies).
const PUNCH_ROWS: usize = 5_000;
/// Device users per INSERT: 6 parameters each plus 1 shared.
const USER_ROWS: usize = 2_000;

/// A PostgreSQL pool; cheap to clone.
#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }
}

macro_rules! site_cols {
    () => {
        "id, name, essl_ms(created_at) AS created_at"
    };
}
macro_rules! device_cols {
    () => {
        "id, device_name, kind, ip_address, port, comm_key, udp, serial_number, timezone, site_id, is_active, \
         essl_ms(created_at) AS created_at, essl_ms(updated_at) AS updated_at"
    };
}
macro_rules! agent_cols {
    () => {
        "id, name, site_id, essl_ms(created_at) AS created_at, essl_ms(revoked_at) AS revoked_at, \
         essl_ms(last_seen) AS last_seen, version, hostname"
    };
}
macro_rules! token_cols {
    () => {
        "id, name, role, essl_ms(created_at) AS created_at, essl_ms(revoked_at) AS revoked_at"
    };
}
macro_rules! punch_cols {
    () => {
        "id, device_id, user_id, uid, to_char(local_time, 'YYYY-MM-DD\"T\"HH24:MI:SS') AS local_time, \
         essl_ms(punched_at) AS punched_at, status, punch, flags, essl_ms(inserted_at) AS inserted_at"
    };
}
macro_rules! sync_cols {
    () => {
        "id, device_id, essl_ms(last_sync_time) AS last_sync_time, sync_status, records_synced, records_total, \
         error_message, error_kind, synced_by_user_id, sync_duration_ms, agent_id"
    };
}

impl PgStore {
    pub(crate) async fn connect(url: &str) -> Result<Self, StoreError> {
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await
            .map_err(|e| match e {
                sqlx::Error::Configuration(_) => StoreError::Invalid(e.to_string()),
                e => StoreError::Unavailable(e.to_string()),
            })?;
        MIGRATOR.run(&pool).await?;
        Ok(PgStore { pool })
    }

    async fn write_tx(&self) -> Result<Transaction<'static, Postgres>, StoreError> {
        Ok(self.pool.begin().await?)
    }

    pub(crate) async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn close(&self) {
        self.pool.close().await;
    }
}

mod admin;
mod logins;
mod push;
mod records;

// ---- rows

fn id(r: &PgRow, col: &str) -> Result<Uuid, StoreError> {
    Ok(r.try_get(col)?)
}

fn opt_id(r: &PgRow, col: &str) -> Result<Option<Uuid>, StoreError> {
    Ok(r.try_get(col)?)
}

fn int<S, T>(r: &PgRow, col: &str) -> Result<T, StoreError>
where
    S: for<'a> sqlx::Decode<'a, Postgres> + sqlx::Type<Postgres> + Copy + std::fmt::Display,
    T: TryFrom<S>,
{
    let v: S = r.try_get(col)?;
    T::try_from(v).map_err(|_| check::decode(format!("stored {col} {v} is out of range")))
}

fn site(r: &PgRow) -> Result<Site, StoreError> {
    Ok(Site { id: id(r, "id")?, name: r.try_get("name")?, created_at: ms_to_ts(r.try_get("created_at")?)? })
}

fn device(r: &PgRow) -> Result<Device, StoreError> {
    Ok(Device {
        id: id(r, "id")?,
        name: r.try_get("device_name")?,
        kind: check::parse(r.try_get::<&str, _>("kind")?)?,
        ip_address: r.try_get::<Option<String>, _>("ip_address")?.unwrap_or_default(),
        port: int::<i32, _>(r, "port")?,
        comm_key: int::<i64, _>(r, "comm_key")?,
        udp: r.try_get("udp")?,
        serial_number: r.try_get("serial_number")?,
        timezone: r.try_get("timezone")?,
        site_id: opt_id(r, "site_id")?,
        active: r.try_get("is_active")?,
        created_at: ms_to_ts(r.try_get("created_at")?)?,
        updated_at: ms_to_ts(r.try_get("updated_at")?)?,
    })
}

fn agent(r: &PgRow) -> Result<Agent, StoreError> {
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

fn token(r: &PgRow) -> Result<ApiToken, StoreError> {
    Ok(ApiToken {
        id: id(r, "id")?,
        name: r.try_get("name")?,
        role: check::parse(r.try_get::<&str, _>("role")?)?,
        created_at: ms_to_ts(r.try_get("created_at")?)?,
        revoked_at: opt_ms_to_ts(r.try_get("revoked_at")?)?,
    })
}

fn punch(r: &PgRow) -> Result<AttendanceRow, StoreError> {
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

fn sync(r: &PgRow) -> Result<SyncAttempt, StoreError> {
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
