//! The server's long-lived secrets: the JWT signing secret and the key that
//! encrypts secrets at rest.
//!
//! Each comes from the configuration (base64, for clusters whose nodes must
//! share them) or from a file under `data_dir/keys/`, generated on first start
//! with mode 0600. A key file that exists but is malformed stops the server: a
//! silently regenerated key would log every user out and orphan every
//! encrypted secret.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Context};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::config::Config;

/// The secrets loaded at start.
#[derive(Clone)]
pub struct Keys {
    /// HMAC secret for access tokens (HS256).
    pub jwt_secret: Vec<u8>,
    /// 256-bit key for encrypting secrets at rest.
    pub encryption_key: [u8; 32],
}

impl std::fmt::Debug for Keys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Keys { .. }")
    }
}

impl Keys {
    /// Loads both keys from the configuration or the data directory, creating
    /// missing key files.
    pub fn load_or_create(config: &Config) -> anyhow::Result<Keys> {
        let dir = config.data_dir.join("keys");
        let jwt_secret = match &config.auth.jwt_secret {
            Some(b64) => decode(b64, "auth.jwt_secret")?,
            None => file_key(&dir.join("jwt.key"), 64)?,
        };
        if jwt_secret.len() < 32 {
            bail!("auth.jwt_secret: must decode to at least 32 bytes");
        }
        let encryption = match &config.auth.encryption_key {
            Some(b64) => decode(b64, "auth.encryption_key")?,
            None => file_key(&dir.join("encryption.key"), 32)?,
        };
        let encryption_key: [u8; 32] = encryption
            .try_into()
            .map_err(|_| anyhow::anyhow!("auth.encryption_key: must decode to exactly 32 bytes"))?;
        Ok(Keys {
            jwt_secret,
            encryption_key,
        })
    }
}

fn decode(b64: &str, setting: &str) -> anyhow::Result<Vec<u8>> {
    STANDARD
        .decode(b64.trim())
        .with_context(|| format!("{setting}: not valid base64"))
}

/// Reads a base64 key file, or creates it with `len` random bytes and mode 0600.
fn file_key(path: &Path, len: usize) -> anyhow::Result<Vec<u8>> {
    if path.exists() {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading key file {}", path.display()))?;
        let key = STANDARD
            .decode(text.trim())
            .with_context(|| format!("key file {} is not valid base64", path.display()))?;
        if key.len() != len {
            bail!(
                "key file {} holds {} bytes, expected {len}",
                path.display(),
                key.len()
            );
        }
        return Ok(key);
    }
    let dir = path.parent().expect("key files live in a directory");
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restricting {}", dir.display()))?;
    }
    let mut key = vec![0u8; len];
    getrandom::fill(&mut key).map_err(|e| anyhow::anyhow!("no system randomness: {e}"))?;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("creating key file {}", path.display()))?;
    file.write_all(STANDARD.encode(&key).as_bytes())?;
    file.sync_all()?;
    Ok(key)
}
