//! The server's settings. Every default is chosen for production and says why.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use keel_authz::AuthConfig;
use keel_core::settings::{Checks, DurationText, Validate};
pub use keel_telemetry::observe::payload::PayloadConfig;
pub use keel_tls::{ClientAuth, TlsConfig, TlsVersion};

/// Everything a Keel server needs to start. `Default` is the production configuration.
///
/// Durations are written as `"30s"`, `"15m"`, `"500ms"`; a duration of `"0s"` switches the
/// feature off where the field says so, and none may exceed a year
/// ([`MAX_DURATION`](super::MAX_DURATION)).
///
/// Every rule a field states is checked ([`Validate`]) when the configuration is loaded
/// and again when a server is bound, so a bad value stops start-up with an
/// [`InvalidSetting`](super::InvalidSetting) naming its key, never a panic in a connection.
/// The structs are `#[non_exhaustive]`: start from `Default` and set fields.
///
/// ```
/// use keel::config::{ServerConfig, Validate};
///
/// let mut config = ServerConfig::default();
/// config.listen = "127.0.0.1:0".parse()?;
/// config.http2.max_frame_size = 1;
/// let error = config.validate().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "http2.max_frame_size = 1: must be between 16384 and 16777215 bytes"
/// );
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ServerConfig {
    /// gRPC listener. Loopback by default: exposing a port is a deliberate act.
    pub listen: SocketAddr,
    /// Admin HTTP listener (`/healthz`, `/readyz`, `/metrics`), kept off the RPC port so
    /// probes and scrapes never compete with traffic or pass through its limits.
    pub admin_listen: SocketAddr,
    /// Connections the admin listener holds at once (`0`: unlimited). Probers and scrapers
    /// keep a connection each or open one per probe; 256 leaves room for bursts of one-shot
    /// probes, and a budget of its own keeps the port answering while the RPC port is
    /// saturated. Past it new connections are closed on arrival.
    pub admin_max_connections: usize,
    /// HTTP/2 transport settings.
    pub http2: Http2Config,
    /// Connection lifetime settings.
    pub connection: ConnectionConfig,
    /// Message size and concurrency limits.
    pub limits: LimitsConfig,
    /// Graceful shutdown settings.
    pub shutdown: ShutdownConfig,
    /// Metrics, logs and traces of every call.
    pub observe: ObserveConfig,
    /// TLS on the gRPC listener (and on the standalone gateway's listener). Off by default:
    /// the listener is plaintext unless `tls.cert` is set.
    pub tls: TlsConfig,
    /// TLS on the admin listener, set apart from `tls` so that probes and scrapers can
    /// reach it without a client certificate while the gRPC port requires one (it may name
    /// the same files). Off by default.
    pub admin_tls: TlsConfig,
    /// Bearer tokens and the authorization policy (off by default).
    pub auth: AuthConfig,
    /// Thread-per-core serving of the gRPC listener. `0`, the default, serves on the Tokio
    /// runtime the server runs on (multi-threaded, with work stealing). `N` runs N threads of
    /// its own, each a current-thread runtime accepting on its own socket bound to the port
    /// with `SO_REUSEPORT`: the kernel spreads connections over them and a connection stays
    /// on its thread. `connection.max_connections` is split between the threads. Suits many
    /// connections of similar load; a few busy connections can leave threads idle. Tasks the
    /// services spawn themselves still run on the main runtime.
    pub serving_threads: usize,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9090)),
            admin_max_connections: 256,
            http2: Http2Config::default(),
            connection: ConnectionConfig::default(),
            limits: LimitsConfig::default(),
            shutdown: ShutdownConfig::default(),
            observe: ObserveConfig::default(),
            tls: TlsConfig::default(),
            admin_tls: TlsConfig::default(),
            auth: AuthConfig::default(),
            serving_threads: 0,
        }
    }
}

