//! One HTTP/2 connection to the server under load, on the `h2` crate directly, over TCP or
//! Keel's client TLS (`keel_tls::ClientTls`: the same verification, ALPN and identity checks
//! as Keel's channel). It makes gRPC calls and REST calls (a JSON body, success on 2xx).
//!
//! Why not Keel's channel: a generator must cost far less per call than the server it loads.
//! Through `keel::client::Channel` (hyper's client under tonic) a unary call took 67,677
//! instructions, more than bare tonic's server spends answering it; hyper spawns a task per
//! request body and tonic re-frames every message. Here a call is one `send_request`, its
//! messages framed once before the run, and the answer's frames counted, not decoded
//! (docs/BENCHMARKS.md, "Load generators").

use std::time::Duration;

use bytes::Bytes;
use h2::SendStream;
use h2::client::{ResponseFuture, SendRequest};
use http::uri::Authority;
use http::{HeaderMap, HeaderValue, Method, Request, Uri};
use keel_core::context::format_grpc_timeout;
use keel_core::framing::Framing;
use keel_tls::ClientTls;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tonic::{Code, Status};

use crate::record::Failure;

/// How long connecting (TCP and TLS handshakes, HTTP/2 preface) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Flow-control windows the generator offers the server: hyper's client defaults, so large
/// responses stream at full speed, as through Keel's channel.
const STREAM_WINDOW: u32 = 2 << 20;
const CONNECTION_WINDOW: u32 = 5 << 20;

/// The largest response header block accepted (Keel's client limit).
const MAX_HEADER_LIST: u32 = 64 << 10;

/// The most of a failed REST answer's body kept for its error message.
const ERROR_BODY: usize = 200;

/// One open connection; clones share it (HTTP/2 streams multiplex).
#[derive(Debug, Clone)]
pub struct Connection {
    send: SendRequest<Bytes>,
}

impl Connection {
    /// Connects to `authority` (`HOST:PORT`), over TLS when `tls` is given; the error says
    /// what failed. The connection is driven by a task of its own until every clone is
    /// dropped.
    pub async fn open(authority: &str, tls: Option<&ClientTls>) -> Result<Self, String> {
        let authority: Authority = authority
            .parse()
            .map_err(|error| format!("`{authority}` is not HOST:PORT: {error}"))?;
        let connecting = async {
            let tcp = TcpStream::connect(authority.as_str())
                .await
                .map_err(|error| format!("cannot connect to {authority}: {error}"))?;
            tcp.set_nodelay(true)
                .map_err(|error| format!("{authority}: TCP_NODELAY: {error}"))?;
            match tls {
                None => handshake(tcp).await,
                Some(tls) => {
                    let name = tls.name_for(authority.host()).map_err(|e| e.to_string())?;
                    let stream = tls.connect(name, tcp).await.map_err(|e| e.to_string())?;
                    handshake(stream).await
                }
            }
        };
        let send = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                format!(
                    "cannot connect to {authority}: no connection within {}",
                    humantime::format_duration(CONNECT_TIMEOUT)
                )
            })??;
        Ok(Self { send })
    }

    /// One call of `uri` (the server and the method's path): `messages` (already framed)
    /// sent with `headers`, the response's messages followed through their framing but not
    /// decoded, then the status.
    pub async fn call(
        &self,
        uri: &Uri,
        headers: &HeaderMap,
        messages: &[Bytes],
    ) -> Result<(), Status> {
        let (response, mut body) = self.open_stream(&Method::POST, uri, headers, false).await?;
        match messages.split_last() {
            None => body.send_data(Bytes::new(), true).map_err(from_h2)?,
            Some((last, first)) => {
                for message in first {
                    body.send_data(message.clone(), false).map_err(from_h2)?;
                }
                body.send_data(last.clone(), true).map_err(from_h2)?;
            }
        }

        let response = response.await.map_err(from_h2)?;
        let (head, mut body) = response.into_parts();
        if head.status != http::StatusCode::OK {
            return Err(from_http_status(head.status));
        }
        if let Some(status) = Status::from_header_map(&head.headers) {
            // Trailers-only: the status came with the headers.
            return result(status);
        }
        let mut framing = Framing::counting();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(from_h2)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            // Counting has no limit, so it cannot fail.
            let _ = framing.scan(&chunk);
        }
        let trailers = body.trailers().await.map_err(from_h2)?;
        if !framing.at_boundary() {
            return Err(Status::internal(
                "the response body ended inside a gRPC message",
            ));
        }
        match trailers.as_ref().and_then(Status::from_header_map) {
            Some(status) => result(status),
            None => Err(Status::internal("the response ended without a grpc-status")),
        }
    }

    /// One REST call: `method` on `uri` with `body` (the JSON text, or nothing) and
    /// `headers`; the answer's body is read to its end. Success is a 2xx status; any other
    /// is a [`Failure::Http`] with the body's start.
    pub async fn rest(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        body: &[Bytes],
    ) -> Result<(), Failure> {
        let (response, mut stream) = self
            .open_stream(method, uri, headers, body.is_empty())
            .await?;
        if let Some(body) = body.first() {
            stream.send_data(body.clone(), true).map_err(from_h2)?;
        }
        let (head, mut body) = response.await.map_err(from_h2)?.into_parts();
        let failed = !head.status.is_success();
        let mut start = Vec::new();
        while let Some(chunk) = body.data().await {
            let chunk = chunk.map_err(from_h2)?;
            let _ = body.flow_control().release_capacity(chunk.len());
            if failed && start.len() < ERROR_BODY {
                start.extend_from_slice(&chunk[..chunk.len().min(ERROR_BODY - start.len())]);
            }
        }
        if failed {
            return Err(Failure::Http {
                status: head.status.as_u16(),
                body: String::from_utf8_lossy(&start).into_owned(),
            });
        }
        Ok(())
    }

    /// Sends a request's head once the connection has room for another stream: the
    /// answer to come, and the stream for its body (none to send when `end_of_stream`).
    async fn open_stream(
        &self,
        method: &Method,
        uri: &Uri,
        headers: &HeaderMap,
        end_of_stream: bool,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), Status> {
        let mut request = Request::new(());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri.clone();
        *request.headers_mut() = headers.clone();
        let mut send = self.send.clone().ready().await.map_err(from_h2)?;
        send.send_request(request, end_of_stream).map_err(from_h2)
    }
}

