//! The flags of `keel gateway`, checked: the upstream (plaintext only), the listen address,
//! where descriptors come from and how often they are re-read, and the gateway's options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use http::HeaderName;
use keel_gateway::{GatewayOptions, JsonOptions};

/// Serves the `google.api.http` rules of a gRPC service as REST/JSON, forwarding every call
/// to the service over gRPC. Descriptors come from the service's reflection (or a
/// descriptor set); no generated code, no .proto files at hand.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  payments &                                                 # gRPC on 127.0.0.1:50051
  keel gateway --upstream http://127.0.0.1:50051             # REST on 127.0.0.1:8080
  curl -s localhost:8080/v1/accounts --json '{\"accountId\": \"alice\", \"currency\": \"USD\"}'
  curl -s localhost:8080/v1/accounts/alice:deposit --json '{\"amountMinor\": \"10000\", \"idempotencyKey\": \"d1\"}'
  curl -s 'localhost:8080/v1/accounts/alice/payments?page_size=10'   # a page: {\"payments\": [...]}
  keel gateway --upstream http://10.0.0.7:50051 --listen 0.0.0.0:8080 --refresh 5m
  keel gateway --upstream http://127.0.0.1:50051 --set connection.max_connections=2000
  buf build proto -o payments.binpb                           # or protoc --include_imports -o
  keel gateway --upstream http://127.0.0.1:50051 --descriptor-set payments.binpb \\
    --service payments.v1.PaymentService --proto-names --forward-header x-tenant
  kill -HUP <PID of keel gateway>                            # re-read descriptors now

Descriptors: by default the upstream's reflection (grpc.reflection.v1, or v1alpha) gives
every service (except reflection and health) with its files; a service without
google.api.http rules is served nothing over REST, with a warning. With --descriptor-set,
FILE (a FileDescriptorSet with imports, e.g. `protoc --include_imports -o FILE` or `buf
build -o FILE`) is used instead and reflection is never asked. The rules must reach the
gateway with the files: Keel's servers, grpc-go's and grpc-java's send them; servers whose
reflection re-encodes files without custom options (tonic-reflection does) need
--descriptor-set.

Reloading: SIGHUP, and every --refresh interval, loads the descriptors again the same way
(reflection, or FILE re-read). A reload that fails keeps the routes served and logs a
warning; one that succeeds swaps the routes at once, and requests in flight finish.

The same port also takes gRPC-Web and plain gRPC, passed to the upstream as they are.
Prints `gateway listening on ADDR` and `admin listening on ADDR` once bound. It serves on
Keel's serving core, as `keel serve` does: connection limits and timeouts, metrics on the
admin port, and graceful shutdown: SIGTERM or SIGINT makes /readyz answer 503, requests
are still served for shutdown.drain_delay (5s), then the port closes and requests in
flight finish, up to shutdown.timeout (30s); a second signal closes everything at once.

Exit status:
  0       stopped by SIGTERM or SIGINT
  1       the upstream could not be reached or its reflection failed; cannot listen
  2       usage or configuration error (bad flags, an https:// upstream, a descriptor set
          that does not decode, an unknown --service, no service with HTTP rules)")]
pub struct GatewayArgs {
    /// The gRPC service to forward to: http://HOST:PORT (plaintext h2c; TLS upstreams are
    /// not supported yet)
    #[arg(long, value_name = "URI", value_parser = upstream)]
    upstream: String,

    /// Address to serve HTTP/1.1 and h2c on
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Admin HTTP address: /healthz, /readyz (503 once shutdown begins), /metrics
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9091")]
    admin_listen: SocketAddr,

    /// TOML configuration file for the serving side (keys as `keel serve --print-config`
    /// prints them: connection limits and timeouts, http2, shutdown)
    #[arg(long, env = "KEEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Override one serving setting, e.g. --set connection.max_connections=2000 (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,

    /// Read descriptors from this FileDescriptorSet instead of the upstream's reflection
    #[arg(long, value_name = "FILE")]
    descriptor_set: Option<PathBuf>,

    /// Reload descriptors this often, e.g. 30s, 5m (SIGHUP reloads at any time)
    #[arg(long, value_name = "DURATION", value_parser = interval)]
    refresh: Option<Duration>,

    /// Serve only this service's rules, by full name (repeatable; default: every service)
    #[arg(long = "service", value_name = "NAME")]
    services: Vec<String>,

