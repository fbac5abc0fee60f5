//! What terminals produce: punches, user lists, sync attempts and the sync log.

use std::sync::OnceLock;

use sqlx::{AssertSqlSafe, QueryBuilder, Row, Sqlite, Transaction};
use uuid::Uuid;

use super::{PUNCH_ROWS, SqliteStore, USER_ROWS, id, opt_id, punch, sync};
use crate::store::check::{self, Finish, StoreError, local_to_text, ms_to_ts, now_ms, opt_ms_to_ts};
use crate::store::model::*;

impl SqliteStore {
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

    pub(crate) async fn count_attendance_between(
        &self,
        device_id: Uuid,
        first: jiff::civil::DateTime,
        last: jiff::civil::DateTime,
    ) -> Result<i64, StoreError> {
        // The stored text sorts as the time it spells (fixed-width `YYYY-MM-DDTHH:MM:SS`).
        let n = sqlx::query_scalar(
            "SELECT count(*) FROM essl_attendance WHERE device_id = $1 AND local_time BETWEEN $2 AND $3",
        )
        .bind(device_id.hyphenated())
        .bind(local_to_text(first))
        .bind(local_to_text(last))
        .fetch_one(&self.reader)
        .await?;
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
             error_message = $5, error_kind = $6, sync_duration_ms = $7, agent_id = COALESCE($8, agent_id) \
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
        .bind(f.agent_id.map(Uuid::hyphenated))
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
