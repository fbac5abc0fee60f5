//! The admin side of push (ADMS) terminals: the serials that called (claimed or quarantined), claiming one, a
//! site's secret path, the request journal, and each push device's command queue.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use jiff::civil::DateTime;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use super::devices::{DeviceView, device_view};
use super::error::{ApiError, ErrorBody};
use super::extract::{Admin, ApiJson, ApiQuery};
use super::validate;
use super::{List, openapi};
use crate::app::AppState;
use crate::push::{Command, QueueError, UserSpec};
use crate::store::model::{DeviceKind, NewDevice};
use crate::store::{CommandStatus, JournalEntry, PushCommand, PushTerminal};

/// A serial number that called `/iclock/...`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct PushTerminalView {
    pub serial_number: String,
    /// `claimed` (an active push device has this serial) or `quarantined` (answered, nothing ingested, no command
    /// sent, uploads refused so the terminal keeps its records).
    pub status: &'static str,
    /// The device, when claimed.
    pub device_id: Option<Uuid>,
    /// The device's name, when claimed.
    pub device_name: Option<String>,
    #[schema(format = DateTime)]
    pub first_seen: String,
    #[schema(format = DateTime)]
    pub last_seen: String,
    /// The address it last called from (a NAT's, often).
    pub last_address: Option<String>,
    /// `pushver` of its handshake.
    pub push_version: Option<String>,
    /// `att` (attendance PUSH 2.x) or `acc` (security PUSH 3.x).
    pub dialect: String,
    /// Its firmware version as it reported it (`FWVersion` of its polls' INFO, `FirmVer` of a 3.x registry),
    /// when it did.
    pub firmware: Option<String>,
    /// Commands of its device waiting to be fetched or answered (`queued` or `sent`); 0 when quarantined.
    pub pending_commands: u32,
    /// What it reported about itself (INFO, options, registry), as sent.
    #[schema(value_type = Object)]
    pub info: serde_json::Value,
}

/// The keys under which terminals report their firmware version, most specific first.
const FIRMWARE_KEYS: [&str; 5] = ["FWVersion", "FirmVer", "~FirmVer", "FirmwareVersion", "~FWVersion"];

/// The firmware version in a terminal's stored info (a JSON object), if it reported one.
pub(crate) fn reported_firmware(info: Option<&str>) -> Option<String> {
    firmware(&serde_json::from_str(info?).ok()?)
}

fn firmware(info: &serde_json::Value) -> Option<String> {
    FIRMWARE_KEYS
        .iter()
        .filter_map(|k| info.get(*k).and_then(serde_json::Value::as_str))
        .map(str::trim)
        .find(|v| !v.is_empty())
        .map(str::to_owned)
}

fn terminal_view(t: PushTerminal, device: Option<(Uuid, String)>, pending_commands: u32) -> PushTerminalView {
    let info: serde_json::Value =
        t.info.as_deref().and_then(|s| serde_json::from_str(s).ok()).unwrap_or_else(|| serde_json::json!({}));
    let (device_id, device_name) = device.unzip();
    PushTerminalView {
        status: if device_id.is_some() { "claimed" } else { "quarantined" },
        device_id,
        device_name,
        first_seen: t.first_seen.to_string(),
        last_seen: t.last_seen.to_string(),
        last_address: t.last_address,
        push_version: t.push_version,
        dialect: t.dialect,
        firmware: firmware(&info),
        pending_commands,
        info,
        serial_number: t.serial,
    }
}

/// Lists the serials that called (`GET /api/push/terminals`, admin).
#[utoipa::path(
    get,
    path = "/api/push/terminals",
    operation_id = "listPushTerminals",
    tag = "push",
    security(("bearer" = []), ("session" = [])),
    responses(
        (status = 200, description = "Every serial that ever called, by serial, in one page (admin role)",
            body = List<PushTerminalView>),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn terminals(State(state): State<AppState>, _admin: Admin) -> Result<Json<List<PushTerminalView>>, ApiError> {
    let devices = state.store.list_devices(false).await?;
    let mut items = Vec::new();
    for t in state.store.list_push_terminals().await? {
        let device = devices
            .iter()
            .find(|d| d.kind == DeviceKind::Push && d.active && d.serial_number.as_deref() == Some(t.serial.as_str()));
        let pending = match device {
            Some(d) => pending_commands(&state, d.id).await?,
            None => 0,
        };
        items.push(terminal_view(t, device.map(|d| (d.id, d.name.clone())), pending));
    }
    Ok(Json(List { items, next_cursor: None }))
}

/// How many of a push device's commands wait for the terminal: queued, or sent without a result yet (among its
/// latest 200, as `GET /api/devices/{id}/commands` lists them).
async fn pending_commands(state: &AppState, device_id: Uuid) -> Result<u32, ApiError> {
    let commands = state.store.list_push_commands(device_id, 200).await?;
    let pending = commands.iter().filter(|c| matches!(c.status, CommandStatus::Queued | CommandStatus::Sent)).count();
    Ok(u32::try_from(pending).unwrap_or(u32::MAX))
}

/// Body of `POST /api/push/claim`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClaimRequest {
    /// The terminal's serial number, as it sends it.
    pub serial_number: String,
    /// 1 to 100 characters; default: the serial number.
    #[serde(default)]
    pub name: Option<String>,
    /// Site name (created if new).
    #[serde(default)]
    pub site: Option<String>,
    /// IANA time zone of the terminal's clock; it is also what the terminal is told to show (`TimeZone`).
    #[schema(example = "Asia/Kolkata")]
    pub timezone: String,
}

