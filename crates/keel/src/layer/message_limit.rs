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
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use super::BoxError;

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
                let trailers = status_trailers(&format!(
                    "grpc: trying to send message larger than max ({len} vs. {limit})"
                ));
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

fn status_trailers(message: &str) -> HeaderMap {
    let mut trailers = HeaderMap::with_capacity(2);
    trailers.insert("grpc-status", HeaderValue::from_static("8"));
    if let Ok(value) = HeaderValue::from_str(message) {
        trailers.insert("grpc-message", value);
    }
    trailers
}

/// A message whose length prefix exceeds the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Oversize {
    /// The announced length.
    len: usize,
    /// Offset in the scanned chunk where the message's prefix starts (0 if it began earlier).
    at: usize,
}

/// Follows the gRPC length-prefixed framing (1 flag byte, 4-byte big-endian length) across
/// arbitrary chunk boundaries, looking only at prefixes.
#[derive(Debug)]
struct Framing {
    limit: usize,
    header: [u8; 5],
    have: usize,
    remaining: usize,
}

impl Framing {
    fn new(limit: usize) -> Self {
        Self {
            limit,
            header: [0; 5],
            have: 0,
            remaining: 0,
        }
    }

    fn scan(&mut self, mut chunk: &[u8]) -> Result<(), Oversize> {
        let total = chunk.len();
        while !chunk.is_empty() {
            if self.remaining > 0 {
                let skip = self.remaining.min(chunk.len());
                self.remaining -= skip;
                chunk = &chunk[skip..];
                continue;
            }
            let offset = total - chunk.len();
            let take = (5 - self.have).min(chunk.len());
            self.header[self.have..self.have + take].copy_from_slice(&chunk[..take]);
            let started_here = self.have == 0;
            self.have += take;
            chunk = &chunk[take..];
            if self.have == 5 {
                self.have = 0;
                let len = u32::from_be_bytes([
                    self.header[1],
                    self.header[2],
                    self.header[3],
                    self.header[4],
                ]) as usize;
                if len > self.limit {
                    let at = if started_here { offset } else { 0 };
                    return Err(Oversize { len, at });
                }
                self.remaining = len;
            }
        }
        Ok(())
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

    /// Scans `stream` cut into chunks of `cut` bytes, returning the first oversize found.
    fn check(limit: usize, stream: &[u8], cut: usize) -> Option<(usize, Oversize)> {
        let mut framing = Framing::new(limit);
        for (i, chunk) in stream.chunks(cut).enumerate() {
            if let Err(o) = framing.scan(chunk) {
                return Some((i, o));
            }
        }
        None
    }

    #[test]
    fn accepts_messages_at_the_limit_however_chunked() {
        let stream = [message(0), message(10), message(3), message(10)].concat();
        for cut in 1..=stream.len() {
            assert_eq!(check(10, &stream, cut), None, "cut {cut}");
        }
    }

    #[test]
    fn finds_oversize_however_chunked() {
        let stream = [message(4), message(11), message(2)].concat();
        for cut in 1..=stream.len() {
            let (chunk, o) = check(10, &stream, cut).expect("found");
            assert_eq!(o.len, 11, "cut {cut}");
            // The oversized prefix starts at byte 9 of the stream.
            let start = 9;
            if start / cut == (start + 4) / cut {
                assert_eq!((chunk, o.at), (start / cut, start % cut), "cut {cut}");
            }
        }
    }

    #[test]
    fn random_streams_agree_with_a_reference() {
        // Property: the scanner reports an oversize exactly when some message exceeds the
        // limit, wherever the stream is cut.
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let limit = rng.random_range(0..40);
            let lens: Vec<usize> = (0..rng.random_range(1..6))
                .map(|_| rng.random_range(0..50))
                .collect();
            let stream: Vec<u8> = lens.iter().flat_map(|&l| message(l)).collect();
            let cut = rng.random_range(1..stream.len() + 1);
            let expected = lens.iter().find(|&&l| l > limit).copied();
            assert_eq!(
                check(limit, &stream, cut).map(|(_, o)| o.len),
                expected,
                "{lens:?} limit {limit} cut {cut}"
            );
        }
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
