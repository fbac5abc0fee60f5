//! Who may do what: API tokens (admin, staff), agent tokens (scoped to a site), and optionally Supabase-issued
//! JWTs so the seed's users keep their logins.

pub mod fetch;
pub mod password;
pub mod session;
pub mod supabase;
pub mod throttle;
pub mod token;

use std::net::IpAddr;
use std::sync::Arc;

use axum::http::StatusCode;

use uuid::Uuid;

pub use supabase::{JwtError, Supabase, SupabaseConfig, SupabaseConfigError};

use crate::http::error::ApiError;
use crate::http::extract::Caller;
use crate::store::Store;
use crate::store::model::{Agent, NewSession, Session};
use throttle::LoginThrottle;

/// Verifies presented credentials against the store (and, when configured, Supabase's signatures).
#[derive(Clone)]
pub struct Auth {
    store: Store,
    supabase: Option<Arc<Supabase>>,
    throttle: Arc<LoginThrottle>,
}

/// Why a dashboard login failed.
#[derive(Debug)]
pub enum LoginError {
    /// Wrong name or password (the two are not told apart).
    Invalid,
    /// Too many failures for this name or address: wait this long.
    Throttled(std::time::Duration),
    Api(ApiError),
}

impl From<ApiError> for LoginError {
    fn from(e: ApiError) -> Self {
        LoginError::Api(e)
    }
}

impl Auth {
    pub fn new(store: Store) -> Auth {
        Auth { store, supabase: None, throttle: Arc::default() }
    }

    /// Accepts Supabase-issued JWTs too.
    pub fn with_supabase(mut self, config: SupabaseConfig) -> Result<Auth, SupabaseConfigError> {
        self.supabase = Some(Arc::new(Supabase::new(config)?));
        Ok(self)
    }

    /// The Supabase verifier, when configured.
    pub fn supabase(&self) -> Option<&Supabase> {
        self.supabase.as_deref()
    }

    /// The caller behind an API bearer token or, told apart by its shape, a Supabase JWT.
    pub async fn caller(&self, presented: &str) -> Result<Caller, ApiError> {
        if supabase::looks_like_jwt(presented) {
            let Some(supabase) = &self.supabase else {
                return Err(ApiError::unauthorized());
            };
            return supabase.verify(presented).await.map_err(|reason| {
                tracing::debug!(%reason, "Supabase JWT refused");
                match reason {
                    JwtError::KeysUnavailable => {
                        ApiError::unavailable("the Supabase signing keys cannot be fetched, try again")
                    }
                    _ => ApiError::unauthorized(),
                }
            });
        }
        let (id, secret) = token::parse(presented, token::API_PREFIX).map_err(|_| ApiError::unauthorized())?;
        let Some((api_token, cred)) = self.store.api_token_credential(id).await? else {
            return Err(ApiError::unauthorized());
        };
        if cred.revoked || !token::verify(secret, &cred.secret_hash) {
            return Err(ApiError::unauthorized());
        }
        Ok(Caller { id: api_token.id, name: api_token.name, role: api_token.role })
    }

    /// The agent behind an agent token; `None` for a bad, unknown or revoked one.
    pub async fn agent(&self, presented: &str) -> Result<Option<Agent>, ApiError> {
        let Ok((id, secret)) = token::parse(presented, token::AGENT_PREFIX) else {
            return Ok(None);
        };
        let Some((agent, cred)) = self.store.agent_credential(id).await? else {
            return Ok(None);
        };
        Ok((!cred.revoked && token::verify(secret, &cred.secret_hash)).then_some(agent))
    }

    /// Whether `id` names an agent (for revocation messages).
    pub async fn agent_exists(&self, id: Uuid) -> Result<bool, ApiError> {
        Ok(self.store.get_agent(id).await?.is_some())
    }

    /// Checks a dashboard login and opens a session; answers the session and the cookie value (shown once).
    /// Unknown names cost the same password check as known ones, and both fail the same way.
    pub async fn login(
        &self,
        username: &str,
        password: token::Secret,
        address: IpAddr,
    ) -> Result<(Session, token::Secret), LoginError> {
        self.throttle.check(username, address).map_err(LoginError::Throttled)?;
        let found = self.store.user_login(username).await.map_err(ApiError::from)?;
        let stored = match &found {
            Some((user, hash)) if user.disabled_at.is_none() => hash.clone(),
            _ => password::decoy().to_owned(),
        };
        // PBKDF2 takes a few hundred milliseconds of CPU: off the async workers.
        let matches = tokio::task::spawn_blocking(move || password::verify(password.expose(), &stored))
            .await
            .map_err(|e| ApiError::internal(format!("password check failed: {e}")))?;
        let user = match found {
            Some((user, _)) if matches && user.disabled_at.is_none() => user,
            _ => {
                self.throttle.failed(username, address);
                tracing::info!(%address, "dashboard login refused");
                return Err(LoginError::Invalid);
            }
        };
        self.throttle.succeeded(username);
        let secret = token::generate(session::PREFIX).map_err(ApiError::internal)?;
        let csrf = token::generate("csrf").map_err(ApiError::internal)?;
        let expires_at = jiff::Timestamp::now()
            .checked_add(jiff::SignedDuration::try_from(session::LIFETIME).unwrap_or(jiff::SignedDuration::ZERO))
            .map_err(ApiError::internal)?;
        let new = NewSession {
            id: secret.id,
            user_id: user.id,
            secret_hash: secret.hash,
            // The random part of a fresh token: 64 hex characters, unrelated to the cookie.
            csrf_token: csrf.token.expose().rsplit('_').next().unwrap_or_default().to_owned(),
            expires_at,
        };
        self.store.create_session(&new).await.map_err(ApiError::from)?;
        tracing::info!(user = %user.username, role = %user.role, "dashboard login");
        let session = Session {
            id: new.id,
            user,
            secret_hash: new.secret_hash,
            csrf_token: new.csrf_token,
            created_at: jiff::Timestamp::now(),
            expires_at,
        };
        Ok((session, secret.token))
    }

    /// The live session behind a cookie value; `None` for a malformed, unknown, expired or forged one.
    pub async fn session(&self, cookie: &str) -> Result<Option<Session>, ApiError> {
        let Ok((id, secret)) = token::parse(cookie, session::PREFIX) else { return Ok(None) };
        let Some(session) = self.store.live_session(id).await? else { return Ok(None) };
        Ok(token::verify(secret, &session.secret_hash).then_some(session))
    }

    /// Ends the session behind a cookie value, if there is one.
    pub async fn logout(&self, cookie: &str) -> Result<(), ApiError> {
        if let Some(session) = self.session(cookie).await? {
            self.store.delete_session(session.id).await?;
        }
        Ok(())
    }
}

impl LoginError {
    /// The answer for the login route: 401 without saying which part was wrong, 429 with the wait.
    pub fn into_api_error(self) -> (ApiError, Option<std::time::Duration>) {
        match self {
            LoginError::Invalid => {
                (ApiError::new(StatusCode::UNAUTHORIZED, "invalid_login", "Wrong user name or password."), None)
            }
            LoginError::Throttled(wait) => {
                let secs = wait.as_secs().max(1);
                let message = format!("Too many failed logins. Try again in {secs} seconds.");
                (ApiError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", message), Some(wait))
            }
            LoginError::Api(e) => (e, None),
        }
    }
}
