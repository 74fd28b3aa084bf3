//! Keel's client Channel while a backend process is killed (SIGKILL) under load and
//! restarted on the same address: with a retry policy on UNAVAILABLE no call fails, the
//! killed backend's subchannel goes to TRANSIENT_FAILURE, and it comes back.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::KeelServe;
use keel::client::{Channel, ChannelConfig, ConnectivityState};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_test_support::eventually;

const RETRY: &str = r#"{
    "methodConfig": [{
        "name": [{"service": "helloworld.Greeter"}],
        "retryPolicy": {"maxAttempts": 5, "initialBackoff": "0.02s", "maxBackoff": "0.2s",
                        "backoffMultiplier": 2, "retryableStatusCodes": ["UNAVAILABLE"]}
    }]
}"#;

fn state(channel: &Channel, addr: std::net::SocketAddr) -> Option<ConnectivityState> {
    channel
        .backends()
        .into_iter()
        .find(|(address, _)| address.to_string() == addr.to_string())
        .map(|(_, state)| state)
}

/// Waits (bounded, 10 s) until `done` holds.
async fn wait_for(what: &str, done: impl FnMut() -> bool) {
    eventually(what, Duration::from_secs(10), done).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_backend_costs_no_call_and_comes_back_after_restart() {
    let mut a = KeelServe::start_listening("127.0.0.1:0", &[], &[]);
    let b = KeelServe::start_listening("127.0.0.2:0", &[], &[]);
    let a_addr = a.grpc;
    let mut config = ChannelConfig::default();
    config.connect_backoff.initial = Duration::from_millis(50);
    config.connect_backoff.max = Duration::from_millis(200);
    let channel = Channel::builder(&format!("static:///{},{}", a.grpc, b.grpc))
        .unwrap()
        .config(config)
        .service_config(RETRY)
        .unwrap()
        .build()
        .unwrap();
    assert!(channel.ready(Duration::from_secs(5)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut load = Vec::new();
    for _ in 0..8 {
        let mut client = GreeterClient::new(channel.clone());
        let (stop, ok, failed, errors) = (stop.clone(), ok.clone(), failed.clone(), errors.clone());
        load.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                match client
                    .say_hello(HelloRequest {
                        name: "load".into(),
                    })
                    .await
                {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(status) => {
                        errors.lock().unwrap().push(status);
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    let ok_before = |n| {
        let ok = ok.clone();
        move || ok.load(Ordering::Relaxed) >= n
    };
    wait_for("calls flow", ok_before(2_000)).await;

    a.child.kill().unwrap();
    a.child.wait().unwrap();
    wait_for("the killed backend's subchannel fails", || {
        state(&channel, a_addr) == Some(ConnectivityState::TransientFailure)
    })
    .await;
    let at_kill = ok.load(Ordering::Relaxed);
    wait_for("calls flow to the survivor", ok_before(at_kill + 2_000)).await;

    let restarted = KeelServe::start_listening(&a_addr.to_string(), &[], &[]);
    wait_for("the restarted backend's subchannel is ready", || {
        state(&channel, a_addr) == Some(ConnectivityState::Ready)
    })
    .await;
    let at_restart = ok.load(Ordering::Relaxed);
    wait_for("calls flow to both", ok_before(at_restart + 2_000)).await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "failed calls: {:?}",
        errors.lock().unwrap()
    );
    let served = common::metric(
        &common::scrape(restarted.admin).await,
        "grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"helloworld.Greeter\",grpc_method=\"SayHello\",grpc_code=\"OK\"}",
    )
    .unwrap_or(0.0);
    assert!(
        served > 100.0,
        "the restarted backend is back in rotation: {served}"
    );
    drop(b);
}
