//! Password hashes for dashboard logins: PBKDF2-HMAC-SHA256 from ring (already the TLS provider, so no new
//! crypto dependency), stored as `pbkdf2-sha256$<iterations>$<salt>$<hash>` (base64, no padding). The iteration
//! count travels with the hash, so it can be raised later without invalidating old passwords.

use std::num::NonZeroU32;

use base64::Engine;
use base64::engine::general_purpose::STANDARD_NO_PAD as B64;
use ring::pbkdf2;

use super::token::Secret;

/// OWASP's 2023 figure for PBKDF2-HMAC-SHA256.
pub const DEFAULT_ITERATIONS: u32 = 600_000;
/// Fewer are refused when reading a hash back: a stored hash cannot weaken the check.
const MIN_ITERATIONS: u32 = 1_000;
const SCHEME: &str = "pbkdf2-sha256";
const SALT_LEN: usize = 16;
const HASH_LEN: usize = 32;
/// Shortest password accepted for a new login.
pub const MIN_PASSWORD_CHARS: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    #[error("a password needs at least {MIN_PASSWORD_CHARS} characters")]
    TooShort,
    #[error("a password is at most 1024 bytes")]
    TooLong,
    #[error("the system random source failed: {0}")]
    Random(#[from] getrandom::Error),
}

/// Hashes a new password with a fresh random salt.
pub fn hash(password: &Secret) -> Result<String, PasswordError> {
    hash_with(password, DEFAULT_ITERATIONS)
}

/// [`hash`] with a given cost (tests use a low one to stay fast).
pub fn hash_with(password: &Secret, iterations: u32) -> Result<String, PasswordError> {
    let pw = password.expose();
    if pw.chars().count() < MIN_PASSWORD_CHARS {
        return Err(PasswordError::TooShort);
    }
    if pw.len() > 1024 {
        return Err(PasswordError::TooLong);
    }
    let iterations = NonZeroU32::new(iterations.max(MIN_ITERATIONS)).unwrap_or(NonZeroU32::MIN);
    let mut salt = [0u8; SALT_LEN];
    getrandom::fill(&mut salt)?;
    let mut out = [0u8; HASH_LEN];
    pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, pw.as_bytes(), &mut out);
    Ok(format!("{SCHEME}${iterations}${}${}", B64.encode(salt), B64.encode(out)))
}

/// Whether `password` matches `stored` (in constant time); `false` for a malformed stored hash.
pub fn verify(password: &str, stored: &str) -> bool {
    let mut parts = stored.split('$');
    let (Some(SCHEME), Some(iters), Some(salt), Some(expected), None) =
        (parts.next(), parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(iterations) = iters.parse::<u32>().ok().filter(|n| *n >= MIN_ITERATIONS).and_then(NonZeroU32::new) else {
        return false;
    };
    let (Ok(salt), Ok(expected)) = (B64.decode(salt), B64.decode(expected)) else { return false };
    if password.len() > 1024 {
        return false;
    }
    pbkdf2::verify(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, password.as_bytes(), &expected).is_ok()
}

/// A hash of nothing anyone knows, verified against when the user name is unknown, so that a wrong name takes
/// as long as a wrong password (no user enumeration by timing).
pub fn decoy() -> &'static str {
    static DECOY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DECOY.get_or_init(|| {
        let salt = [7u8; SALT_LEN];
        let mut out = [0u8; HASH_LEN];
        let iterations = NonZeroU32::new(DEFAULT_ITERATIONS).unwrap_or(NonZeroU32::MIN);
        pbkdf2::derive(pbkdf2::PBKDF2_HMAC_SHA256, iterations, &salt, b"essl-relay decoy", &mut out);
        format!("{SCHEME}${DEFAULT_ITERATIONS}${}${}", B64.encode(salt), B64.encode(out))
    })
}

/// A random password for a new login, 20 characters from an alphabet without look-alikes.
pub fn generate() -> Result<Secret, getrandom::Error> {
    const ALPHABET: &[u8] = b"abcdefghijkmnopqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut bytes = [0u8; 20];
    getrandom::fill(&mut bytes)?;
    // 256 % 57 != 0 gives a slight bias; at 20 characters the password still carries > 110 bits.
    Ok(Secret::new(bytes.iter().map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char).collect::<String>()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_refusals() {
        let pw = Secret::new("correct horse battery");
        let h = hash_with(&pw, 1_000).expect("hash");
        assert!(h.starts_with("pbkdf2-sha256$1000$"));
        assert!(verify("correct horse battery", &h));
        assert!(!verify("correct horse batterz", &h));
        assert!(!verify("correct horse battery", "pbkdf2-sha256$1$AAAA$AAAA"), "too few iterations refused");
        assert!(!verify("x", "garbage"));
        assert!(!verify("x", "pbkdf2-sha256$1000$!!$!!"));
        assert!(matches!(hash_with(&Secret::new("short"), 1_000), Err(PasswordError::TooShort)));
        assert_ne!(hash_with(&pw, 1_000).expect("hash"), h, "a fresh salt each time");
    }

    #[test]
    fn generated_passwords_are_long_enough() {
        let p = generate().expect("random");
        assert_eq!(p.expose().chars().count(), 20);
        assert!(hash_with(&p, 1_000).is_ok());
    }
}
