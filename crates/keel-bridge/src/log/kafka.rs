//! The Kafka log: records in a topic keyed by device, written by an idempotent producer with
//! `acks=all` and read by one consumer group that commits offsets only past records that are
//! done; dead letters in a second topic.
//!
//! - **Topics.** Both are created on open when missing (a broker may not create topics on
//!   first use; tansu does not): the records topic with `partitions`, the dead-letter topic
//!   with one partition, so dead letters read back in the order they were written. A topic
//!   that exists is used as it is.
//! - **Order.** The message key is the device, so a device's records share a partition and
//!   are read in the order they were appended; the idempotent producer keeps that order
//!   through its own retries.
//! - **Appends** return once the brokers acknowledged with `acks=all`, or fail within
//!   `request_timeout` (librdkafka's `message.timeout.ms`, retries included). They always
//!   answer [`Appended::Stored`](super::Appended::Stored): the idempotent producer removes
//!   duplicates of its own retries within one producer session, but not a device's resend,
//!   nor an append tried again after a timeout or a crash. Such a duplicate reaches deliver,
//!   and the target's idempotency key makes its call a replay.
//! - **No transactions.** The idempotent producer and the target's idempotency key give one
//!   effect per request without them. Kafka's exactly-once transactions could not cover the
//!   gRPC call anyway, and tansu, the broker the tests run against, cannot commit one (it has
//!   no `EndTxn`).
//! - **Offsets.** Deliver marks records done in any order. Per partition the reader keeps the
//!   offsets it handed out and stores (`enable.auto.offset.store=false`) the offset just
//!   past the longest run of done records from the oldest one handed out: never past a record
//!   that is not done. librdkafka commits what is stored every `commit_interval` and when
//!   the reader is dropped (closing the consumer commits, then leaves the group).
//! - **Commit cadence.** A commit per done record would put a broker round trip (and on tansu
//!   a SQLite write) in the deliver loop for every record, so [`done`](super::LogReader::done)
//!   only stores the offset, in memory. The price: after a crash (not a clean stop) the
//!   records done in the last `commit_interval`, and done records behind one that was not,
//!   are handed out again. The target's idempotency key makes them replays. So for this log
//!   "done is not handed out again" holds across clean restarts.
//! - **Rebalances.** The group takes partitions away when a bridge joins or leaves, or stays
//!   silent past `session_timeout`. The tokens of a partition taken away become no-ops; its
//!   next owner reads from the committed offset, so records held here and not yet done are
//!   delivered again there, as replays. Under the classic (eager) protocol every rebalance
//!   takes all partitions and gives them out anew.
//! - **Liveness.** librdkafka leaves the group when `next` is not called for
//!   `max.poll.interval.ms` (5 min unless set under `properties`); the deliver stage calls it
//!   whenever it has room for a record.
//! - **Lag** is, summed over the assigned partitions, the high watermark less the next offset
//!   to hand out (before the first hand-out, the committed offset). The broker is asked at
//!   most once a second, for at most a second.
//! - **Durability** is the brokers': with `acks=all` every in-sync replica has an
//!   acknowledged record. tansu with its SQLite engine survives its process being killed, not
//!   the machine losing power (docs/notes/kafka-broker.md).

mod config;
mod offsets;
mod reader;
mod wire;
mod writer;

pub use config::KafkaConfig;
pub use offsets::KafkaToken;
pub use reader::KafkaReader;
pub use writer::KafkaWriter;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use keel_core::settings::Validate as _;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::{DeadLetter, LogError};
use writer::Producer;

/// Beyond `request_timeout` (which the admin request is given), how long creating topics
/// waits before it gives up on librdkafka answering at all.
const ADMIN_SLACK: Duration = Duration::from_secs(1);

/// An open Kafka log, from which writers and readers are made.
#[derive(Clone)]
pub struct KafkaLog {
    producer: Arc<Producer>,
    config: Arc<KafkaConfig>,
}

impl std::fmt::Debug for KafkaLog {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaLog")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl KafkaLog {
    /// Checks the configuration, creates both topics where missing and makes the producer.
    /// Brokers that do not answer within `request_timeout` are [`LogError::Unavailable`]; a
    /// configuration they or librdkafka will not take is [`LogError::Refused`].
    pub async fn open(config: KafkaConfig) -> Result<Self, LogError> {
        config
            .validate()
            .map_err(|error| LogError::Refused(error.to_string()))?;
        create_topics(&config).await?;
        let config = Arc::new(config);
        let producer = Producer::new(config.clone())?;
        // Learns the records topic now, so the first append waits for nothing else.
        producer
            .partitions(&config.topic, config.request_timeout)
            .await?;
        Ok(Self {
            producer: Arc::new(producer),
            config,
        })
    }

