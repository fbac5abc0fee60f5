//! The SQLite backend: the embedded default for a single server instance.
//!
//! Writes go through one connection (`writer`, a pool of one) and write transactions start with `BEGIN IMMEDIATE`,
//! so writers queue in the pool instead of failing with SQLITE_BUSY; another process on the same file waits on
//! the busy timeout. Reads use their own pool and, in WAL mode, never wait for the writer. An in-memory database
//! lives in one connection that serves both. Inputs were checked by [`super::Store`].

use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Duration;

use jiff::Timestamp;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::check::{self, Finish, StoreError, local_to_text, ms_to_ts, now_ms, opt_ms_to_ts};
use super::model::*;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// How long a writer of another process waits for the file lock before SQLITE_BUSY.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);
/// Punches per INSERT: 9 parameters each, under SQLite's 32,766 bound parameters.
const PUNCH_ROWS: usize = 3000;
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
        let (path, params) = url
            .trim_start_matches("sqlite://")
            .trim_start_matches("sqlite:")
            .split_once('?')
            .map_or((url.trim_start_matches("sqlite://").trim_start_matches("sqlite:"), ""), |(p, q)| (p, q));
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

    // ---- sites

    pub(crate) async fn create_site(&self, name: &str) -> Result<Site, StoreError> {
        let row = sqlx::query(concat!(
            "INSERT INTO essl_sites (id, name, created_at) VALUES ($1, $2, $3) RETURNING ",
            site_cols!()
        ))
        .bind(Uuid::new_v4().hyphenated())
        .bind(name)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(|e| match StoreError::from(e) {
            StoreError::Conflict(_) => StoreError::Conflict(format!("a site named {name:?} exists")),
            other => other,
        })?;
        site(&row)
    }

    pub(crate) async fn site_by_name(&self, name: &str) -> Result<Option<Site>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", site_cols!(), " FROM essl_sites WHERE name = $1"))
            .bind(name)
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(site).transpose()
    }

    pub(crate) async fn get_site(&self, id: Uuid) -> Result<Option<Site>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", site_cols!(), " FROM essl_sites WHERE id = $1"))
            .bind(id.hyphenated())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(site).transpose()
    }

    pub(crate) async fn list_sites(&self) -> Result<Vec<Site>, StoreError> {
        let rows = sqlx::query(concat!("SELECT ", site_cols!(), " FROM essl_sites ORDER BY name, id"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(site).collect()
    }

    pub(crate) async fn ensure_site(&self, name: &str) -> Result<Site, StoreError> {
        sqlx::query("INSERT INTO essl_sites (id, name, created_at) VALUES ($1, $2, $3) ON CONFLICT (name) DO NOTHING")
            .bind(Uuid::new_v4().hyphenated())
            .bind(name)
            .bind(now_ms())
            .execute(&self.writer)
            .await?;
        let row = sqlx::query(concat!("SELECT ", site_cols!(), " FROM essl_sites WHERE name = $1"))
            .bind(name)
            .fetch_one(&self.writer)
            .await?;
        site(&row)
    }

    // ---- devices

    pub(crate) async fn create_device(&self, d: &NewDevice) -> Result<Device, StoreError> {
        let row = sqlx::query(concat!(
            "INSERT INTO essl_devices (id, device_name, kind, ip_address, port, comm_key, udp, serial_number, \
             timezone, site_id, is_active, created_at, updated_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12) RETURNING ",
            device_cols!()
        ))
        .bind(Uuid::new_v4().hyphenated())
        .bind(&d.name)
        .bind(d.kind.as_str())
        .bind(&d.ip_address)
        .bind(i64::from(d.port))
        .bind(i64::from(d.comm_key))
        .bind(d.udp)
        .bind(d.serial_number.as_deref())
        .bind(&d.timezone)
        .bind(d.site_id.map(Uuid::hyphenated))
        .bind(d.active)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(|e| device_write_error(e, d))?;
        device(&row)
    }

    pub(crate) async fn get_device(&self, id: Uuid) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", device_cols!(), " FROM essl_devices WHERE id = $1"))
            .bind(id.hyphenated())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(device).transpose()
    }

    pub(crate) async fn list_devices(&self, active_only: bool) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM essl_devices WHERE is_active = 1 OR NOT $1 ORDER BY device_name, id"
        ))
        .bind(active_only)
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(device).collect()
    }

    pub(crate) async fn devices_for_site(&self, site_id: Uuid) -> Result<Vec<Device>, StoreError> {
        let rows = sqlx::query(concat!(
            "SELECT ",
            device_cols!(),
            " FROM essl_devices WHERE site_id = $1 AND is_active = 1 ORDER BY device_name, id"
        ))
        .bind(site_id.hyphenated())
        .fetch_all(&self.reader)
        .await?;
        rows.iter().map(device).collect()
    }

    pub(crate) async fn update_device(&self, id: Uuid, patch: &DevicePatch) -> Result<Device, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(concat!("SELECT ", device_cols!(), " FROM essl_devices WHERE id = $1"))
            .bind(id.hyphenated())
            .fetch_optional(&mut *tx)
            .await?
            .ok_or(StoreError::NotFound)?;
        let d = check::patched(&device(&row)?, patch)?;
        let row = sqlx::query(concat!(
            "UPDATE essl_devices SET device_name = $2, ip_address = $3, port = $4, comm_key = $5, udp = $6, \
             serial_number = $7, timezone = $8, site_id = $9, is_active = $10, updated_at = $11 \
             WHERE id = $1 RETURNING ",
            device_cols!()
        ))
        .bind(id.hyphenated())
        .bind(&d.name)
        .bind(&d.ip_address)
        .bind(i64::from(d.port))
        .bind(i64::from(d.comm_key))
        .bind(d.udp)
        .bind(d.serial_number.as_deref())
        .bind(&d.timezone)
        .bind(d.site_id.map(Uuid::hyphenated))
        .bind(d.active)
        .bind(now_ms())
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| device_write_error(e, &d))?;
        let updated = device(&row)?;
        tx.commit().await?;
        Ok(updated)
    }

    pub(crate) async fn delete_device(&self, id: Uuid) -> Result<(), StoreError> {
        let done =
            sqlx::query("DELETE FROM essl_devices WHERE id = $1").bind(id.hyphenated()).execute(&self.writer).await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // ---- agents

    pub(crate) async fn create_agent(
        &self,
        id: Uuid,
        name: &str,
        site_id: Uuid,
        hash: &[u8],
    ) -> Result<Agent, StoreError> {
        let row = sqlx::query(concat!(
            "INSERT INTO essl_agents (id, name, site_id, token_hash, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING ",
            agent_cols!()
        ))
        .bind(id.hyphenated())
        .bind(name)
        .bind(site_id.hyphenated())
        .bind(hash)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await
        .map_err(|e| check::unknown_ref(e, "site"))?;
        agent(&row)
    }

    pub(crate) async fn agent_credential(&self, id: Uuid) -> Result<Option<(Agent, Credential)>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", agent_cols!(), ", token_hash FROM essl_agents WHERE id = $1"))
            .bind(id.hyphenated())
            .fetch_optional(&self.reader)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let a = agent(&row)?;
        let cred = Credential { id: a.id, secret_hash: row.try_get("token_hash")?, revoked: a.revoked_at.is_some() };
        Ok(Some((a, cred)))
    }

    pub(crate) async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", agent_cols!(), " FROM essl_agents WHERE id = $1"))
            .bind(id.hyphenated())
            .fetch_optional(&self.reader)
            .await?;
        row.as_ref().map(agent).transpose()
    }

    pub(crate) async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        let rows = sqlx::query(concat!("SELECT ", agent_cols!(), " FROM essl_agents ORDER BY name, id"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(agent).collect()
    }

    pub(crate) async fn revoke_agent(&self, id: Uuid) -> Result<Agent, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE essl_agents SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING ",
            agent_cols!()
        ))
        .bind(id.hyphenated())
        .bind(now_ms())
        .fetch_optional(&self.writer)
        .await?
        .ok_or(StoreError::NotFound)?;
        agent(&row)
    }

    pub(crate) async fn touch_agent(
        &self,
        id: Uuid,
        last_seen: Timestamp,
        version: Option<&str>,
        hostname: Option<&str>,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE essl_agents SET last_seen = $2, version = COALESCE($3, version), \
             hostname = COALESCE($4, hostname) WHERE id = $1",
        )
        .bind(id.hyphenated())
        .bind(last_seen.as_millisecond())
        .bind(version)
        .bind(hostname)
        .execute(&self.writer)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    // ---- API tokens

    pub(crate) async fn create_api_token(
        &self,
        id: Uuid,
        name: &str,
        role: Role,
        hash: &[u8],
    ) -> Result<ApiToken, StoreError> {
        let row = sqlx::query(concat!(
            "INSERT INTO essl_api_tokens (id, name, role, token_hash, created_at) VALUES ($1, $2, $3, $4, $5) \
             RETURNING ",
            token_cols!()
        ))
        .bind(id.hyphenated())
        .bind(name)
        .bind(role.as_str())
        .bind(hash)
        .bind(now_ms())
        .fetch_one(&self.writer)
        .await?;
        token(&row)
    }

    pub(crate) async fn api_token_credential(&self, id: Uuid) -> Result<Option<(ApiToken, Credential)>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", token_cols!(), ", token_hash FROM essl_api_tokens WHERE id = $1"))
            .bind(id.hyphenated())
            .fetch_optional(&self.reader)
            .await?;
        let Some(row) = row else { return Ok(None) };
        let t = token(&row)?;
        let cred = Credential { id: t.id, secret_hash: row.try_get("token_hash")?, revoked: t.revoked_at.is_some() };
        Ok(Some((t, cred)))
    }

    pub(crate) async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        let rows = sqlx::query(concat!("SELECT ", token_cols!(), " FROM essl_api_tokens ORDER BY name, id"))
            .fetch_all(&self.reader)
            .await?;
        rows.iter().map(token).collect()
    }

    pub(crate) async fn revoke_api_token(&self, id: Uuid) -> Result<ApiToken, StoreError> {
        let row = sqlx::query(concat!(
            "UPDATE essl_api_tokens SET revoked_at = COALESCE(revoked_at, $2) WHERE id = $1 RETURNING ",
            token_cols!()
        ))
        .bind(id.hyphenated())
        .bind(now_ms())
        .fetch_optional(&self.writer)
        .await?
        .ok_or(StoreError::NotFound)?;
        token(&row)
    }

    // ---- attendance

    async fn lock_device(tx: &mut Transaction<'static, Sqlite>, device_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("SELECT 1 FROM essl_devices WHERE id = $1")
            .bind(device_id.hyphenated())
            .fetch_optional(&mut **tx)
            .await?
            .map(|_| ())
            .ok_or(StoreError::NotFound)
    }

    pub(crate) async fn insert_punches(&self, device_id: Uuid, punches: &[NewPunch]) -> Result<u64, StoreError> {
        static FULL_CHUNK: OnceLock<String> = OnceLock::new();
        let mut tx = self.write_tx().await?;
        Self::lock_device(&mut tx, device_id).await?;
        let now = now_ms();
        let mut new = 0;
        for chunk in punches.chunks(PUNCH_ROWS) {
            let sql = if chunk.len() == PUNCH_ROWS {
                FULL_CHUNK.get_or_init(|| insert_punches_sql(PUNCH_ROWS)).clone()
            } else {
                insert_punches_sql(chunk.len())
            };
            let mut q = sqlx::query(AssertSqlSafe(sql));
            for p in chunk {
                q = q
                    .bind(device_id.hyphenated())
                    .bind(now)
                    .bind(p.user_id.as_str())
                    .bind(p.uid)
                    .bind(local_to_text(p.local_time))
                    .bind(p.punched_at.as_millisecond())
                    .bind(p.status)
                    .bind(p.punch)
                    .bind(p.flags);
            }
            new += q.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(new)
    }

    pub(crate) async fn insert_punches_naive(&self, device_id: Uuid, punches: &[NewPunch]) -> Result<u64, StoreError> {
        let mut tx = self.write_tx().await?;
        Self::lock_device(&mut tx, device_id).await?;
        let now = now_ms();
        let mut new = 0;
        for p in punches {
            new += sqlx::query(
                "INSERT INTO essl_attendance (device_id, inserted_at, user_id, uid, local_time, punched_at, status, \
                 punch, flags) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
                 ON CONFLICT (device_id, user_id, local_time) DO NOTHING",
            )
            .bind(device_id.hyphenated())
            .bind(now)
            .bind(p.user_id.as_str())
            .bind(p.uid)
            .bind(local_to_text(p.local_time))
            .bind(p.punched_at.as_millisecond())
            .bind(p.status)
            .bind(p.punch)
            .bind(p.flags)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        }
        tx.commit().await?;
        Ok(new)
    }

    pub(crate) async fn list_attendance(&self, f: &AttendanceFilter) -> Result<Vec<AttendanceRow>, StoreError> {
        let mut q = QueryBuilder::<Sqlite>::new(concat!("SELECT ", punch_cols!(), " FROM essl_attendance WHERE 1 = 1"));
        if let Some(device_id) = f.device_id {
            q.push(" AND device_id = ").push_bind(device_id.hyphenated());
        }
        if let Some(user_id) = &f.user_id {
            q.push(" AND user_id = ").push_bind(user_id.clone());
        }
        if let Some(from) = f.from {
            q.push(" AND punched_at >= ").push_bind(from.as_millisecond());
        }
        if let Some(to) = f.to {
            q.push(" AND punched_at < ").push_bind(to.as_millisecond());
        }
        if let Some(c) = f.after {
            let at = c.punched_at.as_millisecond();
            q.push(" AND (punched_at < ").push_bind(at);
            q.push(" OR (punched_at = ").push_bind(at).push(" AND id < ").push_bind(c.id).push("))");
        }
        q.push(" ORDER BY punched_at DESC, id DESC LIMIT ").push_bind(i64::from(f.limit));
        let rows = q.build().fetch_all(&self.reader).await?;
        rows.iter().map(punch).collect()
    }

    pub(crate) async fn count_attendance(&self, device_id: Option<Uuid>) -> Result<i64, StoreError> {
        let n = match device_id {
            Some(id) => {
                sqlx::query_scalar("SELECT count(*) FROM essl_attendance WHERE device_id = $1")
                    .bind(id.hyphenated())
                    .fetch_one(&self.reader)
                    .await?
            }
            None => sqlx::query_scalar("SELECT count(*) FROM essl_attendance").fetch_one(&self.reader).await?,
        };
        Ok(n)
    }

    pub(crate) async fn latest_punch(&self, device_id: Uuid) -> Result<Option<AttendanceRow>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            punch_cols!(),
            " FROM essl_attendance WHERE device_id = $1 ORDER BY punched_at DESC, id DESC LIMIT 1"
        ))
        .bind(device_id.hyphenated())
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(punch).transpose()
    }

    // ---- device users

    pub(crate) async fn replace_device_users(
        &self,
        device_id: Uuid,
        users: &[DeviceUserRow],
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        Self::lock_device(&mut tx, device_id).await?;
        sqlx::query("DELETE FROM essl_device_users WHERE device_id = $1")
            .bind(device_id.hyphenated())
            .execute(&mut *tx)
            .await?;
        for chunk in users.chunks(USER_ROWS) {
            let mut q = QueryBuilder::<Sqlite>::new(
                "INSERT INTO essl_device_users (device_id, uid, user_id, name, privilege, card, group_id) ",
            );
            q.push_values(chunk, |mut row, u| {
                row.push_bind(device_id.hyphenated())
                    .push_bind(u.uid)
                    .push_bind(u.user_id.clone())
                    .push_bind(u.name.clone())
                    .push_bind(u.privilege)
                    .push_bind(u.card)
                    .push_bind(u.group_id.clone());
            });
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn list_device_users(&self, device_id: Uuid) -> Result<Vec<DeviceUserRow>, StoreError> {
        let rows = sqlx::query(
            "SELECT device_id, uid, user_id, name, privilege, card, group_id FROM essl_device_users \
             WHERE device_id = $1 ORDER BY uid",
        )
        .bind(device_id.hyphenated())
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceUserRow {
                    device_id: id(r, "device_id")?,
                    uid: r.try_get("uid")?,
                    user_id: r.try_get("user_id")?,
                    name: r.try_get("name")?,
                    privilege: r.try_get("privilege")?,
                    card: r.try_get("card")?,
                    group_id: r.try_get("group_id")?,
                })
            })
            .collect()
    }

    // ---- sync attempts and log

    pub(crate) async fn record_sync(&self, a: &NewSyncAttempt) -> Result<SyncAttempt, StoreError> {
        let mut tx = self.write_tx().await?;
        Self::lock_device(&mut tx, a.device_id).await?;
        let row = sqlx::query(concat!(
            "INSERT INTO essl_sync_status (id, device_id, last_sync_time, sync_status, records_synced, \
             records_total, error_message, error_kind, synced_by_user_id, sync_duration_ms, agent_id) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING ",
            sync_cols!()
        ))
        .bind(Uuid::new_v4().hyphenated())
        .bind(a.device_id.hyphenated())
        .bind(a.last_sync_time.as_millisecond())
        .bind(a.sync_status.as_str())
        .bind(a.records_synced)
        .bind(a.records_total)
        .bind(a.error_message.as_deref())
        .bind(a.error_kind.map(ErrorKind::as_str))
        .bind(a.synced_by_user_id.map(Uuid::hyphenated))
        .bind(a.sync_duration_ms)
        .bind(a.agent_id.map(Uuid::hyphenated))
        .fetch_one(&mut *tx)
        .await
        .map_err(|e| check::unknown_ref(e, "agent"))?;
        let attempt = sync(&row)?;
        tx.commit().await?;
        Ok(attempt)
    }

    pub(crate) async fn finish_sync(&self, id: Uuid, f: &Finish<'_>) -> Result<SyncAttempt, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(concat!(
            "UPDATE essl_sync_status SET sync_status = $2, records_synced = $3, records_total = $4, \
             error_message = $5, error_kind = $6, sync_duration_ms = $7 \
             WHERE id = $1 AND sync_status = 'in_progress' RETURNING ",
            sync_cols!()
        ))
        .bind(id.hyphenated())
        .bind(f.status.as_str())
        .bind(f.records_synced)
        .bind(f.records_total)
        .bind(f.error_message)
        .bind(f.error_kind.map(ErrorKind::as_str))
        .bind(f.duration_ms)
        .fetch_optional(&mut *tx)
        .await?;
        let attempt = match row {
            Some(row) => sync(&row)?,
            None => {
                let exists = sqlx::query("SELECT 1 FROM essl_sync_status WHERE id = $1")
                    .bind(id.hyphenated())
                    .fetch_optional(&mut *tx)
                    .await?;
                return Err(match exists {
                    Some(_) => StoreError::Conflict(format!("sync attempt {id} is already finished")),
                    None => StoreError::NotFound,
                });
            }
        };
        tx.commit().await?;
        Ok(attempt)
    }

    pub(crate) async fn latest_sync(
        &self,
        device_id: Uuid,
        success_only: bool,
    ) -> Result<Option<SyncAttempt>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            sync_cols!(),
            " FROM essl_sync_status WHERE device_id = $1 AND (sync_status = 'success' OR NOT $2) \
             ORDER BY last_sync_time DESC, id DESC LIMIT 1"
        ))
        .bind(device_id.hyphenated())
        .bind(success_only)
        .fetch_optional(&self.reader)
        .await?;
        row.as_ref().map(sync).transpose()
    }

    pub(crate) async fn sync_history(
        &self,
        device_id: Option<Uuid>,
        limit: u32,
    ) -> Result<Vec<SyncAttempt>, StoreError> {
        let rows = match device_id {
            Some(d) => {
                sqlx::query(concat!(
                    "SELECT ",
                    sync_cols!(),
                    " FROM essl_sync_status WHERE device_id = $1 ORDER BY last_sync_time DESC, id DESC LIMIT $2"
                ))
                .bind(d.hyphenated())
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?
            }
            None => {
                sqlx::query(concat!(
                    "SELECT ",
                    sync_cols!(),
                    " FROM essl_sync_status ORDER BY last_sync_time DESC, id DESC LIMIT $1"
                ))
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?
            }
        };
        rows.iter().map(sync).collect()
    }

    pub(crate) async fn device_sync_summaries(&self) -> Result<Vec<DeviceSyncSummary>, StoreError> {
        let rows = sqlx::query(
            "SELECT d.id, d.device_name, d.ip_address, \
                    l.last_sync_time, l.sync_status, l.records_synced, l.error_message, \
                    s.last_sync_time AS last_success_time, s.records_synced AS last_success_records, \
                    (SELECT count(*) FROM essl_attendance a WHERE a.device_id = d.id) AS attendance_count \
             FROM essl_devices d \
             LEFT JOIN essl_sync_status l ON l.id = ( \
                 SELECT x.id FROM essl_sync_status x WHERE x.device_id = d.id \
                 ORDER BY x.last_sync_time DESC, x.id DESC LIMIT 1) \
             LEFT JOIN essl_sync_status s ON s.id = ( \
                 SELECT x.id FROM essl_sync_status x WHERE x.device_id = d.id AND x.sync_status = 'success' \
                 ORDER BY x.last_sync_time DESC, x.id DESC LIMIT 1) \
             ORDER BY d.device_name, d.id",
        )
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(DeviceSyncSummary {
                    device_id: id(r, "id")?,
                    device_name: r.try_get("device_name")?,
                    ip_address: r.try_get::<Option<String>, _>("ip_address")?.unwrap_or_default(),
                    last_sync_time: opt_ms_to_ts(r.try_get("last_sync_time")?)?,
                    sync_status: r.try_get::<Option<&str>, _>("sync_status")?.map(check::parse).transpose()?,
                    records_synced: r.try_get("records_synced")?,
                    error_message: r.try_get("error_message")?,
                    last_success_time: opt_ms_to_ts(r.try_get("last_success_time")?)?,
                    last_success_records: r.try_get("last_success_records")?,
                    attendance_count: r.try_get("attendance_count")?,
                })
            })
            .collect()
    }

    pub(crate) async fn add_sync_log(
        &self,
        device_id: Uuid,
        sync_id: Option<Uuid>,
        level: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        let mut tx = self.write_tx().await?;
        Self::lock_device(&mut tx, device_id).await?;
        sqlx::query(
            "INSERT INTO device_sync_logs (device_id, sync_id, at, level, message) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(device_id.hyphenated())
        .bind(sync_id.map(Uuid::hyphenated))
        .bind(now_ms())
        .bind(level)
        .bind(message)
        .execute(&mut *tx)
        .await
        .map_err(|e| check::unknown_ref(e, "sync attempt"))?;
        tx.commit().await?;
        Ok(())
    }

    pub(crate) async fn sync_log(&self, device_id: Uuid, limit: u32) -> Result<Vec<SyncLogEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, device_id, sync_id, at, level, message FROM device_sync_logs WHERE device_id = $1 \
             ORDER BY at DESC, id DESC LIMIT $2",
        )
        .bind(device_id.hyphenated())
        .bind(i64::from(limit))
        .fetch_all(&self.reader)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(SyncLogEntry {
                    id: r.try_get("id")?,
                    device_id: id(r, "device_id")?,
                    sync_id: opt_id(r, "sync_id")?,
                    at: ms_to_ts(r.try_get("at")?)?,
                    level: r.try_get("level")?,
                    message: r.try_get("message")?,
                })
            })
            .collect()
    }
}

