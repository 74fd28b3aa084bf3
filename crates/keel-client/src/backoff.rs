//! Reconnection backoff per gRPC's connection-backoff specification
//! (`doc/connection-backoff.md` in grpc/grpc): each failed attempt waits longer, by a
//! multiplier with random jitter, up to a maximum; an attempt is given at least the
//! minimum connect timeout.

use std::time::Duration;

use serde::Deserialize;

/// Backoff parameters; the defaults are the specification's.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct BackoffConfig {
    /// Wait after the first failure (1 s).
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Growth per failure (1.6).
    pub multiplier: f64,
    /// Randomization, as a fraction of the wait (0.2: ±20%).
    pub jitter: f64,
    /// Longest wait (120 s).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
    /// Shortest time one connection attempt is given (20 s).
    #[serde(with = "humantime_serde")]
    pub min_connect_timeout: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        Self {
            initial: Duration::from_secs(1),
            multiplier: 1.6,
            jitter: 0.2,
            max: Duration::from_secs(120),
            min_connect_timeout: Duration::from_secs(20),
        }
    }
}

/// The waits of one series of failed attempts.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    config: BackoffConfig,
    /// The un-jittered wait after the next failure.
    current: Duration,
}

impl Backoff {
    /// A fresh series.
    pub(crate) fn new(config: BackoffConfig) -> Self {
        Self {
            current: config.initial,
            config,
        }
    }

    /// The time to wait after this failure, measured from the attempt's start; the next
    /// one will be longer.
    pub(crate) fn next_wait(&mut self) -> Duration {
        let base = self.current;
        let jitter =
            base.as_secs_f64() * self.config.jitter * (keel_core::random::unit() * 2.0 - 1.0);
        self.current = self
            .current
            .mul_f64(self.config.multiplier.max(1.0))
            .min(self.config.max);
        Duration::from_secs_f64((base.as_secs_f64() + jitter).max(0.0))
    }

    /// How long an attempt may take: the wait it would be followed by, but at least the
    /// minimum connect timeout.
    pub(crate) fn connect_timeout(&self) -> Duration {
        self.current.max(self.config.min_connect_timeout)
    }

    /// Starts over (after a connection that worked).
    pub(crate) fn reset(&mut self) {
        self.current = self.config.initial;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_grow_by_the_multiplier_within_the_jitter_up_to_the_maximum() {
        let mut backoff = Backoff::new(BackoffConfig::default());
        let mut expected = 1.0_f64;
        for _ in 0..20 {
            let wait = backoff.next_wait().as_secs_f64();
            assert!(
                wait >= expected * 0.8 - 1e-9 && wait <= expected * 1.2 + 1e-9,
                "{wait} vs {expected}"
            );
            expected = (expected * 1.6).min(120.0);
        }
        assert_eq!(backoff.connect_timeout(), Duration::from_secs(120));
        backoff.reset();
        assert_eq!(backoff.connect_timeout(), Duration::from_secs(20));
        let wait = backoff.next_wait().as_secs_f64();
        assert!((0.8..=1.2).contains(&wait), "{wait}");
    }
}
