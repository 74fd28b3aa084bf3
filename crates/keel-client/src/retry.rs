//! Retry and hedging policies and retry throttling, per gRPC's retry design (gRFC A6).

use std::sync::Mutex;
use std::time::Duration;

use tonic::Code;

/// Retries after a retryable status, with exponential backoff and full jitter.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct RetryPolicy {
    /// Attempts in all, the first included (2..=5).
    pub(crate) max_attempts: u32,
    pub(crate) initial_backoff: Duration,
    pub(crate) max_backoff: Duration,
    pub(crate) multiplier: f64,
    /// Codes that may be retried.
    pub(crate) retryable: Vec<Code>,
}

impl RetryPolicy {
    /// The wait before retry number `retry` (1 for the first retry): uniformly random up
    /// to `min(initial · multiplier^(retry-1), max)`.
    pub(crate) fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.initial_backoff.as_secs_f64()
            * self.multiplier.powi(retry.saturating_sub(1) as i32);
        let ceiling = ceiling.min(self.max_backoff.as_secs_f64());
        Duration::from_secs_f64(ceiling * keel_core::random::unit())
    }
}

/// Sends further attempts while earlier ones are outstanding, `delay` apart.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct HedgingPolicy {
    /// Attempts in all, the first included (2..=5).
    pub(crate) max_attempts: u32,
    /// Time between attempts.
    pub(crate) delay: Duration,
    /// Codes after which the other attempts go on; any other status ends the call.
    pub(crate) non_fatal: Vec<Code>,
}

/// The channel's retry budget: a failure costs a token, a success gives back
/// `token_ratio`; retries and hedges stop while the tokens are at or below half.
#[derive(Debug)]
pub(crate) struct Throttle {
    max_tokens: f64,
    token_ratio: f64,
    tokens: Mutex<f64>,
}

impl Throttle {
    pub(crate) fn new(max_tokens: f64, token_ratio: f64) -> Self {
        Self {
            max_tokens,
            token_ratio,
            tokens: Mutex::new(max_tokens),
        }
    }

    /// Records a failed attempt (a retryable or non-fatal code).
    pub(crate) fn failure(&self) {
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *tokens = (*tokens - 1.0).max(0.0);
    }

    /// Records a successful call.
    pub(crate) fn success(&self) {
        let mut tokens = self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        *tokens = (*tokens + self.token_ratio).min(self.max_tokens);
    }

    /// True while more attempts are allowed.
    pub(crate) fn allows(&self) -> bool {
        *self
            .tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            > self.max_tokens / 2.0
    }
}

/// What the server's `grpc-retry-pushback-ms` says: `None` without the header, `Some(None)`
/// for "do not retry" (negative or malformed), `Some(Some(wait))` otherwise.
pub(crate) fn pushback(headers: &http::HeaderMap) -> Option<Option<Duration>> {
    let value = headers.get("grpc-retry-pushback-ms")?;
    Some(
        std::str::from_utf8(value.as_bytes())
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
            .map(Duration::from_millis),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_below_the_growing_ceiling() {
        let policy = RetryPolicy {
            max_attempts: 5,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(300),
            multiplier: 2.0,
            retryable: vec![Code::Unavailable],
        };
        for (retry, ceiling) in [(1, 100), (2, 200), (3, 300), (4, 300)] {
            let waits: Vec<Duration> = (0..200).map(|_| policy.backoff(retry)).collect();
            assert!(waits.iter().all(|w| *w <= Duration::from_millis(ceiling)));
            assert!(
                waits
                    .iter()
                    .any(|w| *w > Duration::from_millis(ceiling * 3 / 4))
            );
        }
    }

    #[test]
    fn throttling_stops_retries_below_half_and_recovers_with_successes() {
        let throttle = Throttle::new(10.0, 0.5);
        for _ in 0..5 {
            assert!(throttle.allows());
            throttle.failure();
        }
        assert!(
            !throttle.allows(),
            "5 of 10 tokens left: at half, no retries"
        );
        throttle.success();
        assert!(throttle.allows());
    }

    #[test]
    fn pushback_reads_milliseconds_and_refusals() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(pushback(&headers), None);
        headers.insert("grpc-retry-pushback-ms", "250".parse().unwrap());
        assert_eq!(pushback(&headers), Some(Some(Duration::from_millis(250))));
        headers.insert("grpc-retry-pushback-ms", "-1".parse().unwrap());
        assert_eq!(pushback(&headers), Some(None));
    }
}
