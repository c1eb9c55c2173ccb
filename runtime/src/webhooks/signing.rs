//! Signatures of webhooks: Standard Webhooks (HMAC-SHA256 over
//! `id.timestamp.body`, `v1,<base64>`; secrets `whsec_<base64>`) for what
//! Orchestra sends and what triggers receive, and GitHub's
//! `X-Hub-Signature-256` (`sha256=<hex>` over the body) for triggers.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use sha2::Sha256;

type HmacSha256 = Hmac<Sha256>;

/// The prefix of Standard Webhooks secrets.
pub const SECRET_PREFIX: &str = "whsec_";

/// A new Standard Webhooks secret: `whsec_` and 32 random bytes in base64.
pub fn new_secret() -> String {
    let mut key = [0u8; 32];
    getrandom::fill(&mut key).expect("the operating system provides randomness");
    format!("{SECRET_PREFIX}{}", STANDARD.encode(key))
}

/// The HMAC key of a secret: the bytes after `whsec_` when they are
/// base64, else the secret's own bytes (GitHub's secrets are plain text).
pub fn key_of(secret: &str) -> Vec<u8> {
    secret
        .strip_prefix(SECRET_PREFIX)
        .and_then(|b64| STANDARD.decode(b64).ok())
        .unwrap_or_else(|| secret.as_bytes().to_vec())
}

fn mac(key: &[u8]) -> HmacSha256 {
    HmacSha256::new_from_slice(key).expect("HMAC takes a key of any length")
}

/// The `webhook-signature` value of a message: `v1,<base64>`.
pub fn sign(secret: &str, id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut m = mac(&key_of(secret));
    m.update(id.as_bytes());
    m.update(b".");
    m.update(timestamp.to_string().as_bytes());
    m.update(b".");
    m.update(body);
    format!("v1,{}", STANDARD.encode(m.finalize().into_bytes()))
}

/// Why a signature was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// A header is missing or malformed.
    #[error("{0}")]
    Malformed(&'static str),
    /// The timestamp is too far from now.
    #[error("the webhook-timestamp is more than {0} s from now")]
    Stale(i64),
    /// No signature matches.
    #[error("no signature matches")]
    Mismatch,
}

/// Checks a Standard Webhooks message: the `webhook-id`,
/// `webhook-timestamp` (within `tolerance_secs` of `now_secs`) and
/// `webhook-signature` headers (space-separated `v1,<base64>` values, one
/// of which must match), in constant time.
pub fn verify_standard(
    secret: &str,
    id: Option<&str>,
    timestamp: Option<&str>,
    signatures: Option<&str>,
    body: &[u8],
    now_secs: i64,
    tolerance_secs: i64,
) -> Result<(), SignatureError> {
    let id = id.ok_or(SignatureError::Malformed("webhook-id is missing"))?;
    let timestamp: i64 = timestamp
        .ok_or(SignatureError::Malformed("webhook-timestamp is missing"))?
        .trim()
        .parse()
        .map_err(|_| SignatureError::Malformed("webhook-timestamp is not a number"))?;
    if (now_secs - timestamp).abs() > tolerance_secs {
        return Err(SignatureError::Stale(tolerance_secs));
    }
    let signatures = signatures.ok_or(SignatureError::Malformed("webhook-signature is missing"))?;
    let key = key_of(secret);
    for candidate in signatures.split_whitespace() {
        let Some(b64) = candidate.strip_prefix("v1,") else {
            continue;
        };
        let Ok(given) = STANDARD.decode(b64) else {
            continue;
        };
        let mut m = mac(&key);
        m.update(id.as_bytes());
        m.update(b".");
        m.update(timestamp.to_string().as_bytes());
        m.update(b".");
        m.update(body);
        if m.verify_slice(&given).is_ok() {
            return Ok(());
        }
    }
    Err(SignatureError::Mismatch)
}

/// Checks GitHub's `X-Hub-Signature-256: sha256=<hex>` over `body`, in
/// constant time.
pub fn verify_github(
    secret: &str,
    header: Option<&str>,
    body: &[u8],
) -> Result<(), SignatureError> {
    let hex = header
        .ok_or(SignatureError::Malformed("X-Hub-Signature-256 is missing"))?
        .trim()
        .strip_prefix("sha256=")
        .ok_or(SignatureError::Malformed(
            "X-Hub-Signature-256 must be sha256=<hex>",
        ))?;
    let given =
        decode_hex(hex).ok_or(SignatureError::Malformed("X-Hub-Signature-256 is not hex"))?;
    let mut m = mac(secret.as_bytes());
    m.update(body);
    m.verify_slice(&given).map_err(|_| SignatureError::Mismatch)
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn standard_webhooks_reference_vector() {
        // The example of the Standard Webhooks specification's reference
        // libraries.
        let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
        let id = "msg_p5jXN8AQM9LWM0D4loKWxJek";
        let body = br#"{"test": 2432232314}"#;
        let signature = sign(secret, id, 1614265330, body);
        assert_eq!(signature, "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=");
        assert!(verify_standard(
            secret,
            Some(id),
            Some("1614265330"),
            Some(&format!("v1,bogus {signature}")),
            body,
            1614265330,
            300
        )
        .is_ok());
        assert_eq!(
            verify_standard(
                secret,
                Some(id),
                Some("1614265330"),
                Some(&signature),
                body,
                1614266330,
                300
            ),
            Err(SignatureError::Stale(300))
        );
        assert_eq!(
            verify_standard(
                secret,
                Some(id),
                Some("1614265330"),
                Some(&signature),
                b"{}",
                1614265330,
                300
            ),
            Err(SignatureError::Mismatch)
        );
    }

    #[test]
    fn github_signatures() {
        // GitHub's documented example.
        let secret = "It's a Secret to Everybody";
        let body = b"Hello, World!";
        let header = "sha256=757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17";
        assert!(verify_github(secret, Some(header), body).is_ok());
        assert_eq!(
            verify_github(secret, Some(header), b"Hello"),
            Err(SignatureError::Mismatch)
        );
        assert!(verify_github(secret, Some("sha1=00"), body).is_err());
        assert!(verify_github(secret, None, body).is_err());
    }
}
