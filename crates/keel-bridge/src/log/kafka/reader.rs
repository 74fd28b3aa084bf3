//! The deliver stage's side of the Kafka log: a consumer group member that hands records out,
//! stores offsets only past the records that are done, drops the tokens of partitions a
//! rebalance takes away, and works out the lag.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use futures_util::{FutureExt as _, StreamExt as _};
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::Message as _;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::time::Instant;

use super::offsets::{KafkaToken, Offsets};
use super::{KafkaConfig, wire};
use crate::log::{Delivery, LogError, LogReader};

/// How long the broker's offsets of the partitions are taken as current for [`lag`](KafkaReader::lag).
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// How long fetching them may take; past it the lag is unknown until the next refresh.
const LAG_TIMEOUT: Duration = Duration::from_secs(1);

fn lock(offsets: &Mutex<Offsets>) -> MutexGuard<'_, Offsets> {
    offsets.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The partitions of `topic` in `list`.
fn partitions_of(list: &TopicPartitionList, topic: &str) -> Vec<i32> {
    list.elements_for_topic(topic)
        .iter()
        .map(|element| element.partition())
        .collect()
}

/// Hears of rebalances and commits, on the thread that polls the consumer (inside
/// [`KafkaReader::next`]).
pub(super) struct ReaderContext {
    offsets: Arc<Mutex<Offsets>>,
    topic: String,
}

impl ClientContext for ReaderContext {}

impl ConsumerContext for ReaderContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Assign(list) => {
                let partitions = partitions_of(list, &self.topic);
                tracing::info!(?partitions, topic = %self.topic, "bridge: Kafka partitions assigned");
            }
            Rebalance::Revoke(list) => {
                let partitions = partitions_of(list, &self.topic);
                tracing::info!(?partitions, topic = %self.topic,
                    "bridge: Kafka partitions taken away; records held from them are read again by their next owner");
                lock(&self.offsets).revoke(partitions);
            }
            Rebalance::Error(error) => {
                // librdkafka then drops the whole assignment.
                tracing::warn!(%error, "bridge: Kafka rebalance failed; giving up every partition");
                lock(&self.offsets).revoke_all();
            }
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, _: &TopicPartitionList) {
        match result {
            Ok(()) | Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)) => {}
            Err(error) => tracing::warn!(%error,
                "bridge: committing Kafka offsets failed; the next commit carries them"),
        }
    }
}

/// Per assigned partition: where this reader starts (the committed offset, or the earliest
/// one) and the high watermark, as the broker said at `at`.
struct Marks {
    at: Instant,
    assigned: Vec<i32>,
    partitions: HashMap<i32, (i64, i64)>,
}

/// The deliver stage's reader of a [`KafkaLog`](super::KafkaLog): one member of the consumer
/// group `consumer`, reading `topic`.
pub struct KafkaReader {
    consumer: Arc<StreamConsumer<ReaderContext>>,
    offsets: Arc<Mutex<Offsets>>,
    config: Arc<KafkaConfig>,
    marks: Option<Marks>,
}

impl std::fmt::Debug for KafkaReader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("KafkaReader")
            .field("topic", &self.config.topic)
            .field("consumer", &self.config.consumer)
            .finish_non_exhaustive()
    }
}

impl KafkaReader {
    /// Joins the group (in the background: partitions come with the first reads).
    pub(super) fn subscribe(config: Arc<KafkaConfig>) -> Result<Self, LogError> {
        let offsets = Arc::new(Mutex::new(Offsets::default()));
        let context = ReaderContext {
            offsets: offsets.clone(),
            topic: config.topic.clone(),
        };
        let consumer: StreamConsumer<ReaderContext> = config
            .consumer()
            .create_with_context(context)
            .map_err(|error| LogError::Refused(format!("cannot make a Kafka consumer: {error}")))?;
        consumer
            .subscribe(&[config.topic.as_str()])
            .map_err(|error| {
                LogError::Refused(format!("cannot subscribe to {}: {error}", config.topic))
            })?;
        Ok(Self {
            consumer: Arc::new(consumer),
            offsets,
            config,
            marks: None,
        })
    }

