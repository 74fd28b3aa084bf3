//! The producing side of the Kafka log: an idempotent producer with `acks=all`, replaced
//! when librdkafka declares it failed for good, and the metadata request that says whether
//! the brokers answer.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::OwnedHeaders;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

use super::{KafkaConfig, wire};
use crate::log::{Appended, DeadLetter, LogError, LogWriter};
use crate::record::Record;

/// The longest a readiness check waits for the brokers.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// The producer the writers share.
pub(super) struct Producer {
    current: Mutex<FutureProducer>,
    config: Arc<KafkaConfig>,
}

impl Producer {
    pub(super) fn new(config: Arc<KafkaConfig>) -> Result<Self, LogError> {
        Ok(Self {
            current: Mutex::new(make(&config)?),
            config,
        })
    }

    fn get(&self) -> FutureProducer {
        self.current
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Replaces the producer if it failed for good (librdkafka's fatal error: an idempotent
    /// producer whose sequence the broker no longer accepts), so later appends work again.
    fn renew_if_failed(&self) {
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        let Some((code, reason)) = current.client().fatal_error() else {
            return;
        };
        tracing::error!(%code, %reason, "bridge: the Kafka producer failed for good; making a new one");
        match make(&self.config) {
            Ok(fresh) => *current = fresh,
            Err(error) => tracing::error!(%error, "bridge: cannot make a new Kafka producer"),
        }
    }

    /// Sends one message and waits for the brokers' acknowledgement.
    async fn send(
        &self,
        topic: &str,
        key: &str,
        payload: &[u8],
        headers: OwnedHeaders,
    ) -> Result<(), KafkaError> {
        let producer = self.get();
        let record = FutureRecord::to(topic)
            .key(key)
            .payload(payload)
            .headers(headers);
        // Never waits for room in librdkafka's queue (QueueFull is an error at once). A
        // record not acknowledged in time stays queued: librdkafka never gives up on one.
        let send = producer.send(record, Duration::ZERO);
        let outcome = match tokio::time::timeout(self.config.request_timeout, send).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err((error, _))) => Err(error),
            Err(_) => Err(KafkaError::MessageProduction(
                RDKafkaErrorCode::MessageTimedOut,
            )),
        };
        if outcome.is_err() {
            self.renew_if_failed();
        }
        outcome
    }

    /// The partitions of `topic`, from a metadata request that may take `timeout`.
    pub(super) async fn partitions(
        &self,
        topic: &str,
        timeout: Duration,
    ) -> Result<Vec<i32>, LogError> {
        let producer = self.get();
        let name = topic.to_owned();
        let ask = move || {
            let metadata = producer.client().fetch_metadata(Some(&name), timeout)?;
            let found = metadata.topics().iter().find(|found| found.name() == name);
            Ok(found.map(|found| {
                let partitions = found.partitions().iter().map(|p| p.id()).collect();
                (found.error(), partitions)
            }))
        };
        let answer: Result<_, KafkaError> =
            tokio::task::spawn_blocking(ask).await.map_err(|error| {
                LogError::Unavailable(format!("asking for metadata failed: {error}"))
            })?;
        match answer {
            Ok(Some((None, partitions))) => Ok(partitions),
            Ok(Some((Some(error), _))) => Err(LogError::Unavailable(format!(
                "topic {topic}: {}",
                RDKafkaErrorCode::from(error)
            ))),
            Ok(None) => Err(LogError::Unavailable(format!(
                "topic {topic} does not exist"
            ))),
            Err(error) => Err(LogError::Unavailable(format!(
                "cannot get metadata from {}: {error}",
                self.config.brokers
            ))),
        }
    }
}

fn make(config: &KafkaConfig) -> Result<FutureProducer, LogError> {
    config
        .producer()
        .create()
        .map_err(|error| LogError::Refused(format!("cannot make a Kafka producer: {error}")))
}

/// Errors about the message itself, which the brokers will refuse again; anything else (no
/// answer, no leader, a broker restarting) may pass later.
fn append_error(error: &KafkaError) -> LogError {
    let refused = matches!(
        error.rdkafka_error_code(),
        Some(
            RDKafkaErrorCode::MessageSizeTooLarge
                | RDKafkaErrorCode::InvalidMessageSize
                | RDKafkaErrorCode::InvalidRecord
                | RDKafkaErrorCode::TopicAuthorizationFailed
        )
    );
    if refused {
        LogError::Refused(format!("Kafka refused the record: {error}"))
    } else {
        // librdkafka may still deliver it: nothing is known.
        LogError::Unavailable(format!("the append was not acknowledged: {error}"))
    }
}

/// Appends to a [`KafkaLog`](super::KafkaLog).
#[derive(Clone)]
pub struct KafkaWriter {
    producer: Arc<Producer>,
    config: Arc<KafkaConfig>,
}

impl std::fmt::Debug for KafkaWriter {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaWriter")
            .field("topic", &self.config.topic)
            .finish_non_exhaustive()
    }
}

impl KafkaWriter {
    pub(super) fn new(producer: Arc<Producer>, config: Arc<KafkaConfig>) -> Self {
        Self { producer, config }
    }
}

impl LogWriter for KafkaWriter {
    /// Always [`Appended::Stored`]: Kafka cannot tell a resent key (see the module docs).
    async fn append(&self, record: Record) -> Result<Appended, LogError> {
        let headers = wire::record_headers(&record).map_err(|names| {
            LogError::Refused(format!(
                "these record headers are the bridge's own or hold a NUL: {}",
                names.join(", ")
            ))
        })?;
        self.producer
            .send(&self.config.topic, &record.device, &record.payload, headers)
            .await
            .map_err(|error| append_error(&error))?;
        Ok(Appended::Stored)
    }

    async fn dead_letter(&self, mut letter: DeadLetter) -> Result<(), LogError> {
        let topic = &self.config.dead_letter_topic;
        let headers = wire::dead_letter_headers(&letter, None);
        let device = letter.record.device.clone();
        let sent = self
            .producer
            .send(topic, &device, &letter.record.payload, headers)
            .await;
        let too_large = |error: &KafkaError| {
            error.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageSizeTooLarge)
        };
        match sent {
            // A record too large for the log comes here; keep what fits rather than refuse.
            Err(error) if too_large(&error) => {
                let note = format!(
                    "payload of {} bytes not kept: {error}",
                    letter.record.payload.len()
                );
                letter.record.payload = Bytes::new();
                let headers = wire::dead_letter_headers(&letter, Some(&note));
                self.producer
                    .send(topic, &device, &[], headers)
                    .await
                    .map_err(|error| append_error(&error))
            }
            sent => sent.map_err(|error| append_error(&error)),
        }
    }

    async fn check(&self) -> Result<(), LogError> {
        let timeout = CHECK_TIMEOUT.min(self.config.request_timeout);
        self.producer
            .partitions(&self.config.topic, timeout)
            .await
            .map(drop)
    }
}