/// Claims a push terminal: creates its device, so that its punches are stored and commands reach it
/// (`POST /api/push/claim`, admin). It need not have called yet.
#[utoipa::path(
    post,
    path = "/api/push/claim",
    operation_id = "claimPushTerminal",
    tag = "push",
    security(("bearer" = []), ("session" = [])),
    request_body = ClaimRequest,
    responses(
        (status = 201, description = "The new push device (admin role)", body = DeviceView),
        (status = 400, description = openapi::MALFORMED_JSON, body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 409, description = "A device already has this serial number: the message names it and its site; nothing is created", body = ErrorBody),
        (status = 415, description = openapi::NOT_JSON, body = ErrorBody),
        (status = 422, description = "Wrong shape, unknown field, or a value out of its rules", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn claim(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<ClaimRequest>,
) -> Result<(StatusCode, Json<DeviceView>), ApiError> {
    validate::serial(&body.serial_number)?;
    let name = body.name.unwrap_or_else(|| body.serial_number.clone());
    validate::name("name", &name)?;
    validate::timezone(&body.timezone)?;
    // Checked before the site is made, so a refused claim leaves nothing behind; the unique serial index still
    // guards against two claims racing.
    if let Some(holder) = state.store.device_by_serial(&body.serial_number).await? {
        let site = match holder.site_id {
            Some(id) => state.store.get_site(id).await?.map(|s| s.name),
            None => None,
        };
        let inactive = if holder.active { "" } else { " (inactive)" };
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "serial number {:?} is already claimed by device {:?}{inactive} of site {}",
                body.serial_number,
                holder.name,
                site.map_or_else(|| "(none)".to_owned(), |s| format!("{s:?}"))
            ),
        ));
    }
    let site_id = match body.site.as_deref() {
        Some(site) => {
            validate::name("site", site)?;
            Some(state.store.ensure_site(site).await?.id)
        }
        None => None,
    };
    let device = state
        .store
        .create_device(&NewDevice {
            name,
            kind: DeviceKind::Push,
            ip_address: String::new(),
            port: 4370,
            comm_key: 0,
            udp: false,
            serial_number: Some(body.serial_number.clone()),
            timezone: body.timezone,
            site_id,
            active: true,
        })
        .await?;
    tracing::info!(device_id = %device.id, serial = %body.serial_number, "push terminal claimed");
    Ok((StatusCode::CREATED, Json(device_view(&state, &device).await?)))
}

/// Body of `POST /api/push/secret`.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct SecretRequest {
    /// Site name (created if new).
    pub site: String,
}

/// A site's new push secret, shown this once.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretView {
    pub site: String,
    pub secret: String,
    /// What to put before `/iclock/` in the terminals' server setting: `/iclock/s/<secret>/...`. Terminals of the
    /// site that call without it are refused (404).
    pub path_prefix: String,
}

