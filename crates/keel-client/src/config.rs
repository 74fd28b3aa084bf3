//! Channel settings, with defaults a grpc-go user would expect; readable from TOML or JSON
//! (serde) like the server's.

use std::time::Duration;

use serde::Deserialize;

use super::backoff::BackoffConfig;
use super::outlier::OutlierConfig;
use super::resolver::DnsSettings;

/// How a channel spreads calls over its backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// The first address that connects takes every call; the next is tried when it fails.
    PickFirst,
    /// Every ready backend in turn.
    #[default]
    RoundRobin,
    /// The less loaded of two random backends, by calls outstanding (streams included).
    LeastRequest,
    /// The cheaper of two random backends, by peak-EWMA latency times outstanding calls.
    P2cEwma,
}

/// Client keepalive: HTTP/2 PINGs that detect a dead connection before a call does.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeepaliveConfig {
    /// Send a PING after this long without frames; `None` (the default, as in grpc-go)
    /// sends none. Servers reject pings more frequent than their policy allows (Keel's
    /// and grpc-go's default minimum is 5 minutes without calls in flight).
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Close the connection if a PING is not answered within this (20 s).
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Also ping while no call is in flight (false).
    pub while_idle: bool,
}

impl Default for KeepaliveConfig {
    fn default() -> Self {
        Self {
            interval: None,
            timeout: Duration::from_secs(20),
            while_idle: false,
        }
    }
}

/// HTTP/2 settings: flow control (hyper's defaults when unset: 2 MiB per stream, 5 MiB
/// per connection) and the largest header block a server may send.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Http2Config {
    /// Initial stream window in bytes.
    pub initial_stream_window: Option<u32>,
    /// Initial connection window in bytes.
    pub initial_connection_window: Option<u32>,
    /// Grow windows with the measured bandwidth-delay product (BDP probing); off by
    /// default. It starts the connection window at 64 KiB, and h2 (0.4.20 and later)
    /// closes a connection holding more unread small DATA frames than half its window
    /// allows, which ~130 concurrent small responses on one connection reach.
    pub adaptive_window: bool,
    /// The largest response header list (headers or trailers, HTTP/2's
    /// SETTINGS_MAX_HEADER_LIST_SIZE) in bytes: 16 KiB, grpc-core's hard limit, which
    /// bounds what one response can make the client hold. Response headers over it fail
    /// the call with INTERNAL naming this setting; over four times it, h2 closes the
    /// connection. Trailers over it lose the entries past the limit (h2 drops them
    /// silently), and a call whose `grpc-status` went with them fails with UNKNOWN.
    pub max_header_list_size: u32,
}

impl Default for Http2Config {
    fn default() -> Self {
        Self {
            initial_stream_window: None,
            initial_connection_window: None,
            adaptive_window: false,
            max_header_list_size: 16 * 1024,
        }
    }
}

/// Everything a [`super::Channel`] can be tuned with.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChannelConfig {
    /// The load-balancing policy (`round_robin`).
    pub policy: Policy,
    /// HTTP/2 connections per backend (1). More spread calls over more connections (h2
    /// serializes a connection's frames behind one lock); calls never open connections.
    pub connections_per_backend: usize,
    /// The `:authority` calls carry; the target's host:port by default.
    pub authority: Option<String>,
    /// The deadline of calls that set none (none by default).
    #[serde(with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Wait for a backend to become ready rather than fail with UNAVAILABLE when every
    /// backend is failing (false, as gRPC's default "fail fast").
    pub wait_for_ready: bool,
    /// Reconnection backoff.
    pub connect_backoff: BackoffConfig,
    /// How often DNS targets are resolved again.
    pub dns: DnsSettings,
    /// Client keepalive pings.
    pub keepalive: KeepaliveConfig,
    /// HTTP/2 flow control.
    pub http2: Http2Config,
    /// Watch each backend's health (grpc.health.v1 `Watch`) for this service name (`""`
    /// for the whole server); backends not SERVING get no calls. Off by default.
    pub health_check: Option<String>,
    /// Eject backends after consecutive failures. Off by default.
    pub outlier: Option<OutlierConfig>,
    /// Time constant of `p2c_ewma`'s latency average (10 s).
    #[serde(with = "humantime_serde")]
    pub ewma_decay: Duration,
}

impl Default for ChannelConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            connections_per_backend: 1,
            authority: None,
            timeout: None,
            wait_for_ready: false,
            connect_backoff: BackoffConfig::default(),
            dns: DnsSettings::default(),
            keepalive: KeepaliveConfig::default(),
            http2: Http2Config::default(),
            health_check: None,
            outlier: None,
            ewma_decay: Duration::from_secs(10),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_settings_override_defaults_and_typos_are_refused() {
        let config: ChannelConfig = toml::from_str(
            "policy = \"least_request\"\nconnections_per_backend = 4\ntimeout = \"2s\"\n\
             [keepalive]\ninterval = \"30s\"\n[connect_backoff]\ninitial = \"100ms\"\n",
        )
        .unwrap();
        assert_eq!(config.policy, Policy::LeastRequest);
        assert_eq!(config.connections_per_backend, 4);
        assert_eq!(config.timeout, Some(Duration::from_secs(2)));
        assert_eq!(config.keepalive.interval, Some(Duration::from_secs(30)));
        assert_eq!(config.connect_backoff.initial, Duration::from_millis(100));
        assert_eq!(config.connect_backoff.multiplier, 1.6);
        let error = toml::from_str::<ChannelConfig>("polcy = \"round_robin\"").unwrap_err();
        assert!(error.to_string().contains("polcy"), "{error}");
    }
}
