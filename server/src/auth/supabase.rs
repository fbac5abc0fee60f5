//! Supabase-issued JWTs, so the seed's users keep their logins.
//!
//! Supabase Auth signs access tokens with the project's legacy shared secret (HS256) or, in projects that moved to
//! its signing keys, with an asymmetric key (ES256 or RS256) published at `<url>/auth/v1/.well-known/jwks.json`.
//! Both are accepted when configured ([`SupabaseConfig`]):
//!
//! - the header's `alg` must be HS256, ES256 or RS256 (never `none`); HS256 is checked only with the configured
//!   secret and ES256/RS256 only with a JWKS public key of the matching type (EC P-256 / RSA) named by the token's
//!   `kid`, so a token cannot choose its own kind of key (no algorithm confusion). A header with `crit` is refused.
//! - the signature is checked before the claims are even parsed;
//! - `exp` (required) and `nbf` (if present) with [`LEEWAY`]; `iss` is `<url>/auth/v1` when the URL is configured;
//!   `aud` is (or contains) `authenticated`; `sub` is a UUID (the anon and service-role keys have none).
//!
//! The caller is `sub`, named by `email` (or `sub`), with the role of `app_metadata.essl_role` (`admin`; anything
//! else, or nothing, is staff). Only `app_metadata` counts: users can edit their own `user_metadata`.
//!
//! The JWKS is fetched on first use, cached, fetched again when a token names an unknown `kid` or the cache is older
//! than [`SupabaseConfig::jwks_max_age`], but never more often than [`SupabaseConfig::jwks_min_refresh`] (a flood of
//! made-up `kid`s costs one fetch), one fetch at a time, bounded in size ([`JWKS_MAX_BYTES`]) and time
//! ([`JWKS_TIMEOUT`]). When a fetch fails the keys already known stay in use.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::{hmac, signature};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use tokio_rustls::TlsConnector;
use uuid::Uuid;

use super::fetch;
use super::token::Secret;
use crate::http::extract::Caller;
use crate::store::model::Role;

/// Clock skew allowed on `exp` and `nbf`.
pub const LEEWAY: Duration = Duration::from_secs(30);
/// The audience of Supabase's user access tokens.
pub const AUDIENCE: &str = "authenticated";
/// The largest JWKS document accepted.
pub const JWKS_MAX_BYTES: usize = 64 * 1024;
/// The deadline of one JWKS fetch (DNS, connect, TLS, headers and body).
pub const JWKS_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest token looked at.
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;
/// Supabase refuses shorter JWT secrets; so do we, against a mistyped or placeholder value.
pub const MIN_SECRET_BYTES: usize = 32;

/// How to recognise Supabase's tokens.
#[derive(Debug, Clone)]
pub struct SupabaseConfig {
    /// The project's (legacy) JWT secret: accept HS256 tokens signed with it.
    pub jwt_secret: Option<Secret>,
    /// The project URL (`https://<project>.supabase.co`): accept ES256/RS256 tokens signed with the keys of its
    /// JWKS, and require the issuer `<url>/auth/v1` of every token. Plain `http` only for loopback hosts.
    pub url: Option<String>,
    /// The JWKS is fetched at most once per this interval, whatever the tokens say (30 s).
    pub jwks_min_refresh: Duration,
    /// Cached keys older than this are fetched again on next use (10 min), so that revoked keys go away.
    pub jwks_max_age: Duration,
    /// Trust anchors (DER) for the JWKS server besides Mozilla's roots, e.g. a self-hosted Supabase with a private
    /// CA. Not on the command line.
    pub extra_roots: Vec<Vec<u8>>,
}

impl SupabaseConfig {
    /// The settings for a secret and/or a URL (empty strings count as unset); `None` when neither is given.
    pub fn new(jwt_secret: Option<String>, url: Option<String>) -> Option<SupabaseConfig> {
        let jwt_secret = jwt_secret.filter(|s| !s.trim().is_empty()).map(Secret::new);
        let url = url.map(|u| u.trim().to_owned()).filter(|u| !u.is_empty());
        if jwt_secret.is_none() && url.is_none() {
            return None;
        }
        Some(SupabaseConfig {
            jwt_secret,
            url,
            jwks_min_refresh: Duration::from_secs(30),
            jwks_max_age: Duration::from_secs(600),
            extra_roots: Vec::new(),
        })
    }
}

