//! OTLP/protobuf encoding of recorded spans, written straight from Keel's span records into
//! one buffer per batch, and the gRPC codec that sends those bytes as they are.
//!
//! The SDK's exporter converts every span into the generated protobuf structs (a `String`
//! or `Vec` per field), groups them by resource and scope, then encodes: about 20,000
//! instructions a span, more than the RPC it describes. Encoding the wire format directly
//! costs a small fraction of that; field numbers are those of
//! `opentelemetry/proto/trace/v1/trace.proto` and `common/v1/common.proto`, and the tests
//! decode the result with the generated types to prove it.

use std::time::SystemTime;

use bytes::{Buf as _, BufMut as _, Bytes};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Array, Value};
use prost::encoding::{WireType, encode_key, encode_varint, encoded_len_varint};
use tonic::Status;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use super::recorder::RecordedSpan;

/// The OTLP gRPC method spans are exported to.
pub(crate) const EXPORT_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";

/// `ExportTraceServiceRequest` with one resource and one scope: `resource` is the encoded
/// `Resource` message body ([`resource`]), `scope_name`/`scope_version` name the
/// instrumentation scope.
pub(crate) fn export_request(
    resource: &[u8],
    scope_name: &str,
    scope_version: &str,
    spans: &[RecordedSpan],
) -> Bytes {
    let mut buf = Vec::with_capacity(64 + resource.len() + spans.len() * 256);
    // ExportTraceServiceRequest.resource_spans = 1
    nested(&mut buf, 1, |buf| {
        // ResourceSpans.resource = 1
        bytes_field(buf, 1, resource, true);
        // ResourceSpans.scope_spans = 2
        nested(buf, 2, |buf| {
            // ScopeSpans.scope = 1: InstrumentationScope { name = 1, version = 2 }
            nested(buf, 1, |buf| {
                string_field(buf, 1, scope_name);
                string_field(buf, 2, scope_version);
            });
            for span in spans {
                // ScopeSpans.spans = 2
                nested(buf, 2, |buf| encode_span(buf, span));
            }
        });
    });
    Bytes::from(buf)
}

/// The body of a `Resource` message with `attributes`.
pub(crate) fn resource<'a>(attributes: impl IntoIterator<Item = (&'a str, &'a Value)>) -> Vec<u8> {
    let mut buf = Vec::new();
    for (key, value) in attributes {
        key_value(&mut buf, 1, key, value);
    }
    buf
}

fn encode_span(buf: &mut Vec<u8>, span: &RecordedSpan) {
    bytes_field(buf, 1, &span.trace_id.to_bytes(), false);
    bytes_field(buf, 2, &span.span_id.to_bytes(), false);
    string_field(buf, 3, &span.trace_state);
    if let Some(parent) = span.parent {
        bytes_field(buf, 4, &parent.to_bytes(), false);
    }
    string_field(buf, 5, span.name);
    varint_field(buf, 6, kind(&span.kind));
    fixed64_field(buf, 7, unix_nanos(span.start));
    fixed64_field(buf, 8, unix_nanos(span.end));
    for attribute in &span.attributes {
        key_value(buf, 9, attribute.key.as_str(), &attribute.value);
    }
    for event in &span.events {
        // Span.events = 11: Event { time_unix_nano = 1, name = 2, attributes = 3 }
        nested(buf, 11, |buf| {
            fixed64_field(buf, 1, unix_nanos(event.time));
            string_field(buf, 2, event.name);
            for attribute in &event.attributes {
                key_value(buf, 3, attribute.key.as_str(), &attribute.value);
            }
        });
    }
    if let Some(message) = &span.error {
        // Span.status = 15: Status { message = 2, code = 3 (2: ERROR) }
        nested(buf, 15, |buf| {
            string_field(buf, 2, message);
            varint_field(buf, 3, 2);
        });
    }
}

