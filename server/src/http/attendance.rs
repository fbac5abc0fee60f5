//! `GET /api/attendance`: filtered, paginated (cursor), as JSON or CSV.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use super::error::{ApiError, ErrorBody};
use super::extract::{ApiQuery, Caller};
use super::{List, openapi, validate};
use crate::app::AppState;
use crate::ingest::FLAG_INVALID_TIME;
use crate::store::model::{AttendanceFilter, AttendanceRow, Cursor};

/// Query of `GET /api/attendance`. Unknown parameters are ignored (clients add cache-busters like `_=1732000000`).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(rename_all = "camelCase")]
#[into_params(parameter_in = Query)]
pub struct AttendanceQuery {
    /// Only this device's punches.
    #[param(format = Uuid)]
    pub device_id: Option<String>,
    /// Only this user's punches (the PIN on the terminal), 1 to 64 characters.
    #[param(max_length = 64)]
    pub user_id: Option<String>,
    /// RFC 3339 instant, inclusive.
    #[param(format = DateTime, example = "2025-11-24T00:00:00Z")]
    pub from: Option<String>,
    /// RFC 3339 instant, exclusive.
    #[param(format = DateTime)]
    pub to: Option<String>,
    /// Page size: 1 to 1000, default 100 (JSON); 1 to 100000, default 100000 (CSV).
    #[param(minimum = 1, maximum = 100_000)]
    pub limit: Option<u32>,
    /// `nextCursor` of the previous page (JSON) or its `X-Next-Cursor` header (CSV).
    pub cursor: Option<String>,
    /// `json` (default) or `csv`.
    #[param(schema_with = openapi::attendance_format)]
    pub format: Option<String>,
}

/// One punch. Records that look wrong are stored and flagged, never dropped: see `flags`.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AttendanceItem {
    pub device_id: Uuid,
    /// The user's PIN on the terminal.
    pub user_id: String,
    /// The terminal's internal user number.
    pub uid: i32,
    /// The terminal's wall-clock time, no offset. With flag 8 (invalid time) a placeholder: `1000-01-01T00:00:00`
    /// plus `rawTime` seconds (years 1000-1136, before any time a terminal can hold).
    #[schema(example = "2025-11-24T09:01:02")]
    pub local_time: String,
    /// The instant, from `localTime` in the device's time zone (with flag 8, the placeholder read as UTC).
    #[schema(format = DateTime, example = "2025-11-24T03:31:02Z")]
    pub punched_at: String,
    /// The terminal's verify-type byte (see `verify`).
    pub status: i16,
    /// The terminal's punch byte (check in, check out, ...).
    pub punch: i16,
    /// `status` as a word: `password`, `fingerprint`, `card`, `face` or `other`.
    pub verify: &'static str,
    /// Bits: 1 ambiguous (the local time occurs twice, clocks went back; the earlier instant was taken),
    /// 2 nonexistent (the local time was skipped, clocks went forward; shifted forward by the gap),
    /// 4 future (more than a day ahead of the server's clock when stored), 8 invalid time (the terminal's time field
    /// is no date, e.g. 31 February or a year past 2099: kept with its raw value, see `rawTime`),
    /// 16 unknown user (`userId` is not among the users enrolled on the device, as the server knew them when the
    /// punch was stored).
    #[schema(example = 0)]
    pub flags: i32,
    /// With flag 8 only: the terminal's raw time field (the packed u32 of the protocol); `null` otherwise.
    pub raw_time: Option<u32>,
}

const MAX_PAGE: u32 = 1_000;
const MAX_CSV: u32 = 100_000;

fn instant(what: &str, s: &str) -> Result<Timestamp, ApiError> {
    if s.len() > 64 {
        return Err(ApiError::bad_request(format!("{what} is too long")));
    }
    s.parse::<Timestamp>()
        .map_err(|_| ApiError::bad_request(format!("{what} must be an RFC 3339 instant, e.g. 2025-11-24T00:00:00Z")))
}

/// Cursor text: `<punchedAt ms>.<row id>`.
fn encode_cursor(c: &Cursor) -> String {
    format!("{}.{}", c.punched_at.as_millisecond(), c.id)
}

fn decode_cursor(s: &str) -> Result<Cursor, ApiError> {
    let bad = || ApiError::bad_request("cursor is not one this server issued");
    let (ms, id) = s.split_once('.').ok_or_else(bad)?;
    let ms: i64 = ms.parse().map_err(|_| bad())?;
    Ok(Cursor { punched_at: Timestamp::from_millisecond(ms).map_err(|_| bad())?, id: id.parse().map_err(|_| bad())? })
}

/// The verify type as a word (the terminal's `status` byte).
pub fn verify_label(status: i16) -> &'static str {
    match status {
        0 => "password",
        1 => "fingerprint",
        2 => "card",
        15 => "face",
        _ => "other",
    }
}

/// The raw time field of a row flagged invalid-time, read back from its placeholder local time.
fn raw_time(flags: i32, local_time: &str) -> Option<u32> {
    (flags & FLAG_INVALID_TIME != 0).then(|| essl_wire::raw_of_placeholder(local_time)).flatten()
}

