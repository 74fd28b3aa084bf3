//! The devices' MQTT side: one MQTT 5 connection per device, publishing its part of the
//! [`Plan`] with QoS 1 and telling which publish each PUBACK is for; and one subscription to
//! the response topics, taken before the first publish. Everything the connections see
//! arrives as [`Event`]s on one channel.
//!
//! Every connection rides out a broker that goes away: its session is kept by the broker for
//! [`SESSION_EXPIRY`] while the client is away, and it reconnects to it. On the resumed
//! session the client publishes again what the broker had not acknowledged (same
//! packet id), and the broker sends the responses it queued meanwhile. A broker that comes
//! back without the session has lost what was in flight: the connection ends as lost.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, PublishProperties, SubscribeReasonCode};
use rumqttc::v5::{AsyncClient, ConnectionError, EventLoop, MqttOptions};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::plan::{Plan, Send};

/// Requests one device's client queues before a publish waits (the broker's receive maximum
/// bounds what is on the wire).
const REQUEST_QUEUE: usize = 64;
/// Largest packet the response subscription accepts (an outcome is a few hundred bytes).
const MAX_PACKET: u32 = 256 * 1024;
/// How long the broker keeps a connection's session (its unacknowledged publishes, and the
/// responses queued for the subscription) while the client is away: long enough to ride out
/// a broker restart, short enough that a run's sessions do not pile up on a shared broker.
const SESSION_EXPIRY: Duration = Duration::from_secs(300);
/// First pause before connecting again after a connection was lost; it doubles up to
/// [`MAX_RECONNECT_PAUSE`].
const RECONNECT_PAUSE: Duration = Duration::from_millis(100);
/// Longest pause between attempts to reach a broker that is down.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(2);

/// An MQTT broker, `mqtt://HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Broker {
    host: String,
    port: u16,
}

impl Broker {
    /// Reads `mqtt://HOST[:PORT]` (port 1883 by default); the error says what is wrong.
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = url.strip_prefix("mqtt://").ok_or_else(|| {
            format!("--mqtt {url:?}: must be mqtt://HOST:PORT (TLS brokers are not supported)")
        })?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .map_or((rest, Some(1883)), |(host, port)| {
                (host, port.parse::<u16>().ok())
            });
        let port = port.ok_or_else(|| format!("--mqtt {url:?}: the port is not a number"))?;
        let host = host.trim_matches(['[', ']']);
        if host.is_empty() {
            return Err(format!("--mqtt {url:?}: no host"));
        }
        Ok(Self {
            host: host.to_owned(),
            port,
        })
    }

    /// A session the broker keeps for [`SESSION_EXPIRY`], which reconnections resume (see
    /// [`Session`]). Clean start is off from the first connection on: Mosquitto writes only
    /// such sessions to its persistence file, so one begun with a clean start would not
    /// survive a broker restart. (The run id makes every client id new: there is no older
    /// session to resume by mistake.)
    fn options(&self, client_id: &str) -> MqttOptions {
        let mut options = MqttOptions::new(client_id, self.host.clone(), self.port);
        let expiry = u32::try_from(SESSION_EXPIRY.as_secs()).unwrap_or(u32::MAX);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(expiry))
            .set_keep_alive(Duration::from_secs(30))
            .set_request_channel_capacity(REQUEST_QUEUE)
            .set_max_packet_size(Some(MAX_PACKET));
        options
    }
}

impl std::fmt::Display for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "mqtt://{}:{}", self.host, self.port)
    }
}

/// Where requests go and outcomes come from: `{requests}/{device}` and `{responses}/{device}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// The request topic's prefix, `payment/request`.
    pub requests: String,
    /// The response topic's prefix, `payment/response`.
    pub responses: String,
}

