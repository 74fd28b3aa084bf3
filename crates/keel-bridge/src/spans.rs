//! The bridge's spans, so one trace runs from the device's publish to the target's commit.
//!
//! - **ingest** `ingest FILTER` (kind CONSUMER): from the MQTT message's receipt to the log's
//!   acknowledgement of the append (or of the dead letter), a child of the device's span
//!   when its MQTT 5 user properties carry one (`traceparent`, or whatever
//!   `OTEL_PROPAGATORS` reads).
//! - **deliver** `deliver FILTER` (kind CONSUMER): from the start of the record's delivery
//!   (once the device's earlier records are done) to its final outcome, retries included.
//!   Its parent is the trace context the record carries, and every gRPC call it makes
//!   carries the span's own context, so the target's server spans are its children.
//!
//! The record carries the device's context when it sent one, so both spans are children of
//! the device's span, as OpenTelemetry's messaging conventions make the consumers of a
//! message children of its creator. A device that sent none gets the ingest span's context
//! in its record instead: the bridge created the log's message, and deliver continues that
//! trace. Spans go where `keel_telemetry::init` set the process up to send them, on the
//! path and with the sampler of Keel's RPC spans.

use std::sync::Arc;

use keel_telemetry::{AppSpan, AppSpans, Pairs, PairsMut, Traces};
use opentelemetry::propagation::Injector;
use opentelemetry::trace::{SpanKind, TraceContextExt as _};
use opentelemetry::{Context, KeyValue, StringValue};
use tonic::Code;
use tonic::metadata::{AsciiMetadataValue, MetadataKey, MetadataMap};

use crate::log::DeadLetter;
use crate::record::{Record, header};
use crate::route::Route;

/// The attributes the bridge's spans carry: OpenTelemetry's messaging conventions where they
/// fit, `keel.bridge.*` for the rest.
pub mod attribute {
    /// `mqtt` on ingest spans; the log backend (`embedded`, `jetstream`) on deliver spans.
    pub const MESSAGING_SYSTEM: &str = "messaging.system";
    /// `process`.
    pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
    /// `ingest` or `deliver`.
    pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
    /// The MQTT topic the device published on.
    pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
    /// The route's topic filter, `payment/request/+`.
    pub const MESSAGING_DESTINATION_TEMPLATE: &str = "messaging.destination.template";
    /// The request's idempotency key (the log's deduplication id).
    pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
    /// The shared-subscription group ingest reads with.
    pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
    /// The final gRPC status code, as a number.
    pub const RPC_GRPC_STATUS_CODE: &str = "rpc.grpc.status_code";
    /// The route's name.
    pub const ROUTE: &str = "keel.bridge.route";
    /// The device.
    pub const DEVICE: &str = "keel.bridge.device";
    /// The method deliver calls, `payments.v1.PaymentService/Process`.
    pub const METHOD: &str = "keel.bridge.method";
    /// Calls retried before the final one.
    pub const RETRIES: &str = "keel.bridge.retries";
    /// What the log did with the message: `stored`, `duplicate` (the key was already
    /// there) or `dead_lettered`.
    pub const LOG_OUTCOME: &str = "keel.bridge.log_outcome";
    /// Why the request was dead-lettered (`UNPARSEABLE_PAYLOAD`, `TERMINAL_STATUS`, ...).
    pub const DEAD_LETTER_REASON: &str = "keel.bridge.dead_letter_reason";
}

/// One route's spans and what they say about it.
#[derive(Debug)]
struct RouteSpans {
    route: String,
    filter: String,
    method: String,
    ingest: AppSpans,
    deliver: AppSpans,
}

impl RouteSpans {
    fn new(traces: &Traces, route: &str, filter: &str, method: &str) -> Self {
        let name = |operation: &str| {
            if filter.is_empty() {
                operation.to_owned()
            } else {
                format!("{operation} {filter}")
            }
        };
        Self {
            route: route.to_owned(),
            filter: filter.to_owned(),
            method: method.to_owned(),
            ingest: AppSpans::new(traces, name("ingest"), SpanKind::Consumer),
            deliver: AppSpans::new(traces, name("deliver"), SpanKind::Consumer),
        }
    }
}

/// The spans of both stages, for every route.
#[derive(Debug)]
pub struct BridgeSpans {
    traces: Traces,
    routes: Vec<RouteSpans>,
    /// For messages no route takes.
    unrouted: RouteSpans,
    /// The log backend's name.
    log: &'static str,
    /// The MQTT shared-subscription group ("" for none).
    group: String,
}

