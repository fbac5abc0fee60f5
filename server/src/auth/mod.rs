//! Who may do what: API tokens (admin, staff), agent tokens (scoped to a site), and optionally Supabase-issued
//! JWTs so the seed's users keep their logins.

pub mod fetch;
pub mod supabase;
pub mod token;

use std::sync::Arc;

use uuid::Uuid;

pub use supabase::{JwtError, Supabase, SupabaseConfig, SupabaseConfigError};

use crate::http::error::ApiError;
use crate::http::extract::Caller;
use crate::store::Store;
use crate::store::model::Agent;

/// Verifies presented credentials against the store (and, when configured, Supabase's signatures).
#[derive(Clone)]
pub struct Auth {
    store: Store,
    supabase: Option<Arc<Supabase>>,
}

impl Auth {
    pub fn new(store: Store) -> Auth {
        Auth { store, supabase: None }
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
}
