//! Drives one connection: TCP options (no delay, keepalive), TLS when the listener has it,
//! the transport (HTTP/2, or HTTP/1.1 and HTTP/2), per-request accounting and body
//! timeouts, and the ways a connection is asked to leave (max age, idleness, shutdown) or is
//! cut (no handshake in time).
//!
//! Leaving is always GOAWAY first (hyper sends the two-step GOAWAY that lets in-flight
//! streams finish and tells the client which streams it may retry; HTTP/1.1 stops
//! keep-alive), then a hard close if requests outlive the grace period. tonic 0.14's own
//! max_connection_age has no jitter and no grace bound, so a stream that never ends keeps
//! such a connection open for ever.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use keel_core::identity::PeerIdentity;
use rand::Rng;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;
use tonic::transport::server::{Connected, TcpConnectInfo};
use tower::ServiceBuilder;

use super::late_frames::{Handshake, LateFrameGuard, Protocol};
use super::metrics::ListenerMetrics;
use super::request_body::RequestBody;
use super::{HttpProtocol, ListenerConfig, ListenerService, ResponseBody, Stage};
use crate::config::KEEPALIVE_PROBES;
use crate::layer::{ConnectionActivity, TrackLayer};

/// Applies a listener's HTTP/2 settings to a hyper HTTP/2 builder: hyper's own, or the
/// one inside hyper-util's HTTP/1.1-and-HTTP/2 builder (same methods, different types).
macro_rules! http2_settings {
    ($builder:expr, $h2:expr) => {{
        let h2: &crate::config::Http2Config = $h2;
        #[allow(
            unused_mut,
            reason = "a builder by value needs `mut`, one by reference does not"
        )]
        let mut builder = $builder;
        builder
            .timer(TokioTimer::new())
            .initial_stream_window_size(h2.initial_stream_window)
            .initial_connection_window_size(h2.initial_connection_window)
            .max_concurrent_streams(h2.max_concurrent_streams)
            .max_frame_size(h2.max_frame_size)
            .max_header_list_size(h2.max_header_list_size)
            .max_send_buf_size(h2.max_send_buffer)
            .max_pending_accept_reset_streams(h2.max_pending_accept_reset_streams);
        if h2.adaptive_window {
            // After the fixed windows: setting one turns the estimator off in hyper.
            builder.adaptive_window(true);
        }
        if !h2.keepalive_interval.is_zero() {
            builder
                .keep_alive_interval(h2.keepalive_interval)
                .keep_alive_timeout(h2.keepalive_timeout);
        }
    }};
}

/// What every connection of one listener shares.
pub(super) struct Shared<S> {
    http2: hyper::server::conn::http2::Builder<TokioExecutor>,
    /// HTTP/1.1 and HTTP/2 with the same settings.
    auto: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    /// HTTP/1.1 only (what ALPN `http/1.1` chose), with the same settings.
    http1: hyper_util::server::conn::auto::Builder<TokioExecutor>,
    protocol: HttpProtocol,
    /// The kernel's keepalive probes, when `connection.tcp_keepalive` is on.
    tcp_keepalive: Option<socket2::TcpKeepalive>,
    pub(super) service: S,
    pub(super) config: ListenerConfig,
    pub(super) metrics: ListenerMetrics,
    pub(super) stage: watch::Receiver<Stage>,
}

impl<S> Shared<S> {
    pub(super) fn new(
        config: ListenerConfig,
        service: S,
        metrics: ListenerMetrics,
        stage: watch::Receiver<Stage>,
    ) -> Self {
        let mut http2 = hyper::server::conn::http2::Builder::new(TokioExecutor::new());
        http2_settings!(&mut http2, &config.http2);
        let mut auto = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        http2_settings!(auto.http2(), &config.http2);
        {
            let mut http1 = auto.http1();
            http1
                .timer(TokioTimer::new())
                .max_buf_size(config.connection.http1_max_buffer);
            if !config.connection.handshake_timeout.is_zero() {
                http1.header_read_timeout(config.connection.handshake_timeout);
            }
        }
        let connection = &config.connection;
        let tcp_keepalive = (!connection.tcp_keepalive.is_zero()).then(|| {
            socket2::TcpKeepalive::new()
                .with_time(connection.tcp_keepalive)
                .with_interval(connection.tcp_keepalive_timeout / KEEPALIVE_PROBES)
                .with_retries(KEEPALIVE_PROBES)
        });
        Self {
            http2,
            http1: auto.clone().http1_only(),
            tcp_keepalive,
            auto,
            protocol: config.protocol,
            service,
            config,
            metrics,
            stage,
        }
    }

