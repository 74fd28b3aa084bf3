//! `keel gateway` end to end: the real binary in front of the real `payments` binary, over
//! real HTTP/1.1. Descriptors by reflection (Keel's reflection keeps the `google.api.http`
//! options) or from a descriptor set, business errors with their details, reloads on SIGHUP
//! and on `--refresh` (a failed one keeps the routes), nothing to serve in front of
//! `keel serve`, bad flags, and TLS: in front of a `payments` that requires mutual TLS,
//! serving HTTPS itself to curl, and an upstream that refuses the gateway or is not the one
//! expected stopping it at start, saying why.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::KeelServe;
use common::payments::{Payments, TempDir};
use http_body_util::BodyExt as _;
use hyper_util::rt::TokioIo;
use keel_test_support::tls::{Ca, Dir, Leaf};
use serde_json::{Value, json};

#[tokio::test]
async fn payments_over_rest_with_descriptors_from_reflection() {
    let payments = Payments::start();
    let mut gateway = Gateway::start(&["--upstream", &payments.url()]);
    let gw = gateway.http;
    assert!(
        !gateway.logs().contains("no google.api.http rules"),
        "{}",
        gateway.logs()
    );

    for id in ["alice", "bob"] {
        let body = json!({"accountId": id, "currency": "USD"});
        let (status, _, body) = request(gw, "POST", "/v1/accounts", Some(body)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(body["account"]["accountId"], id);
    }
    let deposit = json!({"amountMinor": "10000", "idempotencyKey": "dep-1"});
    let (status, _, body) = request(gw, "POST", "/v1/accounts/alice:deposit", Some(deposit)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account"]["balanceMinor"], "10000");

    let pay = |key: &str, amount: i64| {
        json!({"idempotencyKey": key, "payerAccountId": "alice", "payeeAccountId": "bob",
               "amountMinor": amount, "currency": "USD", "description": "books"})
    };
    let (status, _, body) = request(gw, "POST", "/v1/payments", Some(pay("pay-1", 2500))).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["payment"]["status"], "PAYMENT_STATUS_COMPLETED",
        "{body}"
    );
    let payment_id = body["payment"]["paymentId"].as_str().unwrap().to_owned();

    let (status, _, body) = request(gw, "GET", &format!("/v1/payments/{payment_id}"), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payment"]["description"], "books");
    let (status, _, body) = request(gw, "GET", "/v1/accounts/bob", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account"]["balanceMinor"], "2500");

    // A list is a page of JSON, its query parameters passed on.
    let path = "/v1/accounts/alice/payments?page_size=10";
    let (status, _, body) = request(gw, "GET", path, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["payments"].as_array().unwrap().len(), 1, "{body}");
    assert_eq!(body["payments"][0]["paymentId"], payment_id.as_str());

    // A streaming call answers NDJSON, one {"result": ...} per message.
    let item = json!({"request": pay("pay-s", 100)});
    let (status, headers, text) = raw_request(gw, "POST", "/v1/payments:stream", Some(item)).await;
    assert_eq!(status, 200, "{text}");
    assert_eq!(headers["content-type"], "application/x-ndjson");
    let lines: Vec<Value> = text.lines().map(parse).collect();
    assert_eq!(lines.len(), 1, "{text}");
    let result = &lines[0]["result"]["result"];
    assert_eq!(
        result["response"]["payment"]["amountMinor"], "100",
        "{text}"
    );

    // More than Alice holds: FAILED_PRECONDITION is 400, with its ErrorInfo.
    let (status, _, body) = request(gw, "POST", "/v1/payments", Some(pay("pay-2", 999_999))).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["code"], 9, "{body}");
    let info = detail(&body, "ErrorInfo");
    assert_eq!(info["reason"], "INSUFFICIENT_FUNDS", "{body}");
    assert_eq!(info["domain"], "payments.keel.dev", "{body}");

    // No route: 404 with a JSON explanation.
    let (status, headers, body) = request(gw, "GET", "/v1/nowhere", None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(headers["content-type"], "application/json");
    assert_eq!(body["message"], "no route for GET /v1/nowhere", "{body}");

    gateway.stop_and_expect_success();
}

#[tokio::test]
async fn a_descriptor_set_needs_no_reflection_and_service_narrows_the_routes() {
    let dir = TempDir::new("descriptors");
    let file = dir.path().join("payments.binpb");
    std::fs::write(&file, payments_descriptor_set()).unwrap();
    let file = file.to_str().unwrap();

    // Nothing listens upstream: the gateway starts all the same, and calls are 503. A
    // service without rules is named in a warning.
    let with_quiet = dir.path().join("with_quiet.binpb");
    std::fs::write(&with_quiet, descriptor_set_with_a_quiet_service(dir.path())).unwrap();
    let nobody = format!("http://{}", unused_address());
    let mut gateway = Gateway::start(&[
        "--upstream",
        &nobody,
        "--descriptor-set",
        with_quiet.to_str().unwrap(),
    ]);
    gateway.wait_for_log(
        "keel gateway: warning: quiet.v1.Quiet has no google.api.http rules; \
         none of its methods is served over REST",
    );
    let create = json!({"accountId": "alice", "currency": "USD"});
    let (status, _, body) = request(gateway.http, "POST", "/v1/accounts", Some(create)).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 14, "{body}");
    gateway.stop_and_expect_success();

    // A live upstream, one service, .proto field names.
    let payments = Payments::start();
    let mut gateway = Gateway::start(&[
        "--upstream",
        &payments.url(),
        "--descriptor-set",
        file,
        "--service",
        "payments.v1.AccountService",
        "--proto-names",
        "--emit-defaults",
    ]);
    let create = json!({"account_id": "alice", "currency": "USD"});
    let (status, _, body) = request(gateway.http, "POST", "/v1/accounts", Some(create)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["account"]["account_id"], "alice", "{body}");
    assert_eq!(
        body["account"]["balance_minor"], "0",
        "--emit-defaults: {body}"
    );
    let pay = json!({"payerAccountId": "alice", "payeeAccountId": "bob", "amountMinor": 1});
    let (status, _, body) = request(gateway.http, "POST", "/v1/payments", Some(pay)).await;
    assert_eq!(status, 404, "PaymentService is not served: {body}");
    gateway.stop_and_expect_success();
}

#[tokio::test]
async fn sighup_and_refresh_reload_and_a_failed_reload_keeps_the_routes() {
    let payments = Payments::start();
    let mut gateway = Gateway::start(&["--upstream", &payments.url(), "--refresh", "1s"]);
    let gw = gateway.http;
    let create = json!({"accountId": "alice", "currency": "USD"});
    assert_eq!(
        request(gw, "POST", "/v1/accounts", Some(create)).await.0,
        200
    );

    gateway.signal("HUP");
    gateway.wait_for_log("descriptors reloaded trigger=\"SIGHUP\"");
    gateway.wait_for_log("descriptors reloaded trigger=\"--refresh\"");
    let (status, _, body) = request(gw, "GET", "/v1/accounts/alice", None).await;
    assert_eq!(status, 200, "still served after reloads: {body}");
    assert_eq!(body["account"]["accountId"], "alice");

    // The upstream goes away: reloads fail and the routes stay (UNAVAILABLE, not 404).
    drop(payments);
    gateway.signal("HUP");
    gateway.wait_for_log("reloading descriptors failed; the routes served are kept");
    let (status, _, body) = request(gw, "GET", "/v1/accounts/alice", None).await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["code"], 14);
    gateway.stop_and_expect_success();
}

#[test]
fn nothing_to_serve_in_front_of_keel_serve_exits_2_naming_the_services() {
    let server = KeelServe::start(&[]);
    let run = run_gateway(&["--upstream", &server.grpc_url(), "--listen", "127.0.0.1:0"]);
    assert_eq!(run.code, 2, "{run:#?}");
    for part in [
        "no service has HTTP rules",
        "helloworld.Greeter",
        "grpc.testing.TestService",
    ] {
        assert!(run.stderr.contains(part), "{part:?} in {run:#?}");
    }
    assert!(!run.stderr.contains("grpc.health.v1.Health"), "{run:#?}");
    assert!(run.stdout.is_empty(), "{run:#?}");
}

#[test]
fn bad_flags_exit_2_and_an_unreachable_upstream_exits_1() {
    let check = |args: &[&str], code: i32, part: &str| {
        let run = run_gateway(args);
        assert_eq!(run.code, code, "{args:?}: {run:#?}");
        assert!(run.stderr.contains(part), "{part:?} for {args:?}: {run:#?}");
        assert!(!run.stderr.contains("panicked"), "{run:#?}");
    };
    check(&["--upstream", "ftp://x"], 2, "must be http://HOST:PORT");
    check(
        &["--upstream", "127.0.0.1:50051"],
        2,
        "must be http://HOST:PORT",
    );
    check(
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--upstream-cacert",
            "ca.pem",
        ],
        2,
        "`http://127.0.0.1:1` is plaintext (http://) but TLS flags were given; use https://",
    );
    check(
        &[
            "--upstream",
            "https://127.0.0.1:1",
            "--upstream-cacert",
            "/nonexistent/ca.pem",
        ],
        2,
        "--upstream-cacert /nonexistent/ca.pem: ",
    );
    check(
        &[
            "--upstream",
            "https://127.0.0.1:1",
            "--upstream-cert",
            "client.pem",
        ],
        2,
        "--upstream-key <FILE>",
    );
    check(&[], 2, "--upstream <URI>");
    check(
        &["--upstream", "http://127.0.0.1:1", "--refresh", "0s"],
        2,
        "at least 1s",
    );
    check(
        &["--upstream", "http://127.0.0.1:1", "--listen", "nowhere"],
        2,
        "--listen",
    );
    check(
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--forward-header",
            "a b",
        ],
        2,
        "not a valid HTTP header name",
    );
    check(
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--descriptor-set",
            "/nonexistent/x.binpb",
        ],
        2,
        "--descriptor-set /nonexistent/x.binpb",
    );

    let dir = TempDir::new("flags");
    let file = dir.path().join("payments.binpb");
    std::fs::write(&file, payments_descriptor_set()).unwrap();
    let file = file.to_str().unwrap();
    check(
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--descriptor-set",
            file,
            "--service",
            "nope.Nope",
        ],
        2,
        "--service nope.Nope",
    );
    let garbage = dir.path().join("garbage.binpb");
    std::fs::write(&garbage, b"\xff\xff\xff").unwrap();
    check(
        &[
            "--upstream",
            "http://127.0.0.1:1",
            "--descriptor-set",
            garbage.to_str().unwrap(),
        ],
        2,
        "is not a FileDescriptorSet",
    );

    let nobody = format!("http://{}", unused_address());
    check(&["--upstream", &nobody], 1, "cannot reach the upstream");
}

