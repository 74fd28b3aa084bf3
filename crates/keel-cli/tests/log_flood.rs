//! Logs a peer cannot inflate: 10,000 calls that the client cancels or sends to a method the
//! server does not have, against the real `keel serve` at the default log level (`info`),
//! write a few kilobytes of logs in all, while `/metrics` counts every one of them.
//!
//! Cancelled calls log at debug; unknown-method calls log at info, at most a few records a
//! second, then one "suppressed K similar records" line (docs/ARCHITECTURE.md, "Logs a peer
//! cannot inflate").

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{KeelServe, metric, scrape};
use futures_util::StreamExt;
use keel_interop::pb::grpc_testing::{ResponseParameters, StreamingOutputCallRequest};
use prost::Message;

const CALLS: usize = 10_000;
const CONCURRENCY: usize = 64;
const CONNECTIONS: usize = 4;
/// The most the flood may add to the server's stdout and stderr: a few kilobytes, or, should
/// a busy machine stretch it over more than a few seconds, what the policy allows for the one
/// outcome logged at info (5 records of about 350 bytes and one summary a second).
fn max_log_bytes(flood: Duration) -> usize {
    (8 * 1024).max((flood.as_secs() as usize + 2) * 2048)
}

const CANCELLED: &str = r#"grpc_server_handled_total{grpc_type="server_stream",grpc_service="grpc.testing.TestService",grpc_method="StreamingOutputCall",grpc_code="Canceled"}"#;
const UNKNOWN: &str = r#"grpc_server_handled_total{grpc_type="unary",grpc_service="unknown",grpc_method="unknown",grpc_code="Unimplemented"}"#;

fn framed(message: &impl Message) -> Bytes {
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut framed).unwrap();
    Bytes::from(framed)
}

fn request(addr: SocketAddr, path: &str) -> http::Request<()> {
    http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// One HTTP/2 connection, driven by its own task.
async fn connect(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    client
}

/// A call to a method no descriptor names: answered UNIMPLEMENTED (the server answers
/// without reading a request message, so none is sent).
async fn unknown_method(client: h2::client::SendRequest<Bytes>, addr: SocketAddr) {
    let mut client = client.ready().await.expect("connection ready");
    let (response, _) = client
        .send_request(request(addr, "/keel.flood.Nowhere/Call"), true)
        .expect("stream opened");
    let response = response.await.expect("an answer");
    assert_eq!(response.headers()["grpc-status"], "12");
}

/// A server stream whose second response is 30 s away; reset with CANCEL once the response
/// headers show the handler is running.
async fn cancelled(client: h2::client::SendRequest<Bytes>, addr: SocketAddr, message: Bytes) {
    let mut client = client.ready().await.expect("connection ready");
    let (response, mut send) = client
        .send_request(
            request(addr, "/grpc.testing.TestService/StreamingOutputCall"),
            false,
        )
        .expect("stream opened");
    send.send_data(message, true).expect("request sent");
    let response = response.await.expect("response headers");
    assert_eq!(response.status(), 200);
    send.send_reset(h2::Reason::CANCEL);
}

/// Waits up to `limit` for `done` to hold of the metrics text; returns the last text.
async fn metrics_until(admin: SocketAddr, limit: Duration, done: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let text = scrape(admin).await;
        if done(&text) || start.elapsed() > limit {
            return text;
        }
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Unknown-method calls the log accounts for: records written at info plus the counts in
/// "suppressed K similar records" lines for that outcome.
fn unknown_calls_accounted(logs: &str) -> usize {
    let lines = logs.lines().filter(|line| line.contains(" INFO "));
    lines
        .map(|line| {
            if line.contains("finished call") && line.contains("grpc_code=\"Unimplemented\"") {
                1
            } else if let Some(rest) = line.split("suppressed ").nth(1)
                && line.contains("grpc_code=\"Unimplemented\"")
            {
                rest.split(' ').next().unwrap().parse().unwrap()
            } else {
                0
            }
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_and_unknown_method_floods_write_a_few_kb_and_are_all_counted() {
    let server = KeelServe::start_with_env(&[], &[("KEEL_LOG", "info"), ("NO_COLOR", "1")]);
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        clients.push(connect(server.grpc).await);
    }
    let stream = framed(&StreamingOutputCallRequest {
        response_parameters: vec![ResponseParameters {
            size: 8,
            interval_us: 30_000_000,
            ..Default::default()
        }],
        ..Default::default()
    });
    let before = server.output_bytes();

    let start = Instant::now();
    let flood = futures_util::stream::iter(0..CALLS).for_each_concurrent(CONCURRENCY, |i| {
        let client = clients[i % CONNECTIONS].clone();
        let (addr, stream) = (server.grpc, stream.clone());
        async move {
            if i % 2 == 0 {
                unknown_method(client, addr).await;
            } else {
                cancelled(client, addr, stream).await;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(120), flood)
        .await
        .expect("the flood finished within 120 s");
    let flood_time = start.elapsed();

    // Every call is counted (cancellations reach the server asynchronously).
    let half = (CALLS / 2) as f64;
    let text = metrics_until(server.admin, Duration::from_secs(20), |text| {
        metric(text, CANCELLED) == Some(half) && metric(text, UNKNOWN) == Some(half)
    })
    .await;
    assert_eq!(
        metric(&text, CANCELLED),
        Some(half),
        "cancelled calls counted"
    );
    assert_eq!(
        metric(&text, UNKNOWN),
        Some(half),
        "unknown-method calls counted"
    );

    // Every unknown-method call is in the log, written or in a summary, once the last
    // window's summary is out (at most a second after the flood).
    let summarized = Instant::now();
    while unknown_calls_accounted(&server.logs()) < CALLS / 2
        && summarized.elapsed() < Duration::from_secs(5)
    {
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let logs = server.logs();
    assert_eq!(unknown_calls_accounted(&logs), CALLS / 2, "{logs}");

    let written = server.output_bytes() - before;
    eprintln!("{CALLS} calls in {flood_time:?} wrote {written} bytes of logs");
    assert!(
        written <= max_log_bytes(flood_time),
        "{CALLS} calls wrote {written} bytes of logs in {flood_time:?}; they begin:\n{}",
        logs.chars().take(4096).collect::<String>()
    );
    let noisy: Vec<&str> = logs
        .lines()
        .filter(|line| line.contains("keel::rpc"))
        .filter(|line| {
            line.contains("Canceled") || line.contains(" WARN ") || line.contains(" ERROR ")
        })
        .collect();
    assert!(
        noisy.is_empty(),
        "cancellations are not news:\n{}",
        noisy.join("\n")
    );
}
