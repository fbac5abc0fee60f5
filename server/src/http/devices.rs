//! `/api/devices`: terminals, their connection settings and their status.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Deserialize;
use serde_json::{Value, json};
use uuid::Uuid;

use super::error::ApiError;
use super::extract::{Admin, ApiJson, Caller};
use super::validate;
use crate::app::AppState;
use crate::store::model::{Device, DeviceKind, DevicePatch, NewDevice};

/// Body of `POST /api/devices`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateDevice {
    pub name: String,
    #[serde(default)]
    pub kind: Option<String>,
    #[serde(default)]
    pub ip_address: Option<String>,
    #[serde(default)]
    pub port: Option<u32>,
    #[serde(default)]
    pub comm_key: Option<u32>,
    #[serde(default)]
    pub transport: Option<String>,
    #[serde(default)]
    pub serial_number: Option<String>,
    #[serde(default)]
    pub timezone: Option<String>,
    #[serde(default)]
    pub site: Option<String>,
    #[serde(default)]
    pub active: Option<bool>,
}

/// Body of `PATCH /api/devices/{id}`: only the fields present change; `null` clears the optional ones.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateDevice {
    pub name: Option<String>,
    pub ip_address: Option<String>,
    pub port: Option<u32>,
    pub comm_key: Option<u32>,
    pub transport: Option<String>,
    #[serde(default, deserialize_with = "validate::double_option")]
    pub serial_number: Option<Option<String>>,
    pub timezone: Option<String>,
    #[serde(default, deserialize_with = "validate::double_option")]
    pub site: Option<Option<String>>,
    pub active: Option<bool>,
}

/// A device as the API shows it (never the comm key).
pub async fn device_json(state: &AppState, d: &Device) -> Result<Value, ApiError> {
    let site = match d.site_id {
        Some(id) => state.store.get_site(id).await?.map(|s| s.name),
        None => None,
    };
    let reach = state.hub.reachability(d.id);
    let via: Vec<Value> = reach
        .iter()
        .filter(|r| r.reachable)
        .map(|r| json!({"agentId": r.agent_id, "rttMs": r.rtt_us.map(|us| us as f64 / 1000.0), "checkedAt": r.checked_at.to_string()}))
        .collect();
    let last = state.store.latest_sync(d.id).await?;
    Ok(json!({
        "id": d.id,
        "name": d.name,
        "kind": match d.kind { DeviceKind::Pull => "pull", DeviceKind::Push => "push" },
        "ipAddress": d.ip_address,
        "port": d.port,
        "transport": if d.udp { "udp" } else { "tcp" },
        "serialNumber": d.serial_number,
        "timezone": d.timezone,
        "site": site,
        "active": d.active,
        "hasCommKey": d.comm_key != 0,
        "reachable": !via.is_empty(),
        "reachableVia": via,
        "lastSyncTime": last.as_ref().map(|s| s.last_sync_time.to_string()),
        "lastSyncStatus": last.as_ref().map(|s| s.sync_status.as_str()),
        "recordCount": state.store.count_attendance(Some(d.id)).await?,
        "createdAt": d.created_at.to_string(),
        "updatedAt": d.updated_at.to_string(),
    }))
}

async fn site_id(state: &AppState, site: Option<&str>) -> Result<Option<Uuid>, ApiError> {
    match site {
        None => Ok(None),
        Some(name) => {
            validate::name("site", name)?;
            Ok(Some(state.store.ensure_site(name).await?.id))
        }
    }
}

/// `POST /api/devices` (admin)
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateDevice>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    validate::name("name", &body.name)?;
    let kind = validate::kind(body.kind.as_deref())?;
    let ip_address = body.ip_address.unwrap_or_default();
    if kind == DeviceKind::Pull {
        validate::host(&ip_address)?;
    }
    let serial_number = body.serial_number.map(|s| validate::serial(&s).map(|_| s)).transpose()?;
    if kind == DeviceKind::Push && serial_number.is_none() {
        return Err(ApiError::invalid("a push device needs its serialNumber"));
    }
    let timezone = body.timezone.unwrap_or_else(|| "UTC".to_owned());
    validate::timezone(&timezone)?;
    let new = NewDevice {
        name: body.name,
        kind,
        ip_address,
        port: validate::port(body.port.unwrap_or(u32::from(essl_wire_port())))?,
        comm_key: validate::comm_key(body.comm_key.unwrap_or(0))?,
        udp: validate::transport(body.transport.as_deref())?,
        serial_number,
        timezone,
        site_id: site_id(&state, body.site.as_deref()).await?,
        active: body.active.unwrap_or(true),
    };
    let device = state.store.create_device(&new).await?;
    state.notify_site(device.site_id).await;
    Ok((StatusCode::CREATED, Json(device_json(&state, &device).await?)))
}

fn essl_wire_port() -> u16 {
    4370
}

/// `GET /api/devices`
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Json<Value>, ApiError> {
    let devices = state.store.list_devices(false).await?;
    let mut items = Vec::with_capacity(devices.len());
    for d in &devices {
        items.push(device_json(&state, d).await?);
    }
    Ok(Json(json!({"items": items, "nextCursor": null})))
}

/// `GET /api/devices/{id}`
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let id = validate::uuid("device id", &id)?;
    let device = state.store.get_device(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    Ok(Json(device_json(&state, &device).await?))
}

/// `PATCH /api/devices/{id}` (admin)
pub async fn update(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateDevice>,
) -> Result<Json<Value>, ApiError> {
    let id = validate::uuid("device id", &id)?;
    let before = state.store.get_device(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    if let Some(n) = &body.name {
        validate::name("name", n)?;
    }
    if let Some(ip) = &body.ip_address {
        validate::host(ip)?;
    }
    if let Some(Some(s)) = &body.serial_number {
        validate::serial(s)?;
    }
    if let Some(tz) = &body.timezone {
        validate::timezone(tz)?;
    }
    let site_id = match &body.site {
        None => None,
        Some(None) => Some(None),
        Some(Some(name)) => Some(site_id(&state, Some(name)).await?),
    };
    let patch = DevicePatch {
        name: body.name,
        ip_address: body.ip_address,
        port: body.port.map(validate::port).transpose()?,
        comm_key: body.comm_key.map(validate::comm_key).transpose()?,
        udp: body.transport.as_deref().map(|t| validate::transport(Some(t))).transpose()?,
        serial_number: body.serial_number,
        timezone: body.timezone,
        site_id,
        active: body.active,
    };
    let device = state.store.update_device(id, &patch).await.map_err(|e| match e {
        crate::store::StoreError::NotFound => ApiError::not_found("device"),
        other => other.into(),
    })?;
    state.notify_site(before.site_id).await;
    if device.site_id != before.site_id {
        state.notify_site(device.site_id).await;
    }
    Ok(Json(device_json(&state, &device).await?))
}

/// `DELETE /api/devices/{id}` (admin)
pub async fn delete(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let id = validate::uuid("device id", &id)?;
    let device = state.store.get_device(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    state.store.delete_device(id).await?;
    state.notify_site(device.site_id).await;
    Ok(StatusCode::NO_CONTENT)
}
