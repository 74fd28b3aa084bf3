//! What travels with a call inside the process: the OpenTelemetry context (the call's span,
//! its baggage) and the call's deadline, so that outgoing calls made while serving it join
//! its trace and inherit what is left of its time.

use std::time::{Duration, Instant};

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::TraceContextExt as _;

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
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

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
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

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
pub const GRPC_TIMEOUT: http::HeaderName = http::HeaderName::from_static("grpc-timeout");

/// The `grpc-timeout` of a request, read strictly: absent is `Ok(None)`; anything but 1 to 8
/// ASCII digits followed by a unit (`H`, `M`, `S`, `m`, `u`, `n`) is an error, as in
/// grpc-go's `decodeTimeout`. No sign, no spaces, no fractions.
pub fn grpc_timeout(headers: &HeaderMap) -> Result<Option<Duration>, MalformedTimeout> {
    headers
        .get(GRPC_TIMEOUT)
        .map(|value| decode_grpc_timeout(value.as_bytes()))
        .transpose()
}

/// The `grpc-timeout` of a request, or `None` when it is absent or malformed: for callers
/// that replace a bad value with their own (a client's configured timeout).
pub fn parse_grpc_timeout(headers: &HeaderMap) -> Option<Duration> {
    grpc_timeout(headers).ok().flatten()
}

/// Reads one `grpc-timeout` value (see [`grpc_timeout`]).
fn decode_grpc_timeout(text: &[u8]) -> Result<Duration, MalformedTimeout> {
    let malformed = |reason| Err(MalformedTimeout::new(reason, text));
    let (unit, digits) = match text {
        [digits @ .., unit] if !digits.is_empty() => (*unit, digits),
        _ => return malformed("timeout string is too short"),
    };
    if digits.len() > 8 {
        return malformed("timeout string is too long");
    }
    let per_unit: fn(u64) -> Duration = match unit {
        b'H' => |n| Duration::from_secs(n * 3600),
        b'M' => |n| Duration::from_secs(n * 60),
        b'S' => Duration::from_secs,
        b'm' => Duration::from_millis,
        b'u' => Duration::from_micros,
        b'n' => Duration::from_nanos,
        _ => return malformed("timeout unit is not recognized"),
    };
    if !digits.iter().all(u8::is_ascii_digit) {
        return malformed("timeout value is not a number");
    }
    // At most 8 digits: no overflow, even in hours.
    let value = digits
        .iter()
        .fold(0u64, |n, digit| n * 10 + u64::from(digit - b'0'));
    Ok(per_unit(value))
}

/// A `grpc-timeout` value that is not one: what is wrong and the value, escaped and cut
/// short, fit for a status message and a log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedTimeout {
    reason: &'static str,
    /// The value's first bytes, escaped (`\xff`, `\"`).
    shown: String,
    /// The value's length when it was cut short.
    cut_from: Option<usize>,
}

impl MalformedTimeout {
    /// Longest part of a bad value repeated back (the header may be kilobytes long).
    const SHOWN: usize = 32;

    fn new(reason: &'static str, value: &[u8]) -> Self {
        let shown = &value[..value.len().min(Self::SHOWN)];
        Self {
            reason,
            shown: shown.escape_ascii().to_string(),
            cut_from: (shown.len() < value.len()).then_some(value.len()),
        }
    }
}

impl std::fmt::Display for MalformedTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "malformed grpc-timeout: {}: \"{}\"",
            self.reason, self.shown
        )?;
        if let Some(len) = self.cut_from {
            write!(f, "... ({len} bytes)")?;
        }
        Ok(())
    }
}

impl std::error::Error for MalformedTimeout {}

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

