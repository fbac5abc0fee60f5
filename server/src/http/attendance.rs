//! `GET /api/attendance`: filtered, paginated (cursor), as JSON or CSV.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use serde::Deserialize;
use serde_json::{Value, json};

use super::error::ApiError;
use super::extract::{ApiQuery, Caller};
use super::validate;
use crate::app::AppState;
use crate::store::model::{AttendanceFilter, AttendanceRow, Cursor};

/// Query of `GET /api/attendance`.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AttendanceQuery {
    pub device_id: Option<String>,
    pub user_id: Option<String>,
    /// RFC 3339 instant, inclusive.
    pub from: Option<String>,
    /// RFC 3339 instant, exclusive.
    pub to: Option<String>,
    pub limit: Option<u32>,
    pub cursor: Option<String>,
    /// `json` (default) or `csv`.
    pub format: Option<String>,
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

fn row_json(r: &AttendanceRow) -> Value {
    json!({
        "deviceId": r.device_id,
        "userId": r.user_id,
        "uid": r.uid,
        "localTime": r.local_time.strftime("%Y-%m-%dT%H:%M:%S").to_string(),
        "punchedAt": r.punched_at.to_string(),
        "status": r.status,
        "punch": r.punch,
        "verify": verify_label(r.status),
        "flags": r.flags,
    })
}

/// A CSV field, quoted when needed; a leading `= + - @` is defused so spreadsheets do not run it as a formula.
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) { format!("'{s}") } else { s.to_owned() };
    if s.contains([',', '"', '\n', '\r']) { format!("\"{}\"", s.replace('"', "\"\"")) } else { s }
}

/// `GET /api/attendance`
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
        let mut out = String::from("deviceId,userId,uid,localTime,punchedAt,status,punch,verify,flags\n");
        for r in &page.rows {
            out.push_str(&format!(
                "{},{},{},{},{},{},{},{},{}\n",
                r.device_id,
                csv_field(&r.user_id),
                r.uid,
                r.local_time.strftime("%Y-%m-%dT%H:%M:%S"),
                r.punched_at,
                r.status,
                r.punch,
                verify_label(r.status),
                r.flags
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
    let items: Vec<Value> = page.rows.iter().map(row_json).collect();
    Ok(Json(json!({"items": items, "nextCursor": next})).into_response())
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
    fn cursors_round_trip_and_reject_garbage() {
        let c = Cursor { punched_at: Timestamp::from_millisecond(1_700_000_000_123).expect("valid"), id: 42 };
        assert_eq!(decode_cursor(&encode_cursor(&c)).expect("round trip"), c);
        for bad in ["", "x", "1.", ".1", "1.2.3", "99999999999999999999.1"] {
            assert!(decode_cursor(bad).is_err(), "{bad}");
        }
    }
}
