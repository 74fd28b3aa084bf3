//! A response future and body that carry a guard until the RPC is completely over.
//!
//! An RPC ends when its response body is dropped (finished, failed or cancelled), or when
//! its handler future is dropped before answering. Guards (a semaphore permit, an in-flight
//! count) ride along and are released by `Drop` in every one of those cases.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

pin_project! {
    /// Resolves like the inner future, moving the guard into the response body.
    pub struct GuardedFuture<F, G> {
        #[pin]
        inner: F,
        guard: Option<G>,
    }
}

impl<F, G> GuardedFuture<F, G> {
    /// Holds `guard` while `inner` runs.
    pub fn new(inner: F, guard: G) -> Self {
        Self {
            inner,
            guard: Some(guard),
        }
    }
}

impl<F, B, E, G> Future for GuardedFuture<F, G>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<GuardedBody<B, G>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let response = ready!(this.inner.poll(cx))?;
        let guard = this.guard.take();
        Poll::Ready(Ok(response.map(|body| GuardedBody { inner: body, guard })))
    }
}

pin_project! {
    /// A body that drops its guard when it is dropped.
    pub struct GuardedBody<B, G> {
        #[pin]
        inner: B,
        guard: Option<G>,
    }
}

impl<B, G> GuardedBody<B, G> {
    /// A body with no guard (for responses produced by the layer itself).
    pub fn unguarded(inner: B) -> Self {
        Self { inner, guard: None }
    }
}

/// An empty body holding nothing (a refusal answered by a layer further out).
impl<B: Default, G> Default for GuardedBody<B, G> {
    fn default() -> Self {
        Self::unguarded(B::default())
    }
}

impl<B: Body, G> Body for GuardedBody<B, G> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
