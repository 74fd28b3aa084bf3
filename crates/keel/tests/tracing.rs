//! Spans arrive over real OTLP, linked and named by the RPC conventions.
//!
//! An in-test OTLP collector (the real `TraceService` gRPC API) receives what the SDK exports.
//! Two Keel servers run in process: `relay` answers `Greeter` by calling `echo` through an
//! observed client. The checks: a chain client → relay → echo is one trace with the right
//! parent of every span; W3C, B3 single and B3 multi headers continue the caller's trace; a
//! garbage `traceparent` starts a fresh trace and the call still succeeds; only server-fault
//! codes mark server spans as errors; a caller's deadline reaches the next hop shorter.
//!
//! One test function: the tracer provider is process-global.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel::Server;
use keel::config::ServerConfig;
use keel::context::Deadline;
use keel::method::MethodTable;
use keel::observe::{ClientObserveLayer, ClientObserver};
use keel_interop::otlp::{AnyValue, OtlpCollector, Span};
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_interop::pb::helloworld::greeter_server::{Greeter, GreeterServer};
use keel_interop::pb::helloworld::{HelloReply, HelloRequest};
use prometheus_client::registry::Registry;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

/// Answers with how much time its caller left it, or fails as the name asks.
struct Echo;

#[tonic::async_trait]
impl Greeter for Echo {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        match request.into_inner().name.as_str() {
            "fail-internal" => Err(Status::internal("broken")),
            "fail-invalid" => Err(Status::invalid_argument("bad name")),
            _ => Ok(Response::new(HelloReply {
                message: match Deadline::current() {
                    Some(deadline) => deadline.remaining().as_micros().to_string(),
                    None => "none".to_owned(),
                },
            })),
        }
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

type Observed = keel::observe::ClientObserve<Channel>;

/// Passes every call on to `echo`, through an observed client.
struct Relay {
    echo: GreeterClient<Observed>,
}

#[tonic::async_trait]
impl Greeter for Relay {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.echo.clone().say_hello(request.into_inner()).await
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.echo
            .clone()
            .say_hello_again(request.into_inner())
            .await
    }
}

fn observed(channel: Channel, url: &str, registry: &mut Registry) -> GreeterClient<Observed> {
    let mut methods = MethodTable::default();
    methods
        .add_encoded(keel_interop::FILE_DESCRIPTOR_SET)
        .unwrap();
    let observer = ClientObserver::new(&methods, registry, &keel::telemetry::Traces::global());
    GreeterClient::new(
        tower::ServiceBuilder::new()
            .layer(ClientObserveLayer::new(observer).target(&url.parse().unwrap()))
            .service(channel),
    )
}

async fn serve(service: GreeterServer<impl Greeter>, config: ServerConfig) -> String {
    let server = Server::builder(config)
        .add_service(service)
        .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.serve(std::future::pending()));
    url
}

