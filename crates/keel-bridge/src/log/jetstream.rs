//! The NATS JetStream log: records in a work-queue stream deduplicated on `Nats-Msg-Id`, read
//! by one durable pull consumer with explicit acks; dead letters in a second stream.
//!
//! - **Subjects.** A record is published on `<prefix>.in.<route>.<device>` and a dead letter
//!   on `<prefix>.dead.<reason>.<route>.<device>`, each token made subject-safe (`%XX` for any
//!   byte but letters, digits, `-` and `_`). The headers carry the real values (`Keel-Device`,
//!   `Keel-Route`, the key as `Nats-Msg-Id`, every record header under its own name), so the
//!   subjects are only for people and filters: `nats stream subjects` shows which devices
//!   have records waiting.
//! - **Order.** One stream, one consumer, one pull request at a time: records come out in
//!   stream order, so each device's in the order they were appended.
//! - **Retention.** The records stream has work-queue retention: a record stays until the
//!   consumer acks it, whether a consumer exists or not, and goes once acked. The stream
//!   accepts one consumer on its subjects, so a second bridge reading it under another
//!   consumer name fails to open instead of taking half the records.
//! - **Deduplication.** Within `duplicate_window` (default 2 min, JetStream's own) a resent
//!   key is answered as a duplicate and not stored. JetStream keeps the window's keys in
//!   memory, so it is meant to be short, unlike the embedded log's 24 h: a device that resends
//!   later gets its record stored and delivered again, and the target's idempotency key makes
//!   that call a replay.
//! - **Reading.** Each [`LogReader::next`](super::LogReader::next) is one pull request that the server answers as soon
//!   as it has a record (or at `wait`), so none is left open to deliver records nobody reads.
//! - **Holding.** A record handed out stays with the reader until [done](super::LogReader::done),
//!   which acks it and waits for the server to confirm. While held, a task tells the server
//!   every third of `ack_wait` that the record is in progress, so a record the deliver stage
//!   holds for a long retry is not redelivered; were it redelivered anyway (a connection lost
//!   for longer than `ack_wait`), the reader does not hand it out a second time.
//! - **Restart.** JetStream redelivers a record nobody acked only after `ack_wait`, and then
//!   behind newer ones. So a new reader that finds records still pending from an earlier one
//!   deletes the consumer and makes it again: the work-queue stream still holds every record
//!   not acked, and the new consumer starts at the oldest, in order. One reader per consumer.
//! - **Durability.** An acknowledged append is on the stream's replicas, written but by
//!   default synced to disk only every 2 minutes (the server's `sync_interval`). With one
//!   replica it survives the server process crashing, not the machine losing power; for that
//!   set `jetstream { sync_interval: always }` on the server, or keep three replicas.
//! - **Dead letters** are not deduplicated (a dead letter shares its record's key): one
//!   whose acknowledgement was lost and that was sent again is kept twice.

mod reader;
mod wire;

pub use reader::JetStreamReader;

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::{ConnectErrorKind, Event, jetstream};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{Appended, DeadLetter, LogError, LogWriter};
use crate::record::Record;