    /// This connection's age limit: `max_age` shifted by up to ±`max_age_jitter`.
    fn jittered_max_age(&self) -> Option<Duration> {
        let lifetime = &self.config.connection;
        if lifetime.max_age.is_zero() {
            return None;
        }
        let jitter = lifetime.max_age_jitter.clamp(0.0, 1.0);
        let factor = 1.0 + rand::rng().random_range(-jitter..=jitter);
        Some(lifetime.max_age.mul_f64(factor))
    }
}

/// How a connection ended, for the listener's shutdown report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Ended {
    /// The transport failed (a protocol error, a reset, a timeout) rather than closing.
    pub(super) failed: bool,
    /// Requests in flight when it failed or was closed by force.
    pub(super) cut: usize,
}

/// Counts an open connection for its lifetime.
struct OpenConnection<'a>(&'a ListenerMetrics);

impl<'a> OpenConnection<'a> {
    fn new(metrics: &'a ListenerMetrics) -> Self {
        metrics.connections.inc();
        metrics.accepted.inc();
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
    /// Nothing a server could answer arrived within the handshake timeout: cut, no GOAWAY.
    Handshake,
}

impl Leave {
    fn label(self) -> &'static str {
        match self {
            Leave::MaxAge => "max_age",
            Leave::MaxIdle => "max_idle",
            Leave::Shutdown => "shutdown",
            Leave::Handshake => "handshake_timeout",
        }
    }
}

/// What a connection speaks once any TLS handshake is done.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Speaks {
    /// HTTP/2 only (the listener's only protocol, or ALPN `h2`).
    Http2,
    /// HTTP/1.1 only (ALPN `http/1.1`).
    Http1,
    /// Either, told apart by the HTTP/2 preface (a plaintext or no-ALPN HTTP listener).
    Either,
}

/// Serves `tcp` (through TLS when the listener has it) until the connection ends, leaves,
/// or is closed after its grace period.
///
/// The timers that decide leaving run in a separate small task, so that the connection
/// task, woken for every frame, polls only the connection and one channel.
pub(super) async fn drive<S, B>(tcp: TcpStream, shared: Arc<Shared<S>>) -> Ended
where
    S: ListenerService<B>,
    B: ResponseBody,
{
    let arrived = Instant::now();
    let info = tcp.connect_info();
    let peer = info.remote_addr();
    if let Err(error) = tcp.set_nodelay(shared.config.connection.tcp_nodelay) {
        tracing::debug!(?peer, %error, "cannot set TCP_NODELAY");
    }
    if let Some(keepalive) = &shared.tcp_keepalive
        && let Err(error) = socket2::SockRef::from(&tcp).set_tcp_keepalive(keepalive)
    {
        tracing::debug!(?peer, %error, "cannot turn on TCP keepalive");
    }
    let _open = OpenConnection::new(&shared.metrics);
    let default = match shared.protocol {
        HttpProtocol::Http2 => Speaks::Http2,
        HttpProtocol::Http1AndHttp2 => Speaks::Either,
    };
    let Some(tls) = &shared.config.tls else {
        return serve(tcp, default, None, info, arrived, &shared).await;
    };
    let timeout = shared.config.connection.handshake_timeout;
    let deadline = (!timeout.is_zero()).then(|| arrived + timeout);
    match super::tls::handshake(tcp, tls, deadline, &shared.metrics, &shared.stage, peer).await {
        Ok((stream, negotiated)) => {
            let speaks = match negotiated.alpn.as_deref() {
                Some(keel_tls::H2) => Speaks::Http2,
                Some(keel_tls::HTTP_1_1) if default == Speaks::Either => Speaks::Http1,
                _ => default,
            };
            serve(stream, speaks, negotiated.peer, info, arrived, &shared).await
        }
        Err(no_session) => Ended {
            failed: no_session == super::tls::NoSession::Failed,
            cut: 0,
        },
    }
}

