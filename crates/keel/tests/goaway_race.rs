//! A client racing the server's final GOAWAY must not cost the streams it already has.
//!
//! A raw HTTP/2 client (frames written by hand, so it can do what well-behaved clients only
//! do by accident of timing) opens a 10 s server stream, the server starts its graceful
//! shutdown, and right after the final GOAWAY (last stream id 1) the client opens stream 3
//! and sends a WINDOW_UPDATE on it. RFC 9113 §6.8 says the server ignores both. Before Keel
//! guarded the transport, h2 answered the WINDOW_UPDATE with a connection-wide
//! PROTOCOL_ERROR and stream 1 died; now it must finish OK.

mod common;

use std::time::Duration;

use common::raw_h2::{
    DATA, END_HEADERS, END_STREAM, GOAWAY, HEADERS, RST_STREAM, RawClient, WINDOW_UPDATE, frame,
};
use common::{TestServer, config};
use keel_interop::pb::grpc_testing::{ResponseParameters, StreamingOutputCallRequest};
use prost::Message as _;

/// How long the in-flight stream runs.
const STREAM: Duration = Duration::from_secs(10);
/// Independent servers racing at once.
const RUNS: usize = 50;

/// A request header block in HPACK's simplest form: every field a literal without
/// indexing, no Huffman coding (RFC 7541 §6.2.2), so no table state is involved.
fn request_headers(path: &str) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", path),
        (":authority", "localhost"),
        ("content-type", "application/grpc"),
        ("te", "trailers"),
    ] {
        block.push(0);
        block.push(name.len() as u8);
        block.extend_from_slice(name.as_bytes());
        block.push(value.len() as u8);
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// One gRPC message: a server stream of one response after `STREAM`.
fn request_message() -> Vec<u8> {
    let request = StreamingOutputCallRequest {
        response_parameters: vec![ResponseParameters {
            size: 8,
            interval_us: STREAM.as_micros() as i32,
            ..Default::default()
        }],
        ..Default::default()
    };
    let body = request.encode_to_vec();
    let mut message = vec![0];
    message.extend_from_slice(&(body.len() as u32).to_be_bytes());
    message.extend_from_slice(&body);
    message
}

/// How the in-flight stream ended.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    /// Its trailers arrived (END_STREAM on a HEADERS frame) after its message.
    Completed { messages: usize },
    /// Anything else, with what was seen.
    Failed(String),
}

/// One race: a 10 s stream in flight, shutdown, then HEADERS and WINDOW_UPDATE on a
/// stream above the final GOAWAY's last id.
async fn race() -> (Outcome, keel::server::ShutdownReport, String) {
    let mut cfg = config();
    cfg.shutdown.timeout = STREAM * 3;
    let mut server = TestServer::start_with(cfg, |builder| {
        builder.add_service(keel_interop::TestService.into_service())
    })
    .await;
    let path = "/grpc.testing.TestService/StreamingOutputCall";
    let mut client = RawClient::connect(server.addr).await;
    client
        .send(&[
            frame(HEADERS, END_HEADERS, 1, &request_headers(path)),
            frame(DATA, END_STREAM, 1, &request_message()),
        ])
        .await;
    // Accepted once the response headers are out: the handler has answered.
    loop {
        let frame = client.next().await.expect("response headers");
        if frame.kind == HEADERS && frame.stream == 1 {
            break;
        }
    }
    server.trigger_stop();

    let mut messages = 0;
    let mut raced = false;
    let outcome = loop {
        let Some(frame) = client.next().await else {
            break Outcome::Failed(format!("connection closed after {messages} messages"));
        };
        match (frame.kind, frame.stream) {
            (GOAWAY, 0) => {
                let last = u32::from_be_bytes(frame.payload[0..4].try_into().unwrap());
                let code = u32::from_be_bytes(frame.payload[4..8].try_into().unwrap());
                if code != 0 {
                    break Outcome::Failed(format!("GOAWAY with error code {code}"));
                }
                if last != 0x7fff_ffff && !raced {
                    assert_eq!(last, 1, "the final GOAWAY names the in-flight stream");
                    raced = true;
                    client
                        .send(&[frame_headers_on_3(path), frame_window_update_on_3()])
                        .await;
                }
            }
            (DATA, 1) => messages += 1,
            (HEADERS, 1) if frame.flags & END_STREAM != 0 => {
                break Outcome::Completed { messages };
            }
            (RST_STREAM, 1) => break Outcome::Failed("stream 1 reset".into()),
            (kind, stream) => {
                // Frames about stream 3 would mean the server did not ignore it.
                assert_ne!(
                    stream, 3,
                    "the server answered stream 3 with frame type {kind}"
                );
            }
        }
    };
    assert!(raced, "no final GOAWAY arrived before the stream ended");
    let metrics = server.metrics.render();
    let report = server.stop().await;
    (outcome, report, metrics)
}

fn frame_headers_on_3(path: &str) -> Vec<u8> {
    frame(HEADERS, END_HEADERS, 3, &request_headers(path))
}

fn frame_window_update_on_3() -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, 3, &1000u32.to_be_bytes())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_after_the_final_goaway_never_kill_accepted_streams() {
    let runs: Vec<_> = (0..RUNS).map(|_| tokio::spawn(race())).collect();
    for (i, run) in runs.into_iter().enumerate() {
        let (outcome, report, metrics) = tokio::time::timeout(STREAM * 4, run)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            outcome,
            Outcome::Completed { messages: 1 },
            "run {i}: the accepted stream did not complete; report {report:?}"
        );
        assert_eq!(
            (report.failed, report.cut, report.forced),
            (0, 0, 0),
            "run {i}: {report:?}"
        );
        assert_eq!(report.drained, 1, "run {i}: {report:?}");
        let ignored = common::metric(
            &metrics,
            "keel_server_late_frames_ignored_total{listener=\"grpc\"}",
        );
        assert_eq!(ignored, Some(1.0), "run {i}: the WINDOW_UPDATE on stream 3");
        assert!(
            metrics
                .lines()
                .any(|line| line.starts_with("grpc_server_handled_total")
                    && line.contains("grpc_method=\"StreamingOutputCall\"")
                    && line.contains("grpc_code=\"OK\"")
                    && line.ends_with(" 1")),
            "run {i}: the server did not finish the stream OK:\n{metrics}"
        );
    }
}
