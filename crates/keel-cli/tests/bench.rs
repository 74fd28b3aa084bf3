//! `keel bench` against a real `keel serve`: its count of calls equals the server's
//! `grpc_server_handled_total` delta in all four modes, a fixed rate holds within 2%, a
//! server that stops for 1 s shows the stop in p99 and max latency (no coordinated omission),
//! usage mistakes are exit 2 with a message that says what to do, and `--format html -o`
//! writes the page to the file. Failed calls are counted by their status, and TLS is Keel's
//! client TLS: verified against the CA it is given, refused without it. With `--rest`, the real
//! `payments` binary's REST routes (keel-gateway) move the money of every call, and answers
//! outside 2xx are counted by HTTP status.

mod common;

use std::process::{Command, Output};
use std::time::Duration;

use common::KeelServe;
use keel_test_support::tls::{Ca, Dir};
use serde_json::Value;

/// The repository's contracts, for `--proto`.
const PROTO_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
const HELLOWORLD_PROTO: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/../../proto/helloworld/helloworld.proto"
);

/// Runs `keel bench ADDR METHOD ARGS --format json` and returns its output.
fn bench(server: &KeelServe, method: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "bench",
            &server.grpc.to_string(),
            method,
            "--format",
            "json",
        ])
        .args(args)
        .output()
        .expect("run keel bench")
}

