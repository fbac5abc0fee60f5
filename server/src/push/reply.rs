//! What terminals expect back: `text/plain`, a fixed `Content-Length`, LF line ends, exact keywords. hyper adds
//! the `Date` header, which terminals set their clocks from (with the handshake's `TimeZone`).

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::store::{PushCommand, PushTerminal};

/// A plain-text answer.
pub fn text(status: StatusCode, body: impl Into<String>) -> Response {
    let mut r = (status, body.into()).into_response();
    r.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"));
    r
}

pub fn ok() -> Response {
    text(StatusCode::OK, "OK")
}

/// `OK:<n>`: the lines accepted (stored, duplicates and unreadable lines included: they are journaled, and an
/// error would make the terminal send the same batch for ever).
pub fn ok_n(n: usize) -> Response {
    text(StatusCode::OK, format!("OK:{n}"))
}

/// The handshake's `TimeZone`: whole hours when the offset is a whole number of hours within (-12, 12), minutes
/// otherwise (India is 330). Never fractional. DST-correct: the offset in force at `now`.
pub fn timezone_value(tz: &TimeZone, now: Timestamp) -> i32 {
    let secs = tz.to_offset(now).seconds();
    if secs % 3600 == 0 && (secs / 3600).abs() < 12 { secs / 3600 } else { secs / 60 }
}

/// Settings of the attendance handshake.
#[derive(Debug, Clone)]
pub struct Options {
    pub error_delay_secs: u64,
    pub delay_secs: u64,
    pub trans_interval_min: u32,
    pub realtime: bool,
}

fn stamp(s: Option<&str>) -> &str {
    match s {
        Some(s) if !s.trim().is_empty() => s,
        _ => "None",
    }
}

/// The attendance (2.x) handshake answer. The first line is exactly `GET OPTION FROM: <serial>`; a terminal that
/// sent no `pushver` (pre-2.2.14 firmware) also gets the legacy stamp names.
pub fn options_2x(serial: &str, terminal: Option<&PushTerminal>, legacy: bool, tz_value: i32, o: &Options) -> String {
    let att = stamp(terminal.and_then(|t| t.attlog_stamp.as_deref()));
    let op = stamp(terminal.and_then(|t| t.operlog_stamp.as_deref()));
    let mut lines = vec![
        format!("GET OPTION FROM: {serial}"),
        format!("ATTLOGStamp={att}"),
        format!("OPERLOGStamp={op}"),
        "ATTPHOTOStamp=None".to_owned(),
    ];
    if legacy {
        lines.push(format!("Stamp={att}"));
        lines.push(format!("OpStamp={op}"));
        lines.push("PhotoStamp=None".to_owned());
    }
    lines.extend([
        format!("ErrorDelay={}", o.error_delay_secs),
        format!("Delay={}", o.delay_secs),
        "TransTimes=00:00;14:05".to_owned(),
        format!("TransInterval={}", o.trans_interval_min),
        "TransFlag=TransData AttLog\tOpLog\tEnrollUser\tChgUser".to_owned(),
        format!("TimeZone={tz_value}"),
        format!("Realtime={}", u8::from(o.realtime)),
        "Encrypt=None".to_owned(),
        "ServerVer=2.4.1".to_owned(),
        "PushProtVer=2.4.1".to_owned(),
        "PushOptionsFlag=1".to_owned(),
        "PushOptions=UserCount,TransactionCount,FPCount,FaceCount,FWVersion,IPAddress".to_owned(),
    ]);
    let mut body = lines.join("\n");
    body.push('\n');
    body
}

/// The security (3.x) configuration block of a registered terminal (handshake of a registered terminal, and
/// `/iclock/push`).
pub fn options_3x(registry_code: &str, session: &str, tz_value: i32, o: &Options) -> String {
    let lines = [
        "registry=ok".to_owned(),
        format!("RegistryCode={registry_code}"),
        "ServerVersion=3.1.2".to_owned(),
        "ServerName=essl-relay".to_owned(),
        "PushProtVer=3.1.2".to_owned(),
        format!("ErrorDelay={}", o.error_delay_secs),
        format!("RequestDelay={}", o.delay_secs),
        "TransTimes=00:00;14:00".to_owned(),
        format!("TransInterval={}", o.trans_interval_min),
        "TransTables=User Transaction".to_owned(),
        format!("Realtime={}", u8::from(o.realtime)),
        format!("SessionID={session}"),
        "TimeoutSec=10".to_owned(),
        format!("TimeZone={tz_value}"),
    ];
    let mut body = lines.join("\n");
    body.push('\n');
    body
}

/// Queued commands as a poll answer: `C:<id>:<command>` per line; `OK` when there are none.
pub fn commands(list: &[PushCommand]) -> Response {
    if list.is_empty() {
        return ok();
    }
    let mut body = String::new();
    for c in list {
        body.push_str(&format!("C:{}:{}\n", c.id, c.command));
    }
    text(StatusCode::OK, body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timezone_values_follow_the_rule() {
        let at = |tz: &str, when: &str| {
            let tz = jiff::tz::db().get(tz).expect("zone");
            timezone_value(&tz, when.parse().expect("instant"))
        };
        assert_eq!(at("Asia/Kolkata", "2026-01-15T00:00:00Z"), 330);
        assert_eq!(at("Asia/Kathmandu", "2026-01-15T00:00:00Z"), 345);
        assert_eq!(at("Asia/Shanghai", "2026-01-15T00:00:00Z"), 8);
        assert_eq!(at("America/New_York", "2026-01-15T00:00:00Z"), -5);
        assert_eq!(at("America/New_York", "2026-07-15T00:00:00Z"), -4);
        assert_eq!(at("Europe/London", "2026-07-15T00:00:00Z"), 1);
        assert_eq!(at("UTC", "2026-07-15T00:00:00Z"), 0);
        assert_eq!(at("Pacific/Auckland", "2026-01-15T00:00:00Z"), 780);
        assert_eq!(at("America/St_Johns", "2026-01-15T00:00:00Z"), -210);
    }

    #[test]
    fn handshake_first_line_and_keys() {
        let o = Options { error_delay_secs: 30, delay_secs: 10, trans_interval_min: 1, realtime: true };
        let body = options_2x("ABC123", None, false, 330, &o);
        assert!(body.starts_with("GET OPTION FROM: ABC123\nATTLOGStamp=None\n"), "{body}");
        assert!(body.contains("\nTimeZone=330\n") && body.contains("\nServerVer=2.4.1\n"));
        assert!(body.contains("TransFlag=TransData AttLog\tOpLog"));
        assert!(!body.contains("\nStamp="));
        assert!(options_2x("A", None, true, 0, &o).contains("\nStamp=None\nOpStamp=None\n"));
        assert!(!body.contains('\r'));
    }
}
