//! The flags of `keel bridge`, and the settings they layer over (defaults, `--config` TOML,
//! `KEEL_BRIDGE_*` variables, `--set`): the bridge's own under their keys, the admin port's
//! under `server.*`.

use std::path::PathBuf;

use clap::Args;
use keel::config::{Checks, Loader, ServerConfig, Validate};
use keel_bridge::deliver::DeliverConfig;
use keel_bridge::mqtt::MqttConfig;
use keel_bridge::route::RouteConfig;
use keel_bridge::{BridgeConfig, LogConfig};
use serde::{Deserialize, Serialize};

/// Carries device requests from MQTT to a gRPC method through a durable log, with exactly
/// one effect per request: the broker's message is acknowledged only once the log has it,
/// and a log record is done only once the target answered, with the same idempotency key on
/// every attempt.
#[derive(Debug, Args)]
#[command(after_help = "\
Examples:
  payments &                                                   # gRPC on 127.0.0.1:50051
  keel bridge --mqtt mqtt://127.0.0.1:1883 --target http://127.0.0.1:50051
  mosquitto_pub -V mqttv5 -q 1 -t payment/request/dev-1 -m \\
    '{\"idempotencyKey\":\"r-1\",\"payerAccountId\":\"alice\",\"payeeAccountId\":\"bob\",\"amountMinor\":\"250\",\"currency\":\"USD\"}'
  mosquitto_sub -V mqttv5 -t 'payment/response/#'             # each outcome, as JSON
  keel bridge --config bridge.toml --set deliver.max_in_flight=256
  keel bridge --print-config > bridge.toml                     # every setting, with defaults

Routes: each [[routes]] entry in the TOML names a topic filter, a unary method, how its
payload is written (json or protobuf), where the device id and the idempotency key come
from, and an optional response topic. Without a config file the payments reference route
applies: payment/request/+ to payments.v1.PaymentService/Process, the device from the
topic, the key `DEVICE:idempotency_key`, outcomes on payment/response/{device}. The
target's reflection gives the descriptors (or --descriptor-set FILE).

Stages: ingest subscribes (QoS 1, persistent session, shared subscription
$share/keel-bridge/FILTER, manual acknowledgements), appends each request to the log keyed
by device, and acknowledges it to the broker only after the log has it. Deliver reads the
log, calls the target with the request's key (idempotency-key metadata) and trace context,
retries UNAVAILABLE, RESOURCE_EXHAUSTED, DEADLINE_EXCEEDED and ABORTED with the same key
(honouring RetryInfo), publishes the outcome, and only then marks the record done. A
payload that does not parse, or lacks its device or key, goes to the dead-letter queue.

Log: the embedded log (log.backend = \"embedded\", the default) is a SQLite file,
data/bridge-log.db: nothing else to install. log.backend = \"jetstream\" uses NATS JetStream
(log.jetstream.url, nats://127.0.0.1:4222 by default): a work-queue stream with a duplicate
window keyed by Nats-Msg-Id, a durable pull consumer and explicit acks.
log.backend = \"kafka\" uses Kafka (log.kafka.brokers, 127.0.0.1:9092 by default): topics
made when missing, an idempotent producer with acks=all keyed by device, and a consumer
group that commits offsets only past the records done.

Admin: /healthz, /readyz (ready when the broker, the log and the target answer) and
/metrics (keel_bridge_*) on --admin-listen, on Keel's serving core (server.admin_tls.*
for TLS). SIGTERM or SIGINT stops taking messages at once (the broker keeps them),
finishes the calls under way, exports the spans still queued, and exits.

Tracing: a device that sets the MQTT 5 user property traceparent gets the bridge's spans
in its trace: \"ingest FILTER\" (receipt to the log's acknowledgement) and \"deliver
FILTER\" (the record's delivery, retries included), whose context every gRPC call carries,
so the target's server span is its child. Without one, ingest starts the trace.
OTEL_EXPORTER_OTLP_ENDPOINT=http://HOST:4317 exports traces (OTEL_TRACES_SAMPLER,
OTEL_SERVICE_NAME, default keel-bridge, OTEL_PROPAGATORS as usual); KEEL_LOG sets the
log level.