impl BridgeSpans {
    /// Spans for `routes`, delivered from the log named `log`, ingested through the MQTT
    /// shared-subscription group `group`, recorded and propagated as `traces` says
    /// ([`Traces::global`]: as the process is set up when this is called).
    pub fn new<'a>(
        traces: &Traces,
        routes: impl IntoIterator<Item = &'a Route>,
        log: &'static str,
        group: &str,
    ) -> Arc<Self> {
        let traces = traces.clone();
        let routes = routes
            .into_iter()
            .map(|route| {
                RouteSpans::new(
                    &traces,
                    route.name(),
                    route.filter().as_str(),
                    route.path().trim_start_matches('/'),
                )
            })
            .collect();
        Arc::new(Self {
            unrouted: RouteSpans::new(&traces, "", "", ""),
            traces,
            routes,
            log,
            group: group.to_owned(),
        })
    }

    fn route(&self, name: &str) -> &RouteSpans {
        self.routes
            .iter()
            .find(|route| route.route == name)
            .unwrap_or(&self.unrouted)
    }

    /// Starts the ingest span of a message published on `topic` with user properties
    /// `properties`, read into `record` (a request, or a dead letter's), and writes into the
    /// record's headers the trace context deliver continues.
    pub fn ingest(
        &self,
        topic: &str,
        properties: &[(String, String)],
        record: &mut Record,
    ) -> AppSpan {
        let parent = self.traces.extract_from(&Pairs(properties));
        let route = self.route(&record.route);
        let span = route.ingest.start(&parent, || {
            let mut attributes = vec![
                KeyValue::new(attribute::MESSAGING_SYSTEM, "mqtt"),
                KeyValue::new(attribute::MESSAGING_OPERATION_TYPE, "process"),
                KeyValue::new(attribute::MESSAGING_OPERATION_NAME, "ingest"),
                KeyValue::new(attribute::MESSAGING_DESTINATION_NAME, topic.to_owned()),
            ];
            if !self.group.is_empty() {
                attributes.push(KeyValue::new(
                    attribute::MESSAGING_CONSUMER_GROUP_NAME,
                    self.group.clone(),
                ));
            }
            attributes.extend(request_attributes(route, record));
            attributes
        });
        let carried = if parent.span().span_context().is_valid() {
            &parent
        } else {
            span.context()
        };
        record
            .headers
            .retain(|(name, _)| name != header::TRACEPARENT && name != header::TRACESTATE);
        self.traces
            .inject_into(carried, &mut PairsMut(&mut record.headers));
        span
    }

    /// Ends an ingest span once the log has the message: `Ok(duplicate)` for an append,
    /// `Err(letter)` for a dead letter.
    pub fn ingested(span: AppSpan, outcome: Result<bool, &DeadLetter>) {
        match outcome {
            Ok(duplicate) => span.end(
                || {
                    let outcome = if duplicate { "duplicate" } else { "stored" };
                    vec![KeyValue::new(attribute::LOG_OUTCOME, outcome)]
                },
                None,
            ),
            Err(letter) => span.end(
                || {
                    vec![
                        KeyValue::new(attribute::LOG_OUTCOME, "dead_lettered"),
                        KeyValue::new(attribute::DEAD_LETTER_REASON, letter.reason.clone()),
                    ]
                },
                Some(format!("{}: {}", letter.reason, letter.detail)),
            ),
        }
    }

    /// Starts the deliver span of `record`, under the trace context it carries.
    pub fn deliver(&self, record: &Record) -> AppSpan {
        let parent = self.traces.extract_from(&Pairs(&record.headers));
        let route = self.route(&record.route);
        route.deliver.start(&parent, || {
            let mut attributes = vec![
                KeyValue::new(attribute::MESSAGING_SYSTEM, self.log),
                KeyValue::new(attribute::MESSAGING_OPERATION_TYPE, "process"),
                KeyValue::new(attribute::MESSAGING_OPERATION_NAME, "deliver"),
            ];
            if let Some(topic) = record.header(header::MQTT_TOPIC) {
                attributes.push(KeyValue::new(
                    attribute::MESSAGING_DESTINATION_NAME,
                    topic.to_owned(),
                ));
            }
            if !route.method.is_empty() {
                attributes.push(KeyValue::new(attribute::METHOD, route.method.clone()));
            }
            attributes.extend(request_attributes(route, record));
            attributes
        })
    }

    /// Ends a deliver span with the final `code` (none: the target was never called) after
    /// `retries` retries; `dead_letter` is the dead letter kept for the request, which makes
    /// the span an error (a business error the device is told about is not one).
    pub fn delivered(
        span: AppSpan,
        code: Option<Code>,
        retries: u32,
        dead_letter: Option<&DeadLetter>,
    ) {
        span.end(
            || {
                let mut attributes = vec![KeyValue::new(attribute::RETRIES, i64::from(retries))];
                if let Some(code) = code {
                    attributes.push(KeyValue::new(
                        attribute::RPC_GRPC_STATUS_CODE,
                        i64::from(code as i32),
                    ));
                }
                if let Some(letter) = dead_letter {
                    attributes.push(KeyValue::new(
                        attribute::DEAD_LETTER_REASON,
                        letter.reason.clone(),
                    ));
                }
                attributes
            },
            dead_letter.map(|letter| format!("{}: {}", letter.reason, letter.detail)),
        );
    }

    /// Writes `cx`'s trace context into a call's metadata, so the target's span is a child of
    /// the span `cx` holds.
    pub fn inject(&self, cx: &Context, metadata: &mut MetadataMap) {
        self.traces.inject_into(cx, &mut MetadataInjector(metadata));
    }
}

