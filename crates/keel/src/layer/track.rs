//! Accounts every RPC from arrival until its response is gone.
//!
//! Feeds the live-handler gauge (`keel_server_inflight_rpcs`) and the connection's activity,
//! from which the connection driver tells an idle connection. The hot path is two atomic
//! increments and two decrements per RPC; no clock is read.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};

use prometheus_client::metrics::gauge::Gauge;
use tower::{Layer, Service};

use super::guard::GuardedFuture;

/// RPCs in flight on one connection and how many have finished.
#[derive(Debug, Default)]
pub struct ConnectionActivity {
    active: AtomicUsize,
    finished: AtomicU64,
}

/// What a connection was doing at one instant; compare two to tell idleness.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ActivitySample {
    /// RPCs in flight.
    pub active: usize,
    /// RPCs finished since the connection opened.
    pub finished: u64,
}

impl ConnectionActivity {
    /// RPCs in flight on this connection.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// The current counts. Two samples that are equal with nothing active mean no RPC ran
    /// at any moment between them.
    pub fn sample(&self) -> ActivitySample {
        ActivitySample {
            active: self.active(),
            finished: self.finished.load(Ordering::Acquire),
        }
    }
}

/// Held for an RPC's whole life; releases its counts on drop.
#[derive(Debug)]
pub struct RpcGuard {
    activity: Arc<ConnectionActivity>,
    inflight: Gauge,
}

impl RpcGuard {
    fn new(activity: Arc<ConnectionActivity>, inflight: Gauge) -> Self {
        activity.active.fetch_add(1, Ordering::AcqRel);
        inflight.inc();
        Self { activity, inflight }
    }
}

impl Drop for RpcGuard {
    fn drop(&mut self) {
        self.inflight.dec();
        // Count the finish before the decrement, so a sampler that sees `active` drop also
        // sees `finished` move.
        self.activity.finished.fetch_add(1, Ordering::AcqRel);
        self.activity.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Layer producing [`Track`] for one connection.
#[derive(Debug, Clone)]
pub struct TrackLayer {
    activity: Arc<ConnectionActivity>,
    inflight: Gauge,
}

impl TrackLayer {
    /// Counts into `activity` (this connection's) and `inflight` (the server's gauge).
    pub fn new(activity: Arc<ConnectionActivity>, inflight: Gauge) -> Self {
        Self { activity, inflight }
    }
}

impl<S> Layer<S> for TrackLayer {
    type Service = Track<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Track {
            inner,
            layer: self.clone(),
        }
    }
}

/// Wraps each RPC's future and response body in an [`RpcGuard`].
#[derive(Debug, Clone)]
pub struct Track<S> {
    inner: S,
    layer: TrackLayer,
}

impl<S, Req, B> Service<Req> for Track<S>
where
    S: Service<Req, Response = http::Response<B>>,
{
    type Response = http::Response<super::GuardedBody<B, RpcGuard>>;
    type Error = S::Error;
    type Future = GuardedFuture<S::Future, RpcGuard>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Req) -> Self::Future {
        let guard = RpcGuard::new(self.layer.activity.clone(), self.layer.inflight.clone());
        GuardedFuture::new(self.inner.call(request), guard)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_show_activity_between_them() {
        let activity = Arc::new(ConnectionActivity::default());
        let gauge = Gauge::default();
        let quiet = activity.sample();
        assert_eq!(
            quiet,
            ActivitySample {
                active: 0,
                finished: 0
            }
        );

        let a = RpcGuard::new(activity.clone(), gauge.clone());
        let b = RpcGuard::new(activity.clone(), gauge.clone());
        assert_eq!(gauge.get(), 2);
        assert_eq!(activity.active(), 2);
        drop(a);
        drop(b);
        assert_eq!(gauge.get(), 0);
        // Nothing is active now, yet the RPCs that ran in between are visible.
        let after = activity.sample();
        assert_eq!(
            after,
            ActivitySample {
                active: 0,
                finished: 2
            }
        );
        assert_ne!(after, quiet);
    }
}
