//! [`Timings`]: how long each device request took, from its first publish to its first
//! outcome, and the rate at which outcomes came: what `payments-devices` reports for the
//! bridge benchmark.

use hdrhistogram::Histogram;
use serde::Serialize;
use tokio::time::Instant;

/// Publish-to-outcome latencies and the span of the run, fed by the tally.
#[derive(Debug)]
pub struct Timings {
    first_publish: Vec<Option<Instant>>,
    latency_us: Histogram<u64>,
    started: Option<Instant>,
    last_outcome: Option<Instant>,
}

/// The figures a summary reports.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct TimingSummary {
    /// First outcomes per second, from the first publish to the last first outcome.
    pub outcomes_per_s: f64,
    /// Median publish-to-outcome latency, in milliseconds.
    pub p50_ms: f64,
    /// 90th percentile, in milliseconds.
    pub p90_ms: f64,
    /// 99th percentile, in milliseconds.
    pub p99_ms: f64,
    /// The slowest, in milliseconds.
    pub max_ms: f64,
}

impl Timings {
    /// Nothing timed yet, for `requests` requests.
    pub fn new(requests: usize) -> Self {
        Self {
            first_publish: vec![None; requests],
            // One microsecond to ten minutes, three significant digits.
            latency_us: Histogram::new_with_bounds(1, 600_000_000, 3)
                .expect("constant bounds are valid"),
            started: None,
            last_outcome: None,
        }
    }

    /// Request `request` is being published (only its first publish counts).
    pub fn published(&mut self, request: usize, now: Instant) {
        self.started.get_or_insert(now);
        self.first_publish[request].get_or_insert(now);
    }

    /// Request `request` got its first outcome.
    pub fn answered(&mut self, request: usize, now: Instant) {
        self.last_outcome = Some(now);
        if let Some(published) = self.first_publish[request] {
            let micros = now.saturating_duration_since(published).as_micros();
            self.latency_us
                .saturating_record(u64::try_from(micros).unwrap_or(u64::MAX));
        }
    }

    /// The figures, or `None` before any outcome.
    pub fn summary(&self) -> Option<TimingSummary> {
        let (started, last) = (self.started?, self.last_outcome?);
        let outcomes = self.latency_us.len();
        let span = last.saturating_duration_since(started).as_secs_f64();
        let ms = |quantile: f64| self.latency_us.value_at_quantile(quantile) as f64 / 1000.0;
        Some(TimingSummary {
            outcomes_per_s: if span > 0.0 {
                outcomes as f64 / span
            } else {
                0.0
            },
            p50_ms: ms(0.5),
            p90_ms: ms(0.9),
            p99_ms: ms(0.99),
            max_ms: self.latency_us.max() as f64 / 1000.0,
        })
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn latency_runs_from_the_first_publish_to_the_first_outcome() {
        let start = Instant::now();
        let mut timings = Timings::new(3);
        assert_eq!(timings.summary(), None, "nothing answered yet");
        timings.published(0, start);
        timings.published(1, start + Duration::from_millis(10));
        // A resend does not restart the clock.
        timings.published(0, start + Duration::from_millis(500));
        timings.answered(0, start + Duration::from_millis(100));
        timings.answered(1, start + Duration::from_millis(1010));
        let summary = timings.summary().unwrap();
        assert!((summary.p50_ms - 100.0).abs() < 0.5, "{summary:?}");
        assert!((summary.max_ms - 1000.0).abs() < 1.0, "{summary:?}");
        // Two outcomes over 1.01 s.
        assert!(
            (summary.outcomes_per_s - 2.0 / 1.01).abs() < 0.01,
            "{summary:?}"
        );
    }

    #[test]
    fn an_outcome_for_a_request_never_published_counts_no_latency() {
        let start = Instant::now();
        let mut timings = Timings::new(2);
        timings.published(0, start);
        timings.answered(1, start + Duration::from_millis(5));
        assert_eq!(timings.latency_us.len(), 0);
    }
}
