//! Connections leave the way grpc-go's do: GOAWAY at max age (with jitter) or when idle,
//! RPCs in flight finish, and a connection that outlives its grace period is closed.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{TestServer, config};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_test_support::eventually_async;
use tokio_stream::StreamExt;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_age_sends_goaway_and_clients_reconnect_without_failures() {
    let mut cfg = config();
    cfg.connection.max_age = Duration::from_millis(300);
    cfg.connection.max_age_grace = Duration::from_secs(5);
    let server = TestServer::start(cfg).await;
    let channel = server.channel().await;

    // tonic's client fails requests that raced the GOAWAY and that the server never
    // processed: ones never sent, and streams above the GOAWAY's last-stream-id (RFC 9113
    // §6.8). grpc-go and grpc-core retry those transparently, and Keel's client will; the
    // grpcio peer test in keel-cli shows zero failures. A failure of any other kind means
    // the server lost an RPC it had accepted.
    let ok = Arc::new(AtomicUsize::new(0));
    let never_sent = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let workers: Vec<_> = (0..8)
        .map(|_| {
            let mut client = GreeterClient::new(channel.clone());
            let (ok, never_sent, failed) = (ok.clone(), never_sent.clone(), failed.clone());
            tokio::spawn(async move {
                while tokio::time::Instant::now() < deadline {
                    let request = HelloRequest { name: "age".into() };
                    match client.say_hello(request).await {
                        Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                        Err(status) if never_reached_server(&status) => {
                            never_sent.fetch_add(1, Ordering::Relaxed)
                        }
                        Err(status) => {
                            eprintln!("failed: {status:?}");
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
            })
        })
        .collect();
    for worker in workers {
        worker.await.unwrap();
    }
    let goaways = server
        .metric("keel_server_goaways_total{listener=\"grpc\",reason=\"max_age\"}")
        .await
        .unwrap_or(0.0);
    let accepted = server
        .metric("keel_server_connections_accepted_total{listener=\"grpc\"}")
        .await
        .unwrap();
    assert!(
        goaways >= 3.0,
        "expected several max-age GOAWAYs in 2 s, got {goaways}"
    );
    assert!(
        accepted >= 3.0,
        "clients should have reconnected, accepted {accepted}"
    );
    assert!(ok.load(Ordering::Relaxed) > 100);
    // What the server accepted, it answered, and the client received: counted on the
    // server, whatever tonic's client made of requests that raced a connection's close (a
    // request written after the server closed the socket fails with a broken pipe, which
    // the client cannot tell from a lost answer).
    let labels = r#"grpc_type="unary",grpc_service="helloworld.Greeter",grpc_method="SayHello""#;
    let started_series = format!("grpc_server_started_total{{{labels}}}");
    let answered_series = format!("grpc_server_handled_total{{{labels},grpc_code=\"OK\"}}");
    // A call is counted when its status passes the observe layer, which can be a moment
    // after the workers stopped: wait (bounded) for the counts to settle. A call the server
    // lost never becomes an OK, and the wait fails.
    eventually_async(
        "every call the server accepted answered OK across GOAWAY",
        Duration::from_secs(5),
        || async {
            let started = server.metric(&started_series).await.unwrap();
            let answered = server.metric(&answered_series).await.unwrap_or(0.0);
            answered >= started
        },
    )
    .await;
    let started = server.metric(&started_series).await.unwrap();
    let answered = server.metric(&answered_series).await.unwrap();
    assert_eq!(started, answered, "accepted RPCs failed across GOAWAY");
    assert_eq!(
        ok.load(Ordering::Relaxed) as f64,
        answered,
        "answers the server sent were lost across GOAWAY"
    );
    eprintln!(
        "ok {}, never sent by the tonic client {}, other client failures {}",
        ok.load(Ordering::Relaxed),
        never_sent.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed)
    );
}

/// Whether the request provably never reached the server's handlers: hyper gave up on it
/// before sending, or h2 failed the stream because the server's GOAWAY excluded it.
fn never_reached_server(status: &tonic::Status) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = std::error::Error::source(status);
    while let Some(error) = source {
        if let Some(hyper) = error.downcast_ref::<hyper::Error>()
            && hyper.is_canceled()
        {
            return true;
        }
        if let Some(h2) = error.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        source = error.source();
    }
    false
}

#[tokio::test]
async fn stream_outliving_the_grace_period_is_cut() {
    let mut cfg = config();
    cfg.connection.max_age = Duration::from_millis(200);
    cfg.connection.max_age_jitter = 0.0;
    cfg.connection.max_age_grace = Duration::from_millis(300);
    let server = TestServer::start(cfg).await;
    let mut stream = common::open_watch(server.channel().await).await;
    // The watch never ends by itself; age (200 ms) + grace (300 ms) ends it.
    let end = tokio::time::timeout(Duration::from_secs(3), stream.next())
        .await
        .expect("stream was not cut after the grace period");
    assert!(matches!(end, Some(Err(_)) | None), "{end:?}");
    assert_eq!(
        server
            .metric("keel_server_forced_closes_total{listener=\"grpc\"}")
            .await,
        Some(1.0)
    );
}

#[tokio::test]
async fn idle_connection_is_closed_and_client_reconnects() {
    let mut cfg = config();
    cfg.connection.max_idle = Duration::from_millis(200);
    let server = TestServer::start(cfg).await;
    let mut client = GreeterClient::new(server.channel().await);
    client
        .say_hello(HelloRequest { name: "a".into() })
        .await
        .unwrap();
    assert_eq!(
        server
            .metric("keel_server_connections{listener=\"grpc\"}")
            .await,
        Some(1.0)
    );
    let goaways = "keel_server_goaways_total{listener=\"grpc\",reason=\"max_idle\"}";
    eventually_async(
        "the idle connection's GOAWAY",
        Duration::from_secs(5),
        || async { server.metric(goaways).await == Some(1.0) },
    )
    .await;
    assert_eq!(
        server
            .metric("keel_server_connections{listener=\"grpc\"}")
            .await,
        Some(0.0)
    );
    client
        .say_hello(HelloRequest { name: "b".into() })
        .await
        .unwrap();
    assert_eq!(
        server
            .metric("keel_server_connections_accepted_total{listener=\"grpc\"}")
            .await,
        Some(2.0)
    );
}

#[tokio::test]
async fn busy_connection_is_not_idle() {
    let mut cfg = config();
    cfg.connection.max_idle = Duration::from_millis(200);
    let server = TestServer::start(cfg).await;
    let _stream = common::open_watch(server.channel().await).await;
    // sleep: the behaviour under test is that nothing happens (3.5 times max_idle)
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(
        server
            .metric("keel_server_goaways_total{listener=\"grpc\",reason=\"max_idle\"}")
            .await,
        Some(0.0)
    );
    assert_eq!(
        server
            .metric("keel_server_connections{listener=\"grpc\"}")
            .await,
        Some(1.0)
    );
}