/// A configuration that cannot work.
#[derive(Debug, thiserror::Error)]
pub enum SupabaseConfigError {
    #[error("the Supabase JWT secret must be at least {MIN_SECRET_BYTES} bytes")]
    ShortSecret,
    #[error("the Supabase URL {url:?} is not usable: {reason}")]
    BadUrl { url: String, reason: fetch::BadUrl },
    #[error("TLS setup for the Supabase JWKS: {0}")]
    Tls(#[from] rustls::Error),
}

/// Why a token is refused. Logged at debug level; callers only ever see 401 (or 503 for [`KeysUnavailable`]).
///
/// [`KeysUnavailable`]: JwtError::KeysUnavailable
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    #[error("malformed token")]
    Malformed,
    #[error("algorithm {0:?} is not accepted here")]
    Algorithm(String),
    #[error("the token names no known key")]
    NoKey,
    #[error("the key does not fit the algorithm")]
    KeyMismatch,
    #[error("bad signature")]
    Signature,
    #[error("no {0} claim")]
    Missing(&'static str),
    #[error("expired")]
    Expired,
    #[error("not valid yet")]
    NotYetValid,
    #[error("wrong issuer")]
    Issuer,
    #[error("wrong audience")]
    Audience,
    #[error("the subject is not a UUID")]
    Subject,
    #[error("the project's signing keys cannot be fetched")]
    KeysUnavailable,
}

/// Whether `token` has the shape of a JWT: three base64url segments separated by dots (the signature may be empty,
/// so that `alg: none` tokens are refused as such). Our own tokens (`essls_...`) have no dots.
pub fn looks_like_jwt(token: &str) -> bool {
    let mut count = 0;
    for (i, part) in token.split('.').enumerate() {
        count += 1;
        if count > 3 || (i < 2 && part.is_empty()) || !part.bytes().all(is_base64url) {
            return false;
        }
    }
    count == 3
}

fn is_base64url(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
}

/// Verifies Supabase-issued JWTs.
pub struct Supabase {
    hs256: Option<hmac::Key>,
    project: Option<Project>,
}

struct Project {
    issuer: String,
    jwks: Jwks,
}

impl Supabase {
    pub fn new(config: SupabaseConfig) -> Result<Supabase, SupabaseConfigError> {
        let hs256 = match &config.jwt_secret {
            Some(secret) if secret.expose().len() < MIN_SECRET_BYTES => return Err(SupabaseConfigError::ShortSecret),
            Some(secret) => Some(hmac::Key::new(hmac::HMAC_SHA256, secret.expose().as_bytes())),
            None => None,
        };
        let project = match &config.url {
            None => None,
            Some(url) => {
                let issuer = format!("{}/auth/v1", url.trim_end_matches('/'));
                let target = fetch::Target::parse(&format!("{issuer}/.well-known/jwks.json"))
                    .map_err(|reason| SupabaseConfigError::BadUrl { url: url.clone(), reason })?;
                let jwks = Jwks {
                    target,
                    tls: fetch::tls_connector(&config.extra_roots)?,
                    min_refresh: config.jwks_min_refresh,
                    max_age: config.jwks_max_age,
                    current: RwLock::new(Arc::new(KeySet::default())),
                    refresh: tokio::sync::Mutex::new(RefreshState::default()),
                };
                Some(Project { issuer, jwks })
            }
        };
        Ok(Supabase { hs256, project })
    }

    /// Whether HS256 tokens (the shared secret) are accepted.
    pub fn accepts_hs256(&self) -> bool {
        self.hs256.is_some()
    }

    /// The issuer required of every token, when the project URL is configured.
    pub fn issuer(&self) -> Option<&str> {
        self.project.as_ref().map(|p| p.issuer.as_str())
    }

