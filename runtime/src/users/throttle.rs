//! Login throttling: failed password logins slow down further attempts on
//! the same account and from the same address, with a delay that doubles
//! with every failure past a free allowance, so that guessing passwords
//! online costs an attacker hours, while a user who mistypes a few times
//! never notices. A locked key answers 429 with `Retry-After` before the
//! password is even checked; a success clears the account's failures.
//!
//! The counts live in this node's memory: in a cluster each node throttles
//! on its own (an attacker spread over `n` nodes gets `n` times the
//! attempts), and a restart forgets them.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

/// Login throttling (`auth.login_throttle`).
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(default)]
pub struct ThrottleConfig {
    /// Failed logins on one account before the first delay.
    pub account_free_failures: u32,
    /// Failed logins from one address before the first delay.
    pub address_free_failures: u32,
    /// The first delay, in seconds; each further failure doubles it.
    pub base_delay_secs: u64,
    /// The longest delay, in seconds.
    pub max_delay_secs: u64,
    /// Failures older than this (in seconds) are forgotten.
    pub window_secs: u64,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            account_free_failures: 5,
            address_free_failures: 50,
            base_delay_secs: 1,
            max_delay_secs: 15 * 60,
            window_secs: 3600,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Key {
    Account(String),
    Address(IpAddr),
}

#[derive(Debug, Clone, Copy)]
struct Failures {
    count: u32,
    last: Instant,
    locked_until: Option<Instant>,
}

/// Failed-login counts per account and per address.
#[derive(Debug, Clone, Default)]
pub struct LoginThrottle {
    config: ThrottleConfig,
    failures: Arc<Mutex<HashMap<Key, Failures>>>,
}

impl LoginThrottle {
    /// A throttle with `config`.
    pub fn new(config: ThrottleConfig) -> LoginThrottle {
        LoginThrottle {
            config,
            failures: Arc::default(),
        }
    }

    fn keys(email: &str, address: Option<IpAddr>) -> Vec<Key> {
        let mut keys = vec![Key::Account(email.to_ascii_lowercase())];
        keys.extend(address.map(Key::Address));
        keys
    }

    /// How long the caller must wait before trying, if at all.
    pub fn wait(&self, email: &str, address: Option<IpAddr>, now: Instant) -> Option<Duration> {
        let failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        Self::keys(email, address)
            .iter()
            .filter_map(|k| failures.get(k)?.locked_until)
            .filter(|until| *until > now)
            .map(|until| until - now)
            .max()
    }

    /// Records a failed attempt.
    pub fn failed(&self, email: &str, address: Option<IpAddr>, now: Instant) {
        let window = Duration::from_secs(self.config.window_secs);
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        if failures.len() > 100_000 {
            failures.retain(|_, f| now.duration_since(f.last) < window);
        }
        for key in Self::keys(email, address) {
            let free = match key {
                Key::Account(_) => self.config.account_free_failures,
                Key::Address(_) => self.config.address_free_failures,
            };
            let entry = failures.entry(key).or_insert(Failures {
                count: 0,
                last: now,
                locked_until: None,
            });
            if now.duration_since(entry.last) >= window {
                entry.count = 0;
            }
            entry.count += 1;
            entry.last = now;
            if entry.count > free {
                let doublings = (entry.count - free - 1).min(20);
                let delay = self
                    .config
                    .base_delay_secs
                    .saturating_mul(1 << doublings)
                    .min(self.config.max_delay_secs);
                entry.locked_until = Some(now + Duration::from_secs(delay));
            }
        }
    }

    /// Clears the account's failures after a successful login (the
    /// address's stay: one right password does not vouch for the others).
    pub fn succeeded(&self, email: &str) {
        let mut failures = self.failures.lock().unwrap_or_else(|e| e.into_inner());
        failures.remove(&Key::Account(email.to_ascii_lowercase()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_double_after_the_free_failures_and_success_clears_them() {
        let throttle = LoginThrottle::new(ThrottleConfig {
            account_free_failures: 2,
            address_free_failures: 100,
            base_delay_secs: 1,
            max_delay_secs: 4,
            window_secs: 3600,
        });
        let ip: IpAddr = "203.0.113.5".parse().unwrap();
        let t0 = Instant::now();
        throttle.failed("a@x", Some(ip), t0);
        throttle.failed("A@X", Some(ip), t0);
        assert_eq!(throttle.wait("a@x", Some(ip), t0), None, "two are free");
        throttle.failed("a@x", Some(ip), t0);
        assert_eq!(throttle.wait("a@x", None, t0), Some(Duration::from_secs(1)));
        throttle.failed("a@x", Some(ip), t0);
        assert_eq!(throttle.wait("a@x", None, t0), Some(Duration::from_secs(2)));
        for _ in 0..10 {
            throttle.failed("a@x", Some(ip), t0);
        }
        assert_eq!(
            throttle.wait("a@x", None, t0),
            Some(Duration::from_secs(4)),
            "capped"
        );
        assert_eq!(
            throttle.wait("a@x", None, t0 + Duration::from_secs(5)),
            None
        );
        assert_eq!(throttle.wait("b@x", None, t0), None, "another account");
        throttle.succeeded("a@x");
        assert_eq!(throttle.wait("a@x", None, t0), None);
    }

    #[test]
    fn one_address_trying_many_accounts_is_slowed_too() {
        let throttle = LoginThrottle::new(ThrottleConfig {
            address_free_failures: 3,
            ..ThrottleConfig::default()
        });
        let ip: IpAddr = "198.51.100.7".parse().unwrap();
        let t0 = Instant::now();
        for n in 0..4 {
            throttle.failed(&format!("user{n}@x"), Some(ip), t0);
        }
        assert!(throttle.wait("someone-else@x", Some(ip), t0).is_some());
        assert!(throttle.wait("someone-else@x", None, t0).is_none());
    }
}
