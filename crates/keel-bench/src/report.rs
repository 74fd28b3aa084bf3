//! The summary of a run, in ghz's shape (count, total, slowest, fastest, average,
//! requests/s, a latency histogram, percentiles, status codes, errors) plus latency over
//! time and the generator's own CPU per call; written as text, JSON or CSV.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde::Serialize;
use tonic::Code;

use crate::record::{Outcome, Record};

/// The percentiles reported.
pub const PERCENTILES: [f64; 8] = [10.0, 25.0, 50.0, 75.0, 90.0, 95.0, 99.0, 99.9];

/// Bars in the text histogram.
const HISTOGRAM_BUCKETS: usize = 10;

/// A finished run. Times are in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The method called, `pkg.Service/Method`.
    pub method: String,
    /// Calls made.
    pub count: u64,
    /// From the start to the end of the last call.
    pub total_ms: f64,
    /// The slowest call.
    pub slowest_ms: f64,
    /// The fastest call.
    pub fastest_ms: f64,
    /// The mean latency.
    pub average_ms: f64,
    /// Calls per second over `total_ms`.
    pub requests_per_second: f64,
    /// How the load was shaped.
    pub load: Load,
    /// The generator's CPU time (user + system) per call, when the platform tells it.
    pub client_cpu_us_per_call: Option<f64>,
    /// Latency at each of [`PERCENTILES`].
    pub latency_distribution: Vec<Percentile>,
    /// Calls by latency, in equal steps from fastest to slowest.
    pub histogram: Vec<Bucket>,
    /// Calls by status code, named as gRPC spells them (`OK`, `Unavailable`, ...); REST
    /// calls answered outside 2xx as `HTTP 409` and so on.
    pub status_codes: BTreeMap<String, u64>,
    /// Error messages, most frequent first.
    pub errors: Vec<ErrorCount>,
    /// Per second of the run.
    pub over_time: Vec<SecondReport>,
}

/// The load a run applied.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// Calls in flight at most.
    pub concurrency: usize,
    /// Connections the calls were spread over.
    pub connections: usize,
    /// The fixed rate asked for (open loop), or none (closed loop).
    pub rate: Option<f64>,
}

/// One percentile.
#[derive(Debug, Clone, Serialize)]
pub struct Percentile {
    /// e.g. 99.9
    pub percentile: f64,
    /// Latency at it.
    pub latency_ms: f64,
}

/// One bar of the histogram: calls at most `mark_ms` and above the previous mark.
#[derive(Debug, Clone, Serialize)]
pub struct Bucket {
    /// Upper edge.
    pub mark_ms: f64,
    /// Calls in it.
    pub count: u64,
}

/// One error message.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorCount {
    /// `Code: message`.
    pub message: String,
    /// How often.
    pub count: u64,
}

