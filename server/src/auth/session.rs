//! Dashboard sessions: the cookie, its lifetime, and the CSRF rules.
//!
//! The cookie `essl_session` holds `esslc_<id>_<secret>` (the token shape of [`super::token`]); the database keeps
//! the secret's SHA-256. It is `HttpOnly` (scripts cannot read it), `SameSite=Strict` (other sites' pages do not
//! send it) and `Secure` over HTTPS. On top, every state-changing request made with the cookie must carry the
//! session's CSRF token in `X-CSRF-Token`, which only our own page can read (from `GET /api/session`), and an
//! `Origin`, when the browser sends one, must be this server.

use std::time::Duration;

use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, header};
use subtle::ConstantTimeEq;

/// The cookie's name.
pub const COOKIE: &str = "essl_session";
/// Prefix of the cookie's value.
pub const PREFIX: &str = "esslc";
/// The header that carries the CSRF token.
pub const CSRF_HEADER: &str = "x-csrf-token";
/// How long a session lasts from its login: a working day plus margin, then log in again.
pub const LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// The session cookie's value, if the request has one.
pub fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_owned())
        .filter(|v| !v.is_empty())
}

/// `Set-Cookie` for a new session.
pub fn set_cookie(value: &str, secure: bool) -> Option<HeaderValue> {
    let secure = if secure { "; Secure" } else { "" };
    HeaderValue::from_str(&format!(
        "{COOKIE}={value}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        LIFETIME.as_secs()
    ))
    .ok()
}

/// `Set-Cookie` that removes the cookie.
pub fn clear_cookie(secure: bool) -> HeaderValue {
    let value = if secure {
        "essl_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0; Secure"
    } else {
        "essl_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0"
    };
    HeaderValue::from_static(value)
}

/// Whether the request came over HTTPS (directly, or through a proxy that says so).
pub fn is_https(parts: &Parts, served_over_tls: bool) -> bool {
    served_over_tls
        || parts
            .headers
            .get("x-forwarded-proto")
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim().eq_ignore_ascii_case("https"))
}

/// Why a cookie-authenticated request is refused as a possible forgery.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CsrfError {
    #[error("the request comes from another site")]
    ForeignOrigin,
    #[error("the X-CSRF-Token header is missing or wrong")]
    BadToken,
}

/// The `Origin` check: a browser sends `Origin` with cross-site and with most same-site unsafe requests; when
/// present, its host must be the one the request was sent to. (`Sec-Fetch-Site: cross-site` is refused too.)
pub fn check_origin(headers: &HeaderMap) -> Result<(), CsrfError> {
    if headers.get("sec-fetch-site").and_then(|v| v.to_str().ok()) == Some("cross-site") {
        return Err(CsrfError::ForeignOrigin);
    }
    let Some(origin) = headers.get(header::ORIGIN) else { return Ok(()) };
    let host = headers.get(header::HOST).and_then(|v| v.to_str().ok());
    let forwarded_host = headers.get("x-forwarded-host").and_then(|v| v.to_str().ok());
    let origin_host = origin.to_str().ok().and_then(|o| o.split_once("://")).map(|(_, h)| h.trim_end_matches('/'));
    match origin_host {
        Some(h) if Some(h) == host || Some(h) == forwarded_host => Ok(()),
        _ => Err(CsrfError::ForeignOrigin),
    }
}

/// The full check for a state-changing request made with the session cookie.
pub fn check_csrf(headers: &HeaderMap, expected: &str) -> Result<(), CsrfError> {
    check_origin(headers)?;
    let presented = headers.get(CSRF_HEADER).map(HeaderValue::as_bytes).unwrap_or_default();
    if presented.is_empty() || !bool::from(presented.ct_eq(expected.as_bytes())) {
        return Err(CsrfError::BadToken);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn finds_the_cookie_among_others() {
        let h = headers(&[("cookie", "a=1; essl_session=esslc_x_y ; b=2")]);
        assert_eq!(cookie(&h).as_deref(), Some("esslc_x_y"));
        assert_eq!(cookie(&headers(&[("cookie", "a=1"), ("cookie", "essl_session=v")])).as_deref(), Some("v"));
        assert_eq!(cookie(&headers(&[("cookie", "xessl_session=v; essl_session=")])), None);
    }

    #[test]
    fn csrf_needs_the_token_and_a_matching_origin() {
        let ok = headers(&[("host", "relay:8080"), ("origin", "https://relay:8080"), ("x-csrf-token", "t0k")]);
        assert_eq!(check_csrf(&ok, "t0k"), Ok(()));
        assert_eq!(check_csrf(&ok, "t0K"), Err(CsrfError::BadToken));
        let no_token = headers(&[("host", "relay:8080")]);
        assert_eq!(check_csrf(&no_token, "t0k"), Err(CsrfError::BadToken));
        let foreign = headers(&[("host", "relay:8080"), ("origin", "https://evil.example"), ("x-csrf-token", "t0k")]);
        assert_eq!(check_csrf(&foreign, "t0k"), Err(CsrfError::ForeignOrigin));
        let null = headers(&[("host", "relay:8080"), ("origin", "null"), ("x-csrf-token", "t0k")]);
        assert_eq!(check_csrf(&null, "t0k"), Err(CsrfError::ForeignOrigin));
        let cross = headers(&[("host", "relay:8080"), ("sec-fetch-site", "cross-site"), ("x-csrf-token", "t0k")]);
        assert_eq!(check_csrf(&cross, "t0k"), Err(CsrfError::ForeignOrigin));
    }
}
