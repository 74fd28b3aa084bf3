//! `keel gateway`: the standalone REST/JSON gateway in front of one gRPC upstream, from
//! descriptors learned by reflection (or a descriptor set), reloaded on SIGHUP and on an
//! interval without dropping requests in flight.
//!
//! `args` reads the flags, `descriptors` loads what is served; this file builds the
//! `keel_gateway::Gateway` over Keel's client channel (plaintext, or TLS as the
//! `--upstream-*` flags say; reflection and forwarded calls share it), serves it behind a
//! `ReloadableGateway` on Keel's serving core (`keel::server::HttpServer`: admin port,
//! limits, graceful shutdown), and swaps in a new one whenever a reload succeeds.

mod args;
pub(crate) mod descriptors;

use std::convert::Infallible;
use std::fmt;
use std::process::ExitCode;
use std::time::Duration;

use futures_util::StreamExt as _;
use keel::client::Channel;
use keel::server::HttpServer;
use keel_gateway::{Gateway, GatewayOptions, ReloadableGateway, RuleError};
use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio::time::{Instant, Interval, MissedTickBehavior};
use tokio_stream::wrappers::SignalStream;

pub use args::GatewayArgs;
use descriptors::{Descriptors, Source};

/// Why `keel gateway` stopped other than by a signal, and so its exit status.
#[derive(Debug)]
pub enum Failure {
    /// Bad flags or configuration, or nothing to serve: exit 2.
    Usage(String),
    /// The upstream or its reflection failed, or the listener could not be opened: exit 1.
    Other(String),
}

impl Failure {
    /// The exit status this failure maps to.
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => 2,
            Self::Other(_) => 1,
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Usage(message) | Self::Other(message) => f.write_str(message),
        }
    }
}

/// How long reaching the upstream may take before reflection is given up.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How often the upstream's TLS files are re-read: a gateway runs for months, and its
/// client certificate is rotated under it (the servers' `tls.reload_interval` default).
const UPSTREAM_TLS_RELOAD: Duration = Duration::from_secs(10);

/// Runs `keel gateway` until SIGTERM or SIGINT, reporting any failure on stderr, and
/// returns the exit status.
pub async fn run(args: GatewayArgs) -> ExitCode {
    match gateway(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(failure) => {
            eprintln!("keel gateway: {failure}");
            ExitCode::from(failure.exit_code())
        }
    }
}

async fn gateway(args: GatewayArgs) -> Result<(), Failure> {
    // Before anything slow: a SIGHUP or SIGTERM while starting must not kill the process.
    let Signals { term, int, hup } = Signals::install()?;
    let config = args
        .server_config()
        .map_err(|error| Failure::Usage(format!("{error:#}")))?;
    let (upstream, channel) = args
        .upstream_tls()
        .channel(args.upstream(), UPSTREAM_TLS_RELOAD)
        .map_err(Failure::Usage)?;
    let source = match args.descriptor_set() {
        Some(path) => Source::File(path.clone()),
        None => {
            channel.connect(CONNECT_TIMEOUT).await.map_err(|error| {
                Failure::Other(format!("cannot reach the upstream {upstream}: {error}"))
            })?;
            Source::Reflection(channel.clone())
        }
    };
    let builder = Builder {
        descriptors: Descriptors {
            source,
            services: args.services().to_vec(),
        },
        channel,
        options: args.options(),
    };
    let gateway = builder.build().await?;
    for service in gateway.rules().services_without_rules() {
        warn_unserved(service);
        eprintln!(
            "keel gateway: warning: {service} has no google.api.http rules; \
             none of its methods is served over REST"
        );
    }

    let routes = gateway.rules().len();
    let gateway = ReloadableGateway::new(gateway);
    let server = HttpServer::bind(config, "gateway", gateway.clone())
        .await
        .map_err(|error| Failure::Other(error.to_string()))?;
    let address = server.local_addr();
    println!("gateway listening on {address}");
    println!("admin listening on {}", server.admin_addr());
    tracing::info!(%address, %upstream, routes, "gateway listening");

    let stops = futures_util::stream::select(SignalStream::new(term), SignalStream::new(int));
    tokio::select! {
        report = server.serve_until_events(stops.map(|()| ())) => {
            tracing::debug!(?report, "gateway stopped");
        }
        never = reload(&builder, &gateway, hup, args.refresh()) => match never {},
    }
    Ok(())
}

