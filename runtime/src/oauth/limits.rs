//! Per-address limits of the OAuth endpoints anyone may call without
//! credentials: client registration (`oauth.register_per_hour`) and
//! authorization requests (`oauth.authorize_per_minute`). Each stores a row
//! (a client, a pending request), so an address that floods them is told
//! to wait (429 with `Retry-After`) before anything is stored. Token
//! buckets (governor's GCRA): a burst of the hourly or per-minute amount,
//! then that rate.
//!
//! The counts live in this node's memory, keyed by the TCP peer's address
//! (behind a reverse proxy, the proxy's: size the limits for it).

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Addresses remembered before idle ones are forgotten.
const MAX_TRACKED: usize = 100_000;

/// One endpoint's limit per address.
#[derive(Clone)]
struct Limit {
    limiter: Arc<DefaultKeyedRateLimiter<IpAddr>>,
}

impl Limit {
    fn new(quota: Option<Quota>) -> Option<Limit> {
        quota.map(|q| Limit {
            limiter: Arc::new(RateLimiter::keyed(q)),
        })
    }

    /// `Err(wait)` when `address` must wait.
    fn check(&self, address: IpAddr) -> Result<(), Duration> {
        if self.limiter.len() > MAX_TRACKED {
            self.limiter.retain_recent();
        }
        self.limiter
            .check_key(&address)
            .map_err(|not_until| not_until.wait_time_from(DefaultClock::default().now()))
    }
}

/// The per-address limits of the unauthenticated endpoints.
#[derive(Clone)]
pub struct AddressLimits {
    register: Option<Limit>,
    authorize: Option<Limit>,
}

impl AddressLimits {
    /// Limits of `register_per_hour` registrations and
    /// `authorize_per_minute` authorization requests per address (0: none).
    pub fn new(register_per_hour: u32, authorize_per_minute: u32) -> AddressLimits {
        AddressLimits {
            register: Limit::new(NonZeroU32::new(register_per_hour).map(Quota::per_hour)),
            authorize: Limit::new(NonZeroU32::new(authorize_per_minute).map(Quota::per_minute)),
        }
    }

    /// Whether `address` may register a client now (`Err`: how long to wait).
    pub fn register(&self, address: Option<IpAddr>) -> Result<(), Duration> {
        match (&self.register, address) {
            (Some(limit), Some(address)) => limit.check(address),
            _ => Ok(()),
        }
    }

    /// Whether `address` may start an authorization now.
    pub fn authorize(&self, address: Option<IpAddr>) -> Result<(), Duration> {
        match (&self.authorize, address) {
            (Some(limit), Some(address)) => limit.check(address),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_past_its_burst_waits_and_others_do_not() {
        let limits = AddressLimits::new(3, 0);
        let one: IpAddr = "192.0.2.1".parse().unwrap();
        let two: IpAddr = "192.0.2.2".parse().unwrap();
        for _ in 0..3 {
            assert!(limits.register(Some(one)).is_ok());
        }
        let wait = limits.register(Some(one)).unwrap_err();
        assert!(wait > Duration::from_secs(60) && wait <= Duration::from_secs(20 * 60));
        assert!(limits.register(Some(two)).is_ok());
        // 0 is no limit.
        for _ in 0..100 {
            assert!(limits.authorize(Some(one)).is_ok());
        }
    }
}