fn item(r: &AttendanceRow) -> AttendanceItem {
    let local_time = r.local_time.strftime("%Y-%m-%dT%H:%M:%S").to_string();
    AttendanceItem {
        device_id: r.device_id,
        user_id: r.user_id.clone(),
        uid: r.uid,
        raw_time: raw_time(r.flags, &local_time),
        local_time,
        punched_at: r.punched_at.to_string(),
        status: r.status,
        punch: r.punch,
        verify: verify_label(r.status),
        flags: r.flags,
    }
}

/// A CSV field, quoted when needed; a leading `= + - @` is defused so spreadsheets do not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// Stored punches, filtered, newest first, as JSON pages or CSV (`GET /api/attendance`).
#[utoipa::path(
    get,
    path = "/api/attendance",
    operation_id = "listAttendance",
    tag = "attendance",
    security(("bearer" = []), ("session" = [])),
    params(AttendanceQuery),
    responses(
        (status = 200, description = "Punches, newest first (any role). JSON: one page, `nextCursor` `null` on the \
            last; CSV (`format=csv`): a file with the same columns, the next page's cursor in `X-Next-Cursor`.",
            headers(("X-Next-Cursor" = String, description = "CSV only, when more rows may follow")),
            content(
                (List<AttendanceItem> = "application/json"),
                (String = "text/csv; charset=utf-8"),
            )),
        (status = 400, description = "A parameter out of its rules, an unknown parameter, or a cursor this server \
            did not issue", body = ErrorBody),
        (status = 401, description = openapi::UNAUTHORIZED, body = ErrorBody),
        (status = 503, description = openapi::UNAVAILABLE, body = ErrorBody),
    )
)]
pub async fn list(
    State(state): State<AppState>,
    _caller: Caller,
    ApiQuery(q): ApiQuery<AttendanceQuery>,
) -> Result<Response, ApiError> {
    let csv = match q.format.as_deref() {
        None | Some("json") => false,
        Some("csv") => true,
        Some(_) => return Err(ApiError::bad_request("format must be json or csv")),
    };
    let device_id = q.device_id.as_deref().map(|d| validate::uuid("deviceId", d)).transpose()?;
    if let Some(u) = &q.user_id
        && (u.is_empty() || u.len() > 64)
    {
        return Err(ApiError::bad_request("userId must be 1 to 64 characters"));
    }
    let max = if csv { MAX_CSV } else { MAX_PAGE };
    let limit = q.limit.unwrap_or(if csv { MAX_CSV } else { 100 });
    if limit == 0 || limit > max {
        return Err(ApiError::bad_request(format!("limit must be 1 to {max}")));
    }
    let filter = AttendanceFilter {
        device_id,
        user_id: q.user_id.clone(),
        from: q.from.as_deref().map(|s| instant("from", s)).transpose()?,
        to: q.to.as_deref().map(|s| instant("to", s)).transpose()?,
        limit,
        after: q.cursor.as_deref().map(decode_cursor).transpose()?,
    };
    let page = state.store.list_attendance(&filter).await?;
    let next = page.next.as_ref().map(encode_cursor);
    if csv {
        let mut out = String::from("deviceId,userId,uid,localTime,punchedAt,status,punch,verify,flags,rawTime\n");
        for r in &page.rows {
            let local_time = r.local_time.strftime("%Y-%m-%dT%H:%M:%S").to_string();
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{},{}\n",
                r.device_id,
                csv_field(&r.user_id),
                r.uid,
                local_time,
                r.punched_at,
                r.status,
                r.punch,
                verify_label(r.status),
                r.flags,
                raw_time(r.flags, &local_time).map(|v| v.to_string()).unwrap_or_default()
            ));
        }
        let mut resp = (
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (header::CONTENT_DISPOSITION, "attachment; filename=\"attendance.csv\""),
            ],
            out,
        )
            .into_response();
        if let Some(n) = next.and_then(|n| n.parse().ok()) {
            resp.headers_mut().insert("x-next-cursor", n);
        }
        return Ok(resp);
    }
    let items = page.rows.iter().map(item).collect();
    Ok(Json(List { items, next_cursor: next }).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_fields_are_quoted_and_defused() {
        assert_eq!(csv_field("1001"), "1001");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=cmd|' /C calc'!A0"), "'=cmd|' /C calc'!A0");
    }

    #[test]
    fn raw_time_only_for_flagged_placeholders() {
        let placeholder = essl_wire::invalid_time_placeholder(583_804_800);
        assert_eq!(raw_time(FLAG_INVALID_TIME, &placeholder), Some(583_804_800));
        assert_eq!(raw_time(FLAG_INVALID_TIME | 16, &placeholder), Some(583_804_800));
        assert_eq!(raw_time(0, &placeholder), None);
        assert_eq!(raw_time(FLAG_INVALID_TIME, "2025-11-24T09:01:02"), None);
    }

    #[test]
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor { punched_at: Timestamp::from_millisecond(1_700_000_000_123).expect("valid"), id: 42 };
        assert_eq!(decode_cursor(&encode_cursor(&c)).expect("round trip"), c);
        for bad in ["", "x", "1.", ".1", "1.2.3", "99999999999999999999.1"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
