//! Holds every call to its `grpc-timeout`, read strictly.
//!
//! - a malformed `grpc-timeout` is refused before the handler runs, as grpc-go refuses it:
//!   HTTP 400 with INTERNAL and a message naming the header and the (escaped) value;
//! - a zero timeout has expired on arrival: DEADLINE_EXCEEDED, the handler never runs;
//! - otherwise, when the deadline passes before the response is complete, the handler's
//!   future or response stream is dropped (its work stops) and the call ends with
//!   DEADLINE_EXCEEDED: trailers-only before the response headers, trailers after them.
//!
//! grpc-go resets the stream (RST_STREAM CANCEL) at the deadline instead of sending a status;
//! the client has given up either way, but a status lets the server's metrics and log say
//! DEADLINE_EXCEEDED rather than CANCELLED.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http::StatusCode;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::time::Sleep;
use tower::{Layer, Service};

use super::status_trailers;
use keel_core::context::grpc_timeout;

/// Layer producing [`EnforceDeadline`].
#[derive(Debug, Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> Layer<S> for DeadlineLayer {
    type Service = EnforceDeadline<S>;

    fn layer(&self, inner: S) -> Self::Service {
        EnforceDeadline { inner }
    }
}

/// Refuses calls with a malformed or zero `grpc-timeout` and ends the others at their
/// deadline with DEADLINE_EXCEEDED.
#[derive(Debug, Clone)]
pub struct EnforceDeadline<S> {
    inner: S,
}

impl<S, ReqBody, B> Service<http::Request<ReqBody>> for EnforceDeadline<S>
where
    S: Service<http::Request<ReqBody>, Response = http::Response<B>>,
{
    type Response = http::Response<DeadlineBody<B>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let state = match grpc_timeout(request.headers()) {
            Ok(Some(timeout)) if timeout.is_zero() => Call::Refused {
                status: Some((
                    StatusCode::OK,
                    tonic::Status::deadline_exceeded(
                        "deadline exceeded: grpc-timeout was zero when the call arrived",
                    ),
                )),
            },
            Ok(timeout) => Call::Running {
                inner: self.inner.call(request),
                timer: timeout.map(Timer::start),
            },
            Err(malformed) => Call::Refused {
                status: Some((
                    StatusCode::BAD_REQUEST,
                    tonic::Status::internal(malformed.to_string()),
                )),
            },
        };
        ResponseFuture { state }
    }
}

/// A call's deadline timer and the timeout it came from (for the status message).
struct Timer {
    sleep: Pin<Box<Sleep>>,
    timeout: Duration,
}

impl Timer {
    fn start(timeout: Duration) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(timeout)),
            timeout,
        }
    }

    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        self.sleep.as_mut().poll(cx).is_ready()
    }

    fn status(&self) -> tonic::Status {
        tonic::Status::deadline_exceeded(format!(
            "deadline exceeded: the call's grpc-timeout of {:?} passed",
            self.timeout
        ))
    }
}

/// A trailers-only response carrying `status`, with the HTTP status `http`.
fn trailers_only<B>(http: StatusCode, status: tonic::Status) -> http::Response<DeadlineBody<B>> {
    let mut response = status.into_http::<()>().map(|()| DeadlineBody {
        state: Stream::Ended,
    });
    *response.status_mut() = http;
    response
}

pin_project! {
    /// The inner call racing its deadline, or an immediate refusal.
    pub struct ResponseFuture<F> {
        #[pin]
        state: Call<F>,
    }
}

pin_project! {
    #[project = Projection]
    enum Call<F> {
        // The handler runs; `timer` when the call has a deadline.
        Running { #[pin] inner: F, timer: Option<Timer> },
        // Refused before the handler ran, with this HTTP status and gRPC status.
        Refused { status: Option<(StatusCode, tonic::Status)> },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<DeadlineBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().state.project() {
            Projection::Running { inner, timer } => {
                if let Some(expired) = timer.as_mut()
                    && expired.expired(cx)
                {
                    // Dropping this future (the caller does, once it is ready) drops the
                    // handler's.
                    return Poll::Ready(Ok(trailers_only(StatusCode::OK, expired.status())));
                }
                let response = ready!(inner.poll(cx))?;
                let timer = timer.take();
                Poll::Ready(Ok(response.map(|inner| DeadlineBody {
                    state: Stream::Running { inner, timer },
                })))
            }
            Projection::Refused { status } => {
                let (http, status) = status.take().expect("polled after completion");
                Poll::Ready(Ok(trailers_only(http, status)))
            }
        }
    }
}

pin_project! {
    /// A response body that ends with DEADLINE_EXCEEDED trailers when the deadline passes
    /// before it is complete.
    pub struct DeadlineBody<B> {
        #[pin]
        state: Stream<B>,
    }
}

pin_project! {
    #[project = BodyProjection]
    enum Stream<B> {
        // The handler's body; `timer` while the call has a deadline.
        Running { #[pin] inner: B, timer: Option<Timer> },
        // Nothing more: a trailers-only response, or the deadline's trailers were sent (and
        // the handler's body dropped).
        Ended,
    }
}

impl<B> Body for DeadlineBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let mut state = self.project().state;
        let BodyProjection::Running { inner, timer } = state.as_mut().project() else {
            return Poll::Ready(None);
        };
        // The timer first: a stream that is always ready must still end at its deadline.
        if let Some(expired) = timer.as_mut()
            && expired.expired(cx)
        {
            let status = expired.status();
            state.set(Stream::Ended);
            let trailers = status_trailers(status.code(), status.message());
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        let frame = ready!(inner.poll_frame(cx));
        if !matches!(&frame, Some(Ok(frame)) if frame.is_data()) {
            // The status passed, the body failed or ended: no deadline to keep.
            *timer = None;
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            Stream::Running { inner, .. } => inner.is_end_stream(),
            Stream::Ended => true,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            Stream::Running { inner, .. } => inner.size_hint(),
            Stream::Ended => SizeHint::with_exact(0),
        }
    }
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;

    use super::*;

    /// A response stream that always has another message ready.
    struct Endless;

    impl Body for Endless {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&[0, 0, 0, 0, 0])))))
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_always_ready_stream_still_ends_at_its_deadline() {
        let mut body = DeadlineBody {
            state: Stream::Running {
                inner: Endless,
                timer: Some(Timer::start(Duration::from_secs(1))),
            },
        };
        for _ in 0..3 {
            let frame = body.frame().await.unwrap().unwrap();
            assert!(frame.is_data());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        let trailers = body
            .frame()
            .await
            .unwrap()
            .unwrap()
            .into_trailers()
            .unwrap();
        assert_eq!(trailers["grpc-status"], "4");
        assert!(body.is_end_stream());
        assert!(body.frame().await.is_none());
    }
}