/// HTTP/2 settings advertised to and enforced on every connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct Http2Config {
    /// Server-sent PING interval (`0s`: off, the default; at most a year). Off because the
    /// kernel's TCP keepalive (`connection.tcp_keepalive`, 60 s) already keeps NAT and
    /// load-balancer flows alive and finds dead peers, while hyper's bookkeeping for pings (a
    /// lock and a clock read for every frame received, a timer polled on every wake-up)
    /// costs 1,383 instructions on every call, 2.5% (docs/BENCHMARKS.md, "A leaner call
    /// path"). Turn it on (e.g. `60s`) when a proxy between client and server answers TCP
    /// for the server, so that only an HTTP/2 PING reaches the peer itself. A ping costs the
    /// server about 40 µs of CPU ("Transport tuning").
    #[serde(with = "humantime_serde")]
    pub keepalive_interval: Duration,
    /// How long to wait for a PING acknowledgement before closing the connection (above 0s
    /// while pings are on). 20 s, as grpc-go: long enough for a loaded peer, short enough to
    /// free a dead one.
    #[serde(with = "humantime_serde")]
    pub keepalive_timeout: Duration,
    /// Concurrent streams one client may open on one connection (at least 1); a client
    /// queues the rest. 256, measured (docs/BENCHMARKS.md, "Transport tuning"): calls per
    /// second are flat from 100 streams per connection up, while the server's tasks and
    /// memory grow with every stream admitted (1024 allowed 4.6x the tasks and 1.8x the
    /// memory of 256 for no more calls per second). 256 rather than 100 leaves room for clients that keep
    /// long-lived streams (watches, subscriptions) on one connection. The server-wide bound
    /// is `limits.concurrency_limit`.
    pub max_concurrent_streams: u32,
    /// Initial per-stream flow-control window (65,535 to 2^31-1 bytes, RFC 9113). 1 MiB lets a
    /// single stream fill a fast link: over a 10 ms round trip, 1 MiB uploads moved at
    /// 204 MB/s, against 4 MB/s with the protocol's 64 KiB, which stalls on every round trip
    /// (docs/BENCHMARKS.md, "Transport tuning").
    pub initial_stream_window: u32,
    /// Initial connection flow-control window (65,535 to 2^31-1 bytes). 4 MiB: several streams
    /// can move large messages at once without one starving the rest, while bounding what a
    /// connection can make the server buffer. 4 MiB / 16 MiB windows moved 25% more bytes
    /// over a 10 ms round trip, for four times that bound per connection: raise both for a
    /// service of large uploads over long links.
    pub initial_connection_window: u32,
    /// Let the windows grow with the measured bandwidth-delay product (hyper's BDP
    /// estimator: a PING per burst of data), starting from the protocol's 64 KiB and ignoring
    /// the two windows above. Off: over a 10 ms round trip it moved 1 MiB uploads slower than
    /// the fixed defaults (193 against 204 MB/s) with three times their p99 latency, while it
    /// ramped up (docs/BENCHMARKS.md, "Transport tuning").
    pub adaptive_window: bool,
    /// Largest frame the server accepts (16,384 to 16,777,215 bytes, RFC 9113). 16 KiB is the
    /// protocol default and what clients expect.
    pub max_frame_size: u32,
    /// Largest header block (metadata) accepted from a client (at least 1 KiB). 16 KiB covers
    /// tokens and trace headers; larger metadata usually means a bug, and each stream buffers
    /// it whole.
    pub max_header_list_size: u32,
    /// Streams a client may open and reset before the server got to accept them; past it the
    /// connection is closed with ENHANCE_YOUR_CALM (at least 1). This bounds the HTTP/2
    /// rapid-reset attack (CVE-2023-44487). 256, not h2's 20: a busy server accepts late, and
    /// gRPC clients that cancel in bursts (hedging, fan-out with early exit) would otherwise
    /// lose their connection.
    pub max_pending_accept_reset_streams: usize,
    /// Response bytes one stream may buffer ahead of the client's flow-control window (1 to
    /// 2^32-1). 256 KiB keeps a stream streaming at full speed; with `max_concurrent_streams` it
    /// bounds what one connection's responses can hold in memory.
    pub max_send_buffer: usize,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            keepalive_interval: Duration::ZERO,
            keepalive_timeout: Duration::from_secs(20),
            max_concurrent_streams: 256,
            initial_stream_window: 1 << 20,
            initial_connection_window: 4 << 20,
            adaptive_window: false,
            max_frame_size: 16 << 10,
            max_header_list_size: 16 << 10,
            max_pending_accept_reset_streams: 256,
            max_send_buffer: 256 << 10,
        }
    }
}

