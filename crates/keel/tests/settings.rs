//! Every validated server setting, as a table: each bad value is refused by
//! `ServerBuilder::bind`, `HttpServer::bind` and the loader with the same message naming
//! the key, and nothing is bound; each boundary value is accepted by all three. The configs
//! are read straight from TOML, as code could build them, so no loader checks them first.

use std::sync::atomic::{AtomicUsize, Ordering};

use keel::config::{ConfigError, InvalidSetting, Loader, ServerConfig};
use keel::server::HttpServer;
use keel::{Server, ServerError};

/// TOML (dotted keys, one per line), and the refusal it must get.
const BAD: &[(&str, &str)] = &[
    (
        r#"http2.keepalive_interval = "2years""#,
        "http2.keepalive_interval = 2years: must be at most 1year",
    ),
    (
        r#"http2.keepalive_timeout = "2years""#,
        "http2.keepalive_timeout = 2years: must be at most 1year",
    ),
    (
        "http2.keepalive_interval = \"60s\"\nhttp2.keepalive_timeout = \"0s\"",
        "http2.keepalive_timeout = 0s: must be above 0s while http2.keepalive_interval is on",
    ),
    (
        r#"connection.tcp_keepalive = "500ms""#,
        "connection.tcp_keepalive = 500ms: must be 0s (off) or between 1s and 32767s",
    ),
    (
        r#"connection.tcp_keepalive = "10h""#,
        "connection.tcp_keepalive = 10h: must be 0s (off) or between 1s and 32767s",
    ),
    (
        r#"connection.tcp_keepalive_timeout = "3s""#,
        "connection.tcp_keepalive_timeout = 3s: must be between 4s and 131068s while \
         connection.tcp_keepalive is on",
    ),
    (
        "http2.max_concurrent_streams = 0",
        "http2.max_concurrent_streams = 0: must be at least 1",
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
        "http2.max_frame_size = 1",
        "http2.max_frame_size = 1: must be between 16384 and 16777215 bytes",
    ),
    (
        "http2.max_frame_size = 16383",
        "http2.max_frame_size = 16383: must be between 16384 and 16777215 bytes",
    ),
    (
        "http2.max_frame_size = 16777216",
        "http2.max_frame_size = 16777216: must be between 16384 and 16777215 bytes",
    ),
    (
        "http2.max_header_list_size = 1023",
        "http2.max_header_list_size = 1023: must be at least 1024 bytes",
    ),
    (
        "http2.max_pending_accept_reset_streams = 0",
        "http2.max_pending_accept_reset_streams = 0: must be at least 1: at 0 a client's first \
         cancelled call closes its connection",
    ),
    (
        "http2.max_send_buffer = 0",
        "http2.max_send_buffer = 0: must be between 1 and 4294967295 bytes",
    ),
    (
        "http2.max_send_buffer = 4294967296",
        "http2.max_send_buffer = 4294967296: must be between 1 and 4294967295 bytes",
    ),
    (
        r#"connection.max_idle = "2years""#,
        "connection.max_idle = 2years: must be at most 1year",
    ),
    (
        r#"connection.max_age = "500000000000years""#,
        "connection.max_age = 500000000000years: must be at most 1year",
    ),
    (
        "connection.max_age_jitter = 1.5",
        "connection.max_age_jitter = 1.5: must be a fraction between 0 and 1",
    ),
    (
        "connection.max_age_jitter = -0.1",
        "connection.max_age_jitter = -0.1: must be a fraction between 0 and 1",
    ),
    (
        "connection.max_age_jitter = nan",
        "connection.max_age_jitter = NaN: must be a fraction between 0 and 1",
    ),
    (
        r#"connection.max_age_grace = "2years""#,
        "connection.max_age_grace = 2years: must be at most 1year",
    ),
    (
        r#"connection.handshake_timeout = "2years""#,
        "connection.handshake_timeout = 2years: must be at most 1year",
    ),
    (
        r#"connection.body_timeout = "500000000000years""#,
        "connection.body_timeout = 500000000000years: must be at most 1year",
    ),
    (
        "connection.http1_max_buffer = 8191",
        "connection.http1_max_buffer = 8191: must be at least 8192 bytes",
    ),
    (
        "limits.max_recv_message_size = 0",
        "limits.max_recv_message_size = 0: must be at least 1",
    ),
    (
        "limits.max_send_message_size = 0",
        "limits.max_send_message_size = 0: must be at least 1",
    ),
    (
        "limits.concurrency_limit = 2305843009213693952",
        "limits.concurrency_limit = 2305843009213693952: must be at most 2305843009213693951 \
         (0: unlimited)",
    ),
    (
        r#"shutdown.timeout = "0s""#,
        "shutdown.timeout = 0s: must be above 0s",
    ),
    (
        "shutdown.timeout = \"2years\"\nshutdown.drain_delay = \"1s\"",
        "shutdown.timeout = 2years: must be at most 1year",
    ),
    (
        r#"shutdown.drain_delay = "30s""#,
        "shutdown.drain_delay = 30s: must be shorter than shutdown.timeout (30s), or in-flight \
         RPCs get no time to finish",
    ),
    (
        "auth.jwks = \"keys.json\"\nauth.issuer = \"\"",
        r#"auth.issuer = "": must be set when jwks is: tokens from any issuer would pass"#,
    ),
    (
        "auth.jwks = \"keys.json\"\nauth.issuer = \"https://issuer.test\"\nauth.audience = \"\"",
        r#"auth.audience = "": must be set when jwks is: tokens meant for any service would pass"#,
    ),
    (
        r#"auth.audience = "greeter""#,
        r#"auth.audience = "greeter": has no effect without auth.jwks (set the JWKS file, or remove it)"#,
    ),
    (
        r#"auth.clock_skew = "301s""#,
        "auth.clock_skew = 5m 1s: must be at most 5m",
    ),
    (
        r#"auth.reload_interval = "2years""#,
        "auth.reload_interval = 2years: must be at most 1year",
    ),
    (
        r#"tls.key = "server.key""#,
        "tls.key = server.key: must come with cert (the certificate chain of the key)",
    ),
    (
        r#"admin_tls.cert = "server.pem""#,
        "admin_tls.cert = server.pem: must come with key (the certificate's private key)",
    ),
    (
        "tls.cert = \"s.pem\"\ntls.key = \"s.key\"\ntls.client_auth = \"required\"",
        "tls.client_auth = required: must come with client_ca (the roots client certificates \
         are verified against)",
    ),
    (
        "tls.cert = \"s.pem\"\ntls.key = \"s.key\"\ntls.client_ca = \"ca.pem\"",
        "tls.client_ca = ca.pem: must come with client_auth = optional or required (alone it \
         would ask no client for a certificate)",
    ),
    (
        "tls.client_ca = \"ca.pem\"\ntls.client_auth = \"optional\"",
        "tls.client_ca = ca.pem: must come with cert: client certificates are verified only \
         over TLS",
    ),
    (
        r#"tls.reload_interval = "2years""#,
        "tls.reload_interval = 2years: must be at most 1year",
    ),
    (
        r#"observe.payloads.codes = ["OK", "Ok"]"#,
        r#"observe.payloads.codes = "Ok": must list status codes as grpc_code spells them: OK, NotFound, Unavailable, ..."#,
    ),
];

