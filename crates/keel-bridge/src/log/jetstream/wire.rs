//! How a [`Record`] and a [`DeadLetter`] are written as a NATS message and read back: the
//! subject, the headers, and the escaping that lets any value survive NATS's header format.

use std::str::FromStr;

use async_nats::{HeaderMap, HeaderName};
use bytes::Bytes;

use crate::log::DeadLetter;
use crate::log::headers::{self, DETAIL, DEVICE, KEY, REASON, ROUTE};
use crate::record::Record;

/// The record's idempotency key, which JetStream deduplicates on (records only; a dead letter
/// has `Keel-Key` instead, since it shares its record's key).
pub(super) const MSG_ID: &str = "Nats-Msg-Id";

/// Longest subject token made from a device, route or reason; longer ones are cut and end in
/// `+`. Subjects are for people and filters only: the headers carry the full values.
const MAX_TOKEN: usize = 128;

/// The subject of a record: `<prefix>.in.<route>.<device>`.
pub(super) fn record_subject(prefix: &str, record: &Record) -> String {
    format!(
        "{prefix}.in.{}.{}",
        token(&record.route),
        token(&record.device)
    )
}

/// The subject of a dead letter: `<prefix>.dead.<reason>.<route>.<device>`.
pub(super) fn dead_letter_subject(prefix: &str, letter: &DeadLetter) -> String {
    format!(
        "{prefix}.dead.{}.{}.{}",
        token(&letter.reason),
        token(&letter.record.route),
        token(&letter.record.device)
    )
}

/// The headers of a record: `Nats-Msg-Id` (the key), `Keel-Device`, `Keel-Route` and each of
/// the record's headers under its own name. Errs with the names that cannot be NATS headers
/// (not printable ASCII, or one of the bridge's own).
pub(super) fn record_headers(record: &Record) -> Result<HeaderMap, Vec<String>> {
    let mut headers = common_headers(record);
    headers.insert(name(MSG_ID), escape(&record.key));
    let refused = put_record_headers(&mut headers, record);
    if refused.is_empty() {
        Ok(headers)
    } else {
        Err(refused)
    }
}

/// The headers of a dead letter: those of its record (less `Nats-Msg-Id`, with `Keel-Key`
/// instead), `Keel-Reason` and `Keel-Detail`. A record header that cannot be a NATS header is
/// left out and named in the detail: a dead letter is always kept.
pub(super) fn dead_letter_headers(letter: &DeadLetter, note: Option<String>) -> HeaderMap {
    let mut headers = common_headers(&letter.record);
    headers.insert(name(KEY), escape(&letter.record.key));
    headers.insert(name(REASON), escape(&letter.reason));
    let refused = put_record_headers(&mut headers, &letter.record);
    let detail = headers::dead_letter_detail(
        &letter.detail,
        &refused,
        "their names cannot be NATS headers",
        note.as_deref(),
    );
    headers.insert(name(DETAIL), escape(&detail));
    headers
}

fn common_headers(record: &Record) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(name(DEVICE), escape(&record.device));
    headers.insert(name(ROUTE), escape(&record.route));
    headers
}

/// Adds the record's headers; returns the names it could not add.
fn put_record_headers(headers: &mut HeaderMap, record: &Record) -> Vec<String> {
    let mut refused = Vec::new();
    for (name, value) in &record.headers {
        match HeaderName::from_str(name) {
            Ok(header) if !is_reserved(name) => headers.append(header, escape(value)),
            _ => refused.push(format!("{name:?}")),
        }
    }
    refused
}

/// The bridge's own headers and `Nats-*`, which a record header may not take.
fn is_reserved(name: &str) -> bool {
    name.get(..5)
        .is_some_and(|start| start.eq_ignore_ascii_case("nats-"))
        || headers::is_own(name)
}

/// The record a message holds. Headers come back sorted by name (a NATS header map keeps no
/// order between names), each name's values in the order they were written. A message that
/// lacks the bridge's headers (published by something else) reads as a record with an empty
/// device, key or route, which the deliver stage dead-letters.
pub(super) fn record_from(headers: Option<&HeaderMap>, payload: Bytes) -> Record {
    let get = |own: &str| {
        headers
            .and_then(|headers| headers.get(name(own)))
            .map(|value| unescape(value.as_str()))
            .unwrap_or_default()
    };
    let key = match get(MSG_ID) {
        key if key.is_empty() => get(KEY),
        key => key,
    };
    let mut own: Vec<(String, String)> = headers
        .into_iter()
        .flat_map(HeaderMap::iter)
        .filter(|(name, _)| !is_reserved(name_str(name)))
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |value| (name.to_string(), unescape(value.as_str())))
        })
        .collect();
    // A stable sort keeps each name's values in their order.
    own.sort_by(|(a, _), (b, _)| a.cmp(b));
    Record {
        device: get(DEVICE),
        key,
        route: get(ROUTE),
        payload,
        headers: own,
    }
}

/// The dead letter a message of the dead-letter stream holds.
pub(super) fn dead_letter_from(headers: Option<&HeaderMap>, payload: Bytes) -> DeadLetter {
    let get = |own: &str| {
        headers
            .and_then(|headers| headers.get(name(own)))
            .map(|value| unescape(value.as_str()))
            .unwrap_or_default()
    };
    DeadLetter {
        reason: get(REASON),
        detail: get(DETAIL),
        record: record_from(headers, payload),
    }
}

/// The size of a header block as NATS counts it against `max_payload`.
pub(super) fn header_len(headers: &HeaderMap) -> usize {
    let lines: usize = headers
        .iter()
        .map(|(name, values)| {
            values
                .iter()
                .map(|value| name_str(name).len() + 2 + value.as_str().len() + 2)
                .sum::<usize>()
        })
        .sum();
    "NATS/1.0\r\n".len() + lines + 2
}