/// `INSERT .. VALUES (..), (..) ON CONFLICT DO NOTHING` for `rows` punches, nine parameters each. Anonymous `?`
/// placeholders on purpose: SQLite looks named/numbered ones (`$N`, `?N`) up in a list, linearly, both when
/// parsing and when sqlx binds, which made a 4,000-row statement ten times slower than 4,000 single inserts.
fn insert_punches_sql(rows: usize) -> String {
    const HEAD: &str = "INSERT INTO essl_attendance (device_id, inserted_at, user_id, uid, local_time, punched_at, status, \
                        punch, flags) VALUES ";
    const TAIL: &str = " ON CONFLICT (device_id, user_id, local_time) DO NOTHING";
    const ROW: &str = "(?,?,?,?,?,?,?,?,?)";
    let mut sql = String::with_capacity(HEAD.len() + rows * (ROW.len() + 1) + TAIL.len());
    sql.push_str(HEAD);
    for i in 0..rows {
        if i > 0 {
            sql.push(',');
        }
        sql.push_str(ROW);
    }
    sql.push_str(TAIL);
    sql
}

/// Conflicts of a device write are about its serial number; foreign keys about its site.
fn device_write_error(e: sqlx::Error, d: &NewDevice) -> StoreError {
    match check::unknown_ref(e, "site") {
        StoreError::Conflict(_) => StoreError::Conflict(format!(
            "serial number {:?} is used by another device",
            d.serial_number.as_deref().unwrap_or_default()
        )),
        other => other,
    }
}

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
