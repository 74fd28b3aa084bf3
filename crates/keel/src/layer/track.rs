//! Accounts every RPC from arrival until its response is gone.
//!
//! Feeds the live-handler gauge (`keel_server_inflight_rpcs`) and the connection's activity,
//! from which the connection driver tells an idle connection.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;
use tower::{Layer, Service};

use super::guard::GuardedFuture;

/// RPCs in flight on one connection and when it last became idle.
#[derive(Debug)]
pub struct ConnectionActivity {
    opened: Instant,
    active: AtomicUsize,
    /// Milliseconds since `opened` at which `active` last dropped to zero.
    idle_since_ms: AtomicU64,
}

impl Default for ConnectionActivity {
    fn default() -> Self {
        Self {
            opened: Instant::now(),
            active: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

impl ConnectionActivity {
    /// RPCs in flight on this connection.
    pub fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    /// How long the connection has had no RPC in flight; `None` while one is.
    pub fn idle_for(&self) -> Option<Duration> {
        if self.active() > 0 {
            return None;
        }
        let since = Duration::from_millis(self.idle_since_ms.load(Ordering::Acquire));
        Some(self.opened.elapsed().saturating_sub(since))
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
        if self.activity.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            let now = self.activity.opened.elapsed().as_millis() as u64;
            self.activity.idle_since_ms.store(now, Ordering::Release);
        }
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
    fn activity_counts_and_idles() {
        let activity = Arc::new(ConnectionActivity::default());
        let gauge = Gauge::default();
        assert!(activity.idle_for().is_some());
        let a = RpcGuard::new(activity.clone(), gauge.clone());
        let b = RpcGuard::new(activity.clone(), gauge.clone());
        assert_eq!(gauge.get(), 2);
        assert_eq!(activity.idle_for(), None);
        drop(a);
        assert_eq!(activity.idle_for(), None);
        drop(b);
        assert_eq!(gauge.get(), 0);
        assert!(activity.idle_for().unwrap() < Duration::from_secs(1));
    }
}