#[test]
fn help_teaches_examples_reloading_and_exit_codes() {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["gateway", "--help"])
        .output()
        .unwrap();
    assert!(output.status.success());
    let help = String::from_utf8(output.stdout).unwrap();
    for part in [
        "REST/JSON",
        "keel gateway --upstream http://127.0.0.1:50051             # REST",
        "need\n--descriptor-set",
        "curl -s localhost:8080/v1/accounts",
        "--descriptor-set",
        "--refresh",
        "SIGHUP",
        "--forward-header",
        "Exit status:",
        "no service with HTTP rules",
        "keel gateway --upstream https://10.0.0.7:8443 --upstream-cacert ca.pem",
        "--upstream-cert <FILE>",
        "--upstream-expect-identity <ID>",
        "TLS to the upstream: an https:// upstream",
        "--set tls.cert=FILE --set tls.key=FILE serves HTTPS",
    ] {
        assert!(help.contains(part), "{part:?} in\n{help}");
    }
    assert!(!help.contains("plaintext only"), "{help}");
}

/// The SPIFFE ID of payments' server certificate (which also holds localhost and 127.0.0.1).
const PAYMENTS_ID: &str = "spiffe://keel.test/payments";
/// The SPIFFE ID of the certificate the gateway presents to payments.
const GATEWAY_ID: &str = "spiffe://keel.test/gateway";

