//! The standard interop cases, run by `keel interop-client` against a real `keel serve`:
//! one process per case, as interop runners do.

mod common;

use std::process::{Command, Output};

use common::KeelServe;

const CASES: [&str; 14] = [
    "empty_unary",
    "large_unary",
    "client_streaming",
    "server_streaming",
    "ping_pong",
    "empty_stream",
    "timeout_on_sleeping_server",
    "cancel_after_begin",
    "cancel_after_first_response",
    "status_code_and_message",
    "special_status_message",
    "custom_metadata",
    "unimplemented_method",
    "unimplemented_service",
];

fn interop_client(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("interop-client")
        .args(args)
        .env_remove("KEEL_CONFIG")
        .output()
        .expect("run keel interop-client")
}

fn describe(output: &Output) -> String {
    format!(
        "{}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

#[test]
fn every_case_passes_against_keel_serve() {
    let server = KeelServe::start(&[]);
    let port = server.grpc.port().to_string();
    let mut failures = Vec::new();
    for case in CASES {
        let output = interop_client(&[
            "--server_host",
            "127.0.0.1",
            "--server_port",
            &port,
            "--test_case",
            case,
        ]);
        let stdout = String::from_utf8_lossy(&output.stdout);
        if !output.status.success() || stdout.trim() != format!("PASS {case}") {
            failures.push(format!("{case}: {}", describe(&output)));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases failed:\n{}\nserver logs:\n{}",
        failures.len(),
        CASES.len(),
        failures.join("\n"),
        server.logs()
    );
}

#[test]
fn unknown_test_case_is_refused_with_the_known_names() {
    let output = interop_client(&["--server_port", "1", "--test_case", "large_unray"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("large_unray"), "{}", describe(&output));
    assert!(
        stderr.contains("large_unary") && stderr.contains("all"),
        "the message lists the valid names: {}",
        describe(&output)
    );
}

#[test]
fn tls_is_refused_until_supported() {
    let output = interop_client(&["--server_port", "1", "--use_tls=true"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("--use_tls"), "{}", describe(&output));
}

#[tokio::test(flavor = "multi_thread")]
async fn failing_cases_are_reported_and_exit_non_zero() {
    // A server with only helloworld.Greeter: TestService calls answer UNIMPLEMENTED, so
    // every case fails but the two that expect exactly that.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(keel_interop::Greeter.into_service())
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener)),
    );
    let output = tokio::task::spawn_blocking(move || {
        interop_client(&["--server_port", &port, "--test_case", "all"])
    })
    .await
    .unwrap();
    assert!(!output.status.success(), "{}", describe(&output));
    let stdout = String::from_utf8_lossy(&output.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(
        lines.len(),
        CASES.len(),
        "one line per case: {}",
        describe(&output)
    );
    for (line, case) in lines.iter().zip(CASES) {
        let expected = match case {
            "unimplemented_method" | "unimplemented_service" => format!("PASS {case}"),
            // The client ends these calls itself, possibly before the server's answer.
            "timeout_on_sleeping_server" | "cancel_after_begin" => continue,
            _ => format!("FAIL {case}: "),
        };
        assert!(
            line.starts_with(&expected),
            "{line:?} for {case}: {}",
            describe(&output)
        );
    }
    assert!(
        lines[0].contains("Unimplemented"),
        "the reason is given: {}",
        describe(&output)
    );
}

#[test]
fn unreachable_server_is_an_error_naming_the_address() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    drop(listener);
    let output = interop_client(&["--server_port", &port, "--test_case", "empty_unary"]);
    assert!(!output.status.success(), "{}", describe(&output));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("127.0.0.1:{port}")),
        "the error names the address: {}",
        describe(&output)
    );
}
