//! The interop "Echo Metadata" feature, as a service wrapper: tonic gives a handler no way to
//! add trailers to a successful unary response, so the echo is done on the HTTP response.
//!
//! A request carrying `x-grpc-test-echo-initial` gets the same key and value back in the
//! response headers (initial metadata); one carrying `x-grpc-test-echo-trailing-bin` gets it
//! back in the trailers (trailing metadata), for every method and every status. When the
//! response is trailers-only (an error status sent in the headers), the headers are the
//! trailers, so both keys go there.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use http::{HeaderName, HeaderValue};
use http_body::{Body as HttpBody, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::body::Body;
use tonic::server::NamedService;
use tower::Service;

/// Request key whose value is echoed in the response's initial metadata.
pub const ECHO_INITIAL_KEY: &str = "x-grpc-test-echo-initial";
/// Request key whose (binary) value is echoed in the response's trailing metadata.
pub const ECHO_TRAILING_KEY: &str = "x-grpc-test-echo-trailing-bin";

const GRPC_STATUS: &str = "grpc-status";

/// Wraps a gRPC service so that it echoes the interop metadata keys
/// ([`ECHO_INITIAL_KEY`], [`ECHO_TRAILING_KEY`]); requests without them pass through untouched.
#[derive(Debug, Clone)]
pub struct EchoMetadata<S> {
    inner: S,
}

impl<S> EchoMetadata<S> {
    /// Wraps `inner`.
    pub fn new(inner: S) -> Self {
        Self { inner }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }
}

impl<S: NamedService> NamedService for EchoMetadata<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for EchoMetadata<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>>,
{
    type Response = http::Response<Body>;
    type Error = S::Error;
    type Future = EchoFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let headers = request.headers();
        let initial = headers.get(ECHO_INITIAL_KEY).cloned();
        let trailing = headers.get(ECHO_TRAILING_KEY).cloned();
        EchoFuture {
            inner: self.inner.call(request),
            initial,
            trailing,
        }
    }
}

pin_project! {
    /// Response future of [`EchoMetadata`].
    #[derive(Debug)]
    pub struct EchoFuture<F> {
        #[pin]
        inner: F,
        initial: Option<HeaderValue>,
        trailing: Option<HeaderValue>,
    }
}

impl<F, E> Future for EchoFuture<F>
where
    F: Future<Output = Result<http::Response<Body>, E>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let mut response = match this.inner.poll(cx) {
            Poll::Ready(Ok(response)) => response,
            other => return other,
        };
        if let Some(value) = this.initial.take() {
            response
                .headers_mut()
                .insert(HeaderName::from_static(ECHO_INITIAL_KEY), value);
        }
        if let Some(value) = this.trailing.take() {
            if response.headers().contains_key(GRPC_STATUS) {
                // Trailers-only response: its headers are the trailers.
                response
                    .headers_mut()
                    .insert(HeaderName::from_static(ECHO_TRAILING_KEY), value);
            } else {
                response = response.map(|body| {
                    Body::new(TrailerEcho {
                        inner: body,
                        value: Some(value),
                    })
                });
            }
        }
        Poll::Ready(Ok(response))
    }
}

pin_project! {
    /// A response body that adds the echoed key to its trailers frame.
    struct TrailerEcho {
        #[pin]
        inner: Body,
        value: Option<HeaderValue>,
    }
}

impl HttpBody for TrailerEcho {
    type Data = <Body as HttpBody>::Data;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        match this.inner.poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => match frame.into_trailers() {
                Ok(mut trailers) => {
                    if let Some(value) = this.value.take() {
                        trailers.insert(HeaderName::from_static(ECHO_TRAILING_KEY), value);
                    }
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                }
                Err(data) => Poll::Ready(Some(Ok(data))),
            },
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