#[test]
fn an_mtls_upstream_behind_a_gateway_that_serves_https() {
    let pki = Pki::new();
    let payments = Payments::start_with(&strings(&pki.payments_requiring_client_certificates()));
    let upstream = format!("https://127.0.0.1:{}", payments.grpc.port());
    let mut args = vec!["--upstream".to_owned(), upstream];
    args.extend(pki.gateway_client_flags(&["--upstream-expect-identity", PAYMENTS_ID]));
    // The gateway's own port serves HTTPS, with its own certificate.
    for setting in [
        format!("tls.cert={}", pki.file("rest.pem")),
        format!("tls.key={}", pki.file("rest.key")),
    ] {
        args.extend(["--set".to_owned(), setting]);
    }
    // Reflection went over mutual TLS, or the gateway would have no routes.
    let mut gateway = Gateway::start(&strings(&args));
    let port = gateway.http.port();

    // Each call is forwarded over mutual TLS: payments sees the gateway's certificate, and
    // the account it creates is owned by the gateway's identity.
    for (version, http, account) in [("--http2", "2", "alice"), ("--http1.1", "1.1", "bob")] {
        let create = json!({"accountId": account, "currency": "USD"}).to_string();
        let created = curl(
            &pki,
            port,
            &[
                version,
                "-H",
                "content-type: application/json",
                "--data",
                &create,
            ],
            "/v1/accounts",
        )
        .unwrap();
        assert_eq!(
            (created.status, created.http.as_str()),
            (200, http),
            "{created:?}"
        );
        assert_eq!(created.body["account"]["accountId"], account, "{created:?}");
        assert_eq!(created.body["account"]["owner"], GATEWAY_ID, "{created:?}");

        let read = curl(&pki, port, &[version], &format!("/v1/accounts/{account}")).unwrap();
        assert_eq!((read.status, read.http.as_str()), (200, http), "{read:?}");
        assert_eq!(read.body["account"]["currency"], "USD", "{read:?}");
    }
    // A business error still arrives as JSON, through TLS both ways.
    let missing = curl(&pki, port, &[], "/v1/accounts/nobody").unwrap();
    assert_eq!(missing.status, 404, "{missing:?}");
    assert_eq!(missing.body["code"], 5, "{missing:?}");

    // The port speaks only TLS now.
    let plaintext = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://127.0.0.1:{port}/v1/accounts/alice"))
        .output()
        .unwrap();
    assert!(!plaintext.status.success(), "{plaintext:?}");
    gateway.stop_and_expect_success();
}