/// OTLP's `Span.SpanKind` number.
fn kind(kind: &SpanKind) -> u64 {
    match kind {
        SpanKind::Internal => 1,
        SpanKind::Server => 2,
        SpanKind::Client => 3,
        SpanKind::Producer => 4,
        SpanKind::Consumer => 5,
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// A `KeyValue { key = 1, value = 2 }` as field `tag`.
fn key_value(buf: &mut Vec<u8>, tag: u32, key: &str, value: &Value) {
    nested(buf, tag, |buf| {
        string_field(buf, 1, key);
        nested(buf, 2, |buf| any_value(buf, value));
    });
}

/// The body of an `AnyValue`: the oneof's field is written even when its value is the
/// default, since it says which kind of value this is.
fn any_value(buf: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(text) => bytes_field(buf, 1, text.as_str().as_bytes(), true),
        Value::Bool(flag) => {
            encode_key(2, WireType::Varint, buf);
            encode_varint(u64::from(*flag), buf);
        }
        Value::I64(number) => {
            encode_key(3, WireType::Varint, buf);
            encode_varint(*number as u64, buf);
        }
        Value::F64(number) => {
            encode_key(4, WireType::SixtyFourBit, buf);
            buf.put_f64_le(*number);
        }
        // AnyValue.array_value = 5: ArrayValue { values = 1 }
        Value::Array(array) => nested(buf, 5, |buf| match array {
            Array::Bool(items) => items.iter().for_each(|item| {
                nested(buf, 1, |buf| any_value(buf, &Value::Bool(*item)));
            }),
            Array::I64(items) => items.iter().for_each(|item| {
                nested(buf, 1, |buf| any_value(buf, &Value::I64(*item)));
            }),
            Array::F64(items) => items.iter().for_each(|item| {
                nested(buf, 1, |buf| any_value(buf, &Value::F64(*item)));
            }),
            Array::String(items) => items.iter().for_each(|item| {
                nested(buf, 1, |buf| {
                    bytes_field(buf, 1, item.as_str().as_bytes(), true)
                });
            }),
            other => nested(buf, 1, |buf| {
                bytes_field(buf, 1, other.to_string().as_bytes(), true);
            }),
        }),
        other => bytes_field(buf, 1, other.to_string().as_bytes(), true),
    }
}

/// A length-delimited field whose body `body` writes in place; the length goes in front
/// afterwards (one byte reserved, widened for bodies of 128 bytes or more).
fn nested(buf: &mut Vec<u8>, tag: u32, body: impl FnOnce(&mut Vec<u8>)) {
    encode_key(tag, WireType::LengthDelimited, buf);
    let at = buf.len();
    buf.push(0);
    body(buf);
    let len = (buf.len() - at - 1) as u64;
    let width = encoded_len_varint(len);
    if width > 1 {
        buf.splice(at + 1..at + 1, std::iter::repeat_n(0, width - 1));
    }
    encode_varint(len, &mut &mut buf[at..at + width]);
}

fn bytes_field(buf: &mut Vec<u8>, tag: u32, bytes: &[u8], even_empty: bool) {
    if bytes.is_empty() && !even_empty {
        return;
    }
    encode_key(tag, WireType::LengthDelimited, buf);
    encode_varint(bytes.len() as u64, buf);
    buf.extend_from_slice(bytes);
}

fn string_field(buf: &mut Vec<u8>, tag: u32, text: &str) {
    bytes_field(buf, tag, text.as_bytes(), false);
}

fn varint_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::Varint, buf);
        encode_varint(value, buf);
    }
}

fn fixed64_field(buf: &mut Vec<u8>, tag: u32, value: u64) {
    if value != 0 {
        encode_key(tag, WireType::SixtyFourBit, buf);
        buf.put_u64_le(value);
    }
}

/// Sends an already encoded request and ignores the response's content (an OTLP
/// `ExportTraceServiceResponse`; its partial-success counts are not acted upon).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct EncodedCodec;

impl Codec for EncodedCodec {
    type Encode = Bytes;
    type Decode = ();
    type Encoder = Self;
    type Decoder = Self;

    fn encoder(&mut self) -> Self::Encoder {
        *self
    }

    fn decoder(&mut self) -> Self::Decoder {
        *self
    }
}

impl Encoder for EncodedCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for EncodedCodec {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use opentelemetry::KeyValue;
    use opentelemetry::trace::{SpanId, TraceId};
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value as Any;
    use prost::Message as _;

    use super::super::recorder::SpanEvent;
    use super::*;

    fn any(value: &Option<opentelemetry_proto::tonic::common::v1::AnyValue>) -> &Any {
        value.as_ref().unwrap().value.as_ref().unwrap()
    }

