//! A gRPC body that counts its messages into the method's metrics and, for the side of the
//! call that ends with trailers, reports the call's status when they pass.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tonic::Code;

use super::call::Call;
use super::rpc_metrics::MethodMetrics;
use keel_core::code::status_of;
use keel_core::framing::Framing;

/// Which way a body's messages go, for the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    /// Messages coming in: `msg_received`.
    Received,
    /// Messages going out: `msg_sent`.
    Sent,
}

pin_project! {
    /// A body observed by Keel's observability layers.
    pub struct ObservedBody<B> {
        #[pin]
        inner: B,
        framing: Framing,
        counted: u64,
        // None: not observed, the body passes through untouched.
        metrics: Option<Arc<MethodMetrics>>,
        flow: Flow,
        // The call to finish when the trailers pass; None when it is reported elsewhere.
        call: Option<Call>,
        // Set when this (request) body fails: the peer reset the stream.
        failed: Option<Arc<AtomicBool>>,
    }
}

impl<B> ObservedBody<B> {
    pub(crate) fn new(
        inner: B,
        metrics: Arc<MethodMetrics>,
        flow: Flow,
        call: Option<Call>,
    ) -> Self {
        Self {
            inner,
            framing: Framing::counting(),
            counted: 0,
            metrics: Some(metrics),
            flow,
            call,
            failed: None,
        }
    }

    /// A body that is not observed (observability switched off).
    pub(crate) fn unobserved(inner: B) -> Self {
        Self {
            inner,
            framing: Framing::counting(),
            counted: 0,
            metrics: None,
            flow: Flow::Sent,
            call: None,
            failed: None,
        }
    }

    /// Raises `failed` if the body fails (a request stream reset by the client).
    pub(crate) fn flag_failure(mut self, failed: Arc<AtomicBool>) -> Self {
        self.failed = Some(failed);
        self
    }
}

impl<B> Body for ObservedBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Display,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let Some(metrics) = this.metrics else {
            return this.inner.poll_frame(cx);
        };
        // A streaming handler's code runs while its response body is polled: give it the
        // call's context, as the handler future had. (Unary bodies run no user code.)
        let _attached = this
            .call
            .as_ref()
            .filter(|call| call.runs_handler_in_body())
            .map(|call| call.context().clone().attach());
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(data) = frame.data_ref() {
                    if let Some(call) = this.call.as_mut() {
                        call.sent_data(data);
                    }
                    // Counting never meets a limit: `Framing::counting` has none.
                    let _ = this.framing.scan(data);
                    let seen = this.framing.messages();
                    let new = seen - *this.counted;
                    if new > 0 {
                        *this.counted = seen;
                        match this.flow {
                            Flow::Received => metrics.received(new),
                            Flow::Sent => metrics.sent(new),
                        }
                    }
                } else if let Some(trailers) = frame.trailers_ref()
                    && let Some(call) = this.call.take()
                {
                    match status_of(trailers) {
                        Some((code, message)) => call.finish(code, message.as_deref()),
                        None => call.finish(Code::Unknown, Some("trailers without grpc-status")),
                    }
                }
            }
            Some(Err(error)) => {
                if let Some(failed) = this.failed {
                    failed.store(true, Ordering::Relaxed);
                }
                if let Some(call) = this.call.take() {
                    call.finish(Code::Unknown, Some(&error.to_string()));
                }
            }
            None => {
                if let Some(call) = this.call.take() {
                    call.finish(Code::Unknown, Some("stream ended without a status"));
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