#[test]
fn an_upstream_that_refuses_the_gateway_or_is_not_the_expected_one_stops_it_at_start() {
    let pki = Pki::new();
    let payments = Payments::start_with(&strings(&pki.payments_requiring_client_certificates()));
    let upstream = format!("https://127.0.0.1:{}", payments.grpc.port());
    let check = |flags: Vec<String>, parts: &[&str]| {
        let mut args = vec!["--upstream".to_owned(), upstream.clone()];
        args.extend(["--listen".to_owned(), "127.0.0.1:0".to_owned()]);
        args.extend(["--admin-listen".to_owned(), "127.0.0.1:0".to_owned()]);
        args.extend(flags);
        let run = run_gateway(&strings(&args));
        assert_eq!(run.code, 1, "{args:?}: {run:#?}");
        assert!(run.stdout.is_empty(), "nothing listened: {run:#?}");
        let reach = format!("keel gateway: cannot reach the upstream {upstream}: ");
        for part in std::iter::once(reach.as_str()).chain(parts.iter().copied()) {
            assert!(run.stderr.contains(part), "{part:?} for {args:?}: {run:#?}");
        }
    };

    // No client certificate: payments refuses the handshake.
    let ca_only = vec!["--upstream-cacert".to_owned(), pki.file("root.pem")];
    check(ca_only, &["the server requires a client certificate"]);
    // The right certificates, but payments is not the identity expected; the error names
    // the one it presented.
    let other = ["--upstream-expect-identity", "spiffe://keel.test/ledger"];
    check(
        pki.gateway_client_flags(&other),
        &[&format!(
            "presented identity {PAYMENTS_ID}, which is not among the expected identities \
             [spiffe://keel.test/ledger]"
        )],
    );
    // https:// alone verifies with the public roots, which do not know the private CA.
    check(
        vec![
            "--upstream-cert".to_owned(),
            pki.file("gateway-client.pem"),
            "--upstream-key".to_owned(),
            pki.file("gateway-client.key"),
        ],
        &["the server's certificate is not issued by a trusted CA"],
    );
}

