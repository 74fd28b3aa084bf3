//! What each worker collects while it calls, in bounded memory: an HDR histogram of
//! latencies, counts by outcome (a gRPC status code, or a REST call's HTTP status), the most
//! frequent error messages, and per-second counts for latency over time. Workers record apart
//! and are merged at the end.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use hdrhistogram::Histogram;
use tonic::{Code, Status};

/// Distinct error messages kept; the rest are counted together.
pub const MAX_ERROR_MESSAGES: usize = 64;

/// The longest latency the histogram holds exactly; longer ones are recorded as this.
pub const MAX_LATENCY: Duration = Duration::from_secs(3600);

/// How a call ended, as counted: its gRPC status code (`Grpc(0)` is OK, for REST calls too),
/// or the HTTP status of a REST call answered outside 2xx.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Outcome {
    /// A gRPC status code: the server's, or the generator's for a broken stream or a missed
    /// deadline.
    Grpc(i32),
    /// A REST answer outside 2xx.
    Http(u16),
}

impl Outcome {
    /// A successful call.
    pub const OK: Self = Self::Grpc(Code::Ok as i32);
}

/// Why a call failed.
#[derive(Debug, Clone)]
pub enum Failure {
    /// A gRPC status: the server's, or the generator's (the stream broke, the deadline passed).
    Status(Status),
    /// A REST call answered outside 2xx, with the start of the answer's body.
    Http {
        /// The HTTP status.
        status: u16,
        /// The body's first bytes, as text.
        body: String,
    },
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl Failure {
    /// What the record counts the failure as.
    pub fn outcome(&self) -> Outcome {
        match self {
            Self::Status(status) => Outcome::Grpc(status.code() as i32),
            Self::Http { status, .. } => Outcome::Http(*status),
        }
    }

    /// The message the report lists: `Code: message` or `HTTP 409: body`.
    pub fn message(&self) -> String {
        match self {
            Self::Status(status) => format!("{:?}: {}", status.code(), status.message()),
            Self::Http { status, body } => format!("HTTP {status}: {body}"),
        }
    }
}

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
    /// Calls by outcome.
    pub codes: BTreeMap<Outcome, u64>,
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
    pub fn record(&mut self, end: Duration, latency: Duration, result: Result<(), Failure>) {
        let micros = (latency.as_micros() as u64).clamp(1, MAX_LATENCY.as_micros() as u64);
        self.latencies.saturating_record(micros);
        let outcome = match &result {
            Ok(()) => Outcome::OK,
            Err(failure) => failure.outcome(),
        };
        *self.codes.entry(outcome).or_default() += 1;
        if let Err(failure) = result {
            self.error(failure.message(), 1);
        }
        let index = end.as_secs() as usize;
        if self.seconds.len() <= index {
            self.seconds.resize(index + 1, Second::default());
        }
        let second = &mut self.seconds[index];
        second.calls += 1;
        second.errors += u64::from(outcome != Outcome::OK);
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
            Err(Status::unavailable("down").into()),
        );
        let mut b = Record::new();
        b.record(
            Duration::from_millis(2500),
            Duration::from_millis(4),
            Err(Status::unavailable("down").into()),
        );
        a.merge(b);
        assert_eq!(a.latencies.len(), 3);
        assert_eq!(a.codes[&Outcome::OK], 1);
        assert_eq!(a.codes[&Outcome::Grpc(Code::Unavailable as i32)], 2);
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
    fn rest_failures_are_counted_by_http_status() {
        let mut record = Record::new();
        let conflict = || Failure::Http {
            status: 409,
            body: "{\"error\":\"conflict\"}".into(),
        };
        record.record(Duration::ZERO, Duration::from_micros(5), Ok(()));
        record.record(Duration::ZERO, Duration::from_micros(5), Err(conflict()));
        record.record(Duration::ZERO, Duration::from_micros(5), Err(conflict()));
        assert_eq!(record.codes[&Outcome::OK], 1);
        assert_eq!(record.codes[&Outcome::Http(409)], 2);
        assert_eq!(record.errors["HTTP 409: {\"error\":\"conflict\"}"], 2);
        assert_eq!(record.seconds[0].errors, 2);
    }

    #[test]
    fn error_messages_are_bounded() {
        let mut record = Record::new();
        for n in 0..MAX_ERROR_MESSAGES + 10 {
            record.record(
                Duration::ZERO,
                Duration::from_micros(5),
                Err(Status::internal(format!("e{n}")).into()),
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