    /// The caller behind a Supabase access token.
    pub async fn verify(&self, token: &str) -> Result<Caller, JwtError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(JwtError::Malformed);
        }
        let mut parts = token.split('.');
        let (Some(header_b64), Some(claims_b64), Some(signature_b64), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(JwtError::Malformed);
        };
        let header: Header = decode_json(header_b64)?;
        if header.crit.is_some() {
            return Err(JwtError::Malformed);
        }
        let signed = &token.as_bytes()[..header_b64.len() + 1 + claims_b64.len()];
        let signature = URL_SAFE_NO_PAD.decode(signature_b64).map_err(|_| JwtError::Malformed)?;
        match Alg::parse(&header.alg)? {
            Alg::Hs256 => {
                let key = self.hs256.as_ref().ok_or_else(|| JwtError::Algorithm(header.alg.clone()))?;
                hmac::verify(key, signed, &signature).map_err(|_| JwtError::Signature)?;
            }
            alg @ (Alg::Es256 | Alg::Rs256) => {
                let project = self.project.as_ref().ok_or_else(|| JwtError::Algorithm(header.alg.clone()))?;
                let kid = header.kid.as_deref().ok_or(JwtError::NoKey)?;
                project.jwks.key(kid).await?.verify(alg, signed, &signature)?;
            }
        }
        let claims: Claims = decode_json(claims_b64)?;
        self.check(claims, unix_now())
    }

    /// The claims of a token whose signature is good.
    fn check(&self, claims: Claims, now: i64) -> Result<Caller, JwtError> {
        let leeway = i64::try_from(LEEWAY.as_secs()).unwrap_or(i64::MAX);
        let exp = claims.exp.as_ref().ok_or(JwtError::Missing("exp"))?;
        let exp = numeric_date(exp).ok_or(JwtError::Malformed)?;
        if now >= exp.saturating_add(leeway) {
            return Err(JwtError::Expired);
        }
        if let Some(nbf) = &claims.nbf {
            let nbf = numeric_date(nbf).ok_or(JwtError::Malformed)?;
            if now.saturating_add(leeway) < nbf {
                return Err(JwtError::NotYetValid);
            }
        }
        if let Some(project) = &self.project
            && claims.iss.as_deref() != Some(project.issuer.as_str())
        {
            return Err(JwtError::Issuer);
        }
        let audience_ok = match &claims.aud {
            Some(Audience::One(aud)) => aud == AUDIENCE,
            Some(Audience::Many(auds)) => auds.iter().any(|a| a == AUDIENCE),
            None => false,
        };
        if !audience_ok {
            return Err(JwtError::Audience);
        }
        let sub = claims.sub.as_deref().ok_or(JwtError::Missing("sub"))?;
        let id = Uuid::try_parse(sub).map_err(|_| JwtError::Subject)?;
        let role = match claims.app_metadata.as_ref().and_then(|m| m.get("essl_role")).and_then(|r| r.as_str()) {
            Some("admin") => Role::Admin,
            _ => Role::Staff,
        };
        let name = claims.email.filter(|e| !e.trim().is_empty()).unwrap_or_else(|| id.to_string());
        Ok(Caller { id, name, role })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    Es256,
    Rs256,
}

impl Alg {
    fn parse(alg: &str) -> Result<Alg, JwtError> {
        match alg {
            "HS256" => Ok(Alg::Hs256),
            "ES256" => Ok(Alg::Es256),
            "RS256" => Ok(Alg::Rs256),
            other => Err(JwtError::Algorithm(other.chars().take(16).collect())),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Es256 => "ES256",
            Alg::Rs256 => "RS256",
        }
    }
}

/// The JOSE header. serde refuses duplicate fields, so two `alg`s cannot be read two ways.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<serde_json::Value>,
}