    #[test]
    fn the_generated_types_decode_what_is_encoded() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789);
        let long = "x".repeat(300);
        let span = RecordedSpan {
            trace_id: TraceId::from(0x0102_0304_0506_0708_090a_0b0c_0d0e_0f10),
            span_id: SpanId::from(0x1112_1314_1516_1718),
            parent: Some(SpanId::from(7)),
            trace_state: "vendor=value".into(),
            name: "helloworld.Greeter/SayHello",
            kind: SpanKind::Server,
            start,
            end: start + Duration::from_millis(3),
            attributes: vec![
                KeyValue::new("rpc.system", "grpc"),
                KeyValue::new("empty", ""),
                KeyValue::new("rpc.grpc.status_code", 0_i64),
                KeyValue::new("negative", -5_i64),
                KeyValue::new("flag", false),
                KeyValue::new("ratio", 0.5),
                KeyValue::new(
                    "list",
                    Value::Array(Array::String(vec!["a".into(), "b".into()])),
                ),
            ],
            events: vec![SpanEvent {
                name: "rpc.response.payload",
                time: start,
                attributes: vec![KeyValue::new("rpc.response.body", long.clone())],
            }],
            error: Some("boom".into()),
        };
        let resource = resource([("service.name", &Value::from("svc"))]);
        let bytes = export_request(&resource, "keel", "1.2.3", &[span.clone(), span]);
        let request = ExportTraceServiceRequest::decode(bytes).unwrap();

        let resource_spans = &request.resource_spans[0];
        let attribute = &resource_spans.resource.as_ref().unwrap().attributes[0];
        assert_eq!(attribute.key, "service.name");
        assert_eq!(any(&attribute.value), &Any::StringValue("svc".into()));
        let scope_spans = &resource_spans.scope_spans[0];
        let scope = scope_spans.scope.as_ref().unwrap();
        assert_eq!(
            (scope.name.as_str(), scope.version.as_str()),
            ("keel", "1.2.3")
        );
        assert_eq!(scope_spans.spans.len(), 2);

        let decoded = &scope_spans.spans[1];
        assert_eq!(decoded.trace_id, (1..=16).collect::<Vec<u8>>());
        assert_eq!(decoded.span_id, (0x11..=0x18).collect::<Vec<u8>>());
        assert_eq!(decoded.parent_span_id, [0, 0, 0, 0, 0, 0, 0, 7]);
        assert_eq!(decoded.trace_state, "vendor=value");
        assert_eq!(decoded.name, "helloworld.Greeter/SayHello");
        assert_eq!(decoded.kind, 2);
        assert_eq!(decoded.start_time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(decoded.end_time_unix_nano, 1_700_000_000_126_456_789);
        let values: Vec<(&str, &Any)> = decoded
            .attributes
            .iter()
            .map(|kv| (kv.key.as_str(), any(&kv.value)))
            .collect();
        assert_eq!(values[0], ("rpc.system", &Any::StringValue("grpc".into())));
        assert_eq!(values[1], ("empty", &Any::StringValue(String::new())));
        assert_eq!(values[2], ("rpc.grpc.status_code", &Any::IntValue(0)));
        assert_eq!(values[3], ("negative", &Any::IntValue(-5)));
        assert_eq!(values[4], ("flag", &Any::BoolValue(false)));
        assert_eq!(values[5], ("ratio", &Any::DoubleValue(0.5)));
        let Any::ArrayValue(list) = values[6].1 else {
            panic!("{:?}", values[6])
        };
        assert_eq!(list.values.len(), 2);
        let event = &decoded.events[0];
        assert_eq!(event.name, "rpc.response.payload");
        assert_eq!(event.time_unix_nano, 1_700_000_000_123_456_789);
        assert_eq!(any(&event.attributes[0].value), &Any::StringValue(long));
        let status = decoded.status.as_ref().unwrap();
        assert_eq!((status.code, status.message.as_str()), (2, "boom"));
    }

    #[test]
    fn an_unparented_ok_span_leaves_its_optional_fields_out() {
        let span = RecordedSpan {
            trace_id: TraceId::from(1),
            span_id: SpanId::from(1),
            parent: None,
            trace_state: String::new(),
            name: "s/m",
            kind: SpanKind::Client,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
        };
        let request =
            ExportTraceServiceRequest::decode(export_request(&[], "k", "", &[span])).unwrap();
        let decoded = &request.resource_spans[0].scope_spans[0].spans[0];
        assert!(decoded.parent_span_id.is_empty() && decoded.status.is_none());
        assert_eq!(decoded.kind, 3);
    }
}