impl Topics {
    /// Checks both prefixes: topic levels without wildcards; the error names the flag.
    pub fn new(requests: &str, responses: &str) -> Result<Self, String> {
        for (flag, prefix) in [
            ("--topic-prefix", requests),
            ("--response-prefix", responses),
        ] {
            if prefix.is_empty()
                || prefix.ends_with('/')
                || prefix.contains(['+', '#', '\0'])
                || prefix.starts_with('$')
            {
                return Err(format!(
                    "{flag} {prefix:?}: must be topic levels without wildcards or a trailing /, \
                     e.g. payment/request"
                ));
            }
        }
        Ok(Self {
            requests: requests.to_owned(),
            responses: responses.to_owned(),
        })
    }

    /// The topic device `device` publishes its requests on.
    pub fn request(&self, device: &str) -> String {
        format!("{}/{device}", self.requests)
    }

    /// The filter that takes every device's outcomes.
    pub fn response_filter(&self) -> String {
        format!("{}/+", self.responses)
    }
}

/// How the broker answered one publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ack {
    /// Taken, and some subscriber (the bridge) gets it.
    Accepted,
    /// Taken, but nobody subscribes to the topic: no bridge is listening.
    NoSubscribers,
    /// Refused, with the broker's reason.
    Refused(String),
}

/// What the run's MQTT connections and its publisher report.
#[derive(Debug)]
pub enum Event {
    /// Device `device` is connected.
    Connected {
        /// The device.
        device: usize,
    },
    /// Device `device` lost its connection and is connecting again, to resume its session.
    DeviceDisconnected {
        /// The device.
        device: usize,
        /// Why.
        error: String,
    },
    /// Device `device` never connected, or the broker lost its session (and with it the
    /// publishes it had not acknowledged); it publishes no more.
    DeviceLost {
        /// The device.
        device: usize,
        /// Why.
        error: String,
    },
    /// Publish `send` (an index into [`Plan::sends`]) is about to be handed to its client.
    Published {
        /// The publish.
        send: usize,
    },
    /// Publish `send` could not be handed to its client: it was not sent.
    PublishFailed {
        /// The publish.
        send: usize,
        /// Why.
        error: String,
    },
    /// The broker answered publish `send`.
    Acked {
        /// The publish.
        send: usize,
        /// How.
        ack: Ack,
    },
    /// Every publish of the plan was handed to its client, or failed.
    PublishingDone,
    /// The response subscription is in place.
    Subscribed,
    /// The response subscription's connection was lost; it is connecting again, to resume
    /// its session and get the responses queued meanwhile.
    SubscriberDisconnected {
        /// Why.
        error: String,
    },
    /// The response subscription was refused, never connected, or lost its session (and
    /// with it the responses queued for it).
    SubscriberLost {
        /// Why.
        error: String,
    },
    /// A message on a response topic.
    Response {
        /// Its topic.
        topic: String,
        /// Its MQTT 5 correlation data, if any.
        correlation: Option<Bytes>,
        /// Its payload.
        payload: Bytes,
    },
}

/// One client per device, each with a task driving its connection.
pub struct Devices {
    links: Vec<Link>,
    drivers: JoinSet<()>,
}

struct Link {
    client: AsyncClient,
    /// The publishes handed to the client and not yet written, in order: the client writes
    /// them in that order, so the next `Outgoing::Publish` is the front one's.
    queued: Arc<Mutex<VecDeque<usize>>>,
}

impl Devices {
    /// Connects each device as an MQTT 5 client named by its id (a fresh session, resumed
    /// after a lost connection), reporting to `events`. The connections are made in the background: wait for a
    /// [`Event::Connected`] (or [`Event::DeviceLost`]) of each.
    pub fn connect(broker: &Broker, ids: &[String], events: &mpsc::Sender<Event>) -> Self {
        let mut drivers = JoinSet::new();
        let links = ids
            .iter()
            .enumerate()
            .map(|(device, id)| {
                let (client, eventloop) = AsyncClient::new(broker.options(id), REQUEST_QUEUE);
                let queued = Arc::new(Mutex::new(VecDeque::new()));
                drivers.spawn(drive_device(
                    device,
                    eventloop,
                    queued.clone(),
                    events.clone(),
                ));
                Link { client, queued }
            })
            .collect();
        Self { links, drivers }
    }