/// Where the JetStream log lives and how it behaves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JetStreamConfig {
    /// The NATS server, `nats://host:port`; a user and password may be given in the URL
    /// (default `nats://127.0.0.1:4222`).
    pub url: String,
    /// The stream of records between ingest and deliver, created or updated on open with
    /// work-queue retention and file storage (default `KEEL_BRIDGE`).
    pub stream: String,
    /// The stream that keeps dead letters until a person removes them (default
    /// `KEEL_BRIDGE_DEAD`).
    pub dead_letter_stream: String,
    /// The first tokens of every subject (default `keel.bridge`): records are published on
    /// `<prefix>.in.<route>.<device>`, dead letters on `<prefix>.dead.<reason>.<route>.<device>`.
    pub subject_prefix: String,
    /// The durable pull consumer the deliver stage reads with (default `deliver`).
    pub consumer: String,
    /// How long the stream remembers a key, within which an append of the same key is a
    /// duplicate (default 2 min, JetStream's own; see the module docs for why it is short).
    #[serde(with = "humantime_serde")]
    pub duplicate_window: Duration,
    /// How long the server waits for a handed-out record to be acked before it delivers the
    /// record again (default 30 s). The reader reports the records it holds as in progress
    /// every third of this, so it bounds how long a lost connection may last unnoticed.
    #[serde(with = "humantime_serde")]
    pub ack_wait: Duration,
    /// Most records handed out and not yet acked (default 1000). At least the deliver stage's
    /// `max_in_flight`: once this many are held, a read gets nothing and waits out its wait.
    pub max_ack_pending: usize,
    /// Copies of each stream kept by a NATS cluster (default 1).
    pub replicas: usize,
    /// How long connecting, a publish acknowledgement, an ack confirmation or an API request
    /// may take before the log counts as unavailable (default 5 s).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
}

impl Default for JetStreamConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            stream: "KEEL_BRIDGE".into(),
            dead_letter_stream: "KEEL_BRIDGE_DEAD".into(),
            subject_prefix: "keel.bridge".into(),
            consumer: "deliver".into(),
            duplicate_window: Duration::from_secs(120),
            ack_wait: Duration::from_secs(30),
            max_ack_pending: 1000,
            replicas: 1,
            request_timeout: Duration::from_secs(5),
        }
    }
}

impl JetStreamConfig {
    fn validate(&self) -> Result<(), String> {
        for (field, name) in [
            ("stream", &self.stream),
            ("dead_letter_stream", &self.dead_letter_stream),
            ("consumer", &self.consumer),
        ] {
            if name.is_empty() || name.contains(['.', '*', '>', '/', '\\']) || has_space(name) {
                return Err(format!(
                    "{field}: {name:?} is not a JetStream name (no '.', '*', '>', slashes or spaces)"
                ));
            }
        }
        if self.stream == self.dead_letter_stream {
            return Err("dead_letter_stream must differ from stream".into());
        }
        let tokens_ok = self
            .subject_prefix
            .split('.')
            .all(|token| !token.is_empty() && !token.contains(['*', '>']) && !has_space(token));
        if !tokens_ok {
            return Err(format!(
                "subject_prefix: {:?} is not a subject without wildcards",
                self.subject_prefix
            ));
        }
        for (field, value) in [
            ("duplicate_window", self.duplicate_window),
            ("ack_wait", self.ack_wait),
            ("request_timeout", self.request_timeout),
        ] {
            if value.is_zero() {
                return Err(format!("{field} must be more than zero"));
            }
        }
        if self.max_ack_pending == 0 || self.replicas == 0 {
            return Err("max_ack_pending and replicas must be at least 1".into());
        }
        Ok(())
    }

    fn records_filter(&self) -> String {
        format!("{}.in.>", self.subject_prefix)
    }
}

fn has_space(text: &str) -> bool {
    text.chars().any(char::is_whitespace)
}

/// An open JetStream log, from which writers and readers are made.
#[derive(Debug, Clone)]
pub struct JetStreamLog {
    context: jetstream::Context,
    config: Arc<JetStreamConfig>,
}