/// The headers every REST call sends: a JSON content type, the generator's name, and
/// `metadata` (e.g. `authorization`).
pub fn rest_headers(metadata: &HeaderMap) -> HeaderMap {
    let mut headers = metadata.clone();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("keel-bench/", env!("CARGO_PKG_VERSION"))),
    );
    headers
}

/// The headers every call sends: gRPC's own, the `grpc-timeout` for `deadline`, and `metadata`.
pub fn call_headers(metadata: &HeaderMap, deadline: Option<Duration>) -> HeaderMap {
    let mut headers = metadata.clone();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    headers.insert(http::header::TE, HeaderValue::from_static("trailers"));
    headers.insert(
        http::header::USER_AGENT,
        HeaderValue::from_static(concat!("keel-bench/", env!("CARGO_PKG_VERSION"))),
    );
    if let Some(deadline) = deadline {
        let timeout = format_grpc_timeout(deadline);
        headers.insert(
            "grpc-timeout",
            HeaderValue::try_from(timeout).expect("digits and a unit are a valid header value"),
        );
    }
    headers
}

async fn handshake<IO>(io: IO) -> Result<SendRequest<Bytes>, String>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (send, connection) = h2::client::Builder::new()
        .initial_window_size(STREAM_WINDOW)
        .initial_connection_window_size(CONNECTION_WINDOW)
        .max_header_list_size(MAX_HEADER_LIST)
        .enable_push(false)
        .handshake(io)
        .await
        .map_err(|error| format!("HTTP/2 handshake: {error}"))?;
    tokio::spawn(async move {
        // Its end (the server closed, or every clone was dropped) fails the calls still
        // on it, which report it; nothing more to say here.
        let _ = connection.await;
    });
    Ok(send)
}

fn result(status: Status) -> Result<(), Status> {
    if status.code() == Code::Ok {
        Ok(())
    } else {
        Err(status)
    }
}

/// An HTTP/2 error as the status gRPC clients report for it (REFUSED_STREAM: Unavailable,
/// CANCEL: Cancelled, ...), through tonic's mapping.
fn from_h2(error: h2::Error) -> Status {
    Status::from_error(Box::new(error))
}

/// A non-200 answer as gRPC's HTTP-to-status mapping says.
fn from_http_status(status: http::StatusCode) -> Status {
    let code = match status.as_u16() {
        400 => Code::Internal,
        401 => Code::Unauthenticated,
        403 => Code::PermissionDenied,
        404 => Code::Unimplemented,
        429 | 502 | 503 | 504 => Code::Unavailable,
        _ => Code::Unknown,
    };
    Status::new(code, format!("the server answered HTTP {status}"))
}