/// A root CA and the leaves of the TLS tests as PEM files: payments' server certificate,
/// the certificate the gateway presents to it, and the one the gateway serves HTTPS with.
struct Pki {
    dir: Dir,
}

impl Pki {
    fn new() -> Self {
        let root = Ca::root("Keel Gateway Test Root");
        let pki = Self { dir: Dir::new() };
        pki.dir.write("root.pem", root.cert_pem());
        let localhost = |name: &str| root.leaf(name).dns("localhost").ip([127, 0, 0, 1].into());
        pki.write_leaf("payments", &localhost("payments").uri(PAYMENTS_ID).issue());
        pki.write_leaf("rest", &localhost("rest").issue());
        pki.write_leaf(
            "gateway-client",
            &root.leaf("gateway").uri(GATEWAY_ID).issue(),
        );
        pki
    }

    fn write_leaf(&self, name: &str, leaf: &Leaf) {
        self.dir.write(&format!("{name}.pem"), &leaf.chain_pem);
        self.dir.write(&format!("{name}.key"), &leaf.key_pem);
    }

    /// The path of `name` in the directory, as text for command lines.
    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// payments' flags: mutual TLS on its gRPC port, client certificates required.
    fn payments_requiring_client_certificates(&self) -> Vec<String> {
        [
            format!("server.tls.cert={}", self.file("payments.pem")),
            format!("server.tls.key={}", self.file("payments.key")),
            format!("server.tls.client_ca={}", self.file("root.pem")),
            "server.tls.client_auth=required".to_owned(),
        ]
        .into_iter()
        .flat_map(|setting| ["--set".to_owned(), setting])
        .collect()
    }

    /// The gateway's flags for payments: the root, its client certificate, the name
    /// payments' certificate holds (the upstream is dialled by IP address), and `extra`.
    fn gateway_client_flags(&self, extra: &[&str]) -> Vec<String> {
        let mut flags = vec![
            "--upstream-cacert".to_owned(),
            self.file("root.pem"),
            "--upstream-cert".to_owned(),
            self.file("gateway-client.pem"),
            "--upstream-key".to_owned(),
            self.file("gateway-client.key"),
            "--upstream-server-name".to_owned(),
            "localhost".to_owned(),
        ];
        flags.extend(extra.iter().map(|s| (*s).to_owned()));
        flags
    }
}

fn strings(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// What curl got: the status code, the HTTP version it spoke (`2`, `1.1`) and the body.
#[derive(Debug)]
struct Curled {
    status: u16,
    http: String,
    body: Value,
}

/// `curl ARGS https://localhost:PORT/PATH` (localhost resolved to 127.0.0.1), trusting
/// only the test root.
fn curl(pki: &Pki, port: u16, args: &[&str], path: &str) -> Result<Curled, String> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &pki.file("root.pem")])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--write-out", "\n%{http_code} %{http_version}"])
        .args(args)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("curl {}: {stderr}{stdout}", output.status));
    }
    let (body, last) = stdout.rsplit_once('\n').expect("curl's --write-out line");
    let (status, http) = last.split_once(' ').expect("status and version");
    Ok(Curled {
        status: status.parse().expect("a status code"),
        http: http.to_owned(),
        body: serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())),
    })
}

