//! The deliver stage's side of the JetStream log: one pull request per read, records held
//! until done and reported in progress meanwhile, confirmed acks.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::{Client, RequestErrorKind, Subject, jetstream};
use bytes::Bytes;
use futures_util::StreamExt as _;
use tokio::sync::oneshot;
use tokio::time::Instant;

use super::{JetStreamConfig, wire};
use crate::log::{Delivery, LogError, LogReader};

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

/// The longest a single pull request waits for records: also the longest a record received
/// by a pull waits for the pull to end.
const PULL_EXPIRES: Duration = Duration::from_millis(50);

/// How long past its expiry a pull is still read, for the server's answer to arrive.
const PULL_GRACE: Duration = Duration::from_millis(200);

/// How long a consumer's pending count is taken as current when no record said otherwise.
const LAG_REFRESH: Duration = Duration::from_secs(1);

/// The deliver stage's reader of a [`JetStreamLog`](super::JetStreamLog): one durable pull
/// consumer.
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
    /// The reader of `consumer`, with its task reporting held records in progress.
    pub(super) fn new(
        consumer: PullConsumer,
        client: Client,
        config: Arc<JetStreamConfig>,
    ) -> Self {
        let held = Arc::new(Mutex::new(HashMap::new()));
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(report_progress(
            client.clone(),
            held.clone(),
            (config.ack_wait / 3).max(PROGRESS_MIN),
            stopped,
        ));
        Self {
            consumer,
            client,
            held,
            config,
            lag: None,
            _stop_progress: stop,
        }
    }

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

    /// One pull request for at most `max` records, expiring after `expires` (at once when
    /// zero). The server ends a pull with a status when it expires, but drops one that has
    /// expired before it got to it without a word: so a pull is read until `expires` plus
    /// [`PULL_GRACE`] at most, and one that got no answer by then counts as empty. A server
    /// that is down fails the request itself, or the next one.
    async fn pull(
        &mut self,
        max: usize,
        expires: Duration,
    ) -> Result<Vec<Delivery<u64>>, LogError> {
        let deadline = Instant::now() + expires + PULL_GRACE;
        let mut fetch = self.consumer.fetch().max_messages(max.max(1));
        if !expires.is_zero() {
            fetch = fetch.expires(expires);
        }
        let request = tokio::time::timeout(self.config.request_timeout, fetch.messages());
        let mut batch = match request.await {
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
                Ok(None) | Err(_) => break,
                Ok(Some(Ok(message))) => {
                    deliveries.extend(self.take(message));
                    continue;
                }
                Ok(Some(Err(error))) => format!("the server ended a pull request: {error}"),
            };
            if deliveries.is_empty() {
                return Err(LogError::Unavailable(failure));
            }
            tracing::warn!(%failure, records = deliveries.len(), "bridge: pull request cut short");
            break;
        }
        Ok(deliveries)
    }
}

impl LogReader for JetStreamReader {
    /// The record's stream sequence.
    type Token = u64;

    async fn next(&mut self, max: usize, wait: Duration) -> Result<Vec<Delivery<u64>>, LogError> {
        // Short pulls, one after another until `wait` is used up: a pull holds what it got
        // until it is full or expires, so its expiry bounds how long a record waits here.
        let until = Instant::now() + wait;
        loop {
            let expires = until
                .saturating_duration_since(Instant::now())
                .min(PULL_EXPIRES);
            let deliveries = self.pull(max, expires).await?;
            if !deliveries.is_empty() || Instant::now() >= until {
                return Ok(deliveries);
            }
        }
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
