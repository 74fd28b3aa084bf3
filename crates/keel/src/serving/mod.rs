//! The serving core: the one accept loop and connection driver behind every listener Keel
//! opens (gRPC, admin, the standalone gateway, and those to come).
//!
//! A [`Listener`] gives each of them, with no code of theirs:
//! - accept errors (out of descriptors, ...) logged at a bounded rate and backed off;
//! - `connection.max_connections`: past it a new connection is closed on arrival and counted
//!   (`keel_server_connections_refused_total`), so open ones keep their service;
//! - bounded buffering per connection (flow-control windows, header lists, send buffers,
//!   HTTP/1.1 buffers) from the listener's settings;
//! - `connection.handshake_timeout` for peers that connect and say nothing, and
//!   `connection.body_timeout` for bodies that trickle ([`RequestBody`]);
//! - connection tasks reaped as they end;
//! - HTTP/2 only, or HTTP/1.1 and h2c on one port ([`HttpProtocol`]);
//! - max age, idleness, GOAWAY and drain within the shutdown deadline, driven by [`Stage`],
//!   ignoring the frames a racing client sends after the final GOAWAY (see `late_frames`);
//! - the same `keel_server_*` connection metrics, labelled by listener ([`ConnectionMetrics`]);
//! - TLS when the listener has a [`ServerTls`] (`tls.rs`): the handshake runs in the
//!   connection's task, within the handshake timeout, so a client that connects and says
//!   nothing delays no other; ALPN picks HTTP/2 or HTTP/1.1; `keel_tls_handshakes_total`;
//! - on the caller's Tokio runtime, or thread-per-core ([`ListenerConfig::threads`],
//!   `threads.rs`): N current-thread runtimes, each accepting on its own `SO_REUSEPORT`
//!   socket, every one of the above applying on each.
//!
//! The service sees `http::Request<RequestBody>` with the peer's
//! `tonic::transport::server::TcpConnectInfo` in its extensions and, when the client
//! presented a certificate, its `Arc<keel_core::identity::PeerIdentity>`.

mod accept;
mod connection;
mod late_frames;
mod metrics;
mod request_body;
mod threads;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::{Checks, ConnectionConfig, Http2Config, Validate};
pub use keel_tls::ServerTls;
pub use metrics::{
    CertificateLabels, ConnectionMetrics, ListenerLabels, ListenerMetrics, OutcomeLabels,
    ReasonLabels,
};
pub use request_body::{BodyError, RequestBody};

pub(crate) use connection::is_grpc;

/// What a listener's connections speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpProtocol {
    /// HTTP/2 only (prior knowledge, as gRPC clients speak).
    Http2,
    /// HTTP/1.1 and HTTP/2 (h2c), told apart by the HTTP/2 preface: for REST, browsers,
    /// probes and scrapers.
    Http1AndHttp2,
}

impl HttpProtocol {
    /// The ALPN protocols a TLS listener speaking this offers, in order of preference.
    pub fn alpn(self) -> &'static [&'static [u8]] {
        match self {
            HttpProtocol::Http2 => &[keel_tls::H2],
            HttpProtocol::Http1AndHttp2 => &[keel_tls::H2, keel_tls::HTTP_1_1],
        }
    }
}

/// Where a listener is in its life; sent to it over a `watch` channel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    /// Accepting and serving.
    Serving,
    /// Not accepting; every connection got GOAWAY and is finishing its requests.
    Draining,
    /// Every connection still open is closed now.
    Closing,
}

/// The settings of one listener, checked when it is bound ([`Validate`]).
///
/// ```
/// use keel::serving::{HttpProtocol, ListenerConfig};
///
/// let mut config = ListenerConfig::new("grpc", HttpProtocol::Http2);
/// config.connection.max_connections = 100;
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ListenerConfig {
    /// Its name, the `listener` label of its metrics and logs (`grpc`, `admin`, ...).
    pub name: &'static str,
    /// What its connections speak.
    pub protocol: HttpProtocol,
    /// HTTP/2 settings.
    pub http2: Http2Config,
    /// Limits and lifetime of its connections.
    pub connection: ConnectionConfig,
    /// TLS for its connections (`None`: plaintext). Load it offering
    /// [`HttpProtocol::alpn`] of `protocol`.
    pub tls: Option<Arc<ServerTls>>,
    /// Thread-per-core serving: `0` serves on the Tokio runtime that calls
    /// [`Listener::serve`]; `N` serves on N threads of its own, each a current-thread runtime
    /// with its own socket on the port (`SO_REUSEPORT`), `connection.max_connections` split
    /// between them.
    pub threads: usize,
}

impl ListenerConfig {
    /// A listener named `name` (the `listener` label) speaking `protocol`, with the default
    /// HTTP/2 and connection settings.
    pub fn new(name: &'static str, protocol: HttpProtocol) -> Self {
        Self {
            name,
            protocol,
            http2: Http2Config::default(),
            connection: ConnectionConfig::default(),
            tls: None,
            threads: 0,
        }
    }
}