/// A running `keel gateway`, killed on drop; its stderr (logs) collected.
struct Gateway {
    child: Child,
    http: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Gateway {
    /// Starts `keel gateway --listen 127.0.0.1:0 ARGS` and waits until it listens.
    fn start(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args([
                "gateway",
                "--listen",
                "127.0.0.1:0",
                "--admin-listen",
                "127.0.0.1:0",
            ])
            .args(args)
            .env("KEEL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel gateway");
        let logs = collect(child.stderr.take().unwrap());
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let http = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!(
                    "keel gateway exited before listening:\n{}",
                    logs.lock().unwrap()
                );
            }
            if let Some(addr) = line.trim().strip_prefix("gateway listening on ") {
                break addr.parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in stdout.lines() {});
        Self { child, http, logs }
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Sends `kill -NAME`.
    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to 15 s until the logs contain `part`.
    #[track_caller]
    fn wait_for_log(&self, part: &str) {
        let start = Instant::now();
        while !self.logs().contains(part) {
            assert!(
                start.elapsed() < Duration::from_secs(15),
                "{part:?} never logged:\n{}",
                self.logs()
            );
            // sleep: poll interval of a bounded poll on the condition
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// SIGTERM, then expects exit status 0 within 10 s.
    #[track_caller]
    fn stop_and_expect_success(&mut self) {
        self.signal("TERM");
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            assert!(start.elapsed() < Duration::from_secs(10), "still running");
            // sleep: poll interval of a bounded poll on the condition
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "{status}:\n{}", self.logs());
        assert!(!self.logs().contains("panicked"), "{}", self.logs());
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// What a `keel gateway` that exits by itself did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_gateway(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .arg("gateway")
        .args(args)
        .env("KEEL_LOG", "warn")
        .output()
        .expect("run keel gateway");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// One HTTP/1.1 request with an optional JSON body; the status, headers and JSON body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, http::HeaderMap, Value) {
    let (status, headers, text) = raw_request(addr, method, path, body).await;
    (status, headers, parse(&text))
}

/// [`request`] with the body as text.
async fn raw_request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, http::HeaderMap, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let mut builder = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost");
    if body.is_some() {
        builder = builder.header("content-type", "application/json");
    }
    let body = body.map(|body| body.to_string()).unwrap_or_default();
    let request = builder
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let (parts, body) = response.into_parts();
    let text = String::from_utf8(body.collect().await.unwrap().to_bytes().to_vec()).unwrap();
    (parts.status.as_u16(), parts.headers, text)
}

fn parse(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|error| panic!("{error}: {text}"))
}

/// The detail of `@type` google.rpc.`kind` in a Status JSON body.
fn detail<'a>(status: &'a Value, kind: &str) -> &'a Value {
    let wanted = format!("type.googleapis.com/google.rpc.{kind}");
    status["details"]
        .as_array()
        .and_then(|details| details.iter().find(|d| d["@type"] == wanted))
        .unwrap_or_else(|| panic!("no {kind} in {status}"))
}

/// payments.proto and its imports as an encoded FileDescriptorSet, options included.
fn payments_descriptor_set() -> Vec<u8> {
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let mut compiler = protox::Compiler::new([proto]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("payments/v1/payments.proto").unwrap();
    compiler.encode_file_descriptor_set()
}

/// [`payments_descriptor_set`] plus `quiet.v1.Quiet`, a service without HTTP rules, whose
/// file is written to `dir`.
fn descriptor_set_with_a_quiet_service(dir: &Path) -> Vec<u8> {
    std::fs::create_dir_all(dir.join("quiet/v1")).unwrap();
    std::fs::write(
        dir.join("quiet/v1/quiet.proto"),
        "syntax = \"proto3\";\npackage quiet.v1;\nimport \"google/protobuf/empty.proto\";\n\
         service Quiet { rpc Ping(google.protobuf.Empty) returns (google.protobuf.Empty); }\n",
    )
    .unwrap();
    let proto = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../proto");
    let mut compiler = protox::Compiler::new([dir, proto.as_path()]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("payments/v1/payments.proto").unwrap();
    compiler.open_file("quiet/v1/quiet.proto").unwrap();
    compiler.encode_file_descriptor_set()
}

/// A loopback address nothing listens on (bound, then released).
fn unused_address() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// Collects a child's stderr lines in the background.
fn collect(stderr: std::process::ChildStderr) -> Arc<Mutex<String>> {
    let logs = Arc::new(Mutex::new(String::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    logs
}
