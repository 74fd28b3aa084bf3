//! The flags of `keel gateway`, checked: the upstream and how to reach it (plaintext, or
//! TLS with the `--upstream-*` flags, read by `crate::tls::client` as `keel call` reads its
//! own), the listen address, where descriptors come from and how often they are re-read,
//! and the gateway's options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use http::HeaderName;
use keel_gateway::{GatewayOptions, JsonOptions};

use crate::tls::client::ClientFlags;

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

  # TLS: an upstream that requires mutual TLS, and HTTPS (HTTP/1.1 and h2) on this port
  keel gateway --upstream https://10.0.0.7:8443 --upstream-cacert ca.pem \\
    --upstream-cert gateway.pem --upstream-key gateway.key \\
    --upstream-server-name payments.internal \\
    --upstream-expect-identity spiffe://example.org/payments \\
    --set tls.cert=rest.pem --set tls.key=rest.key
  curl -s --cacert rest-ca.pem https://localhost:8080/v1/accounts/alice
  keel gateway --upstream https://api.example.com:443        # public roots (Mozilla's)

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

TLS to the upstream: an https:// upstream is reached over TLS, its certificate verified
with the webpki (Mozilla) roots, or with --upstream-cacert for a private CA, against the
upstream's host or --upstream-server-name. --upstream-cert and --upstream-key present the
gateway's certificate to an upstream that asks for one (mutual TLS); the upstream then
sees every call as the gateway's identity (Authorization headers still pass through).
--upstream-expect-identity refuses an upstream whose SPIFFE ID or DNS name is another.
Reflection and every forwarded call use this one channel; its files are re-read every 10s,
so rotated certificates are taken up without a restart. The --upstream-* flags need an
https:// upstream.

TLS on this port: --set tls.cert=FILE --set tls.key=FILE serves HTTPS, HTTP/1.1 and h2 by
ALPN (gRPC and gRPC-Web too); tls.client_ca=FILE with tls.client_auth=required asks
clients for certificates; admin_tls.* does the same for the admin port. Files are re-read
every tls.reload_interval (10s) and on SIGHUP.

The same port also takes gRPC-Web and plain gRPC, passed to the upstream as they are.
Prints `gateway listening on ADDR` and `admin listening on ADDR` once bound. It serves on
Keel's serving core, as `keel serve` does: connection limits and timeouts, metrics on the
admin port, and graceful shutdown: SIGTERM or SIGINT makes /readyz answer 503, requests
are still served for shutdown.drain_delay (5s), then the port closes and requests in
flight finish, up to shutdown.timeout (30s); a second signal closes everything at once.

Exit status:
  0       stopped by SIGTERM or SIGINT
  1       the upstream could not be reached (refused; TLS failed: an untrusted or
          misnamed certificate, a client certificate required or refused, an identity
          other than --upstream-expect-identity) or its reflection failed; cannot listen
  2       usage or configuration error (bad flags, --upstream-* flags with an http://
          upstream, unreadable TLS files, a descriptor set that does not decode, an
          unknown --service, no service with HTTP rules)")]
pub struct GatewayArgs {
    /// The gRPC service to forward to: http://HOST:PORT (plaintext h2c) or https://HOST:PORT
    /// (TLS)
    #[arg(long, value_name = "URI", value_parser = upstream)]
    upstream: String,

    /// Verify the upstream with this PEM CA certificate instead of the webpki roots
    #[arg(long, value_name = "FILE")]
    upstream_cacert: Option<PathBuf>,

    /// Client certificate chain (PEM) the gateway presents to the upstream, for mutual TLS;
    /// needs --upstream-key
    #[arg(long, value_name = "FILE", requires = "upstream_key")]
    upstream_cert: Option<PathBuf>,

    /// Private key (PEM) of --upstream-cert
    #[arg(long, value_name = "FILE", requires = "upstream_cert")]
    upstream_key: Option<PathBuf>,

    /// Name to verify the upstream's certificate against, instead of the upstream's host
    #[arg(long, value_name = "NAME")]
    upstream_server_name: Option<String>,

    /// Accept only an upstream with this identity: a SPIFFE ID or DNS name (repeatable). An
    /// upstream with another fails, and the error says what it presented
    #[arg(long = "upstream-expect-identity", value_name = "ID")]
    upstream_expect_identity: Vec<String>,

    /// Address to serve HTTP/1.1 and h2c on (HTTPS with --set tls.cert=... tls.key=...)
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:8080")]
    listen: SocketAddr,

    /// Admin HTTP address: /healthz, /readyz (503 once shutdown begins), /metrics
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9091")]
    admin_listen: SocketAddr,

