//! Push terminals: journal, terminal state, command queue, site secrets.

use jiff::Timestamp;
use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{PgStore, device, id};
use crate::store::check::{self, StoreError, ms_to_ts, now_ms, opt_ms_to_ts};
use crate::store::model::Device;
use crate::store::push::*;

const TERMINAL_COLS: &str = "serial, essl_ms(first_seen) AS first_seen, essl_ms(last_seen) AS last_seen, \
                             last_address, push_version, dialect, language, info, attlog_stamp, operlog_stamp, \
                             registry_code, session_id";
const COMMAND_COLS: &str = "id, device_id, kind, command, status, attempts, essl_ms(created_at) AS created_at, \
                            essl_ms(sent_at) AS sent_at, essl_ms(finished_at) AS finished_at, return_code, result, \
                            requested_by";

fn terminal(r: &PgRow) -> Result<PushTerminal, StoreError> {
    Ok(PushTerminal {
        serial: r.try_get("serial")?,
        first_seen: ms_to_ts(r.try_get("first_seen")?)?,
        last_seen: ms_to_ts(r.try_get("last_seen")?)?,
        last_address: r.try_get("last_address")?,
        push_version: r.try_get("push_version")?,
        dialect: r.try_get("dialect")?,
        language: r.try_get("language")?,
        info: r.try_get("info")?,
        attlog_stamp: r.try_get("attlog_stamp")?,
        operlog_stamp: r.try_get("operlog_stamp")?,
        registry_code: r.try_get("registry_code")?,
        session_id: r.try_get("session_id")?,
    })
}

fn command(r: &PgRow) -> Result<PushCommand, StoreError> {
    Ok(PushCommand {
        id: i64::from(r.try_get::<i32, _>("id")?),
        device_id: id(r, "device_id")?,
        kind: r.try_get("kind")?,
        command: r.try_get("command")?,
        status: check::parse(r.try_get::<&str, _>("status")?)?,
        attempts: r.try_get("attempts")?,
        created_at: ms_to_ts(r.try_get("created_at")?)?,
        sent_at: opt_ms_to_ts(r.try_get("sent_at")?)?,
        finished_at: opt_ms_to_ts(r.try_get("finished_at")?)?,
        return_code: r.try_get("return_code")?,
        result: r.try_get("result")?,
        requested_by: r.try_get("requested_by")?,
    })
}

fn journal(r: &PgRow) -> Result<JournalEntry, StoreError> {
    Ok(JournalEntry {
        id: r.try_get("id")?,
        serial: r.try_get("serial")?,
        method: r.try_get("method")?,
        path: r.try_get("path")?,
        query: r.try_get("query")?,
        body: r.try_get("body")?,
        body_len: r.try_get("body_len")?,
        remote_addr: r.try_get("remote_addr")?,
        received_at: ms_to_ts(r.try_get("received_at")?)?,
        outcome: r.try_get("outcome")?,
    })
}

/// Command ids are int4 on the wire and in the table.
fn cmd_id(id: i64) -> Option<i32> {
    i32::try_from(id).ok()
}

impl PgStore {
    pub(crate) async fn journal_push(&self, j: &NewJournal) -> Result<i64, StoreError> {
        let id: i64 = sqlx::query_scalar(
            "INSERT INTO essl_push_journal (serial, method, path, query, body, body_len, remote_addr, received_at) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, essl_ts($8)) RETURNING id",
        )
        .bind(j.serial.as_deref())
        .bind(&j.method)
        .bind(&j.path)
        .bind(&j.query)
        .bind(&j.body)
        .bind(j.body_len)
        .bind(j.remote_addr.as_deref())
        .bind(j.received_at.as_millisecond())
        .fetch_one(&self.pool)
        .await?;
        Ok(id)
    }