impl JetStreamLog {
    /// Connects, and creates or updates both streams and the consumer. A server that cannot
    /// be reached is [`LogError::Unavailable`]; a configuration it will not take (a stream
    /// whose subjects overlap another's, a second consumer on the records) is
    /// [`LogError::Refused`].
    pub async fn open(config: JetStreamConfig) -> Result<Self, LogError> {
        config.validate().map_err(LogError::Refused)?;
        let client = async_nats::ConnectOptions::new()
            .name("keel-bridge")
            .connection_timeout(config.request_timeout)
            .request_timeout(Some(config.request_timeout))
            .event_callback(|event| async move {
                match event {
                    Event::Connected => tracing::info!("bridge: connected to NATS"),
                    event => tracing::warn!(%event, "bridge: NATS connection"),
                }
            })
            .connect(config.url.as_str())
            .await
            .map_err(|error| {
                let message = format!("cannot connect to NATS at {}: {error}", config.url);
                match error.kind() {
                    ConnectErrorKind::ServerParse
                    | ConnectErrorKind::Authentication
                    | ConnectErrorKind::AuthorizationViolation
                    | ConnectErrorKind::Tls => LogError::Refused(message),
                    _ => LogError::Unavailable(message),
                }
            })?;
        let context = jetstream::ContextBuilder::new()
            .timeout(config.request_timeout)
            .backpressure_on_inflight(true)
            .build(client);
        let log = Self {
            context,
            config: Arc::new(config),
        };
        log.make_streams().await?;
        log.make_consumer().await?;
        Ok(log)
    }

