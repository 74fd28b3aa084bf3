//! The ingest stage: MQTT in, log out, and a PUBACK only once the log has the request.
//!
//! Each message is read by the [`Intake`] at once; its append then waits in its device's
//! [lane](Lanes), so one device's requests reach the log in the order they arrived. A message
//! that cannot be a request is dead-lettered instead, and acknowledged once the dead letter is
//! stored. PUBACKs go out in the order the messages arrived, as MQTT 5 requires of a client
//! (section 4.6), and only on the connection the message came on: after a reconnect the broker
//! sends the unacknowledged messages again, and the log's deduplication absorbs the repeat.
//!
//! While the log is down appends are retried and nothing is acknowledged, so the broker stops
//! sending once the receive maximum is reached, and keeps the rest in the persistent session.
//!
//! Each message has an ingest span from its receipt to the log's acknowledgement
//! ([`BridgeSpans::ingest`]).

use std::collections::{BTreeMap, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use keel_telemetry::AppSpan;
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::Publish as MqttPublish;
use tokio::task::JoinSet;

use crate::fault::{self, Point};
use crate::intake::{Intake, Publish};
use crate::lanes::Lanes;
use crate::log::{DeadLetter, LogError, LogWriter};
use crate::metrics::BridgeMetrics;
use crate::mqtt::{self, MqttConfig, MqttEvent};
use crate::record::Record;
use crate::spans::BridgeSpans;

/// How soon PUBACKs that found the client's queue full are tried again.
const ACK_RETRY: Duration = Duration::from_millis(5);

/// Longest pause between attempts to append to a log that is down.
const MAX_APPEND_PAUSE: Duration = Duration::from_secs(2);

/// What one message becomes.
enum Work {
    /// A request for the log.
    Append(Record),
    /// A message that cannot be delivered.
    DeadLetter(DeadLetter),
}

/// A message being worked on: where it came from and what to do.
struct Job {
    generation: u64,
    arrival: u64,
    lane: String,
    route: String,
    received: Instant,
    work: Work,
    /// The ingest span, until the log has the message.
    span: Option<AppSpan>,
}

/// Runs the ingest stage until `shutdown` completes: subscribes to every route's filter and
/// appends what arrives to the log through `writer`, tracing each message with `spans`.
/// `connected` says whether the broker connection is up, for readiness.
pub async fn run<W: LogWriter>(
    config: &MqttConfig,
    intake: Arc<Intake>,
    writer: Arc<W>,
    metrics: BridgeMetrics,
    spans: Arc<BridgeSpans>,
    connected: Arc<AtomicBool>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), String> {
    let options = config.options(&config.client_id)?;
    let max_in_flight = usize::from(config.max_in_flight.max(1));
    let (client, mut events) = mqtt::start(options, max_in_flight);
    let filters: Vec<String> = intake
        .routes()
        .map(|route| config.subscription(route.filter().as_str()))
        .collect();

    let mut lanes: Lanes<String, Job> = Lanes::new();
    let mut running: JoinSet<Job> = JoinSet::new();
    let mut acks = AckOrder::default();
    // PUBACKs the client's request queue had no room for yet. Never awaited: the event
    // loop task drains that queue only while this loop takes its events, so waiting here
    // for room would stop both (and the keep-alive pings with them).
    let mut unsent: VecDeque<MqttPublish> = VecDeque::new();
    let mut retry_acks = tokio::time::interval(ACK_RETRY);
    retry_acks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = retry_acks.tick(), if !unsent.is_empty() => send_acks(&client, &mut unsent),
            Some(finished) = running.join_next() => {
                let job = finished.map_err(|error| format!("an append task failed: {error}"))?;
                unsent.extend(acks.complete(job.generation, job.arrival));
                send_acks(&client, &mut unsent);
                if let Some(next) = lanes.finish(&job.lane) {
                    running.spawn(perform(next, writer.clone(), metrics.clone()));
                }
                metrics.set_in_flight("ingest", lanes.len());
            }
            event = events.recv(), if lanes.len() < max_in_flight => {
                let Some(event) = event else {
                    return Err("the MQTT event loop stopped".into());
                };
                match event {
                    MqttEvent::Connected { generation, session_present } => {
                        tracing::info!(generation, session_present, "bridge: connected to MQTT");
                        acks.reset(generation);
                        // Acknowledgements for the old connection must not reach the new one.
                        unsent.clear();
                        connected.store(true, Ordering::Relaxed);
                        subscribe(&client, &filters).await?;
                    }
                    MqttEvent::Disconnected(error) => {
                        tracing::warn!(%error, "bridge: MQTT connection lost; reconnecting");
                        metrics.mqtt_disconnected();
                        connected.store(false, Ordering::Relaxed);
                    }
                    MqttEvent::Publish { generation, publish } => {
                        fault::reached(Point::AfterReceipt);
                        let job =
                            accept(&intake, &metrics, &spans, &mut acks, generation, publish);
                        if let Some(job) = lanes.push(&job.lane.clone(), job) {
                            running.spawn(perform(job, writer.clone(), metrics.clone()));
                        }
                        metrics.set_in_flight("ingest", lanes.len());
                    }
                }
            }
        }
    }
    // Unacknowledged messages stay with the broker, in the session.
    let _ = client.disconnect().await;
    Ok(())
}

