//! Every Keel client against a hostile server: a status with details that are not base64,
//! no status at all, OK without the answer, escape sequences in the message, headers over
//! the client's limit. `keel call` (plaintext and TLS), the REST gateway over Keel's
//! `Channel`, a generated client on Keel's `Channel` and `keel interop-client` each give a
//! clear error, exit non-zero where they are processes, and never panic.
//!
//! The server is hyper's HTTP/2 server with a hand-written answer per call, chosen by the
//! request's `x-hostile` header; it serves real reflection (tonic-reflection, for the
//! Greeter) so that `keel call` finds the method.

mod common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use base64::Engine as _;
use bytes::Bytes;
use common::payments::TempDir;
use http::{HeaderMap, HeaderValue};
use http_body_util::{BodyExt as _, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use prost::Message as _;
use serde_json::Value;
use tonic::Code;

/// What the hostile server answers; the `x-hostile` request header names it (bad details
/// when absent).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Script {
    /// INVALID_ARGUMENT in the trailers, with `grpc-status-details-bin` not base64.
    BadDetails,
    /// The same in a trailers-only response.
    BadDetailsTrailersOnly,
    /// An answer, then trailers without `grpc-status`.
    NoStatus,
    /// An answer, then the stream ends: no trailers.
    NoTrailers,
    /// A trailers-only OK: no answer.
    OkNoAnswer,
    /// Two answers to a unary call, then OK.
    TwoAnswers,
    /// `grpc-status: OK` spelled out.
    BadStatus,
    /// INTERNAL whose message, trailer and details carry terminal escape sequences.
    Escapes,
    /// Response headers of 20 KB: over the client's 16 KiB limit.
    HugeHeaders,
    /// Trailers of 20 KB, the status after the big entry.
    HugeTrailers,
    /// Response headers of 100 KB: over four times the limit, which costs the whole
    /// connection (so it comes last).
    HugerHeaders,
}

impl Script {
    const ALL: [Script; 11] = [
        Script::BadDetails,
        Script::BadDetailsTrailersOnly,
        Script::NoStatus,
        Script::NoTrailers,
        Script::OkNoAnswer,
        Script::TwoAnswers,
        Script::BadStatus,
        Script::Escapes,
        Script::HugeHeaders,
        Script::HugeTrailers,
        Script::HugerHeaders,
    ];

    fn name(self) -> &'static str {
        match self {
            Script::BadDetails => "bad-details",
            Script::BadDetailsTrailersOnly => "bad-details-trailers-only",
            Script::NoStatus => "no-status",
            Script::NoTrailers => "no-trailers",
            Script::OkNoAnswer => "ok-no-answer",
            Script::TwoAnswers => "two-answers",
            Script::BadStatus => "bad-status",
            Script::Escapes => "escapes",
            Script::HugeHeaders => "huge-headers",
            Script::HugerHeaders => "huger-headers",
            Script::HugeTrailers => "huge-trailers",
        }
    }

    /// The status every client must end the call with, and words its message must hold.
    fn expected(self) -> (Code, &'static str) {
        match self {
            Script::BadDetails | Script::BadDetailsTrailersOnly => (
                Code::Internal,
                "server sent malformed grpc-status-details-bin (not base64",
            ),
            Script::NoStatus => (Code::Unknown, "server ended the call without grpc-status"),
            Script::NoTrailers => (
                Code::Internal,
                "server closed the stream without sending trailers",
            ),
            Script::OkNoAnswer | Script::TwoAnswers => (Code::Internal, ""),
            Script::BadStatus => (Code::Unknown, "server sent malformed grpc-status \"OK\""),
            Script::Escapes => (Code::Internal, "red"),
            Script::HugeHeaders | Script::HugerHeaders => (
                Code::Internal,
                "larger than this client's limit of 16384 bytes (http2.max_header_list_size)",
            ),
            // h2 drops trailer entries past the limit without a word; the status went with
            // them.
            Script::HugeTrailers => (Code::Unknown, "without grpc-status"),
        }
    }

    /// The answer: response headers, then body frames.
    fn answer(self) -> http::Response<tonic::body::Body> {
        let mut frames = Vec::new();
        let mut headers = grpc_headers();
        let mut trailers = HeaderMap::new();
        let big = HeaderValue::from_str(&"a".repeat(20_000)).unwrap();
        match self {
            Script::BadDetails => {
                trailers.insert("grpc-status", HeaderValue::from_static("3"));
                trailers.insert("grpc-message", HeaderValue::from_static("bad"));
                trailers.insert(
                    "grpc-status-details-bin",
                    HeaderValue::from_static("!!not*base64!!"),
                );
            }
            Script::BadDetailsTrailersOnly => {
                headers.insert("grpc-status", HeaderValue::from_static("3"));
                headers.insert("grpc-status-details-bin", HeaderValue::from_static("%%%"));
            }
            Script::NoStatus => {
                frames.push(answer_frame());
                trailers.insert("x-note", HeaderValue::from_static("no status here"));
            }
            Script::NoTrailers => frames.push(answer_frame()),
            Script::OkNoAnswer => {
                headers.insert("grpc-status", HeaderValue::from_static("0"));
            }
            Script::TwoAnswers => {
                frames.extend([answer_frame(), answer_frame()]);
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
            }
            Script::BadStatus => {
                frames.push(answer_frame());
                trailers.insert("grpc-status", HeaderValue::from_static("OK"));
            }
            Script::Escapes => {
                // ESC ] 0 ; title BEL (sets the window title), ESC [ 2 J (clears the
                // screen), a C1 CSI, a bidi override.
                trailers.insert("grpc-status", HeaderValue::from_static("13"));
                trailers.insert(
                    "grpc-message",
                    HeaderValue::from_static("%1B]0;pwned%07%1B[2J%C2%9B31mred%E2%80%AE"),
                );
                trailers.insert(
                    "x-evil",
                    HeaderValue::from_bytes(b"\xc2\x9b2J trailer").unwrap(),
                );
                trailers.insert(
                    "grpc-status-details-bin",
                    HeaderValue::from_str(&escaping_details()).unwrap(),
                );
            }
            Script::HugeHeaders => {
                headers.insert("x-big", big);
                frames.push(answer_frame());
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
            }
            Script::HugerHeaders => {
                for name in ["x-big-1", "x-big-2", "x-big-3", "x-big-4", "x-big-5"] {
                    headers.insert(name, big.clone());
                }
                frames.push(answer_frame());
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
            }
            Script::HugeTrailers => {
                frames.push(answer_frame());
                trailers.insert("x-big", big);
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
            }
        }
        if !trailers.is_empty() {
            frames.push(Frame::trailers(trailers));
        }
        let frames = frames.into_iter().map(Ok::<_, Infallible>);
        let mut response = http::Response::new(tonic::body::Body::new(StreamBody::new(
            futures_util::stream::iter(frames),
        )));
        *response.headers_mut() = headers;
        response
    }
}

