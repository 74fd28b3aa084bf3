//! [`Record`]: one device request as the log holds it between the ingest and deliver stages,
//! and the names of the headers every backend stores beside the payload.

use bytes::Bytes;

/// One device request in the log.
///
/// Backends store `device` as the partition or ordering key, `key` as the deduplication id
/// (Kafka's record key is the device; JetStream's `Nats-Msg-Id` is the key), `payload` as the
/// message body, and `route` with `headers` as message headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The device the request came from. Records of one device are delivered in the order
    /// they were appended.
    pub device: String,
    /// The request's idempotency key: the log's deduplication id, and the key the target is
    /// called with, on the first attempt and every retry.
    pub key: String,
    /// The name of the route that took the request, which says what method to call.
    pub route: String,
    /// The request message, binary protobuf of the method's input type.
    pub payload: Bytes,
    /// Everything else carried through the log: [`header::TRACEPARENT`],
    /// [`header::MQTT_TOPIC`], [`header::RESPONSE_TOPIC`] and the like. Names are lowercase.
    pub headers: Vec<(String, String)>,
}

impl Record {
    /// The value of header `name`, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.as_str())
    }
}

/// The headers the bridge itself writes. Backends store every header verbatim.
pub mod header {
    /// The W3C trace context deliver continues: the device's (MQTT 5 user property
    /// `traceparent`), or the ingest span's when the device sent none. Ingest writes it with
    /// the process's propagators, so other trace headers (`b3`) may come with it
    /// (`crate::spans`).
    pub const TRACEPARENT: &str = "traceparent";
    /// The W3C `tracestate` that goes with [`TRACEPARENT`], when not empty.
    pub const TRACESTATE: &str = "tracestate";
    /// The MQTT topic the request was published on.
    pub const MQTT_TOPIC: &str = "keel-mqtt-topic";
    /// Where the outcome is published, when the route has a response topic.
    pub const RESPONSE_TOPIC: &str = "keel-response-topic";
    /// MQTT 5 correlation data from the request, echoed on the response (base64).
    pub const CORRELATION_DATA: &str = "keel-correlation-data";
    /// When ingest received the request, in milliseconds since the Unix epoch.
    pub const RECEIVED_AT_MS: &str = "keel-received-at-ms";
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_are_found_by_name() {
        let record = Record {
            device: "d1".into(),
            key: "d1:7".into(),
            route: "pay".into(),
            payload: Bytes::from_static(b"\x0a\x01x"),
            headers: vec![(header::TRACEPARENT.into(), "00-ab-cd-01".into())],
        };
        assert_eq!(record.header(header::TRACEPARENT), Some("00-ab-cd-01"));
        assert_eq!(record.header(header::MQTT_TOPIC), None);
    }
}
