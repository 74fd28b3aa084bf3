//! Every call is counted and logged: after a scripted mix of calls (each RPC type; OK, client
//! errors, server errors, a cancellation, an unimplemented method) the real `keel serve`
//! shows exactly the expected go-grpc-middleware counter deltas on `/metrics`, scraped over
//! HTTP, and one JSON "finished call" record per call with the documented fields and levels.
//! A call the caller made malformed logs at info whatever its code.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::{KeelServe, metric, scrape};
use keel_interop::pb::grpc_testing::test_service_client::TestServiceClient;
use keel_interop::pb::grpc_testing::{
    EchoStatus, Empty, ResponseParameters, SimpleRequest, StreamingInputCallRequest,
    StreamingOutputCallRequest,
};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use tonic::transport::Channel;

const TEST_SERVICE: &str = "grpc.testing.TestService";

fn labels(rpc_type: &str, service: &str, method: &str) -> String {
    format!(r#"grpc_type="{rpc_type}",grpc_service="{service}",grpc_method="{method}""#)
}

/// The expected deltas of one method's series: `calls` started (and timed), messages
/// `received` and `sent`, and calls handled by code.
fn method_deltas(
    labels: &str,
    calls: f64,
    received: f64,
    sent: f64,
    codes: &[(&str, f64)],
) -> Vec<(String, f64)> {
    let mut deltas = vec![
        (format!("grpc_server_started_total{{{labels}}}"), calls),
        (
            format!("grpc_server_msg_received_total{{{labels}}}"),
            received,
        ),
        (format!("grpc_server_msg_sent_total{{{labels}}}"), sent),
        (
            format!("grpc_server_handling_seconds_count{{{labels}}}"),
            calls,
        ),
    ];
    deltas.extend(codes.iter().map(|(code, delta)| {
        (
            format!("grpc_server_handled_total{{{labels},grpc_code=\"{code}\"}}"),
            *delta,
        )
    }));
    deltas
}

/// Every `grpc_server_*` series with its value.
fn grpc_series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| line.starts_with("grpc_server_") && !line.contains("_bucket{"))
        .filter_map(|line| {
            let line = line.split(" # ").next()?;
            let (name, value) = line.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn status_request(code: i32) -> SimpleRequest {
    SimpleRequest {
        response_status: Some(EchoStatus {
            code,
            message: format!("asked for {code}"),
        }),
        ..Default::default()
    }
}

async fn run_the_mix(channel: Channel) {
    let mut greeter = GreeterClient::new(channel.clone());
    for _ in 0..3 {
        greeter
            .say_hello(HelloRequest { name: "Ada".into() })
            .await
            .unwrap();
    }
    let mut tests = TestServiceClient::new(channel);
    for code in [3, 3, 13] {
        let status = tests.unary_call(status_request(code)).await.unwrap_err();
        assert_eq!(status.code() as i32, code);
    }
    let status = tests.unimplemented_call(Empty {}).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unimplemented);

    // Server streaming: three responses.
    let parameters = |interval_us: i32| ResponseParameters {
        size: 8,
        interval_us,
        ..Default::default()
    };
    let request = StreamingOutputCallRequest {
        response_parameters: vec![parameters(0), parameters(0), parameters(0)],
        ..Default::default()
    };
    let mut stream = tests
        .streaming_output_call(request)
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while stream.message().await.unwrap().is_some() {
        received += 1;
    }
    assert_eq!(received, 3);

    // Client streaming: four requests.
    let requests = (0..4).map(|_| StreamingInputCallRequest::default());
    tests
        .streaming_input_call(tokio_stream::iter(requests))
        .await
        .unwrap();

    // Bidi: two requests, two responses.
    let requests = (0..2).map(move |_| StreamingOutputCallRequest {
        response_parameters: vec![parameters(0)],
        ..Default::default()
    });
    let mut stream = tests
        .full_duplex_call(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let mut received = 0;
    while stream.message().await.unwrap().is_some() {
        received += 1;
    }
    assert_eq!(received, 2);

    // Cancelled: the first response comes at once, the second only after 30 s; the client
    // leaves after the first.
    let request = StreamingOutputCallRequest {
        response_parameters: vec![parameters(0), parameters(30_000_000)],
        ..Default::default()
    };
    let mut stream = tests
        .streaming_output_call(request)
        .await
        .unwrap()
        .into_inner();
    assert!(stream.message().await.unwrap().is_some());
    drop(stream);
}

#[tokio::test]
async fn a_mix_of_calls_shows_exact_counts_and_one_record_each() {
    let server = KeelServe::start_with_env(
        &[],
        &[
            ("KEEL_LOG", "info,keel::rpc=debug"),
            ("KEEL_LOG_FORMAT", "json"),
        ],
    );
    let channel = Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let before = grpc_series(&scrape(server.admin).await);
    run_the_mix(channel).await;

    // The cancellation reaches the server asynchronously.
    let cancelled = format!(
        "grpc_server_handled_total{{{},grpc_code=\"Canceled\"}}",
        labels("server_stream", TEST_SERVICE, "StreamingOutputCall")
    );
    let mut after = String::new();
    for _ in 0..100 {
        after = scrape(server.admin).await;
        if metric(&after, &cancelled).is_some() {
            break;
        }
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let after = grpc_series(&after);

    let greeter = labels("unary", "helloworld.Greeter", "SayHello");
    let unary = labels("unary", TEST_SERVICE, "UnaryCall");
    let unimplemented = labels("unary", TEST_SERVICE, "UnimplementedCall");
    let output = labels("server_stream", TEST_SERVICE, "StreamingOutputCall");
    let input = labels("client_stream", TEST_SERVICE, "StreamingInputCall");
    let duplex = labels("bidi_stream", TEST_SERVICE, "FullDuplexCall");
    let expected: BTreeMap<String, f64> = [
        method_deltas(&greeter, 3.0, 3.0, 3.0, &[("OK", 3.0)]),
        method_deltas(
            &unary,
            3.0,
            3.0,
            0.0,
            &[("InvalidArgument", 2.0), ("Internal", 1.0)],
        ),
        method_deltas(&unimplemented, 1.0, 1.0, 0.0, &[("Unimplemented", 1.0)]),
        method_deltas(&output, 2.0, 2.0, 4.0, &[("OK", 1.0), ("Canceled", 1.0)]),
        method_deltas(&input, 1.0, 4.0, 1.0, &[("OK", 1.0)]),
        method_deltas(&duplex, 1.0, 2.0, 2.0, &[("OK", 1.0)]),
    ]
    .into_iter()
    .flatten()
    .collect();
    // Exactly these series moved, by exactly these amounts (`_sum`s move by elapsed time).
    let mut moved = BTreeMap::new();
    for (series, value) in &after {
        let delta = value - before.get(series).copied().unwrap_or(0.0);
        if delta != 0.0 && !series.starts_with("grpc_server_handling_seconds_sum") {
            moved.insert(series.clone(), delta);
        }
    }
    let expected_moves: BTreeMap<String, f64> = expected
        .iter()
        .filter(|(_, delta)| **delta != 0.0)
        .map(|(series, delta)| (series.clone(), *delta))
        .collect();
    assert_eq!(moved, expected_moves, "counter deltas after the mix");
    for series in expected.keys() {
        assert!(after.contains_key(series), "{series} is not exposed");
    }

    // One JSON record per finished call, with its fields and the level its code calls for.
    let logs = server.logs();
    let records: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|record| {
            record["target"] == "keel::rpc" && record["fields"]["message"] == "finished call"
        })
        .collect();
    let count = |method: &str, code: &str, level: &str| {
        records
            .iter()
            .filter(|r| {
                r["fields"]["grpc_method"] == method
                    && r["fields"]["grpc_code"] == code
                    && r["level"] == level
            })
            .count()
    };
    assert_eq!(count("SayHello", "OK", "DEBUG"), 3, "{logs}");
    assert_eq!(count("UnaryCall", "InvalidArgument", "INFO"), 2, "{logs}");
    assert_eq!(count("UnaryCall", "Internal", "ERROR"), 1, "{logs}");
    assert_eq!(
        count("UnimplementedCall", "Unimplemented", "WARN"),
        1,
        "{logs}"
    );
    assert_eq!(
        count("StreamingOutputCall", "Canceled", "DEBUG"),
        1,
        "{logs}"
    );
    assert_eq!(
        records.len(),
        3 + 3 + 1 + 2 + 1 + 1,
        "one record per call: {logs}"
    );
    for record in &records {
        let fields = &record["fields"];
        for field in [
            "grpc_service",
            "grpc_method",
            "grpc_type",
            "peer_address",
            "grpc_code",
            "duration_ms",
            "trace_id",
            "span_id",
        ] {
            assert!(!fields[field].is_null(), "{field} missing in {record}");
        }
        assert!(
            fields["peer_address"]
                .as_str()
                .is_some_and(|peer| peer.starts_with("127.0.0.1:")),
            "{record}"
        );
        let trace_id = fields["trace_id"].as_str().unwrap_or_default();
        assert_eq!(trace_id.len(), 32, "trace id in {record}");
        assert!(fields["duration_ms"].as_f64().is_some(), "{record}");
    }
}

#[tokio::test]
async fn observe_enabled_false_turns_counting_off() {
    let server = KeelServe::start(&["--set", "observe.enabled=false"]);
    let channel = Channel::from_shared(server.grpc_url())
        .unwrap()
        .connect()
        .await
        .unwrap();
    GreeterClient::new(channel)
        .say_hello(HelloRequest { name: "Ada".into() })
        .await
        .unwrap();
    let text = scrape(server.admin).await;
    let started = format!(
        "grpc_server_started_total{{{}}}",
        labels("unary", "helloworld.Greeter", "SayHello")
    );
    assert_eq!(metric(&text, &started), Some(0.0), "{text}");
}

#[tokio::test]
async fn malformed_requests_log_at_info_whatever_their_code() {
    let server = KeelServe::start_with_env(&[], &[("KEEL_LOG_FORMAT", "json")]);
    let tcp = tokio::net::TcpStream::connect(server.grpc).await.unwrap();
    let (client, connection) = h2::client::handshake(tcp).await.unwrap();
    tokio::spawn(connection);
    for (path, timeout, code) in [
        ("/helloworld.Greeter/SayHello", "-1S", "13"),
        ("/no.such.Service/Method", "1S", "12"),
    ] {
        let request = http::Request::post(format!("http://{}{path}", server.grpc))
            .header("content-type", "application/grpc")
            .header("te", "trailers")
            .header("grpc-timeout", timeout)
            .body(())
            .unwrap();
        let mut client = client.clone().ready().await.unwrap();
        let (response, _) = client.send_request(request, true).unwrap();
        let response = response.await.unwrap();
        assert_eq!(response.headers()["grpc-status"], code, "{path}");
    }
    let finished = |code: &str| {
        server.logs().lines().any(|line| {
            serde_json::from_str::<serde_json::Value>(line).is_ok_and(|record| {
                record["fields"]["message"] == "finished call"
                    && record["fields"]["grpc_code"] == code
                    && record["level"] == "INFO"
            })
        })
    };
    // The log record follows the response: wait for it, boundedly.
    for _ in 0..100 {
        if finished("Internal") && finished("Unimplemented") {
            break;
        }
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let logs = server.logs();
    assert!(
        finished("Internal"),
        "malformed grpc-timeout at info:\n{logs}"
    );
    assert!(finished("Unimplemented"), "unknown method at info:\n{logs}");
    let loud = logs
        .lines()
        .filter(|line| line.contains("\"keel::rpc\""))
        .any(|line| line.contains("\"WARN\"") || line.contains("\"ERROR\""));
    assert!(!loud, "{logs}");
}
