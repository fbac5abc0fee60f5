//! The plain data the store reads and writes. Both backends map their rows onto these types, so the rest of the
//! server never sees a database type. Times are [`Timestamp`]s at millisecond precision (what both schemas keep);
//! a terminal's own wall clock is a [`civil::DateTime`] at second precision.

use std::fmt;
use std::str::FromStr;

use jiff::{Timestamp, civil};
use uuid::Uuid;

/// A place with one LAN: its agents may reach its devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Site {
    pub id: Uuid,
    pub name: String,
    pub created_at: Timestamp,
}

/// How a terminal talks to us: polled by an agent on port 4370, or pushing over HTTP (ADMS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    Pull,
    Push,
}

/// A terminal (`essl_devices`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    pub id: Uuid,
    pub name: String,
    pub kind: DeviceKind,
    /// Empty when unknown (a push terminal).
    pub ip_address: String,
    pub port: u16,
    pub comm_key: u32,
    pub udp: bool,
    pub serial_number: Option<String>,
    /// IANA time zone of the terminal's wall clock.
    pub timezone: String,
    pub site_id: Option<Uuid>,
    pub active: bool,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
}

/// What `create_device` needs; the store picks the id and the times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewDevice {
    pub name: String,
    pub kind: DeviceKind,
    pub ip_address: String,
    pub port: u16,
    pub comm_key: u32,
    pub udp: bool,
    pub serial_number: Option<String>,
    pub timezone: String,
    pub site_id: Option<Uuid>,
    pub active: bool,
}

/// A partial update: `None` leaves a field as it is; `Some(None)` clears a nullable one.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DevicePatch {
    pub name: Option<String>,
    pub ip_address: Option<String>,
    pub port: Option<u16>,
    pub comm_key: Option<u32>,
    pub udp: Option<bool>,
    pub serial_number: Option<Option<String>>,
    pub timezone: Option<String>,
    pub site_id: Option<Option<Uuid>>,
    pub active: Option<bool>,
}

/// What an API token may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    Admin,
    Staff,
}

/// The secret side of an agent or API token, for authentication only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credential {
    pub id: Uuid,
    /// SHA-256 of the secret (32 bytes).
    pub secret_hash: Vec<u8>,
    pub revoked: bool,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credential")
            .field("id", &self.id)
            .field("secret_hash", &"***")
            .field("revoked", &self.revoked)
            .finish()
    }
}

/// An agent on a site's LAN (`essl_agents`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    pub id: Uuid,
    pub name: String,
    pub site_id: Uuid,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
    pub last_seen: Option<Timestamp>,
    pub version: Option<String>,
    pub hostname: Option<String>,
}

/// A bearer token for the HTTP API (`essl_api_tokens`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: Uuid,
    pub name: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub revoked_at: Option<Timestamp>,
}

/// A person who logs in to the dashboard (`essl_users`); the user name is stored lowercase.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub id: Uuid,
    pub username: String,
    pub role: Role,
    pub created_at: Timestamp,
    pub disabled_at: Option<Timestamp>,
}

/// A dashboard session (`essl_sessions`), with its user. The cookie holds the id and a secret; only the secret's
/// SHA-256 is stored.
#[derive(Clone, PartialEq, Eq)]
pub struct Session {
    pub id: Uuid,
    pub user: User,
    pub secret_hash: Vec<u8>,
    /// Sent back by the page in `X-CSRF-Token` with every state-changing request.
    pub csrf_token: String,
    pub created_at: Timestamp,
    pub expires_at: Timestamp,
}

impl fmt::Debug for Session {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .field("user", &self.user.username)
            .field("expires_at", &self.expires_at)
            .finish_non_exhaustive()
    }
}

/// A session to store.
#[derive(Clone, PartialEq, Eq)]
pub struct NewSession {
    pub id: Uuid,
    pub user_id: Uuid,
    pub secret_hash: Vec<u8>,
    pub csrf_token: String,
    pub expires_at: Timestamp,
}

/// One punch as read from a terminal. `local_time` is the terminal's wall clock (whole seconds, year 1..=9999);
/// `punched_at` the instant it denotes in the device's time zone.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewPunch {
    /// The user's PIN on the terminal; at most 64 characters (a CHECK in both schemas).
    pub user_id: String,
    pub uid: i32,
    pub local_time: civil::DateTime,
    pub punched_at: Timestamp,
    pub status: i16,
    pub punch: i16,
    pub flags: i32,
}

/// A stored punch (`essl_attendance`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttendanceRow {
    pub id: i64,
    pub device_id: Uuid,
    pub user_id: String,
    pub uid: i32,
    pub local_time: civil::DateTime,
    pub punched_at: Timestamp,
    pub status: i16,
    pub punch: i16,
    pub flags: i32,
    pub inserted_at: Timestamp,
}