impl Validate for ListenerConfig {
    fn check(&self, checks: &mut Checks) {
        checks.nested("http2", &self.http2);
        checks.nested("connection", &self.connection);
        checks.between("threads", self.threads, 0..=MAX_THREADS, "");
    }
}

/// Most threads a listener may serve on.
pub const MAX_THREADS: usize = 1024;

/// How a listener's connections ended once draining began.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ListenerReport {
    /// Connections that closed by themselves after GOAWAY, every request finished.
    pub drained: usize,
    /// Connections whose transport failed while draining (their requests may be lost).
    pub failed: usize,
    /// Connections closed by force at the deadline.
    pub forced: usize,
    /// Requests in flight on failed or forcibly closed connections: cut, not finished.
    pub cut: usize,
}

/// What a listener serves: a cloneable service of [`RequestBody`] requests that never
/// fails (errors are responses).
pub trait ListenerService<B>:
    tower::Service<
        http::Request<RequestBody>,
        Response = http::Response<B>,
        Error = std::convert::Infallible,
        Future: Send + 'static,
    > + Clone
    + Send
    + Sync
    + 'static
{
}

impl<S, B> ListenerService<B> for S where
    S: tower::Service<
            http::Request<RequestBody>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
            Future: Send + 'static,
        > + Clone
        + Send
        + Sync
        + 'static
{
}

/// A response body a listener can send.
pub trait ResponseBody:
    http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>> + Send + 'static
{
}

impl<B> ResponseBody for B where
    B: http_body::Body<Data: Send, Error: Into<Box<dyn std::error::Error + Send + Sync>>>
        + Send
        + 'static
{
}

/// A bound listener and its settings, ready to serve.
#[derive(Debug)]
pub struct Listener {
    sockets: Sockets,
    /// The bound address, read once at bind.
    addr: SocketAddr,
    config: ListenerConfig,
    metrics: ListenerMetrics,
}

/// Where a listener accepts.
#[derive(Debug)]
enum Sockets {
    /// One socket, on the caller's runtime.
    Runtime(TcpListener),
    /// A socket and a runtime per thread.
    Threads(Vec<threads::Shard>),
}

impl Listener {
    /// Binds `addr` for `config`, reporting into `metrics`. A setting `config` breaks is an
    /// [`std::io::ErrorKind::InvalidInput`] error whose inner error is the
    /// [`crate::config::InvalidSetting`], and nothing is bound.
    pub async fn bind(
        addr: SocketAddr,
        config: ListenerConfig,
        metrics: &ConnectionMetrics,
    ) -> std::io::Result<Self> {
        config.validate().map_err(invalid_input)?;
        if config.threads == 0 {
            let tcp = TcpListener::bind(addr).await?;
            return Self::from_tcp(tcp, config, metrics);
        }
        let shards = threads::bind(addr, config.threads)?;
        let addr = shards[0].local_addr()?;
        let metrics = metrics.listener(config.name);
        Ok(Self {
            sockets: Sockets::Threads(shards),
            addr,
            config,
            metrics,
        })
    }

    /// Serves on an already bound socket, on the caller's runtime whatever
    /// [`ListenerConfig::threads`] says; its settings are checked as by [`Listener::bind`].
    pub fn from_tcp(
        tcp: TcpListener,
        config: ListenerConfig,
        metrics: &ConnectionMetrics,
    ) -> std::io::Result<Self> {
        config.validate().map_err(invalid_input)?;
        let addr = tcp.local_addr()?;
        let metrics = metrics.listener(config.name);
        Ok(Self {
            sockets: Sockets::Runtime(tcp),
            addr,
            config,
            metrics,
        })
    }

    /// The bound address (with the real port when bound to port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Its name, the `listener` label.
    pub fn name(&self) -> &'static str {
        self.config.name
    }

    /// Its TLS configuration, if it serves TLS.
    pub fn tls(&self) -> Option<&Arc<ServerTls>> {
        self.config.tls.as_ref()
    }

    /// Serves `service` until `stage` says [`Stage::Closing`] or, once it said
    /// [`Stage::Draining`], until every connection has closed.
    pub async fn serve<S, B>(self, service: S, stage: watch::Receiver<Stage>) -> ListenerReport
    where
        S: ListenerService<B>,
        B: ResponseBody,
    {
        match self.sockets {
            Sockets::Runtime(tcp) => {
                let shared = Arc::new(connection::Shared::new(
                    self.config,
                    service,
                    self.metrics,
                    stage,
                ));
                accept::run(tcp, shared).await.alone()
            }
            Sockets::Threads(shards) => {
                let shared = |config| {
                    Arc::new(connection::Shared::new(
                        config,
                        service.clone(),
                        self.metrics.clone(),
                        stage.clone(),
                    ))
                };
                threads::serve(shards, shared, &self.config).await
            }
        }
    }
}

fn invalid_input(setting: crate::config::InvalidSetting) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidInput, setting)
}
