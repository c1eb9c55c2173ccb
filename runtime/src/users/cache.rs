//! Recently checked credentials. A client that sends one API key (or one
//! access token) many times a second, as MCP clients and scripts do, costs one
//! database read per `ttl` instead of one per request.
//!
//! Changes made through this process (disabling a user, changing a role,
//! deleting a key) clear the cache at once. Changes made elsewhere (another
//! node of a cluster, `orchestra user` commands) take effect within `ttl`.
//! Failed lookups are never cached.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use uuid::Uuid;

use super::repo::ApiKeyHolder;

/// Most entries kept per kind; a full map is emptied rather than managed.
const MAX_ENTRIES: usize = 10_000;

/// What authentication reads, by API key digest and by user id, each with
/// the time it was read.
#[derive(Default)]
struct Entries {
    keys: HashMap<String, (Instant, ApiKeyHolder)>,
    users: HashMap<Uuid, (Instant, CachedUser)>,
}

/// A user's role, whether the account is active, and its token generation.
pub(crate) type CachedUser = (String, bool, i64);

/// Credentials checked less than `ttl` ago.
#[derive(Clone)]
pub(crate) struct AuthCache {
    ttl: Duration,
    entries: Arc<Mutex<Entries>>,
}

/// The value under `key` if it was read less than `ttl` ago.
fn fresh<K: Eq + Hash, V: Clone>(
    map: &HashMap<K, (Instant, V)>,
    key: &K,
    ttl: Duration,
) -> Option<V> {
    map.get(key)
        .filter(|(at, _)| at.elapsed() < ttl)
        .map(|(_, v)| v.clone())
}

fn insert<K: Eq + Hash, V>(
    map: &mut HashMap<K, (Instant, V)>,
    key: K,
    value: V,
    at: Instant,
    ttl: Duration,
) {
    if map.len() >= MAX_ENTRIES {
        map.retain(|_, (at, _)| at.elapsed() < ttl);
        if map.len() >= MAX_ENTRIES {
            map.clear();
        }
    }
    map.insert(key, (at, value));
}

impl AuthCache {
    /// A cache whose entries live `ttl`; a zero `ttl` caches nothing.
    pub fn new(ttl: Duration) -> AuthCache {
        AuthCache {
            ttl,
            entries: Arc::default(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The API key whose secret digests to `digest`, if checked recently.
    pub fn api_key(&self, digest: &str) -> Option<ApiKeyHolder> {
        fresh(&self.lock().keys, &digest.to_owned(), self.ttl)
    }

    /// Remembers an API key read at `read_at` (taken before the read, so that
    /// a change racing with it is never hidden for longer than `ttl`).
    pub fn put_api_key(&self, digest: &str, holder: ApiKeyHolder, read_at: Instant) {
        if !self.ttl.is_zero() {
            insert(
                &mut self.lock().keys,
                digest.to_owned(),
                holder,
                read_at,
                self.ttl,
            );
        }
    }

    /// Records that the key's `last_used_at` was just written, keeping the
    /// time of the read (the role and status are no fresher).
    pub fn touched(&self, digest: &str, at: DateTime<Utc>) {
        if let Some((_, holder)) = self.lock().keys.get_mut(digest) {
            holder.last_used_at = Some(at);
        }
    }

    /// A user's role and status, if read recently.
    pub fn user(&self, id: Uuid) -> Option<CachedUser> {
        fresh(&self.lock().users, &id, self.ttl)
    }

    /// Remembers a user's role and status, read at `read_at`.
    pub fn put_user(&self, id: Uuid, user: CachedUser, read_at: Instant) {
        if !self.ttl.is_zero() {
            insert(&mut self.lock().users, id, user, read_at, self.ttl);
        }
    }

    /// Forgets everything: a user or key changed.
    pub fn clear(&self) {
        *self.lock() = Entries::default();
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
        cache.put_user(h.user_id, ("admin".to_owned(), false, 3), Instant::now());
        assert_eq!(cache.user(h.user_id), Some(("admin".to_owned(), false, 3)));
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