    /// Asks the broker for the start and high watermark of each of `assigned`.
    async fn fetch_marks(&self, assigned: Vec<i32>) -> Result<Marks, LogError> {
        let consumer = self.consumer.clone();
        let topic = self.config.topic.clone();
        let ask = move || -> KafkaResult<Marks> {
            let deadline = std::time::Instant::now() + LAG_TIMEOUT;
            let left = || deadline.saturating_duration_since(std::time::Instant::now());
            let mut list = TopicPartitionList::new();
            for partition in &assigned {
                list.add_partition(&topic, *partition);
            }
            let committed = consumer.committed_offsets(list, left())?;
            let mut partitions = HashMap::new();
            for &partition in &assigned {
                let (low, high) = consumer.fetch_watermarks(&topic, partition, left())?;
                let start = match committed
                    .find_partition(&topic, partition)
                    .map(|e| e.offset())
                {
                    Some(Offset::Offset(offset)) if offset >= 0 => offset,
                    _ => low,
                };
                partitions.insert(partition, (start, high));
            }
            Ok(Marks {
                at: Instant::now(),
                assigned,
                partitions,
            })
        };
        tokio::task::spawn_blocking(ask)
            .await
            .map_err(|error| LogError::Unavailable(format!("asking for offsets failed: {error}")))?
            .map_err(|error| LogError::Unavailable(format!("cannot ask for offsets: {error}")))
    }
}

impl LogReader for KafkaReader {
    type Token = KafkaToken;

    async fn next(
        &mut self,
        max: usize,
        wait: Duration,
    ) -> Result<Vec<Delivery<KafkaToken>>, LogError> {
        let deadline = Instant::now() + wait;
        let mut stream = self.consumer.stream();
        let mut deliveries = Vec::new();
        while deliveries.len() < max.max(1) {
            // Wait for the first record only; then take what librdkafka already has.
            let item = if deliveries.is_empty() {
                match tokio::time::timeout_at(deadline, stream.next()).await {
                    Ok(item) => item,
                    Err(_) => break,
                }
            } else {
                match stream.next().now_or_never() {
                    Some(item) => item,
                    None => break,
                }
            };
            match item {
                Some(Ok(message)) => {
                    let token = lock(&self.offsets).hand_out(message.partition(), message.offset());
                    if let Some(token) = token {
                        let record = wire::record_from(&message);
                        deliveries.push(Delivery { record, token });
                    }
                }
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    return Err(LogError::Refused(format!(
                        "the Kafka consumer failed for good: {code}"
                    )));
                }
                Some(Err(error)) if deliveries.is_empty() => {
                    return Err(LogError::Unavailable(format!(
                        "cannot read from Kafka: {error}"
                    )));
                }
                // Records already taken are handed out; the error comes again if it lasts.
                Some(Err(_)) | None => break,
            }
        }
        Ok(deliveries)
    }

    async fn done(&mut self, token: KafkaToken) -> Result<(), LogError> {
        let Some(position) = lock(&self.offsets).done(&token) else {
            return Ok(());
        };
        let mut list = TopicPartitionList::new();
        let stored = list
            .add_partition_offset(
                &self.config.topic,
                token.partition(),
                Offset::Offset(position),
            )
            .and_then(|()| self.consumer.store_offsets(&list));
        if let Err(error) = stored {
            // Storing is local; it fails only for a partition no longer assigned, whose
            // records are read again by its next owner.
            tracing::debug!(%error, partition = token.partition(), position,
                "bridge: cannot store a Kafka offset");
        }
        Ok(())
    }

    async fn lag(&mut self) -> Result<Option<u64>, LogError> {
        let assignment = self
            .consumer
            .assignment()
            .map_err(|error| LogError::Unavailable(format!("no Kafka assignment: {error}")))?;
        let mut assigned = partitions_of(&assignment, &self.config.topic);
        if assigned.is_empty() {
            return Ok(None);
        }
        assigned.sort_unstable();
        let fresh = self
            .marks
            .as_ref()
            .is_some_and(|marks| marks.at.elapsed() < LAG_REFRESH && marks.assigned == assigned);
        if !fresh {
            match self.fetch_marks(assigned.clone()).await {
                Ok(marks) => self.marks = Some(marks),
                Err(error) => {
                    // Not asked again until the refresh: the deliver loop calls this often.
                    self.marks = Some(Marks {
                        at: Instant::now(),
                        assigned,
                        partitions: HashMap::new(),
                    });
                    return Err(error);
                }
            }
        }
        let Some(marks) = &self.marks else {
            return Ok(None);
        };
        let offsets = lock(&self.offsets);
        let mut lag = 0;
        for partition in &marks.assigned {
            let Some(&(start, high)) = marks.partitions.get(partition) else {
                return Ok(None);
            };
            let position = offsets.next(*partition).unwrap_or(start);
            lag += u64::try_from(high - position).unwrap_or(0);
        }
        Ok(Some(lag))
    }
}
