//! The real `keel serve` exports its spans over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, and flushes what is queued when it stops: spans of calls made just before SIGTERM
//! reach the collector, with the service name from `OTEL_SERVICE_NAME`.

mod common;

use std::time::Duration;

use common::KeelServe;
use keel_interop::otlp::OtlpCollector;
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;

// Multi-threaded: waiting for the server's exit blocks this thread, while the client's
// connection must still answer the server's GOAWAY and PING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_the_last_calls_are_flushed_at_shutdown() {
    let (collector, endpoint) = OtlpCollector::start().await;

    let mut server = KeelServe::start_with_env(
        &["--set", "shutdown.drain_delay=0s"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &endpoint),
            ("OTEL_SERVICE_NAME", "keel-e2e"),
        ],
    );
    let mut client = GreeterClient::connect(server.grpc_url()).await.unwrap();
    for _ in 0..3 {
        client
            .say_hello(HelloRequest { name: "Ada".into() })
            .await
            .unwrap();
    }
    drop(client);
    // The batch processor exports every 5 s; stopping now leaves the spans to the flush.
    server.sigterm();
    let Some(status) = server.wait_exit(Duration::from_secs(20)) else {
        panic!(
            "keel serve did not exit after SIGTERM; logs:\n{}",
            server.logs()
        );
    };
    assert!(status.success(), "{status:?}\n{}", server.logs());

    let spans: Vec<(String, String)> = collector
        .spans()
        .into_iter()
        .map(|c| (c.service, c.span.name))
        .collect();
    let greeted = spans
        .iter()
        .filter(|(service, name)| service == "keel-e2e" && name == "helloworld.Greeter/SayHello")
        .count();
    assert_eq!(
        greeted,
        3,
        "spans received: {spans:?}\nserver logs:\n{}",
        server.logs()
    );
}