/// TOML at the edge of what is allowed.
const GOOD: &[&str] = &[
    "http2.keepalive_interval = \"0s\"\nhttp2.keepalive_timeout = \"0s\"",
    "http2.keepalive_interval = \"1year\"\nhttp2.keepalive_timeout = \"1year\"",
    "http2.keepalive_timeout = \"1ns\"",
    "connection.tcp_keepalive = \"1s\"\nconnection.tcp_keepalive_timeout = \"4s\"",
    "connection.tcp_keepalive = \"32767s\"\nconnection.tcp_keepalive_timeout = \"131068s\"",
    "connection.tcp_keepalive = \"0s\"\nconnection.tcp_keepalive_timeout = \"0s\"",
    "http2.max_concurrent_streams = 1",
    "http2.initial_stream_window = 65535\nhttp2.initial_connection_window = 65535",
    "http2.initial_stream_window = 2147483647\nhttp2.initial_connection_window = 2147483647",
    "http2.max_frame_size = 16384",
    "http2.max_frame_size = 16777215",
    "http2.max_header_list_size = 1024",
    "http2.max_pending_accept_reset_streams = 1",
    "http2.max_send_buffer = 1",
    "http2.max_send_buffer = 4294967295",
    "connection.max_idle = \"0s\"\nconnection.max_age = \"0s\"\nconnection.max_age_grace = \"0s\"",
    "connection.max_idle = \"1year\"\nconnection.max_age = \"1year\"\n\
     connection.max_age_grace = \"1year\"",
    "connection.max_age_jitter = 0.0",
    "connection.max_age_jitter = 1.0",
    "connection.handshake_timeout = \"0s\"\nconnection.body_timeout = \"0s\"",
    "connection.handshake_timeout = \"1year\"\nconnection.body_timeout = \"1year\"",
    "connection.http1_max_buffer = 8192",
    "connection.max_connections = 0\nadmin_max_connections = 0",
    "limits.max_recv_message_size = 1\nlimits.max_send_message_size = 1",
    "limits.concurrency_limit = 0",
    "limits.concurrency_limit = 2305843009213693951",
    "shutdown.timeout = \"1year\"\nshutdown.drain_delay = \"0s\"",
    "shutdown.timeout = \"1s\"\nshutdown.drain_delay = \"999ms\"",
    "observe.payloads.codes = [\"OK\", \"Canceled\", \"NotFound\", \"Unauthenticated\"]",
    "auth.clock_skew = \"5m\"\nauth.reload_interval = \"0s\"\nauth.require_token = false",
    "auth.clock_skew = \"0s\"\nauth.reload_interval = \"1year\"",
    // TLS stays off (no cert): bind reads no file.
    "tls.reload_interval = \"0s\"\nadmin_tls.reload_interval = \"1year\"",
    "tls.min_version = \"1.3\"\nadmin_tls.min_version = \"1.2\"",
];