/// The attributes of the request itself: route, filter, key and device, where known.
fn request_attributes(route: &RouteSpans, record: &Record) -> Vec<KeyValue> {
    let mut attributes = Vec::with_capacity(4);
    let text = |value: &str| StringValue::from(value.to_owned());
    if !route.route.is_empty() {
        attributes.push(KeyValue::new(attribute::ROUTE, text(&route.route)));
        attributes.push(KeyValue::new(
            attribute::MESSAGING_DESTINATION_TEMPLATE,
            text(&route.filter),
        ));
    }
    if !record.key.is_empty() {
        attributes.push(KeyValue::new(
            attribute::MESSAGING_MESSAGE_ID,
            text(&record.key),
        ));
    }
    if !record.device.is_empty() {
        attributes.push(KeyValue::new(attribute::DEVICE, text(&record.device)));
    }
    attributes
}

/// gRPC metadata as a propagation carrier; values that are not valid metadata are skipped.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.to_ascii_lowercase().as_bytes()),
            AsciiMetadataValue::try_from(value),
        ) {
            self.0.insert(key, value);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteConfig;
    use bytes::Bytes;

    const DEVICE_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
    const DEVICE_SPAN: &str = "b7ad6b7169203331";

    fn spans() -> Arc<BridgeSpans> {
        let route = Route::parse(&RouteConfig {
            name: "pay".into(),
            topic: "pay/+".into(),
            method: "payments.v1.PaymentService/Process".into(),
            key: "device+field:idempotency_key".into(),
            ..RouteConfig::default()
        })
        .unwrap();
        // Ids only, the default propagators: what a bridge exporting nothing does.
        let telemetry = keel_telemetry::from_settings("keel-bridge-test", |_| None).unwrap();
        BridgeSpans::new(&telemetry.traces(), [&route], "embedded", "g")
    }

    fn record(headers: Vec<(String, String)>) -> Record {
        Record {
            device: "d1".into(),
            key: "d1:r1".into(),
            route: "pay".into(),
            payload: Bytes::new(),
            headers,
        }
    }

    fn ids(cx: &Context) -> (String, String) {
        let span = cx.span();
        let ids = span.span_context();
        (
            format!("{:032x}", ids.trace_id()),
            format!("{:016x}", ids.span_id()),
        )
    }

    #[test]
    fn the_record_carries_the_devices_context_and_calls_carry_the_deliver_span() {
        let spans = spans();
        let properties = vec![(
            "traceparent".to_owned(),
            format!("00-{DEVICE_TRACE}-{DEVICE_SPAN}-01"),
        )];
        let mut stored = record(vec![("traceparent".into(), "00-stale".into())]);
        let ingest = spans.ingest("pay/d1", &properties, &mut stored);
        assert_eq!(ids(ingest.context()).0, DEVICE_TRACE);
        assert_eq!(
            stored.header(header::TRACEPARENT),
            Some(format!("00-{DEVICE_TRACE}-{DEVICE_SPAN}-01").as_str()),
            "the device's context, once: {:?}",
            stored.headers
        );
        BridgeSpans::ingested(ingest, Ok(false));

        let deliver = spans.deliver(&stored);
        let (trace, span) = ids(deliver.context());
        assert_eq!(trace, DEVICE_TRACE);
        assert_ne!(span, DEVICE_SPAN);
        let mut metadata = MetadataMap::new();
        spans.inject(deliver.context(), &mut metadata);
        assert_eq!(
            metadata.get("traceparent").and_then(|v| v.to_str().ok()),
            Some(format!("00-{trace}-{span}-01").as_str())
        );
        BridgeSpans::delivered(deliver, Some(Code::Ok), 0, None);
    }

    #[test]
    fn without_the_devices_context_deliver_continues_the_ingest_span() {
        let spans = spans();
        let mut stored = record(Vec::new());
        let ingest = spans.ingest("pay/d1", &[], &mut stored);
        let (trace, ingest_span) = ids(ingest.context());
        assert!(
            stored
                .header(header::TRACEPARENT)
                .is_some_and(|value| value.contains(&trace) && value.contains(&ingest_span)),
            "{:?}",
            stored.headers
        );
        let deliver = spans.deliver(&stored);
        assert_eq!(ids(deliver.context()).0, trace, "one trace");
    }
}