/// The trace id of the call the current task serves, if any: for code that logs something
/// a person will want to find in the trace (an internal error's id, say).
pub fn current_trace_id() -> Option<String> {
    let cx = Context::current();
    let span = cx.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
mod tests {
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};

    use super::*;

    fn headers(timeout: &[u8]) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            "grpc-timeout",
            http::HeaderValue::from_bytes(timeout).unwrap(),
        );
        headers
    }

    #[test]
    fn timeouts_parse_by_unit() {
        for (text, expected) in [
            ("1H", Duration::from_secs(3600)),
            ("2M", Duration::from_secs(120)),
            ("200m", Duration::from_millis(200)),
            ("99999999S", Duration::from_secs(99_999_999)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
            ("00000005u", Duration::from_micros(5)),
            ("7n", Duration::from_nanos(7)),
            ("0n", Duration::ZERO),
            ("0S", Duration::ZERO),
        ] {
            assert_eq!(
                grpc_timeout(&headers(text.as_bytes())),
                Ok(Some(expected)),
                "{text:?}"
            );
        }
        assert_eq!(grpc_timeout(&HeaderMap::new()), Ok(None));
    }

    #[test]
    fn malformed_timeouts_say_what_is_wrong() {
        for (text, message) in [
            (&b""[..], r#"timeout string is too short: """#),
            (b"1", r#"timeout string is too short: "1""#),
            (b"m", r#"timeout string is too short: "m""#),
            (b"123456789S", r#"timeout string is too long: "123456789S""#),
            (b"123456789m", r#"timeout string is too long: "123456789m""#),
            (b"1x", r#"timeout unit is not recognized: "1x""#),
            (b"100", r#"timeout unit is not recognized: "100""#),
            (b"1S ", r#"timeout unit is not recognized: "1S ""#),
            (b"1s", r#"timeout unit is not recognized: "1s""#),
            (b"abc", r#"timeout unit is not recognized: "abc""#),
            (b"-1S", r#"timeout value is not a number: "-1S""#),
            (b"+1S", r#"timeout value is not a number: "+1S""#),
            (b" 1S", r#"timeout value is not a number: " 1S""#),
            (b"1.5S", r#"timeout value is not a number: "1.5S""#),
            (b"\"\xff1S", r#"timeout value is not a number: "\"\xff1S""#),
        ] {
            let error = grpc_timeout(&headers(text)).unwrap_err();
            assert_eq!(
                error.to_string(),
                format!("malformed grpc-timeout: {message}"),
                "{text:?}"
            );
            assert_eq!(parse_grpc_timeout(&headers(text)), None);
        }
        let long = grpc_timeout(&headers(&[b'9'; 4096])).unwrap_err();
        assert_eq!(
            long.to_string(),
            format!(
                "malformed grpc-timeout: timeout string is too long: \"{}\"... (4096 bytes)",
                "9".repeat(32)
            )
        );
    }

    /// The grammar, stated independently of the parser: 1 to 8 digits and a unit.
    fn well_formed(text: &[u8]) -> bool {
        (2..=9).contains(&text.len())
            && b"HMSmun".contains(&text[text.len() - 1])
            && text[..text.len() - 1].iter().all(u8::is_ascii_digit)
    }

    #[test]
    fn property_any_bytes_parse_exactly_when_well_formed() {
        let mut rng = StdRng::seed_from_u64(11);
        // Bytes a header value can hold, weighted towards the ones that matter.
        let alphabet: Vec<u8> = b"0123456789HMSmun -+.xhs\t\"\\"
            .iter()
            .copied()
            .chain([0x80, 0xff])
            .collect();
        for _ in 0..200_000 {
            // Mostly near the grammar's edges: 0 to 10 digits and a unit, then with some
            // luck a byte changed, dropped or added anywhere.
            let mut text: Vec<u8> = (0..rng.random_range(0..=10))
                .map(|_| rng.random_range(b'0'..=b'9'))
                .collect();
            text.push(alphabet[rng.random_range(10..alphabet.len())]);
            match rng.random_range(0..4) {
                0 => {
                    let at = rng.random_range(0..text.len());
                    text[at] = alphabet[rng.random_range(0..alphabet.len())];
                }
                1 => {
                    text.remove(rng.random_range(0..text.len()));
                }
                2 => {
                    let at = rng.random_range(0..=text.len());
                    text.insert(at, alphabet[rng.random_range(0..alphabet.len())]);
                }
                _ => {}
            }
            let Ok(value) = http::HeaderValue::from_bytes(&text) else {
                continue;
            };
            let parsed = grpc_timeout(&headers(value.as_bytes()));
            assert_eq!(parsed.is_ok(), well_formed(&text), "{text:?}: {parsed:?}");
        }
    }

    #[test]
    fn property_values_read_as_digits_times_unit() {
        let mut rng = StdRng::seed_from_u64(12);
        let units = [
            (b'H', Duration::from_secs(3600)),
            (b'M', Duration::from_secs(60)),
            (b'S', Duration::from_secs(1)),
            (b'm', Duration::from_millis(1)),
            (b'u', Duration::from_micros(1)),
            (b'n', Duration::from_nanos(1)),
        ];
        for _ in 0..100_000 {
            let digits = rng.random_range(1..=8);
            let value: u32 = rng.random_range(0..10u32.pow(digits));
            let (unit, per) = units[rng.random_range(0..units.len())];
            // Leading zeros are allowed: pad to the chosen width.
            let mut text = format!("{value:0width$}", width = digits as usize).into_bytes();
            text.push(unit);
            assert_eq!(
                grpc_timeout(&headers(&text)),
                Ok(Some(per * value)),
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }

    #[test]
    fn property_formatted_timeouts_read_back_no_shorter_and_within_a_unit() {
        let mut rng = StdRng::seed_from_u64(13);
        for _ in 0..100_000 {
            // Spread over every unit's range: 1 ns to about 30 years.
            let nanos = rng.random_range(0..60u32);
            let timeout = Duration::from_nanos(rng.random_range(0..=1u64 << nanos));
            let text = format_grpc_timeout(timeout);
            assert!(text.len() <= 9, "{text}");
            let back = parse_grpc_timeout(&headers(text.as_bytes())).unwrap();
            assert!(back >= timeout, "{timeout:?} -> {text} -> {back:?}");
            let unit = match text.as_bytes()[text.len() - 1] {
                b'n' => Duration::from_nanos(1),
                b'u' => Duration::from_micros(1),
                b'm' => Duration::from_millis(1),
                b'S' => Duration::from_secs(1),
                b'M' => Duration::from_secs(60),
                _ => Duration::from_secs(3600),
            };
            assert!(back - timeout < unit, "{timeout:?} -> {text} -> {back:?}");
        }
    }
}
