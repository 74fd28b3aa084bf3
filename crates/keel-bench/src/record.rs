//! What each worker collects while it calls, in bounded memory: an HDR histogram of
//! latencies, counts by status code, the most frequent error messages, and per-second
//! counts for latency over time. Workers record apart and are merged at the end.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;
use tonic::{Code, Status};

/// Distinct error messages kept; the rest are counted together.
pub const MAX_ERROR_MESSAGES: usize = 64;

/// The longest latency the histogram holds exactly; longer ones are recorded as this.
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// Counts of one second of the run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Second {
    /// Calls that ended in this second.
    pub calls: u64,
    /// How many of them failed.
    pub errors: u64,
    /// Their latencies added up, in microseconds.
    pub total_us: u64,
    /// The slowest of them, in microseconds.
    pub max_us: u64,
}

/// One worker's record, or several merged.
#[derive(Debug, Clone)]
pub struct Record {
    /// Latencies in microseconds, 3 significant digits.
    pub latencies: Histogram<u64>,
    /// Calls by status code.
    pub codes: BTreeMap<i32, u64>,
    /// Error messages and how often each was seen.
    pub errors: HashMap<String, u64>,
    /// Errors whose message did not fit in [`MAX_ERROR_MESSAGES`].
    pub other_errors: u64,
    /// Per second of the run, by when each call ended.
    pub seconds: Vec<Second>,
    /// When the last call ended, from the start.
    pub last_end: Duration,
}

impl Default for Record {
    fn default() -> Self {
        Self::new()
    }
}

impl Record {
    /// An empty record.
    pub fn new() -> Self {
        Self {
            latencies: Histogram::new_with_bounds(1, MAX_LATENCY.as_micros() as u64, 3)
                .expect("static histogram bounds are valid"),
            codes: BTreeMap::new(),
            errors: HashMap::new(),
            other_errors: 0,
            seconds: Vec::new(),
            last_end: Duration::ZERO,
        }
    }

    /// Records a call that ended `end` after the start and took `latency`.
    pub fn record(&mut self, end: Duration, latency: Duration, result: Result<(), Status>) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_LATENCY.as_micros() as u64);
        self.latencies.saturating_record(micros);
        let code = match &result {
            Ok(()) => Code::Ok,
            Err(status) => status.code(),
        };
        *self.codes.entry(code as i32).or_default() += 1;
        if let Err(status) = result {
            self.error(format!("{:?}: {}", status.code(), status.message()), 1);
        }
        let index = end.as_secs() as usize;
        if self.seconds.len() <= index {
            self.seconds.resize(index + 1, Second::default());
        }
        let second = &mut self.seconds[index];
        second.calls += 1;
        second.errors += u64::from(code != Code::Ok);
        second.total_us += micros;
        second.max_us = second.max_us.max(micros);
        self.last_end = self.last_end.max(end);
    }

    fn error(&mut self, message: String, count: u64) {
        if let Some(seen) = self.errors.get_mut(&message) {
            *seen += count;
        } else if self.errors.len() < MAX_ERROR_MESSAGES {
            self.errors.insert(message, count);
        } else {
            self.other_errors += count;
        }
    }

    /// Adds `other` to this record.
    pub fn merge(&mut self, other: Record) {
        // Both histograms have the same bounds, so adding cannot fail.
        let _ = self.latencies.add(&other.latencies);
        for (code, count) in other.codes {
            *self.codes.entry(code).or_default() += count;
        }
        for (message, count) in other.errors {
            self.error(message, count);
        }
        self.other_errors += other.other_errors;
        if self.seconds.len() < other.seconds.len() {
            self.seconds.resize(other.seconds.len(), Second::default());
        }
        for (mine, theirs) in self.seconds.iter_mut().zip(other.seconds) {
            mine.calls += theirs.calls;
            mine.errors += theirs.errors;
            mine.total_us += theirs.total_us;
            mine.max_us = mine.max_us.max(theirs.max_us);
        }
        self.last_end = self.last_end.max(other.last_end);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merged_records_add_up() {
        let mut a = Record::new();
        a.record(Duration::from_millis(100), Duration::from_millis(2), Ok(()));
        a.record(
            Duration::from_millis(1500),
            Duration::from_millis(9),
            Err(Status::unavailable("down")),
        );
        let mut b = Record::new();
        b.record(
            Duration::from_millis(2500),
            Duration::from_millis(4),
            Err(Status::unavailable("down")),
        );
        a.merge(b);
        assert_eq!(a.latencies.len(), 3);
        assert_eq!(a.codes[&(Code::Ok as i32)], 1);
        assert_eq!(a.codes[&(Code::Unavailable as i32)], 2);
        assert_eq!(a.errors["Unavailable: down"], 2);
        assert_eq!(
            a.seconds,
            [
                Second {
                    calls: 1,
                    errors: 0,
                    total_us: 2000,
                    max_us: 2000
                },
                Second {
                    calls: 1,
                    errors: 1,
                    total_us: 9000,
                    max_us: 9000
                },
                Second {
                    calls: 1,
                    errors: 1,
                    total_us: 4000,
                    max_us: 4000
                },
            ]
        );
        assert_eq!(a.last_end, Duration::from_millis(2500));
    }

    #[test]
    fn error_messages_are_bounded() {
        let mut record = Record::new();
        for n in 0..MAX_ERROR_MESSAGES + 10 {
            record.record(
                Duration::ZERO,
                Duration::from_micros(5),
                Err(Status::internal(format!("e{n}"))),
            );
        }
        assert_eq!(record.errors.len(), MAX_ERROR_MESSAGES);
        assert_eq!(record.other_errors, 10);
    }

    #[test]
    fn latencies_beyond_the_bound_are_kept_at_the_bound() {
        let mut record = Record::new();
        record.record(Duration::ZERO, Duration::from_secs(7200), Ok(()));
        assert!(record.latencies.max() >= MAX_LATENCY.as_micros() as u64 * 999 / 1000);
    }
}
