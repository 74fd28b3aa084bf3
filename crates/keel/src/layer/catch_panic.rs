//! Turns a panicking handler into an INTERNAL status instead of a torn-down stream.
//!
//! A panic while the handler future runs becomes a trailers-only INTERNAL response; a panic
//! while a streaming response is produced ends the stream with INTERNAL trailers. Either way
//! the caller sees a generic message (never the panic's), the panic is logged with the call's
//! trace id, `keel_server_panics_total` counts it, and the server keeps serving.

use std::any::Any;
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::FutureExt as _;
use futures_util::future::CatchUnwind;
use http::{HeaderMap, HeaderValue};
use http_body::Frame;
use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tonic::body::Body;
use tower::{Layer, Service};

use keel_core::context::current_trace_id;

/// What the caller reads instead of the panic.
const MESSAGE: &str = "internal error";

/// Layer producing [`CatchPanic`].
#[derive(Debug, Clone)]
pub struct CatchPanicLayer {
    panics: Counter,
}

impl CatchPanicLayer {
    /// Counts caught panics in `panics`.
    pub fn new(panics: Counter) -> Self {
        Self { panics }
    }
}

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic {
            inner,
            panics: self.panics.clone(),
        }
    }
}

/// Catches panics of the service it wraps (a tonic router) and of its response bodies.
#[derive(Debug, Clone)]
pub struct CatchPanic<S> {
    inner: S,
    panics: Counter,
}

impl<S, R> Service<R> for CatchPanic<S>
where
    S: Service<R, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: R) -> Self::Future {
        ResponseFuture {
            inner: AssertUnwindSafe(self.inner.call(request)).catch_unwind(),
            panics: self.panics.clone(),
        }
    }
}

pin_project! {
    /// The handler's future, with its panics caught.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: CatchUnwind<AssertUnwindSafe<F>>,
        panics: Counter,
    }
}

impl<F, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = Result<http::Response<Body>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.inner.poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Ok(Ok(response))) => {
                let panics = this.panics.clone();
                Poll::Ready(Ok(response.map(|body| {
                    Body::new(PanicSafeBody {
                        inner: body,
                        panics,
                        done: false,
                    })
                })))
            }
            Poll::Ready(Ok(Err(error))) => Poll::Ready(Err(error)),
            Poll::Ready(Err(panic)) => {
                caught(this.panics, &*panic, "handler");
                let mut response = http::Response::new(Body::empty());
                response.headers_mut().extend(internal_status());
                response.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    HeaderValue::from_static("application/grpc"),
                );
                Poll::Ready(Ok(response))
            }
        }
    }
}

pin_project! {
    /// A response body whose panics end the stream with INTERNAL trailers.
    struct PanicSafeBody {
        #[pin]
        inner: Body,
        panics: Counter,
        done: bool,
    }
}

impl http_body::Body for PanicSafeBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let this = self.project();
        if *this.done {
            return Poll::Ready(None);
        }
        let mut inner = this.inner;
        match std::panic::catch_unwind(AssertUnwindSafe(|| inner.as_mut().poll_frame(cx))) {
            Ok(frame) => frame,
            Err(panic) => {
                *this.done = true;
                caught(this.panics, &*panic, "response stream");
                Poll::Ready(Some(Ok(Frame::trailers(internal_status()))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done || self.inner.is_end_stream()
    }
}

fn internal_status() -> HeaderMap {
    let mut headers = HeaderMap::with_capacity(2);
    headers.insert("grpc-status", HeaderValue::from_static("13"));
    headers.insert("grpc-message", HeaderValue::from_static(MESSAGE));
    headers
}

fn caught(panics: &Counter, panic: &(dyn Any + Send), in_what: &str) {
    panics.inc();
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    tracing::error!(
        target: "keel::rpc",
        panic = message,
        trace_id = current_trace_id().unwrap_or_default(),
        "{in_what} panicked; the call fails with INTERNAL"
    );
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A response stream whose second frame panics, as a streaming handler can.
    struct Explodes(u8);

    impl http_body::Body for Explodes {
        type Data = Bytes;
        type Error = tonic::Status;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
            self.0 += 1;
            if self.0 > 1 {
                panic!("stream blew up");
            }
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(b"\0\0\0\0\0")))))
        }
    }

    #[tokio::test]
    async fn a_panicking_response_stream_ends_with_internal_trailers() {
        let panics = Counter::default();
        let body = PanicSafeBody {
            inner: Body::new(Explodes(0)),
            panics: panics.clone(),
            done: false,
        };
        let collected = body.collect().await.expect("no error, a status");
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "13");
        assert_eq!(trailers["grpc-message"], MESSAGE);
        assert_eq!(
            collected.to_bytes().len(),
            5,
            "what was sent before stays sent"
        );
        assert_eq!(panics.get(), 1);
    }
}