/// How long connections live and how they are told to leave.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ConnectionConfig {
    /// Disable Nagle's algorithm. gRPC messages are small and latency-bound; with Nagle and
    /// delayed ACKs a response can wait 40 ms for nothing.
    pub tcp_nodelay: bool,
    /// Idle time before the kernel starts TCP keepalive probes on a connection (`0s`: off;
    /// whole seconds, at most 32767 s, Linux's bound). 60 s keeps NAT and load-balancer flows
    /// alive (their idle timeouts are 350 s and up) and, with `tcp_keepalive_timeout`, finds
    /// a dead peer within 80 s, at no cost per call: the kernel sends the probes. HTTP/2
    /// pings (`http2.keepalive_interval`) do the same from user space, and hyper's
    /// bookkeeping for them costs 1,383 instructions on every call whether or not a ping is
    /// ever sent (2.5%; docs/BENCHMARKS.md, "A leaner call path").
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive: Duration,
    /// How long keepalive probes may go unanswered before the kernel closes the connection:
    /// four probes, a quarter of this apart (at least 4 s while `tcp_keepalive` is on). 20 s,
    /// as `http2.keepalive_timeout`.
    #[serde(with = "humantime_serde")]
    pub tcp_keepalive_timeout: Duration,
    /// Close (with GOAWAY) a connection that had no RPC in flight for this long (`0s`: off).
    /// 15 min returns descriptors and memory held by clients that went quiet; a client
    /// reconnects on its next call.
    #[serde(with = "humantime_serde")]
    pub max_idle: Duration,
    /// Send GOAWAY to a connection after this age (`0s`: off). 30 min makes clients
    /// re-resolve and rebalance after a scale-out, which long-lived HTTP/2 connections
    /// otherwise never do.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Fraction (0 to 1) by which each connection's `max_age` is randomly shortened or
    /// lengthened, ±10% by default, so clients that connected together do not all
    /// reconnect together.
    pub max_age_jitter: f64,
    /// After the GOAWAY for age or idleness, in-flight RPCs get this long to finish before
    /// the connection is closed. 30 s covers ordinary RPCs; a stream longer than that is
    /// cut and its client reconnects.
    #[serde(with = "humantime_serde")]
    pub max_age_grace: Duration,
    /// Connections open at once (`0`: unlimited). Past it a new connection is closed on
    /// arrival and counted (`keel_server_connections_refused_total`): open connections keep
    /// their service and memory stays bounded instead of the process running out of
    /// descriptors. 10,000 fits the default descriptor limits of container runtimes.
    pub max_connections: usize,
    /// A new connection must start speaking (the HTTP/2 preface and a first frame, or an
    /// HTTP/1.1 request head; over TLS, the TLS handshake first) within this time of its
    /// arrival, or it is closed (`0s`: off). 10 s frees
    /// sockets that connect and say nothing, long before `max_idle` would.
    #[serde(with = "humantime_serde")]
    pub handshake_timeout: Duration,
    /// A gRPC request message (or a whole non-gRPC request body) must arrive within this
    /// time of its first byte, or the call fails with DEADLINE_EXCEEDED and the stream is
    /// reset (`0s`: off). 30 s carries a 4 MiB message at ~140 KiB/s; a peer trickling
    /// bytes holds a stream no longer. Quiet gaps between messages are not limited.
    #[serde(with = "humantime_serde")]
    pub body_timeout: Duration,
    /// Largest HTTP/1.1 read buffer per connection (request heads must fit; at least 8 KiB,
    /// hyper's minimum). 64 KiB: four times `http2.max_header_list_size`.
    pub http1_max_buffer: usize,
}

impl Default for ConnectionConfig {
    fn default() -> Self {
        Self {
            tcp_nodelay: true,
            tcp_keepalive: Duration::from_secs(60),
            tcp_keepalive_timeout: Duration::from_secs(20),
            max_idle: Duration::from_secs(15 * 60),
            max_age: Duration::from_secs(30 * 60),
            max_age_jitter: 0.1,
            max_age_grace: Duration::from_secs(30),
            max_connections: 10_000,
            handshake_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(30),
            http1_max_buffer: 64 << 10,
        }
    }
}

