//! The database: one interface ([`Store`]), two backends (SQLite, the embedded default, and PostgreSQL/Supabase).
//!
//! `Store` checks inputs once (both backends reject the same things the same way) and dispatches to
//! [`SqliteStore`] or [`PgStore`], which hold each backend's SQL. Every value is bound, never spliced into SQL.
//! The schemas live in `migrations/sqlite` and `migrations/postgres` and are applied by [`Store::connect`].
//! `tests/store_conformance.rs` runs one suite against both.

mod check;
pub mod model;
mod postgres;
mod sqlite;

use jiff::Timestamp;
use uuid::Uuid;

pub use check::StoreError;
pub use model::*;
pub use postgres::PgStore;
pub use sqlite::SqliteStore;

/// A handle to the database; cheap to clone (the pools are shared).
#[derive(Clone, Debug)]
pub enum Store {
    Sqlite(SqliteStore),
    Postgres(PgStore),
}

macro_rules! dispatch {
    ($self:ident . $method:ident ( $($arg:expr),* )) => {
        match $self {
            Store::Sqlite(s) => s.$method($($arg),*).await,
            Store::Postgres(s) => s.$method($($arg),*).await,
        }
    };
}

pub mod push;
pub use push::{CommandStatus, JournalEntry, NewJournal, PushCommand, PushSeen, PushTerminal, StampTable, TakePolicy};

