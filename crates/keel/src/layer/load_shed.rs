//! Refuses RPCs beyond a server-wide concurrency limit, at once, with RESOURCE_EXHAUSTED.
//!
//! A queue in front of an overloaded server only converts overload into timeouts and
//! memory growth; failing fast lets clients back off or go to another backend. A permit is
//! held until the RPC's response body is gone, so streams count for their whole life.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use prometheus_client::metrics::counter::Counter;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::guard::{GuardedBody, GuardedFuture};

/// Layer producing [`LoadShed`].
#[derive(Debug, Clone)]
pub struct LoadShedLayer {
    permits: Option<Arc<Semaphore>>,
    limit: usize,
    shed: Counter,
}

impl LoadShedLayer {
    /// Admits at most `limit` RPCs at once (`0`: no limit), counting refusals in `shed`.
    pub fn new(limit: usize, shed: Counter) -> Self {
        Self {
            permits: (limit > 0).then(|| Arc::new(Semaphore::new(limit))),
            limit,
            shed,
        }
    }
}

impl<S> Layer<S> for LoadShedLayer {
    type Service = LoadShed<S>;

    fn layer(&self, inner: S) -> Self::Service {
        LoadShed {
            inner,
            layer: self.clone(),
        }
    }
}

/// Admits an RPC if a permit is free, otherwise answers RESOURCE_EXHAUSTED without
/// calling the inner service.
#[derive(Debug, Clone)]
pub struct LoadShed<S> {
    inner: S,
    layer: LoadShedLayer,
}

/// The permit an admitted RPC holds (`None` when there is no limit).
type Permit = Option<OwnedSemaphorePermit>;

impl<S, Req, B> Service<Req> for LoadShed<S>
where
    S: Service<Req, Response = http::Response<B>>,
    B: Default,
{
    type Response = http::Response<GuardedBody<B, Permit>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, B>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let permit = match &self.layer.permits {
            None => None,
            Some(permits) => match permits.clone().try_acquire_owned() {
                Ok(permit) => Some(permit),
                Err(_) => {
                    self.layer.shed.inc();
                    let status = tonic::Status::resource_exhausted(format!(
                        "server overloaded: {} RPCs already in flight (limits.concurrency_limit); \
                         retry with backoff",
                        self.layer.limit
                    ));
                    return ResponseFuture::Shed {
                        response: Some(status.into_http()),
                    };
                }
            },
        };
        ResponseFuture::Admitted {
            inner: GuardedFuture::new(self.inner.call(request), permit),
        }
    }
}

pin_project! {
    /// The inner service's response with its permit, or the immediate refusal.
    #[project = Projection]
    pub enum ResponseFuture<F, B> {
        /// Admitted: the inner call, holding a permit.
        Admitted { #[pin] inner: GuardedFuture<F, Permit> },
        /// Refused: a ready RESOURCE_EXHAUSTED response.
        Shed { response: Option<http::Response<B>> },
    }
}

impl<F, B, E> Future for ResponseFuture<F, B>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<GuardedBody<B, Permit>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project() {
            Projection::Admitted { inner } => inner.poll(cx),
            Projection::Shed { response } => {
                let response = response.take().expect("polled after completion");
                Poll::Ready(Ok(response.map(GuardedBody::unguarded)))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::convert::Infallible;
    use tower::ServiceExt;

    type Body = http_body_util::Empty<bytes::Bytes>;

    #[tokio::test]
    async fn sheds_past_the_limit_and_readmits_after_release() {
        let shed = Counter::default();
        let inner = tower::service_fn(|_: ()| async {
            Ok::<_, Infallible>(http::Response::new(Body::default()))
        });
        let svc = LoadShedLayer::new(2, shed.clone()).layer(inner);

        let first = svc.clone().oneshot(()).await.unwrap();
        let second = svc.clone().oneshot(()).await.unwrap();
        let third = svc.clone().oneshot(()).await.unwrap();
        assert_eq!(third.headers()["grpc-status"], "8");
        assert!(first.headers().get("grpc-status").is_none());
        assert_eq!(shed.get(), 1);

        drop(first);
        let fourth = svc.clone().oneshot(()).await.unwrap();
        assert!(fourth.headers().get("grpc-status").is_none());
        drop((second, fourth));
    }

    #[tokio::test]
    async fn zero_means_unlimited() {
        let shed = Counter::default();
        let inner = tower::service_fn(|_: ()| async {
            Ok::<_, Infallible>(http::Response::new(Body::default()))
        });
        let svc = LoadShedLayer::new(0, shed.clone()).layer(inner);
        let held: Vec<_> =
            futures_util::future::join_all((0..100).map(|_| svc.clone().oneshot(()))).await;
        assert!(
            held.iter()
                .all(|r| r.as_ref().unwrap().headers().get("grpc-status").is_none())
        );
        assert_eq!(shed.get(), 0);
    }
}
