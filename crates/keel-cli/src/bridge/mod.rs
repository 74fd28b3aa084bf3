//! `keel bridge`: device requests from MQTT to a gRPC method through a durable log, from
//! `keel_bridge`. This file loads the settings and the target's descriptors (by reflection,
//! as `keel gateway` does, or a descriptor set), serves the admin port on Keel's serving
//! core (`keel::server::AdminServer`) with the bridge's readiness checks and metrics, and
//! runs the bridge until SIGTERM or SIGINT. Tracing is set up from the `OTEL_*` variables
//! as for `keel serve` and payments (`keel::telemetry::init`), and what is queued is
//! exported before the process exits.

mod args;

use std::process::ExitCode;
use std::time::Duration;

use keel::client::Channel;
use keel::server::AdminServer;
use keel_bridge::Bridge;
use keel_bridge::metrics::BridgeMetrics;
use tokio::signal::unix::{SignalKind, signal};

pub use args::BridgeArgs;

use crate::gateway::Failure;
use crate::gateway::descriptors::{Descriptors, Source};

/// How long reaching the target may take before reflection is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Runs `keel bridge` and returns the exit status.
pub async fn run(args: BridgeArgs) -> ExitCode {
    match bridge(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("keel bridge: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn bridge(args: BridgeArgs) -> Result<(), Failure> {
    let install = |kind: SignalKind| {
        signal(kind)
            .map_err(|error| Failure::Other(format!("cannot install a signal handler: {error}")))
    };
    let (mut term, mut int) = (
        install(SignalKind::terminate())?,
        install(SignalKind::interrupt())?,
    );
    let settings = args
        .settings()
        .map_err(|error| Failure::Usage(format!("{error:#}")))?;
    if args.print_config() {
        let text = toml::to_string(&settings)
            .map_err(|error| Failure::Other(format!("cannot print the configuration: {error}")))?;
        print!("{text}");
        return Ok(());
    }
    let (config, server) = settings.split();
    let telemetry = keel::telemetry::init("keel-bridge")
        .map_err(|error| Failure::Usage(format!("telemetry: {error}")))?;

    let channel =
        Channel::new(&config.target).map_err(|error| Failure::Usage(format!("target: {error}")))?;
    let source = match args.descriptor_set() {
        Some(path) => Source::File(path.clone()),
        None => {
            channel.connect(CONNECT_TIMEOUT).await.map_err(|error| {
                Failure::Other(format!(
                    "cannot reach the target {}: {error}",
                    config.target
                ))
            })?;
            Source::Reflection(channel.clone())
        }
    };
    let pool = Descriptors {
        source,
        services: Vec::new(),
    }
    .load()
    .await?;

    let mut admin = AdminServer::bind(&server)
        .await
        .map_err(|error| Failure::Other(error.to_string()))?;
    let metrics = BridgeMetrics::register(admin.metrics_registry());
    let bridge = Bridge::new(config.clone(), pool, channel, metrics, admin.health())
        .map_err(Failure::Usage)?;
    println!("admin listening on {}", admin.local_addr());
    println!(
        "bridge: {} -> {} through the {:?} log",
        config.mqtt.url, config.target, config.log.backend
    );
    let admin = admin.start();

    let shutdown = async {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("bridge: stopping; finishing the calls under way");
    };
    let outcome = bridge.run(shutdown).await;
    admin.stop().await;
    // Blocks this thread while the runtime's workers export the last spans.
    telemetry.shutdown();
    outcome.map_err(Failure::Other)
}