/// Serves HTTP on `io` (a socket, or a TLS session over one) as `speaks` says, each request
/// carrying the peer's address and, if it proved one, its identity.
async fn serve<I, S, B>(
    io: I,
    speaks: Speaks,
    identity: Option<Arc<PeerIdentity>>,
    info: TcpConnectInfo,
    arrived: Instant,
    shared: &Arc<Shared<S>>,
) -> Ended
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    S: ListenerService<B>,
    B: ResponseBody,
{
    let metrics = &shared.metrics;
    let peer = info.remote_addr();
    let activity = Arc::new(ConnectionActivity::default());
    let handshake = Arc::new(Handshake::default());
    let io = TokioIo::new(LateFrameGuard::new(
        io,
        speaks == Speaks::Http2,
        handshake.clone(),
        metrics.late_frames.clone(),
    ));
    let body_timeout = shared.config.connection.body_timeout;
    let body_timeouts = metrics.body_timeouts.clone();
    let service = ServiceBuilder::new()
        .map_request(move |request: http::Request<Incoming>| {
            let grpc = is_grpc(request.headers());
            let mut request = request
                .map(|body| RequestBody::new(body, grpc, body_timeout, body_timeouts.clone()));
            // What tonic's `Request::remote_addr()` reads.
            request.extensions_mut().insert(info.clone());
            if let Some(identity) = &identity {
                request.extensions_mut().insert(identity.clone());
            }
            request
        })
        .layer(TrackLayer::new(activity.clone(), metrics.inflight.clone()))
        .service(shared.service.clone());
    let service = TowerToHyperService::new(service);
    let watch = Watch {
        shared,
        activity: &activity,
        handshake: &handshake,
        peer,
        arrived,
    };
    match speaks {
        Speaks::Http2 => watch.live(shared.http2.serve_connection(io, service)).await,
        Speaks::Http1 => watch.live(shared.http1.serve_connection(io, service)).await,
        Speaks::Either => watch.live(shared.auto.serve_connection(io, service)).await,
    }
}

/// True for plain gRPC (`application/grpc`, `application/grpc+proto`, ...), not gRPC-Web.
pub(crate) fn is_grpc(headers: &http::HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| {
            value.starts_with("application/grpc") && !value.starts_with("application/grpc-web")
        })
}

/// A served connection that can be asked to leave: HTTP/2 only, or HTTP/1.1 and HTTP/2.
trait Leaving: Future<Output = Result<(), Self::Error>> {
    type Error: std::fmt::Display;
    /// Sends GOAWAY (HTTP/2) or stops keep-alive (HTTP/1.1), letting requests finish.
    fn leave(self: Pin<&mut Self>);
}

impl<I, S, B> Leaving for hyper::server::conn::http2::Connection<I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin,
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

impl<I, S, B> Leaving for hyper_util::server::conn::auto::Connection<'_, I, S, TokioExecutor>
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
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

/// One connection's view of what may end it.
struct Watch<'a, S> {
    shared: &'a Arc<Shared<S>>,
    activity: &'a Arc<ConnectionActivity>,
    handshake: &'a Arc<Handshake>,
    peer: Option<std::net::SocketAddr>,
    /// When the connection arrived: the handshake timeout counts from there.
    arrived: Instant,
}