/// Limits that keep one client or one burst from taking the server down.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct LimitsConfig {
    /// Largest message accepted, in bytes (at least 1); larger ones fail with
    /// RESOURCE_EXHAUSTED. 4 MiB, as every gRPC implementation, so peers agree on what fits.
    pub max_recv_message_size: usize,
    /// Largest message sent, in bytes (at least 1); a larger response fails with
    /// RESOURCE_EXHAUSTED instead of reaching a client that would reject it anyway. 4 MiB,
    /// matching the receive default of every gRPC client.
    pub max_send_message_size: usize,
    /// RPCs in flight across the whole server (`0`: unlimited; at most 2^61-1, tokio's
    /// semaphore). Past it new RPCs fail fast with RESOURCE_EXHAUSTED instead of queueing
    /// without bound: a queue only turns overload into timeouts and memory growth. 4096 suits a small instance; size it to
    /// what the service can hold in memory at once.
    pub concurrency_limit: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            max_recv_message_size: 4 << 20,
            max_send_message_size: 4 << 20,
            concurrency_limit: 4096,
        }
    }
}

/// Graceful shutdown on SIGTERM or SIGINT.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ShutdownConfig {
    /// Time between reporting NOT_SERVING and refusing connections, during which RPCs are still
    /// served (shorter than `timeout`). 5 s lets load balancers and Kubernetes endpoints notice
    /// and stop routing.
    #[serde(with = "humantime_serde")]
    pub drain_delay: Duration,
    /// Total time from the signal to exit (above 0s). In-flight RPCs still running then are
    /// cut off. 30 s matches Kubernetes' default termination grace period.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            drain_delay: Duration::from_secs(5),
            timeout: Duration::from_secs(30),
        }
    }
}

/// Observability of every call (see [`crate::observe`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ObserveConfig {
    /// Count, log and trace every call: the `grpc_server_*` metrics, the "finished call"
    /// records and server spans. On: it costs little (docs/BENCHMARKS.md) and a server
    /// nobody can see into is not production-ready. Off only to measure what it costs.
    pub enabled: bool,
    /// Response payloads on sampled spans, for the responses a predicate selects.
    pub payloads: PayloadConfig,
    /// Label the `grpc_server_*` series with the caller's identity: `peer_identity` is the
    /// principal its client certificate proved (SPIFFE ID, else first DNS SAN, else
    /// subject), `""` for a caller without one (plaintext, or no client certificate). Off:
    /// go-grpc-middleware's labels exactly, as dashboards and alerts expect, and logs and
    /// spans carry the identity anyway. Meant for the bounded set of services that call a
    /// service over mutual TLS, never end users: every identity multiplies each method's
    /// series, and past 100 identities the rest share `peer_identity="other"`.
    pub identity_label: bool,
}

impl Default for ObserveConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            payloads: PayloadConfig::default(),
            identity_label: false,
        }
    }
}

impl Validate for ServerConfig {
    fn check(&self, checks: &mut Checks) {
        checks.nested("http2", &self.http2);
        checks.nested("connection", &self.connection);
        checks.nested("limits", &self.limits);
        checks.nested("shutdown", &self.shutdown);
        checks.nested("observe", &self.observe);
        checks.nested("tls", &self.tls);
        checks.nested("admin_tls", &self.admin_tls);
        checks.nested("auth", &self.auth);
        checks.between(
            "serving_threads",
            self.serving_threads,
            0..=crate::serving::MAX_THREADS,
            "",
        );
    }
}

