//! The real `keel serve` exports its spans over OTLP when `OTEL_EXPORTER_OTLP_ENDPOINT` is
//! set, and flushes what is queued when it stops: spans of calls made just before SIGTERM
//! reach the collector, with the service name from `OTEL_SERVICE_NAME`.

mod common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::KeelServe;
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value;
use tonic::{Request, Response, Status};

/// Keeps (service name, span name) of every span exported to it.
#[derive(Clone, Default)]
struct Collector {
    spans: Arc<Mutex<Vec<(String, String)>>>,
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut spans = self.spans.lock().unwrap();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|resource| &resource.attributes)
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    Value::StringValue(name) => Some(name.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span.name));
                }
            }
        }
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

// Multi-threaded: waiting for the server's exit blocks this thread, while the client's
// connection must still answer the server's GOAWAY and PING.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_of_the_last_calls_are_flushed_at_shutdown() {
    let collector = Collector::default();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(collector.clone()))
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );

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

    let spans = collector.spans.lock().unwrap().clone();
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
