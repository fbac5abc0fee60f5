//! The fixture format: what a terminal holds, as JSON. Timestamps are the terminal's local wall-clock time.
//!
//! ```json
//! {"device":{"serial_number":"..","device_name":"..","platform":"..","firmware":"..","mac":".."},
//!  "users":[{"uid":1,"user_id":"1001","name":"..","privilege":0,"password":"","card":0,"group_id":"1"}],
//!  "attendance":[{"uid":1,"user_id":"1001","timestamp":"2025-11-24T09:01:02","status":1,"punch":0}]}
//! ```
//!
//! A corrupt record (a time field that is no date, as terminals sometimes hold) is written with `raw_time`, the
//! packed u32 as the terminal stores it, instead of `timestamp`:
//! `{"uid":1,"user_id":"1001","raw_time":583804800,"status":1,"punch":0}` (31 February 2018).

use essl_zk::attendance::{AttendanceRecord, RecordTime};
use essl_zk::user::User;
use jiff::civil::DateTime;
use serde::{Deserialize, Serialize};

/// A whole terminal's data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Fixture {
    pub device: DeviceFixture,
    #[serde(default)]
    pub users: Vec<UserFixture>,
    #[serde(default)]
    pub attendance: Vec<PunchFixture>,
}

/// Identity of the terminal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeviceFixture {
    pub serial_number: String,
    pub device_name: String,
    pub platform: String,
    pub firmware: String,
    pub mac: String,
}

/// One user, field for field as pyzk reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserFixture {
    pub uid: u16,
    pub user_id: String,
    pub name: String,
    pub privilege: u8,
    pub password: String,
    pub card: u32,
    pub group_id: String,
}

/// One punch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PunchFixture {
    pub uid: u16,
    pub user_id: String,
    /// `YYYY-MM-DDTHH:MM:SS`, no offset; empty when `raw_time` is given.
    #[serde(default)]
    pub timestamp: String,
    /// The packed time field exactly as the terminal stores it (zk-protocol.md §9.1), used instead of
    /// `timestamp`: for records whose time is no date (corrupt flash, firmware bugs). Tests hold such records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raw_time: Option<u32>,
    pub status: u8,
    pub punch: u8,
}

/// A fixture that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("fixture is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error(
        "attendance[{index}]: bad timestamp {value:?} (want YYYY-MM-DDTHH:MM:SS between 2000 and 2099, or a raw_time)"
    )]
    Timestamp { index: usize, value: String },
    #[error("users[{index}]: {what}")]
    User { index: usize, what: String },
}

/// Formats a wall-clock time the way fixtures write it.
pub fn format_time(t: DateTime) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%S").to_string()
}

/// Parses a fixture timestamp (no offset, no fraction); must be storable by a terminal.
pub fn parse_time(s: &str) -> Option<DateTime> {
    let t = DateTime::strptime("%Y-%m-%dT%H:%M:%S", s).ok()?;
    essl_zk::time::encode_packed(t).ok()?;
    Some(t)
}

impl Fixture {
    /// Parses and validates a fixture.
    pub fn from_json(text: &str) -> Result<Fixture, FixtureError> {
        let f: Fixture = serde_json::from_str(text)?;
        f.records()?;
        f.protocol_users()?;
        Ok(f)
    }

    /// Pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Attendance as protocol records.
    pub fn records(&self) -> Result<Vec<AttendanceRecord>, FixtureError> {
        self.attendance
            .iter()
            .enumerate()
            .map(|(index, p)| {
                let timestamp = match p.raw_time {
                    Some(raw) => RecordTime::from_packed(raw),
                    None => parse_time(&p.timestamp)
                        .map(RecordTime::Valid)
                        .ok_or_else(|| FixtureError::Timestamp { index, value: p.timestamp.clone() })?,
                };
                Ok(AttendanceRecord {
                    uid: p.uid,
                    user_id: p.user_id.clone(),
                    timestamp,
                    status: p.status,
                    punch: p.punch,
                })
            })
            .collect()
    }

    /// Users as protocol records; text must fit the 72-byte layout's fields.
    pub fn protocol_users(&self) -> Result<Vec<User>, FixtureError> {
        self.users
            .iter()
            .enumerate()
            .map(|(index, u)| {
                let too_long = |field: &str, value: &str, max: usize| {
                    (value.len() > max || value.contains('\0')).then(|| FixtureError::User {
                        index,
                        what: format!("{field} {value:?} must be at most {max} bytes without NUL"),
                    })
                };
                if let Some(e) = too_long("name", &u.name, 23)
                    .or_else(|| too_long("user_id", &u.user_id, 23))
                    .or_else(|| too_long("password", &u.password, 7))
                    .or_else(|| too_long("group_id", &u.group_id, 7))
                {
                    return Err(e);
                }
                Ok(User {
                    uid: u.uid,
                    privilege: u.privilege,
                    password: u.password.clone(),
                    name: u.name.clone(),
                    card: u.card,
                    group_id: u.group_id.clone(),
                    user_id: u.user_id.clone(),
                })
            })
            .collect()
    }
}

impl From<&User> for UserFixture {
    fn from(u: &User) -> Self {
        UserFixture {
            uid: u.uid,
            user_id: u.user_id.clone(),
            name: u.name.clone(),
            privilege: u.privilege,
            password: u.password.clone(),
            card: u.card,
            group_id: u.group_id.clone(),
        }
    }
}

impl From<&AttendanceRecord> for PunchFixture {
    fn from(r: &AttendanceRecord) -> Self {
        let (timestamp, raw_time) = match r.timestamp {
            RecordTime::Valid(t) => (format_time(t), None),
            RecordTime::Invalid(raw) => (String::new(), Some(raw)),
        };
        PunchFixture { uid: r.uid, user_id: r.user_id.clone(), timestamp, raw_time, status: r.status, punch: r.punch }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_corrupt_record_is_held_by_its_raw_time() {
        let json = r#"{"device":{"serial_number":"S","device_name":"D","platform":"P","firmware":"F","mac":"M"},
            "attendance":[{"uid":1,"user_id":"1","timestamp":"2025-11-24T09:01:02","status":1,"punch":0},
                          {"uid":2,"user_id":"2","raw_time":583804800,"status":1,"punch":1}]}"#;
        let f = Fixture::from_json(json).expect("valid fixture");
        let records = f.records().expect("records");
        assert_eq!(records[1].timestamp, RecordTime::Invalid(583_804_800));
        let back: Vec<PunchFixture> = records.iter().map(PunchFixture::from).collect();
        assert_eq!(back, f.attendance);
        assert_eq!(Fixture::from_json(&f.to_json()).expect("round trip"), f);
        let missing = json.replace(r#""raw_time":583804800,"#, "");
        assert!(matches!(Fixture::from_json(&missing), Err(FixtureError::Timestamp { index: 1, .. })));
    }
}