    /// Write fields that hold their default value (0, "", false, empty lists)
    #[arg(long)]
    emit_defaults: bool,

    /// Write the .proto field names instead of lowerCamelCase
    #[arg(long)]
    proto_names: bool,

    /// Reject unknown fields in bodies and unknown query parameters (default: ignored)
    #[arg(long)]
    strict: bool,

    /// Also pass this request header to the service as metadata (repeatable); Authorization,
    /// Idempotency-Key, trace headers and Grpc-Metadata-* always pass
    #[arg(long = "forward-header", value_name = "NAME", value_parser = header_name)]
    forward_headers: Vec<HeaderName>,
}

impl GatewayArgs {
    /// The upstream URI, `http://HOST:PORT`.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The serving configuration: defaults, `--config`, `KEEL_*` variables, `--set`, and
    /// the two addresses.
    pub fn server_config(&self) -> anyhow::Result<keel::config::ServerConfig> {
        crate::serve::load_config(
            self.config.as_ref(),
            Some(&self.listen.to_string()),
            Some(&self.admin_listen.to_string()),
            &self.set,
        )
    }

    /// The descriptor set file, when descriptors do not come from reflection.
    pub fn descriptor_set(&self) -> Option<&PathBuf> {
        self.descriptor_set.as_ref()
    }

    /// How often descriptors are reloaded, if at all.
    pub fn refresh(&self) -> Option<Duration> {
        self.refresh
    }

    /// The services whose rules are served; empty for all.
    pub fn services(&self) -> &[String] {
        &self.services
    }

    /// How the gateway reads and writes requests.
    pub fn options(&self) -> GatewayOptions {
        GatewayOptions {
            json: JsonOptions {
                emit_defaults: self.emit_defaults,
                proto_names: self.proto_names,
                strict: self.strict,
            },
            forward_headers: self.forward_headers.clone(),
            ..GatewayOptions::default()
        }
    }
}

/// `--upstream`: `http://HOST:PORT` only.
fn upstream(text: &str) -> Result<String, String> {
    if text.starts_with("https://") {
        return Err(
            "TLS upstreams are not supported yet; give the plaintext (h2c) \
                    address as http://HOST:PORT"
                .to_owned(),
        );
    }
    let Some(rest) = text.strip_prefix("http://") else {
        return Err("the upstream must be http://HOST:PORT".to_owned());
    };
    keel::client::Target::parse(text).map_err(|error| error.to_string())?;
    Ok(format!("http://{}", rest.trim_end_matches('/')))
}

/// `--refresh`: a duration of at least one second.
fn interval(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| error.to_string())?;
    if duration < Duration::from_secs(1) {
        return Err("the refresh interval must be at least 1s".to_owned());
    }
    Ok(duration)
}

/// `--forward-header`: a valid header name, any case.
fn header_name(text: &str) -> Result<HeaderName, String> {
    HeaderName::from_bytes(text.trim().as_bytes())
        .map_err(|_| format!("`{text}` is not a valid HTTP header name"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstreams() {
        let check = |text: &str, expect: Result<&str, &str>| match (upstream(text), expect) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{text}"),
            (Err(got), Err(part)) => assert!(got.contains(part), "{text}: {got}"),
            (got, _) => panic!("{text}: {got:?}"),
        };
        check("http://127.0.0.1:50051", Ok("http://127.0.0.1:50051"));
        check("http://payments:50051/", Ok("http://payments:50051"));
        check("http://[::1]:50051", Ok("http://[::1]:50051"));
        check(
            "https://payments:443",
            Err("TLS upstreams are not supported yet"),
        );
        check("ftp://x", Err("must be http://HOST:PORT"));
        check("127.0.0.1:50051", Err("must be http://HOST:PORT"));
        check("http://no-port", Err("host:port"));
    }

    #[test]
    fn refresh_intervals() {
        assert_eq!(interval("5m"), Ok(Duration::from_secs(300)));
        assert!(interval("0s").unwrap_err().contains("at least 1s"));
        assert!(interval("500ms").is_err());
        assert!(interval("soon").is_err());
    }

    #[test]
    fn header_names() {
        assert_eq!(header_name("X-Tenant").unwrap().as_str(), "x-tenant");
        assert!(header_name("bad header").is_err());
        assert!(header_name("").is_err());
    }
}