    pub(crate) async fn set_journal_outcome(&self, id: i64, outcome: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE essl_push_journal SET outcome = $2 WHERE id = $1")
            .bind(id)
            .bind(outcome)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn list_journal(&self, serial: Option<&str>, limit: u32) -> Result<Vec<JournalEntry>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, serial, method, path, query, body, body_len, remote_addr, essl_ms(received_at) AS received_at, \
             outcome FROM essl_push_journal WHERE serial = $1 OR $1::text IS NULL ORDER BY id DESC LIMIT $2",
        )
        .bind(serial)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(journal).collect()
    }

    pub(crate) async fn prune_journal(&self, before: Timestamp) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM essl_push_journal WHERE received_at < essl_ts($1)")
            .bind(before.as_millisecond())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    pub(crate) async fn push_seen(&self, s: &PushSeen) -> Result<PushTerminal, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO essl_push_terminals (serial, first_seen, last_seen, last_address, push_version, dialect, \
             language) VALUES ($1, essl_ts($2), essl_ts($2), $3, $4, COALESCE($5, 'att'), $6) \
             ON CONFLICT (serial) DO UPDATE SET \
             last_seen = greatest(essl_push_terminals.last_seen, excluded.last_seen), \
             last_address = COALESCE($3, essl_push_terminals.last_address), \
             push_version = COALESCE($4, essl_push_terminals.push_version), \
             dialect = COALESCE($5, essl_push_terminals.dialect), \
             language = COALESCE($6, essl_push_terminals.language) \
             RETURNING {TERMINAL_COLS}"
        )))
        .bind(&s.serial)
        .bind(s.at.as_millisecond())
        .bind(s.address.as_deref())
        .bind(s.push_version.as_deref())
        .bind(s.dialect.as_deref())
        .bind(s.language.as_deref())
        .fetch_one(&self.pool)
        .await?;
        terminal(&row)
    }

    pub(crate) async fn get_push_terminal(&self, serial: &str) -> Result<Option<PushTerminal>, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TERMINAL_COLS} FROM essl_push_terminals WHERE serial = $1"
        )))
        .bind(serial)
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(terminal).transpose()
    }

    pub(crate) async fn list_push_terminals(&self) -> Result<Vec<PushTerminal>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {TERMINAL_COLS} FROM essl_push_terminals ORDER BY serial"
        )))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(terminal).collect()
    }

    pub(crate) async fn set_push_stamp(&self, serial: &str, table: StampTable, stamp: &str) -> Result<(), StoreError> {
        let sql = match table {
            StampTable::AttLog => "UPDATE essl_push_terminals SET attlog_stamp = $2 WHERE serial = $1",
            StampTable::OperLog => "UPDATE essl_push_terminals SET operlog_stamp = $2 WHERE serial = $1",
        };
        sqlx::query(sql).bind(serial).bind(stamp).execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn set_push_info(&self, serial: &str, info: &str) -> Result<(), StoreError> {
        sqlx::query("UPDATE essl_push_terminals SET info = $2 WHERE serial = $1")
            .bind(serial)
            .bind(info)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub(crate) async fn register_push(&self, serial: &str, code: &str) -> Result<String, StoreError> {
        let stored: String = sqlx::query_scalar(
            "UPDATE essl_push_terminals SET registry_code = COALESCE(registry_code, $2), session_id = NULL \
             WHERE serial = $1 RETURNING registry_code",
        )
        .bind(serial)
        .bind(code)
        .fetch_one(&self.pool)
        .await?;
        Ok(stored)
    }

    pub(crate) async fn push_session(
        &self,
        serial: &str,
        session: &str,
    ) -> Result<Option<(String, String)>, StoreError> {
        let row: Option<(String, String)> = sqlx::query_as(
            "UPDATE essl_push_terminals SET session_id = COALESCE(session_id, $2) \
             WHERE serial = $1 AND registry_code IS NOT NULL RETURNING registry_code, session_id",
        )
        .bind(serial)
        .bind(session)
        .fetch_optional(&self.pool)
        .await?;
        Ok(row)
    }

    pub(crate) async fn device_by_serial(&self, serial: &str) -> Result<Option<Device>, StoreError> {
        let row = sqlx::query(concat!("SELECT ", device_cols!(), " FROM essl_devices WHERE serial_number = $1"))
            .bind(serial)
            .fetch_optional(&self.pool)
            .await?;
        row.as_ref().map(device).transpose()
    }

    pub(crate) async fn queue_push_command(
        &self,
        device_id: Uuid,
        kind: &str,
        command_text: &str,
        requested_by: Option<&str>,
    ) -> Result<PushCommand, StoreError> {
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO essl_push_commands (device_id, kind, command, status, created_at, requested_by) \
             VALUES ($1, $2, $3, 'queued', essl_ts($4), $5) RETURNING {COMMAND_COLS}"
        )))
        .bind(device_id)
        .bind(kind)
        .bind(command_text)
        .bind(now_ms())
        .bind(requested_by)
        .fetch_one(&self.pool)
        .await
        .map_err(|e| match e.as_database_error() {
            Some(db) if db.is_foreign_key_violation() => StoreError::NotFound,
            _ => e.into(),
        })?;
        command(&row)
    }

    pub(crate) async fn take_push_commands(
        &self,
        device_id: Uuid,
        p: &TakePolicy,
    ) -> Result<Vec<PushCommand>, StoreError> {
        let now = now_ms();
        let mut tx = self.write_tx().await?;
        sqlx::query(
            "UPDATE essl_push_commands SET status = 'expired', finished_at = essl_ts($2) WHERE device_id = $1 AND \
             ((status = 'sent' AND attempts >= $3 AND sent_at <= essl_ts($2 - $4)) \
              OR (status = 'queued' AND created_at <= essl_ts($2 - $5)))",
        )
        .bind(device_id)
        .bind(now)
        .bind(p.max_attempts)
        .bind(p.resend_ms())
        .bind(p.ttl_ms())
        .execute(&mut *tx)
        .await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE essl_push_commands SET status = 'sent', attempts = attempts + 1, sent_at = essl_ts($2) \
             WHERE id IN (SELECT id FROM essl_push_commands WHERE device_id = $1 AND \
             (status = 'queued' OR (status = 'sent' AND sent_at <= essl_ts($2 - $3) AND attempts < $4)) \
             ORDER BY id LIMIT $5 FOR UPDATE) RETURNING {COMMAND_COLS}"
        )))
        .bind(device_id)
        .bind(now)
        .bind(p.resend_ms())
        .bind(p.max_attempts)
        .bind(i64::from(p.limit))
        .fetch_all(&mut *tx)
        .await?;
        tx.commit().await?;
        let mut out: Vec<PushCommand> = rows.iter().map(command).collect::<Result<_, _>>()?;
        out.sort_by_key(|c| c.id);
        Ok(out)
    }

    pub(crate) async fn finish_push_command(
        &self,
        device_id: Uuid,
        id: i64,
        status: CommandStatus,
        return_code: Option<i32>,
        result: Option<&str>,
    ) -> Result<Option<PushCommand>, StoreError> {
        let Some(id) = cmd_id(id) else { return Ok(None) };
        let row = sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE essl_push_commands SET status = $3, return_code = $4, result = $5, finished_at = essl_ts($6) \
             WHERE device_id = $1 AND id = $2 AND status IN ('queued', 'sent', 'expired') RETURNING {COMMAND_COLS}"
        )))
        .bind(device_id)
        .bind(id)
        .bind(status.as_str())
        .bind(return_code)
        .bind(result)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        row.as_ref().map(command).transpose()
    }

    pub(crate) async fn list_push_commands(&self, device_id: Uuid, limit: u32) -> Result<Vec<PushCommand>, StoreError> {
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT {COMMAND_COLS} FROM essl_push_commands WHERE device_id = $1 ORDER BY id DESC LIMIT $2"
        )))
        .bind(device_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?;
        rows.iter().map(command).collect()
    }

    pub(crate) async fn set_site_push_secret(&self, site_id: Uuid, hash: &[u8]) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO essl_push_secrets (site_id, secret_hash, created_at) VALUES ($1, $2, essl_ts($3)) \
             ON CONFLICT (site_id) DO UPDATE SET secret_hash = excluded.secret_hash, created_at = excluded.created_at",
        )
        .bind(site_id)
        .bind(hash)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(|e| check::unknown_ref(e, "site"))?;
        Ok(())
    }

    pub(crate) async fn site_push_secret(&self, site_id: Uuid) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(sqlx::query_scalar("SELECT secret_hash FROM essl_push_secrets WHERE site_id = $1")
            .bind(site_id)
            .fetch_optional(&self.pool)
            .await?)
    }

    pub(crate) async fn site_by_push_secret(&self, hash: &[u8]) -> Result<Option<Uuid>, StoreError> {
        Ok(sqlx::query_scalar("SELECT site_id FROM essl_push_secrets WHERE secret_hash = $1")
            .bind(hash)
            .fetch_optional(&self.pool)
            .await?)
    }
}