#[derive(Deserialize)]
struct Claims {
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<serde_json::Number>,
    #[serde(default)]
    nbf: Option<serde_json::Number>,
    #[serde(default)]
    iss: Option<String>,
    #[serde(default)]
    aud: Option<Audience>,
    #[serde(default)]
    email: Option<String>,
    #[serde(default)]
    app_metadata: Option<serde_json::Map<String, serde_json::Value>>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Audience {
    One(String),
    Many(Vec<String>),
}

fn decode_json<T: DeserializeOwned>(segment: &str) -> Result<T, JwtError> {
    let bytes = URL_SAFE_NO_PAD.decode(segment).map_err(|_| JwtError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| JwtError::Malformed)
}

/// Seconds since the epoch; fractions (allowed by RFC 7519) are truncated towards the past.
fn numeric_date(n: &serde_json::Number) -> Option<i64> {
    n.as_i64().or_else(|| n.as_f64().filter(|f| f.is_finite()).map(|f| f.floor() as i64))
}

fn unix_now() -> i64 {
    let secs = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    i64::try_from(secs).unwrap_or(i64::MAX)
}

/// A public key from the JWKS.
#[derive(Debug, Clone)]
struct Jwk {
    /// The key's own `alg`, when the JWKS gives one: the token's must be the same.
    alg: Option<String>,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum PublicKey {
    /// An uncompressed P-256 point (`04 || x || y`).
    EcP256(Vec<u8>),
    /// Big-endian modulus and exponent without leading zeros.
    Rsa { n: Vec<u8>, e: Vec<u8> },
}

impl Jwk {
    fn verify(&self, alg: Alg, signed: &[u8], signature: &[u8]) -> Result<(), JwtError> {
        if self.alg.as_deref().is_some_and(|a| a != alg.name()) {
            return Err(JwtError::KeyMismatch);
        }
        let verified = match (alg, &self.key) {
            (Alg::Es256, PublicKey::EcP256(point)) => {
                signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, point).verify(signed, signature)
            }
            (Alg::Rs256, PublicKey::Rsa { n, e }) => signature::RsaPublicKeyComponents { n, e }.verify(
                &signature::RSA_PKCS1_2048_8192_SHA256,
                signed,
                signature,
            ),
            _ => return Err(JwtError::KeyMismatch),
        };
        verified.map_err(|_| JwtError::Signature)
    }

