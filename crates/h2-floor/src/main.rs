//! `h2-floor`: the physical limit of the Greeter benchmark. It speaks HTTP/2 through hyper and
//! nothing else: each request's body is read whole, and the answer is always the same 18 bytes
//! (`HelloReply { message: "Hello world" }` in a gRPC frame) with `grpc-status: 0` trailers,
//! which is what `helloworld.Greeter/SayHello` with the name "world" answers. No routing, no
//! protobuf decoding, no gRPC library: what any gRPC server on hyper's HTTP/2 must at least
//! spend per call. `scripts/bench-greeter.sh` measures it beside bare tonic and Keel.
//!
//! Usage: `h2-floor [ADDR]` (default `127.0.0.1:50054`). Prints `grpc listening on ADDR` once
//! the listener is bound.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response};
use http_body_util::BodyExt as _;
use hyper::body::{Frame, Incoming};
use hyper::server::conn::http2;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// A benchmark build (`--features count-allocs`): the system allocator, counted, with the
/// totals printed on SIGUSR1 (scripts/bench-greeter.sh, allocations per call).
#[cfg(feature = "count-allocs")]
#[global_allocator]
static ALLOCATOR: alloc_counter::Counting = alloc_counter::COUNTING;

/// The address served when none is given on the command line.
const DEFAULT_ADDR: &str = "127.0.0.1:50054";

/// A gRPC frame (uncompressed, 13-byte message) holding `HelloReply { message: "Hello world" }`.
const REPLY: &[u8] = b"\x00\x00\x00\x00\x0d\x0a\x0bHello world";

/// The body of every answer: [`REPLY`], then `grpc-status: 0`.
#[derive(Default)]
struct Answer {
    /// Frames sent so far.
    sent: u8,
}

impl http_body::Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.sent += 1;
        Poll::Ready(match self.sent {
            1 => Some(Ok(Frame::data(Bytes::from_static(REPLY)))),
            2 => {
                let mut trailers = HeaderMap::new();
                trailers.insert("grpc-status", HeaderValue::from_static("0"));
                Some(Ok(Frame::trailers(trailers)))
            }
            _ => None,
        })
    }
}

#[tokio::main(flavor = "multi_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1);
    if matches!(addr.as_deref(), Some("-h" | "--help")) {
        println!("usage: h2-floor [ADDR]   (default {DEFAULT_ADDR})");
        return Ok(());
    }
    let listener = TcpListener::bind(addr.as_deref().unwrap_or(DEFAULT_ADDR)).await?;
    #[cfg(feature = "count-allocs")]
    alloc_counter::report_on_sigusr1()?;
    println!("grpc listening on {}", listener.local_addr()?);
    loop {
        let (stream, _) = listener.accept().await?;
        stream.set_nodelay(true)?;
        tokio::spawn(async move {
            // A connection error ends that connection only, as in any server.
            let _ = http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service_fn(answer))
                .await;
        });
    }
}

/// Reads the request whole, then answers with [`REPLY`] and `grpc-status: 0`.
async fn answer(request: Request<Incoming>) -> Result<Response<Answer>, hyper::Error> {
    request.into_body().collect().await?;
    let mut response = Response::new(Answer::default());
    response
        .headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::REPLY;

    #[test]
    fn the_reply_is_one_uncompressed_grpc_frame_holding_hello_world() {
        let (header, message) = REPLY.split_at(5);
        assert_eq!(header[0], 0, "not compressed");
        let length = u32::from_be_bytes(header[1..5].try_into().unwrap());
        assert_eq!(length as usize, message.len());
        // HelloReply field 1 (message), wire type 2, then the string's length and bytes.
        assert_eq!(message[0], 0x0a);
        assert_eq!(usize::from(message[1]), message.len() - 2);
        assert_eq!(&message[2..], b"Hello world");
    }
}
