//! Credential primitives: argon2id password hashes, opaque random tokens
//! stored as SHA-256 digests, and HS256 access tokens.
//!
//! Password hashing is CPU-bound (tens of milliseconds by design), so the
//! async wrappers run it on the blocking pool, never on a runtime thread.

use argon2::password_hash::{
    rand_core::OsRng, PasswordHash, PasswordHasher, PasswordVerifier, SaltString,
};
use argon2::Argon2;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{Error, Result};

/// Prefix that makes an API key recognisable (and tells it from a JWT).
pub const API_KEY_PREFIX: &str = "orc_";

/// Hashes a password with argon2id and a random salt.
pub async fn hash_password(password: String) -> Result<String> {
    tokio::task::spawn_blocking(move || {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| Error::Internal(anyhow::anyhow!("hashing a password: {e}")))
    })
    .await
    .map_err(|e| Error::Internal(e.into()))?
}

/// Checks a password against a stored hash. `None` as the hash still spends
/// the time of a verification, so an unknown email and a wrong password take
/// as long.
pub async fn verify_password(hash: Option<String>, password: String) -> Result<bool> {
    tokio::task::spawn_blocking(move || {
        let hash = hash.unwrap_or_else(|| DUMMY_HASH.clone());
        let parsed = PasswordHash::new(&hash).map_err(|e| {
            Error::Internal(anyhow::anyhow!("stored password hash unreadable: {e}"))
        })?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
    .map_err(|e| Error::Internal(e.into()))?
}

/// The argon2id hash of a random password no one knows, for even-timed misses.
static DUMMY_HASH: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(random_token(16).as_bytes(), &salt)
        .expect("argon2 hashes a short password")
        .to_string()
});

/// A random URL-safe token carrying `bytes` bytes of entropy.
pub fn random_token(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("the operating system provides randomness");
    URL_SAFE_NO_PAD.encode(buf)
}

/// A new API key: the prefix, then 32 random bytes.
pub fn new_api_key() -> String {
    format!("{API_KEY_PREFIX}{}", random_token(32))
}

/// The SHA-256 digest, hex-encoded, under which tokens and keys are stored.
/// Tokens are 256-bit random values, so a fast hash is enough: there is
/// nothing to brute-force.
pub fn token_digest(token: &str) -> String {
    crate::crypto::sha256_hex(token.as_bytes())
}

/// The claims of an access token.
#[derive(Debug, Serialize, Deserialize)]
pub struct Claims {
    /// The user id.
    pub sub: Uuid,
    /// Issued at (seconds since the epoch).
    pub iat: i64,
    /// Expiry (seconds since the epoch).
    pub exp: i64,
    /// Issuer, always `orchestra`.
    pub iss: String,
    /// Token type, always `access`.
    pub typ: String,
    /// The user's token generation when it was issued; a password change
    /// starts a new one.
    #[serde(default)]
    pub gen: i64,
}

/// Signs and checks access tokens.
#[derive(Clone)]
pub struct JwtKeys {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
}

impl JwtKeys {
    /// Keys from the HMAC secret.
    pub fn new(secret: &[u8]) -> JwtKeys {
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.set_issuer(&["orchestra"]);
        validation.set_required_spec_claims(&["exp", "sub", "iss"]);
        JwtKeys {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
        }
    }

    /// Issues a token for `user_id` (of token generation `gen`) valid for
    /// `ttl_secs`.
    pub fn issue(&self, user_id: Uuid, gen: i64, ttl_secs: u64) -> Result<String> {
        let now = chrono::Utc::now().timestamp();
        let claims = Claims {
            sub: user_id,
            iat: now,
            exp: now + ttl_secs as i64,
            iss: "orchestra".to_owned(),
            typ: "access".to_owned(),
            gen,
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(|e| Error::Internal(anyhow::anyhow!("signing an access token: {e}")))
    }

    /// Verifies signature, issuer and expiry; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => {
                    Error::Unauthorized("the access token has expired".to_owned())
                }
                _ => Error::Unauthorized("the access token is invalid".to_owned()),
            })?;
        if data.claims.typ != "access" {
            return Err(Error::Unauthorized(
                "the access token is invalid".to_owned(),
            ));
        }
        Ok(data.claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tampered_and_foreign_tokens_are_rejected() {
        let keys = JwtKeys::new(&[7u8; 64]);
        let user = Uuid::new_v4();
        let token = keys.issue(user, 0, 60).unwrap();
        assert_eq!(keys.verify(&token).unwrap().sub, user);

        let other = JwtKeys::new(&[8u8; 64]);
        assert!(other.verify(&token).is_err());

        let mut parts: Vec<String> = token.split('.').map(str::to_owned).collect();
        parts[1] = URL_SAFE_NO_PAD.encode(format!(
            r#"{{"sub":"{}","iat":0,"exp":9999999999,"iss":"orchestra","typ":"access"}}"#,
            Uuid::new_v4()
        ));
        assert!(keys.verify(&parts.join(".")).is_err());
    }

    #[test]
    fn digests_are_stable_hex() {
        assert_eq!(
            token_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        assert!(new_api_key().starts_with(API_KEY_PREFIX));
        assert_ne!(random_token(32), random_token(32));
    }

    #[tokio::test]
    async fn password_hashes_verify_only_the_right_password() {
        let hash = hash_password("correct horse".to_owned()).await.unwrap();
        assert!(hash.starts_with("$argon2id$"));
        assert!(
            verify_password(Some(hash.clone()), "correct horse".to_owned())
                .await
                .unwrap()
        );
        assert!(!verify_password(Some(hash), "wrong horse".to_owned())
            .await
            .unwrap());
        assert!(!verify_password(None, "anything".to_owned()).await.unwrap());
    }
}
