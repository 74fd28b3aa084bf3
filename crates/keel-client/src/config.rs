//! Channel settings, with defaults a grpc-go user would expect; readable from TOML or JSON
//! (serde) like the server's, and checked when the channel is built ([`Validate`]).

use std::time::Duration;

use keel_core::settings::{Checks, DurationText, Validate};
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
#[non_exhaustive]
pub struct KeepaliveConfig {
    /// Send a PING after this long without frames (above 0s); `None` (the default, as in
    /// grpc-go) sends none. Servers reject pings more frequent than their policy allows (Keel's
    /// and grpc-go's default minimum is 5 minutes without calls in flight).
    #[serde(with = "humantime_serde")]
    pub interval: Option<Duration>,
    /// Close the connection if a PING is not answered within this (20 s; above 0s).
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
#[non_exhaustive]
pub struct Http2Config {
    /// Initial stream window in bytes (65,535 to 2^31-1).
    pub initial_stream_window: Option<u32>,
    /// Initial connection window in bytes (65,535 to 2^31-1).
    pub initial_connection_window: Option<u32>,
    /// Grow windows with the measured bandwidth-delay product (BDP probing); off by
    /// default. It starts the connection window at 64 KiB, and h2 (0.4.20 and later)
    /// closes a connection holding more unread small DATA frames than half its window
    /// allows, which ~130 concurrent small responses on one connection reach.
    pub adaptive_window: bool,
    /// The largest response header list (headers or trailers, HTTP/2's
    /// SETTINGS_MAX_HEADER_LIST_SIZE) in bytes (at least 1 KiB): 16 KiB, grpc-core's hard
    /// limit, which bounds what one response can make the client hold. Response headers
    /// over it fail the call with INTERNAL naming this setting; over four times it, h2
    /// closes the connection. Trailers over it lose the entries past the limit (h2 drops them
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
///
/// [`super::ChannelBuilder::build`] checks every rule a field states ([`Validate`]) and
/// refuses a setting that cannot be used with an [`InvalidSetting`] naming its key. The
/// structs are `#[non_exhaustive]`: start from `Default` and set fields.
///
/// ```
/// use keel_client::{ChannelConfig, Validate};
///
/// let mut config = ChannelConfig::default();
/// config.connect_backoff.multiplier = 0.5;
/// let error = config.validate().unwrap_err();
/// assert_eq!(
///     error.to_string(),
///     "connect_backoff.multiplier = 0.5: must be between 1 and 100"
/// );
/// ```
///
/// [`InvalidSetting`]: keel_core::settings::InvalidSetting
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct ChannelConfig {
    /// The load-balancing policy (`round_robin`).
    pub policy: Policy,
    /// HTTP/2 connections per backend (1; 1 to 1024). More spread calls over more connections (h2
    /// serializes a connection's frames behind one lock); calls never open connections.
    pub connections_per_backend: usize,
    /// The `:authority` calls carry (`host[:port]`); the target's host:port by default.
    pub authority: Option<String>,
    /// The deadline of calls that set none (none by default; above 0s).
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
    /// Time constant of `p2c_ewma`'s latency average (10 s; above 0s).
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

/// Most connections one backend may be given: a bound on the tasks and sockets a backend
/// costs.
const MAX_CONNECTIONS_PER_BACKEND: usize = 1024;

impl Validate for ChannelConfig {
    fn check(&self, checks: &mut Checks) {
        checks.between(
            "connections_per_backend",
            self.connections_per_backend,
            1..=MAX_CONNECTIONS_PER_BACKEND,
            "",
        );
        if let Some(authority) = &self.authority {
            checks.require(
                authority.parse::<http::uri::Authority>().is_ok(),
                "authority",
                format_args!("{authority:?}"),
                "must be a URI authority, host[:port]",
            );
        }
        if let Some(timeout) = self.timeout {
            checks.positive_duration("timeout", timeout);
        }
        checks.nested("connect_backoff", &self.connect_backoff);
        checks.nested("dns", &self.dns);
        checks.nested("keepalive", &self.keepalive);
        checks.nested("http2", &self.http2);
        if let Some(outlier) = &self.outlier {
            checks.nested("outlier", outlier);
        }
        checks.positive_duration("ewma_decay", self.ewma_decay);
    }
}

impl Validate for BackoffConfig {
    fn check(&self, checks: &mut Checks) {
        checks.positive_duration("initial", self.initial);
        // Below 1 the waits shrink; far above it `Duration::mul_f64` overflows.
        checks.between("multiplier", self.multiplier, 1.0..=100.0, "");
        checks.fraction("jitter", self.jitter);
        checks.positive_duration("max", self.max);
        checks.require(
            self.max >= self.initial,
            "max",
            DurationText(self.max),
            format!(
                "must be at least connect_backoff.initial ({})",
                DurationText(self.initial)
            ),
        );
        checks.positive_duration("min_connect_timeout", self.min_connect_timeout);
    }
}

impl Validate for DnsSettings {
    fn check(&self, checks: &mut Checks) {
        // At 0s the resolver would query without pause.
        checks.positive_duration("refresh_interval", self.refresh_interval);
        checks.duration("min_interval", self.min_interval);
    }
}

impl Validate for KeepaliveConfig {
    fn check(&self, checks: &mut Checks) {
        if let Some(interval) = self.interval {
            checks.positive_duration("interval", interval);
        }
        checks.positive_duration("timeout", self.timeout);
    }
}

impl Validate for Http2Config {
    fn check(&self, checks: &mut Checks) {
        // RFC 9113 §6.5.2 and §6.9.2; h2 asserts on the upper bound.
        let window = 65_535..=(1 << 31) - 1;
        if let Some(size) = self.initial_stream_window {
            checks.between("initial_stream_window", size, window.clone(), " bytes");
        }
        if let Some(size) = self.initial_connection_window {
            checks.between("initial_connection_window", size, window, " bytes");
        }
        checks.at_least(
            "max_header_list_size",
            self.max_header_list_size,
            1024,
            " bytes",
        );
    }
}

impl Validate for OutlierConfig {
    fn check(&self, checks: &mut Checks) {
        checks.at_least("consecutive_failures", self.consecutive_failures, 1, "");
        checks.positive_duration("base_ejection_time", self.base_ejection_time);
        checks.positive_duration("max_ejection_time", self.max_ejection_time);
        checks.require(
            self.max_ejection_time >= self.base_ejection_time,
            "max_ejection_time",
            DurationText(self.max_ejection_time),
            format!(
                "must be at least outlier.base_ejection_time ({})",
                DurationText(self.base_ejection_time)
            ),
        );
        checks.between(
            "max_ejection_percent",
            self.max_ejection_percent,
            0..=100,
            "",
        );
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
