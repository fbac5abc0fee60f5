//! `/api/devices`: terminals, their connection settings and their status.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, ApiJson, Caller, OptionalJson};
use super::validate;
use super::{List, openapi};
use crate::app::AppState;
use crate::store::model::{Device, DeviceKind, DevicePatch, NewDevice};

/// Body of `POST /api/devices`. Unknown fields are refused (422).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateDevice {
    /// 1 to 100 characters.
    pub name: String,
    /// `pull` (default: an agent polls it) or `push` (it sends to the server).
    #[serde(default)]
    #[schema(schema_with = openapi::device_kind)]
    pub kind: Option<String>,
    /// IP address or host name; required for `pull` devices.
    #[serde(default)]
    pub ip_address: Option<String>,
    /// 1 to 65535; default 4370.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u32>,
    /// The terminal's comm key, 0 to 999999 (default 0, none). Write-only: answers only say `hasCommKey`.
    #[serde(default)]
    #[schema(maximum = 999_999, write_only)]
    pub comm_key: Option<u32>,
    /// `tcp` (default) or `udp`.
    #[serde(default)]
    #[schema(schema_with = openapi::transport)]
    pub transport: Option<String>,
    /// 1 to 64 printable ASCII characters; required for `push` devices; unique.
    #[serde(default)]
    pub serial_number: Option<String>,
    /// IANA time zone of the terminal's clock; default `UTC`.
    #[serde(default)]
    #[schema(example = "Asia/Kolkata")]
    pub timezone: Option<String>,
    /// Site name (created if new): the agents of that site reach the device.
    #[serde(default)]
    pub site: Option<String>,
    /// Default `true`.
    #[serde(default)]
    pub active: Option<bool>,
}

/// Body of `PATCH /api/devices/{id}`: only the fields present change; `null` clears `serialNumber` and `site`.
/// The same rules as for creating one; `kind` cannot change. Unknown fields are refused (422).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpdateDevice {
    #[schema(nullable = false)]
    pub name: Option<String>,
    #[schema(nullable = false)]
    pub ip_address: Option<String>,
    #[schema(nullable = false, minimum = 1, maximum = 65535)]
    pub port: Option<u32>,
    #[schema(nullable = false, maximum = 999_999, write_only)]
    pub comm_key: Option<u32>,
    #[schema(schema_with = openapi::transport)]
    pub transport: Option<String>,
    #[serde(default, deserialize_with = "validate::double_option")]
    #[schema(value_type = Option<String>)]
    pub serial_number: Option<Option<String>>,
    #[schema(nullable = false)]
    pub timezone: Option<String>,
    #[serde(default, deserialize_with = "validate::double_option")]
    #[schema(value_type = Option<String>)]
    pub site: Option<Option<String>>,
    #[schema(nullable = false)]
    pub active: Option<bool>,
}

/// A device as the API shows it (never the comm key).
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceView {
    pub id: Uuid,
    pub name: String,
    #[schema(schema_with = openapi::device_kind)]
    pub kind: &'static str,
    /// Empty for a push device whose address is unknown.
    pub ip_address: String,
    pub port: u16,
    #[schema(schema_with = openapi::transport)]
    pub transport: &'static str,
    pub serial_number: Option<String>,
    /// IANA time zone of the terminal's clock.
    pub timezone: String,
    /// Site name.
    pub site: Option<String>,
    pub active: bool,
    pub has_comm_key: bool,
    /// Whether a connected agent reports the device reachable; for a push device, whether it called within its
    /// poll interval.
    pub reachable: bool,
    /// The agents that reach it (none for a push device).
    pub reachable_via: Vec<DeviceReach>,
    /// A push device's last call to the server; `null` for pulled devices and push devices never heard from.
    #[schema(format = DateTime)]
    pub last_contact: Option<String>,
    /// A push device's dialect: `att` (attendance PUSH 2.x) or `acc` (security PUSH 3.x); `null` for pulled
    /// devices and push devices never heard from.
    pub push_dialect: Option<String>,
    /// A push device's protocol version (`pushver` of its handshake), when it sent one; `null` for pulled devices.
    pub push_version: Option<String>,
    /// A push device's firmware version as it reported it (`FWVersion` of its polls, `FirmVer` of a 3.x
    /// registry); `null` for pulled devices and push devices that did not report it.
    pub firmware: Option<String>,
    /// Start of the latest sync attempt.
    #[schema(format = DateTime)]
    pub last_sync_time: Option<String>,
    /// `success`, `failed` or `in_progress`.
    pub last_sync_status: Option<&'static str>,
    /// Punches stored for the device.
    pub record_count: i64,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub updated_at: String,
}