/// One second of the run, by when calls ended.
#[derive(Debug, Clone, Serialize)]
pub struct SecondReport {
    /// Seconds from the start.
    pub second: u64,
    /// Calls that ended in it.
    pub calls: u64,
    /// Of which failed.
    pub errors: u64,
    /// Their mean latency.
    pub mean_ms: f64,
    /// The slowest of them.
    pub max_ms: f64,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

/// The name of an outcome: gRPC's name of its status code, as ghz prints it, or `HTTP 409`.
pub fn outcome_name(outcome: Outcome) -> String {
    match outcome {
        Outcome::Grpc(code) => match Code::from_i32(code) {
            Code::Ok => "OK".to_owned(),
            code => format!("{code:?}"),
        },
        Outcome::Http(status) => format!("HTTP {status}"),
    }
}

impl Report {
    /// Summarizes `record`.
    pub fn new(method: String, record: &Record, load: Load, client_cpu: Option<Duration>) -> Self {
        let latencies = &record.latencies;
        let count = latencies.len();
        let total = record.last_end;
        let (fastest, slowest) = if count == 0 {
            (0, 0)
        } else {
            (latencies.min(), latencies.max())
        };
        let mut histogram = Vec::new();
        if count > 0 {
            let step = (slowest - fastest) as f64 / HISTOGRAM_BUCKETS as f64;
            let marks: Vec<f64> = (0..=HISTOGRAM_BUCKETS)
                .map(|i| fastest as f64 + step * i as f64)
                .collect();
            let mut counts = vec![0u64; marks.len()];
            for value in latencies.iter_recorded() {
                let micros = latencies
                    .highest_equivalent(value.value_iterated_to())
                    .min(slowest) as f64;
                let index = marks
                    .iter()
                    .position(|mark| micros <= *mark)
                    .unwrap_or(marks.len() - 1);
                counts[index] += value.count_at_value();
            }
            histogram = marks
                .iter()
                .zip(counts)
                .map(|(mark, count)| Bucket {
                    mark_ms: mark / 1000.0,
                    count,
                })
                .collect();
        }
        let mut errors: Vec<ErrorCount> = record
            .errors
            .iter()
            .map(|(message, count)| ErrorCount {
                message: message.clone(),
                count: *count,
            })
            .collect();
        if record.other_errors > 0 {
            errors.push(ErrorCount {
                message: format!(
                    "(other messages, beyond {} kinds)",
                    crate::record::MAX_ERROR_MESSAGES
                ),
                count: record.other_errors,
            });
        }
        errors.sort_by(|a, b| {
            b.count
                .cmp(&a.count)
                .then_with(|| a.message.cmp(&b.message))
        });
        Self {
            method,
            count,
            total_ms: total.as_secs_f64() * 1000.0,
            slowest_ms: ms(slowest),
            fastest_ms: ms(fastest),
            average_ms: if count == 0 {
                0.0
            } else {
                latencies.mean() / 1000.0
            },
            requests_per_second: if total.is_zero() {
                0.0
            } else {
                count as f64 / total.as_secs_f64()
            },
            load,
            client_cpu_us_per_call: client_cpu
                .filter(|_| count > 0)
                .map(|cpu| cpu.as_secs_f64() * 1e6 / count as f64),
            latency_distribution: PERCENTILES
                .iter()
                .map(|&percentile| Percentile {
                    percentile,
                    latency_ms: if count == 0 {
                        0.0
                    } else {
                        ms(latencies.value_at_percentile(percentile))
                    },
                })
                .collect(),
            histogram,
            status_codes: record
                .codes
                .iter()
                .map(|(code, count)| (outcome_name(*code), *count))
                .collect(),
            errors,
            over_time: record
                .seconds
                .iter()
                .enumerate()
                .map(|(second, counts)| SecondReport {
                    second: second as u64,
                    calls: counts.calls,
                    errors: counts.errors,
                    mean_ms: if counts.calls == 0 {
                        0.0
                    } else {
                        ms(counts.total_us) / counts.calls as f64
                    },
                    max_ms: ms(counts.max_us),
                })
                .collect(),
        }
    }

    /// Calls that ended with a status other than OK.
    pub fn failed(&self) -> u64 {
        self.status_codes
            .iter()
            .filter(|(code, _)| *code != "OK")
            .map(|(_, count)| count)
            .sum()
    }

    /// The summary as a person reads it.
    pub fn text(&self) -> String {
        let mut out = String::new();
        let _ = self.write_text(&mut out);
        out
    }

    fn write_text(&self, out: &mut String) -> std::fmt::Result {
        writeln!(out, "Summary:")?;
        writeln!(out, "  Method:\t{}", self.method)?;
        writeln!(out, "  Count:\t{}", self.count)?;
        writeln!(out, "  Total:\t{:.2} ms", self.total_ms)?;
        writeln!(out, "  Slowest:\t{:.2} ms", self.slowest_ms)?;
        writeln!(out, "  Fastest:\t{:.2} ms", self.fastest_ms)?;
        writeln!(out, "  Average:\t{:.2} ms", self.average_ms)?;
        writeln!(out, "  Requests/sec:\t{:.2}", self.requests_per_second)?;
        match self.load.rate {
            Some(rate) => writeln!(
                out,
                "  Load:\t\t{rate}/s asked (open loop: latency counts from each call's intended start), at most {} in flight over {} connection(s)",
                self.load.concurrency, self.load.connections
            )?,
            None => writeln!(
                out,
                "  Load:\t\t{} in flight (closed loop) over {} connection(s)",
                self.load.concurrency, self.load.connections
            )?,
        }
        if let Some(cpu) = self.client_cpu_us_per_call {
            writeln!(out, "  Client CPU:\t{cpu:.2} µs/call")?;
        }
        if !self.histogram.is_empty() {
            writeln!(out, "\nResponse time histogram:")?;
            let most = self
                .histogram
                .iter()
                .map(|b| b.count)
                .max()
                .unwrap_or(1)
                .max(1);
            let width = self
                .histogram
                .iter()
                .map(|b| b.count.to_string().len())
                .max()
                .unwrap_or(1);
            for bucket in &self.histogram {
                let bar = "∎".repeat((bucket.count * 40 / most) as usize);
                writeln!(
                    out,
                    "  {:>10.3} [{:>width$}]\t|{bar}",
                    bucket.mark_ms, bucket.count
                )?;
            }
        }
        writeln!(out, "\nLatency distribution:")?;
        for p in &self.latency_distribution {
            writeln!(out, "  {} % in {:.2} ms", p.percentile, p.latency_ms)?;
        }
        writeln!(out, "\nStatus code distribution:")?;
        for (code, count) in &self.status_codes {
            writeln!(out, "  [{code}]\t{count} responses")?;
        }
        if !self.errors.is_empty() {
            writeln!(out, "\nError distribution:")?;
            for error in &self.errors {
                writeln!(out, "  [{}]\t{}", error.count, error.message)?;
            }
        }
        Ok(())
    }