async fn channel(url: &str) -> Channel {
    Channel::from_shared(url.to_owned())
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A request carrying the given headers, untouched by any observing layer.
fn with_headers(name: &str, headers: &[(&'static str, &str)]) -> Request<HelloRequest> {
    let mut request = Request::new(HelloRequest { name: name.into() });
    for (key, value) in headers {
        request.metadata_mut().insert(*key, value.parse().unwrap());
    }
    request
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attributes(span: &Span) -> HashMap<String, String> {
    span.attributes
        .iter()
        .map(|kv| {
            let value = match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                Some(AnyValue::StringValue(s)) => s.clone(),
                Some(AnyValue::IntValue(i)) => i.to_string(),
                other => format!("{other:?}"),
            };
            (kv.key.clone(), value)
        })
        .collect()
}

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const STATUS_ERROR: i32 = 2;

/// Every span the collector has, after flushing what the SDK still queues.
async fn flushed_spans(
    collector: &OtlpCollector,
    telemetry: &Arc<keel::telemetry::Telemetry>,
) -> Vec<Span> {
    let flushing = telemetry.clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .unwrap();
    collector.spans().into_iter().map(|c| c.span).collect()
}

/// The spans of a trace, once `count` of them arrived.
async fn trace(
    collector: &OtlpCollector,
    telemetry: &Arc<keel::telemetry::Telemetry>,
    trace_id: &str,
    count: usize,
) -> Vec<Span> {
    for _ in 0..100 {
        let spans: Vec<Span> = flushed_spans(collector, telemetry)
            .await
            .into_iter()
            .filter(|span| hex(&span.trace_id) == trace_id)
            .collect();
        if spans.len() >= count {
            assert_eq!(spans.len(), count, "spans of {trace_id}: {spans:#?}");
            return spans;
        }
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "trace {trace_id} did not arrive with {count} spans; collector has {:#?}",
        collector.spans()
    );
}

fn by_kind(spans: &[Span], kind: i32, service_hop: usize) -> &Span {
    // Hops in order: the first span of a kind is the outer one (started first).
    let mut of_kind: Vec<&Span> = spans.iter().filter(|s| s.kind == kind).collect();
    of_kind.sort_by_key(|s| s.start_time_unix_nano);
    of_kind[service_hop]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_link_across_hops_and_follow_the_conventions() {
    let (collector, endpoint) = OtlpCollector::start().await;
    let telemetry = Arc::new(
        keel::telemetry::init_with("keel-tracing-test", |name| {
            (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| endpoint.clone())
        })
        .unwrap(),
    );
    assert!(telemetry.exporting());

    // The echo server puts its OK responses on its spans, with `message` redacted.
    let mut echo_config = common::config();
    let payloads = &mut echo_config.observe.payloads;
    payloads.enabled = true;
    payloads.min_bytes = 0;
    payloads.redact = vec!["message".into()];
    let echo_url = serve(GreeterServer::new(Echo), echo_config).await;
    let relay = Relay {
        echo: observed(
            channel(&echo_url).await,
            &echo_url,
            &mut Registry::default(),
        ),
    };
    let relay_url = serve(GreeterServer::new(relay), common::config()).await;
    let relay_channel = channel(&relay_url).await;

    // 1. A chain: observed client → relay → echo is one trace of four spans.
    let mut client_metrics = Registry::default();
    let mut client = observed(relay_channel.clone(), &relay_url, &mut client_metrics);
    client
        .say_hello(HelloRequest {
            name: "chain".into(),
        })
        .await
        .unwrap();
    let trace_id = loop {
        let found = flushed_spans(&collector, &telemetry)
            .await
            .iter()
            .find(|span| span.kind == CLIENT && span.parent_span_id.is_empty())
            .map(|span| hex(&span.trace_id));
        if let Some(trace_id) = found {
            break trace_id;
        }
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let spans = trace(&collector, &telemetry, &trace_id, 4).await;
    let outer_client = by_kind(&spans, CLIENT, 0);
    let relay_server = by_kind(&spans, SERVER, 0);
    let inner_client = by_kind(&spans, CLIENT, 1);
    let echo_server = by_kind(&spans, SERVER, 1);
    assert!(
        outer_client.parent_span_id.is_empty(),
        "the test's call is the root"
    );
    assert_eq!(relay_server.parent_span_id, outer_client.span_id);
    assert_eq!(inner_client.parent_span_id, relay_server.span_id);
    assert_eq!(echo_server.parent_span_id, inner_client.span_id);
    for span in &spans {
        assert_eq!(span.name, "helloworld.Greeter/SayHello");
        let attributes = attributes(span);
        assert_eq!(attributes["rpc.system"], "grpc", "{span:?}");
        assert_eq!(attributes["rpc.service"], "helloworld.Greeter");
        assert_eq!(attributes["rpc.method"], "SayHello");
        assert_eq!(attributes["rpc.grpc.status_code"], "0");
        assert_ne!(
            span.status.as_ref().map_or(0, |s| s.code),
            STATUS_ERROR,
            "{span:?}"
        );
    }
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &client_metrics).unwrap();
    let labels = r#"grpc_type="unary",grpc_service="helloworld.Greeter",grpc_method="SayHello""#;
    for line in [
        format!("grpc_client_started_total{{{labels}}} 1"),
        format!("grpc_client_msg_sent_total{{{labels}}} 1"),
        format!("grpc_client_msg_received_total{{{labels}}} 1"),
        format!("grpc_client_handled_total{{{labels},grpc_code=\"OK\"}} 1"),
        format!("grpc_client_handling_seconds_count{{{labels}}} 1"),
    ] {
        assert!(text.lines().any(|l| l == line), "missing {line} in\n{text}");
    }
    assert!(attributes(relay_server).contains_key("network.peer.address"));
    let payload = |span: &Span| {
        span.events
            .iter()
            .find(|event| event.name == "rpc.response.payload")
            .map(|event| {
                event
                    .attributes
                    .iter()
                    .find(|kv| kv.key == "rpc.response.body")
                    .and_then(|kv| kv.value.as_ref()?.value.clone())
            })
    };
    assert_eq!(
        payload(echo_server),
        Some(Some(AnyValue::StringValue(
            r#"{"message":"[REDACTED]"}"#.to_owned()
        ))),
        "the echo server's span carries its redacted response"
    );
    assert_eq!(payload(relay_server), None, "capture is off on the relay");
    assert!(attributes(inner_client).contains_key("server.port"));

    // 2. Incoming trace headers, each format: the relay's server span continues the trace.
    let mut plain = GreeterClient::new(relay_channel.clone());
    for (trace_id, parent, headers) in [
        (
            "0af7651916cd43dd8448eb211c80319c",
            "b7ad6b7169203331",
            vec![(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            )],
        ),
        (
            "80f198ee56343ba864fe8b2a57d3eff7",
            "e457b5a2e4d86bd1",
            vec![("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1")],
        ),
        (
            "463ac35c9f6413ad48485a3953bb6124",
            "a2fb4a1d1a96d312",
            vec![
                ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "1"),
            ],
        ),
    ] {
        plain
            .say_hello(with_headers("traced", &headers))
            .await
            .unwrap();
        let spans = trace(&collector, &telemetry, trace_id, 3).await;
        let relay_server = by_kind(&spans, SERVER, 0);
        assert_eq!(hex(&relay_server.parent_span_id), parent, "{headers:?}");
    }

    // 3. A garbage traceparent is ignored: the call succeeds in a fresh trace.
    plain
        .say_hello_again(with_headers(
            "garbage",
            &[("traceparent", "00-not-a-trace-at-all-01")],
        ))
        .await
        .unwrap();
    let fresh = loop {
        let found = flushed_spans(&collector, &telemetry)
            .await
            .into_iter()
            .find(|s| {
                s.kind == SERVER
                    && s.name == "helloworld.Greeter/SayHelloAgain"
                    && s.parent_span_id.is_empty()
            });
        if let Some(span) = found {
            break span;
        }
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(fresh.trace_id.len(), 16);
    assert!(fresh.trace_id.iter().any(|b| *b != 0));

    // 4. Status: only server faults make server spans errors; clients see every error.
    for (name, trace_id, server_error) in [
        ("fail-invalid", "11111111111111111111111111111111", false),
        ("fail-internal", "22222222222222222222222222222222", true),
    ] {
        let traceparent = format!("00-{trace_id}-1111111111111111-01");
        plain
            .say_hello(with_headers(name, &[("traceparent", &traceparent)]))
            .await
            .unwrap_err();
        let spans = trace(&collector, &telemetry, trace_id, 3).await;
        let is_error = |span: &Span| span.status.as_ref().is_some_and(|s| s.code == STATUS_ERROR);
        assert_eq!(is_error(by_kind(&spans, SERVER, 0)), server_error, "{name}");
        assert_eq!(is_error(by_kind(&spans, SERVER, 1)), server_error, "{name}");
        assert!(
            is_error(by_kind(&spans, CLIENT, 0)),
            "{name}: the relay's client span"
        );
    }

    // 5. The caller's 200 ms reaches the next hop as less.
    let mut request = Request::new(HelloRequest {
        name: "deadline".into(),
    });
    request.set_timeout(Duration::from_millis(200));
    let left_us: u128 = plain
        .say_hello(request)
        .await
        .unwrap()
        .into_inner()
        .message
        .parse()
        .expect("echo saw a deadline");
    assert!(
        left_us > 0 && left_us < 200_000,
        "echo had {left_us} µs of a 200 ms deadline"
    );
}
