//! `keel call` end to end: the real binary against `keel serve`, the `payments` binary, a
//! server offering only v1alpha reflection and a TLS server; listings, descriptions, the four
//! call modes, metadata, deadlines, error details, exit statuses and helpful usage errors.

mod common;

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::KeelServe;
use common::payments::{Payments, TempDir};
use serde_json::{Value, json};

/// What one `keel call` did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    /// Every JSON value on stdout, in order.
    fn json(&self) -> Vec<Value> {
        serde_json::Deserializer::from_str(&self.stdout)
            .into_iter::<Value>()
            .collect::<Result<_, _>>()
            .unwrap_or_else(|error| panic!("stdout is not JSON ({error}): {self:?}"))
    }

    /// Asserts the exit status and that nothing panicked.
    #[track_caller]
    fn exited(&self, code: i32) -> &Self {
        assert_eq!(self.code, code, "{self:#?}");
        assert!(!self.stderr.contains("panicked"), "{self:#?}");
        self
    }
}

/// Runs `keel call ARGS` with `stdin` on its standard input.
fn call(args: &[&str], stdin: &str) -> Run {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("call")
        .args(args)
        .env("KEEL_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn keel call");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

fn addr(server: &KeelServe) -> String {
    server.grpc.to_string()
}

#[test]
fn list_shows_services_sorted_and_a_services_methods() {
    let server = KeelServe::start(&[]);
    let run = call(&[&addr(&server), "list"], "");
    run.exited(0);
    let services: Vec<&str> = run.stdout.lines().collect();
    for service in [
        "grpc.health.v1.Health",
        "grpc.reflection.v1.ServerReflection",
        "grpc.testing.TestService",
        "helloworld.Greeter",
    ] {
        assert!(services.contains(&service), "{service} in {services:?}");
    }
    assert!(services.is_sorted(), "{services:?}");

    let run = call(&[&server.grpc_url(), "list", "helloworld.Greeter"], "");
    run.exited(0);
    assert_eq!(
        run.stdout,
        "helloworld.Greeter.SayHello\nhelloworld.Greeter.SayHelloAgain\n"
    );
}

#[test]
fn describe_shows_services_methods_and_messages_as_proto() {
    let server = KeelServe::start(&[]);
    let describe = |symbol: &str| {
        let run = call(&[&addr(&server), "describe", symbol], "");
        run.exited(0);
        run.stdout
    };
    assert_eq!(
        describe("helloworld.Greeter"),
        "\
// helloworld.Greeter, from helloworld/helloworld.proto
service Greeter {
  // Sends a greeting
  rpc SayHello(helloworld.HelloRequest) returns (helloworld.HelloReply);
  // Sends another greeting
  rpc SayHelloAgain(helloworld.HelloRequest) returns (helloworld.HelloReply);
}
"
    );
    let method = describe("grpc.testing.TestService/StreamingInputCall");
    assert!(
        method.ends_with(
            "rpc StreamingInputCall(stream grpc.testing.StreamingInputCallRequest) \
             returns (grpc.testing.StreamingInputCallResponse);\n"
        ),
        "{method}"
    );
    assert_eq!(
        describe("grpc.testing.TestService.FullDuplexCall")
            .lines()
            .last(),
        Some(
            "rpc FullDuplexCall(stream grpc.testing.StreamingOutputCallRequest) \
             returns (stream grpc.testing.StreamingOutputCallResponse);"
        )
    );
    let message = describe("grpc.testing.StreamingOutputCallRequest");
    for line in [
        "message StreamingOutputCallRequest {",
        "  grpc.testing.PayloadType response_type = 1;",
        "  repeated grpc.testing.ResponseParameters response_parameters = 2;",
        "  grpc.testing.Payload payload = 3;",
        "  grpc.testing.EchoStatus response_status = 7;",
    ] {
        assert!(message.lines().any(|l| l == line), "{line:?} in\n{message}");
    }
    let orca = describe("grpc.testing.TestOrcaReport");
    assert!(
        orca.contains("\n  map<string, double> request_cost = 3;\n"),
        "{orca}"
    );
    let enumeration = describe("grpc.testing.PayloadType");
    assert!(
        enumeration.contains("enum PayloadType {\n") && enumeration.contains("COMPRESSABLE = 0;"),
        "{enumeration}"
    );
}

#[test]
fn all_four_call_modes_against_test_service() {
    let server = KeelServe::start(&[]);
    let address = addr(&server);

    // Unary, pretty output (the default), both method spellings.
    for method in [
        "grpc.testing.TestService/UnaryCall",
        "grpc.testing.TestService.UnaryCall",
    ] {
        let run = call(
            &[
                &address,
                method,
                "-d",
                r#"{"response_size": 3, "payload": {"body": "AAEC"}}"#,
            ],
            "",
        );
        run.exited(0);
        assert!(run.stdout.starts_with("{\n  \"payload\": {\n"), "{run:?}");
        assert_eq!(run.json(), [json!({"payload": {"body": "AAAA"}})]);
    }

    // Server streaming, one line per message.
    let run = call(
        &[
            &address,
            "grpc.testing.TestService/StreamingOutputCall",
            "--compact",
            "-d",
            r#"{"responseParameters": [{"size": 1}, {"size": 2}, {"size": 4}]}"#,
        ],
        "",
    );
    run.exited(0);
    assert_eq!(run.stdout.lines().count(), 3, "{run:?}");
    assert_eq!(
        run.json(),
        [
            json!({"payload": {"body": "AA=="}}),
            json!({"payload": {"body": "AAA="}}),
            json!({"payload": {"body": "AAAAAA=="}}),
        ]
    );

    // Client streaming: several messages from stdin, one per line.
    let run = call(
        &[
            &address,
            "grpc.testing.TestService/StreamingInputCall",
            "-d",
            "@",
        ],
        "{\"payload\": {\"body\": \"AAE=\"}}\n{\"payload\": {\"body\": \"AgME\"}}\n{\"payload\": {}}\n",
    );
    run.exited(0);
    assert_eq!(run.json(), [json!({"aggregatedPayloadSize": 5})]);

    // Bidi streaming: concatenated messages from a file; every field with --emit-defaults.
    let dir = TempDir::new("bidi");
    let file = dir.path().join("requests.json");
    std::fs::write(
        &file,
        r#"{"responseParameters":[{"size":1}]}{"responseParameters":[{"size":2},{"size":0}]}"#,
    )
    .unwrap();
    let run = call(
        &[
            &address,
            "grpc.testing.TestService/FullDuplexCall",
            "--emit-defaults",
            "-d",
            &format!("@{}", file.display()),
        ],
        "",
    );
    run.exited(0);
    let payload = |body: &str| json!({"payload": {"type": "COMPRESSABLE", "body": body}});
    assert_eq!(run.json(), [payload("AA=="), payload("AAA="), payload("")]);

    // No -d: one empty request for unary methods.
    let run = call(&[&address, "grpc.testing.TestService/EmptyCall"], "");
    run.exited(0);
    assert_eq!(run.json(), [json!({})]);
}

#[test]
fn greeter_with_a_header_and_a_deadline() {
    let server = KeelServe::start_with_env(&[], &[("KEEL_LOG", "info,keel::rpc=debug")]);
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let run = call(
        &[
            &addr(&server),
            "helloworld.Greeter/SayHello",
            "-d",
            r#"{"name": "Ada"}"#,
            "-H",
            &format!("traceparent: 00-{trace_id}-00f067aa0ba902b7-01"),
            "--deadline",
            "5s",
        ],
        "",
    );
    run.exited(0);
    assert_eq!(run.json(), [json!({"message": "Hello Ada"})]);
    // The header reached the server: its call record joined the caller's trace.
    let logged = (0..100).any(|_| {
        // sleep: poll interval of a bounded poll on the condition
        std::thread::sleep(Duration::from_millis(20));
        server
            .logs()
            .lines()
            .any(|l| l.contains("SayHello") && l.contains(trace_id))
    });
    assert!(
        logged,
        "no call record with trace {trace_id}:\n{}",
        server.logs()
    );
}

#[test]
fn headers_go_out_and_come_back_with_verbose() {
    let server = KeelServe::start(&[]);
    let run = call(
        &[
            &addr(&server),
            "grpc.testing.TestService/UnaryCall",
            "-v",
            "-H",
            "X-GRPC-Test-Echo-Initial: hello",
            "-H",
            "x-grpc-test-echo-trailing-bin: AAEC",
        ],
        "",
    );
    run.exited(0);
    assert_eq!(
        run.json(),
        [json!({"payload": {}})],
        "stdout holds only messages"
    );
    let headers = run.stderr.split("response trailers:").next().unwrap();
    assert!(
        headers.contains("response headers:\n")
            && headers.contains("  x-grpc-test-echo-initial: hello\n"),
        "{run:#?}"
    );
    let trailers = run
        .stderr
        .split("response trailers:")
        .nth(1)
        .unwrap_or_default();
    assert!(
        trailers.contains("  x-grpc-test-echo-trailing-bin: AAEC\n"),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .contains("reflection: grpc.reflection.v1.ServerReflection"),
        "{run:#?}"
    );
}

#[test]
fn a_deadline_shorter_than_the_call_is_deadline_exceeded() {
    let server = KeelServe::start(&[]);
    let started = std::time::Instant::now();
    let run = call(
        &[
            &addr(&server),
            "grpc.testing.TestService/StreamingOutputCall",
            "--deadline",
            "300ms",
            "-d",
            r#"{"responseParameters": [{"size": 1}, {"size": 1, "intervalUs": 5000000}]}"#,
        ],
        "",
    );
    run.exited(64 + 4);
    assert!(started.elapsed() < Duration::from_secs(4), "{run:?}");
    assert!(run.stderr.contains("Code: DeadlineExceeded"), "{run:#?}");
    assert_eq!(
        run.json(),
        [json!({"payload": {"body": "AA=="}})],
        "what came before the deadline is printed"
    );
}

#[test]
fn error_statuses_exit_64_plus_their_code() {
    let server = KeelServe::start(&[]);
    let run = call(
        &[
            &addr(&server),
            "grpc.testing.TestService/UnaryCall",
            "-d",
            r#"{"responseStatus": {"code": 7, "message": "go away"}}"#,
        ],
        "",
    );
    run.exited(64 + 7);
    assert_eq!(
        run.stderr,
        "ERROR:\n  Code: PermissionDenied\n  Message: go away\n"
    );
    assert_eq!(run.stdout, "");
    let run = call(
        &[&addr(&server), "grpc.testing.TestService/UnimplementedCall"],
        "",
    );
    run.exited(64 + 12);
    assert!(run.stderr.contains("Code: Unimplemented"), "{run:#?}");
}

#[test]
fn usage_and_input_errors_exit_2_and_say_what_is_wrong() {
    let server = KeelServe::start(&[]);
    let address = addr(&server);
    let check = |args: &[&str], stdin: &str, expect: &[&str]| {
        let mut all = vec![address.as_str()];
        all.extend_from_slice(args);
        let run = call(&all, stdin);
        run.exited(2);
        assert_eq!(run.stdout, "", "{run:#?}");
        for part in expect {
            assert!(run.stderr.contains(part), "{part:?} in {run:#?}");
        }
    };
    let unary = "grpc.testing.TestService/UnaryCall";
    // Bad JSON: which message, where, and for which type.
    check(
        &[unary, "-d", "{\"responseSize\": 1,\n}"],
        "",
        &["request message 1 is not valid JSON", "line 2 column 1"],
    );
    check(
        &["grpc.testing.TestService/StreamingInputCall", "-d", "@"],
        "{}\n{\"payload\": {\"body\": 7}}\n",
        &[
            "request message 2 is not a valid grpc.testing.StreamingInputCallRequest",
            "line 2",
        ],
    );
    // Unknown field.
    check(
        &[unary, "-d", r#"{"responseSize": 1, "sizee": 2}"#],
        "",
        &[
            "not a valid grpc.testing.SimpleRequest",
            "sizee",
            "line 1 column 27",
        ],
    );
    // Unknown method: the service's methods are listed.
    check(
        &["grpc.testing.TestService/UnaryCal"],
        "",
        &[
            "grpc.testing.TestService has no method `UnaryCal`",
            "its methods: EmptyCall, UnaryCall, StreamingOutputCall",
        ],
    );
    // Unknown service: the server's services are listed.
    check(
        &["grpc.testing.TestServise/UnaryCall"],
        "",
        &[
            "the server has no service `grpc.testing.TestServise`",
            "helloworld.Greeter",
        ],
    );
    check(
        &["describe", "helloworld.Nothing"],
        "",
        &["knows no service, method, message or enum `helloworld.Nothing`"],
    );
    check(&["UnaryCall"], "", &["`UnaryCall` is not a method name"]);
    // One message for a unary method.
    check(
        &[unary, "-d", "{}{}"],
        "",
        &["takes one request message; the input has 2"],
    );
    check(
        &[unary, "-d", "@/nonexistent/keel-call.json"],
        "",
        &["cannot read -d @/nonexistent"],
    );
    check(
        &[unary, "-H", "no-colon"],
        "",
        &["header `no-colon` is not `key: value`"],
    );
    check(&[unary, "-H", "x-bin: %%%"], "", &["must be base64"]);
    check(
        &["list", "a", "b"],
        "",
        &["`list` takes at most one SERVICE"],
    );
    check(
        &["list", "--cacert", "/nonexistent/ca.pem"],
        "",
        &["--cacert /nonexistent/ca.pem"],
    );

    let run = call(&["http://", "list"], "");
    run.exited(2);
    assert!(run.stderr.contains("invalid address `http://`"), "{run:#?}");
    let run = call(&["http://127.0.0.1:1", "list", "--tls"], "");
    run.exited(2);
    assert!(
        run.stderr.contains("plaintext (http://) but TLS flags"),
        "{run:#?}"
    );

    // clap's own usage errors exit 2 as well.
    let run = call(&[&address, "list", "--deadline", "soon"], "");
    run.exited(2);
    assert!(run.stderr.contains("--deadline"), "{run:#?}");
}

#[test]
fn an_unreachable_server_exits_1() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The listener is closed again: nothing listens on the port.
    let run = call(&[&format!("127.0.0.1:{port}"), "list"], "");
    run.exited(1);
    assert!(
        run.stderr.contains("cannot connect to http://127.0.0.1:"),
        "{run:#?}"
    );
}

#[test]
fn help_teaches_examples_and_exit_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["call", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for part in [
        "keel call 127.0.0.1:50051 list\n",
        "describe helloworld.Greeter",
        "helloworld.Greeter/SayHello -d '{\"name\":\"Ada\"}'",
        "-d @\n",
        "-H 'authorization: Bearer TOKEN'",
        "--deadline 2s",
        "--tls",
        "--cacert ca.pem",
        "--cert client.pem --key client.key",
        "64+N",
        "usage or input error",
    ] {
        assert!(help.contains(part), "{part:?} in\n{help}");
    }
}

#[test]
fn payments_accounts_deposits_payments_and_business_errors() {
    let payments = Payments::start();
    let address = payments.grpc.to_string();
    let ok = |method: &str, headers: &[&str], data: &str| {
        let mut args = vec![address.as_str(), method, "--compact", "-d", data];
        for header in headers {
            args.extend(["-H", header]);
        }
        let run = call(&args, "");
        run.exited(0);
        run.json().remove(0)
    };

    let run = call(&[&address, "list"], "");
    run.exited(0);
    for service in [
        "grpc.health.v1.Health",
        "payments.v1.AccountService",
        "payments.v1.PaymentService",
    ] {
        assert!(run.stdout.lines().any(|l| l == service), "{run:#?}");
    }
    let run = call(&[&address, "describe", "payments.v1.PaymentService"], "");
    run.exited(0);
    assert!(
        run.stdout.contains(
            "  rpc ProcessStream(stream payments.v1.ProcessStreamRequest) \
             returns (stream payments.v1.ProcessStreamResponse);\n"
        ),
        "{run:#?}"
    );

    for account in ["alice", "bob"] {
        let created = ok(
            "payments.v1.AccountService/CreateAccount",
            &[],
            &format!(r#"{{"account_id": "{account}", "currency": "EUR"}}"#),
        );
        assert_eq!(created["account"]["accountId"], account, "{created}");
    }
    let deposited = ok(
        "payments.v1.AccountService/Deposit",
        &[],
        r#"{"account_id": "alice", "amount_minor": 10000, "idempotency_key": "dep-1"}"#,
    );
    assert_eq!(deposited["account"]["balanceMinor"], "10000", "{deposited}");
    let paid = ok(
        "payments.v1.PaymentService/Process",
        &["idempotency-key: pay-1"],
        r#"{"payer_account_id": "alice", "payee_account_id": "bob", "amount_minor": 2500,
            "currency": "EUR", "description": "books"}"#,
    );
    assert_eq!(
        paid["payment"]["status"], "PAYMENT_STATUS_COMPLETED",
        "{paid}"
    );
    assert_eq!(paid["payment"]["idempotencyKey"], "pay-1", "{paid}");
    assert_eq!(paid["payment"]["amountMinor"], "2500", "{paid}");
    let bob = ok(
        "payments.v1.AccountService.GetAccount",
        &[],
        r#"{"accountId": "bob"}"#,
    );
    assert_eq!(bob["account"]["balanceMinor"], "2500", "{bob}");

    // More than Alice holds: FAILED_PRECONDITION with its ErrorInfo, exit 64 + 9.
    let run = call(
        &[
            &address,
            "payments.v1.PaymentService/Process",
            "--compact",
            "-H",
            "idempotency-key: pay-2",
            "-d",
            r#"{"payer_account_id": "alice", "payee_account_id": "bob", "amount_minor": 999999, "currency": "EUR"}"#,
        ],
        "",
    );
    run.exited(64 + 9);
    let details = status_details(&run, "FailedPrecondition");
    let info = detail(&details, "ErrorInfo");
    assert_eq!(info["reason"], "INSUFFICIENT_FUNDS", "{run:#?}");
    assert_eq!(info["domain"], "payments.keel.dev", "{run:#?}");
    assert_eq!(info["metadata"]["account_id"], "alice", "{run:#?}");
    let violation = &detail(&details, "PreconditionFailure")["violations"][0];
    assert_eq!(violation["subject"], "accounts/alice", "{run:#?}");

    // An unknown account: NOT_FOUND with ErrorInfo and ResourceInfo, exit 64 + 5, pretty.
    let run = call(
        &[
            &address,
            "payments.v1.AccountService/GetAccount",
            "-d",
            r#"{"account_id": "carol"}"#,
        ],
        "",
    );
    run.exited(64 + 5);
    assert!(
        run.stderr.starts_with(
            "ERROR:\n  Code: NotFound\n  Message: account \"carol\" does not exist\n  Details:\n  {\n"
        ),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .contains("    \"reason\": \"ACCOUNT_NOT_FOUND\",\n"),
        "{run:#?}"
    );
    assert!(
        run.stderr
            .contains("    \"@type\": \"type.googleapis.com/google.rpc.ResourceInfo\",\n"),
        "{run:#?}"
    );

    // A batch from stdin whose second payment is refused: the google.rpc.Status inside the
    // response prints with its details, though payments' descriptors lack error_details.
    let run = call(
        &[
            &address,
            "payments.v1.PaymentService/ProcessBatch",
            "--compact",
            "-d",
            "@",
        ],
        r#"{"request": {"idempotency_key": "b-1", "payer_account_id": "alice", "payee_account_id": "bob", "amount_minor": 100, "currency": "EUR"}}
{"request": {"idempotency_key": "b-2", "payer_account_id": "bob", "payee_account_id": "alice", "amount_minor": 100000, "currency": "EUR"}}"#,
    );
    run.exited(0);
    let batch = run.json().remove(0);
    assert_eq!(
        (batch["accepted"].clone(), batch["rejected"].clone()),
        (json!(1), json!(1)),
        "{batch}"
    );
    let refused = &batch["results"][1]["error"];
    assert_eq!(refused["code"], 9, "{batch}");
    let info = refused["details"]
        .as_array()
        .and_then(|d| {
            d.iter()
                .find(|d| d["@type"] == "type.googleapis.com/google.rpc.ErrorInfo")
        })
        .unwrap_or_else(|| panic!("no ErrorInfo in {batch}"));
    assert_eq!(info["reason"], "INSUFFICIENT_FUNDS", "{batch}");
}

/// The details of the error status in `run`'s stderr (printed with --compact: one JSON
/// value per line), after checking its code.
fn status_details(run: &Run, code: &str) -> Vec<Value> {
    let mut lines = run.stderr.lines();
    assert_eq!(lines.next(), Some("ERROR:"), "{run:#?}");
    assert_eq!(
        lines.next(),
        Some(format!("  Code: {code}").as_str()),
        "{run:#?}"
    );
    assert!(
        lines.next().is_some_and(|l| l.starts_with("  Message: ")),
        "{run:#?}"
    );
    assert_eq!(lines.next(), Some("  Details:"), "{run:#?}");
    lines
        .map(|l| serde_json::from_str(l.trim()).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect()
}

fn detail<'a>(details: &'a [Value], name: &str) -> &'a Value {
    let wanted = format!("type.googleapis.com/google.rpc.{name}");
    details
        .iter()
        .find(|d| d["@type"] == wanted)
        .unwrap_or_else(|| panic!("no {name} in {details:?}"))
}

