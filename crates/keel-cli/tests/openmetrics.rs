//! `/metrics` is valid OpenMetrics by the reference parser (Python `prometheus_client`), with
//! the exemplar of a sampled call carrying its trace id: what Prometheus scrapes is what the
//! specification allows, not only what our own tests parse.

mod common;
#[path = "common/python.rs"]
mod python;

use std::io::Write;
use std::process::{Command, Stdio};

use common::{KeelServe, scrape};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";

#[tokio::test]
async fn metrics_parse_as_openmetrics_with_trace_exemplars() {
    let server = KeelServe::start(&[]);
    let mut client = GreeterClient::connect(server.grpc_url()).await.unwrap();
    let mut request = tonic::Request::new(HelloRequest { name: "Ada".into() });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.say_hello(request).await.unwrap();
    let response = scrape(server.admin).await;
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );

    let mut parser = Command::new(python::python())
        .arg(python::workspace_root().join("tests/python/check_openmetrics.py"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run the Python OpenMetrics parser");
    parser
        .stdin
        .take()
        .unwrap()
        .write_all(body.as_bytes())
        .unwrap();
    let output = parser.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}\n--- exposition ---\n{body}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    for (family, kind) in [
        ("grpc_server_started", "counter"),
        ("grpc_server_handled", "counter"),
        ("grpc_server_handling_seconds", "histogram"),
        ("keel_server_inflight_rpcs", "gauge"),
    ] {
        assert_eq!(parsed["families"][family], kind, "{family} in {parsed}");
    }
    let exemplars = parsed["exemplars"].as_array().unwrap();
    assert!(
        exemplars
            .iter()
            .any(|e| e["sample"] == "grpc_server_handling_seconds_bucket"
                && e["labels"]["grpc_method"] == "SayHello"
                && e["exemplar"]["trace_id"] == TRACE_ID),
        "no exemplar with the call's trace id: {exemplars:?}"
    );
}
