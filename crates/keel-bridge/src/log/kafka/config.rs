//! [`KafkaConfig`]: where the Kafka log lives, checked before use, and the librdkafka settings
//! of its producer, consumer and admin clients.

use std::collections::BTreeMap;
use std::time::Duration;

use keel_core::settings::{Checks, DurationText, Validate};
use rdkafka::ClientConfig;
use serde::{Deserialize, Serialize};

/// Where the Kafka log lives and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KafkaConfig {
    /// The brokers to bootstrap from, `host:port` separated by commas (default
    /// `127.0.0.1:9092`).
    pub brokers: String,
    /// The topic of records between ingest and deliver, created on open when missing
    /// (default `keel-bridge`).
    pub topic: String,
    /// The topic that keeps dead letters, created on open when missing with one partition,
    /// so they read back in the order they were written (default `keel-bridge-dead`).
    pub dead_letter_topic: String,
    /// Partitions of a records topic this log creates; an existing topic keeps its own
    /// (default 6). Bridges reading as one group share the partitions, so this bounds how
    /// many of them deliver at once.
    pub partitions: u32,
    /// Copies of each topic this log creates (default 1, for a single broker; 3 on a
    /// cluster).
    pub replication_factor: u32,
    /// The consumer group the deliver stage reads with, librdkafka's `group.id` (default
    /// `keel-bridge`).
    pub consumer: String,
    /// How long a broker holds a fetch open waiting for records, `fetch.wait.max.ms`: the
    /// latency a record can wait before deliver sees it (default 50 ms; librdkafka's own is
    /// 500 ms).
    #[serde(with = "humantime_serde")]
    pub fetch_wait: Duration,
    /// How often the offsets of done records are committed to the group,
    /// `auto.commit.interval.ms` (default 250 ms). After a crash, at most this much finished
    /// work is delivered again, as replays.
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
    /// How long the group waits for a silent member before it gives that member's
    /// partitions to the others, `session.timeout.ms` (default 10 s): how long a bridge
    /// that was killed holds up its partitions.
    #[serde(with = "humantime_serde")]
    pub session_timeout: Duration,
    /// How long creating topics, a metadata request or an append's acknowledgement may take
    /// before the log counts as unavailable (default 5 s). An append not acknowledged in time
    /// stays queued in librdkafka, which keeps sending it, so it may still be stored.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// More librdkafka properties for every client (TLS, SASL, `linger.ms`, ...), e.g.
    /// `{ "security.protocol" = "ssl" }`. The properties this struct sets are refused here.
    pub properties: BTreeMap<String, String>,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            topic: "keel-bridge".into(),
            dead_letter_topic: "keel-bridge-dead".into(),
            partitions: 6,
            replication_factor: 1,
            consumer: "keel-bridge".into(),
            fetch_wait: Duration::from_millis(50),
            commit_interval: Duration::from_millis(250),
            session_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(5),
            properties: BTreeMap::new(),
        }
    }
}

/// The librdkafka properties the fields above (or the log's guarantees) decide.
const OWN_PROPERTIES: [&str; 13] = [
    "bootstrap.servers",
    "metadata.broker.list",
    "client.id",
    "group.id",
    "enable.idempotence",
    "acks",
    "message.timeout.ms",
    "enable.auto.commit",
    "enable.auto.offset.store",
    "auto.commit.interval.ms",
    "auto.offset.reset",
    "fetch.wait.max.ms",
    "session.timeout.ms",
];

/// Longest Kafka topic name.
const MAX_TOPIC: usize = 249;

/// The upper bounds librdkafka puts on the durations (and 24 h where it allows more).
const MAX_FETCH_WAIT: Duration = Duration::from_secs(300);
const MAX_COMMIT_INTERVAL: Duration = Duration::from_secs(24 * 3600);
const MAX_SESSION_TIMEOUT: Duration = Duration::from_secs(3600);
const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

impl Validate for KafkaConfig {
    fn check(&self, checks: &mut Checks) {
        checks.require(
            !self.brokers.trim().is_empty(),
            "brokers",
            "\"\"",
            "must name at least one broker, e.g. 127.0.0.1:9092",
        );
        for (key, topic) in [
            ("topic", &self.topic),
            ("dead_letter_topic", &self.dead_letter_topic),
        ] {
            let legal = topic
                .bytes()
                .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'.' | b'_' | b'-'));
            checks.require(
                legal && (1..=MAX_TOPIC).contains(&topic.len()) && topic != "." && topic != "..",
                key,
                format!("{topic:?}"),
                format!("must be a Kafka topic name: 1 to {MAX_TOPIC} of a-z A-Z 0-9 . _ -"),
            );
        }
        checks.require(
            self.topic != self.dead_letter_topic,
            "dead_letter_topic",
            format!("{:?}", self.dead_letter_topic),
            "must differ from topic",
        );
        checks.between("partitions", self.partitions, 1..=100_000, "");
        // Kafka carries it as an INT16.
        checks.between(
            "replication_factor",
            self.replication_factor,
            1..=32_767,
            "",
        );
        checks.require(
            !self.consumer.is_empty(),
            "consumer",
            "\"\"",
            "must name the consumer group",
        );
        let durations = [
            (
                "fetch_wait",
                self.fetch_wait,
                Duration::ZERO,
                MAX_FETCH_WAIT,
            ),
            (
                "commit_interval",
                self.commit_interval,
                Duration::from_millis(1),
                MAX_COMMIT_INTERVAL,
            ),
            (
                "session_timeout",
                self.session_timeout,
                Duration::from_millis(3),
                MAX_SESSION_TIMEOUT,
            ),
            (
                "request_timeout",
                self.request_timeout,
                Duration::from_millis(1),
                MAX_REQUEST_TIMEOUT,
            ),
        ];
        for (key, value, low, high) in durations {
            checks.require(
                (low..=high).contains(&value),
                key,
                DurationText(value),
                format!(
                    "must be between {} and {}",
                    DurationText(low),
                    DurationText(high)
                ),
            );
        }
        for name in self.properties.keys() {
            checks.require(
                !OWN_PROPERTIES.contains(&name.as_str()),
                &format!("properties.{name:?}"),
                "(set)",
                "is set by the bridge; use the field of log.kafka that decides it",
            );
        }
    }
}