/// One of the bridge's own header names. Made with `from_str`, as the headers of a received
/// message are: `Nats-Msg-Id` is then the library's standard name, which a name made from a
/// `&str` directly would not equal.
fn name(own: &str) -> HeaderName {
    HeaderName::from_str(own).expect("the bridge's own header names are valid")
}

fn name_str(name: &HeaderName) -> &str {
    name.as_ref()
}

/// A subject token for `value`: ASCII letters, digits, `-` and `_` as they are, every other
/// byte as `%XX` (so no `.`, `*`, `>` or whitespace reaches the subject), `~` for an empty
/// value, cut at [`MAX_TOKEN`] with a final `+`.
fn token(value: &str) -> String {
    if value.is_empty() {
        return "~".into();
    }
    let mut token = String::with_capacity(value.len());
    for byte in value.bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
            token.push(char::from(byte));
        } else {
            token.push_str(&format!("%{byte:02X}"));
        }
        if token.len() > MAX_TOKEN {
            // Cut before the character that went over, never inside a `%XX`.
            let cut = if byte.is_ascii_alphanumeric() || byte == b'-' || byte == b'_' {
                token.len() - 1
            } else {
                token.len() - 3
            };
            token.truncate(cut);
            token.push('+');
            break;
        }
    }
    token
}

/// A header value NATS passes through unchanged: `%`, control characters and whitespace at
/// either end (which NATS trims) are written as `%XX` of their UTF-8 bytes.
fn escape(value: &str) -> String {
    let start = value.len() - value.trim_start().len();
    let end = value.trim_end().len();
    let mut escaped = String::with_capacity(value.len());
    for (at, c) in value.char_indices() {
        let edge = (at < start || at >= end) && c.is_whitespace();
        if c == '%' || c.is_control() || edge {
            let mut bytes = [0; 4];
            for byte in c.encode_utf8(&mut bytes).bytes() {
                escaped.push_str(&format!("%{byte:02X}"));
            }
        } else {
            escaped.push(c);
        }
    }
    escaped
}

/// The value [`escape`] was given. Text that is not an escape is kept as it is.
fn unescape(value: &str) -> String {
    if !value.contains('%') {
        return value.to_owned();
    }
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8(out).unwrap_or_else(|error| String::from_utf8_lossy(error.as_bytes()).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_survive_escaping() {
        for value in [
            "",
            "plain",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            " leading and trailing ",
            "\ttabs\t",
            "100% sure",
            "%41 is not A",
            "line\r\nbreak",
            "ünïcødé\u{3000}",
            "\u{3000}ideographic space\u{3000}",
        ] {
            let escaped = escape(value);
            assert_eq!(
                escaped.trim(),
                escaped,
                "{value:?} escapes to a trimmed value"
            );
            assert!(!escaped.contains(['\r', '\n']), "{value:?}");
            assert_eq!(unescape(&escaped), value);
        }
        assert_eq!(escape("a b"), "a b");
        assert_eq!(escape(" a%"), "%20a%25");
    }

    #[test]
    fn subject_tokens_hold_no_separators_or_wildcards() {
        for (value, expected) in [
            ("dev-1_A", "dev-1_A"),
            ("", "~"),
            ("~", "%7E"),
            ("a.b*c>d e", "a%2Eb%2Ac%3Ed%20e"),
            ("ü", "%C3%BC"),
        ] {
            assert_eq!(token(value), expected);
        }
        let long = token(&"é".repeat(100));
        assert!(long.len() <= MAX_TOKEN + 1, "{}", long.len());
        assert!(long.ends_with("%A9+") || long.ends_with("%C3+"), "{long}");
        assert_eq!(
            token(&"x".repeat(500)),
            format!("{}+", "x".repeat(MAX_TOKEN))
        );
    }

    #[test]
    fn records_round_trip_through_headers() {
        let record = Record {
            device: "dev 1".into(),
            key: "dev 1:7".into(),
            route: "pay".into(),
            payload: Bytes::from_static(b"\x0a\x01x"),
            headers: vec![
                ("traceparent".into(), "00-ab-cd-01".into()),
                ("keel-mqtt-topic".into(), " spaced/topic ".into()),
                ("keel-mqtt-topic".into(), "second".into()),
            ],
        };
        let headers = record_headers(&record).unwrap();
        let back = record_from(Some(&headers), record.payload.clone());
        assert_eq!(back.key, record.key);
        assert_eq!(back.device, record.device);
        assert_eq!(
            back.headers,
            [
                ("keel-mqtt-topic".into(), " spaced/topic ".into()),
                ("keel-mqtt-topic".into(), "second".into()),
                ("traceparent".into(), "00-ab-cd-01".into()),
            ]
        );
    }

    #[test]
    fn reserved_and_invalid_header_names_are_refused() {
        let mut record = record_from(None, Bytes::new());
        record.headers = vec![
            ("nats-expected-stream".into(), "x".into()),
            ("Keel-Device".into(), "x".into()),
            ("has space".into(), "x".into()),
            ("fine".into(), "x".into()),
        ];
        assert_eq!(
            record_headers(&record).unwrap_err(),
            [
                "\"nats-expected-stream\"",
                "\"Keel-Device\"",
                "\"has space\""
            ]
        );
        let letter = DeadLetter {
            record,
            reason: "LOG_REFUSED".into(),
            detail: "why".into(),
        };
        let back = dead_letter_from(Some(&dead_letter_headers(&letter, None)), Bytes::new());
        assert_eq!(back.record.headers, [("fine".into(), "x".into())]);
        assert!(
            back.detail.starts_with("why (headers not kept"),
            "{}",
            back.detail
        );
    }
}
