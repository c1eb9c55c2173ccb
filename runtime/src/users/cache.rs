//! Recently checked credentials. A client that sends one API key (or one
//! access token) many times a second, as MCP clients and scripts do, costs one
//! database read per `ttl` instead of one per request.
//!
//! Changes made through this process (disabling a user, changing a role,
//! deleting a key) clear the cache at once. Changes made elsewhere (another
//! node of a cluster, `orchestra user` commands) take effect within `ttl`.
//! Failed lookups are never cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::repo::ApiKeyHolder;

/// Most entries kept; a full cache is emptied rather than managed.
const MAX_ENTRIES: usize = 10_000;

#[derive(Clone, PartialEq, Eq, Hash)]
enum Key {
    /// An API key, by the digest of its secret.
    ApiKey(String),
    /// The holder of an access token, by user id.
    User(Uuid),
}

/// What authentication read of a user (and key).
#[derive(Clone)]
pub(crate) enum Cached {
    ApiKey(ApiKeyHolder),
    User { role: String, is_active: bool },
}

/// Credentials checked less than `ttl` ago.
#[derive(Clone)]
pub(crate) struct AuthCache {
    ttl: Duration,
    entries: Arc<Mutex<HashMap<Key, (Instant, Cached)>>>,
}

impl AuthCache {
    /// A cache whose entries live `ttl`; a zero `ttl` caches nothing.
    pub fn new(ttl: Duration) -> AuthCache {
        AuthCache {
            ttl,
            entries: Arc::default(),
        }
    }

    fn get(&self, key: &Key) -> Option<Cached> {
        if self.ttl.is_zero() {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        match entries.get(key) {
            Some((at, cached)) if at.elapsed() < self.ttl => Some(cached.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    fn put(&self, key: Key, value: Cached, at: Instant) {
        if self.ttl.is_zero() {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if entries.len() >= MAX_ENTRIES {
            entries.retain(|_, (at, _)| at.elapsed() < self.ttl);
            if entries.len() >= MAX_ENTRIES {
                entries.clear();
            }
        }
        entries.insert(key, (at, value));
    }

    /// The API key whose secret digests to `digest`, if checked recently.
    pub fn api_key(&self, digest: &str) -> Option<ApiKeyHolder> {
        match self.get(&Key::ApiKey(digest.to_owned()))? {
            Cached::ApiKey(holder) => Some(holder),
            Cached::User { .. } => None,
        }
    }

    /// Remembers an API key read at `read_at` (taken before the read, so that
    /// a change racing with it is never hidden for longer than `ttl`).
    pub fn put_api_key(&self, digest: &str, holder: ApiKeyHolder, read_at: Instant) {
        self.put(
            Key::ApiKey(digest.to_owned()),
            Cached::ApiKey(holder),
            read_at,
        );
    }

    /// Records that the key's `last_used_at` was just written, keeping the
    /// time of the read (the role and status are no fresher).
    pub fn touched(&self, digest: &str, at: DateTime<Utc>) {
        let mut entries = self.entries.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((_, Cached::ApiKey(holder))) = entries.get_mut(&Key::ApiKey(digest.to_owned()))
        {
            holder.last_used_at = Some(at);
        }
    }

    /// A user's role and status, if read recently.
    pub fn user(&self, id: Uuid) -> Option<(String, bool)> {
        match self.get(&Key::User(id))? {
            Cached::User { role, is_active } => Some((role, is_active)),
            Cached::ApiKey(_) => None,
        }
    }

    /// Remembers a user's role and status, read at `read_at`.
    pub fn put_user(&self, id: Uuid, role: String, is_active: bool, read_at: Instant) {
        self.put(Key::User(id), Cached::User { role, is_active }, read_at);
    }

    /// Forgets everything: a user or key changed.
    pub fn clear(&self) {
        self.entries
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder() -> ApiKeyHolder {
        ApiKeyHolder {
            id: Uuid::now_v7(),
            user_id: Uuid::now_v7(),
            expires_at: None,
            last_used_at: None,
            role: "user".to_owned(),
            is_active: true,
        }
    }

    #[test]
    fn entries_expire_and_clear() {
        let cache = AuthCache::new(Duration::from_millis(50));
        let h = holder();
        cache.put_api_key("d1", h.clone(), Instant::now());
        assert_eq!(cache.api_key("d1").map(|k| k.id), Some(h.id));
        assert!(cache.api_key("d2").is_none());
        cache.put_api_key("old", h.clone(), Instant::now() - Duration::from_millis(60));
        assert!(cache.api_key("old").is_none(), "read longer than ttl ago");
        cache.put_user(h.user_id, "admin".to_owned(), false, Instant::now());
        assert_eq!(cache.user(h.user_id), Some(("admin".to_owned(), false)));
        cache.clear();
        assert!(cache.api_key("d1").is_none());
        assert!(cache.user(h.user_id).is_none());
    }

    #[test]
    fn zero_ttl_caches_nothing() {
        let cache = AuthCache::new(Duration::ZERO);
        cache.put_api_key("d", holder(), Instant::now());
        assert!(cache.api_key("d").is_none());
    }
}
