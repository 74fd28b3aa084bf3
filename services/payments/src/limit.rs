//! The per-account rate limiter: at most N payments per second per payer, with a burst of N.
//!
//! GCRA (the generic cell rate algorithm): each key keeps one instant, its theoretical
//! arrival time (TAT). With emission interval `T = 1/rate` and a burst of N, the tolerance is
//! `τ = (N - 1) · T`. A request at `now` is admitted when `TAT - τ <= now`, which moves TAT to
//! `max(TAT, now) + T`; otherwise it is told how long to wait. One value
//! per key makes it cheap in process and a single atomic script in Redis.
//!
//! [`Limiter`] is what the service holds: the in-process [`RateLimiter`] (one budget per
//! process) or the [`RedisLimiter`] (one budget shared by every instance, failing open when
//! Redis is unreachable).

mod redis;

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub use self::redis::RedisLimiter;
use crate::redis_conn::Redis;

/// The per-payer limiter the service applies, in process or in Redis.
#[derive(Debug)]
pub enum Limiter {
    /// State in this process: each instance of the service has its own budget.
    Local(RateLimiter),
    /// State in Redis: instances share one budget; admits when Redis is unreachable.
    Redis(RedisLimiter),
}

impl Limiter {
    /// `per_second` (positive) per key, in this process.
    pub fn local(per_second: u32) -> Self {
        Self::Local(RateLimiter::new(per_second))
    }

    /// `per_second` (positive) per key, in `redis`.
    pub fn redis(redis: Redis, per_second: u32) -> Self {
        Self::Redis(RedisLimiter::new(redis, per_second))
    }

    /// Admits one request for `key`, or says how long until one would be.
    pub async fn admit(&self, key: &str) -> Result<(), Duration> {
        match self {
            Self::Local(limiter) => limiter.admit(key),
            Self::Redis(limiter) => limiter.admit(key).await,
        }
    }
}

/// Keys kept before expired ones are swept, bounding memory with many payers.
const SWEEP_AT: usize = 100_000;

/// An in-process GCRA limiter.
#[derive(Debug)]
pub struct RateLimiter {
    interval: Duration,
    tolerance: Duration,
    tats: Mutex<HashMap<String, Instant>>,
}

impl RateLimiter {
    /// `per_second` requests per second per key, bursting up to `per_second` at once.
    pub fn new(per_second: u32) -> Self {
        assert!(per_second > 0, "a limiter needs a positive rate");
        let interval = Duration::from_secs(1) / per_second;
        Self {
            interval,
            tolerance: interval * (per_second - 1),
            tats: Mutex::new(HashMap::new()),
        }
    }

    /// Admits one request for `key` at `now`, or says how long until one would be.
    pub fn admit_at(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let mut tats = self
            .tats
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if tats.len() >= SWEEP_AT {
            tats.retain(|_, tat| *tat > now);
        }
        let tat = tats.get(key).copied().unwrap_or(now).max(now);
        let allowed_from = tat.checked_sub(self.tolerance).unwrap_or(now);
        if allowed_from > now {
            return Err(allowed_from - now);
        }
        tats.insert(key.to_owned(), tat + self.interval);
        Ok(())
    }

    /// Admits one request for `key` now.
    pub fn admit(&self, key: &str) -> Result<(), Duration> {
        self.admit_at(key, Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_to_the_rate_then_refuses_until_time_passes() {
        let limiter = RateLimiter::new(5);
        let t0 = Instant::now();
        for i in 0..5 {
            assert!(limiter.admit_at("a", t0).is_ok(), "request {i}");
        }
        let wait = limiter.admit_at("a", t0).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(201),
            "{wait:?}"
        );
        // Another key is unaffected.
        assert!(limiter.admit_at("b", t0).is_ok());
        // After one interval, one more fits.
        assert!(
            limiter
                .admit_at("a", t0 + Duration::from_millis(200))
                .is_ok()
        );
        assert!(
            limiter
                .admit_at("a", t0 + Duration::from_millis(200))
                .is_err()
        );
    }

    #[test]
    fn sustained_rate_is_respected() {
        let limiter = RateLimiter::new(10);
        let t0 = Instant::now();
        let admitted = (0..1000)
            .filter(|i| {
                limiter
                    .admit_at("a", t0 + Duration::from_millis(i * 10))
                    .is_ok()
            })
            .count();
        // 10 s at 10/s plus the initial burst of 10.
        assert!((100..=111).contains(&admitted), "{admitted}");
    }
}
