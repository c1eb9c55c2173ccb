//! Digests, and encryption at rest for what the server must be able to read back (plugin
//! secrets, provider API keys): ChaCha20-Poly1305 under the server's
//! encryption key, a random 96-bit nonce per value, and associated data that
//! binds each ciphertext to its row (a ciphertext copied to another row does
//! not decrypt).

use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use sha2::{Digest, Sha256};

/// The SHA-256 digest of `bytes`, as lower-case hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seals and opens values under one key.
#[derive(Clone)]
pub struct Sealer {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for Sealer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Sealer { .. }")
    }
}

impl Sealer {
    /// A sealer under `key`.
    pub fn new(key: &[u8; 32]) -> Self {
        Sealer {
            cipher: ChaCha20Poly1305::new(Key::from_slice(key)),
        }
    }

    /// `(nonce, ciphertext)` of `plain`, bound to `aad`.
    pub fn seal(&self, aad: &[u8], plain: &[u8]) -> anyhow::Result<(Vec<u8>, Vec<u8>)> {
        let mut nonce = [0u8; 12];
        getrandom::fill(&mut nonce).map_err(|e| anyhow::anyhow!("random nonce: {e}"))?;
        let ciphertext = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| anyhow::anyhow!("encryption failed"))?;
        Ok((nonce.to_vec(), ciphertext))
    }

    /// The plaintext, if `ciphertext` was sealed by this key with `aad`.
    pub fn open(&self, aad: &[u8], nonce: &[u8], ciphertext: &[u8]) -> anyhow::Result<Vec<u8>> {
        if nonce.len() != 12 {
            anyhow::bail!("malformed nonce");
        }
        self.cipher
            .decrypt(
                Nonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| anyhow::anyhow!("does not decrypt (was the encryption key changed?)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_open_only_with_their_key_and_row() {
        let sealer = Sealer::new(&[7; 32]);
        let (nonce, ct) = sealer.seal(b"secret:a", b"value").unwrap();
        assert_ne!(ct, b"value");
        assert_eq!(sealer.open(b"secret:a", &nonce, &ct).unwrap(), b"value");
        assert!(
            sealer.open(b"secret:b", &nonce, &ct).is_err(),
            "another row"
        );
        assert!(
            Sealer::new(&[8; 32])
                .open(b"secret:a", &nonce, &ct)
                .is_err(),
            "another key"
        );
        let (nonce2, _) = sealer.seal(b"secret:a", b"value").unwrap();
        assert_ne!(nonce, nonce2, "a fresh nonce each time");
    }
}
