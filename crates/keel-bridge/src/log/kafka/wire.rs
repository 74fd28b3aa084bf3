//! How a [`Record`] and a [`DeadLetter`] are written as a Kafka message and read back: the
//! device is the message key (so a device's records share a partition, in order), the
//! payload is the value, and the headers carry the rest in order: `Keel-Key`, `Keel-Route`,
//! then each record header under its own name (then `Keel-Reason`, `Keel-Detail` on a dead
//! letter). Kafka headers are bytes, so values need no escaping.

use std::panic::{self, AssertUnwindSafe};

use bytes::Bytes;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};

use crate::log::DeadLetter;
use crate::log::headers::{self, DETAIL, KEY, REASON, ROUTE};
use crate::record::Record;

/// The headers of a record. Errs with the names a record header may not have: one of the
/// bridge's own, or one with a NUL (librdkafka reads names back as C strings).
pub(super) fn record_headers(record: &Record) -> Result<OwnedHeaders, Vec<String>> {
    let (headers, refused) = headers_of(record);
    if refused.is_empty() {
        Ok(headers)
    } else {
        Err(refused)
    }
}

/// The headers of a dead letter: its record's, then `Keel-Reason` and `Keel-Detail`. A record
/// header that a record may not have is left out and named in the detail: a dead letter is
/// always kept. `note` is added to the detail.
pub(super) fn dead_letter_headers(letter: &DeadLetter, note: Option<&str>) -> OwnedHeaders {
    let (headers, refused) = headers_of(&letter.record);
    let detail = headers::dead_letter_detail(
        &letter.detail,
        &refused,
        "their names are the bridge's own or hold a NUL",
        note,
    );
    headers
        .insert(text(REASON, &letter.reason))
        .insert(text(DETAIL, &detail))
}

fn headers_of(record: &Record) -> (OwnedHeaders, Vec<String>) {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 4)
        .insert(text(KEY, &record.key))
        .insert(text(ROUTE, &record.route));
    let mut refused = Vec::new();
    for (name, value) in &record.headers {
        if headers::is_own(name) || name.contains('\0') {
            refused.push(format!("{name:?}"));
        } else {
            headers = headers.insert(text(name, value));
        }
    }
    (headers, refused)
}

fn text<'a>(key: &'a str, value: &'a str) -> Header<'a, &'a str> {
    Header {
        key,
        value: Some(value),
    }
}

/// The record a message holds, its headers in the order they were written. A message that
/// lacks the bridge's headers (produced by something else) reads as a record with an empty
/// key or route, which the deliver stage dead-letters; so does one whose header names
/// librdkafka cannot read (it panics on a name that is not UTF-8: caught here).
pub(super) fn record_from(message: &impl Message) -> Record {
    let payload = Bytes::copy_from_slice(message.payload().unwrap_or_default());
    let device = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
    let mut record = Record {
        device,
        key: String::new(),
        route: String::new(),
        payload,
        headers: Vec::new(),
    };
    let read = panic::catch_unwind(AssertUnwindSafe(|| all_headers(message)));
    let Ok(all) = read else {
        tracing::warn!(
            topic = message.topic(),
            partition = message.partition(),
            offset = message.offset(),
            "bridge: a message's header names are not UTF-8"
        );
        return record;
    };
    for (name, value) in all {
        match name.as_str() {
            KEY if record.key.is_empty() => record.key = value,
            ROUTE if record.route.is_empty() => record.route = value,
            _ => record.headers.push((name, value)),
        }
    }
    record
}

/// The dead letter a message of the dead-letter topic holds.
pub(super) fn dead_letter_from(message: &impl Message) -> DeadLetter {
    let mut record = record_from(message);
    let mut take = |own: &str| {
        let at = record.headers.iter().position(|(name, _)| name == own);
        at.map(|at| record.headers.remove(at).1).unwrap_or_default()
    };
    let reason = take(REASON);
    let detail = take(DETAIL);
    DeadLetter {
        record,
        reason,
        detail,
    }
}

fn all_headers(message: &impl Message) -> Vec<(String, String)> {
    let Some(headers) = message.headers() else {
        return Vec::new();
    };
    (0..headers.count())
        .filter_map(|at| headers.try_get(at))
        .map(|header| {
            let value = String::from_utf8_lossy(header.value.unwrap_or_default());
            (header.key.to_owned(), value.into_owned())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use rdkafka::Timestamp;
    use rdkafka::message::OwnedMessage;

    use super::*;

    fn message(key: &str, payload: &[u8], headers: OwnedHeaders) -> OwnedMessage {
        OwnedMessage::new(
            Some(payload.to_vec()),
            Some(key.as_bytes().to_vec()),
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        )
    }

    fn record() -> Record {
        Record {
            device: "dev 1/ü".into(),
            key: "dev 1:7".into(),
            route: "pay".into(),
            payload: Bytes::from_static(b"\x0a\x01x"),
            headers: vec![
                ("traceparent".into(), "00-ab-cd-01".into()),
                ("keel-mqtt-topic".into(), " spaced\r\n100% ".into()),
                ("keel-mqtt-topic".into(), String::new()),
            ],
        }
    }

    #[test]
    fn records_round_trip_with_their_headers_in_order() {
        let record = record();
        let headers = record_headers(&record).unwrap();
        let back = record_from(&message(&record.device, &record.payload, headers));
        assert_eq!(back, record);
    }

    #[test]
    fn own_and_nul_header_names_are_refused_and_dead_letters_leave_them_out() {
        let mut record = record();
        record.headers = vec![
            ("Keel-Route".into(), "x".into()),
            ("a\0b".into(), "x".into()),
            ("fine".into(), "y".into()),
        ];
        assert_eq!(
            record_headers(&record).unwrap_err(),
            ["\"Keel-Route\"", "\"a\\0b\""]
        );
        let letter = DeadLetter {
            record: record.clone(),
            reason: "LOG_REFUSED".into(),
            detail: "why".into(),
        };
        let headers = dead_letter_headers(&letter, Some("payload dropped"));
        let back = dead_letter_from(&message(&record.device, b"", headers));
        assert_eq!(back.reason, "LOG_REFUSED");
        assert!(
            back.detail.starts_with("why (headers not kept") && back.detail.ends_with("dropped)"),
            "{}",
            back.detail
        );
        assert_eq!(back.record.key, record.key);
        assert_eq!(back.record.headers, [("fine".into(), "y".into())]);
    }

    #[test]
    fn a_foreign_message_reads_as_a_record_without_key_or_route() {
        let foreign =
            OwnedMessage::new(None, None, "t".into(), Timestamp::NotAvailable, 0, 0, None);
        let record = record_from(&foreign);
        assert_eq!(
            (
                record.device.as_str(),
                record.key.as_str(),
                record.route.as_str()
            ),
            ("", "", "")
        );
        assert!(record.payload.is_empty());
    }
}
