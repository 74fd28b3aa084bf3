//! One trace from a device's MQTT publish to the payments server span, checked at a real
//! OTLP collector: the real `keel bridge` and the real `payments` both export to it, and a
//! device (rumqttc, MQTT 5) publishes through the machine's Mosquitto.
//!
//! A request with a `traceparent` user property: the bridge's ingest and deliver spans are
//! children of the device's span, and payments' `Process` span is a child of the deliver
//! span, all in the device's trace. A request without one: ingest starts a fresh trace and
//! deliver and payments continue it. The bridge exports only when it stops (a schedule
//! delay of ten minutes), so its spans at the collector also prove the flush at shutdown.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::bridge::Bridge;
use common::payments::{Payments, TempDir};
use keel_interop::otlp::{AnyValue, CollectedSpan, OtlpCollector, Span};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};

/// How long anything the test waits for may take.
const PATIENCE: Duration = Duration::from_secs(30);

/// OTLP's `SPAN_KIND_CONSUMER` and `SPAN_KIND_SERVER`.
const CONSUMER: i32 = 5;
const SERVER: i32 = 2;

/// Publishes one request (QoS 1) as a device, on a connection of its own; how the broker
/// answered.
async fn publish(topic: &str, key: &str, properties: Vec<(String, String)>) -> PubAckReason {
    let client_id = format!("trace-device-{}", rand::random::<u64>());
    let mut options = MqttOptions::new(client_id, "127.0.0.1", 1883);
    options.set_clean_start(true);
    let (client, mut eventloop) = AsyncClient::new(options, 4);
    let payload = format!(
        r#"{{"idempotencyKey":"{key}","payerAccountId":"nobody","payeeAccountId":"no-one","amountMinor":"1","currency":"USD"}}"#
    );
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        user_properties: properties,
        ..PublishProperties::default()
    };
    client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
        .await
        .unwrap();
    let reason = tokio::time::timeout(PATIENCE, async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::PubAck(ack))) => return ack.reason,
                Ok(_) => {}
                Err(error) => panic!("the device's connection failed: {error}"),
            }
        }
    })
    .await
    .expect("a PUBACK in time");
    let _ = client.try_disconnect();
    reason
}

/// Publishes until a subscriber (the bridge, once its subscription is in) takes it: the
/// broker drops a publish no one subscribes to, so trying again repeats nothing.
async fn publish_to_the_bridge(topic: &str, key: &str, properties: &[(String, String)]) {
    keel_test_support::eventually_async("the bridge subscribes", PATIENCE, || async {
        match publish(topic, key, properties.to_vec()).await {
            PubAckReason::Success => true,
            PubAckReason::NoMatchingSubscribers => false,
            other => panic!("the broker refused the publish: {other:?}"),
        }
    })
    .await;
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(text)) => text.clone(),
                Some(AnyValue::IntValue(n)) => n.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

/// The one span `find` picks out of what the collector has, waiting up to [`PATIENCE`].
async fn wait_for(
    collector: &OtlpCollector,
    what: &str,
    find: impl Fn(&CollectedSpan) -> bool,
) -> Span {
    keel_test_support::eventually(what, PATIENCE, || collector.spans().iter().any(&find)).await;
    only(collector, what, find)
}

/// The one span `find` picks out of what the collector has now.
fn only(collector: &OtlpCollector, what: &str, find: impl Fn(&CollectedSpan) -> bool) -> Span {
    let spans = collector.spans();
    let found: Vec<&CollectedSpan> = spans.iter().filter(|span| find(span)).collect();
    assert_eq!(
        found.len(),
        1,
        "{what}: one span expected; the collector has {:#?}",
        spans
            .iter()
            .map(|c| (&c.service, &c.span.name, hex(&c.span.trace_id)))
            .collect::<Vec<_>>()
    );
    found[0].span.clone()
}