    /// A key usable for ES256 or RS256 signatures, or why not (keys we cannot use are skipped, not fatal).
    fn from_json(value: serde_json::Value) -> Result<(String, Jwk), String> {
        #[derive(Deserialize)]
        struct Raw {
            kty: String,
            kid: Option<String>,
            alg: Option<String>,
            #[serde(rename = "use")]
            use_: Option<String>,
            key_ops: Option<Vec<String>>,
            crv: Option<String>,
            x: Option<String>,
            y: Option<String>,
            n: Option<String>,
            e: Option<String>,
        }
        let raw: Raw = serde_json::from_value(value).map_err(|e| e.to_string())?;
        let kid = raw.kid.ok_or("no kid")?;
        if raw.use_.as_deref().is_some_and(|u| u != "sig") {
            return Err(format!("key {kid:?} is not for signatures"));
        }
        if raw.key_ops.as_ref().is_some_and(|ops| !ops.iter().any(|o| o == "verify")) {
            return Err(format!("key {kid:?} is not for verification"));
        }
        let b64 = |field: Option<String>, name: &str| -> Result<Vec<u8>, String> {
            let field = field.ok_or_else(|| format!("key {kid:?} has no {name}"))?;
            URL_SAFE_NO_PAD.decode(field).map_err(|_| format!("key {kid:?}: {name} is not base64url"))
        };
        let (key, fits) = match raw.kty.as_str() {
            "EC" => {
                if raw.crv.as_deref() != Some("P-256") {
                    return Err(format!("key {kid:?}: curve {:?} is not P-256", raw.crv));
                }
                let (x, y) = (b64(raw.x, "x")?, b64(raw.y, "y")?);
                if x.len() != 32 || y.len() != 32 {
                    return Err(format!("key {kid:?}: bad P-256 coordinates"));
                }
                let mut point = Vec::with_capacity(65);
                point.push(4);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                (PublicKey::EcP256(point), Alg::Es256)
            }
            "RSA" => {
                let strip = |v: Vec<u8>| v.iter().position(|&b| b != 0).map(|i| v[i..].to_vec()).unwrap_or_default();
                let (n, e) = (strip(b64(raw.n, "n")?), strip(b64(raw.e, "e")?));
                if n.len() < 256 || e.is_empty() {
                    return Err(format!("key {kid:?}: RSA key shorter than 2048 bits"));
                }
                (PublicKey::Rsa { n, e }, Alg::Rs256)
            }
            other => return Err(format!("key {kid:?}: key type {other:?} is not used here")),
        };
        if raw.alg.as_deref().is_some_and(|a| a != fits.name()) {
            return Err(format!("key {kid:?}: algorithm {:?} is not {}", raw.alg, fits.name()));
        }
        Ok((kid, Jwk { alg: raw.alg, key }))
    }
}

/// The keys of a JWKS document (keys without a `kid`, of other types or uses are skipped).
fn parse_jwks(body: &[u8]) -> Result<HashMap<String, Jwk>, String> {
    #[derive(Deserialize)]
    struct JwkSet {
        keys: Vec<serde_json::Value>,
    }
    let set: JwkSet = serde_json::from_slice(body).map_err(|e| format!("not a JWKS: {e}"))?;
    let mut keys = HashMap::new();
    for value in set.keys {
        match Jwk::from_json(value) {
            Ok((kid, jwk)) => match keys.entry(kid) {
                std::collections::hash_map::Entry::Occupied(e) => {
                    tracing::warn!(kid = %e.key(), "the Supabase JWKS lists a kid twice; the first one is used");
                }
                std::collections::hash_map::Entry::Vacant(e) => {
                    e.insert(jwk);
                }
            },
            Err(why) => tracing::debug!(%why, "skipping a JWKS key"),
        }
    }
    Ok(keys)
}

/// The project's public keys: a snapshot readers share, and the one place that fetches.
struct Jwks {
    target: fetch::Target,
    tls: TlsConnector,
    min_refresh: Duration,
    max_age: Duration,
    current: RwLock<Arc<KeySet>>,
    /// Held during a fetch: concurrent callers wait for it instead of fetching too.
    refresh: tokio::sync::Mutex<RefreshState>,
}

#[derive(Default)]
struct KeySet {
    keys: HashMap<String, Jwk>,
    /// When these keys were fetched; `None` before the first successful fetch.
    fetched_at: Option<Instant>,
    /// Bumped by every successful fetch.
    generation: u64,
}

#[derive(Default)]
struct RefreshState {
    last_attempt: Option<Instant>,
    /// The last attempt failed.
    failing: bool,
}

impl Jwks {
    fn snapshot(&self) -> Arc<KeySet> {
        self.current.read().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The key named `kid`, fetching the JWKS if the key is unknown or the cache is old and a fetch is allowed.
    async fn key(&self, kid: &str) -> Result<Jwk, JwtError> {
        let seen = self.snapshot();
        if let Some(key) = seen.keys.get(kid)
            && seen.fetched_at.is_some_and(|t| t.elapsed() < self.max_age)
        {
            return Ok(key.clone());
        }
        let mut state = self.refresh.lock().await;
        let latest = self.snapshot();
        // Someone else fetched while we waited: use that rather than fetching again.
        let fetched_meanwhile = latest.generation != seen.generation;
        let allowed = state.last_attempt.is_none_or(|t| t.elapsed() >= self.min_refresh);
        if !fetched_meanwhile && allowed {
            state.last_attempt = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    state.failing = false;
                    tracing::info!(url = %self.target.uri, keys = keys.len(), "fetched the Supabase JWKS");
                    let set =
                        Arc::new(KeySet { keys, fetched_at: Some(Instant::now()), generation: latest.generation + 1 });
                    *self.current.write().unwrap_or_else(PoisonError::into_inner) = set.clone();
                    return set.keys.get(kid).cloned().ok_or(JwtError::NoKey);
                }
                Err(error) => {
                    state.failing = true;
                    tracing::warn!(url = %self.target.uri, %error, "cannot fetch the Supabase JWKS; keeping the keys known");
                }
            }
        }
        match latest.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if state.failing || latest.fetched_at.is_none() => Err(JwtError::KeysUnavailable),
            None => Err(JwtError::NoKey),
        }
    }

    async fn fetch(&self) -> Result<HashMap<String, Jwk>, String> {
        let body =
            fetch::get(&self.target, &self.tls, JWKS_MAX_BYTES, JWKS_TIMEOUT).await.map_err(|e| e.to_string())?;
        parse_jwks(&body)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jwt_shape() {
        assert!(looks_like_jwt("eyJh.eyJz.c2ln"));
        assert!(looks_like_jwt("eyJh.eyJz."));
        assert!(!looks_like_jwt("essls_0123_abcd"));
        assert!(!looks_like_jwt("a.b"));
        assert!(!looks_like_jwt("a.b.c.d"));
        assert!(!looks_like_jwt(".b.c"));
        assert!(!looks_like_jwt("a..c"));
        assert!(!looks_like_jwt("a.b.c="));
        assert!(!looks_like_jwt("a.b+.c"));
        assert!(!looks_like_jwt(""));
    }

    #[test]
    fn config() {
        assert!(SupabaseConfig::new(None, None).is_none());
        assert!(SupabaseConfig::new(Some(" ".into()), Some(String::new())).is_none());
        let short = SupabaseConfig::new(Some("short".into()), None).expect("set");
        assert!(matches!(Supabase::new(short), Err(SupabaseConfigError::ShortSecret)));
        let plain = SupabaseConfig::new(None, Some("http://abc.supabase.co".into())).expect("set");
        assert!(matches!(Supabase::new(plain), Err(SupabaseConfigError::BadUrl { .. })));
        let ok = SupabaseConfig::new(None, Some("https://abc.supabase.co/".into())).expect("set");
        let sb = Supabase::new(ok).expect("valid");
        assert_eq!(sb.issuer(), Some("https://abc.supabase.co/auth/v1"));
        assert!(!sb.accepts_hs256());
        assert!(!format!("{:?}", SupabaseConfig::new(Some("x".repeat(40)), None)).contains("xxxx"));
    }

    #[test]
    fn numeric_dates() {
        let n = |s: &str| serde_json::from_str::<serde_json::Number>(s).expect("number");
        assert_eq!(numeric_date(&n("1700000000")), Some(1_700_000_000));
        assert_eq!(numeric_date(&n("1700000000.9")), Some(1_700_000_000));
        assert_eq!(numeric_date(&n("1e300")), Some(i64::MAX));
    }

    #[test]
    fn jwks_keys_we_cannot_use_are_skipped() {
        let body = serde_json::json!({"keys": [
            {"kty": "oct", "kid": "sym", "k": "c2VjcmV0"},
            {"kty": "EC", "kid": "p384", "crv": "P-384", "x": "AA", "y": "AA"},
            {"kty": "EC", "kid": "short", "crv": "P-256", "x": "AA", "y": "AA"},
            {"kty": "EC", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            {"kty": "EC", "kid": "enc", "use": "enc", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            {"kty": "EC", "kid": "rs", "alg": "RS256", "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            {"kty": "RSA", "kid": "tiny", "n": URL_SAFE_NO_PAD.encode([7u8; 128]), "e": "AQAB"},
            {"kty": "EC", "kid": "good", "alg": "ES256", "use": "sig", "key_ops": ["verify"], "crv": "P-256", "x": URL_SAFE_NO_PAD.encode([1u8; 32]), "y": URL_SAFE_NO_PAD.encode([2u8; 32])},
            {"kty": "RSA", "kid": "rsa", "n": URL_SAFE_NO_PAD.encode([[0u8].as_slice(), &[7u8; 256]].concat()), "e": "AQAB"},
            "not even an object"
        ]});
        let keys = parse_jwks(body.to_string().as_bytes()).expect("a JWKS");
        let mut kids: Vec<_> = keys.keys().cloned().collect();
        kids.sort();
        assert_eq!(kids, ["good", "rsa"]);
        assert!(matches!(&keys["rsa"].key, PublicKey::Rsa { n, .. } if n.len() == 256));
        assert!(parse_jwks(b"[]").is_err());
    }
}
