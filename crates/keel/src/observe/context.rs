//! What travels with a call inside the process: the OpenTelemetry context (the call's span,
//! its baggage) and the call's deadline, so that outgoing calls made while serving it join
//! its trace and inherit what is left of its time.

use std::time::{Duration, Instant};

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};

/// The deadline of the call being served, from its `grpc-timeout`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deadline(pub Instant);

impl Deadline {
    /// The deadline of the call being served by the current task, if it has one.
    pub fn current() -> Option<Self> {
        Context::map_current(|cx| cx.get::<Deadline>().copied())
    }

    /// Time left, zero once passed.
    pub fn remaining(self) -> Duration {
        self.0.saturating_duration_since(Instant::now())
    }
}

/// Reads trace headers from a request's headers.
pub(crate) struct HeaderExtractor<'a>(pub(crate) &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|value| value.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// Writes trace headers into an outgoing request's headers; values that are not valid
/// header values are skipped.
pub(crate) struct HeaderInjector<'a>(pub(crate) &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(key.as_bytes()),
            http::HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// The header carrying a call's timeout.
pub(crate) const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The `grpc-timeout` of a request: up to 8 digits and a unit (`H`, `M`, `S`, `m`, `u`, `n`).
/// Anything else is no timeout, as grpc-go treats a malformed one.
pub fn parse_grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    let text = headers.get(GRPC_TIMEOUT)?.to_str().ok()?;
    if text.len() < 2 || text.len() > 9 {
        return None;
    }
    let (digits, unit) = text.split_at(text.len() - 1);
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let value: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(value.saturating_mul(3600)),
        "M" => Duration::from_secs(value.saturating_mul(60)),
        "S" => Duration::from_secs(value),
        "m" => Duration::from_millis(value),
        "u" => Duration::from_micros(value),
        "n" => Duration::from_nanos(value),
        _ => return None,
    })
}

/// A `grpc-timeout` value for `timeout`: the finest unit whose value fits in 8 digits.
pub fn format_grpc_timeout(timeout: Duration) -> String {
    const MAX: u128 = 99_999_999;
    let nanos = timeout.as_nanos();
    for (unit, per) in [
        ("n", 1u128),
        ("u", 1_000),
        ("m", 1_000_000),
        ("S", 1_000_000_000),
        ("M", 60_000_000_000),
    ] {
        // Round up, as grpc-go does: a remainder below the unit never becomes a zero timeout.
        let value = nanos.div_ceil(per);
        if value <= MAX {
            return format!("{value}{unit}");
        }
    }
    format!("{}H", (nanos.div_ceil(3_600_000_000_000)).min(MAX))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(timeout: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert("grpc-timeout", timeout.parse().unwrap());
        headers
    }

    #[test]
    fn timeouts_parse_by_unit() {
        for (text, expected) in [
            ("1H", Some(Duration::from_secs(3600))),
            ("2M", Some(Duration::from_secs(120))),
            ("200m", Some(Duration::from_millis(200))),
            ("99999999S", Some(Duration::from_secs(99_999_999))),
            ("5u", Some(Duration::from_micros(5))),
            ("7n", Some(Duration::from_nanos(7))),
            ("100", None),
            ("m", None),
            ("123456789m", None),
            ("-1S", None),
            ("1.5S", None),
            ("10x", None),
        ] {
            assert_eq!(parse_grpc_timeout(&headers(text)), expected, "{text:?}");
        }
    }

    #[test]
    fn formatted_timeouts_read_back_no_longer() {
        for nanos in [
            1u64,
            999,
            150_000_000,
            199_999_999_999,
            100_000_000_000_000_000,
        ] {
            let timeout = Duration::from_nanos(nanos);
            let text = format_grpc_timeout(timeout);
            let back = parse_grpc_timeout(&headers(&text)).unwrap();
            assert!(back >= timeout, "{timeout:?} -> {text} -> {back:?}");
            assert!(text.len() <= 9, "{text}");
        }
    }
}