#[test]
fn a_server_with_only_v1alpha_reflection_is_called_through_it() {
    let server = TestServer::start(|routes| {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
            .build_v1alpha()
            .unwrap();
        routes
            .add_service(keel_interop::Greeter.into_service())
            .add_service(reflection)
    });
    let address = server.addr.to_string();
    let run = call(&[&address, "list"], "");
    run.exited(0);
    assert!(
        run.stdout
            .contains("grpc.reflection.v1alpha.ServerReflection\n"),
        "{run:#?}"
    );
    let run = call(
        &[
            &address,
            "helloworld.Greeter/SayHello",
            "-v",
            "-d",
            r#"{"name": "Old"}"#,
        ],
        "",
    );
    run.exited(0);
    assert_eq!(run.json(), [json!({"message": "Hello Old"})]);
    assert!(
        run.stderr
            .contains("reflection: grpc.reflection.v1alpha.ServerReflection"),
        "{run:#?}"
    );
}

#[test]
fn a_server_without_reflection_exits_1_saying_so() {
    let server =
        TestServer::start(|routes| routes.add_service(keel_interop::Greeter.into_service()));
    let run = call(&[&server.addr.to_string(), "list"], "");
    run.exited(1);
    assert!(
        run.stderr
            .contains("server reflection failed: Unimplemented"),
        "{run:#?}"
    );
}