impl Validate for Http2Config {
    fn check(&self, checks: &mut Checks) {
        checks.duration("keepalive_interval", self.keepalive_interval);
        checks.duration("keepalive_timeout", self.keepalive_timeout);
        checks.require(
            self.keepalive_interval.is_zero() || !self.keepalive_timeout.is_zero(),
            "keepalive_timeout",
            DurationText(self.keepalive_timeout),
            "must be above 0s while http2.keepalive_interval is on",
        );
        checks.at_least("max_concurrent_streams", self.max_concurrent_streams, 1, "");
        // RFC 9113 §6.5.2 and §6.9.2 bound these settings; h2 asserts on the upper bounds.
        let window = 65_535..=(1 << 31) - 1;
        checks.between(
            "initial_stream_window",
            self.initial_stream_window,
            window.clone(),
            " bytes",
        );
        checks.between(
            "initial_connection_window",
            self.initial_connection_window,
            window,
            " bytes",
        );
        checks.between(
            "max_frame_size",
            self.max_frame_size,
            16_384..=16_777_215,
            " bytes",
        );
        checks.at_least(
            "max_header_list_size",
            self.max_header_list_size,
            1024,
            " bytes",
        );
        checks.require(
            self.max_pending_accept_reset_streams > 0,
            "max_pending_accept_reset_streams",
            self.max_pending_accept_reset_streams,
            "must be at least 1: at 0 a client's first cancelled call closes its connection",
        );
        // hyper asserts that a send buffer fits in a u32.
        checks.between(
            "max_send_buffer",
            self.max_send_buffer,
            1..=u32::MAX as usize,
            " bytes",
        );
    }
}

/// Keepalive probes sent before an unanswered connection is closed.
pub(crate) const KEEPALIVE_PROBES: u32 = 4;

/// Linux's bound on the idle time and the gap between probes (`TCP_KEEPIDLE`,
/// `TCP_KEEPINTVL`).
const MAX_KEEPALIVE_PROBE_GAP: Duration = Duration::from_secs(32_767);

impl Validate for ConnectionConfig {
    fn check(&self, checks: &mut Checks) {
        checks.require(
            self.tcp_keepalive.is_zero()
                || (Duration::from_secs(1)..=MAX_KEEPALIVE_PROBE_GAP).contains(&self.tcp_keepalive),
            "tcp_keepalive",
            DurationText(self.tcp_keepalive),
            "must be 0s (off) or between 1s and 32767s",
        );
        checks.require(
            self.tcp_keepalive.is_zero()
                || (Duration::from_secs(4)..=MAX_KEEPALIVE_PROBE_GAP * KEEPALIVE_PROBES)
                    .contains(&self.tcp_keepalive_timeout),
            "tcp_keepalive_timeout",
            DurationText(self.tcp_keepalive_timeout),
            "must be between 4s and 131068s while connection.tcp_keepalive is on",
        );
        checks.duration("max_idle", self.max_idle);
        checks.duration("max_age", self.max_age);
        checks.fraction("max_age_jitter", self.max_age_jitter);
        checks.duration("max_age_grace", self.max_age_grace);
        checks.duration("handshake_timeout", self.handshake_timeout);
        checks.duration("body_timeout", self.body_timeout);
        // hyper asserts that its HTTP/1.1 buffer holds at least 8 KiB.
        checks.at_least("http1_max_buffer", self.http1_max_buffer, 8192, " bytes");
    }
}

impl Validate for LimitsConfig {
    fn check(&self, checks: &mut Checks) {
        checks.at_least("max_recv_message_size", self.max_recv_message_size, 1, "");
        checks.at_least("max_send_message_size", self.max_send_message_size, 1, "");
        // The permits of tokio's semaphore, which panics past them.
        let most = tokio::sync::Semaphore::MAX_PERMITS;
        checks.require(
            self.concurrency_limit <= most,
            "concurrency_limit",
            self.concurrency_limit,
            format!("must be at most {most} (0: unlimited)"),
        );
    }
}

impl Validate for ShutdownConfig {
    fn check(&self, checks: &mut Checks) {
        checks.positive_duration("timeout", self.timeout);
        checks.duration("drain_delay", self.drain_delay);
        checks.require(
            self.drain_delay < self.timeout,
            "drain_delay",
            DurationText(self.drain_delay),
            format!(
                "must be shorter than shutdown.timeout ({}), or in-flight RPCs get no time to \
                 finish",
                DurationText(self.timeout)
            ),
        );
    }
}

impl Validate for ObserveConfig {
    fn check(&self, checks: &mut Checks) {
        checks.nested("payloads", &self.payloads);
    }
}
