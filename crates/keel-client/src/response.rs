//! The response body a [`super::Channel`] hands to tonic, and the load count of its call:
//! the call stays outstanding on its backend until the body ends, the rest of the call's
//! deadline runs while it streams, and its trailers feed outlier ejection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};
use tonic::{Code, Status};

use super::subchannel::Backend;
use super::transport_error::transport_status;
use keel_core::code::status_of;
use keel_core::status_check::CheckedBody;

/// A call counted as outstanding on its backend until its response ends.
pub(crate) struct Load {
    pub(crate) backend: Arc<Backend>,
}

impl Load {
    /// Counts a call sent to `backend`.
    pub(crate) fn start(backend: Arc<Backend>) -> Self {
        backend.outstanding.fetch_add(1, Ordering::Relaxed);
        Self { backend }
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        self.backend.outstanding.fetch_sub(1, Ordering::Relaxed);
    }
}

pin_project_lite::pin_project! {
    /// A response body from a [`super::Channel`]: counts its call as outstanding until it
    /// ends, ends the call with DEADLINE_EXCEEDED when the deadline passes first, and has
    /// its trailers checked (a malformed or missing status becomes a clear one).
    pub struct ResponseBody {
        #[pin]
        inner: CheckedBody<hyper::body::Incoming>,
        load: Load,
        deadline: Option<(Pin<Box<Sleep>>, Instant)>,
    }
}

impl ResponseBody {
    /// The body of a call that counts as `load` and must end by `deadline`.
    pub(crate) fn new(
        inner: CheckedBody<hyper::body::Incoming>,
        load: Load,
        deadline: Option<Instant>,
    ) -> Self {
        Self {
            inner,
            load,
            deadline: deadline.map(|at| (Box::pin(tokio::time::sleep_until(at)), at)),
        }
    }
}

impl Body for ResponseBody {
    type Data = bytes::Bytes;
    type Error = Status;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        if let Poll::Ready(frame) = this.inner.poll_frame(cx) {
            let backend = &this.load.backend;
            if backend.detects_outliers() {
                match &frame {
                    Some(Ok(frame)) => {
                        if let Some(code) = frame.trailers_ref().and_then(status_of) {
                            backend.record_outcome(code.0);
                        }
                    }
                    Some(Err(_)) => backend.record_outcome(Code::Unavailable),
                    None => {}
                }
            }
            return Poll::Ready(
                frame.map(|frame| frame.map_err(|error| transport_status(&error, backend))),
            );
        }
        if let Some((sleep, at)) = this.deadline {
            ready!(sleep.as_mut().poll(cx));
            let late = Instant::now().saturating_duration_since(*at);
            *this.deadline = None;
            return Poll::Ready(Some(Err(Status::deadline_exceeded(format!(
                "the call's deadline passed while the response was streaming ({late:?} ago)"
            )))));
        }
        Poll::Pending
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