    async fn make_streams(&self) -> Result<(), LogError> {
        let config = &self.config;
        let records = stream::Config {
            name: config.stream.clone(),
            description: Some("keel bridge: device requests on their way to gRPC".into()),
            subjects: vec![config.records_filter()],
            retention: RetentionPolicy::WorkQueue,
            // Full is full: refuse appends (ingest waits) rather than drop undelivered records.
            discard: DiscardPolicy::New,
            storage: StorageType::File,
            num_replicas: config.replicas,
            duplicate_window: config.duplicate_window,
            ..Default::default()
        };
        let dead_letters = stream::Config {
            name: config.dead_letter_stream.clone(),
            description: Some("keel bridge: requests that will not be delivered".into()),
            subjects: vec![format!("{}.dead.>", config.subject_prefix)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            num_replicas: config.replicas,
            ..Default::default()
        };
        for stream in [records, dead_letters] {
            let name = stream.name.clone();
            self.context
                .create_or_update_stream(stream)
                .await
                .map_err(|error| {
                    use jetstream::context::CreateStreamErrorKind as Kind;
                    let message = format!("cannot create or update stream {name}: {error}");
                    match error.kind() {
                        Kind::TimedOut | Kind::JetStreamUnavailable | Kind::Response => {
                            LogError::Unavailable(message)
                        }
                        _ => LogError::Refused(message),
                    }
                })?;
        }
        Ok(())
    }

    fn consumer_config(&self) -> pull::Config {
        let config = &self.config;
        pull::Config {
            durable_name: Some(config.consumer.clone()),
            description: Some("keel bridge: the deliver stage".into()),
            deliver_policy: DeliverPolicy::All,
            ack_policy: AckPolicy::Explicit,
            ack_wait: config.ack_wait,
            filter_subject: config.records_filter(),
            max_ack_pending: i64::try_from(config.max_ack_pending).unwrap_or(i64::MAX),
            ..Default::default()
        }
    }

    async fn make_consumer(&self) -> Result<PullConsumer, LogError> {
        self.context
            .create_consumer_on_stream(self.consumer_config(), self.config.stream.as_str())
            .await
            .map_err(|error| {
                use jetstream::stream::ConsumerErrorKind as Kind;
                let message = format!(
                    "cannot create or update consumer {} of stream {}: {error}",
                    self.config.consumer, self.config.stream
                );
                match error.kind() {
                    Kind::TimedOut | Kind::Request => LogError::Unavailable(message),
                    _ => LogError::Refused(message),
                }
            })
    }

    /// A writer (cheap: writers share the connection).
    pub fn writer(&self) -> JetStreamWriter {
        JetStreamWriter { log: self.clone() }
    }

    /// The reader of the configured consumer, starting at the oldest record not acked. If an
    /// earlier reader left records handed out and not done, the consumer is made anew so they
    /// come first (see the module docs); so there must be one reader at a time.
    pub async fn reader(&self) -> Result<JetStreamReader, LogError> {
        let timeout = self.config.request_timeout;
        let stream = self.context.get_stream_no_info(&self.config.stream);
        let stream = stream
            .await
            .map_err(|error| LogError::Refused(error.to_string()))?;
        let info = tokio::time::timeout(timeout, stream.consumer_info(&self.config.consumer))
            .await
            .map_err(|_| LogError::Unavailable("asking for the consumer timed out".into()))?;
        match info {
            Ok(info) if info.num_ack_pending > 0 => {
                tracing::info!(records = info.num_ack_pending, consumer = %self.config.consumer,
                    "bridge: records were left held; making the consumer anew to hand them out first");
                tokio::time::timeout(timeout, stream.delete_consumer(&self.config.consumer))
                    .await
                    .map_err(|_| LogError::Unavailable("deleting the consumer timed out".into()))?
                    .map_err(|error| {
                        LogError::Unavailable(format!("cannot delete the consumer: {error}"))
                    })?;
            }
            Ok(_) => {}
            Err(error) if error.kind() == jetstream::context::ConsumerInfoErrorKind::NotFound => {}
            Err(error) => {
                return Err(LogError::Unavailable(format!(
                    "cannot ask for consumer {}: {error}",
                    self.config.consumer
                )));
            }
        }
        let consumer = self.make_consumer().await?;
        Ok(JetStreamReader::new(
            consumer,
            self.context.client(),
            self.config.clone(),
        ))
    }

    /// Every dead letter, oldest first (for tools and tests).
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, LogError> {
        let unavailable = |error: &dyn std::fmt::Display| {
            LogError::Unavailable(format!("cannot read the dead letters: {error}"))
        };
        let stream = self
            .context
            .get_stream(&self.config.dead_letter_stream)
            .await
            .map_err(|error| unavailable(&error))?;
        let state = stream.cached_info().state.clone();
        let mut letters = Vec::new();
        if state.messages == 0 {
            return Ok(letters);
        }
        for sequence in state.first_sequence..=state.last_sequence {
            match stream.get_raw_message(sequence).await {
                Ok(message) => letters.push(wire::dead_letter_from(
                    Some(&message.headers),
                    message.payload,
                )),
                // A removed dead letter leaves a gap.
                Err(error) if error.kind() == stream::RawMessageErrorKind::NoMessageFound => {}
                Err(error) => return Err(unavailable(&error)),
            }
        }
        Ok(letters)
    }
}

/// Appends to a [`JetStreamLog`].
#[derive(Debug, Clone)]
pub struct JetStreamWriter {
    log: JetStreamLog,
}

impl JetStreamWriter {
    /// Publishes and waits for the stream's acknowledgement, within `request_timeout`.
    async fn publish(
        &self,
        subject: String,
        headers: async_nats::HeaderMap,
        payload: Bytes,
    ) -> Result<jetstream::publish::PublishAck, LogError> {
        let context = &self.log.context;
        let publish = async {
            context
                .publish_with_headers(subject, headers, payload)
                .await?
                .await
        };
        match tokio::time::timeout(self.log.config.request_timeout, publish).await {
            Ok(Ok(ack)) => Ok(ack),
            Ok(Err(error)) => Err(publish_error(&error)),
            Err(_) => Err(LogError::Unavailable(
                "the stream did not acknowledge the append in time".into(),
            )),
        }
    }

    /// What the server takes at most, headers and payload together.
    fn max_payload(&self) -> usize {
        self.log.context.client().server_info().max_payload
    }
}

impl LogWriter for JetStreamWriter {
    async fn append(&self, record: Record) -> Result<Appended, LogError> {
        let headers = wire::record_headers(&record).map_err(|names| {
            LogError::Refused(format!(
                "these record headers cannot be NATS headers: {}",
                names.join(", ")
            ))
        })?;
        let size = wire::header_len(&headers) + record.payload.len();
        let max = self.max_payload();
        if size > max {
            return Err(LogError::Refused(format!(
                "the record is {size} bytes with its headers; the NATS server takes at most {max}"
            )));
        }
        let subject = wire::record_subject(&self.log.config.subject_prefix, &record);
        let ack = self.publish(subject, headers, record.payload).await?;
        Ok(if ack.duplicate {
            Appended::Duplicate
        } else {
            Appended::Stored
        })
    }

