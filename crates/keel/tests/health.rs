//! grpc.health.v1 semantics and the admin endpoints that mirror them.

mod common;

use std::time::Duration;

use common::{TestServer, config};
use keel::health::ServingStatus;
use keel::health::pb::health_check_response::ServingStatus as Wire;
use keel::health::pb::health_client::HealthClient;
use keel::health::pb::{HealthCheckRequest, HealthListRequest};
use tokio_stream::StreamExt;
use tonic::Code;

fn request(service: &str) -> HealthCheckRequest {
    HealthCheckRequest {
        service: service.to_owned(),
    }
}

#[tokio::test]
async fn check_reports_server_and_each_service() {
    let server = TestServer::start(config()).await;
    let mut client = HealthClient::new(server.channel().await);
    for service in ["", "helloworld.Greeter", "grpc.health.v1.Health"] {
        let status = client
            .check(request(service))
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(status, Wire::Serving as i32, "{service:?}");
    }
    let err = client.check(request("no.such.Service")).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);
}

#[tokio::test]
async fn list_returns_every_service() {
    let server = TestServer::start(config()).await;
    let mut client = HealthClient::new(server.channel().await);
    let statuses = client
        .list(HealthListRequest {})
        .await
        .unwrap()
        .into_inner()
        .statuses;
    for service in ["", "helloworld.Greeter", "grpc.health.v1.Health"] {
        assert_eq!(
            statuses[service].status,
            Wire::Serving as i32,
            "{service:?}"
        );
    }
}

#[tokio::test]
async fn watch_unknown_service_streams_service_unknown_and_stays_open() {
    let server = TestServer::start(config()).await;
    let mut client = HealthClient::new(server.channel().await);
    let mut stream = client
        .watch(request("later.Service"))
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.status, Wire::ServiceUnknown as i32);
    // Stays open with nothing new to say.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), stream.next())
            .await
            .is_err()
    );
    // Becomes known: the watcher hears it.
    server.health.set("later.Service", ServingStatus::Serving);
    let next = stream.next().await.unwrap().unwrap();
    assert_eq!(next.status, Wire::Serving as i32);
    server
        .health
        .set("later.Service", ServingStatus::NotServing);
    let next = stream.next().await.unwrap().unwrap();
    assert_eq!(next.status, Wire::NotServing as i32);
}

#[tokio::test]
async fn shutdown_reports_not_serving_then_ends_watches() {
    let mut cfg = config();
    cfg.shutdown.drain_delay = Duration::from_millis(500);
    let mut server = TestServer::start(cfg).await;
    let mut client = HealthClient::new(server.channel().await);
    let mut stream = client.watch(request("")).await.unwrap().into_inner();
    assert_eq!(
        stream.next().await.unwrap().unwrap().status,
        Wire::Serving as i32
    );
    assert_eq!(server.admin_get("/readyz").await.0, 200);

    server.trigger_stop();
    let next = stream.next().await.unwrap().unwrap();
    assert_eq!(next.status, Wire::NotServing as i32);
    // During the drain delay RPCs are still served, but readiness is gone.
    let (code, body) = server.admin_get("/readyz").await;
    assert_eq!((code, body.contains("not_serving")), (503, true), "{body}");
    let check = client.check(request("")).await.unwrap().into_inner();
    assert_eq!(check.status, Wire::NotServing as i32);
    // When the server stops accepting, the watch ends so it does not hold shutdown open.
    let end = tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .expect("watch ends");
    assert_eq!(end.unwrap().unwrap_err().code(), Code::Unavailable);
}

#[tokio::test]
async fn admin_endpoints_answer_with_json_and_metrics() {
    let server = TestServer::start(config()).await;
    let (code, body) = server.admin_get("/healthz").await;
    assert_eq!(code, 200);
    assert!(body.contains("alive"), "{body}");
    let (code, body) = server.admin_get("/readyz").await;
    assert_eq!(code, 200);
    assert!(body.contains("\"serving\""), "{body}");
    let (code, body) = server.admin_get("/nope").await;
    assert_eq!(code, 404);
    assert!(body.contains("/metrics"), "{body}");

    let (code, text) = server.admin_get("/metrics").await;
    assert_eq!(code, 200);
    for series in [
        "process_cpu_seconds_total",
        "process_resident_memory_bytes",
        "process_open_fds",
        "process_threads",
        "keel_server_connections{listener=\"grpc\"}",
        "keel_server_inflight_rpcs{listener=\"grpc\"}",
        "keel_server_shed_rpcs_total",
        "keel_runtime_alive_tasks",
    ] {
        let value = common::parse_metric(&text, series);
        assert!(value.is_some(), "{series} missing from:\n{text}");
    }
    assert!(common::parse_metric(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(common::parse_metric(&text, "process_open_fds").unwrap() >= 3.0);
}
