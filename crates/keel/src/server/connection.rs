//! Drives one HTTP/2 connection: the per-request stack, keepalive, and the three ways a
//! connection is asked to leave (max age, idleness, server shutdown).
//!
//! Leaving is always GOAWAY first (hyper sends the two-step GOAWAY that lets in-flight
//! streams finish and tells the client which streams it may retry), then a hard close if
//! RPCs outlive the grace period. tonic 0.14's own max_connection_age has no jitter and no
//! grace bound, so a stream that never ends keeps such a connection open for ever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceBuilder;

use tower::util::BoxCloneSyncService;

use super::fallback::{HttpService, MakeFallback, Split};
use crate::config::{ConnectionConfig, ServerConfig};
use crate::layer::{
    CatchPanicLayer, ConnectionActivity, LoadShedLayer, MessageLimitLayer, TrackLayer,
};
use crate::metrics::{GoawayLabels, Metrics};
use crate::observe::{ObserveLayer, ServerObserver};

/// What every connection of one server shares.
pub(super) struct ConnectionShared {
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// HTTP/1.1 and HTTP/2 with the same settings, when there is a fallback.
    auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    routes: Routes,
    /// Where requests that are not gRPC go, if anywhere.
    fallback: Option<HttpService>,
    load_shed: LoadShedLayer,
    limits: MessageLimitLayer,
    observe: ObserveLayer,
    catch_panic: CatchPanicLayer,
    lifetime: ConnectionConfig,
    metrics: Arc<Metrics>,
    goaway: watch::Receiver<bool>,
}

impl ConnectionShared {
    /// `goaway` turning true asks every connection to leave (server shutdown).
    pub(super) fn new(
        config: &ServerConfig,
        routes: Routes,
        fallback: Option<MakeFallback>,
        metrics: Arc<Metrics>,
        observer: Arc<ServerObserver>,
        goaway: watch::Receiver<bool>,
    ) -> Self {
        let h2 = &config.http2;
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2
            .timer(TokioTimer::new())
            .initial_stream_window_size(h2.initial_stream_window)
            .initial_connection_window_size(h2.initial_connection_window)
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_frame_size(h2.max_frame_size)
            .max_header_list_size(h2.max_header_list_size)
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams);
        if !h2.keepalive_interval.is_zero() {
            http2
                .keep_alive_interval(h2.keepalive_interval)
                .keep_alive_timeout(h2.keepalive_timeout);
        }
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        {
            let mut auto_h2 = auto.http2();
            auto_h2
                .timer(TokioTimer::new())
                .initial_stream_window_size(h2.initial_stream_window)
                .initial_connection_window_size(h2.initial_connection_window)
                .max_concurrent_streams(h2.max_concurrent_streams)
                .max_frame_size(h2.max_frame_size)
                .max_header_list_size(h2.max_header_list_size)
                .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams);
            if !h2.keepalive_interval.is_zero() {
                auto_h2
                    .keep_alive_interval(h2.keepalive_interval)
                    .keep_alive_timeout(h2.keepalive_timeout);
            }
        }
        auto.http1().timer(TokioTimer::new());
        let limits = &config.limits;
        let load_shed = LoadShedLayer::new(limits.concurrency_limit, metrics.shed_rpcs.clone());
        let limits =
            MessageLimitLayer::new(limits.max_recv_message_size, limits.max_send_message_size);
        let observe = if config.observe.enabled {
            ObserveLayer::new(observer)
        } else {
            ObserveLayer::disabled()
        };
        let catch_panic = CatchPanicLayer::new(metrics.panics.clone());
        // The fallback calls the same layers a gRPC connection does (not the per-connection
        // tracking: the fallback's own request is tracked once, on its connection).
        let fallback = fallback.map(|make| {
            let stack = ServiceBuilder::new()
                .map_response(|response: http::Response<_>| response.map(tonic::body::Body::new))
                .layer(observe.clone())
                .layer(limits)
                .layer(load_shed.clone())
                .layer(catch_panic.clone())
                .service(routes.clone());
            make(BoxCloneSyncService::new(stack))
        });
        Self {
            http2,
            auto,
            routes,
            fallback,
            load_shed,
            limits,
            observe,
            catch_panic,
            lifetime: config.connection.clone(),
            metrics,
            goaway,
        }
    }

    /// This connection's age limit: `max_age` shifted by up to ±`max_age_jitter`.
    fn jittered_max_age(&self) -> Option<Duration> {
        let age = self.lifetime.max_age;
        if age.is_zero() {
            return None;
        }
        let jitter = self.lifetime.max_age_jitter;
        let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
        Some(age.mul_f64(factor))
    }
}

/// Counts an open connection for its lifetime.
struct OpenConnection<'a>(&'a Metrics);

impl<'a> OpenConnection<'a> {
    fn new(metrics: &'a Metrics) -> Self {
        metrics.connections.inc();
        metrics.connections_accepted.inc();
        Self(metrics)
    }
}

impl Drop for OpenConnection<'_> {
    fn drop(&mut self) {
        self.0.connections.dec();
    }
}

/// Why a connection is asked to leave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    MaxAge,
    MaxIdle,
    Shutdown,
}

impl Leave {
    fn label(self) -> &'static str {
        match self {
            Leave::MaxAge => "max_age",
            Leave::MaxIdle => "max_idle",
            Leave::Shutdown => "shutdown",
        }
    }
}

