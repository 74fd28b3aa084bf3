//! grpc.health.v1 semantics and the admin endpoints that mirror them.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
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
        let value = common::metric(&text, series);
        assert!(value.is_some(), "{series} missing from:\n{text}");
    }
    assert!(common::metric(&text, "process_resident_memory_bytes").unwrap() > 1e6);
    assert!(common::metric(&text, "process_open_fds").unwrap() >= 3.0);
}

/// A probe the test switches: down until `up` is set; counts its runs in `probes`.
fn switched_check(
    name: &str,
    up: &Arc<AtomicBool>,
    probes: &Arc<AtomicUsize>,
) -> keel::health::ReadinessCheck {
    let (up, probes) = (up.clone(), probes.clone());
    keel::health::ReadinessCheck::new(name, move || {
        probes.fetch_add(1, Ordering::SeqCst);
        let up = up.load(Ordering::SeqCst);
        async move {
            if up {
                Ok(())
            } else {
                Err(std::io::Error::other("connection refused"))
            }
        }
    })
    .interval(Duration::from_millis(20))
}

/// Polls `/readyz` (bounded) until its status code is `code`; returns the body.
async fn wait_readyz(server: &TestServer, code: u16) -> serde_json::Value {
    let mut last = (0, String::new());
    for _ in 0..250 {
        last = server.admin_get("/readyz").await;
        if last.0 == code {
            return serde_json::from_str(&last.1).expect("JSON body");
        }
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("/readyz never answered {code}; last: {last:?}");
}

async fn check_status(client: &mut HealthClient<tonic::transport::Channel>, service: &str) -> i32 {
    client
        .check(request(service))
        .await
        .unwrap()
        .into_inner()
        .status
}

#[tokio::test]
async fn a_failing_critical_check_makes_the_server_unready_until_it_passes() {
    let server = TestServer::start(config()).await;
    let mut client = HealthClient::new(server.channel().await);
    let mut watch = client.watch(request("")).await.unwrap().into_inner();
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        Wire::Serving as i32
    );
    let (up, probes) = (Arc::new(AtomicBool::new(false)), Arc::default());
    server
        .health
        .add_check(switched_check("database", &up, &probes))
        .await;

    let body = wait_readyz(&server, 503).await;
    assert_eq!(body["status"], "not_serving", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "failing", "{body}");
    assert_eq!(body["checks"]["database"]["impact"], "critical", "{body}");
    assert_eq!(
        body["checks"]["database"]["error"], "connection refused",
        "{body}"
    );
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        Wire::NotServing as i32
    );
    for service in ["", "helloworld.Greeter"] {
        assert_eq!(
            check_status(&mut client, service).await,
            Wire::NotServing as i32,
            "{service:?}"
        );
    }

    up.store(true, Ordering::SeqCst);
    let body = wait_readyz(&server, 200).await;
    assert_eq!(body["status"], "serving", "{body}");
    assert_eq!(body["checks"]["database"]["status"], "passing", "{body}");
    assert_eq!(
        watch.next().await.unwrap().unwrap().status,
        Wire::Serving as i32
    );
    assert_eq!(
        check_status(&mut client, "helloworld.Greeter").await,
        Wire::Serving as i32
    );
}

#[tokio::test]
async fn a_failing_degraded_check_keeps_the_server_ready() {
    let server = TestServer::start(config()).await;
    let (up, probes) = (Arc::new(AtomicBool::new(false)), Arc::default());
    server
        .health
        .add_check(switched_check("cache", &up, &probes).degraded())
        .await;
    let (code, body) = server.admin_get("/readyz").await;
    let body: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "degraded", "{body}");
    assert_eq!(body["checks"]["cache"]["status"], "failing", "{body}");
    assert_eq!(body["checks"]["cache"]["impact"], "degraded", "{body}");
    let mut client = HealthClient::new(server.channel().await);
    assert_eq!(check_status(&mut client, "").await, Wire::Serving as i32);
}

#[tokio::test]
async fn a_probe_flood_never_reaches_the_dependency() {
    let server = TestServer::start(config()).await;
    let (up, probes) = (
        Arc::new(AtomicBool::new(true)),
        Arc::new(AtomicUsize::new(0)),
    );
    let check = switched_check("database", &up, &probes).interval(Duration::from_secs(3600));
    server.health.add_check(check).await;
    let floods = (0..200).map(|_| server.admin_get("/readyz"));
    for (code, body) in futures_util::future::join_all(floods).await {
        assert_eq!(code, 200, "{body}");
    }
    assert_eq!(
        probes.load(Ordering::SeqCst),
        1,
        "probes run in the background, not per request"
    );
}

#[tokio::test]
async fn a_hung_check_fails_at_its_timeout() {
    let server = TestServer::start(config()).await;
    let check = keel::health::ReadinessCheck::new("database", || {
        std::future::pending::<Result<(), std::io::Error>>()
    })
    .timeout(Duration::from_millis(100));
    let started = std::time::Instant::now();
    server.health.add_check(check).await;
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    let (code, body) = server.admin_get("/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("no answer within 100ms"), "{body}");
}
