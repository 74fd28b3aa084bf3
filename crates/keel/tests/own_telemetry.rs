//! Telemetry handed to each server and client by its builder, not read from process globals:
//! two servers in one process export to two OTLP collectors, each with its own sampler, and
//! an observed client exports its spans where its own telemetry says and carries its trace
//! to the next server with its own propagators.

mod common;

use keel::Server;
use keel::method::MethodTable;
use keel::observe::{ClientObserveLayer, ClientObserver};
use keel::telemetry::{Telemetry, Traces};
use keel_interop::Greeter;
use keel_interop::otlp::{CollectedSpan, OtlpCollector};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use prometheus_client::registry::Registry;
use tonic::transport::Channel;

const SERVER: i32 = 2;
const CLIENT: i32 = 3;
/// OTLP `Span.flags`: W3C sampled, and "whether the parent is remote" is known.
const SAMPLED_KNOWN_LOCAL: u32 = 0x101;
/// The same with a parent from another process.
const SAMPLED_REMOTE_PARENT: u32 = 0x301;

/// Telemetry exporting to `endpoint` as `service`, sampling by `sampler`, not installed
/// globally.
fn telemetry(service: &str, endpoint: &str, sampler: &str) -> Telemetry {
    keel::telemetry::from_settings(service, |name| match name {
        "OTEL_EXPORTER_OTLP_ENDPOINT" => Some(endpoint.to_owned()),
        "OTEL_TRACES_SAMPLER" => Some(sampler.to_owned()),
        _ => None,
    })
    .unwrap()
}

async fn serve(traces: Traces) -> String {
    let server = Server::builder(common::config())
        .add_service(Greeter.into_service())
        .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .traces(traces)
        .bind()
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.serve(std::future::pending()));
    url
}

async fn plain_client(url: &str) -> GreeterClient<Channel> {
    GreeterClient::new(
        Channel::from_shared(url.to_owned())
            .unwrap()
            .connect()
            .await
            .unwrap(),
    )
}

/// Exports what `telemetry` queued and waits for the collector to have acknowledged it.
async fn flush(telemetry: &std::sync::Arc<Telemetry>) {
    let flushing = telemetry.clone();
    tokio::task::spawn_blocking(move || flushing.flush())
        .await
        .unwrap();
}

fn hello(name: &str) -> tonic::Request<HelloRequest> {
    tonic::Request::new(HelloRequest { name: name.into() })
}

fn of_kind(spans: &[CollectedSpan], kind: i32) -> Vec<&CollectedSpan> {
    spans.iter().filter(|s| s.span.kind == kind).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_servers_export_to_their_own_collectors_with_their_own_samplers() {
    let (collector_a, endpoint_a) = OtlpCollector::start().await;
    let (collector_b, endpoint_b) = OtlpCollector::start().await;
    // A samples every call; B only those whose caller sampled them.
    let telemetry_a = std::sync::Arc::new(telemetry("svc-a", &endpoint_a, "always_on"));
    let telemetry_b =
        std::sync::Arc::new(telemetry("svc-b", &endpoint_b, "parentbased_always_off"));
    let url_a = serve(telemetry_a.traces()).await;
    let url_b = serve(telemetry_b.traces()).await;

    let mut to_a = plain_client(&url_a).await;
    let mut to_b = plain_client(&url_b).await;
    for _ in 0..5 {
        to_a.say_hello(hello("a")).await.unwrap();
        to_b.say_hello(hello("b")).await.unwrap();
    }
    flush(&telemetry_a).await;
    flush(&telemetry_b).await;
    let spans_a = collector_a.spans();
    assert_eq!(spans_a.len(), 5, "A samples every call: {spans_a:#?}");
    for span in &spans_a {
        assert_eq!(span.service, "svc-a");
        assert_eq!(span.span.kind, SERVER);
        assert_eq!(span.span.flags, SAMPLED_KNOWN_LOCAL, "{span:#?}");
    }
    assert!(
        collector_b.spans().is_empty(),
        "B's sampler drops calls no caller sampled: {:#?}",
        collector_b.spans()
    );

    // A client observed with A's telemetry calls B: its span goes to A's collector, and the
    // trace it carries (A's propagators; A sampled it) makes B sample and export B's span.
    let mut methods = MethodTable::default();
    methods
        .add_encoded(keel_interop::FILE_DESCRIPTOR_SET)
        .unwrap();
    let observer = ClientObserver::new(&methods, &mut Registry::default(), &telemetry_a.traces());
    let channel = Channel::from_shared(url_b.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut observed = GreeterClient::new(
        tower::ServiceBuilder::new()
            .layer(ClientObserveLayer::new(observer).target(&url_b.parse().unwrap()))
            .service(channel),
    );
    observed.say_hello(hello("traced")).await.unwrap();
    flush(&telemetry_a).await;
    flush(&telemetry_b).await;

    let spans_a = collector_a.spans();
    let clients = of_kind(&spans_a, CLIENT);
    assert_eq!(clients.len(), 1, "the client span, in A: {spans_a:#?}");
    let client = &clients[0].span;
    assert_eq!(clients[0].service, "svc-a");
    let spans_b = collector_b.spans();
    assert_eq!(spans_b.len(), 1, "B's one sampled call: {spans_b:#?}");
    let server = &spans_b[0];
    assert_eq!(server.service, "svc-b");
    assert_eq!(server.span.kind, SERVER);
    assert_eq!(
        server.span.trace_id, client.trace_id,
        "one trace across the hop"
    );
    assert_eq!(server.span.parent_span_id, client.span_id);
    assert_eq!(
        server.span.flags, SAMPLED_REMOTE_PARENT,
        "the parent came over the wire"
    );
    assert!(
        of_kind(&spans_b, CLIENT).is_empty() && of_kind(&spans_a, SERVER).len() == 5,
        "nothing crossed to the other collector"
    );

    // Neither telemetry touched the globals: a server on the process's default exports
    // nowhere and the calls still work.
    let url_default = serve(Traces::global()).await;
    plain_client(&url_default)
        .await
        .say_hello(hello("default"))
        .await
        .unwrap();
    flush(&telemetry_a).await;
    flush(&telemetry_b).await;
    assert_eq!(collector_a.spans().len(), 6);
    assert_eq!(collector_b.spans().len(), 1);
    // Stopping flushes and waits for the exporters: off the runtime's threads.
    tokio::task::spawn_blocking(move || drop((telemetry_a, telemetry_b)))
        .await
        .unwrap();
}