/// Serves `tcp` until the connection ends, leaves, or is closed after its grace period.
///
/// The timers that decide leaving run in a separate small task, so that the connection
/// task, woken for every frame, polls only the connection and one channel.
pub(super) async fn drive(tcp: TcpStream, shared: Arc<ConnectionShared>) {
    let info = tcp.connect_info();
    let peer = info.remote_addr();
    if let Err(error) = tcp.set_nodelay(shared.lifetime.tcp_nodelay) {
        tracing::debug!(?peer, %error, "cannot set TCP_NODELAY");
    }
    let _open = OpenConnection::new(&shared.metrics);
    let activity = Arc::new(ConnectionActivity::default());
    let stack = ServiceBuilder::new()
        .layer(shared.observe.clone())
        .layer(shared.limits)
        .layer(shared.load_shed.clone())
        .layer(shared.catch_panic.clone())
        .service(shared.routes.clone());
    let front = ServiceBuilder::new()
        .map_request(move |mut request: http::Request<Incoming>| {
            // What tonic's `Request::remote_addr()` reads.
            request.extensions_mut().insert(info.clone());
            request
        })
        .layer(TrackLayer::new(
            activity.clone(),
            shared.metrics.inflight_rpcs.clone(),
        ));
    match &shared.fallback {
        None => {
            let service = TowerToHyperService::new(front.service(stack));
            let connection = shared.http2.serve_connection(TokioIo::new(tcp), service);
            live(connection, &shared, &activity, peer).await;
        }
        Some(fallback) => {
            let split = Split {
                grpc: stack,
                fallback: fallback.clone(),
            };
            let service = TowerToHyperService::new(front.service(split));
            let connection = shared.auto.serve_connection(TokioIo::new(tcp), service);
            live(connection, &shared, &activity, peer).await;
        }
    }
}

/// A served connection that can be asked to leave: HTTP/2 only, or HTTP/1.1 and HTTP/2.
trait Leaving: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    /// Sends GOAWAY (HTTP/2) or stops keep-alive (HTTP/1.1), letting requests finish.
    fn leave(self: Pin<&mut Self>);
}

impl<S, B> Leaving for hyper::server::conn::http2::Connection<TokioIo<TcpStream>, S, TokioExecutor>
where
    S: hyper::service::HttpService<Incoming, ResBody = B>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = hyper::Error;

    fn leave(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

impl<S, B> Leaving
    for hyper_util::server::conn::auto::Connection<'_, TokioIo<TcpStream>, S, TokioExecutor>
where
    S: hyper::service::Service<http::Request<Incoming>, Response = http::Response<B>>,
    S::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn leave(self: Pin<&mut Self>) {
        self.graceful_shutdown();
    }
}

/// Serves `connection` until it ends, leaves, or is closed after its grace period.
async fn live<C: Leaving>(
    connection: C,
    shared: &Arc<ConnectionShared>,
    activity: &Arc<ConnectionActivity>,
    peer: Option<std::net::SocketAddr>,
) {
    tokio::pin!(connection);
    let (leave_tx, leave_rx) = oneshot::channel();
    let lifetime = AbortOnDrop(tokio::spawn(watch_lifetime(
        shared.clone(),
        activity.clone(),
        leave_tx,
    )));
    let reason = tokio::select! {
        biased;
        result = connection.as_mut() => {
            if let Err(error) = result {
                tracing::debug!(?peer, %error, "connection ended with an error");
            }
            return;
        }
        reason = leave_rx => reason.unwrap_or(Leave::Shutdown),
    };
    drop(lifetime);

    tracing::debug!(?peer, reason = reason.label(), "sending GOAWAY");
    shared
        .metrics
        .goaways
        .get_or_create(&GoawayLabels {
            reason: reason.label(),
        })
        .inc();
    connection.as_mut().leave();
    if reason == Leave::Shutdown {
        // The server's shutdown deadline bounds this wait: it aborts this task.
        let _ = connection.await;
        return;
    }
    let grace = shared.lifetime.max_age_grace;
    if tokio::time::timeout(grace, connection).await.is_err() {
        tracing::info!(
            ?peer,
            rpcs = activity.active(),
            reason = reason.label(),
            "grace period over; closing connection"
        );
        shared.metrics.forced_closes.inc();
    }
}

/// Aborts the task when dropped, so a connection's helper never outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until the connection must leave (age, idleness or server shutdown) and says why.
async fn watch_lifetime(
    shared: Arc<ConnectionShared>,
    activity: Arc<ConnectionActivity>,
    leave: oneshot::Sender<Leave>,
) {
    let mut goaway = shared.goaway.clone();
    let age = async {
        match shared.jittered_max_age() {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        _ = age => Leave::MaxAge,
        _ = idle(&activity, shared.lifetime.max_idle) => Leave::MaxIdle,
        // A dropped sender means the server is gone: leave as well.
        _ = goaway.wait_for(|leave| *leave) => Leave::Shutdown,
    };
    let _ = leave.send(reason);
}

/// Completes once the connection had no RPC at any moment for `max_idle` (never if zero).
///
/// Samples activity every half period: three equal samples with nothing active span a full
/// period without an RPC, so idleness is seen between `max_idle` and 1.5 × `max_idle`.
async fn idle(activity: &ConnectionActivity, max_idle: Duration) {
    if max_idle.is_zero() {
        return std::future::pending().await;
    }
    let mut quiet_samples = 0;
    let mut previous = activity.sample();
    loop {
        tokio::time::sleep(max_idle / 2).await;
        let sample = activity.sample();
        if sample.active == 0 && sample == previous {
            quiet_samples += 1;
            if quiet_samples >= 2 {
                return;
            }
        } else {
            quiet_samples = 0;
        }
        previous = sample;
    }
}
