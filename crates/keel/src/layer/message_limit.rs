//! Enforces the maximum message size on every service, in both directions.
//!
//! tonic configures limits per generated server, so services Keel does not build (health,
//! reflection, a user's own) would each need it set by hand. This layer reads the gRPC
//! length prefix of every message instead:
//! - a received message over the limit fails the RPC with RESOURCE_EXHAUSTED before its
//!   bytes are buffered (the handler sees the error as the body's);
//! - a response message over the limit is not sent; the stream ends with RESOURCE_EXHAUSTED
//!   trailers, as grpc-go does, instead of reaching a client that would reject it.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::{BoxError, status_trailers};
use keel_core::framing::Framing;

/// Layer producing [`MessageLimit`].
#[derive(Debug, Clone, Copy)]
pub struct MessageLimitLayer {
    max_recv: usize,
    max_send: usize,
}

impl MessageLimitLayer {
    /// Limits received and sent messages, in bytes (excluding the 5-byte prefix).
    pub fn new(max_recv: usize, max_send: usize) -> Self {
        Self { max_recv, max_send }
    }
}

impl<S> Layer<S> for MessageLimitLayer {
    type Service = MessageLimit<S>;

    fn layer(&self, inner: S) -> Self::Service {
        MessageLimit {
            inner,
            limits: *self,
        }
    }
}

/// Wraps request and response bodies in [`LimitedBody`].
#[derive(Debug, Clone)]
pub struct MessageLimit<S> {
    inner: S,
    limits: MessageLimitLayer,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for MessageLimit<S>
where
    S: Service<http::Request<LimitedBody<ReqBody>>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<LimitedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let request =
            request.map(|body| LimitedBody::new(body, Direction::Received, self.limits.max_recv));
        ResponseFuture {
            inner: self.inner.call(request),
            max_send: self.limits.max_send,
        }
    }
}

pin_project! {
    /// Wraps the response body once the inner service answers.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        max_send: usize,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<LimitedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let max = *this.max_send;
        Poll::Ready(Ok(
            response.map(|body| LimitedBody::new(body, Direction::Sent, max))
        ))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Direction {
    Received,
    Sent,
}

pin_project! {
    /// A gRPC body whose messages are checked against a size limit.
    pub struct LimitedBody<B> {
        #[pin]
        inner: B,
        framing: Framing,
        direction: Direction,
        // Set once the limit is broken and data before the oversized message was yielded:
        // the RESOURCE_EXHAUSTED trailers still to send.
        pending: Option<HeaderMap>,
        done: bool,
    }
}

impl<B> LimitedBody<B> {
    fn new(inner: B, direction: Direction, limit: usize) -> Self {
        Self {
            inner,
            framing: Framing::new(limit),
            direction,
            pending: None,
            done: false,
        }
    }
}

/// An empty body with nothing to limit: what a layer further out (authorization) answers
/// with when it refuses a call before it gets here.
impl<B: Default> Default for LimitedBody<B> {
    fn default() -> Self {
        Self::new(B::default(), Direction::Sent, usize::MAX)
    }
}

impl<B> Body for LimitedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.project();
        if let Some(trailers) = this.pending.take() {
            *this.done = true;
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        if *this.done {
            return Poll::Ready(None);
        }
        let frame = match ready!(this.inner.poll_frame(cx)) {
            None => return Poll::Ready(None),
            Some(Err(e)) => return Poll::Ready(Some(Err(e.into()))),
            Some(Ok(frame)) => frame,
        };
        let Some(data) = frame.data_ref() else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let Err(oversize) = this.framing.scan(data) else {
            return Poll::Ready(Some(Ok(frame)));
        };
        let limit = this.framing.limit;
        let len = oversize.len;
        match this.direction {
            Direction::Received => {
                *this.done = true;
                let status = tonic::Status::resource_exhausted(format!(
                    "grpc: received message larger than max ({len} vs. {limit})"
                ));
                Poll::Ready(Some(Err(Box::new(status))))
            }
            Direction::Sent => {
                tracing::warn!(
                    len,
                    limit,
                    "response message over limits.max_send_message_size not sent"
                );
                let trailers = status_trailers(
                    tonic::Code::ResourceExhausted,
                    &format!("grpc: trying to send message larger than max ({len} vs. {limit})"),
                );
                let before = frame
                    .into_data()
                    .expect("checked above")
                    .slice(..oversize.at);
                if before.is_empty() {
                    *this.done = true;
                    Poll::Ready(Some(Ok(Frame::trailers(trailers))))
                } else {
                    *this.pending = Some(trailers);
                    Poll::Ready(Some(Ok(Frame::data(before))))
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.done && self.pending.is_none()
            || (self.pending.is_none() && self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        if self.pending.is_some() || self.done {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn message(len: usize) -> Vec<u8> {
        let mut out = vec![0u8];
        out.extend_from_slice(&(len as u32).to_be_bytes());
        out.extend(std::iter::repeat_n(7u8, len));
        out
    }

    #[tokio::test]
    async fn oversized_response_becomes_resource_exhausted_trailers() {
        let data = [message(2), message(20)].concat();
        let inner = http_body_util::Full::new(Bytes::from(data));
        let body = LimitedBody::new(inner, Direction::Sent, 10);
        let collected = body.collect().await.unwrap();
        let trailers = collected.trailers().cloned().expect("trailers");
        assert_eq!(trailers["grpc-status"], "8");
        assert_eq!(collected.to_bytes().as_ref(), message(2).as_slice());
    }

    #[tokio::test]
    async fn oversized_request_fails_with_resource_exhausted() {
        let inner = http_body_util::Full::new(Bytes::from(message(20)));
        let body = LimitedBody::new(inner, Direction::Received, 10);
        let err = body.collect().await.unwrap_err();
        let status = err.downcast::<tonic::Status>().expect("a Status");
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    }
}