/// Sets a new secret path segment for a site's push terminals; the old one stops working
/// (`POST /api/push/secret`, admin).
#[utoipa::path(
    post,
    path = "/api/push/secret",
    operation_id = "createPushSecret",
    tag = "push",
    security(("bearer" = []), ("session" = [])),
    request_body = SecretRequest,
    responses(
        (status = 201, description = "The secret, shown once (admin role); only its SHA-256 is stored",
            body = SecretView),
        (status = 400, description = openapi::MALFORMED_JSON, body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 415, description = openapi::NOT_JSON, body = ErrorBody),
        (status = 422, description = "Wrong shape or a bad site name", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn secret(
    State(state): State<AppState>,
    _admin: Admin,
    ApiJson(body): ApiJson<SecretRequest>,
) -> Result<(StatusCode, Json<SecretView>), ApiError> {
    validate::name("site", &body.site)?;
    let site = state.store.ensure_site(&body.site).await?;
    let secret = crate::push::new_secret().map_err(ApiError::internal)?;
    state.store.set_site_push_secret(site.id, &crate::push::secret_hash(&secret)).await?;
    Ok((StatusCode::CREATED, Json(SecretView { site: site.name, path_prefix: format!("/iclock/s/{secret}/"), secret })))
}

/// Filters of `GET /api/push/journal`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct JournalQuery {
    /// Only this serial number.
    pub serial_number: Option<String>,
    /// 1 to 500; default 100.
    pub limit: Option<u32>,
}

/// One journaled request.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct JournalView {
    pub id: i64,
    pub serial_number: Option<String>,
    pub method: String,
    pub path: String,
    pub query: String,
    /// The body as text (invalid UTF-8 replaced), as far as it was kept.
    pub body: String,
    /// The body's full length in bytes.
    pub body_length: i64,
    pub remote_address: Option<String>,
    #[schema(format = DateTime)]
    pub received_at: String,
    /// `received` while being handled, then what happened: `ok: ...`, `quarantined: ...`, `refused: ...`,
    /// `error: ...`.
    pub outcome: String,
}

fn journal_view(j: JournalEntry) -> JournalView {
    JournalView {
        id: j.id,
        serial_number: j.serial,
        method: j.method,
        path: j.path,
        query: j.query,
        body: String::from_utf8_lossy(&j.body).into_owned(),
        body_length: j.body_len,
        remote_address: j.remote_addr,
        received_at: j.received_at.to_string(),
        outcome: j.outcome,
    }
}

/// The latest requests of push terminals, as they arrived (`GET /api/push/journal`, admin).
#[utoipa::path(
    get,
    path = "/api/push/journal",
    operation_id = "pushJournal",
    tag = "push",
    security(("bearer" = []), ("session" = [])),
    params(JournalQuery),
    responses(
        (status = 200, description = "Newest first, in one page (admin role)", body = List<JournalView>),
        (status = 400, description = "A bad query parameter", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn journal(
    State(state): State<AppState>,
    _admin: Admin,
    ApiQuery(q): ApiQuery<JournalQuery>,
) -> Result<Json<List<JournalView>>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=500).contains(&limit) {
        return Err(ApiError::bad_request("limit must be 1 to 500"));
    }
    let items =
        state.store.list_journal(q.serial_number.as_deref(), limit).await?.into_iter().map(journal_view).collect();
    Ok(Json(List { items, next_cursor: None }))
}

/// A command of a push device's queue.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommandView {
    /// The command id on the wire (`C:<id>:...`), which the terminal's result names.
    pub id: i64,
    pub device_id: Uuid,
    /// `set_clock`, `reupload`, `info`, `check`, `upsert_user` or `delete_user`.
    pub kind: String,
    /// The command line as sent.
    pub command: String,
    /// `queued` -> `sent` -> `ok` | `failed` | `expired` (sent too often without a result, or never fetched).
    pub status: &'static str,
    pub attempts: i32,
    #[schema(format = DateTime)]
    pub created_at: String,
    #[schema(format = DateTime)]
    pub sent_at: Option<String>,
    #[schema(format = DateTime)]
    pub finished_at: Option<String>,
    /// The terminal's `Return=` (0 ok; negative: an error code of the protocol).
    pub return_code: Option<i32>,
    /// What the terminal sent with its result (`INFO`'s `Key=Value` lines).
    pub result: Option<String>,
}

fn command_view(c: PushCommand) -> CommandView {
    CommandView {
        id: c.id,
        device_id: c.device_id,
        kind: c.kind,
        command: c.command,
        status: c.status.as_str(),
        attempts: c.attempts,
        created_at: c.created_at.to_string(),
        sent_at: c.sent_at.map(|t| t.to_string()),
        finished_at: c.finished_at.map(|t| t.to_string()),
        return_code: c.return_code,
        result: c.result,
    }
}

/// A command for a push device. Values holding TAB, CR, LF or any other control character are refused (422):
/// they would add fields or commands to the terminal's wire format.
#[derive(Debug, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "camelCase", rename_all_fields = "camelCase")]
pub enum CommandRequest {
    /// Sets the terminal's clock (`SET OPTION DateTime=`): to `time` (its local wall clock,
    /// `YYYY-MM-DDTHH:MM:SS`), or to now in the device's time zone.
    SetClock {
        #[serde(default)]
        time: Option<String>,
    },
    /// The terminal uploads its punches of a window again (`DATA QUERY ATTLOG`); local wall-clock times.
    Reupload { from: String, to: String },
    /// The terminal reports its inventory (`INFO`); the result lands in the command and the terminal's info.
    Info,
    /// The terminal re-reads its options and uploads what is new (`CHECK`).
    Check,
    /// Adds or changes a user on the terminal (`DATA UPDATE USERINFO`).
    UpsertUser {
        /// 1 to 24 letters or digits.
        pin: String,
        /// At most 24 characters.
        #[serde(default)]
        name: String,
        /// 0 user (default), 2 enroller, 6 admin, 14 super-admin.
        #[serde(default)]
        privilege: u8,
        /// Digits, at most 8.
        #[serde(default)]
        password: String,
        /// Card number; 0 (default) none.
        #[serde(default)]
        card: u64,
        /// Group number; default 1.
        #[serde(default)]
        group: String,
    },
    /// Deletes a user (and their templates) from the terminal (`DATA DELETE USERINFO`).
    DeleteUser { pin: String },
}