    /// Hands publish `send` of `plan` to its device's client (QoS 1, with a `traceparent`
    /// user property and the request's key as correlation data), reporting
    /// [`Event::Published`] first; waits at most `limit` for room in the client's queue.
    async fn publish(
        &self,
        plan: &Plan,
        topics: &Topics,
        send: usize,
        limit: Duration,
    ) -> Result<(), String> {
        let planned = plan.sends[send];
        let device = plan.device_of(planned);
        let link = &self.links[device];
        let mut properties = PublishProperties {
            content_type: Some("application/json".into()),
            ..PublishProperties::default()
        };
        if let Send::Request { request, .. } = planned {
            let request = &plan.requests[request];
            properties.user_properties = vec![("traceparent".into(), request.traceparent.clone())];
            properties.correlation_data = Some(Bytes::from(request.key.clone().into_bytes()));
        }
        let topic = topics.request(&plan.devices[device].id);
        link.queued
            .lock()
            .expect("the queue lock is never held across a panic")
            .push_back(send);
        let publish = link.client.publish_with_properties(
            topic,
            QoS::AtLeastOnce,
            false,
            plan.payload(planned),
            properties,
        );
        match tokio::time::timeout(limit, publish).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(error)) => Err(format!("the device's connection is gone: {error}")),
            Err(_) => Err(format!(
                "the broker took no publish from this device for {limit:?}"
            )),
        }
    }

    /// Sends each device's DISCONNECT and waits, at most `limit`, for the connections to
    /// close; any still open then are dropped.
    pub async fn disconnect(mut self, limit: Duration) {
        for link in &self.links {
            let _ = link.client.try_disconnect();
        }
        let _ = tokio::time::timeout(limit, async {
            while self.drivers.join_next().await.is_some() {}
        })
        .await;
    }
}

/// Publishes the plan in order, each publish through its device, at `rate` publishes per
/// second overall (0: as fast as the broker takes them), then reports
/// [`Event::PublishingDone`]. A device whose client takes no publish for `stall` publishes
/// no more; its remaining publishes are reported failed.
pub async fn publish_plan(
    plan: Arc<Plan>,
    devices: Arc<Devices>,
    topics: Topics,
    rate: f64,
    stall: Duration,
    events: mpsc::Sender<Event>,
) {
    let mut ticker =
        (rate > 0.0).then(|| tokio::time::interval(Duration::from_secs_f64(1.0 / rate)));
    let mut stalled: Vec<Option<String>> = vec![None; plan.devices.len()];
    for send in 0..plan.sends.len() {
        if let Some(ticker) = &mut ticker {
            ticker.tick().await;
        }
        let device = plan.device_of(plan.sends[send]);
        let outcome = match &stalled[device] {
            Some(error) => Err(error.clone()),
            None => {
                if events.send(Event::Published { send }).await.is_err() {
                    return;
                }
                devices.publish(&plan, &topics, send, stall).await
            }
        };
        if let Err(error) = outcome {
            stalled[device].get_or_insert_with(|| error.clone());
            if events
                .send(Event::PublishFailed { send, error })
                .await
                .is_err()
            {
                return;
            }
        }
    }
    let _ = events.send(Event::PublishingDone).await;
}

/// How a connection goes on after a CONNACK or an error: the first connection starts the
/// session, every later one must resume it.
#[derive(Debug, Default)]
struct Session {
    /// Whether the broker ever accepted a connection: a session exists to resume.
    started: bool,
    /// The pause before the next attempt to connect.
    pause: Duration,
}

impl Session {
    /// The broker accepted a connection, resuming the session (`session_present`) or not;
    /// `Err` says why the connection cannot go on: the broker lost the session it had.
    fn connected(&mut self, session_present: bool) -> Result<(), String> {
        if self.started && !session_present {
            return Err(
                "the broker came back without this connection's session: what it \
                        had not acknowledged or delivered is lost"
                    .to_owned(),
            );
        }
        self.started = true;
        self.pause = RECONNECT_PAUSE;
        Ok(())
    }