/// The config `toml` describes, on ephemeral loopback ports, unchecked.
fn config(toml: &str) -> ServerConfig {
    let text = format!("listen = \"127.0.0.1:0\"\nadmin_listen = \"127.0.0.1:0\"\n{toml}");
    toml::from_str(&text).unwrap_or_else(|error| panic!("{toml}: {error}"))
}

/// What the loader says of `toml` as a config file.
fn load(toml: &str) -> Result<ServerConfig, ConfigError> {
    static FILES: AtomicUsize = AtomicUsize::new(0);
    let path = std::env::temp_dir().join(format!(
        "keel-settings-{}-{}.toml",
        std::process::id(),
        FILES.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&path, format!("listen = \"127.0.0.1:0\"\n{toml}")).unwrap();
    let loaded = Loader::new("KEEL")
        .env(Vec::<(String, String)>::new())
        .file(Some(&path))
        .load::<ServerConfig>();
    std::fs::remove_file(&path).unwrap();
    loaded
}

fn refused(error: ServerError) -> InvalidSetting {
    match error {
        ServerError::Config(setting) => setting,
        other => panic!("not a setting's refusal: {other}"),
    }
}

#[tokio::test]
async fn every_bad_value_is_refused_naming_its_key() {
    for (toml, message) in BAD {
        let key = message.split(" = ").next().unwrap();

        let error = Server::builder(config(toml)).bind().await.unwrap_err();
        assert_eq!(
            error.to_string(),
            format!("invalid setting {message}"),
            "{toml}"
        );
        let setting = refused(error);
        assert_eq!(setting.key, key);
        assert_eq!(setting.to_string(), *message);

        let error = HttpServer::bind(config(toml), "gateway", ())
            .await
            .unwrap_err();
        assert_eq!(refused(error).to_string(), *message, "{toml}");

        match load(toml) {
            Err(ConfigError::Setting { setting, origin }) => {
                assert_eq!(setting.to_string(), *message, "{toml}");
                assert!(origin.starts_with("config file"), "{origin}");
            }
            other => panic!("{toml}: {other:?}"),
        }
    }
}

#[tokio::test]
async fn every_boundary_value_is_accepted() {
    for toml in GOOD {
        let server = Server::builder(config(toml)).bind().await;
        assert!(server.is_ok(), "{toml}: {}", server.unwrap_err());
        let server = HttpServer::bind(config(toml), "gateway", ()).await;
        assert!(server.is_ok(), "{toml}: {}", server.unwrap_err());
        let loaded = load(toml);
        assert!(loaded.is_ok(), "{toml}: {}", loaded.unwrap_err());
    }
}

#[test]
fn the_defaults_are_valid() {
    use keel::config::Validate;
    assert_eq!(ServerConfig::default().validate(), Ok(()));
}
