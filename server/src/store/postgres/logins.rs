//! Dashboard users and sessions (PostgreSQL).

use sqlx::Row;
use sqlx::postgres::PgRow;
use uuid::Uuid;

use super::{PgStore, id};
use crate::store::check::{self, StoreError, ms_to_ts, now_ms, opt_ms_to_ts};
use crate::store::model::*;

macro_rules! user_cols {
    () => {
        "u.id, u.username, u.role, essl_ms(u.created_at) AS created_at, essl_ms(u.disabled_at) AS disabled_at"
    };
}

fn user(r: &PgRow) -> Result<User, StoreError> {
    Ok(User {
        id: id(r, "id")?,
        username: r.try_get("username")?,
        role: check::parse(r.try_get::<&str, _>("role")?)?,
        created_at: ms_to_ts(r.try_get("created_at")?)?,
        disabled_at: opt_ms_to_ts(r.try_get("disabled_at")?)?,
    })
}

impl PgStore {
    pub(crate) async fn create_user(
        &self,
        id: Uuid,
        username: &str,
        role: Role,
        password_hash: &str,
    ) -> Result<User, StoreError> {
        let row = sqlx::query(
            "INSERT INTO essl_users (id, username, role, password_hash, created_at) VALUES ($1, $2, $3, $4, essl_ts($5)) \
             RETURNING id, username, role, essl_ms(created_at) AS created_at, essl_ms(disabled_at) AS disabled_at",
        )
        .bind(id)
        .bind(username)
        .bind(role.as_str())
        .bind(password_hash)
        .bind(now_ms())
        .fetch_one(&self.pool)
        .await?;
        user(&row)
    }

    pub(crate) async fn user_login(&self, username: &str) -> Result<Option<(User, String)>, StoreError> {
        let row =
            sqlx::query(concat!("SELECT ", user_cols!(), ", u.password_hash FROM essl_users u WHERE u.username = $1"))
                .bind(username)
                .fetch_optional(&self.pool)
                .await?;
        row.map(|r| Ok((user(&r)?, r.try_get("password_hash")?))).transpose()
    }

    pub(crate) async fn list_users(&self) -> Result<Vec<User>, StoreError> {
        let rows =
            sqlx::query(concat!("SELECT ", user_cols!(), " FROM essl_users u ORDER BY u.username COLLATE \"C\""))
                .fetch_all(&self.pool)
                .await?;
        rows.iter().map(user).collect()
    }

    pub(crate) async fn set_password(&self, username: &str, password_hash: &str) -> Result<User, StoreError> {
        let mut tx = self.write_tx().await?;
        let row = sqlx::query(
            "UPDATE essl_users SET password_hash = $2 WHERE username = $1 \
             RETURNING id, username, role, essl_ms(created_at) AS created_at, essl_ms(disabled_at) AS disabled_at",
        )
        .bind(username)
        .bind(password_hash)
        .fetch_optional(&mut *tx)
        .await?
        .ok_or(StoreError::NotFound)?;
        let u = user(&row)?;
        sqlx::query("DELETE FROM essl_sessions WHERE user_id = $1").bind(u.id).execute(&mut *tx).await?;
        tx.commit().await?;
        Ok(u)
    }

    pub(crate) async fn create_session(&self, new: &NewSession) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO essl_sessions (id, user_id, secret_hash, csrf_token, created_at, expires_at) \
             VALUES ($1, $2, $3, $4, essl_ts($5), essl_ts($6))",
        )
        .bind(new.id)
        .bind(new.user_id)
        .bind(&new.secret_hash)
        .bind(&new.csrf_token)
        .bind(now_ms())
        .bind(new.expires_at.as_millisecond())
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn live_session(&self, session_id: Uuid) -> Result<Option<Session>, StoreError> {
        let row = sqlx::query(concat!(
            "SELECT ",
            user_cols!(),
            ", s.id AS session_id, s.secret_hash, s.csrf_token, essl_ms(s.created_at) AS session_created, \
             essl_ms(s.expires_at) AS expires_at FROM essl_sessions s JOIN essl_users u ON u.id = s.user_id \
             WHERE s.id = $1 AND s.expires_at > essl_ts($2) AND u.disabled_at IS NULL"
        ))
        .bind(session_id)
        .bind(now_ms())
        .fetch_optional(&self.pool)
        .await?;
        let Some(r) = row else { return Ok(None) };
        Ok(Some(Session {
            id: id(&r, "session_id")?,
            user: user(&r)?,
            secret_hash: r.try_get("secret_hash")?,
            csrf_token: r.try_get("csrf_token")?,
            created_at: ms_to_ts(r.try_get("session_created")?)?,
            expires_at: ms_to_ts(r.try_get("expires_at")?)?,
        }))
    }

    pub(crate) async fn delete_session(&self, session_id: Uuid) -> Result<(), StoreError> {
        sqlx::query("DELETE FROM essl_sessions WHERE id = $1").bind(session_id).execute(&self.pool).await?;
        Ok(())
    }

    pub(crate) async fn delete_expired_sessions(&self) -> Result<u64, StoreError> {
        let done = sqlx::query("DELETE FROM essl_sessions WHERE expires_at <= essl_ts($1)")
            .bind(now_ms())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }
}
