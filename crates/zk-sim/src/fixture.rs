//! The fixture format: what a terminal holds, as JSON. Timestamps are the terminal's local wall-clock time.
//!
//! ```json
//! {"device":{"serial_number":"..","device_name":"..","platform":"..","firmware":"..","mac":".."},
//!  "users":[{"uid":1,"user_id":"1001","name":"..","privilege":0,"password":"","card":0,"group_id":"1"}],
//!  "attendance":[{"uid":1,"user_id":"1001","timestamp":"2025-11-24T09:01:02","status":1,"punch":0}]}
//! ```

use essl_zk::attendance::AttendanceRecord;
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
    /// `YYYY-MM-DDTHH:MM:SS`, no offset.
    pub timestamp: String,
    pub status: u8,
    pub punch: u8,
}

/// A fixture that does not make sense.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("fixture is not valid JSON of the expected shape: {0}")]
    Json(#[from] serde_json::Error),
    #[error("attendance[{index}]: bad timestamp {value:?} (want YYYY-MM-DDTHH:MM:SS between 2000 and 2099)")]
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
                Ok(AttendanceRecord {
                    uid: p.uid,
                    user_id: p.user_id.clone(),
                    timestamp: parse_time(&p.timestamp)
                        .ok_or_else(|| FixtureError::Timestamp { index, value: p.timestamp.clone() })?,
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
        PunchFixture {
            uid: r.uid,
            user_id: r.user_id.clone(),
            timestamp: format_time(r.timestamp),
            status: r.status,
            punch: r.punch,
        }
    }
}