    /// The connection failed: the pause before connecting again, or `None` if it never
    /// connected (the broker is unreachable or refuses it: there is nothing to resume).
    fn failed(&mut self) -> Option<Duration> {
        if !self.started {
            return None;
        }
        let pause = self.pause;
        self.pause = (self.pause * 2).min(MAX_RECONNECT_PAUSE);
        Some(pause)
    }
}

/// Drives one device's connection: matches each PUBACK to its publish, and reconnects to
/// the device's session when the connection is lost. The client publishes again, with the
/// same packet id, what the broker had not acknowledged; the broker may then have the
/// request twice, and the bridge's idempotency key makes that one request.
async fn drive_device(
    device: usize,
    mut eventloop: EventLoop,
    queued: Arc<Mutex<VecDeque<usize>>>,
    events: mpsc::Sender<Event>,
) {
    let mut in_flight: HashMap<u16, usize> = HashMap::new();
    let mut session = Session::default();
    loop {
        let event = match eventloop.poll().await {
            Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(connack))) => {
                match session.connected(connack.session_present) {
                    Ok(()) => Event::Connected { device },
                    Err(error) => {
                        let _ = events.send(Event::DeviceLost { device, error }).await;
                        return;
                    }
                }
            }
            Ok(rumqttc::v5::Event::Outgoing(Outgoing::Publish(pkid))) => {
                // A publish sent again on the resumed session: its PUBACK is still awaited.
                // (The client gives a packet id to a new publish only once the broker has
                // acknowledged the last publish that had it.)
                if in_flight.contains_key(&pkid) {
                    continue;
                }
                let front = queued
                    .lock()
                    .expect("the queue lock is never held across a panic")
                    .pop_front();
                if let Some(send) = front {
                    in_flight.insert(pkid, send);
                }
                continue;
            }
            Ok(rumqttc::v5::Event::Incoming(Packet::PubAck(puback))) => {
                let Some(send) = in_flight.remove(&puback.pkid) else {
                    continue;
                };
                let ack = match puback.reason {
                    PubAckReason::Success => Ack::Accepted,
                    PubAckReason::NoMatchingSubscribers => Ack::NoSubscribers,
                    refused => Ack::Refused(format!("{refused:?}")),
                };
                Event::Acked { send, ack }
            }
            Ok(rumqttc::v5::Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(error) => {
                let error = error.to_string();
                let Some(pause) = session.failed() else {
                    let _ = events.send(Event::DeviceLost { device, error }).await;
                    return;
                };
                if events
                    .send(Event::DeviceDisconnected { device, error })
                    .await
                    .is_err()
                {
                    return;
                }
                // sleep: the pause before connecting again to a broker that went away
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

/// The response subscription: one client subscribed with QoS 1, whose session keeps the
/// responses while its connection is down.
pub struct Subscription {
    client: AsyncClient,
    driver: tokio::task::JoinHandle<()>,
}

impl Subscription {
    /// Connects as `client_id` and subscribes to `filter`; reports [`Event::Subscribed`]
    /// once the broker granted it, then every message as an [`Event::Response`].
    pub fn start(
        broker: &Broker,
        client_id: &str,
        filter: &str,
        events: &mpsc::Sender<Event>,
    ) -> Self {
        let (client, eventloop) = AsyncClient::new(broker.options(client_id), REQUEST_QUEUE);
        // Queued now, sent as soon as the connection is up.
        let _ = client.try_subscribe(filter, QoS::AtLeastOnce);
        let driver = tokio::spawn(drive_subscription(eventloop, events.clone()));
        Self { client, driver }
    }

    /// Disconnects, waiting at most `limit`.
    pub async fn disconnect(self, limit: Duration) {
        let _ = self.client.try_disconnect();
        let mut driver = self.driver;
        if tokio::time::timeout(limit, &mut driver).await.is_err() {
            driver.abort();
        }
    }
}

async fn drive_subscription(mut eventloop: EventLoop, events: mpsc::Sender<Event>) {
    let mut session = Session::default();
    loop {
        let event = match eventloop.poll().await {
            Ok(rumqttc::v5::Event::Incoming(Packet::ConnAck(connack))) => {
                // The subscription is part of the session: a resumed one still has it.
                if let Err(error) = session.connected(connack.session_present) {
                    let _ = events.send(Event::SubscriberLost { error }).await;
                    return;
                }
                continue;
            }
            Ok(rumqttc::v5::Event::Incoming(Packet::SubAck(suback))) => {
                let granted = suback
                    .return_codes
                    .iter()
                    .all(|code| matches!(code, SubscribeReasonCode::Success(_)));
                if granted {
                    Event::Subscribed
                } else {
                    let _ = events
                        .send(Event::SubscriberLost {
                            error: format!(
                                "the broker refused the subscription: {:?}",
                                suback.return_codes
                            ),
                        })
                        .await;
                    return;
                }
            }
            Ok(rumqttc::v5::Event::Incoming(Packet::Publish(publish))) => Event::Response {
                topic: String::from_utf8_lossy(&publish.topic).into_owned(),
                correlation: publish.properties.and_then(|p| p.correlation_data),
                payload: publish.payload,
            },
            Ok(rumqttc::v5::Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => continue,
            Err(ConnectionError::RequestsDone) => return,
            Err(error) => {
                let error = error.to_string();
                let Some(pause) = session.failed() else {
                    let _ = events.send(Event::SubscriberLost { error }).await;
                    return;
                };
                if events
                    .send(Event::SubscriberDisconnected { error })
                    .await
                    .is_err()
                {
                    return;
                }
                // sleep: the pause before connecting again to a broker that went away
                tokio::time::sleep(pause).await;
                continue;
            }
        };
        if events.send(event).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_urls_give_host_and_port_or_name_the_flag() {
        let broker = |url| Broker::parse(url).map(|b| (b.host, b.port));
        assert_eq!(
            broker("mqtt://127.0.0.1:1883"),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(broker("mqtt://broker"), Ok(("broker".into(), 1883)));
        assert_eq!(broker("mqtt://[::1]:1884/"), Ok(("::1".into(), 1884)));
        for (url, says) in [
            ("tcp://x:1883", "mqtt://HOST:PORT"),
            ("mqtt://x:port", "not a number"),
            ("mqtt://:1883", "no host"),
        ] {
            let error = Broker::parse(url).unwrap_err();
            assert!(
                error.starts_with("--mqtt") && error.contains(says),
                "{error}"
            );
        }
    }

    #[test]
    fn a_session_is_started_once_then_resumed_or_the_connection_is_lost() {
        let broker = Broker::parse("mqtt://127.0.0.1:1").unwrap();
        let options = broker.options("d");
        assert!(!options.clean_start(), "a session Mosquitto persists");
        let mut session = Session::default();
        assert_eq!(session.failed(), None, "never connected: nothing to resume");
        session.connected(false).unwrap();
        let pauses: Vec<Duration> = (0..7).map(|_| session.failed().unwrap()).collect();
        assert_eq!(pauses[0], RECONNECT_PAUSE);
        assert_eq!(pauses[1], RECONNECT_PAUSE * 2);
        assert_eq!(pauses[6], MAX_RECONNECT_PAUSE);
        session.connected(true).unwrap();
        assert_eq!(
            session.failed(),
            Some(RECONNECT_PAUSE),
            "a connection resets the pause"
        );
        let lost = session.connected(false).unwrap_err();
        assert!(lost.contains("without this connection's session"), "{lost}");
    }

    #[test]
    fn topic_prefixes_are_plain_levels() {
        let topics = Topics::new("payment/request", "payment/response").unwrap();
        assert_eq!(topics.request("d1"), "payment/request/d1");
        assert_eq!(topics.response_filter(), "payment/response/+");
        for (requests, responses, flag) in [
            ("payment/+", "r", "--topic-prefix"),
            ("", "r", "--topic-prefix"),
            ("p", "r/#", "--response-prefix"),
            ("p", "r/", "--response-prefix"),
        ] {
            let error = Topics::new(requests, responses).unwrap_err();
            assert!(error.starts_with(flag), "{error}");
        }
    }
}
