//! What both backends share: the error type and its mapping from sqlx, input checks made before any SQL runs (so
//! both backends reject the same inputs the same way), and the time conversions.

use jiff::{Timestamp, civil};
use sqlx::error::DatabaseError;
use uuid::Uuid;

use super::model::{Device, DevicePatch, DeviceUserRow, ErrorKind, NewDevice, NewPunch, SyncStatus};

/// Why a store call failed. Callers branch on the first four; the last two are for logs.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The row the call names does not exist.
    #[error("not found")]
    NotFound,
    /// A unique key is already taken (a site name, a serial number, ...).
    #[error("conflict: {0}")]
    Conflict(String),
    /// The input breaks a rule of the schema or of the store (unknown time zone, NUL byte, unknown site, ...).
    #[error("invalid: {0}")]
    Invalid(String),
    /// The database cannot be reached or is overloaded; worth retrying later.
    #[error("database unavailable: {0}")]
    Unavailable(String),
    #[error("database error: {0}")]
    Db(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl From<sqlx::Error> for StoreError {
    fn from(e: sqlx::Error) -> Self {
        use sqlx::Error as E;
        match &e {
            E::RowNotFound => StoreError::NotFound,
            E::Io(_) | E::Tls(_) | E::PoolTimedOut | E::PoolClosed | E::WorkerCrashed => {
                StoreError::Unavailable(e.to_string())
            }
            E::Configuration(_) => StoreError::Invalid(e.to_string()),
            E::Database(db) => classify(db.as_ref()).unwrap_or(StoreError::Db(e)),
            _ => StoreError::Db(e),
        }
    }
}

/// Maps what a caller can act on; `None` keeps the raw error.
fn classify(db: &dyn DatabaseError) -> Option<StoreError> {
    if db.is_unique_violation() {
        let what = db.constraint().unwrap_or_else(|| db.message());
        return Some(StoreError::Conflict(format!("already exists ({what})")));
    }
    if db.is_foreign_key_violation()
        || db.is_check_violation()
        || matches!(db.kind(), sqlx::error::ErrorKind::NotNullViolation)
    {
        return Some(StoreError::Invalid(db.message().to_owned()));
    }
    let code = db.code()?;
    let code = code.as_ref();
    // PostgreSQL SQLSTATEs have five characters; SQLite's (extended) result codes are at most four digits.
    if code.len() == 5 {
        if code.starts_with("08") || code.starts_with("53") || code.starts_with("57P") {
            return Some(StoreError::Unavailable(db.message().to_owned()));
        }
        if code.starts_with("22") {
            return Some(StoreError::Invalid(db.message().to_owned()));
        }
        return None;
    }
    // SQLite: primary code = extended code & 0xff. BUSY, LOCKED, IOERR, FULL, CANTOPEN.
    let primary = code.parse::<u32>().ok()? & 0xff;
    matches!(primary, 5 | 6 | 10 | 13 | 14).then(|| StoreError::Unavailable(db.message().to_owned()))
}

/// Text must not hold NUL: PostgreSQL refuses it in `text`, SQLite would store it; refuse it in both.
pub(crate) fn text(field: &str, value: &str) -> Result<(), StoreError> {
    if value.contains('\0') {
        return Err(StoreError::Invalid(format!("{field} contains a NUL character")));
    }
    Ok(())
}

pub(crate) fn opt_text(field: &str, value: Option<&str>) -> Result<(), StoreError> {
    value.map_or(Ok(()), |v| text(field, v))
}

/// A name shown to people: not blank, no NUL.
pub(crate) fn name(field: &str, value: &str) -> Result<(), StoreError> {
    if value.trim().is_empty() {
        return Err(StoreError::Invalid(format!("{field} is empty")));
    }
    text(field, value)
}

pub(crate) fn timezone(value: &str) -> Result<(), StoreError> {
    text("timezone", value)?;
    jiff::tz::db().get(value).map(|_| ()).map_err(|_| StoreError::Invalid(format!("unknown time zone {value:?}")))
}

pub(crate) fn secret_hash(hash: &[u8]) -> Result<(), StoreError> {
    if hash.len() != 32 {
        return Err(StoreError::Invalid(format!("secret hash must be 32 bytes (SHA-256), got {}", hash.len())));
    }
    Ok(())
}

pub(crate) fn new_device(d: &NewDevice) -> Result<(), StoreError> {
    name("device name", &d.name)?;
    text("ip address", &d.ip_address)?;
    if let Some(serial) = &d.serial_number {
        if serial.is_empty() {
            return Err(StoreError::Invalid("serial number is empty (use none)".into()));
        }
        text("serial number", serial)?;
    }
    timezone(&d.timezone)
}

pub(crate) fn punches(punches: &[NewPunch]) -> Result<(), StoreError> {
    for p in punches {
        text("user id", &p.user_id)?;
        local_time(p.local_time)?;
    }
    Ok(())
}

pub(crate) fn device_users(device_id: uuid::Uuid, users: &[DeviceUserRow]) -> Result<(), StoreError> {
    for u in users {
        if u.device_id != device_id {
            return Err(StoreError::Invalid(format!(
                "user {} belongs to device {}, not {device_id}",
                u.uid, u.device_id
            )));
        }
        text("user id", &u.user_id)?;
        text("user name", &u.name)?;
        text("group id", &u.group_id)?;
    }
    Ok(())
}

/// The outcome `finish_sync` writes.
pub(crate) struct Finish<'a> {
    pub status: SyncStatus,
    pub records_synced: i32,
    pub records_total: Option<i32>,
    pub error_message: Option<&'a str>,
    pub error_kind: Option<ErrorKind>,
    pub duration_ms: Option<i32>,
    /// Kept as it was when `None`.
    pub agent_id: Option<Uuid>,
}

