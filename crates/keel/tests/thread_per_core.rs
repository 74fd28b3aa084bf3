//! Thread-per-core serving (`server.serving_threads`): every thread accepts on the one port,
//! the connection limit is split between them, and shutdown drains and reports them as one.

mod common;

use std::collections::BTreeSet;
use std::convert::Infallible;
use std::time::Duration;

use common::{TestServer, config, http_get};
use keel::server::{GrpcStack, HttpService};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use tower::util::BoxCloneSyncService;

/// Answers a plain HTTP request with the name of the thread that served it, or never for
/// `/hang`.
fn thread_name(_grpc: GrpcStack) -> HttpService {
    BoxCloneSyncService::new(tower::service_fn(
        |request: http::Request<tonic::body::Body>| async move {
            if request.uri().path() == "/hang" {
                std::future::pending::<()>().await;
            }
            let name = std::thread::current().name().unwrap_or("").to_owned();
            Ok::<_, Infallible>(http::Response::new(tonic::body::Body::new(name)))
        },
    ))
}

async fn start(threads: usize, adjust: impl FnOnce(&mut keel::config::ServerConfig)) -> TestServer {
    let mut cfg = config();
    cfg.serving_threads = threads;
    adjust(&mut cfg);
    TestServer::start_with(cfg, |builder| builder.http_fallback(thread_name)).await
}

#[tokio::test]
async fn connections_spread_over_every_serving_thread() {
    let server = start(2, |_| {}).await;
    let mut threads = BTreeSet::new();
    // The kernel hashes each connection's ports onto one of the two sockets: 40 connections
    // all on one socket would happen once in 2^39 runs.
    for _ in 0..40 {
        let (status, body) = http_get(server.addr, "/whoami").await;
        assert_eq!(status, 200);
        threads.insert(body);
    }
    assert_eq!(
        threads,
        BTreeSet::from(["keel-grpc-0".to_owned(), "keel-grpc-1".to_owned()])
    );
    let reply = GreeterClient::new(server.channel().await)
        .say_hello(HelloRequest {
            name: "threads".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reply.message, "Hello threads");
    let report = server.stop().await;
    assert_eq!((report.failed, report.forced, report.cut), (0, 0, 0));
}

#[tokio::test]
async fn the_connection_limit_is_split_between_the_threads() {
    // 4 over 2 threads: each holds 2, so at most 4 are served however the kernel spreads
    // them, and every other one is closed on arrival and counted.
    let server = start(2, |cfg| cfg.connection.max_connections = 4).await;
    let mut held = Vec::new();
    let mut served = 0;
    for _ in 0..12 {
        let Ok(channel) = tonic::transport::Endpoint::from_shared(server.url())
            .unwrap()
            .connect()
            .await
        else {
            continue;
        };
        let mut client = GreeterClient::new(channel);
        if client
            .say_hello(HelloRequest { name: "n".into() })
            .await
            .is_ok()
        {
            served += 1;
        }
        held.push(client);
    }
    let refused = server
        .metric("keel_server_connections_refused_total{listener=\"grpc\"}")
        .await
        .unwrap_or(0.0);
    assert!((2..=4).contains(&served), "served {served}");
    // A refused client may try again, so each unserved one was refused at least once.
    assert!(
        refused as usize >= 12 - served,
        "served {served}, refused {refused}"
    );
}

#[tokio::test]
async fn a_forced_close_cuts_each_request_once() {
    let server = start(2, |cfg| cfg.shutdown.timeout = Duration::from_millis(300)).await;
    // 20 hanging requests on 20 connections: all on one thread once in 2^19 runs.
    let addr = server.addr;
    let hanging: Vec<_> = (0..20)
        .map(|_| tokio::spawn(async move { http_get(addr, "/hang").await }))
        .collect();
    keel_test_support::eventually_async(
        "the requests in flight",
        Duration::from_secs(5),
        || async {
            server
                .metric("keel_server_inflight_rpcs{listener=\"grpc\"}")
                .await
                == Some(20.0)
        },
    )
    .await;
    let report = server.stop().await;
    for request in hanging {
        request.abort();
    }
    // Every thread closes by force at the deadline and reads the same listener-wide
    // in-flight gauge: 20 requests are cut, not 20 per thread.
    assert_eq!((report.forced, report.cut), (20, 20), "{report:?}");
}

#[tokio::test]
async fn too_many_serving_threads_is_a_clear_error() {
    let mut cfg = config();
    cfg.serving_threads = 100_000;
    let error = keel::Server::builder(cfg).bind().await.unwrap_err();
    assert!(error.to_string().contains("serving_threads"), "{error}");
}
