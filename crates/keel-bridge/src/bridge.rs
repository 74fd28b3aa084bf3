//! [`BridgeConfig`] and [`Bridge`]: the whole bridge, both stages over the configured log,
//! with the readiness checks an admin port reports (broker, log, target).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use http::uri::PathAndQuery;
use keel_client::Channel;
use keel_core::settings::{Checks, Validate};
use keel_health::{HealthRegistry, ReadinessCheck};
use prost_reflect::DescriptorPool;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::deliver::{Deliver, DeliverConfig, Target};
use crate::intake::Intake;
use crate::log::embedded::{EmbeddedConfig, EmbeddedLog};
use crate::log::jetstream::{JetStreamConfig, JetStreamLog};
use crate::log::kafka::{KafkaConfig, KafkaLog};
use crate::log::{LogReader, LogWriter};
use crate::metrics::BridgeMetrics;
use crate::mqtt::{self, MqttConfig};
use crate::route::{Route, RouteConfig};
use crate::spans::BridgeSpans;

/// Everything the bridge needs, as `keel bridge` reads it (TOML, `KEEL_BRIDGE_*`, `--set`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BridgeConfig {
    /// The gRPC target the deliver stage calls: `http://HOST:PORT` or any target Keel's
    /// channel takes (default `http://127.0.0.1:50051`).
    pub target: String,
    /// The MQTT broker and session.
    pub mqtt: MqttConfig,
    /// The log between the stages.
    pub log: LogConfig,
    /// How requests are delivered.
    pub deliver: DeliverConfig,
    /// Which topics go to which methods (`[[routes]]`). The default is the payments
    /// reference route: `payment/request/+` to `payments.v1.PaymentService/Process`, keyed
    /// by device and `idempotency_key`, answering on `payment/response/{device}`.
    pub routes: Vec<RouteConfig>,
}

impl Default for BridgeConfig {
    fn default() -> Self {
        Self {
            target: "http://127.0.0.1:50051".into(),
            mqtt: MqttConfig::default(),
            log: LogConfig::default(),
            deliver: DeliverConfig::default(),
            routes: vec![RouteConfig {
                name: "payments".into(),
                topic: "payment/request/+".into(),
                method: "payments.v1.PaymentService/Process".into(),
                key: "device+field:idempotency_key".into(),
                response_topic: "payment/response/{device}".into(),
                ..RouteConfig::default()
            }],
        }
    }
}

/// Which log the stages share, and the settings of each kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// `embedded` (default: a SQLite file, nothing to install), `jetstream` (a NATS
    /// JetStream stream) or `kafka` (a Kafka topic and consumer group).
    pub backend: Backend,
    /// The embedded log's consumer, the cursor the deliver stage reads with (default
    /// `keel-bridge`).
    pub consumer: String,
    /// The embedded log.
    pub embedded: EmbeddedConfig,
    /// The JetStream log (its consumer is `jetstream.consumer`).
    pub jetstream: JetStreamConfig,
    /// The Kafka log (its consumer group is `kafka.consumer`).
    pub kafka: KafkaConfig,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Embedded,
            consumer: "keel-bridge".into(),
            embedded: EmbeddedConfig::default(),
            jetstream: JetStreamConfig::default(),
            kafka: KafkaConfig::default(),
        }
    }
}

/// The kinds of log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// [`EmbeddedLog`].
    Embedded,
    /// [`JetStreamLog`].
    JetStream,
    /// [`KafkaLog`].
    Kafka,
}

impl Backend {
    /// The name settings use, and the deliver spans' `messaging.system`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Embedded => "embedded",
            Self::JetStream => "jetstream",
            Self::Kafka => "kafka",
        }
    }
}

impl Validate for BridgeConfig {
    fn check(&self, checks: &mut Checks) {
        checks.require(
            !self.target.is_empty(),
            "target",
            "\"\"",
            "must name the gRPC service to call, e.g. http://127.0.0.1:50051",
        );
        if let Err(error) = self.mqtt.address() {
            checks.require(false, "mqtt.url", &self.mqtt.url, error);
        }
        checks.require(
            !self.mqtt.client_id.is_empty(),
            "mqtt.client_id",
            "\"\"",
            "must be set: the broker keeps the session under it",
        );
        checks.at_least("mqtt.max_in_flight", self.mqtt.max_in_flight, 1, "");
        checks.at_least("deliver.max_in_flight", self.deliver.max_in_flight, 1, "");
        checks.positive_duration("deliver.deadline", self.deliver.deadline);
        checks.positive_duration("deliver.retry_pause", self.deliver.retry_pause);
        checks.duration("deliver.retry_max_pause", self.deliver.retry_max_pause);
        checks.require(
            !self.routes.is_empty(),
            "routes",
            "[]",
            "must have at least one route",
        );
        for (index, route) in self.routes.iter().enumerate() {
            if let Err(error) = Route::parse(route) {
                checks.require(false, &format!("routes[{index}]"), &route.name, error);
            }
        }
        let mut names: Vec<&str> = self.routes.iter().map(|r| r.name.as_str()).collect();
        names.sort_unstable();
        if let Some(twice) = names.windows(2).find(|pair| pair[0] == pair[1]) {
            checks.require(false, "routes", twice[0], "route names must be unique");
        }
        checks.at_least("log.embedded.max_batch", self.log.embedded.max_batch, 1, "");
        checks.positive_duration(
            "log.embedded.poll_interval",
            self.log.embedded.poll_interval,
        );
        checks.require(
            !self.log.consumer.is_empty(),
            "log.consumer",
            "\"\"",
            "must name the durable consumer",
        );
        if self.log.backend == Backend::Kafka {
            checks.nested("log.kafka", &self.log.kafka);
        }
    }
}