fn grpc_headers() -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert("content-type", HeaderValue::from_static("application/grpc"));
    headers
}

/// One length-prefixed HelloReply.
fn answer_frame() -> Frame<Bytes> {
    let reply = keel_interop::pb::helloworld::HelloReply {
        message: "hi".into(),
    }
    .encode_to_vec();
    let mut framed = vec![0];
    framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
    framed.extend_from_slice(&reply);
    Frame::data(Bytes::from(framed))
}

/// A well-formed `google.rpc.Status` (INTERNAL) whose ErrorInfo is full of escapes.
fn escaping_details() -> String {
    let details = tonic_types::ErrorDetails::with_error_info(
        "\u{1b}[2JREASON\u{9b}31m",
        "evil.example",
        [("k".to_owned(), "\u{1b}]8;;http://evil\u{7}".to_owned())],
    );
    let status = <tonic::Status as tonic_types::StatusExt>::with_error_details(
        Code::Internal,
        "ignored",
        details,
    );
    base64::engine::general_purpose::STANDARD.encode(status.details())
}

/// The hostile server, on an ephemeral loopback port in a thread of its own (so that tests
/// may block on child processes), over TLS when given a configuration. Stopped on drop.
struct HostileServer {
    addr: SocketAddr,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl HostileServer {
    fn start(tls: Option<Arc<tokio_rustls::rustls::ServerConfig>>) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, mut stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            runtime.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
                let mut connections = tokio::task::JoinSet::new();
                loop {
                    let (stream, _) = tokio::select! {
                        accepted = listener.accept() => accepted.unwrap(),
                        _ = &mut stopped => break,
                    };
                    let acceptor = acceptor.clone();
                    connections.spawn(async move {
                        match acceptor {
                            Some(acceptor) => {
                                if let Ok(stream) = acceptor.accept(stream).await {
                                    serve_connection(stream).await;
                                }
                            }
                            None => serve_connection(stream).await,
                        }
                    });
                }
                connections.abort_all();
            });
        });
        Self {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        }
    }
}