impl Store {
    /// Opens the database and applies its migrations. `sqlite:PATH`, `sqlite://PATH` (the file is created if
    /// missing) and `sqlite::memory:`; `postgres://` and `postgresql://`.
    #[tracing::instrument(skip_all)]
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        if url.starts_with("sqlite:") {
            Ok(Store::Sqlite(SqliteStore::connect(url).await?))
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Store::Postgres(PgStore::connect(url).await?))
        } else {
            // The URL itself is not echoed: it may hold a password.
            Err(StoreError::Invalid("database URL must start with sqlite:, postgres:// or postgresql://".into()))
        }
    }

    /// `"sqlite"` or `"postgres"`.
    pub fn backend(&self) -> &'static str {
        match self {
            Store::Sqlite(_) => "sqlite",
            Store::Postgres(_) => "postgres",
        }
    }

    /// The PostgreSQL pool, for what only PostgreSQL does (the cluster registry and its notifications).
    pub fn postgres_pool(&self) -> Option<sqlx::PgPool> {
        match self {
            Store::Sqlite(_) => None,
            Store::Postgres(s) => Some(s.pool().clone()),
        }
    }

    /// One round trip to the database (for `/readyz`).
    #[tracing::instrument(skip_all)]
    pub async fn ping(&self) -> Result<(), StoreError> {
        dispatch!(self.ping())
    }

    /// Closes the pools; later calls fail with [`StoreError::Unavailable`]. For graceful shutdown and tests.
    pub async fn close(&self) {
        dispatch!(self.close())
    }

    // ---- sites

    /// A new site; [`StoreError::Conflict`] if the name is taken.
    #[tracing::instrument(skip_all)]
    pub async fn create_site(&self, name: &str) -> Result<Site, StoreError> {
        check::name("site name", name)?;
        dispatch!(self.create_site(name))
    }

    #[tracing::instrument(skip_all)]
    pub async fn site_by_name(&self, name: &str) -> Result<Option<Site>, StoreError> {
        check::text("site name", name)?;
        dispatch!(self.site_by_name(name))
    }

    #[tracing::instrument(skip_all, fields(site_id = %id))]
    pub async fn get_site(&self, id: Uuid) -> Result<Option<Site>, StoreError> {
        dispatch!(self.get_site(id))
    }

    /// All sites, by name.
    #[tracing::instrument(skip_all)]
    pub async fn list_sites(&self) -> Result<Vec<Site>, StoreError> {
        dispatch!(self.list_sites())
    }

    /// The site of that name, created if missing (safe against concurrent callers).
    #[tracing::instrument(skip_all)]
    pub async fn ensure_site(&self, name: &str) -> Result<Site, StoreError> {
        check::name("site name", name)?;
        dispatch!(self.ensure_site(name))
    }

    // ---- devices

    /// [`StoreError::Invalid`] for a blank name, an unknown time zone, an unknown site or an empty serial number;
    /// [`StoreError::Conflict`] for a serial number already in use.
    #[tracing::instrument(skip_all)]
    pub async fn create_device(&self, new: &NewDevice) -> Result<Device, StoreError> {
        check::new_device(new)?;
        dispatch!(self.create_device(new))
    }

    #[tracing::instrument(skip_all, fields(device_id = %id))]
    pub async fn get_device(&self, id: Uuid) -> Result<Option<Device>, StoreError> {
        dispatch!(self.get_device(id))
    }

    /// Devices by name, then id.
    #[tracing::instrument(skip_all, fields(active_only))]
    pub async fn list_devices(&self, active_only: bool) -> Result<Vec<Device>, StoreError> {
        dispatch!(self.list_devices(active_only))
    }

    /// The active devices of a site, by name.
    #[tracing::instrument(skip_all, fields(site_id = %site_id))]
    pub async fn devices_for_site(&self, site_id: Uuid) -> Result<Vec<Device>, StoreError> {
        dispatch!(self.devices_for_site(site_id))
    }

    /// Applies the patch (same rules as `create_device`) and bumps `updated_at`.
    #[tracing::instrument(skip_all, fields(device_id = %id))]
    pub async fn update_device(&self, id: Uuid, patch: &DevicePatch) -> Result<Device, StoreError> {
        dispatch!(self.update_device(id, patch))
    }

    /// Deletes the device with its punches, users, sync attempts and log.
    #[tracing::instrument(skip_all, fields(device_id = %id))]
    pub async fn delete_device(&self, id: Uuid) -> Result<(), StoreError> {
        dispatch!(self.delete_device(id))
    }

    // ---- agents

    /// `secret_hash` is the SHA-256 of the agent's token secret (32 bytes). [`StoreError::Invalid`] for an
    /// unknown site.
    pub async fn create_agent(&self, name: &str, site_id: Uuid, secret_hash: &[u8]) -> Result<Agent, StoreError> {
        self.create_agent_with_id(Uuid::new_v4(), name, site_id, secret_hash).await
    }

    /// [`Store::create_agent`] with an id chosen by the caller (a token that embeds its id is made before the
    /// row); [`StoreError::Conflict`] if the id is taken.
    #[tracing::instrument(skip_all, fields(agent_id = %id, site_id = %site_id))]
    pub async fn create_agent_with_id(
        &self,
        id: Uuid,
        name: &str,
        site_id: Uuid,
        secret_hash: &[u8],
    ) -> Result<Agent, StoreError> {
        check::name("agent name", name)?;
        check::secret_hash(secret_hash)?;
        dispatch!(self.create_agent(id, name, site_id, secret_hash))
    }

    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    pub async fn agent_credential(&self, id: Uuid) -> Result<Option<(Agent, Credential)>, StoreError> {
        dispatch!(self.agent_credential(id))
    }

    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    pub async fn get_agent(&self, id: Uuid) -> Result<Option<Agent>, StoreError> {
        dispatch!(self.get_agent(id))
    }

    /// All agents, revoked too, by name then id.
    #[tracing::instrument(skip_all)]
    pub async fn list_agents(&self) -> Result<Vec<Agent>, StoreError> {
        dispatch!(self.list_agents())
    }

    /// Sets `revoked_at` (kept from the first revocation if revoked again).
    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    pub async fn revoke_agent(&self, id: Uuid) -> Result<Agent, StoreError> {
        dispatch!(self.revoke_agent(id))
    }

    /// Records that the agent was seen; `None` keeps the stored version / hostname.
    #[tracing::instrument(skip_all, fields(agent_id = %id))]
    pub async fn touch_agent(
        &self,
        id: Uuid,
        last_seen: Timestamp,
        version: Option<&str>,
        hostname: Option<&str>,
    ) -> Result<(), StoreError> {
        check::opt_text("agent version", version)?;
        check::opt_text("agent hostname", hostname)?;
        dispatch!(self.touch_agent(id, last_seen, version, hostname))
    }

    // ---- API tokens

    /// `secret_hash` is the SHA-256 of the token's secret (32 bytes).
    pub async fn create_api_token(&self, name: &str, role: Role, secret_hash: &[u8]) -> Result<ApiToken, StoreError> {
        self.create_api_token_with_id(Uuid::new_v4(), name, role, secret_hash).await
    }

    /// [`Store::create_api_token`] with an id chosen by the caller; [`StoreError::Conflict`] if the id is taken.
    #[tracing::instrument(skip_all, fields(token_id = %id, role = %role))]
    pub async fn create_api_token_with_id(
        &self,
        id: Uuid,
        name: &str,
        role: Role,
        secret_hash: &[u8],
    ) -> Result<ApiToken, StoreError> {
        check::name("token name", name)?;
        check::secret_hash(secret_hash)?;
        dispatch!(self.create_api_token(id, name, role, secret_hash))
    }

    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn api_token_credential(&self, id: Uuid) -> Result<Option<(ApiToken, Credential)>, StoreError> {
        dispatch!(self.api_token_credential(id))
    }

    /// All tokens, revoked too, by name then id.
    #[tracing::instrument(skip_all)]
    pub async fn list_api_tokens(&self) -> Result<Vec<ApiToken>, StoreError> {
        dispatch!(self.list_api_tokens())
    }

    #[tracing::instrument(skip_all, fields(token_id = %id))]
    pub async fn revoke_api_token(&self, id: Uuid) -> Result<ApiToken, StoreError> {
        dispatch!(self.revoke_api_token(id))
    }

    // ---- attendance

    /// Stores the punches in one transaction, skipping those already stored (unique on device, user id, local
    /// time); returns how many were new. All or nothing: one bad punch stores none of the batch.
    /// [`StoreError::NotFound`] if the device does not exist.
    #[tracing::instrument(skip_all, fields(device_id = %device_id, count = punches.len(), new))]
    pub async fn insert_punches(&self, device_id: Uuid, punches: &[NewPunch]) -> Result<u64, StoreError> {
        check::punches(punches)?;
        let new = dispatch!(self.insert_punches(device_id, punches))?;
        tracing::Span::current().record("new", new);
        Ok(new)
    }

    /// Same result as [`Store::insert_punches`], one INSERT per punch: the baseline of the benchmark.
    #[tracing::instrument(skip_all, fields(device_id = %device_id, count = punches.len()))]
    pub async fn insert_punches_naive(&self, device_id: Uuid, punches: &[NewPunch]) -> Result<u64, StoreError> {
        check::punches(punches)?;
        dispatch!(self.insert_punches_naive(device_id, punches))
    }

    /// One page, newest first (`punched_at DESC, id DESC`). A `limit` of 0 gives an empty page.
    #[tracing::instrument(skip_all, fields(device_id = ?filter.device_id, limit = filter.limit, rows))]
    pub async fn list_attendance(&self, filter: &AttendanceFilter) -> Result<AttendancePage, StoreError> {
        check::opt_text("user id", filter.user_id.as_deref())?;
        if filter.limit == 0 {
            return Ok(AttendancePage { rows: Vec::new(), next: None });
        }
        let rows = dispatch!(self.list_attendance(filter))?;
        tracing::Span::current().record("rows", rows.len());
        let next = match rows.last() {
            Some(last) if rows.len() >= filter.limit as usize => {
                Some(Cursor { punched_at: last.punched_at, id: last.id })
            }
            _ => None,
        };
        Ok(AttendancePage { rows, next })
    }

    /// Punches stored for one device, or for all.
    #[tracing::instrument(skip_all, fields(device_id = ?device_id))]
    pub async fn count_attendance(&self, device_id: Option<Uuid>) -> Result<i64, StoreError> {
        dispatch!(self.count_attendance(device_id))
    }

    /// Punches stored for the device whose local time is within `first..=last` (the terminal's wall clock).
    #[tracing::instrument(skip_all, fields(device_id = %device_id))]
    pub async fn count_attendance_between(
        &self,
        device_id: Uuid,
        first: jiff::civil::DateTime,
        last: jiff::civil::DateTime,
    ) -> Result<i64, StoreError> {
        check::local_time(first)?;
        check::local_time(last)?;
        dispatch!(self.count_attendance_between(device_id, first, last))
    }

    /// The device's punch with the latest `punched_at`.
    #[tracing::instrument(skip_all, fields(device_id = %device_id))]
    pub async fn latest_punch(&self, device_id: Uuid) -> Result<Option<AttendanceRow>, StoreError> {
        dispatch!(self.latest_punch(device_id))
    }

    // ---- device users

    /// Replaces the device's user list in one transaction. Every row must carry this `device_id`.
    #[tracing::instrument(skip_all, fields(device_id = %device_id, count = users.len()))]
    pub async fn replace_device_users(&self, device_id: Uuid, users: &[DeviceUserRow]) -> Result<(), StoreError> {
        check::device_users(device_id, users)?;
        dispatch!(self.replace_device_users(device_id, users))
    }

    /// The device's users by uid.
    #[tracing::instrument(skip_all, fields(device_id = %device_id))]
    pub async fn list_device_users(&self, device_id: Uuid) -> Result<Vec<DeviceUserRow>, StoreError> {
        dispatch!(self.list_device_users(device_id))
    }

    // ---- dashboard users and sessions

    /// Adds a dashboard user; the name is lowercased. [`StoreError::Conflict`] if it is taken.
    #[tracing::instrument(skip_all, fields(username = %username, role = %role))]
    pub async fn create_user(&self, username: &str, role: Role, password_hash: &str) -> Result<User, StoreError> {
        let username = check::username(username)?;
        check::text("password hash", password_hash)?;
        dispatch!(self.create_user(Uuid::new_v4(), &username, role, password_hash))
    }

    /// A user and their password hash, by name (any case).
    #[tracing::instrument(skip_all)]
    pub async fn user_login(&self, username: &str) -> Result<Option<(User, String)>, StoreError> {
        let Ok(username) = check::username(username) else { return Ok(None) };
        dispatch!(self.user_login(&username))
    }

    /// Every dashboard user, by name.
    pub async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        dispatch!(self.list_users())
    }

    /// Replaces a user's password and ends their sessions. [`StoreError::NotFound`] for an unknown name.
    #[tracing::instrument(skip_all, fields(username = %username))]
    pub async fn set_password(&self, username: &str, password_hash: &str) -> Result<User, StoreError> {
        let username = check::username(username)?;
        check::text("password hash", password_hash)?;
        dispatch!(self.set_password(&username, password_hash))
    }

    /// Stores a new session.
    #[tracing::instrument(skip_all, fields(user_id = %new.user_id))]
    pub async fn create_session(&self, new: &NewSession) -> Result<(), StoreError> {
        dispatch!(self.create_session(new))
    }

    /// A session that has not expired, with its user (disabled users have none).
    pub async fn live_session(&self, id: Uuid) -> Result<Option<Session>, StoreError> {
        dispatch!(self.live_session(id))
    }

    /// Ends a session (logout); unknown ids are fine.
    pub async fn delete_session(&self, id: Uuid) -> Result<(), StoreError> {
        dispatch!(self.delete_session(id))
    }

    /// Forgets expired sessions; answers how many.
    pub async fn delete_expired_sessions(&self) -> Result<u64, StoreError> {
        dispatch!(self.delete_expired_sessions())
    }

    // ---- sync attempts and log

    /// Records an attempt (often `InProgress`, finished later with [`Store::finish_sync`]).
    /// [`StoreError::NotFound`] if the device does not exist; [`StoreError::Invalid`] for an unknown agent.
    #[tracing::instrument(skip_all, fields(device_id = %attempt.device_id, status = %attempt.sync_status))]
    pub async fn record_sync(&self, attempt: &NewSyncAttempt) -> Result<SyncAttempt, StoreError> {
        check::opt_text("error message", attempt.error_message.as_deref())?;
        dispatch!(self.record_sync(attempt))
    }

    /// Completes an attempt that is still `in_progress` ([`StoreError::Conflict`] if it is not any more;
    /// `last_sync_time` stays the start). Passing `InProgress` again only updates the counts.
    #[allow(clippy::too_many_arguments)]
    #[tracing::instrument(skip_all, fields(sync_id = %id, status = %status, records_synced))]
    pub async fn finish_sync(
        &self,
        id: Uuid,
        status: SyncStatus,
        records_synced: i32,
        records_total: Option<i32>,
        error_message: Option<String>,
        error_kind: Option<ErrorKind>,
        duration_ms: Option<i32>,
    ) -> Result<SyncAttempt, StoreError> {
        let error_message = error_message.as_deref();
        check::opt_text("error message", error_message)?;
        let fin = check::Finish {
            status,
            records_synced,
            records_total,
            error_message,
            error_kind,
            duration_ms,
            agent_id: None,
        };
        dispatch!(self.finish_sync(id, &fin))
    }

    /// [`Store::finish_sync`], also naming the agent that served the attempt.
    #[tracing::instrument(skip_all, fields(sync_id = %id, agent_id = %agent_id))]
    pub async fn finish_sync_by(&self, id: Uuid, agent_id: Uuid, outcome: SyncEnd) -> Result<SyncAttempt, StoreError> {
        let error_message = outcome.error_message.as_deref();
        check::opt_text("error message", error_message)?;
        let fin = check::Finish {
            status: outcome.status,
            records_synced: outcome.records_synced,
            records_total: outcome.records_total,
            error_message,
            error_kind: outcome.error_kind,
            duration_ms: outcome.duration_ms,
            agent_id: Some(agent_id),
        };
        dispatch!(self.finish_sync(id, &fin))
    }

    /// The device's latest attempt (by `last_sync_time`), whatever its status.
    #[tracing::instrument(skip_all, fields(device_id = %device_id))]
    pub async fn latest_sync(&self, device_id: Uuid) -> Result<Option<SyncAttempt>, StoreError> {
        dispatch!(self.latest_sync(device_id, false))
    }

    /// The device's latest attempt with status `success`.
    #[tracing::instrument(skip_all, fields(device_id = %device_id))]
    pub async fn latest_successful_sync(&self, device_id: Uuid) -> Result<Option<SyncAttempt>, StoreError> {
        dispatch!(self.latest_sync(device_id, true))
    }

    /// Attempts of one device or of all, newest first.
    #[tracing::instrument(skip_all, fields(device_id = ?device_id, limit))]
    pub async fn sync_history(&self, device_id: Option<Uuid>, limit: u32) -> Result<Vec<SyncAttempt>, StoreError> {
        dispatch!(self.sync_history(device_id, limit))
    }

    /// Every device (active or not) by name, with its latest attempt, latest success and punch count.
    #[tracing::instrument(skip_all)]
    pub async fn device_sync_summaries(&self) -> Result<Vec<DeviceSyncSummary>, StoreError> {
        dispatch!(self.device_sync_summaries())
    }

    /// Appends a line to the device's sync log. [`StoreError::NotFound`] if the device does not exist.
    #[tracing::instrument(skip_all, fields(device_id = %device_id, sync_id = ?sync_id))]
    pub async fn add_sync_log(
        &self,
        device_id: Uuid,
        sync_id: Option<Uuid>,
        level: &str,
        message: &str,
    ) -> Result<(), StoreError> {
        check::text("log level", level)?;
        check::text("log message", message)?;
        dispatch!(self.add_sync_log(device_id, sync_id, level, message))
    }

    /// The device's latest log lines, newest first.
    #[tracing::instrument(skip_all, fields(device_id = %device_id, limit))]
    pub async fn sync_log(&self, device_id: Uuid, limit: u32) -> Result<Vec<SyncLogEntry>, StoreError> {
        dispatch!(self.sync_log(device_id, limit))
    }
}
