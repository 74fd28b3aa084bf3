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
//! - **Reading.** Each [`LogReader::next`] is one pull request that the server answers as soon
//!   as it has a record (or at `wait`), so none is left open to deliver records nobody reads.
//! - **Holding.** A record handed out stays with the reader until [done](LogReader::done),
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

mod wire;

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::ErrorCode;
use async_nats::jetstream::consumer::{AckPolicy, DeliverPolicy, PullConsumer, pull};
use async_nats::jetstream::context::{PublishError, PublishErrorKind};
use async_nats::jetstream::stream::{self, DiscardPolicy, RetentionPolicy, StorageType};
use async_nats::{Client, ConnectErrorKind, Event, RequestErrorKind, Subject, jetstream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{Appended, DeadLetter, Delivery, LogError, LogReader, LogWriter};
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
        let client = self.context.client();
        let held = Arc::new(Mutex::new(HashMap::new()));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(report_progress(
            client.clone(),
            held.clone(),
            (self.config.ack_wait / 3).max(PROGRESS_MIN),
            stopped,
        ));
        Ok(JetStreamReader {
            consumer,
            client,
            held,
            config: self.config.clone(),
            lag: None,
            _stop_progress: stop,
        })
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

/// The records a reader holds: stream sequence → the reply subject of its latest delivery
/// (acked on done, and told "in progress" meanwhile).
type Held = Arc<Mutex<HashMap<u64, Subject>>>;

fn lock(held: &Held) -> MutexGuard<'_, HashMap<u64, Subject>> {
    held.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Tells the server, every `every`, that each held record is still in progress, so it is
/// not redelivered while the deliver stage works on it. Ends when the reader is dropped.
async fn report_progress(
    client: Client,
    held: Held,
    every: Duration,
    mut stopped: oneshot::Receiver<()>,
) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            _ = tick.tick() => {}
        }
        let replies: Vec<Subject> = lock(&held).values().cloned().collect();
        let report = async {
            for reply in replies {
                client.publish(reply, Bytes::from_static(b"+WPI")).await?;
            }
            Ok::<_, async_nats::PublishError>(())
        };
        match tokio::time::timeout(every, report).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "bridge: cannot report held records"),
            Err(_) => tracing::warn!("bridge: reporting held records timed out"),
        }
    }
}

/// The shortest pause between two reports of held records.
const PROGRESS_MIN: Duration = Duration::from_millis(10);

/// How long a consumer's pending count is taken as current when no record said otherwise.
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// The deliver stage's reader of a [`JetStreamLog`]: one durable pull consumer.
#[derive(Debug)]
pub struct JetStreamReader {
    consumer: PullConsumer,
    client: Client,
    held: Held,
    config: Arc<JetStreamConfig>,
    /// The last known count of records not yet handed out, and when it was learnt.
    lag: Option<(Instant, u64)>,
    /// Dropped with the reader, which ends its progress task.
    _stop_progress: oneshot::Sender<()>,
}

impl JetStreamReader {
    /// The delivery of `message`, unless this reader already holds it (a redelivery).
    fn take(&mut self, message: jetstream::Message) -> Option<Delivery<u64>> {
        let (sequence, pending) = match message.info() {
            Ok(info) => (info.stream_sequence, info.pending),
            Err(error) => {
                tracing::warn!(%error, subject = %message.subject,
                    "bridge: a pulled message has no JetStream metadata; skipped");
                return None;
            }
        };
        self.lag = Some((Instant::now(), pending));
        let jetstream::Message { message, .. } = message;
        let reply = message.reply?;
        match lock(&self.held).entry(sequence) {
            // Redelivered while held: ack the newest delivery, but hand it out only once.
            Entry::Occupied(mut held) => {
                held.insert(reply);
                return None;
            }
            Entry::Vacant(held) => {
                held.insert(reply);
            }
        }
        Some(Delivery {
            record: wire::record_from(message.headers.as_ref(), message.payload),
            token: sequence,
        })
    }
}

impl LogReader for JetStreamReader {
    /// The record's stream sequence.
    type Token = u64;

    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery<u64>>, LogError> {
        // The server answers at `wait`; past this it is not answering at all.
        let deadline = Instant::now() + wait + self.config.request_timeout;
        let mut fetch = self.consumer.fetch().max_messages(max.max(1));
        if !wait.is_zero() {
            fetch = fetch.expires(wait);
        }
        let mut batch = match tokio::time::timeout_at(deadline, fetch.messages()).await {
            Ok(Ok(batch)) => batch,
            Ok(Err(error)) => {
                return Err(LogError::Unavailable(format!(
                    "cannot ask for records: {error}"
                )));
            }
            Err(_) => return Err(LogError::Unavailable("asking for records timed out".into())),
        };
        let mut deliveries = Vec::new();
        loop {
            // Records already received are handed out even if the rest of the answer fails:
            // the server counts them as delivered.
            let failure = match tokio::time::timeout_at(deadline, batch.next()).await {
                Ok(None) => break,
                Ok(Some(Ok(message))) => {
                    deliveries.extend(self.take(message));
                    continue;
                }
                Ok(Some(Err(error))) => format!("the server ended a pull request: {error}"),
                Err(_) => "the server did not answer a pull request in time".to_owned(),
            };
            if deliveries.is_empty() {
                return Err(LogError::Unavailable(failure));
            }
            tracing::warn!(%failure, records = deliveries.len(), "bridge: pull request cut short");
            break;
        }
        Ok(deliveries)
    }

    async fn done(&mut self, sequence: u64) -> Result<(), LogError> {
        let Some(reply) = lock(&self.held).get(&sequence).cloned() else {
            return Ok(());
        };
        // A confirmed ack: once done returns, a restart does not hand the record out again.
        let ack = self.client.request(reply, Bytes::from_static(b"+ACK"));
        match tokio::time::timeout(self.config.request_timeout, ack).await {
            Ok(Ok(_)) => {
                lock(&self.held).remove(&sequence);
                Ok(())
            }
            Ok(Err(error)) if error.kind() == RequestErrorKind::NoResponders => {
                Err(LogError::Refused(format!(
                    "consumer {} of stream {} is gone (another reader made it anew?)",
                    self.config.consumer, self.config.stream
                )))
            }
            Ok(Err(error)) => Err(LogError::Unavailable(format!(
                "the ack was not confirmed: {error}"
            ))),
            Err(_) => Err(LogError::Unavailable(
                "the ack was not confirmed in time".into(),
            )),
        }
    }

    async fn lag(&mut self) -> Result<Option<u64>, LogError> {
        if let Some((at, lag)) = self.lag
            && at.elapsed() < LAG_REFRESH
        {
            return Ok(Some(lag));
        }
        let info = tokio::time::timeout(self.config.request_timeout, self.consumer.info())
            .await
            .map_err(|_| LogError::Unavailable("asking for the consumer timed out".into()))?
            .map_err(|error| {
                LogError::Unavailable(format!("cannot ask for the consumer: {error}"))
            })?;
        let lag = info.num_pending;
        self.lag = Some((Instant::now(), lag));
        Ok(Some(lag))
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
