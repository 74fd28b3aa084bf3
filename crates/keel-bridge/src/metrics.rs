//! The bridge's metrics, `keel_bridge_*`: what each stage received, stored, delivered,
//! retried and dead-lettered, the log's latency and the consumer's lag.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A route.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteLabels {
    /// The route's name.
    pub route: String,
}

/// A route and an outcome, code or reason.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct RouteOutcomeLabels {
    /// The route's name.
    pub route: String,
    /// See each metric.
    pub outcome: String,
}

/// Where a duplicate was noticed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct StageLabels {
    /// `mqtt` (the broker redelivered), `log` (the log already had the key).
    pub stage: &'static str,
}

/// Every family the bridge reports. Cheap to clone: clones share the series.
#[derive(Debug, Clone)]
pub struct BridgeMetrics {
    received: Family<RouteLabels, Counter>,
    appended: Family<RouteOutcomeLabels, Counter>,
    append_seconds: Histogram,
    dead_lettered: Family<RouteOutcomeLabels, Counter>,
    calls: Family<RouteOutcomeLabels, Counter>,
    retries: Family<RouteOutcomeLabels, Counter>,
    duplicates: Family<StageLabels, Counter>,
    delivered_seconds: Histogram,
    consumer_lag: Gauge,
    in_flight: Family<StageLabels, Gauge>,
    mqtt_disconnects: Counter,
}

impl Default for BridgeMetrics {
    fn default() -> Self {
        Self {
            received: Family::default(),
            appended: Family::default(),
            // 100 µs to about 13 s.
            append_seconds: Histogram::new(exponential_buckets(0.0001, 2.0, 18)),
            dead_lettered: Family::default(),
            calls: Family::default(),
            retries: Family::default(),
            duplicates: Family::default(),
            // 1 ms to about 65 s.
            delivered_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
            consumer_lag: Gauge::default(),
            in_flight: Family::default(),
            mqtt_disconnects: Counter::default(),
        }
    }
}

impl BridgeMetrics {
    /// Registers every family in `registry`, named `keel_bridge_*`.
    pub fn register(registry: &mut Registry) -> Self {
        let metrics = Self::default();
        let bridge = registry.sub_registry_with_prefix("keel_bridge");
        bridge.register(
            "received",
            "MQTT messages received, by route (\"\" for none)",
            metrics.received.clone(),
        );
        bridge.register(
            "appended",
            "Records appended to the log, by route and outcome (stored, duplicate)",
            metrics.appended.clone(),
        );
        bridge.register(
            "append_seconds",
            "Time from receiving an MQTT message to the log acknowledging it",
            metrics.append_seconds.clone(),
        );
        bridge.register(
            "dead_lettered",
            "Requests sent to the dead-letter queue, by route and reason",
            metrics.dead_lettered.clone(),
        );
        bridge.register(
            "calls",
            "gRPC calls to the target, by route and status code",
            metrics.calls.clone(),
        );
        bridge.register(
            "retries",
            "gRPC calls retried, by route and the status code that caused it",
            metrics.retries.clone(),
        );
        bridge.register(
            "duplicates",
            "Requests seen again, by where: mqtt (redelivered by the broker), log (key already stored)",
            metrics.duplicates.clone(),
        );
        bridge.register(
            "delivered_seconds",
            "Time from receiving an MQTT message to its outcome at the target",
            metrics.delivered_seconds.clone(),
        );
        bridge.register(
            "consumer_lag",
            "Records in the log not yet handed to the deliver stage",
            metrics.consumer_lag.clone(),
        );
        bridge.register(
            "in_flight",
            "Requests being worked on, by stage (ingest, deliver)",
            metrics.in_flight.clone(),
        );
        bridge.register(
            "mqtt_disconnects",
            "Times the MQTT connection was lost",
            metrics.mqtt_disconnects.clone(),
        );
        metrics
    }

    /// An MQTT message arrived for `route`.
    pub fn received(&self, route: &str) {
        self.received.get_or_create(&route_labels(route)).inc();
    }

    /// The log acknowledged an append after `seconds`.
    pub fn appended(&self, route: &str, duplicate: bool, seconds: f64) {
        let outcome = if duplicate { "duplicate" } else { "stored" };
        self.appended
            .get_or_create(&outcome_labels(route, outcome))
            .inc();
        self.append_seconds.observe(seconds);
        if duplicate {
            self.duplicate("log");
        }
    }

    /// A request went to the dead-letter queue.
    pub fn dead_lettered(&self, route: &str, reason: &str) {
        self.dead_lettered
            .get_or_create(&outcome_labels(route, reason))
            .inc();
    }

    /// A call to the target ended with `code` (`OK`, `UNAVAILABLE`, ...).
    pub fn call(&self, route: &str, code: &str) {
        self.calls.get_or_create(&outcome_labels(route, code)).inc();
    }

    /// A call is retried after `code`.
    pub fn retry(&self, route: &str, code: &str) {
        self.retries
            .get_or_create(&outcome_labels(route, code))
            .inc();
    }

    /// A request was seen again at `stage`.
    pub fn duplicate(&self, stage: &'static str) {
        self.duplicates.get_or_create(&StageLabels { stage }).inc();
    }

    /// A request reached its final outcome `seconds` after ingest received it.
    pub fn delivered(&self, seconds: f64) {
        self.delivered_seconds.observe(seconds);
    }

    /// The consumer's lag.
    pub fn set_consumer_lag(&self, lag: u64) {
        self.consumer_lag
            .set(i64::try_from(lag).unwrap_or(i64::MAX));
    }

    /// Requests being worked on at `stage`.
    pub fn set_in_flight(&self, stage: &'static str, count: usize) {
        self.in_flight
            .get_or_create(&StageLabels { stage })
            .set(i64::try_from(count).unwrap_or(i64::MAX));
    }

    /// The MQTT connection was lost.
    pub fn mqtt_disconnected(&self) {
        self.mqtt_disconnects.inc();
    }
}

fn route_labels(route: &str) -> RouteLabels {
    RouteLabels {
        route: route.to_owned(),
    }
}

fn outcome_labels(route: &str, outcome: &str) -> RouteOutcomeLabels {
    RouteOutcomeLabels {
        route: route.to_owned(),
        outcome: outcome.to_owned(),
    }
}