/// The JSON report of a successful run.
fn report(output: &Output) -> Value {
    assert!(
        output.status.success(),
        "keel bench failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("a JSON report")
}

/// The server's handled calls of one method with code OK.
async fn handled(server: &KeelServe, kind: &str, service: &str, method: &str) -> f64 {
    let series = format!(
        "grpc_server_handled_total{{grpc_type=\"{kind}\",grpc_service=\"{service}\",grpc_method=\"{method}\",grpc_code=\"OK\"}}"
    );
    common::metric(&common::scrape(server.admin).await, &series).unwrap_or(0.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_equals_the_servers_handled_calls_in_all_four_modes() {
    let server = KeelServe::start(&[]);
    let cases: [(&str, &str, &str, &str, Vec<&str>); 4] = [
        (
            "unary",
            "helloworld.Greeter",
            "SayHello",
            r#"{"name":"n-{{.RequestNumber}}-{{newUUID}}"}"#,
            vec!["--proto", HELLOWORLD_PROTO, "-I", PROTO_DIR],
        ),
        (
            "server_stream",
            "grpc.testing.TestService",
            "StreamingOutputCall",
            r#"{"response_parameters":[{"size":10},{"size":20}]}"#,
            vec![],
        ),
        (
            "client_stream",
            "grpc.testing.TestService",
            "StreamingInputCall",
            r#"[{"payload":{"body":"AAE="}},{"payload":{"body":"AgME"}}]"#,
            vec![],
        ),
        (
            "bidi_stream",
            "grpc.testing.TestService",
            "FullDuplexCall",
            r#"[{"response_parameters":[{"size":5}]},{"response_parameters":[{"size":7}]}]"#,
            vec![],
        ),
    ];
    for (kind, service, method, data, extra) in cases {
        let before = handled(&server, kind, service, method).await;
        let mut args = vec!["-n", "300", "-c", "8", "--connections", "2", "-d", data];
        args.extend(extra);
        let output = bench(&server, &format!("{service}/{method}"), &args);
        let report = report(&output);
        let after = handled(&server, kind, service, method).await;
        assert_eq!(report["count"], 300, "{kind}: {report}");
        assert_eq!(report["status_codes"]["OK"], 300, "{kind}: {report}");
        assert_eq!(
            after - before,
            300.0,
            "{kind}: the server handled what keel bench counted"
        );
        assert_eq!(report["load"]["connections"], 2);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_calls_are_counted_by_status_with_their_message() {
    let server = KeelServe::start(&[]);
    let output = bench(
        &server,
        "grpc.testing.TestService/UnaryCall",
        &[
            "-n",
            "40",
            "-c",
            "4",
            "-d",
            r#"{"responseStatus": {"code": 5, "message": "no such thing"}}"#,
        ],
    );
    assert_eq!(output.status.code(), Some(1), "some calls failed: exit 1");
    let report: Value = serde_json::from_slice(&output.stdout).expect("a JSON report");
    assert_eq!(report["count"], 40, "{report}");
    assert_eq!(report["status_codes"]["NotFound"], 40, "{report}");
    assert_eq!(report["errors"][0]["count"], 40, "{report}");
    assert_eq!(
        report["errors"][0]["message"], "NotFound: no such thing",
        "{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_server_is_verified_against_the_ca_given() {
    let dir = Dir::new();
    let root = Ca::root("Keel Bench Root");
    let leaf = root.leaf("server").ip([127, 0, 0, 1].into()).issue();
    dir.write("root.pem", root.cert_pem());
    dir.write("server.pem", &leaf.chain_pem);
    dir.write("server.key", &leaf.key_pem);
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (cert, key) = (
        format!("tls.cert={}", file("server.pem")),
        format!("tls.key={}", file("server.key")),
    );
    let server = KeelServe::start(&["--set", &cert, "--set", &key]);
    let before = handled(&server, "unary", "helloworld.Greeter", "SayHello").await;

    // Reflection and the calls both go over TLS.
    let ca = file("root.pem");
    let output = bench(
        &server,
        "helloworld.Greeter/SayHello",
        &["-n", "60", "-c", "6", "--connections", "2", "--cacert", &ca],
    );
    let report = report(&output);
    assert_eq!(report["status_codes"]["OK"], 60, "{report}");
    let after = handled(&server, "unary", "helloworld.Greeter", "SayHello").await;
    assert_eq!(after - before, 60.0);

    // Without the CA the server's certificate is not trusted: exit 1, saying so.
    let untrusted = bench(
        &server,
        "helloworld.Greeter/SayHello",
        &["-n", "1", "--tls", "--proto", HELLOWORLD_PROTO],
    );
    assert_eq!(untrusted.status.code(), Some(1), "{untrusted:?}");
    let stderr = String::from_utf8_lossy(&untrusted.stderr);
    assert!(
        stderr.contains("cannot connect") || stderr.contains("certificate"),
        "{stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fixed_rate_is_held_within_two_percent() {
    let server = KeelServe::start(&[]);
    let output = bench(
        &server,
        "helloworld.Greeter/SayHello",
        &[
            "--rps",
            "200",
            "-z",
            "5s",
            "-c",
            "16",
            "-d",
            r#"{"name":"world"}"#,
        ],
    );
    let report = report(&output);
    // Calls are due at n / 200 s for every n whose due time is inside the 5 s.
    assert_eq!(report["count"], 1000, "{report}");
    let rate = report["requests_per_second"].as_f64().unwrap();
    assert!(
        (rate - 200.0).abs() <= 4.0,
        "200/s asked, {rate}/s held: {report}"
    );
    assert_eq!(report["load"]["rate"], 200.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_that_stops_for_a_second_shows_it_in_p99_and_max() {
    let server = KeelServe::start(&[]);
    let pid = server.child.id().to_string();
    let child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "bench",
            &server.grpc.to_string(),
            "helloworld.Greeter/SayHello",
        ])
        .args(["--rps", "200", "-z", "4s", "-c", "16", "--format", "json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn keel bench");
    keel_test_support::eventually_async("the load is running", Duration::from_secs(10), || async {
        handled(&server, "unary", "helloworld.Greeter", "SayHello").await >= 100.0
    })
    .await;
    assert!(
        Command::new("kill")
            .args(["-STOP", &pid])
            .status()
            .unwrap()
            .success()
    );
    // sleep: the server's pause is the behaviour under test
    std::thread::sleep(Duration::from_secs(1));
    assert!(
        Command::new("kill")
            .args(["-CONT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let output = child.wait_with_output().unwrap();
    let report = report(&output);
    assert_eq!(report["count"], 800, "{report}");
    let slowest = report["slowest_ms"].as_f64().unwrap();
    let p99 = report["latency_distribution"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["percentile"] == 99.0)
        .unwrap()["latency_ms"]
        .as_f64()
        .unwrap();
    // About 200 calls fell due during the stop, waiting from 1 s down to nothing: the top 1%
    // (8 calls) waited nearly the whole second.
    assert!(slowest >= 950.0, "max {slowest} ms: {report}");
    assert!(p99 >= 800.0, "p99 {p99} ms: {report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mistakes_are_usage_errors_that_say_what_to_do() {
    let server = KeelServe::start(&[]);
    for (args, says) in [
        (
            vec!["helloworld.Greeter/SayHello", "-d", "{{.Nope}}"],
            "unknown placeholder `{{.Nope}}`",
        ),
        (
            vec!["helloworld.Greeter/SayHello", "-d", r#"{"nom":"x"}"#],
            "is not a helloworld.HelloRequest",
        ),
        (
            vec!["helloworld.Greeter/SayHello", "-c", "0"],
            "concurrency must be from 1",
        ),
        (
            vec!["helloworld.Greeter/SayHello", "--rps", "0"],
            "the rate must be above 0",
        ),
        (
            vec!["helloworld.Greeter/SayHello", "--connections", "0"],
            "--connections must be from 1",
        ),
        (vec!["helloworld.Greeter/Nope"], "Nope"),
        (
            vec!["helloworld.Greeter/SayHello", "--protoset", "/nonexistent"],
            "--protoset /nonexistent",
        ),
        (vec!["--rest", "POST"], "write the HTTP method and the path"),
        (
            vec!["--rest", "POST v1/payments"],
            "write the HTTP method and the path",
        ),
        (
            vec!["--rest", "POST /v1/payments", "-d", "{no"],
            "is not JSON",
        ),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["bench", &server.grpc.to_string()])
            .args(&args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(says), "{args:?}: {stderr}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_html_report_is_written_to_the_file_asked_for() {
    let server = KeelServe::start(&[]);
    let file =
        std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("keel-bench-cli-report.html");
    let _ = std::fs::remove_file(&file);
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args([
            "bench",
            &server.grpc.to_string(),
            "helloworld.Greeter/SayHello",
            "-n",
            "50",
        ])
        .args(["--format", "html", "-o", file.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(output.stdout.is_empty(), "the report goes to the file only");
    let page = std::fs::read_to_string(&file).unwrap();
    assert!(page.starts_with("<!DOCTYPE html>"), "{page}");
    for text in [
        "helloworld.Greeter/SayHello",
        "<th>Count</th><td class=\"n\">50</td>",
        "Latency histogram",
        "<svg",
    ] {
        assert!(page.contains(text), "the page lacks {text:?}");
    }
}

/// `keel bench --rest ROUTE ADDR ARGS --format json` against payments.
fn rest(payments: &common::payments::Payments, route: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["bench", "--rest", route, &payments.grpc.to_string()])
        .args(["--format", "json"])
        .args(args)
        .output()
        .expect("run keel bench")
}

/// A Process body over REST paying `amount` minor units, each call with a fresh key.
fn payment(amount: &str) -> String {
    format!(
        r#"{{"idempotencyKey":"k-{{{{newUUID}}}}","payerAccountId":"alice","payeeAccountId":"bob","amountMinor":"{amount}","currency":"EUR"}}"#
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_calls_move_money_on_2xx_and_failures_are_counted_by_http_status() {
    let payments = common::payments::Payments::start();
    for (route, data) in [
        (
            "POST /v1/accounts",
            r#"{"accountId":"alice","currency":"EUR"}"#,
        ),
        (
            "POST /v1/accounts",
            r#"{"accountId":"bob","currency":"EUR"}"#,
        ),
        (
            "POST /v1/accounts/alice:deposit",
            r#"{"amountMinor":"1000","idempotencyKey":"d1"}"#,
        ),
    ] {
        let summary = report(&rest(&payments, route, &["-n", "1", "-c", "1", "-d", data]));
        assert_eq!(summary["status_codes"]["OK"], 1, "{route}: {summary}");
    }

    // 200 payments of 1, each its own idempotency key, over two connections.
    let output = rest(
        &payments,
        "POST /v1/payments",
        &[
            "-n",
            "200",
            "-c",
            "8",
            "--connections",
            "2",
            "-d",
            &payment("1"),
        ],
    );
    let summary = report(&output);
    assert_eq!(summary["method"], "POST /v1/payments");
    assert_eq!(summary["status_codes"]["OK"], 200, "{summary}");

    // Every one moved money: 800 are left, so 801 is refused, by HTTP status, and 800 is not.
    let refused = rest(
        &payments,
        "POST /v1/payments",
        &["-n", "3", "-c", "1", "-d", &payment("801")],
    );
    assert_eq!(refused.status.code(), Some(1), "some calls failed: exit 1");
    let summary: Value = serde_json::from_slice(&refused.stdout).unwrap();
    let codes = summary["status_codes"].as_object().unwrap();
    assert_eq!(codes.len(), 1, "{summary}");
    let (code, count) = codes.iter().next().unwrap();
    assert!(code.starts_with("HTTP 4"), "{summary}");
    assert_eq!(count, 3);
    let message = summary["errors"][0]["message"].as_str().unwrap();
    assert!(message.starts_with(&format!("{code}: ")), "{message}");
    let last = rest(
        &payments,
        "POST /v1/payments",
        &["-n", "1", "-c", "1", "-d", &payment("800")],
    );
    assert_eq!(report(&last)["status_codes"]["OK"], 1);
}