fn local(field: &str, s: &str) -> Result<DateTime, ApiError> {
    crate::push::parse::local_time(s)
        .ok_or_else(|| ApiError::invalid(format!("{field} must be a local time YYYY-MM-DDTHH:MM:SS")))
}

async fn push_device(state: &AppState, id: &str) -> Result<crate::store::model::Device, ApiError> {
    let id = validate::uuid("device id", id)?;
    let device = state.store.get_device(id).await?.ok_or_else(|| ApiError::not_found("device"))?;
    if device.kind != DeviceKind::Push {
        return Err(ApiError::invalid("commands go only to push devices"));
    }
    Ok(device)
}

/// Queues a command for a push device; the terminal fetches it at its next poll (`POST
/// /api/devices/{id}/commands`, admin).
#[utoipa::path(
    post,
    path = "/api/devices/{id}/commands",
    operation_id = "queuePushCommand",
    tag = "push",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Device id (a push device)")),
    request_body = CommandRequest,
    responses(
        (status = 202, description = "Queued (admin role); follow it in the device's command list", body = CommandView),
        (status = 400, description = "`id` is not a UUID, or malformed JSON", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 415, description = openapi::NOT_JSON, body = ErrorBody),
        (status = 422, description = "Not a push device, an unknown `type`, or a value out of its rules (control \
            characters, a bad PIN or time)", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn queue_command(
    State(state): State<AppState>,
    Admin(caller): Admin,
    Path(id): Path<String>,
    ApiJson(body): ApiJson<CommandRequest>,
) -> Result<(StatusCode, Json<CommandView>), ApiError> {
    let device = push_device(&state, &id).await?;
    let command = match body {
        CommandRequest::SetClock { time } => {
            let local = match time {
                Some(t) => local("time", &t)?,
                None => {
                    let zone = crate::ingest::zone(&device.timezone).unwrap_or(jiff::tz::TimeZone::UTC);
                    let now = zone.to_datetime(jiff::Timestamp::now());
                    now.date().at(now.hour(), now.minute(), now.second(), 0)
                }
            };
            Command::SetClock { local }
        }
        CommandRequest::Reupload { from, to } => {
            Command::Reupload { start: local("from", &from)?, end: local("to", &to)? }
        }
        CommandRequest::Info => Command::Info,
        CommandRequest::Check => Command::Check,
        CommandRequest::UpsertUser { pin, name, privilege, password, card, group } => {
            Command::UpsertUser(UserSpec { pin, name, privilege, password, card, group })
        }
        CommandRequest::DeleteUser { pin } => Command::DeleteUser { pin },
    };
    let queued = crate::push::queue(&state, &device, &command, Some(&caller.name)).await.map_err(|e| match e {
        QueueError::Store(e) => ApiError::from(e),
        other => ApiError::invalid(other.to_string()),
    })?;
    Ok((StatusCode::ACCEPTED, Json(command_view(queued))))
}

/// A push device's commands, newest first (`GET /api/devices/{id}/commands`, admin).
#[utoipa::path(
    get,
    path = "/api/devices/{id}/commands",
    operation_id = "listPushCommands",
    tag = "push",
    security(("bearer" = []), ("session" = [])),
    params(("id" = Uuid, Path, description = "Device id (a push device)")),
    responses(
        (status = 200, description = "The latest 200 commands, in one page (admin role)", body = List<CommandView>),
        (status = 400, description = "`id` is not a UUID", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 403, description = openapi::FORBIDDEN, body = ErrorBody),
        (status = 404, description = "No such device", body = ErrorBody),
        (status = 422, description = "Not a push device", body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn list_commands(
    State(state): State<AppState>,
    _admin: Admin,
    Path(id): Path<String>,
) -> Result<Json<List<CommandView>>, ApiError> {
    let device = push_device(&state, &id).await?;
    let items = state.store.list_push_commands(device.id, 200).await?.into_iter().map(command_view).collect();
    Ok(Json(List { items, next_cursor: None }))
}