/// Conflicts of a device write are about its serial number; foreign keys about its site.
pub(crate) fn device_write_error(e: sqlx::Error, d: &NewDevice) -> StoreError {
    match unknown_ref(e, "site") {
        StoreError::Conflict(_) => StoreError::Conflict(format!(
            "serial number {:?} is used by another device",
            d.serial_number.as_deref().unwrap_or_default()
        )),
        other => other,
    }
}

/// The device as it would be after the patch, checked like a new one.
pub(crate) fn patched(d: &Device, p: &DevicePatch) -> Result<NewDevice, StoreError> {
    let new = NewDevice {
        name: p.name.clone().unwrap_or_else(|| d.name.clone()),
        kind: d.kind,
        ip_address: p.ip_address.clone().unwrap_or_else(|| d.ip_address.clone()),
        port: p.port.unwrap_or(d.port),
        comm_key: p.comm_key.unwrap_or(d.comm_key),
        udp: p.udp.unwrap_or(d.udp),
        serial_number: p.serial_number.clone().unwrap_or_else(|| d.serial_number.clone()),
        timezone: p.timezone.clone().unwrap_or_else(|| d.timezone.clone()),
        site_id: p.site_id.unwrap_or(d.site_id),
        active: p.active.unwrap_or(d.active),
    };
    new_device(&new)?;
    Ok(new)
}

/// A foreign key of the statement points nowhere: say which, instead of the database's generic message.
pub(crate) fn unknown_ref(e: sqlx::Error, what: &str) -> StoreError {
    match e.as_database_error() {
        Some(db) if db.is_foreign_key_violation() => StoreError::Invalid(format!("unknown {what}")),
        _ => e.into(),
    }
}

/// A terminal's wall clock: whole seconds (what terminals keep), years 1..=9999 (what both schemas hold alike).
pub(crate) fn local_time(dt: civil::DateTime) -> Result<(), StoreError> {
    if dt.subsec_nanosecond() != 0 {
        return Err(StoreError::Invalid(format!("local time {dt} has a fraction of a second")));
    }
    if !(1..=9999).contains(&dt.year()) {
        return Err(StoreError::Invalid(format!("local time {dt} is outside years 1..=9999")));
    }
    Ok(())
}

/// `YYYY-MM-DDTHH:MM:SS`, the stored form (SQLite) and the bound form (PostgreSQL casts it to `timestamp`).
pub(crate) fn local_to_text(dt: civil::DateTime) -> String {
    format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", dt.year(), dt.month(), dt.day(), dt.hour(), dt.minute(), dt.second())
}

pub(crate) fn text_to_local(s: &str) -> Result<civil::DateTime, StoreError> {
    s.parse().map_err(|e| decode(format!("stored local time {s:?}: {e}")))
}

pub(crate) fn ms_to_ts(ms: i64) -> Result<Timestamp, StoreError> {
    Timestamp::from_millisecond(ms).map_err(|e| decode(format!("stored time {ms} ms: {e}")))
}

pub(crate) fn opt_ms_to_ts(ms: Option<i64>) -> Result<Option<Timestamp>, StoreError> {
    ms.map(ms_to_ts).transpose()
}

/// Now, as the unix milliseconds the store writes.
pub(crate) fn now_ms() -> i64 {
    Timestamp::now().as_millisecond()
}

/// A stored value that does not fit its Rust type (the schema's CHECKs make this a bug, not bad input).
pub(crate) fn decode(msg: String) -> StoreError {
    StoreError::Db(sqlx::Error::Decode(msg.into()))
}

pub(crate) fn parse<T: std::str::FromStr>(s: &str) -> Result<T, StoreError>
where
    T::Err: std::fmt::Display,
{
    s.parse().map_err(|e: T::Err| decode(e.to_string()))
}

/// A dashboard user name: 1 to 64 characters of letters, digits and `._@-`, lowercased.
pub(crate) fn username(name: &str) -> Result<String, StoreError> {
    let name = name.trim();
    let ok = (1..=64).contains(&name.chars().count())
        && name.chars().all(|c| c.is_alphanumeric() || matches!(c, '.' | '_' | '@' | '-'));
    if !ok {
        return Err(StoreError::Invalid("a user name is 1 to 64 letters, digits or the characters . _ @ -".to_owned()));
    }
    Ok(name.to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_time_text_round_trips() {
        let dt = civil::date(2025, 3, 9).at(2, 30, 5, 0);
        let s = local_to_text(dt);
        assert_eq!(s, "2025-03-09T02:30:05");
        assert_eq!(text_to_local(&s).ok(), Some(dt));
        assert_eq!(local_to_text(civil::date(7, 1, 2).at(0, 0, 0, 0)), "0007-01-02T00:00:00");
    }

    #[test]
    fn local_time_rules() {
        assert!(local_time(civil::date(2025, 1, 1).at(0, 0, 0, 1)).is_err());
        assert!(local_time(civil::date(0, 1, 1).at(0, 0, 0, 0)).is_err());
        assert!(local_time(civil::date(9999, 12, 31).at(23, 59, 59, 0)).is_ok());
    }

    #[test]
    fn time_zones_are_checked() {
        assert!(timezone("Asia/Kolkata").is_ok());
        assert!(timezone("UTC").is_ok());
        assert!(timezone("Mars/Olympus").is_err());
        assert!(timezone("Asia/Kolkata\0").is_err());
    }
}
