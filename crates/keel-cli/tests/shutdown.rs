//! SIGTERM under load: RPCs accepted before the drain ended all succeed, new connections
//! are refused afterwards, and the process exits 0 within its deadline even though one
//! stream never ends.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::KeelServe;
use keel_interop::pb::grpc_testing::test_service_client::TestServiceClient;
use keel_interop::pb::grpc_testing::{ResponseParameters, StreamingOutputCallRequest};
use tokio_stream::StreamExt;
use tonic::transport::{Channel, Endpoint};

/// A server-streaming call of `messages` responses, `interval` apart.
fn streaming(messages: usize, interval: Duration) -> StreamingOutputCallRequest {
    StreamingOutputCallRequest {
        response_parameters: vec![
            ResponseParameters {
                size: 16,
                interval_us: interval.as_micros() as i32,
                ..Default::default()
            };
            messages
        ],
        ..Default::default()
    }
}

#[derive(Default)]
struct Tally {
    accepted_ok: AtomicUsize,
    accepted_failed: AtomicUsize,
    refused: AtomicUsize,
}

/// Loops RPCs of ~150 ms until `stop`; an RPC counts as accepted once its response headers
/// arrive (the server's handler has started).
async fn worker(channel: Channel, tally: Arc<Tally>, stop: Arc<AtomicBool>) {
    let mut client = TestServiceClient::new(channel);
    while !stop.load(Ordering::Relaxed) {
        let mut stream = match client
            .streaming_output_call(streaming(3, Duration::from_millis(50)))
            .await
        {
            Ok(response) => response.into_inner(),
            Err(_) => {
                tally.refused.fetch_add(1, Ordering::Relaxed);
                // sleep: a refused client's pause before retrying: load pacing
                tokio::time::sleep(Duration::from_millis(20)).await;
                continue;
            }
        };
        let mut received = 0;
        let mut failed = None;
        while let Some(item) = stream.next().await {
            match item {
                Ok(_) => received += 1,
                Err(status) => failed = Some(status),
            }
        }
        if failed.is_none() && received == 3 {
            tally.accepted_ok.fetch_add(1, Ordering::Relaxed);
        } else {
            eprintln!("accepted RPC failed after {received} messages: {failed:?}");
            tally.accepted_failed.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drains_refuses_and_exits_within_deadline() {
    let drain = Duration::from_millis(1500);
    let deadline = Duration::from_secs(5);
    let mut server = KeelServe::start(&[
        "--set",
        "shutdown.drain_delay=1500ms",
        "--set",
        "shutdown.timeout=5s",
    ]);
    let addr = server.grpc;

    // Eight connections carrying 200 concurrent streams.
    let mut channels = Vec::new();
    for _ in 0..8 {
        let channel = Endpoint::from_shared(server.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        channels.push(channel);
    }
    // One stream that would run for 100 s: it must not hold the process past the deadline.
    let mut endless = TestServiceClient::new(channels[0].clone())
        .streaming_output_call(streaming(1000, Duration::from_millis(100)))
        .await
        .expect("endless stream accepted")
        .into_inner();

    let tally = Arc::new(Tally::default());
    let stop = Arc::new(AtomicBool::new(false));
    let workers: Vec<_> = (0..200)
        .map(|i| tokio::spawn(worker(channels[i % 8].clone(), tally.clone(), stop.clone())))
        .collect();

    // The load is running once more RPCs are done than there are workers.
    let started = Instant::now();
    while tally.accepted_ok.load(Ordering::Relaxed) <= 200 {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "load never got going"
        );
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let before = tally.accepted_ok.load(Ordering::Relaxed);
    let signalled = Instant::now();
    server.sigterm();

    // After the drain delay the listener is closed: new connections are refused.
    // sleep: the drain delay is the behaviour under test (plus slack for it to close)
    tokio::time::sleep(drain + Duration::from_millis(500)).await;
    let connect = tokio::net::TcpStream::connect(addr).await;
    assert!(
        connect.is_err(),
        "a new connection was accepted after the drain"
    );

    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait_exit(deadline + Duration::from_secs(2));
        (status, server.logs())
    });
    let (status, logs) = status.await.unwrap();
    let elapsed = signalled.elapsed();
    stop.store(true, Ordering::Relaxed);
    for worker in workers {
        worker.await.unwrap();
    }
    let status =
        status.unwrap_or_else(|| panic!("still running {elapsed:?} after SIGTERM; logs:\n{logs}"));
    assert!(status.success(), "exit status {status}; logs:\n{logs}");
    assert!(
        elapsed < deadline + Duration::from_secs(1),
        "took {elapsed:?}"
    );
    assert!(
        elapsed >= deadline - Duration::from_millis(500),
        "the endless stream should have held it to the deadline, exited after {elapsed:?}"
    );

    let ok = tally.accepted_ok.load(Ordering::Relaxed);
    assert!(
        ok > before + 100,
        "RPCs accepted during the drain: {}",
        ok - before
    );
    assert_eq!(
        tally.accepted_failed.load(Ordering::Relaxed),
        0,
        "accepted RPCs failed; logs:\n{logs}"
    );
    // The endless stream was cut at the deadline, not completed.
    let mut cut = false;
    while let Some(item) = endless.next().await {
        if item.is_err() {
            cut = true;
        }
    }
    assert!(
        cut,
        "the endless stream should end with an error when the deadline closes it"
    );
    for phase in ["not_serving", "stop_accepting", "deadline", "done"] {
        assert!(
            logs.contains(&format!("phase=\"{phase}\""))
                || logs.contains(&format!("phase={phase}")),
            "phase {phase} not logged:\n{logs}"
        );
    }
}

/// SIGTERM, twenty times, under 32 clients sharing one connection: no accepted RPC fails,
/// and the server's own report agrees (every request finished, none cut).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_sigterm_under_32_clients_on_one_connection_fails_no_accepted_rpc() {
    for round in 0..20 {
        let mut server = KeelServe::start(&[
            "--set",
            "shutdown.drain_delay=200ms",
            "--set",
            "shutdown.timeout=10s",
        ]);
        let channel = Endpoint::from_shared(server.grpc_url())
            .unwrap()
            .connect()
            .await
            .unwrap();
        let tally = Arc::new(Tally::default());
        let stop = Arc::new(AtomicBool::new(false));
        let workers: Vec<_> = (0..32)
            .map(|_| tokio::spawn(worker(channel.clone(), tally.clone(), stop.clone())))
            .collect();
        // Signal once the load is running: every client has finished at least one call.
        let started = Instant::now();
        while tally.accepted_ok.load(Ordering::Relaxed) < 64 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "round {round}: load never got going"
            );
            tokio::task::yield_now().await;
            // sleep: poll interval of a bounded poll on the condition
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        server.sigterm();
        let (status, logs) = tokio::task::spawn_blocking(move || {
            let status = server.wait_exit(Duration::from_secs(15));
            (status, server.logs())
        })
        .await
        .unwrap();
        stop.store(true, Ordering::Relaxed);
        for worker in workers {
            worker.await.unwrap();
        }
        let status =
            status.unwrap_or_else(|| panic!("round {round}: still running; logs:\n{logs}"));
        assert!(
            status.success(),
            "round {round}: exit {status}; logs:\n{logs}"
        );
        assert_eq!(
            tally.accepted_failed.load(Ordering::Relaxed),
            0,
            "round {round}: accepted RPCs failed; logs:\n{logs}"
        );
        assert!(
            logs.contains("every request finished") && logs.contains("requests_cut=0"),
            "round {round}: the server reports cut requests:\n{logs}"
        );
    }
}
