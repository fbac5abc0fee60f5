//! Bearer tokens: `<prefix>_<id>_<secret>`. The id (a UUID) is the lookup key and not secret; only the SHA-256 of
//! the 32-byte random secret is stored, and it is compared in constant time. High-entropy secrets need no slow
//! password hash.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use uuid::Uuid;

/// Prefix of agent tokens.
pub const AGENT_PREFIX: &str = "essla";
/// Prefix of staff and admin API tokens.
pub const API_PREFIX: &str = "essls";

/// A secret that never shows itself in logs or debug output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(s: impl Into<String>) -> Secret {
        Secret(s.into())
    }

    /// The secret itself: only for showing a new token once, or sending it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Secret, Self::Err> {
        Ok(Secret::new(s))
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("***")
    }
}

/// A freshly made token: what to store (id, hash) and what to show once (the full token).
pub struct NewToken {
    pub id: Uuid,
    pub hash: Vec<u8>,
    pub token: Secret,
}

/// Why a presented token is no good. Deliberately coarse: the caller learns nothing about which part failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid token")]
pub struct InvalidToken;

/// Makes a token with `prefix`, from the operating system's random source.
pub fn generate(prefix: &str) -> Result<NewToken, getrandom::Error> {
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret)?;
    let mut id_bytes = [0u8; 16];
    getrandom::fill(&mut id_bytes)?;
    let id = uuid::Builder::from_random_bytes(id_bytes).into_uuid();
    let secret_hex = hex(&secret);
    Ok(NewToken { id, hash: hash_secret(&secret_hex), token: Secret(format!("{prefix}_{}_{secret_hex}", id.simple())) })
}

/// Splits a presented token into its id and secret, checking the prefix and the shape.
pub fn parse<'a>(token: &'a str, prefix: &str) -> Result<(Uuid, &'a str), InvalidToken> {
    let rest = token.strip_prefix(prefix).and_then(|r| r.strip_prefix('_')).ok_or(InvalidToken)?;
    let (id, secret) = rest.split_once('_').ok_or(InvalidToken)?;
    if id.len() != 32 || secret.len() != 64 || !secret.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(InvalidToken);
    }
    let id = Uuid::try_parse(id).map_err(|_| InvalidToken)?;
    Ok((id, secret))
}

/// SHA-256 of the secret part.
pub fn hash_secret(secret: &str) -> Vec<u8> {
    Sha256::digest(secret.as_bytes()).to_vec()
}

/// Constant-time comparison of a presented secret with a stored hash.
pub fn verify(secret: &str, stored_hash: &[u8]) -> bool {
    let presented = hash_secret(secret);
    presented.len() == stored_hash.len() && bool::from(presented.ct_eq(stored_hash))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generate_parse_verify() {
        let t = generate(AGENT_PREFIX).expect("random");
        let (id, secret) = parse(t.token.expose(), AGENT_PREFIX).expect("parses");
        assert_eq!(id, t.id);
        assert!(verify(secret, &t.hash));
        assert!(!verify(&secret.replace('a', "b").replace('0', "1"), &t.hash));
        assert_eq!(parse(t.token.expose(), API_PREFIX), Err(InvalidToken));
        assert_eq!(format!("{:?}", t.token), "***");
        for bad in ["", "essla", "essla__", "essla_x_y", "essla_00000000000000000000000000000000_zz"] {
            assert_eq!(parse(bad, AGENT_PREFIX), Err(InvalidToken), "{bad}");
        }
    }
}