/// The bridge, with its routes checked against the target's descriptors.
pub struct Bridge {
    config: BridgeConfig,
    intake: Arc<Intake>,
    targets: Vec<Target>,
    pool: DescriptorPool,
    channel: Channel,
    metrics: BridgeMetrics,
    spans: Arc<BridgeSpans>,
    health: HealthRegistry,
}

impl Bridge {
    /// Checks every route against `pool` (the target's descriptors); calls go through
    /// `channel`. Spans go where the process's tracing is set up to send them
    /// (`keel_telemetry::init`, before this). Readiness goes into `health`: from here on it
    /// holds the server NOT_SERVING until [`Bridge::run`] has opened the log and put in the
    /// checks for the broker, the log and the target, so a `/readyz` served from before
    /// the run never reports ready too early.
    pub fn new(
        config: BridgeConfig,
        pool: DescriptorPool,
        channel: Channel,
        metrics: BridgeMetrics,
        health: HealthRegistry,
    ) -> Result<Self, String> {
        config.validate().map_err(|error| error.to_string())?;
        let routes = config
            .routes
            .iter()
            .map(Route::parse)
            .collect::<Result<Vec<_>, _>>()?;
        let intake = Intake::new(routes, &pool)?;
        let targets = intake
            .routes()
            .map(|route| {
                let method = pool
                    .get_service_by_name(route.service())
                    .and_then(|service| service.methods().find(|m| m.name() == route.method()))
                    .expect("Intake::new checked every method");
                Ok(Target {
                    route: route.name().to_owned(),
                    path: PathAndQuery::try_from(route.path())
                        .map_err(|error| format!("route {}: {error}", route.name()))?,
                    output: method.output(),
                })
            })
            .collect::<Result<Vec<_>, String>>()?;
        let spans = BridgeSpans::new(
            &keel_telemetry::Traces::global(),
            intake.routes(),
            config.log.backend.name(),
            &config.mqtt.shared_group,
        );
        health.hold("log", "the log is not open yet");
        Ok(Self {
            config,
            spans,
            health,
            intake: Arc::new(intake),
            targets,
            pool,
            channel,
            metrics,
        })
    }