Exit status:
  0       stopped by SIGTERM or SIGINT
  1       the target, its reflection or the log could not be reached; a stage failed
  2       usage or configuration error (bad flags or settings, a route whose method the
          target does not have)")]
pub struct BridgeArgs {
    /// The MQTT broker, mqtt://HOST:PORT (sets mqtt.url)
    #[arg(long, value_name = "URL")]
    mqtt: Option<String>,

    /// The gRPC service to call, http://HOST:PORT (sets target)
    #[arg(long, value_name = "URI")]
    target: Option<String>,

    /// Admin HTTP address: /healthz, /readyz, /metrics (sets server.admin_listen)
    #[arg(long, value_name = "IP:PORT", default_value = "127.0.0.1:9093")]
    admin_listen: String,

    /// TOML configuration file (keys as --print-config prints them)
    #[arg(long, env = "KEEL_BRIDGE_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    /// Override one setting, e.g. --set deliver.max_in_flight=256 (repeatable)
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<String>,

    /// Read descriptors from this FileDescriptorSet instead of the target's reflection
    #[arg(long, value_name = "FILE")]
    descriptor_set: Option<PathBuf>,

    /// Print the configuration as loaded (TOML) and exit
    #[arg(long)]
    print_config: bool,
}

impl BridgeArgs {
    /// The settings: defaults, `--config`, `KEEL_BRIDGE_*`, `--set`, then the flags.
    pub fn settings(&self) -> anyhow::Result<Settings> {
        let mut loader = Loader::new("KEEL_BRIDGE").file(self.config.as_ref());
        for pair in &self.set {
            loader = loader.set_pair(pair, "--set")?;
        }
        if let Some(mqtt) = &self.mqtt {
            loader = loader.set("mqtt.url", mqtt, "--mqtt");
        }
        if let Some(target) = &self.target {
            loader = loader.set("target", target, "--target");
        }
        loader = loader.set("server.admin_listen", &self.admin_listen, "--admin-listen");
        Ok(loader.load()?)
    }

    /// The descriptor set file, when descriptors do not come from reflection.
    pub fn descriptor_set(&self) -> Option<&PathBuf> {
        self.descriptor_set.as_ref()
    }

    /// Whether to print the configuration and exit.
    pub fn print_config(&self) -> bool {
        self.print_config
    }
}

/// Everything `keel bridge` reads: [`BridgeConfig`]'s keys, plus `server.*` for the admin
/// port (only its `admin_*`, `admin_tls`, `connection` and `http2` settings apply).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// The gRPC target.
    pub target: String,
    /// The MQTT broker and session.
    pub mqtt: MqttConfig,
    /// The log between the stages.
    pub log: LogConfig,
    /// How requests are delivered.
    pub deliver: DeliverConfig,
    /// The routes.
    pub routes: Vec<RouteConfig>,
    /// The admin port.
    pub server: ServerConfig,
}

impl Default for Settings {
    fn default() -> Self {
        let BridgeConfig {
            target,
            mqtt,
            log,
            deliver,
            routes,
        } = BridgeConfig::default();
        Self {
            target,
            mqtt,
            log,
            deliver,
            routes,
            server: ServerConfig::default(),
        }
    }
}

impl Settings {
    /// The bridge's part and the admin port's.
    pub fn split(self) -> (BridgeConfig, ServerConfig) {
        let Self {
            target,
            mqtt,
            log,
            deliver,
            routes,
            server,
        } = self;
        (
            BridgeConfig {
                target,
                mqtt,
                log,
                deliver,
                routes,
            },
            server,
        )
    }
}

impl Validate for Settings {
    fn check(&self, checks: &mut Checks) {
        let (bridge, server) = self.clone().split();
        bridge.check(checks);
        checks.nested("server", &server);
    }
}