#[test]
fn tls_with_a_private_ca_and_a_client_certificate() {
    let dir = TempDir::new("tls");
    let pki = Pki::create(dir.path());
    let server = TestServer::start_tls(&pki, |routes| {
        let reflection = tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
            .build_v1()
            .unwrap();
        routes
            .add_service(keel_interop::Greeter.into_service())
            .add_service(reflection)
    });
    let port = server.addr.port();
    let (ca, cert, key) = (
        pki.file("ca.pem"),
        pki.file("client.pem"),
        pki.file("client.key"),
    );
    let mutual = ["--cacert", &ca, "--cert", &cert, "--key", &key];

    // 127.0.0.1 dialled, "localhost" verified.
    let mut args = vec![
        format!("127.0.0.1:{port}"),
        "helloworld.Greeter/SayHello".into(),
    ];
    args.extend([
        "-d".into(),
        r#"{"name": "TLS"}"#.into(),
        "--server-name".into(),
        "localhost".into(),
    ]);
    args.extend(mutual.iter().map(|s| (*s).to_owned()));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = call(&args, "");
    run.exited(0);
    assert_eq!(run.json(), [json!({"message": "Hello TLS"})]);

    // https:// with the host name in the certificate.
    let url = format!("https://localhost:{port}");
    let mut args = vec![url.as_str(), "list"];
    args.extend(mutual);
    call(&args, "").exited(0);

    // Without the private CA the server is not trusted; without a client certificate the
    // server refuses: both exit 1, saying why.
    let run = call(&[&url, "list", "--cert", &cert, "--key", &key], "");
    run.exited(1);
    assert!(
        run.stderr.contains("cannot connect to https://localhost:"),
        "{run:#?}"
    );
    let run = call(&[&url, "list", "--cacert", &ca], "");
    run.exited(1);
    // Plaintext to a TLS port fails too.
    let run = call(&[&format!("127.0.0.1:{port}"), "list"], "");
    run.exited(1);
}