/// Whole milliseconds, as librdkafka takes durations (validated to fit).
fn millis(duration: Duration) -> String {
    duration.as_millis().to_string()
}

impl KafkaConfig {
    /// The properties every client has: the brokers and [`properties`](Self::properties).
    fn client(&self) -> ClientConfig {
        let mut client = ClientConfig::new();
        for (name, value) in &self.properties {
            client.set(name, value);
        }
        client
            .set("bootstrap.servers", &self.brokers)
            .set("client.id", "keel-bridge");
        client
    }

    /// The producer: idempotent (no duplicates or reordering from its own retries), each
    /// record acknowledged only once every in-sync replica has it, and never given up on
    /// (`message.timeout.ms=0`): librdkafka bumps an idempotent producer's epoch when it
    /// gives up on a record, and tansu 0.6.0 then fails every produce until it is restarted
    /// (docs/notes/kafka-broker.md). The append stops waiting after `request_timeout`.
    pub(super) fn producer(&self) -> ClientConfig {
        let mut client = self.client();
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("message.timeout.ms", "0");
        client
    }

    /// The deliver stage's group member: offsets stored only for done records (by the
    /// reader), committed in the background every `commit_interval` and on close.
    pub(super) fn consumer(&self) -> ClientConfig {
        let mut client = self.client();
        client
            .set("group.id", &self.consumer)
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", millis(self.commit_interval))
            .set("auto.offset.reset", "earliest")
            .set("fetch.wait.max.ms", millis(self.fetch_wait))
            .set("session.timeout.ms", millis(self.session_timeout))
            .set(
                "heartbeat.interval.ms",
                millis((self.session_timeout / 3).max(Duration::from_millis(1))),
            );
        client
    }

    /// A reader outside the group (for dead letters), which reports reaching each
    /// partition's end. librdkafka wants a group id even for assigned partitions; this one
    /// never joins or commits.
    pub(super) fn scanner(&self) -> ClientConfig {
        let mut client = self.client();
        client
            .set("group.id", format!("{}-scan", self.consumer))
            .set("enable.auto.commit", "false")
            .set("enable.partition.eof", "true")
            .set("fetch.wait.max.ms", millis(self.fetch_wait));
        client
    }

    /// The admin client that creates topics.
    pub(super) fn admin(&self) -> ClientConfig {
        self.client()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_defaults_and_refuses_unknown_fields() {
        let config: KafkaConfig = serde_json::from_str(
            r#"{"brokers": "kafka:9092", "fetch_wait": "10ms", "properties": {"linger.ms": "1"}}"#,
        )
        .unwrap();
        assert_eq!(config.brokers, "kafka:9092");
        assert_eq!(config.fetch_wait, Duration::from_millis(10));
        assert_eq!(config.topic, KafkaConfig::default().topic);
        assert_eq!(config.validate(), Ok(()));
        assert_eq!(config.producer().get("linger.ms"), Some("1"));
        assert_eq!(config.consumer().get("fetch.wait.max.ms"), Some("10"));
        assert!(serde_json::from_str::<KafkaConfig>(r#"{"broker": "x"}"#).is_err());
    }

    #[test]
    fn bad_settings_are_named() {
        type Breaks = fn(&mut KafkaConfig);
        let cases: [(&str, Breaks); 8] = [
            ("brokers", |c| c.brokers = " ".into()),
            ("topic", |c| c.topic = "a/b".into()),
            ("topic", |c| c.topic = "..".into()),
            ("dead_letter_topic", |c| {
                c.dead_letter_topic = c.topic.clone();
            }),
            ("partitions", |c| c.partitions = 0),
            ("consumer", |c| c.consumer = String::new()),
            ("commit_interval", |c| c.commit_interval = Duration::ZERO),
            ("properties.\"enable.auto.offset.store\"", |c| {
                c.properties
                    .insert("enable.auto.offset.store".into(), "true".into());
            }),
        ];
        for (key, break_it) in cases {
            let mut config = KafkaConfig::default();
            break_it(&mut config);
            assert_eq!(config.validate().unwrap_err().key, key, "{config:?}");
        }
    }
}
