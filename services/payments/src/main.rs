//! `payments`: the reference payments service, on Keel's server with all its defaults.
//! Parses flags, loads configuration and serves [`payments::app::App`]; nothing else lives
//! here.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use keel::config::Loader;
use payments::app::App;
use payments::config::PaymentsConfig;

/// jemalloc, not the system allocator: it returns the memory of closed connections to the
/// OS, where glibc malloc kept a connection flood's peak (docs/ARCHITECTURE.md, "Memory
/// after a connection flood").
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// The reference payments service: accounts, deposits, payments and refunds on a
/// double-entry ledger, over gRPC (payments.v1), with health, reflection and an admin port.
///
/// Settings come from, lowest to highest: defaults (SQLite in ./data), `--config` file,
/// PAYMENTS_* environment variables (e.g. PAYMENTS_DATABASE_URL), then flags.
#[derive(Debug, Parser)]
#[command(
    name = "payments",
    version,
    after_help = "Examples:\n  \
    payments\n  \
    payments --database-url postgres://postgres@127.0.0.1:5432/payments\n  \
    payments --redis-url redis://127.0.0.1:6379 --set rate_limit_per_account=50\n  \
    payments --print-config\n  \
    payments --set server.tls.cert=certs/server.pem --set server.tls.key=certs/server.key \\\n    \
    --set server.tls.client_ca=certs/ca.pem --set server.tls.client_auth=required\n\n\
    Security: both listeners are plaintext unless server.tls.cert (gRPC and REST) and\n\
    server.admin_tls.cert (admin) are set; `keel certs dev` makes certificates to try it.\n\
    server.auth.policy applies a grpc-go authz policy, server.auth.jwks checks bearer tokens;\n\
    files are re-read when they change and on SIGHUP.\n\n\
    Observability: metrics on the admin /metrics; PAYMENTS_LOG=info,keel::rpc=debug logs every\n\
    call, PAYMENTS_LOG_FORMAT=json as JSON lines; OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:4317\n\
    exports traces (OTEL_TRACES_SAMPLER, OTEL_SERVICE_NAME, OTEL_PROPAGATORS as usual)."
)]
struct Cli {
    /// gRPC address to listen on [default: 127.0.0.1:50051]
    #[arg(long, value_name = "HOST:PORT")]
    listen: Option<String>,
    /// Admin HTTP address (/healthz, /readyz, /metrics) [default: 127.0.0.1:9090]
    #[arg(long, value_name = "HOST:PORT")]
    admin_listen: Option<String>,
    /// Storage: sqlite://PATH (embedded, created if missing) or postgres://USER@HOST/DB
    /// [default: sqlite://data/payments.db]
    #[arg(long, value_name = "URL")]
    database_url: Option<String>,
    /// Redis for the rate limiter and replay fast path, redis://HOST:PORT [default: none,
    /// in-process limiter]
    #[arg(long, value_name = "URL")]
    redis_url: Option<String>,
    /// TOML configuration file (keys as printed by --print-config)
    #[arg(long, env = "PAYMENTS_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Override one setting, e.g. --set rate_limit_per_account=50 (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,
    /// Print the effective configuration as TOML and exit
    #[arg(long)]
    print_config: bool,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Err(error) = keel::logging::init("PAYMENTS") {
        eprintln!("payments: {error}");
        return ExitCode::from(2);
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("payments: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("payments: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn load_config(cli: &Cli) -> anyhow::Result<PaymentsConfig> {
    let mut loader = Loader::new("PAYMENTS").file(cli.config.as_ref());
    for pair in &cli.set {
        loader = loader.set_pair(pair, "--set")?;
    }
    let flags = [
        ("server.listen", &cli.listen, "--listen"),
        ("server.admin_listen", &cli.admin_listen, "--admin-listen"),
        ("database_url", &cli.database_url, "--database-url"),
        ("redis_url", &cli.redis_url, "--redis-url"),
    ];
    for (key, value, flag) in flags {
        if let Some(value) = value {
            loader = loader.set(key, value, flag);
        }
    }
    Ok(loader.load()?)
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let config = load_config(&cli)?;
    if cli.print_config {
        print!("{}", toml::to_string(&config)?);
        return Ok(());
    }
    let _telemetry = keel::telemetry::init("payments")?;
    let app = App::bind(config).await?;
    app.server().announce()?;
    app.serve_until_signal().await
}