impl Drop for HostileServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves one HTTP/2 connection: reflection for real, anything else by its script.
async fn serve_connection<I>(io: I)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .build_v1()
        .unwrap();
    let routes = tonic::service::Routes::new(reflection);
    let service =
        hyper::service::service_fn(move |request: http::Request<hyper::body::Incoming>| {
            let routes = routes.clone();
            async move {
                if request.uri().path().starts_with("/grpc.reflection.") {
                    return tower::ServiceExt::oneshot(routes, request).await;
                }
                let name = request
                    .headers()
                    .get("x-hostile")
                    .map(|value| value.to_str().unwrap_or_default().to_owned());
                // The request is read to its end (or its reset) on the side: a request still
                // open when the answer ends would make h2 reset the stream, racing the answer.
                tokio::spawn(request.into_body().collect());
                let script = match name {
                    None => Script::BadDetails,
                    Some(name) => Script::ALL
                        .into_iter()
                        .find(|script| script.name() == name)
                        .unwrap_or_else(|| panic!("no script {name}")),
                };
                Ok::<_, Infallible>(script.answer())
            }
        });
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service)
        .await;
}

/// What one `keel` run did.
#[derive(Debug)]
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn keel(args: &[&str]) -> Run {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL_LOG", "warn")
        .output()
        .expect("run keel");
    Run {
        code: output.status.code().expect("exited, not killed"),
        stdout: String::from_utf8(output.stdout).unwrap(),
        stderr: String::from_utf8(output.stderr).unwrap(),
    }
}

/// `keel call` of the Greeter with `script`, checked: exit 64 + the expected code, the
/// expected words on stderr, no panic, no raw control character on either stream.
fn call_checked(target: &str, script: Script, extra: &[&str]) -> Run {
    let header = format!("x-hostile: {}", script.name());
    let mut args = vec![
        "call",
        target,
        "helloworld.Greeter/SayHello",
        "-d",
        "{}",
        "-H",
        &header,
    ];
    args.extend(extra);
    let run = keel(&args);
    let (code, words) = script.expected();
    assert_eq!(run.code, 64 + code as i32, "{script:?}: {run:#?}");
    assert!(run.stderr.contains(words), "{script:?}: {run:#?}");
    assert!(!run.stderr.contains("panicked"), "{script:?}: {run:#?}");
    // What did arrive prints as JSON.
    for value in serde_json::Deserializer::from_str(&run.stdout).into_iter::<Value>() {
        assert!(value.is_ok(), "{script:?}: {run:#?}");
    }
    for text in [&run.stdout, &run.stderr] {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "{script:?}: a raw control character: {run:#?}"
        );
    }
    run
}

#[test]
fn keel_call_reports_every_hostile_answer_and_never_panics() {
    let server = HostileServer::start(None);
    let target = server.addr.to_string();
    for script in [
        Script::BadDetails,
        Script::BadDetailsTrailersOnly,
        Script::NoStatus,
        Script::NoTrailers,
        Script::BadStatus,
        Script::HugeHeaders,
    ] {
        call_checked(&target, script, &[]);
    }
    let run = call_checked(&target, Script::OkNoAnswer, &[]);
    assert!(
        run.stderr
            .contains("cardinality violation: received no response message"),
        "{run:#?}"
    );
    let run = call_checked(&target, Script::TwoAnswers, &[]);
    assert!(
        run.stderr.contains("cardinality violation: expected <EOF>"),
        "{run:#?}"
    );

    // Escapes arrive escaped: in the message, the trailers (-v) and the details.
    let run = call_checked(&target, Script::Escapes, &["-v"]);
    for shown in [
        r"Message: \u{1b}]0;pwned\u{7}\u{1b}[2J\u{9b}31mred\u{202e}",
        r"x-evil: \u{9b}2J trailer",
        r#""reason": "\u001b[2JREASON\u009b31m""#,
        r#""k": "\u001b]8;;http://evil\u0007""#,
    ] {
        assert!(run.stderr.contains(shown), "{shown}: {run:#?}");
    }
}

