//! Deadlines over a real server, from a raw HTTP/2 client that writes `grpc-timeout` itself:
//! a malformed value is refused as grpc-go refuses it (HTTP 400, INTERNAL, a message naming
//! the header and the escaped value) without running the handler; a zero timeout is
//! DEADLINE_EXCEEDED without running it; a deadline that passes stops the handler and ends
//! the call with DEADLINE_EXCEEDED, before or after the response headers. All are counted.

mod common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel::Server;
use keel_interop::pb::grpc_testing::{ResponseParameters, StreamingOutputCallRequest};
use keel_interop::pb::helloworld::greeter_server::{Greeter, GreeterServer};
use keel_interop::pb::helloworld::{HelloReply, HelloRequest};
use prost::Message;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

/// Counts the calls it runs; a call named "hang" waits until dropped, then says so.
struct Counting {
    calls: Arc<AtomicUsize>,
    dropped: mpsc::UnboundedSender<()>,
}

/// Sends on drop: the handler's future was dropped.
struct OnDrop(mpsc::UnboundedSender<()>);

impl Drop for OnDrop {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[tonic::async_trait]
impl Greeter for Counting {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if request.get_ref().name == "hang" {
            let _guard = OnDrop(self.dropped.clone());
            std::future::pending::<()>().await;
        }
        Ok(Response::new(HelloReply {
            message: "hello".into(),
        }))
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

struct Fixture {
    addr: SocketAddr,
    admin: SocketAddr,
    calls: Arc<AtomicUsize>,
    dropped: mpsc::UnboundedReceiver<()>,
}

async fn serve() -> Fixture {
    let calls = Arc::new(AtomicUsize::new(0));
    let (dropped_tx, dropped) = mpsc::unbounded_channel();
    let server = Server::builder(common::config())
        .add_service(GreeterServer::new(Counting {
            calls: calls.clone(),
            dropped: dropped_tx,
        }))
        .add_service(keel_interop::TestService.into_service())
        .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .expect("bind");
    let (addr, admin) = (server.local_addr(), server.admin_addr());
    tokio::spawn(server.serve(std::future::pending()));
    Fixture {
        addr,
        admin,
        calls,
        dropped,
    }
}

/// What came back: HTTP status, grpc-status, grpc-message (percent-decoded), messages.
#[derive(Debug)]
struct Answer {
    http: u16,
    code: String,
    message: String,
    messages: usize,
}

/// Sends one gRPC request with `grpc-timeout: timeout` (if any) over a fresh connection;
/// fails the test if no answer comes within 10 s.
async fn call(
    addr: SocketAddr,
    path: &str,
    timeout: Option<&[u8]>,
    message: &impl Message,
) -> Answer {
    tokio::time::timeout(
        Duration::from_secs(10),
        exchange(addr, path, timeout, message),
    )
    .await
    .expect("an answer within 10 s")
}

async fn exchange(
    addr: SocketAddr,
    path: &str,
    timeout: Option<&[u8]>,
    message: &impl Message,
) -> Answer {
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    tokio::spawn(connection);
    let mut framed = vec![0];
    framed.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
    message.encode(&mut framed).unwrap();
    let mut request = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers");
    if let Some(timeout) = timeout {
        request = request.header(
            "grpc-timeout",
            http::HeaderValue::from_bytes(timeout).unwrap(),
        );
    }
    let request = request.body(Full::new(Bytes::from(framed))).unwrap();
    let response = sender.send_request(request).await.expect("a response");
    let http = response.status().as_u16();
    let headers = response.headers().clone();
    let collected = response.into_body().collect().await.expect("the body");
    let trailers = collected.trailers().cloned().unwrap_or(headers);
    let body = collected.to_bytes();
    // Count length-prefixed messages.
    let (mut messages, mut at) = (0, 0);
    while at + 5 <= body.len() {
        let len = u32::from_be_bytes(body[at + 1..at + 5].try_into().unwrap()) as usize;
        at += 5 + len;
        messages += 1;
    }
    let get = |name: &str| {
        trailers
            .get(name)
            .map(|value| percent_decode(value.as_bytes()))
            .unwrap_or_default()
    };
    Answer {
        http,
        code: get("grpc-status"),
        message: get("grpc-message"),
        messages,
    }
}

fn percent_decode(bytes: &[u8]) -> String {
    let mut out = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(hex) = bytes.get(i + 1..i + 3)
            && let Ok(byte) = u8::from_str_radix(std::str::from_utf8(hex).unwrap_or("zz"), 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

const SAY_HELLO: &str = "/helloworld.Greeter/SayHello";

fn hello(name: &str) -> HelloRequest {
    HelloRequest { name: name.into() }
}

/// `grpc_server_handled_total` of SayHello with `code`.
async fn handled(
    admin: SocketAddr,
    method: &str,
    rpc_type: &str,
    service: &str,
    code: &str,
) -> f64 {
    let (_, text) = common::http_get(admin, "/metrics").await;
    let series = format!(
        r#"grpc_server_handled_total{{grpc_type="{rpc_type}",grpc_service="{service}",grpc_method="{method}",grpc_code="{code}"}}"#
    );
    common::metric(&text, &series).unwrap_or(0.0)
}

#[tokio::test]
async fn malformed_and_zero_timeouts_are_refused_without_running_the_handler() {
    let mut server = serve().await;
    let malformed: &[(&[u8], &str)] = &[
        (b"abc", r#"timeout unit is not recognized: "abc""#),
        (b"-1S", r#"timeout value is not a number: "-1S""#),
        (b"+1S", r#"timeout value is not a number: "+1S""#),
        (b"123456789S", r#"timeout string is too long: "123456789S""#),
        (b"", r#"timeout string is too short: """#),
        (b"1", r#"timeout string is too short: "1""#),
        (b"S", r#"timeout string is too short: "S""#),
        (b"1x", r#"timeout unit is not recognized: "1x""#),
        (b"1s", r#"timeout unit is not recognized: "1s""#),
        (b"1S ", r#"timeout unit is not recognized: "1S ""#),
        (b" 1S", r#"timeout value is not a number: " 1S""#),
        (b"1.5S", r#"timeout value is not a number: "1.5S""#),
        (b"\"1\"S", r#"timeout value is not a number: "\"1\"S""#),
        (b"\xff1S", r#"timeout value is not a number: "\xff1S""#),
    ];
    for (value, reason) in malformed {
        let answer = call(server.addr, SAY_HELLO, Some(value), &hello("x")).await;
        let shown = String::from_utf8_lossy(value);
        assert_eq!(answer.http, 400, "{shown:?}: {answer:?}");
        assert_eq!(answer.code, "13", "{shown:?}: {answer:?}");
        assert_eq!(
            answer.message,
            format!("malformed grpc-timeout: {reason}"),
            "{shown:?}"
        );
    }
    let zero: &[&[u8]] = &[b"0n", b"0S", b"00000000H"];
    for value in zero {
        let answer = call(server.addr, SAY_HELLO, Some(value), &hello("x")).await;
        let shown = String::from_utf8_lossy(value);
        assert_eq!(
            (answer.http, answer.code.as_str()),
            (200, "4"),
            "{shown:?}: {answer:?}"
        );
        assert!(answer.message.contains("zero"), "{shown:?}: {answer:?}");
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 0, "no handler ran");
    assert!(server.dropped.try_recv().is_err());

    // Well-formed timeouts, short and long, and none: served.
    for value in [
        Some(&b"5S"[..]),
        Some(b"99999999H"),
        Some(b"00000100m"),
        None,
    ] {
        let answer = call(server.addr, SAY_HELLO, value, &hello("x")).await;
        assert_eq!(
            (answer.code.as_str(), answer.messages),
            ("0", 1),
            "{value:?}: {answer:?}"
        );
    }
    assert_eq!(server.calls.load(Ordering::SeqCst), 4);

    let counted = |code| {
        handled(
            server.admin,
            "SayHello",
            "unary",
            "helloworld.Greeter",
            code,
        )
    };
    assert_eq!(counted("Internal").await, malformed.len() as f64);
    assert_eq!(counted("DeadlineExceeded").await, zero.len() as f64);
    assert_eq!(counted("OK").await, 4.0);
}

#[tokio::test]
async fn a_deadline_that_passes_stops_the_handler_with_deadline_exceeded() {
    let mut server = serve().await;
    let start = Instant::now();
    let answer = call(server.addr, SAY_HELLO, Some(b"200m"), &hello("hang")).await;
    let elapsed = start.elapsed();
    assert_eq!(
        (answer.http, answer.code.as_str()),
        (200, "4"),
        "{answer:?}"
    );
    assert_eq!(
        answer.message,
        "deadline exceeded: the call's grpc-timeout of 200ms passed"
    );
    assert!(
        elapsed >= Duration::from_millis(200) && elapsed < Duration::from_secs(3),
        "answered after {elapsed:?}"
    );
    tokio::time::timeout(Duration::from_secs(5), server.dropped.recv())
        .await
        .expect("the handler's future was dropped");
    assert_eq!(
        handled(
            server.admin,
            "SayHello",
            "unary",
            "helloworld.Greeter",
            "DeadlineExceeded"
        )
        .await,
        1.0
    );
}

#[tokio::test]
async fn a_deadline_that_passes_mid_stream_ends_it_with_deadline_exceeded() {
    let server = serve().await;
    // One response at once, the next after 30 s: the 300 ms deadline falls between them.
    let parameters = |interval_us| ResponseParameters {
        size: 8,
        interval_us,
        ..Default::default()
    };
    let request = StreamingOutputCallRequest {
        response_parameters: vec![parameters(0), parameters(30_000_000)],
        ..Default::default()
    };
    let start = Instant::now();
    let answer = call(
        server.addr,
        "/grpc.testing.TestService/StreamingOutputCall",
        Some(b"300m"),
        &request,
    )
    .await;
    let elapsed = start.elapsed();
    assert_eq!(
        (answer.http, answer.code.as_str(), answer.messages),
        (200, "4", 1),
        "{answer:?}"
    );
    assert!(answer.message.contains("300ms"), "{answer:?}");
    assert!(
        elapsed >= Duration::from_millis(300) && elapsed < Duration::from_secs(3),
        "ended after {elapsed:?}"
    );
    let counted = handled(
        server.admin,
        "StreamingOutputCall",
        "server_stream",
        "grpc.testing.TestService",
        "DeadlineExceeded",
    );
    assert_eq!(counted.await, 1.0);
}