    /// TOML configuration file for the serving side (keys as `keel serve --print-config`
    /// prints them: connection limits and timeouts, http2, shutdown, tls, admin_tls)
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
    /// The upstream URI, `http://HOST:PORT` or `https://HOST:PORT`.
    pub fn upstream(&self) -> &str {
        &self.upstream
    }

    /// The upstream's TLS flags (TLS when the upstream is https://; with an http://
    /// upstream, any of them is an error).
    pub fn upstream_tls(&self) -> ClientFlags {
        ClientFlags {
            prefix: "upstream-",
            tls: false,
            ca: self.upstream_cacert.clone(),
            identity: self.upstream_cert.clone().zip(self.upstream_key.clone()),
            server_name: self.upstream_server_name.clone(),
            expected_identities: self.upstream_expect_identity.clone(),
        }
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

/// `--upstream`: `http://HOST:PORT` or `https://HOST:PORT`, without a trailing slash.
fn upstream(text: &str) -> Result<String, String> {
    let Some((scheme, rest)) = ["http", "https"].into_iter().find_map(|scheme| {
        text.strip_prefix(scheme)
            .and_then(|rest| rest.strip_prefix("://"))
            .map(|rest| (scheme, rest.trim_end_matches('/')))
    }) else {
        return Err(
            "the upstream must be http://HOST:PORT (plaintext h2c) or https://HOST:PORT (TLS)"
                .to_owned(),
        );
    };
    keel::client::Target::parse(rest).map_err(|error| error.to_string())?;
    Ok(format!("{scheme}://{rest}"))
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
        check("https://payments:443", Ok("https://payments:443"));
        check("https://10.0.0.7:8443/", Ok("https://10.0.0.7:8443"));
        check("ftp://x", Err("must be http://HOST:PORT"));
        check("127.0.0.1:50051", Err("or https://HOST:PORT (TLS)"));
        check("httpx://h:1", Err("must be http://HOST:PORT"));
        check("http://no-port", Err("host:port"));
        check("https://no-port", Err("host:port"));
    }

    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: GatewayArgs,
    }

    fn parse(args: &[&str]) -> Result<GatewayArgs, clap::Error> {
        use clap::Parser as _;
        Cli::try_parse_from(["gateway", "--upstream"].iter().chain(args)).map(|cli| cli.args)
    }

    #[test]
    fn upstream_tls_flags() {
        let plain = parse(&["http://127.0.0.1:50051"]).unwrap().upstream_tls();
        assert!(!plain.wanted());
        assert_eq!(
            plain.target("http://127.0.0.1:50051").unwrap(),
            ("http://127.0.0.1:50051".to_owned(), false)
        );
        // https:// alone: TLS with the webpki roots.
        let public = parse(&["https://api.example.com:443"]).unwrap();
        let tls = public.upstream_tls();
        assert!(!tls.wanted() && tls.ca.is_none());
        assert!(tls.target(public.upstream()).unwrap().1);

        let mutual = parse(&[
            "https://127.0.0.1:8443",
            "--upstream-cacert",
            "ca.pem",
            "--upstream-cert",
            "gw.pem",
            "--upstream-key",
            "gw.key",
            "--upstream-server-name",
            "localhost",
            "--upstream-expect-identity",
            "spiffe://keel.test/payments",
            "--upstream-expect-identity",
            "payments.internal",
        ])
        .unwrap()
        .upstream_tls();
        assert!(mutual.wanted());
        assert_eq!(mutual.prefix, "upstream-");
        assert_eq!(mutual.ca.as_deref(), Some("ca.pem".as_ref()));
        assert_eq!(
            mutual.identity,
            Some(("gw.pem".into(), "gw.key".into())),
            "{mutual:?}"
        );
        assert_eq!(mutual.server_name.as_deref(), Some("localhost"));
        assert_eq!(
            mutual.expected_identities,
            ["spiffe://keel.test/payments", "payments.internal"]
        );

        // Each flag asks for TLS, so with an http:// upstream it is a mistake.
        for flag in [
            ["--upstream-cacert", "ca.pem"],
            ["--upstream-server-name", "localhost"],
            ["--upstream-expect-identity", "spiffe://keel.test/payments"],
        ] {
            let args = parse(&["http://127.0.0.1:50051", flag[0], flag[1]]).unwrap();
            let message = args.upstream_tls().target(args.upstream()).unwrap_err();
            assert!(
                message.contains("plaintext (http://)"),
                "{flag:?}: {message}"
            );
        }
        let error = parse(&["https://h:1", "--upstream-cert", "gw.pem"]).unwrap_err();
        assert!(error.to_string().contains("--upstream-key"), "{error}");
        let error = parse(&["https://h:1", "--upstream-key", "gw.key"]).unwrap_err();
        assert!(error.to_string().contains("--upstream-cert"), "{error}");
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