    /// A writer (cheap: writers share the producer).
    pub fn writer(&self) -> KafkaWriter {
        KafkaWriter::new(self.producer.clone(), self.config.clone())
    }

    /// A member of the consumer group `consumer`, reading from the committed offsets. It
    /// joins the group in the background, so its first reads may come back empty.
    pub fn reader(&self) -> Result<KafkaReader, LogError> {
        KafkaReader::subscribe(self.config.clone())
    }

    /// Every dead letter, oldest first (for tools and tests).
    pub async fn dead_letters(&self) -> Result<Vec<DeadLetter>, LogError> {
        let config = &self.config;
        let topic = config.dead_letter_topic.as_str();
        let unavailable = |error: &dyn std::fmt::Display| {
            LogError::Unavailable(format!("cannot read the dead letters: {error}"))
        };
        let partitions = self
            .producer
            .partitions(topic, config.request_timeout)
            .await?;
        let scanner: StreamConsumer = config
            .scanner()
            .create()
            .map_err(|error| unavailable(&error))?;
        let mut list = TopicPartitionList::new();
        for &partition in &partitions {
            list.add_partition_offset(topic, partition, Offset::Beginning)
                .map_err(|error| unavailable(&error))?;
        }
        scanner.assign(&list).map_err(|error| unavailable(&error))?;
        let mut open: HashSet<i32> = partitions.into_iter().collect();
        let mut letters = BTreeMap::new();
        while !open.is_empty() {
            let Ok(read) = tokio::time::timeout(config.request_timeout, scanner.recv()).await
            else {
                return Err(unavailable(&"the brokers did not answer in time"));
            };
            match read {
                Ok(message) => {
                    let at = (message.partition(), message.offset());
                    letters.insert(at, wire::dead_letter_from(&message));
                }
                Err(KafkaError::PartitionEOF(partition)) => {
                    open.remove(&partition);
                }
                Err(error) => return Err(unavailable(&error)),
            }
        }
        Ok(letters.into_values().collect())
    }
}

/// Creates the records and dead-letter topics; one that exists already is left as it is.
async fn create_topics(config: &KafkaConfig) -> Result<(), LogError> {
    let admin: AdminClient<DefaultClientContext> = config
        .admin()
        .create()
        .map_err(|error| LogError::Refused(format!("cannot make a Kafka admin client: {error}")))?;
    let options = AdminOptions::new()
        .request_timeout(Some(config.request_timeout))
        .operation_timeout(Some(config.request_timeout));
    // Both validated to fit.
    let partitions = i32::try_from(config.partitions).unwrap_or(i32::MAX);
    let replication = i32::try_from(config.replication_factor).unwrap_or(1);
    let topics = [
        NewTopic::new(
            &config.topic,
            partitions,
            TopicReplication::Fixed(replication),
        ),
        NewTopic::new(
            &config.dead_letter_topic,
            1,
            TopicReplication::Fixed(replication),
        ),
    ];
    let create = admin.create_topics(&topics, &options);
    let created = tokio::time::timeout(config.request_timeout + ADMIN_SLACK, create)
        .await
        .map_err(|_| LogError::Unavailable(format!("{} did not answer in time", config.brokers)))?
        .map_err(|error| {
            LogError::Unavailable(format!(
                "cannot create topics at {}: {error}",
                config.brokers
            ))
        })?;
    for outcome in created {
        let Err((topic, code)) = outcome else {
            continue;
        };
        let message = format!("cannot create topic {topic}: {code}");
        match code {
            RDKafkaErrorCode::TopicAlreadyExists => {}
            RDKafkaErrorCode::InvalidTopic
            | RDKafkaErrorCode::InvalidPartitions
            | RDKafkaErrorCode::InvalidReplicationFactor
            | RDKafkaErrorCode::InvalidConfig
            | RDKafkaErrorCode::PolicyViolation
            | RDKafkaErrorCode::TopicAuthorizationFailed
            | RDKafkaErrorCode::ClusterAuthorizationFailed => {
                return Err(LogError::Refused(message));
            }
            _ => return Err(LogError::Unavailable(message)),
        }
    }
    Ok(())
}
