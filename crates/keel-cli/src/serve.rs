//! `keel serve`: Greeter and TestService on Keel's full default stack.

use std::path::PathBuf;

use clap::Args;
use keel::config::{Loader, ServerConfig};

/// Settings come from, lowest to highest: defaults, `--config` file, `KEEL_*` environment
/// variables (e.g. KEEL_HTTP2_MAX_CONCURRENT_STREAMS=512), then flags.
#[derive(Debug, Args)]
#[command(after_help = "Examples:\n  \
    keel serve\n  \
    keel serve --listen 0.0.0.0:50051 --set shutdown.drain_delay=10s\n  \
    keel serve --config keel.toml --print-config\n\n\
    Then: keel call 127.0.0.1:50051 helloworld.Greeter/SayHello -d '{\"name\":\"Ada\"}'\n\n\
    TLS: both listeners are plaintext unless tls.cert is set (gRPC: tls.*, admin: admin_tls.*):\n  \
    keel serve --set tls.cert=server.pem --set tls.key=server.key\n  \
    keel serve --set tls.cert=server.pem --set tls.key=server.key \\\n    \
    --set tls.client_ca=ca.pem --set tls.client_auth=required   (mutual TLS)\n\
    Changed certificate files are taken up without a restart (tls.reload_interval, SIGHUP).\n\n\
    Observability: metrics on the admin /metrics; KEEL_LOG=info,keel::rpc=debug logs every call,\n\
    KEEL_LOG_FORMAT=json as JSON lines; OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:4317 exports\n\
    traces (OTEL_TRACES_SAMPLER, OTEL_SERVICE_NAME, OTEL_PROPAGATORS as usual).")]
pub struct ServeArgs {
    /// gRPC address to listen on [default: 127.0.0.1:50051]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Admin HTTP address (/healthz, /readyz, /metrics) [default: 127.0.0.1:9090]
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<String>,
    /// TOML configuration file (keys as printed by --print-config)
    #[arg(long, env = "KEEL_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set http2.max_concurrent_streams=256 (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,
}

/// Loads configuration from every layer.
pub fn load_config(
    file: Option<&PathBuf>,
    listen: Option<&str>,
    admin_listen: Option<&str>,
    set: &[String],
) -> anyhow::Result<ServerConfig> {
    let mut loader = Loader::new("KEEL").file(file);
    for pair in set {
        loader = loader.set_pair(pair, "--set")?;
    }
    if let Some(listen) = listen {
        loader = loader.set("listen", listen, "--listen");
    }
    if let Some(admin) = admin_listen {
        loader = loader.set("admin_listen", admin, "--admin-listen");
    }
    Ok(loader.load()?)
}

/// Runs the server until SIGTERM or SIGINT.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let config = load_config(
        args.config.as_ref(),
        args.listen.as_deref(),
        args.admin_listen.as_deref(),
        &args.set,
    )?;
    if args.print_config {
        print!("{}", toml::to_string(&config)?);
        return Ok(());
    }
    let server = keel::Server::builder(config)
        .add_service(keel_interop::Greeter.into_service())
        .add_service(keel_interop::TestService.into_service())
        .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
        .bind()
        .await?;
    server.announce()?;
    server.serve_until_signal().await?;
    Ok(())
}
