//! Drives one HTTP/2 connection: the per-request stack, keepalive, and the three ways a
//! connection is asked to leave (max age, idleness, server shutdown).
//!
//! Leaving is always GOAWAY first (hyper sends the two-step GOAWAY that lets in-flight
//! streams finish and tells the client which streams it may retry), then a hard close if
//! RPCs outlive the grace period. tonic 0.14's own max_connection_age has no jitter and no
//! grace bound, so a stream that never ends keeps such a connection open for ever.

use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use rand::Rng;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::time::{Instant, sleep_until};
use tonic::service::Routes;
use tonic::transport::server::Connected;
use tower::ServiceBuilder;

use crate::config::{ConnectionConfig, ServerConfig};
use crate::layer::{ConnectionActivity, LoadShedLayer, MessageLimitLayer, TrackLayer};
use crate::metrics::{GoawayLabels, Metrics};

/// What every connection of one server shares.
pub(super) struct ConnectionShared {
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    routes: Routes,
    load_shed: LoadShedLayer,
    limits: MessageLimitLayer,
    lifetime: ConnectionConfig,
    metrics: Arc<Metrics>,
    goaway: watch::Receiver<bool>,
}

impl ConnectionShared {
    /// `goaway` turning true asks every connection to leave (server shutdown).
    pub(super) fn new(
        config: &ServerConfig,
        routes: Routes,
        metrics: Arc<Metrics>,
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
        let limits = &config.limits;
        Self {
            http2,
            routes,
            load_shed: LoadShedLayer::new(limits.concurrency_limit, metrics.shed_rpcs.clone()),
            limits: MessageLimitLayer::new(
                limits.max_recv_message_size,
                limits.max_send_message_size,
            ),
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

/// Serves `tcp` until the connection ends, leaves, or is closed after its grace period.
pub(super) async fn drive(tcp: TcpStream, shared: Arc<ConnectionShared>) {
    let info = tcp.connect_info();
    let peer = info.remote_addr();
    if let Err(error) = tcp.set_nodelay(shared.lifetime.tcp_nodelay) {
        tracing::debug!(?peer, %error, "cannot set TCP_NODELAY");
    }
    let _open = OpenConnection::new(&shared.metrics);
    let activity = Arc::new(ConnectionActivity::default());
    let service = ServiceBuilder::new()
        .map_request(move |mut request: http::Request<Incoming>| {
            // What tonic's `Request::remote_addr()` reads.
            request.extensions_mut().insert(info.clone());
            request
        })
        .layer(TrackLayer::new(
            activity.clone(),
            shared.metrics.inflight_rpcs.clone(),
        ))
        .layer(shared.limits)
        .layer(shared.load_shed.clone())
        .service(shared.routes.clone());
    let connection = shared
        .http2
        .serve_connection(TokioIo::new(tcp), TowerToHyperService::new(service));
    tokio::pin!(connection);

    let lifetime = &shared.lifetime;
    let far = Instant::now() + Duration::from_secs(86_400 * 365);
    let age_deadline = shared
        .jittered_max_age()
        .map_or(far, |age| Instant::now() + age);
    let mut idle_check = if lifetime.max_idle.is_zero() {
        far
    } else {
        Instant::now() + lifetime.max_idle
    };
    let mut goaway = shared.goaway.clone();
    // Set once GOAWAY was sent for age or idleness: when the grace period ends.
    let mut grace_deadline: Option<Instant> = None;
    let mut shutting_down = false;

    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(error) = result {
                    tracing::debug!(?peer, %error, "connection ended with an error");
                }
                return;
            }
            _ = sleep_until(age_deadline), if grace_deadline.is_none() && !shutting_down => {
                tracing::debug!(?peer, "max connection age reached; sending GOAWAY");
                leave(&shared.metrics, connection.as_mut(), "max_age");
                grace_deadline = Some(Instant::now() + lifetime.max_age_grace);
            }
            _ = sleep_until(idle_check), if grace_deadline.is_none() && !shutting_down => {
                match activity.idle_for() {
                    Some(idle) if idle >= lifetime.max_idle => {
                        tracing::debug!(?peer, ?idle, "connection idle; sending GOAWAY");
                        leave(&shared.metrics, connection.as_mut(), "max_idle");
                        grace_deadline = Some(Instant::now() + lifetime.max_age_grace);
                    }
                    Some(idle) => idle_check = Instant::now() + (lifetime.max_idle - idle),
                    None => idle_check = Instant::now() + lifetime.max_idle,
                }
            }
            changed = goaway.wait_for(|leave| *leave), if !shutting_down => {
                shutting_down = true;
                // A sender dropped without asking means the server is gone: leave as well.
                let _ = changed;
                if grace_deadline.is_none() {
                    leave(&shared.metrics, connection.as_mut(), "shutdown");
                }
            }
            _ = sleep_until(grace_deadline.unwrap_or(far)), if grace_deadline.is_some() => {
                tracing::info!(?peer, rpcs = activity.active(), "grace period over; closing connection");
                shared.metrics.forced_closes.inc();
                return;
            }
        }
    }
}

fn leave<I, S>(
    metrics: &Metrics,
    connection: std::pin::Pin<&mut hyper::server::conn::http2::Connection<I, S, TokioExecutor>>,
    reason: &'static str,
) where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + 'static,
    S: hyper::service::HttpService<Incoming>,
    S::ResBody: hyper::body::Body + Send + 'static,
    <S::ResBody as hyper::body::Body>::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
    TokioExecutor: hyper::rt::bounds::Http2ServerConnExec<S::Future, S::ResBody>,
{
    metrics
        .goaways
        .get_or_create(&GoawayLabels { reason })
        .inc();
    connection.graceful_shutdown();
}