/// Builds a gateway from freshly loaded descriptors.
struct Builder {
    descriptors: Descriptors,
    channel: Channel,
    options: GatewayOptions,
}

impl Builder {
    /// A gateway for the descriptors as they are now; an error when no service has a rule.
    async fn build(&self) -> Result<Gateway<Channel>, Failure> {
        let pool = self.descriptors.load().await?;
        let services: Vec<String> = pool.services().map(|s| s.full_name().to_owned()).collect();
        // Files that import the annotations but carry no rule lost their options on the way.
        let stripped = matches!(self.descriptors.source, Source::Reflection(_))
            && pool.files().any(|file| {
                file.dependencies()
                    .any(|import| import.name() == "google/api/annotations.proto")
            });
        let nothing = || {
            let mut message = format!(
                "no service has HTTP rules (google.api.http options), so there is nothing to \
                 serve; services: {}",
                if services.is_empty() {
                    "none".to_owned()
                } else {
                    services.join(", ")
                }
            );
            if stripped {
                message.push_str(
                    "\nThe upstream's files import google/api/annotations.proto, but its \
                     reflection sent no options (tonic-reflection drops them; Keel's own \
                     reflection keeps them): give the descriptors with --descriptor-set FILE",
                );
            }
            Failure::Usage(message)
        };
        let gateway = match Gateway::new(pool, self.channel.clone(), self.options.clone()) {
            Ok(gateway) => gateway,
            Err(RuleError::NoHttpExtension) => return Err(nothing()),
            Err(error) => {
                return Err(Failure::Usage(format!(
                    "the HTTP rules cannot be served: {error}"
                )));
            }
        };
        if gateway.rules().is_empty() {
            return Err(nothing());
        }
        Ok(gateway)
    }
}

/// Reloads on SIGHUP and every `every`, for ever: a success replaces the gateway, a
/// failure keeps it and is logged.
async fn reload(
    builder: &Builder,
    gateway: &ReloadableGateway<Channel>,
    mut hup: Signal,
    every: Option<Duration>,
) -> Infallible {
    let mut ticks = every.map(|period| {
        let mut ticks = tokio::time::interval_at(Instant::now() + period, period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    });
    loop {
        let trigger = tokio::select! {
            Some(()) = hup.recv() => "SIGHUP",
            () = tick(&mut ticks) => "--refresh",
        };
        match builder.build().await {
            Ok(next) => {
                let before = gateway.current();
                for service in next.rules().services_without_rules() {
                    if !before.rules().services_without_rules().contains(service) {
                        warn_unserved(service);
                    }
                }
                tracing::info!(trigger, routes = next.rules().len(), "descriptors reloaded");
                gateway.replace(next);
            }
            Err(failure) => tracing::warn!(
                trigger,
                %failure,
                "reloading descriptors failed; the routes served are kept"
            ),
        }
    }
}

/// The next `--refresh` tick; never without one.
async fn tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn warn_unserved(service: &str) {
    tracing::warn!(
        service,
        "the service has no google.api.http rules; none of its methods is served over REST"
    );
}

/// The signals the gateway answers: SIGTERM and SIGINT stop it, SIGHUP reloads.
struct Signals {
    term: Signal,
    int: Signal,
    hup: Signal,
}

impl Signals {
    fn install() -> Result<Self, Failure> {
        let install = |kind: SignalKind| {
            signal(kind).map_err(|error| {
                Failure::Other(format!("cannot install a signal handler: {error}"))
            })
        };
        Ok(Self {
            term: install(SignalKind::terminate())?,
            int: install(SignalKind::interrupt())?,
            hup: install(SignalKind::hangup())?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Failure::Usage(String::new()).exit_code(), 2);
        assert_eq!(Failure::Other(String::new()).exit_code(), 1);
    }
}
