//! Every validated channel setting, as a table: each bad value is refused by
//! `ChannelBuilder::build` with a message naming the key, and each boundary value is
//! accepted. The configs are read from TOML, as an application would read them.

use keel_client::{Channel, ChannelConfig, Validate};

/// TOML (dotted keys, one per line), and the refusal it must get.
const BAD: &[(&str, &str)] = &[
    (
        "connections_per_backend = 0",
        "connections_per_backend = 0: must be between 1 and 1024",
    ),
    (
        "connections_per_backend = 1025",
        "connections_per_backend = 1025: must be between 1 and 1024",
    ),
    (
        r#"authority = "a b""#,
        r#"authority = "a b": must be a URI authority, host[:port]"#,
    ),
    (r#"timeout = "0s""#, "timeout = 0s: must be above 0s"),
    (
        r#"timeout = "500000000000years""#,
        "timeout = 500000000000years: must be at most 1year",
    ),
    (
        r#"connect_backoff.initial = "0s""#,
        "connect_backoff.initial = 0s: must be above 0s",
    ),
    (
        "connect_backoff.multiplier = 0.5",
        "connect_backoff.multiplier = 0.5: must be between 1 and 100",
    ),
    (
        "connect_backoff.multiplier = 1e20",
        "connect_backoff.multiplier = 100000000000000000000: must be between 1 and 100",
    ),
    (
        "connect_backoff.multiplier = nan",
        "connect_backoff.multiplier = NaN: must be between 1 and 100",
    ),
    (
        "connect_backoff.jitter = -0.1",
        "connect_backoff.jitter = -0.1: must be a fraction between 0 and 1",
    ),
    (
        "connect_backoff.jitter = 1.5",
        "connect_backoff.jitter = 1.5: must be a fraction between 0 and 1",
    ),
    (
        r#"connect_backoff.max = "0s""#,
        "connect_backoff.max = 0s: must be above 0s",
    ),
    (
        r#"connect_backoff.max = "500ms""#,
        "connect_backoff.max = 500ms: must be at least connect_backoff.initial (1s)",
    ),
    (
        "connect_backoff.initial = \"2years\"\nconnect_backoff.max = \"2years\"",
        "connect_backoff.initial = 2years: must be at most 1year",
    ),
    (
        r#"connect_backoff.min_connect_timeout = "0s""#,
        "connect_backoff.min_connect_timeout = 0s: must be above 0s",
    ),
    (
        r#"dns.refresh_interval = "0s""#,
        "dns.refresh_interval = 0s: must be above 0s",
    ),
    (
        r#"dns.min_interval = "2years""#,
        "dns.min_interval = 2years: must be at most 1year",
    ),
    (
        r#"keepalive.interval = "0s""#,
        "keepalive.interval = 0s: must be above 0s",
    ),
    (
        r#"keepalive.timeout = "0s""#,
        "keepalive.timeout = 0s: must be above 0s",
    ),
    (
        "http2.initial_stream_window = 65534",
        "http2.initial_stream_window = 65534: must be between 65535 and 2147483647 bytes",
    ),
    (
        "http2.initial_stream_window = 2147483648",
        "http2.initial_stream_window = 2147483648: must be between 65535 and 2147483647 bytes",
    ),
    (
        "http2.initial_connection_window = 65534",
        "http2.initial_connection_window = 65534: must be between 65535 and 2147483647 bytes",
    ),
    (
        "http2.initial_connection_window = 2147483648",
        "http2.initial_connection_window = 2147483648: must be between 65535 and 2147483647 \
         bytes",
    ),
    (
        "http2.max_header_list_size = 1023",
        "http2.max_header_list_size = 1023: must be at least 1024 bytes",
    ),
    (
        "outlier.consecutive_failures = 0",
        "outlier.consecutive_failures = 0: must be at least 1",
    ),
    (
        r#"outlier.base_ejection_time = "0s""#,
        "outlier.base_ejection_time = 0s: must be above 0s",
    ),
    (
        r#"outlier.max_ejection_time = "10s""#,
        "outlier.max_ejection_time = 10s: must be at least outlier.base_ejection_time (30s)",
    ),
    (
        "outlier.max_ejection_percent = 101",
        "outlier.max_ejection_percent = 101: must be between 0 and 100",
    ),
    (r#"ewma_decay = "0s""#, "ewma_decay = 0s: must be above 0s"),
];

/// TOML at the edge of what is allowed.
const GOOD: &[&str] = &[
    "connections_per_backend = 1",
    "connections_per_backend = 1024",
    r#"authority = "payments.internal:50051""#,
    r#"timeout = "1ns""#,
    r#"timeout = "1year""#,
    "connect_backoff.initial = \"1ns\"\nconnect_backoff.max = \"1ns\"",
    "connect_backoff.initial = \"1year\"\nconnect_backoff.max = \"1year\"",
    "connect_backoff.multiplier = 1.0\nconnect_backoff.jitter = 0.0",
    "connect_backoff.multiplier = 100.0\nconnect_backoff.jitter = 1.0",
    r#"connect_backoff.min_connect_timeout = "1ns""#,
    "dns.refresh_interval = \"1ns\"\ndns.min_interval = \"0s\"",
    "dns.refresh_interval = \"1year\"\ndns.min_interval = \"1year\"",
    "keepalive.interval = \"1ns\"\nkeepalive.timeout = \"1ns\"",
    "keepalive.interval = \"1year\"\nkeepalive.timeout = \"1year\"",
    "http2.initial_stream_window = 65535\nhttp2.initial_connection_window = 65535",
    "http2.initial_stream_window = 2147483647\nhttp2.initial_connection_window = 2147483647",
    "http2.max_header_list_size = 1024",
    "outlier.consecutive_failures = 1\noutlier.max_ejection_percent = 0",
    "outlier.max_ejection_percent = 100",
    "outlier.base_ejection_time = \"1year\"\noutlier.max_ejection_time = \"1year\"",
    "outlier.base_ejection_time = \"1ns\"\noutlier.max_ejection_time = \"1ns\"",
    r#"ewma_decay = "1ns""#,
];

fn config(toml: &str) -> ChannelConfig {
    toml::from_str(toml).unwrap_or_else(|error| panic!("{toml}: {error}"))
}

fn build(config: ChannelConfig) -> Result<Channel, keel_client::InvalidSetting> {
    Channel::builder("static:///127.0.0.1:1")
        .unwrap()
        .config(config)
        .build()
}

#[tokio::test]
async fn every_bad_value_is_refused_naming_its_key() {
    for (toml, message) in BAD {
        let setting = build(config(toml)).unwrap_err();
        assert_eq!(setting.to_string(), *message, "{toml}");
        assert_eq!(setting.key, message.split(" = ").next().unwrap());
    }
}

#[tokio::test]
async fn every_boundary_value_is_accepted() {
    for toml in GOOD {
        let built = build(config(toml));
        assert!(built.is_ok(), "{toml}: {}", built.unwrap_err());
    }
}

#[tokio::test]
async fn builder_setters_are_checked_too() {
    let refused = Channel::builder("static:///127.0.0.1:1")
        .unwrap()
        .timeout(std::time::Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(refused.to_string(), "timeout = 0s: must be above 0s");
}

#[test]
fn the_defaults_are_valid() {
    // `Channel::new` relies on it.
    assert_eq!(ChannelConfig::default().validate(), Ok(()));
}