// Multi-threaded: the collector must keep serving while the test waits for the bridge's exit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_trace_runs_through_the_bridge_to_the_payments_server_span() {
    let (collector, endpoint) = OtlpCollector::start().await;
    let otel = |service, delay| {
        [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", service),
            ("OTEL_BSP_SCHEDULE_DELAY", delay),
            ("OTEL_TRACES_SAMPLER", "parentbased_always_on"),
        ]
    };
    let payments = Payments::start_with_env(&[], &otel("payments", "50"));

    let id = format!("{}-{:x}", std::process::id(), rand::random::<u32>());
    let requests = format!("t/{id}/payment/request");
    let filter = format!("{requests}/+");
    let dir = TempDir::new("bridge_tracing");
    let config = dir.path().join("bridge.toml");
    std::fs::write(
        &config,
        format!(
            r#"target = "{target}"

[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "bridge-{id}"
shared_group = "g-{id}"

[log.embedded]
path = "{log}"

[[routes]]
name = "payments"
topic = "{filter}"
method = "payments.v1.PaymentService/Process"
key = "device+field:idempotency_key"
response_topic = "t/{id}/payment/response/{{device}}"
"#,
            target = payments.url(),
            log = dir.path().join("log.db").display(),
        ),
    )
    .unwrap();
    // Ten minutes between exports: the bridge's spans leave only when it stops.
    let mut bridge = Bridge::start(&config, &otel("keel-bridge", "600000"));
    keel_test_support::eventually_async("the bridge is ready", PATIENCE, || async {
        keel_test_support::http_get(bridge.admin, "/readyz").await.0 == 200
    })
    .await;

    let is_process = |c: &CollectedSpan| {
        c.service == "payments" && c.span.name == "payments.v1.PaymentService/Process"
    };
    // A device with a trace of its own.
    let device_trace = format!("{:032x}", rand::random::<u128>() | 1);
    let device_span = format!("{:016x}", rand::random::<u64>() | 1);
    let traceparent = format!("00-{device_trace}-{device_span}-01");
    let topic = format!("{requests}/dev-traced");
    publish_to_the_bridge(&topic, "r-1", &[("traceparent".into(), traceparent)]).await;
    let process = wait_for(&collector, "payments' span in the device's trace", |c| {
        is_process(c) && hex(&c.span.trace_id) == device_trace
    })
    .await;

    // A device without one.
    let bare_topic = format!("{requests}/dev-bare");
    publish_to_the_bridge(&bare_topic, "r-2", &[]).await;
    let bare_process = wait_for(&collector, "payments' span of the bare request", |c| {
        is_process(c) && hex(&c.span.trace_id) != device_trace
    })
    .await;

    bridge.sigterm();
    let status = bridge
        .wait_exit(PATIENCE)
        .unwrap_or_else(|| panic!("the bridge did not stop:\n{}", bridge.logs()));
    assert!(status.success(), "{status}\n{}", bridge.logs());

    // Flushed before the bridge exited: no waiting from here on.
    let bridge_span = |name: String, trace: String| {
        move |c: &CollectedSpan| {
            c.service == "keel-bridge" && c.span.name == name && hex(&c.span.trace_id) == trace
        }
    };
    let deliver = only(
        &collector,
        "the deliver span in the device's trace",
        bridge_span(format!("deliver {filter}"), device_trace.clone()),
    );
    let ingest = only(
        &collector,
        "the ingest span in the device's trace",
        bridge_span(format!("ingest {filter}"), device_trace.clone()),
    );
    assert_eq!(
        hex(&deliver.parent_span_id),
        device_span,
        "deliver's parent"
    );
    assert_eq!(hex(&ingest.parent_span_id), device_span, "ingest's parent");
    assert_eq!(
        hex(&process.parent_span_id),
        hex(&deliver.span_id),
        "payments' span is a child of the deliver span"
    );
    assert_eq!(
        (deliver.kind, ingest.kind, process.kind),
        (CONSUMER, CONSUMER, SERVER)
    );

    let delivered = attributes(&deliver);
    let served = attributes(&process);
    let key = "dev-traced:r-1";
    for (name, value) in [
        ("messaging.system", "embedded"),
        ("messaging.operation.type", "process"),
        ("messaging.operation.name", "deliver"),
        ("messaging.destination.name", topic.as_str()),
        ("messaging.destination.template", filter.as_str()),
        ("messaging.message.id", key),
        ("keel.bridge.route", "payments"),
        ("keel.bridge.device", "dev-traced"),
        ("keel.bridge.method", "payments.v1.PaymentService/Process"),
        ("keel.bridge.retries", "0"),
        // NOT_FOUND: the accounts do not exist; a final answer, told to the device.
        ("rpc.grpc.status_code", "5"),
    ] {
        assert_eq!(
            delivered.get(name).map(String::as_str),
            Some(value),
            "{name} of {delivered:?}"
        );
    }
    assert_eq!(
        served.get("rpc.grpc.status_code"),
        delivered.get("rpc.grpc.status_code"),
        "the bridge saw the code payments answered"
    );
    assert!(
        deliver.status.as_ref().is_none_or(|s| s.code != 2),
        "a business error is not the bridge's error: {:?}",
        deliver.status
    );
    let ingested = attributes(&ingest);
    let group = format!("g-{id}");
    for (name, value) in [
        ("messaging.system", "mqtt"),
        ("messaging.operation.name", "ingest"),
        ("messaging.destination.name", topic.as_str()),
        ("messaging.consumer.group.name", group.as_str()),
        ("messaging.message.id", key),
        ("keel.bridge.log_outcome", "stored"),
    ] {
        assert_eq!(
            ingested.get(name).map(String::as_str),
            Some(value),
            "{name} of {ingested:?}"
        );
    }

    // Without the device's trace: ingest is the root, deliver its child, payments deliver's.
    let bare_trace = hex(&bare_process.trace_id);
    let bare_deliver = only(
        &collector,
        "the deliver span of the bare request",
        bridge_span(format!("deliver {filter}"), bare_trace.clone()),
    );
    let bare_ingest = only(
        &collector,
        "the ingest span of the bare request",
        bridge_span(format!("ingest {filter}"), bare_trace.clone()),
    );
    assert!(
        bare_ingest.parent_span_id.is_empty(),
        "ingest starts the trace"
    );
    assert_eq!(hex(&bare_deliver.parent_span_id), hex(&bare_ingest.span_id));
    assert_eq!(
        hex(&bare_process.parent_span_id),
        hex(&bare_deliver.span_id)
    );
    assert_eq!(
        attributes(&bare_deliver)
            .get("messaging.message.id")
            .map(String::as_str),
        Some("dev-bare:r-2")
    );
    drop(payments);
}