/// Queues the PUBACKs the client has room for, in order; the rest wait for the next try.
fn send_acks(client: &AsyncClient, unsent: &mut VecDeque<MqttPublish>) {
    while let Some(publish) = unsent.front() {
        match client.try_ack(publish) {
            Ok(()) => {
                unsent.pop_front();
            }
            // Full: try again shortly. Closed: the event loop is gone, and the broker
            // sends unacknowledged messages again on the next connection.
            Err(_) => return,
        }
    }
}

async fn subscribe(client: &AsyncClient, filters: &[String]) -> Result<(), String> {
    for filter in filters {
        client
            .subscribe(filter.clone(), QoS::AtLeastOnce)
            .await
            .map_err(|error| format!("cannot subscribe to {filter}: {error}"))?;
    }
    Ok(())
}

/// Reads a message into a job, and records its arrival for the acknowledgement order.
fn accept(
    intake: &Intake,
    metrics: &BridgeMetrics,
    spans: &BridgeSpans,
    acks: &mut AckOrder,
    generation: u64,
    publish: MqttPublish,
) -> Job {
    let topic = String::from_utf8_lossy(&publish.topic).into_owned();
    let properties = publish.properties.clone().unwrap_or_default();
    let view = Publish {
        topic: &topic,
        payload: &publish.payload,
        properties: &properties.user_properties,
        response_topic: properties.response_topic.as_deref(),
        correlation_data: properties.correlation_data.as_deref(),
    };
    if publish.dup {
        metrics.duplicate("mqtt");
    }
    let (route, mut work) = match intake.take(&view) {
        Ok(record) => (record.route.clone(), Work::Append(record)),
        Err(rejected) => (
            rejected.route.clone(),
            Work::DeadLetter(rejected.dead_letter(&view)),
        ),
    };
    let record = match &mut work {
        Work::Append(record) => record,
        Work::DeadLetter(letter) => &mut letter.record,
    };
    let span = spans.ingest(&topic, &properties.user_properties, record);
    metrics.received(&route);
    let lane = match &work {
        Work::Append(record) => record.device.clone(),
        // Dead letters of every device share one lane: they are rare, and their order
        // matters to no one.
        Work::DeadLetter(_) => String::new(),
    };
    Job {
        generation,
        arrival: acks.arrived(publish),
        lane,
        route,
        received: Instant::now(),
        work,
        span: Some(span),
    }
}

