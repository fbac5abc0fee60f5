//! Sites, devices, agents and API tokens.

use jiff::Timestamp;
use sqlx::Row;
use uuid::Uuid;

use super::{SqliteStore, agent, device, site, token};
use crate::store::check::{self, StoreError, now_ms};
use crate::store::model::*;

impl SqliteStore {
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
        .map_err(|e| check::device_write_error(e, d))?;
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
        .map_err(|e| check::device_write_error(e, &d))?;
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
}