impl<S: Send + Sync + 'static> Watch<'_, S> {
    /// Serves `connection` until it ends, leaves, or is closed after its grace period.
    async fn live<C: Leaving>(self, connection: C) -> Ended {
        let Watch {
            shared,
            activity,
            handshake,
            peer,
            arrived,
        } = self;
        let metrics = &shared.metrics;
        tokio::pin!(connection);
        let (leave_tx, leave_rx) = oneshot::channel();
        let lifetime = AbortOnDrop(tokio::spawn(watch_lifetime(
            shared.clone(),
            activity.clone(),
            handshake.clone(),
            arrived,
            leave_tx,
        )));
        let ended = |result: Result<(), C::Error>| match result {
            Ok(()) => Ended {
                failed: false,
                cut: 0,
            },
            Err(error) => {
                tracing::debug!(?peer, %error, "connection ended with an error");
                Ended {
                    failed: true,
                    cut: activity.active(),
                }
            }
        };
        let reason = tokio::select! {
            biased;
            result = connection.as_mut() => return ended(result),
            reason = leave_rx => reason.unwrap_or(Leave::Shutdown),
        };
        drop(lifetime);

        let goaways = match reason {
            Leave::Handshake => {
                metrics.handshake_timeouts.inc();
                tracing::debug!(?peer, "no request within the handshake timeout; closing");
                return Ended {
                    failed: true,
                    cut: 0,
                };
            }
            Leave::MaxAge => &metrics.goaway_max_age,
            Leave::MaxIdle => &metrics.goaway_max_idle,
            Leave::Shutdown => &metrics.goaway_shutdown,
        };
        tracing::debug!(?peer, reason = reason.label(), "sending GOAWAY");
        goaways.inc();
        connection.as_mut().leave();
        if reason == Leave::Shutdown {
            // The listener's shutdown deadline bounds this wait: it aborts this task.
            return ended(connection.await);
        }
        let grace = shared.config.connection.max_age_grace;
        match tokio::time::timeout(grace, connection).await {
            Ok(result) => ended(result),
            Err(_) => {
                let cut = activity.active();
                tracing::info!(
                    ?peer,
                    rpcs = cut,
                    reason = reason.label(),
                    "grace period over; closing connection"
                );
                metrics.forced_closes.inc();
                Ended { failed: false, cut }
            }
        }
    }
}

/// Aborts the task when dropped, so a connection's helper never outlives it.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Waits until the connection must leave (age, idleness, server shutdown, or no
/// handshake in time) and says why.
async fn watch_lifetime<S>(
    shared: Arc<Shared<S>>,
    activity: Arc<ConnectionActivity>,
    handshake: Arc<Handshake>,
    arrived: Instant,
    leave: oneshot::Sender<Leave>,
) {
    let mut stage = shared.stage.clone();
    let lifetime = &shared.config.connection;
    let age = async {
        match shared.jittered_max_age() {
            Some(age) => tokio::time::sleep(age).await,
            None => std::future::pending().await,
        }
    };
    let reason = tokio::select! {
        _ = age => Leave::MaxAge,
        _ = idle(&activity, lifetime.max_idle) => Leave::MaxIdle,
        () = no_handshake(&handshake, arrived, lifetime.handshake_timeout) => Leave::Handshake,
        // A dropped sender means the listener is gone: leave as well.
        _ = stage.wait_for(|stage| *stage != Stage::Serving) => Leave::Shutdown,
    };
    let _ = leave.send(reason);
}

/// Completes if the client has not started HTTP/2 (preface and a frame) nor sent an
/// HTTP/1.1 byte within `timeout` of its arrival (its TLS handshake, if any, included);
/// never if it has, or if `timeout` is zero. HTTP/1.1 request heads are then timed by hyper
/// (`header_read_timeout`).
async fn no_handshake(handshake: &Handshake, arrived: Instant, timeout: Duration) {
    if timeout.is_zero() {
        return std::future::pending().await;
    }
    tokio::time::sleep_until(arrived + timeout).await;
    if handshake.protocol() != Protocol::Undecided {
        std::future::pending::<()>().await;
    }
}

/// Completes once the connection had no request at any moment for `max_idle` (never if
/// zero).
///
/// Samples activity every half period: three equal samples with nothing active span a full
/// period without a request, so idleness is seen between `max_idle` and 1.5 × `max_idle`.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_web_and_json_are_not_grpc() {
        let with = |content_type: &str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(http::header::CONTENT_TYPE, content_type.parse().unwrap());
            is_grpc(&headers)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(!with("application/grpc-web+proto"));
        assert!(!with("application/grpc-web-text"));
        assert!(!with("application/json"));
        assert!(!is_grpc(&http::HeaderMap::new()));
    }
}