    async fn dead_letter(&self, mut letter: DeadLetter) -> Result<(), LogError> {
        let subject = wire::dead_letter_subject(&self.log.config.subject_prefix, &letter);
        let mut headers = wire::dead_letter_headers(&letter, None);
        let max = self.max_payload();
        if wire::header_len(&headers) + letter.record.payload.len() > max {
            // A record too large for the log comes here; keep what fits rather than refuse.
            let note = format!(
                "payload of {} bytes not kept: the NATS server takes at most {max}",
                letter.record.payload.len()
            );
            letter.record.payload = Bytes::new();
            headers = wire::dead_letter_headers(&letter, Some(note));
        }
        self.publish(subject, headers, letter.record.payload)
            .await
            .map(drop)
    }

    async fn check(&self) -> Result<(), LogError> {
        let config = &self.log.config;
        let info = self.log.context.get_stream(&config.stream);
        match tokio::time::timeout(config.request_timeout, info).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(error)) => Err(LogError::Unavailable(format!(
                "cannot get stream {}: {error}",
                config.stream
            ))),
            Err(_) => Err(LogError::Unavailable(format!(
                "asking for stream {} timed out",
                config.stream
            ))),
        }
    }
}

/// A stream that answered with an error about the message itself will refuse it again;
/// anything else (no answer, no stream, a store that is full or failing) may pass later.
fn publish_error(error: &PublishError) -> LogError {
    let server_error = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<jetstream::Error>());
    let too_large = server_error
        .is_some_and(|error| error.error_code() == ErrorCode::STREAM_MESSAGE_EXCEEDS_MAXIMUM);
    let message = match (error.kind(), server_error) {
        (PublishErrorKind::Other, Some(server)) => {
            format!("the stream refused the append: {server}")
        }
        _ => format!("cannot append: {error}"),
    };
    if too_large {
        LogError::Refused(message)
    } else {
        LogError::Unavailable(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configuration_has_defaults_and_refuses_unknown_fields() {
        let config: JetStreamConfig =
            serde_json::from_str(r#"{"url": "nats://nats:4222", "ack_wait": "1m"}"#).unwrap();
        assert_eq!(config.url, "nats://nats:4222");
        assert_eq!(config.ack_wait, Duration::from_secs(60));
        assert_eq!(config.stream, JetStreamConfig::default().stream);
        assert!(serde_json::from_str::<JetStreamConfig>(r#"{"urls": "x"}"#).is_err());
        config.validate().unwrap();
    }

    #[test]
    fn names_and_subjects_are_checked() {
        for broken in [
            JetStreamConfig {
                stream: "A.B".into(),
                ..JetStreamConfig::default()
            },
            JetStreamConfig {
                consumer: "has space".into(),
                ..JetStreamConfig::default()
            },
            JetStreamConfig {
                dead_letter_stream: "KEEL_BRIDGE".into(),
                ..JetStreamConfig::default()
            },
            JetStreamConfig {
                subject_prefix: "keel..bridge".into(),
                ..JetStreamConfig::default()
            },
            JetStreamConfig {
                subject_prefix: "keel.>".into(),
                ..JetStreamConfig::default()
            },
            JetStreamConfig {
                ack_wait: Duration::ZERO,
                ..JetStreamConfig::default()
            },
            JetStreamConfig {
                max_ack_pending: 0,
                ..JetStreamConfig::default()
            },
        ] {
            assert!(broken.validate().is_err(), "{broken:?}");
        }
    }
}