    /// The whole report as one JSON object.
    pub fn json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report is plain data")
    }

    /// Latency over time, one CSV row per second.
    pub fn csv(&self) -> String {
        let mut out = String::from("second,calls,errors,mean_ms,max_ms\n");
        for s in &self.over_time {
            let _ = writeln!(
                out,
                "{},{},{},{:.3},{:.3}",
                s.second, s.calls, s.errors, s.mean_ms, s.max_ms
            );
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use tonic::Status;

    use super::*;

    fn report() -> Report {
        let mut record = Record::new();
        for n in 1..=100u64 {
            let result = if n % 50 == 0 {
                Err(Status::unavailable("gone").into())
            } else {
                Ok(())
            };
            record.record(
                Duration::from_millis(n * 20),
                Duration::from_millis(n),
                result,
            );
        }
        Report::new(
            "helloworld.Greeter/SayHello".into(),
            &record,
            Load {
                concurrency: 4,
                connections: 1,
                rate: None,
            },
            Some(Duration::from_millis(10)),
        )
    }

    #[test]
    fn the_summary_adds_up() {
        let report = report();
        assert_eq!(report.count, 100);
        assert_eq!(report.total_ms, 2000.0);
        assert_eq!(report.requests_per_second, 50.0);
        assert!((report.fastest_ms - 1.0).abs() < 0.01 && (report.slowest_ms - 100.0).abs() < 0.1);
        assert!(
            (report.average_ms - 50.5).abs() < 0.1,
            "{}",
            report.average_ms
        );
        let p50 = &report.latency_distribution[2];
        assert_eq!(p50.percentile, 50.0);
        assert!((p50.latency_ms - 50.0).abs() < 0.1, "{}", p50.latency_ms);
        assert_eq!(report.histogram.iter().map(|b| b.count).sum::<u64>(), 100);
        assert_eq!(report.status_codes["OK"], 98);
        assert_eq!(report.status_codes["Unavailable"], 2);
        assert_eq!(report.failed(), 2);
        assert_eq!(report.errors[0].message, "Unavailable: gone");
        assert_eq!(report.client_cpu_us_per_call, Some(100.0));
        assert_eq!(report.over_time.len(), 3);
        assert_eq!(report.over_time.iter().map(|s| s.calls).sum::<u64>(), 100);
    }

    #[test]
    fn every_format_carries_the_numbers() {
        let report = report();
        let text = report.text();
        for line in [
            "Count:\t100",
            "Requests/sec:\t50.00",
            "99 % in",
            "[OK]\t98 responses",
            "[2]\tUnavailable: gone",
            "Client CPU:\t100.00 µs/call",
        ] {
            assert!(text.contains(line), "{line} in\n{text}");
        }
        let json: serde_json::Value = serde_json::from_str(&report.json()).unwrap();
        assert_eq!(json["count"], 100);
        assert_eq!(json["status_codes"]["Unavailable"], 2);
        let csv = report.csv();
        assert!(
            csv.starts_with("second,calls,errors,mean_ms,max_ms\n0,49,0,"),
            "{csv}"
        );
        assert_eq!(csv.lines().count(), 4);
    }

    #[test]
    fn an_empty_run_reports_zeros_not_nonsense() {
        let report = Report::new(
            "a.B/C".into(),
            &Record::new(),
            Load {
                concurrency: 1,
                connections: 1,
                rate: Some(5.0),
            },
            None,
        );
        assert_eq!(report.count, 0);
        assert_eq!(report.requests_per_second, 0.0);
        assert!(report.histogram.is_empty());
        assert!(report.text().contains("Count:\t0"));
    }
}