#[test]
fn keel_call_over_tls_checks_statuses_too() {
    let dir = TempDir::new("hostile-tls");
    let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, certified.cert.pem()).unwrap();
    let provider = Arc::new(tokio_rustls::rustls::crypto::ring::default_provider());
    let mut config = tokio_rustls::rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![certified.cert.der().clone()],
            tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(
                certified.signing_key.serialize_der().into(),
            ),
        )
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec()];
    let server = HostileServer::start(Some(Arc::new(config)));

    let target = format!("https://localhost:{}", server.addr.port());
    let ca = ca.to_str().unwrap();
    for script in [
        Script::BadDetails,
        Script::BadDetailsTrailersOnly,
        Script::NoTrailers,
        Script::NoStatus,
        Script::HugeHeaders,
    ] {
        call_checked(&target, script, &["--cacert", ca]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_generated_client_on_keel_channel_gets_a_clear_status_for_each() {
    let server = HostileServer::start(None);
    let channel = keel::client::Channel::new(&format!("static:///{}", server.addr)).unwrap();
    let mut greeter = GreeterClient::new(channel);
    // tonic's generated unary call takes the first answer and drops the rest, as it does
    // over any transport; `keel call` and the gateway refuse a second one.
    for script in Script::ALL.into_iter().filter(|s| *s != Script::TwoAnswers) {
        let mut request = tonic::Request::new(HelloRequest { name: "x".into() });
        request
            .metadata_mut()
            .insert("x-hostile", script.name().parse().unwrap());
        let status = greeter
            .say_hello(request)
            .await
            .expect_err(&format!("{script:?} must fail"));
        let (code, words) = script.expected();
        assert_eq!(status.code(), code, "{script:?}: {status:?}");
        assert!(status.message().contains(words), "{script:?}: {status:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_answers_each_with_a_json_error() {
    let server = HostileServer::start(None);
    let channel = keel::client::Channel::new(&format!("static:///{}", server.addr)).unwrap();
    let gateway = keel_gateway::Gateway::new(say_pool(), channel, Default::default()).unwrap();
    let mut config = keel::config::ServerConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    let served = keel::server::HttpServer::bind(config, "gateway", gateway)
        .await
        .unwrap();
    let http = served.local_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let serving = tokio::spawn(served.serve(async {
        let _ = stopped.await;
    }));

    for script in Script::ALL {
        let (status, body) = get(http, "/v1/say", script).await;
        let json: Value = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("{script:?}: {error}: {body:?}"));
        let (code, words) = script.expected();
        let (code, words) = match script {
            // The gateway reads one message and says so itself.
            Script::OkNoAnswer => (code, "the service answered no message"),
            Script::TwoAnswers => (code, "more than one message"),
            _ => (code, words),
        };
        assert_eq!(status, 500, "{script:?}: {body}");
        assert_eq!(json["code"], code as i32, "{script:?}: {body}");
        let message = json["message"].as_str().unwrap_or_default();
        assert!(message.contains(words), "{script:?}: {body}");
    }
    let _ = stop.send(());
    serving.await.unwrap();
}

#[test]
fn keel_interop_client_fails_every_case_without_panicking() {
    let server = HostileServer::start(None);
    let run = keel(&[
        "interop-client",
        "--server_port",
        &server.addr.port().to_string(),
        "--test_case",
        "all",
    ]);
    assert_eq!(run.code, 1, "{run:#?}");
    assert!(!run.stderr.contains("panicked"), "{run:#?}");
    assert_eq!(run.stdout.lines().count(), 14, "{run:#?}");
    // Every case that waits for an answer fails on the bad details (cancel_after_begin
    // cancels before any; timeout_on_sleeping_server's 1 ms deadline may expire before
    // the answer arrives, and then it passes).
    for line in run.stdout.lines() {
        if line != "PASS cancel_after_begin" && line != "PASS timeout_on_sleeping_server" {
            assert!(line.starts_with("FAIL "), "{run:#?}");
            assert!(
                line.contains(
                    "Internal (13): \"server sent malformed grpc-status-details-bin (not base64"
                ),
                "{line}"
            );
        }
    }
}

/// `hostile.v1.Say/Say`, served over REST at `GET /v1/say`.
fn say_pool() -> prost_reflect::DescriptorPool {
    let dir = TempDir::new("hostile-proto");
    std::fs::write(
        dir.path().join("say.proto"),
        "syntax = \"proto3\";\npackage hostile.v1;\nimport \"google/api/annotations.proto\";\n\
         service Say { rpc Say(SayRequest) returns (SayReply) {\n\
           option (google.api.http) = { get: \"/v1/say\" }; } }\n\
         message SayRequest {}\nmessage SayReply { string message = 1; }\n",
    )
    .unwrap();
    let proto = concat!(env!("CARGO_MANIFEST_DIR"), "/../../proto");
    let mut compiler = protox::Compiler::new([dir.path(), std::path::Path::new(proto)]).unwrap();
    compiler.include_imports(true);
    compiler.open_file("say.proto").unwrap();
    compiler.descriptor_pool()
}

/// `GET path` over HTTP/1.1 with the script's header: the status and the body.
async fn get(addr: SocketAddr, path: &str, script: Script) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get(path)
        .header("host", "localhost")
        .header("grpc-metadata-x-hostile", script.name())
        .body(http_body_util::Empty::<Bytes>::new())
        .unwrap();
    let response = sender
        .send_request(request)
        .await
        .unwrap_or_else(|error| panic!("{script:?}: no answer: {error}"));
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8(body.to_vec()).unwrap())
}