/// Which punches to list. Rows come newest first (`punched_at DESC, id DESC`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AttendanceFilter {
    pub device_id: Option<Uuid>,
    pub user_id: Option<String>,
    /// Inclusive.
    pub from: Option<Timestamp>,
    /// Exclusive.
    pub to: Option<Timestamp>,
    pub limit: u32,
    /// Only rows strictly after this one in the listing order.
    pub after: Option<Cursor>,
}

/// A position in the attendance listing: the last row of the previous page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cursor {
    pub punched_at: Timestamp,
    pub id: i64,
}

/// One page of punches; `next` is `Some` when the page was full (more rows may follow).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttendancePage {
    pub rows: Vec<AttendanceRow>,
    pub next: Option<Cursor>,
}

/// A user enrolled on a terminal (`essl_device_users`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUserRow {
    pub device_id: Uuid,
    pub uid: i32,
    /// At most 64 characters (a CHECK in both schemas).
    pub user_id: String,
    pub name: String,
    pub privilege: i16,
    pub card: i64,
    pub group_id: String,
}

/// The seed's `sync_status` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SyncStatus {
    Success,
    Failed,
    InProgress,
}

/// Why a sync failed: the terminal could not be reached, or anything else (the seed tells these apart).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    Connection,
    Other,
}

/// One sync attempt (`essl_sync_status`). `last_sync_time` is when the attempt was recorded (its start);
/// it ended `sync_duration_ms` later.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncAttempt {
    pub id: Uuid,
    pub device_id: Uuid,
    pub last_sync_time: Timestamp,
    pub sync_status: SyncStatus,
    pub records_synced: i32,
    pub records_total: Option<i32>,
    pub error_message: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub synced_by_user_id: Option<Uuid>,
    pub sync_duration_ms: Option<i32>,
    pub agent_id: Option<Uuid>,
}

/// How a sync attempt ended, for [`crate::store::Store::finish_sync_by`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncEnd {
    pub status: SyncStatus,
    pub records_synced: i32,
    pub records_total: Option<i32>,
    pub error_message: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub duration_ms: Option<i32>,
}

/// A sync attempt to record; the store picks the id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewSyncAttempt {
    pub device_id: Uuid,
    pub last_sync_time: Timestamp,
    pub sync_status: SyncStatus,
    pub records_synced: i32,
    pub records_total: Option<i32>,
    pub error_message: Option<String>,
    pub error_kind: Option<ErrorKind>,
    pub synced_by_user_id: Option<Uuid>,
    pub sync_duration_ms: Option<i32>,
    pub agent_id: Option<Uuid>,
}

/// A line of the per-device sync log (`device_sync_logs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncLogEntry {
    pub id: i64,
    pub device_id: Uuid,
    pub sync_id: Option<Uuid>,
    pub at: Timestamp,
    pub level: String,
    pub message: String,
}

/// Per device: its latest attempt, its latest successful attempt and how many punches are stored for it
/// (what the seed's sync-status and cached-data answers need).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSyncSummary {
    pub device_id: Uuid,
    pub device_name: String,
    pub ip_address: String,
    pub last_sync_time: Option<Timestamp>,
    pub sync_status: Option<SyncStatus>,
    pub records_synced: Option<i32>,
    pub error_message: Option<String>,
    pub last_success_time: Option<Timestamp>,
    pub last_success_records: Option<i32>,
    pub attendance_count: i64,
}

/// The text form of an enum column did not name a variant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {value:?}")]
pub struct UnknownVariant {
    pub what: &'static str,
    pub value: String,
}

/// Enums stored as text: one table gives both directions.
macro_rules! text_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// The text stored in the database (and used in JSON).
            pub fn as_str(self) -> &'static str {
                match self { $($ty::$variant => $text),+ }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownVariant;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => Err(UnknownVariant { what: $what, value: s.to_owned() }),
                }
            }
        }
    };
}

text_enum!(DeviceKind, "device kind", { Pull => "pull", Push => "push" });
text_enum!(Role, "role", { Admin => "admin", Staff => "staff" });
text_enum!(SyncStatus, "sync status", { Success => "success", Failed => "failed", InProgress => "in_progress" });
text_enum!(ErrorKind, "error kind", { Connection => "connection", Other => "other" });

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enums_round_trip_through_text() {
        for s in [SyncStatus::Success, SyncStatus::Failed, SyncStatus::InProgress] {
            assert_eq!(s.as_str().parse::<SyncStatus>(), Ok(s));
        }
        for k in [DeviceKind::Pull, DeviceKind::Push] {
            assert_eq!(k.to_string().parse::<DeviceKind>(), Ok(k));
        }
        assert_eq!("in_progress".parse::<SyncStatus>(), Ok(SyncStatus::InProgress));
        assert!("IN_PROGRESS".parse::<SyncStatus>().is_err());
        assert!("root".parse::<Role>().is_err());
    }

    #[test]
    fn credential_debug_hides_the_hash() {
        let c = Credential { id: Uuid::nil(), secret_hash: vec![7; 32], revoked: false };
        assert!(!format!("{c:?}").contains('7'));
    }
}