/// An agent that reaches a device, by its latest probe.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct DeviceReach {
    pub agent_id: Uuid,
    /// Round-trip time of the probe.
    pub rtt_ms: Option<f64>,
    #[schema(format = DateTime)]
    pub checked_at: String,
}

/// A device as the API shows it.
pub async fn device_view(state: &AppState, d: &Device) -> Result<DeviceView, ApiError> {
    let site = match d.site_id {
        Some(id) => state.store.get_site(id).await?.map(|s| s.name),
        None => None,
    };
    let reach = state.hub.reachability(d.id);
    let via: Vec<DeviceReach> = reach
        .iter()
        .filter(|r| r.reachable)
        .map(|r| DeviceReach {
            agent_id: r.agent_id,
            rtt_ms: r.rtt_us.map(|us| us as f64 / 1000.0),
            checked_at: r.checked_at.to_string(),
        })
        .collect();
    let last = state.store.latest_sync(d.id).await?;
    // What the push terminal told (read once): its last call, dialect, version and firmware.
    let terminal = match (&d.kind, &d.serial_number) {
        (DeviceKind::Push, Some(serial)) => state.store.get_push_terminal(serial).await?,
        _ => None,
    };
    let last_seen = terminal.as_ref().map(|t| t.last_seen);
    let push_reachable = last_seen.is_some_and(|t| crate::push::called_within(state, t));
    let firmware = terminal.as_ref().and_then(|t| super::push::reported_firmware(t.info.as_deref()));
    let (push_dialect, push_version) = terminal.map(|t| (Some(t.dialect), t.push_version)).unwrap_or_default();
    Ok(DeviceView {
        id: d.id,
        name: d.name.clone(),
        kind: d.kind.as_str(),
        ip_address: d.ip_address.clone(),
        port: d.port,
        transport: if d.udp { "udp" } else { "tcp" },
        serial_number: d.serial_number.clone(),
        timezone: d.timezone.clone(),
        site,
        active: d.active,
        has_comm_key: d.comm_key != 0,
        reachable: push_reachable || !via.is_empty(),
        reachable_via: via,
        last_contact: last_seen.map(|t| t.to_string()),
        push_dialect,
        push_version,
        firmware,
        last_sync_time: last.as_ref().map(|s| s.last_sync_time.to_string()),
        last_sync_status: last.as_ref().map(|s| s.sync_status.as_str()),
        record_count: state.store.count_attendance(Some(d.id)).await?,
        created_at: d.created_at.to_string(),
        updated_at: d.updated_at.to_string(),
    })
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

/// Adds a device (`POST /api/devices`, admin).
#[utoipa::path(
    post,
    path = "/api/devices",
    operation_id = "createDevice",
    tag = "devices",
    security(("bearer" = []), ("session" = [])),
    request_body = CreateDevice,
    responses(
        (status = 201, description = "Created (admin role)", body = DeviceView),
        (status = 400, description = openapi::MALFORMED_JSON, body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 409, description = "The serial number is used by another device", body = ErrorBody),
        (status = 413, description = openapi::TOO_LARGE, body = ErrorBody),
        (status = 415, description = openapi::NOT_JSON, body = ErrorBody),
        (status = 422, description = "Wrong shape, unknown field, or a value out of its rules", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn create(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<CreateDevice>,
) -> Result<(StatusCode, Json<DeviceView>), ApiError> {
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
    Ok((StatusCode::CREATED, Json(device_view(&state, &device).await?)))
}

fn essl_wire_port() -> u16 {
    4370
}

/// Lists the devices (`GET /api/devices`).
#[utoipa::path(
    get,
    path = "/api/devices",
    operation_id = "listDevices",
    tag = "devices",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "Every device, active or not, in one page (`nextCursor` is `null`); any role",
            body = List<DeviceView>),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn list(State(state): State<AppState>, _caller: Caller) -> Result<Json<List<DeviceView>>, ApiError> {
    let devices = state.store.list_devices(false).await?;
    let mut items = Vec::with_capacity(devices.len());
    for d in &devices {
        items.push(device_view(&state, d).await?);
    }
    Ok(Json(List { items, next_cursor: None }))
}

/// One device (`GET /api/devices/{id}`).
#[utoipa::path(
    get,
    path = "/api/devices/{id}",
    operation_id = "getDevice",
    tag = "devices",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 200, description = "The device (any role)", body = DeviceView),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn get(
    State(state): State<AppState>,
    _caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<DeviceView>, ApiError> {
    let id = validate::uuid("device id", &id)?;
    let device = state.store.get_device(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    Ok(Json(device_view(&state, &device).await?))
}

/// Changes a device (`PATCH /api/devices/{id}`, admin).
#[utoipa::path(
    patch,
    path = "/api/devices/{id}",
    operation_id = "updateDevice",
    tag = "devices",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    request_body = UpdateDevice,
    responses(
        (status = 200, description = "The updated device (admin role)", body = DeviceView),
        (status = 400, description = "`id` is not a UUID, or malformed JSON", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 409, description = "The serial number is used by another device", body = ErrorBody),
        (status = 413, description = openapi::TOO_LARGE, body = ErrorBody),
        (status = 415, description = openapi::NOT_JSON, body = ErrorBody),
        (status = 422, description = "Wrong shape, unknown field, or a value out of its rules", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn update(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<UpdateDevice>,
) -> Result<Json<DeviceView>, ApiError> {
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
    Ok(Json(device_view(&state, &device).await?))
}

/// Deletes a device with its punches and sync history (`DELETE /api/devices/{id}`, admin).
#[utoipa::path(
    delete,
    path = "/api/devices/{id}",
    operation_id = "deleteDevice",
    tag = "devices",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    responses(
        (status = 204, description = "Deleted, with its attendance and sync history (admin role)"),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
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

/// Body of `POST /api/devices/{id}/clear-attendance`; optional. Unknown fields are refused (422).
#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClearAttendance {
    /// `true` (the default): records on the terminal the cloud does not hold yet are sent first, and the clear
    /// goes on once they are stored. `false`: refused at once (409) unless every record is already stored.
    #[schema(nullable = false)]
    pub sync_first: Option<bool>,
}

/// The answer of a clear.
#[derive(Debug, Serialize, ToSchema)]
pub struct Cleared {
    /// Records the terminal held, every one stored before it was cleared.
    pub cleared: u64,
}

/// Deletes the attendance log on the terminal, only if every record of it is stored in this database
/// (`POST /api/devices/{id}/clear-attendance`, admin).
#[utoipa::path(
    post,
    path = "/api/devices/{id}/clear-attendance",
    operation_id = "clearAttendance",
    tag = "devices",
    description = "Clears the terminal's attendance log so that no punch is lost. An agent of the device's site \
        holds the terminal (disabled: it takes no punches meanwhile), reads its log, makes sure every record is \
        acknowledged by this server (sending what is not, unless `syncFirst` is false), then this server checks \
        in its database that it holds at least as many rows of the device in the log's time span as the log has \
        distinct punches; only then is the log cleared. The terminal takes punches again afterwards, whatever \
        happened. Needs an agent of protocol 2. Every attempt is written to the device's sync log.",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Device id")),
    request_body(content = Option<ClearAttendance>, description = "Optional. Any content type; an empty body is \
        allowed."),
    responses(
        (status = 200, description = "Cleared (admin role): every record the terminal held is stored", body = Cleared),
        (status = 400, description = "`id` is not a UUID, or malformed JSON", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 409, description = "`not_confirmed`: refused, nothing cleared; the message says why (records not \
            acknowledged by the server, fewer rows in the database than the terminal holds, the outbox full, the \
            agent too old, the device inactive or a push device)", body = ErrorBody),
        (status = 413, description = openapi::TOO_LARGE, body = ErrorBody),
        (status = 422, description = "JSON of the wrong shape, or an unknown field", body = ErrorBody),
        (status = 502, description = "`device_error`: no agent could do it (terminal unreachable, no agent \
            connected, a failure on the way); nothing cleared, except that after a timeout a clear already under \
            way may have completed", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn clear_attendance(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
    OptionalJson(body): OptionalJson<ClearAttendance>,
) -> Result<Json<Cleared>, ApiError> {
    let id = validate::uuid("device id", &id)?;
    let device = state.store.get_device(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    match crate::clear::clear_device(&state, &device, caller.id, body.sync_first.unwrap_or(true)).await {
        Ok(cleared) => Ok(Json(Cleared { cleared })),
        Err(crate::clear::ClearError::NotConfirmed(why)) => {
            Err(ApiError::new(StatusCode::CONFLICT, "not_confirmed", why))
        }
        Err(crate::clear::ClearError::Failed(why)) => Err(ApiError::new(StatusCode::BAD_GATEWAY, "device_error", why)),
        Err(crate::clear::ClearError::Store(e)) => Err(e.into()),
    }
}