/// Appends (or dead-letters) until the log has it, pausing between attempts while the log
/// is unavailable.
async fn perform<W: LogWriter>(mut job: Job, writer: Arc<W>, metrics: BridgeMetrics) -> Job {
    let mut pause = Duration::from_millis(50);
    loop {
        // Ok(true): the log already had the key.
        let attempt = match &job.work {
            Work::Append(record) => writer.append(record.clone()).await.map(|appended| {
                let duplicate = appended == crate::log::Appended::Duplicate;
                metrics.appended(&job.route, duplicate, job.received.elapsed().as_secs_f64());
                duplicate
            }),
            Work::DeadLetter(letter) => writer.dead_letter(letter.clone()).await.map(|()| {
                tracing::warn!(
                    route = %job.route, reason = %letter.reason, detail = %letter.detail,
                    "bridge: dead-lettered a message"
                );
                metrics.dead_lettered(&job.route, &letter.reason);
                false
            }),
        };
        match attempt {
            Ok(duplicate) => {
                if let Some(span) = job.span.take() {
                    let outcome = match &job.work {
                        Work::Append(_) => Ok(duplicate),
                        Work::DeadLetter(letter) => Err(letter),
                    };
                    BridgeSpans::ingested(span, outcome);
                }
                fault::reached(Point::AfterLogAck);
                return job;
            }
            Err(LogError::Refused(reason)) => {
                // The log will never take it: keep it as a dead letter instead.
                if let Work::Append(record) = &job.work {
                    let letter = DeadLetter {
                        record: record.clone(),
                        reason: "LOG_REFUSED".into(),
                        detail: reason,
                    };
                    return Box::pin(perform(
                        Job {
                            work: Work::DeadLetter(letter),
                            ..job
                        },
                        writer,
                        metrics,
                    ))
                    .await;
                }
                tracing::error!(%reason, "bridge: the log refused a dead letter; retrying");
            }
            Err(LogError::Unavailable(reason)) => {
                tracing::warn!(%reason, "bridge: the log is unavailable; retrying");
            }
        }
        // sleep: the pause before trying a log that is down again
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(MAX_APPEND_PAUSE);
    }
}

/// The order messages arrived in on the current connection, so that PUBACKs follow it.
#[derive(Default)]
struct AckOrder {
    generation: u64,
    next_arrival: u64,
    next_ack: u64,
    /// Finished messages waiting for the ones that arrived before them.
    finished: BTreeMap<u64, Option<MqttPublish>>,
    /// Messages that arrived and have not finished.
    waiting: BTreeMap<u64, MqttPublish>,
}

impl AckOrder {
    /// A new connection: what was pending belongs to the old one and is not acknowledged.
    fn reset(&mut self, generation: u64) {
        *self = Self {
            generation,
            ..Self::default()
        };
    }

    /// Records an arrival; its number for [`AckOrder::complete`].
    fn arrived(&mut self, publish: MqttPublish) -> u64 {
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.waiting.insert(arrival, publish);
        arrival
    }

    /// Arrival `arrival` on connection `generation` is finished: the messages that may be
    /// acknowledged now, in arrival order.
    fn complete(&mut self, generation: u64, arrival: u64) -> Vec<MqttPublish> {
        if generation != self.generation {
            return Vec::new();
        }
        let publish = self.waiting.remove(&arrival);
        self.finished.insert(arrival, publish);
        let mut ready = Vec::new();
        while let Some(publish) = self.finished.remove(&self.next_ack) {
            ready.extend(publish);
            self.next_ack += 1;
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn publish(pkid: u16) -> MqttPublish {
        MqttPublish {
            pkid,
            ..MqttPublish::default()
        }
    }

    #[test]
    fn acknowledgements_follow_arrival_order() {
        let mut order = AckOrder::default();
        order.reset(1);
        let first = order.arrived(publish(1));
        let second = order.arrived(publish(2));
        let third = order.arrived(publish(3));
        assert!(
            order.complete(1, second).is_empty(),
            "the first is not done"
        );
        let ready: Vec<u16> = order.complete(1, first).iter().map(|p| p.pkid).collect();
        assert_eq!(ready, [1, 2]);
        let ready: Vec<u16> = order.complete(1, third).iter().map(|p| p.pkid).collect();
        assert_eq!(ready, [3]);
    }

    #[test]
    fn work_from_an_earlier_connection_is_never_acknowledged() {
        let mut order = AckOrder::default();
        order.reset(1);
        let old = order.arrived(publish(7));
        order.reset(2);
        let new = order.arrived(publish(7));
        assert!(order.complete(1, old).is_empty());
        let ready: Vec<u16> = order.complete(2, new).iter().map(|p| p.pkid).collect();
        assert_eq!(ready, [7]);
    }
}