    /// Runs both stages until `shutdown` completes: ingest stops taking messages at once
    /// (the broker keeps what was not acknowledged), deliver finishes the calls under way.
    /// Once the log is open, readiness checks for the broker, the log and the target replace
    /// the hold [`Bridge::new`] put on readiness.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), String> {
        match self.config.log.backend {
            Backend::Embedded => {
                let log = EmbeddedLog::open(self.config.log.embedded.clone())
                    .await
                    .map_err(|error| error.to_string())?;
                let reader = log
                    .reader(&self.config.log.consumer)
                    .await
                    .map_err(|error| error.to_string())?;
                self.run_on(Arc::new(log.writer()), reader, shutdown).await
            }
            Backend::JetStream => {
                let log = JetStreamLog::open(self.config.log.jetstream.clone())
                    .await
                    .map_err(|error| error.to_string())?;
                let reader = log.reader().await.map_err(|error| error.to_string())?;
                self.run_on(Arc::new(log.writer()), reader, shutdown).await
            }
            Backend::Kafka => {
                let log = KafkaLog::open(self.config.log.kafka.clone())
                    .await
                    .map_err(|error| error.to_string())?;
                let reader = log.reader().map_err(|error| error.to_string())?;
                self.run_on(Arc::new(log.writer()), reader, shutdown).await
            }
        }
    }

    async fn run_on<W: LogWriter, R: LogReader>(
        self,
        writer: Arc<W>,
        reader: R,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), String> {
        let connected = Arc::new(AtomicBool::new(false));
        add_checks(&self.health, &connected, &writer, &self.channel).await;

        let responses = self.responses_client()?;
        let deliver = Deliver::new(
            self.config.deliver.clone(),
            self.channel.clone(),
            self.targets,
            self.pool,
            writer.clone(),
            responses,
            self.metrics.clone(),
            self.spans.clone(),
        )?;
        let (stop, stopped) = watch::channel(false);
        let when_stopped = |mut stopped: watch::Receiver<bool>| async move {
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let ingest = crate::ingest::run(
            &self.config.mqtt,
            self.intake,
            writer,
            self.metrics,
            self.spans,
            connected,
            when_stopped(stopped.clone()),
        );
        let deliver = deliver.run(reader, when_stopped(stopped));
        tokio::pin!(ingest, deliver, shutdown);
        let mut ingest_done = None;
        let mut deliver_done = None;
        loop {
            tokio::select! {
                () = &mut shutdown, if !*stop.borrow() => {
                    stop.send_replace(true);
                }
                result = &mut ingest, if ingest_done.is_none() => {
                    if let Err(error) = &result {
                        tracing::error!(%error, "bridge: the ingest stage stopped");
                        stop.send_replace(true);
                    }
                    ingest_done = Some(result);
                }
                result = &mut deliver, if deliver_done.is_none() => {
                    let result = result.map_err(|error| error.to_string());
                    if let Err(error) = &result {
                        tracing::error!(%error, "bridge: the deliver stage stopped");
                        stop.send_replace(true);
                    }
                    deliver_done = Some(result);
                }
            }
            if let (Some(ingest), Some(deliver)) = (&ingest_done, &deliver_done) {
                return ingest.clone().and(deliver.clone());
            }
        }
    }

    /// The MQTT client that publishes outcomes, when a route publishes them: a session of
    /// its own (`CLIENT_ID-out`), so outcomes never wait behind the ingest session.
    fn responses_client(&self) -> Result<Option<rumqttc::v5::AsyncClient>, String> {
        let publishes = self
            .config
            .routes
            .iter()
            .any(|route| !route.response_topic.is_empty());
        if !publishes {
            return Ok(None);
        }
        let client_id = format!("{}-out", self.config.mqtt.client_id);
        let mut options = self.config.mqtt.options(&client_id)?;
        options.set_manual_acks(false);
        let (client, mut events) = mqtt::start(options, 16);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                if let mqtt::MqttEvent::Disconnected(error) = event {
                    tracing::warn!(%error, "bridge: the outcome publisher lost MQTT; reconnecting");
                }
            }
        });
        Ok(Some(client))
    }
}

/// How often the broker connection's readiness is looked at.
const MQTT_CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// How long a readiness probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

async fn add_checks<W: LogWriter>(
    health: &HealthRegistry,
    connected: &Arc<AtomicBool>,
    writer: &Arc<W>,
    channel: &Channel,
) {
    let connected = connected.clone();
    // An atomic load: checked often, so readiness follows the connection closely.
    health
        .add_check(
            ReadinessCheck::new("mqtt", move || {
                let up = connected.load(Ordering::Relaxed);
                async move {
                    if up {
                        Ok(())
                    } else {
                        Err("not connected to the MQTT broker")
                    }
                }
            })
            .interval(MQTT_CHECK_INTERVAL),
        )
        .await;
    let writer = writer.clone();
    health
        .add_check(
            ReadinessCheck::new("log", move || {
                let writer = writer.clone();
                async move { writer.check().await }
            })
            .timeout(PROBE_TIMEOUT),
        )
        .await;
    let channel = channel.clone();
    health
        .add_check(
            ReadinessCheck::new("target", move || {
                let channel = channel.clone();
                async move {
                    if channel.ready(PROBE_TIMEOUT).await {
                        Ok(())
                    } else {
                        Err("the gRPC target is not reachable")
                    }
                }
            })
            .timeout(PROBE_TIMEOUT),
        )
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_are_valid_and_bad_settings_are_named() {
        assert_eq!(BridgeConfig::default().validate(), Ok(()));
        let mut config = BridgeConfig::default();
        config.routes[0].topic = "a/#/b".into();
        let error = config.validate().unwrap_err();
        assert_eq!(error.key, "routes[0]");
        assert!(error.expected.contains("last level"), "{error}");

        let mut config = BridgeConfig::default();
        config.routes.push(config.routes[0].clone());
        assert_eq!(config.validate().unwrap_err().key, "routes");

        let config = BridgeConfig {
            mqtt: MqttConfig {
                url: "tcp://x".into(),
                ..MqttConfig::default()
            },
            ..BridgeConfig::default()
        };
        assert_eq!(config.validate().unwrap_err().key, "mqtt.url");

        let mut config = BridgeConfig::default();
        config.log.kafka.partitions = 0;
        assert_eq!(
            config.validate(),
            Ok(()),
            "checked only when it is the backend"
        );
        config.log.backend = Backend::Kafka;
        assert_eq!(config.validate().unwrap_err().key, "log.kafka.partitions");
    }
}