/// A tonic server in a thread of its own, stopped on drop.
struct TestServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

type Routes = tonic::transport::server::Router;

impl TestServer {
    fn start(
        services: impl FnOnce(&mut tonic::transport::Server) -> Routes + Send + 'static,
    ) -> Self {
        Self::spawn(None, services)
    }

    fn start_tls(
        pki: &Pki,
        services: impl FnOnce(&mut tonic::transport::Server) -> Routes + Send + 'static,
    ) -> Self {
        use tonic::transport::{Certificate, Identity, ServerTlsConfig};
        let read = |name: &str| std::fs::read(pki.dir.join(name)).unwrap();
        let tls = ServerTlsConfig::new()
            .identity(Identity::from_pem(read("server.pem"), read("server.key")))
            .client_ca_root(Certificate::from_pem(read("ca.pem")));
        Self::spawn(Some(tls), services)
    }

    fn spawn(
        tls: Option<tonic::transport::ServerTlsConfig>,
        services: impl FnOnce(&mut tonic::transport::Server) -> Routes + Send + 'static,
    ) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                let mut server = tonic::transport::Server::builder();
                if let Some(tls) = tls {
                    server = server.tls_config(tls).unwrap();
                }
                services(&mut server)
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A private CA with a server certificate for `localhost` and 127.0.0.1 and a client
/// certificate, made with rcgen, as PEM files in `dir`.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn create(dir: &Path) -> Self {
        use rcgen::{
            BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
            KeyPair, KeyUsagePurpose,
        };
        let write = |name: &str, pem: String| std::fs::write(dir.join(name), pem).unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        ca.distinguished_name
            .push(DnType::CommonName, "keel test CA");
        let ca_key = KeyPair::generate().unwrap();
        write("ca.pem", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);
        for (name, names, usage) in [
            (
                "server",
                vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            ("client", Vec::new(), ExtendedKeyUsagePurpose::ClientAuth),
        ] {
            let mut params = CertificateParams::new(names).unwrap();
            params.distinguished_name.push(DnType::CommonName, name);
            params.extended_key_usages = vec![usage];
            let key = KeyPair::generate().unwrap();
            write(
                &format!("{name}.pem"),
                params.signed_by(&key, &issuer).unwrap().pem(),
            );
            write(&format!("{name}.key"), key.serialize_pem());
        }
        Self {
            dir: dir.to_owned(),
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }
}
