//! Input checks shared by the handlers: every field from outside is bounded and well-formed before it is stored.

use serde::{Deserialize, Deserializer};
use uuid::Uuid;

use super::error::ApiError;
use crate::store::model::DeviceKind;

/// Distinguishes an absent field (`None`) from an explicit `null` (`Some(None)`).
pub fn double_option<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

pub fn uuid(what: &str, s: &str) -> Result<Uuid, ApiError> {
    Uuid::try_parse(s).map_err(|_| ApiError::bad_request(format!("{what} must be a UUID")))
}

/// Names: 1..=100 characters, no control characters.
pub fn name(what: &str, s: &str) -> Result<(), ApiError> {
    let n = s.chars().count();
    if n == 0 || n > 100 || s.trim().is_empty() {
        return Err(ApiError::invalid(format!("{what} must be 1 to 100 characters")));
    }
    if s.chars().any(char::is_control) {
        return Err(ApiError::invalid(format!("{what} must not contain control characters")));
    }
    Ok(())
}

/// An IP address or a DNS name.
pub fn host(s: &str) -> Result<(), ApiError> {
    let ok = !s.is_empty()
        && s.len() <= 253
        && (s.parse::<std::net::IpAddr>().is_ok()
            || s.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    && !label.starts_with('-')
            }));
    if ok { Ok(()) } else { Err(ApiError::invalid("ipAddress must be an IP address or a host name")) }
}

pub fn port(p: u32) -> Result<u16, ApiError> {
    u16::try_from(p).ok().filter(|p| *p > 0).ok_or_else(|| ApiError::invalid("port must be 1 to 65535"))
}

/// Terminals accept comm keys up to 999999.
pub fn comm_key(k: u32) -> Result<u32, ApiError> {
    if k <= 999_999 { Ok(k) } else { Err(ApiError::invalid("commKey must be 0 to 999999")) }
}

/// `"tcp"` (default) or `"udp"`; returns whether UDP.
pub fn transport(t: Option<&str>) -> Result<bool, ApiError> {
    match t {
        None | Some("tcp") => Ok(false),
        Some("udp") => Ok(true),
        Some(_) => Err(ApiError::invalid("transport must be \"tcp\" or \"udp\"")),
    }
}

pub fn kind(k: Option<&str>) -> Result<DeviceKind, ApiError> {
    match k {
        None | Some("pull") => Ok(DeviceKind::Pull),
        Some("push") => Ok(DeviceKind::Push),
        Some(_) => Err(ApiError::invalid("kind must be \"pull\" or \"push\"")),
    }
}

/// Serial numbers: 1..=64 printable ASCII characters.
pub fn serial(s: &str) -> Result<(), ApiError> {
    if !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(ApiError::invalid("serialNumber must be 1 to 64 printable ASCII characters"))
    }
}

/// An IANA time zone known to the bundled database.
pub fn timezone(tz: &str) -> Result<(), ApiError> {
    if tz.len() <= 64 && crate::ingest::zone(tz).is_some() {
        Ok(())
    } else {
        Err(ApiError::invalid(format!("timezone {tz:?} is not an IANA time zone (e.g. Asia/Kolkata)")))
    }
}
