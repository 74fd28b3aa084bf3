//! The bridge's MQTT side: [`MqttConfig`] and the `rumqttc` options it makes, and an event
//! loop run in a task of its own that numbers connections, so that acknowledgements meant for
//! an earlier connection are never sent on a later one.

use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, EventLoop, MqttOptions};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

/// How the bridge connects to the MQTT broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// The broker: `mqtt://HOST:PORT` (default `mqtt://127.0.0.1:1883`).
    pub url: String,
    /// The client id, stable across restarts so the broker keeps the session (default
    /// `keel-bridge`). Each bridge instance needs its own.
    pub client_id: String,
    /// Subscribe through the shared subscription `$share/GROUP/FILTER`, so the instances of
    /// one group split the messages (default `keel-bridge`; empty: a plain subscription).
    pub shared_group: String,
    /// How long the broker keeps the session, and the QoS 1 messages queued for it, while
    /// the bridge is away (default 1 day).
    #[serde(with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Keep-alive interval (default 30 s).
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Most messages received and not yet acknowledged, announced to the broker as MQTT 5's
    /// receive maximum (default 256). When the log is down nothing is acknowledged, so the
    /// broker stops sending and keeps the rest in the session.
    pub max_in_flight: u16,
    /// Largest packet accepted, in bytes (default 256 KiB); the broker drops larger ones.
    pub max_packet_size: u32,
    /// User name, if the broker wants one.
    pub username: String,
    /// Password, if the broker wants one.
    pub password: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        Self {
            url: "mqtt://127.0.0.1:1883".into(),
            client_id: "keel-bridge".into(),
            shared_group: "keel-bridge".into(),
            session_expiry: Duration::from_secs(24 * 3600),
            keep_alive: Duration::from_secs(30),
            max_in_flight: 256,
            max_packet_size: 256 * 1024,
            username: String::new(),
            password: String::new(),
        }
    }
}

impl MqttConfig {
    /// The host and port of `url`.
    pub fn address(&self) -> Result<(String, u16), String> {
        let rest = self.url.strip_prefix("mqtt://").ok_or_else(|| {
            format!(
                "url = {:?}: must be mqtt://HOST:PORT (TLS brokers are not supported yet)",
                self.url
            )
        })?;
        let rest = rest.trim_end_matches('/');
        let (host, port) = rest
            .rsplit_once(':')
            .map_or((rest, Ok(1883)), |(host, port)| (host, port.parse::<u16>()));
        let port = port.map_err(|_| format!("url = {:?}: the port is not a number", self.url))?;
        if host.is_empty() {
            return Err(format!("url = {:?}: no host", self.url));
        }
        Ok((host.trim_matches(['[', ']']).to_owned(), port))
    }

    /// Options for a persistent session with manual acknowledgements, under `client_id`.
    pub fn options(&self, client_id: &str) -> Result<MqttOptions, String> {
        let (host, port) = self.address()?;
        let mut options = MqttOptions::new(client_id, host, port);
        options
            .set_clean_start(false)
            .set_session_expiry_interval(Some(
                u32::try_from(self.session_expiry.as_secs()).unwrap_or(u32::MAX),
            ))
            .set_keep_alive(self.keep_alive.max(Duration::from_secs(1)))
            .set_manual_acks(true)
            .set_receive_maximum(Some(self.max_in_flight.max(1)))
            .set_max_packet_size(Some(self.max_packet_size));
        if !self.username.is_empty() {
            options.set_credentials(&self.username, &self.password);
        }
        Ok(options)
    }

    /// The filter to subscribe to for a route's `filter`: shared when a group is set.
    pub fn subscription(&self, filter: &str) -> String {
        if self.shared_group.is_empty() {
            filter.to_owned()
        } else {
            format!("$share/{}/{filter}", self.shared_group)
        }
    }
}

/// What the event loop task reports.
#[derive(Debug)]
pub enum MqttEvent {
    /// Connected (again): connection number `generation`; `session_present` says whether
    /// the broker had kept the session.
    Connected {
        /// Counts connections from 1.
        generation: u64,
        /// Whether the broker resumed the session.
        session_present: bool,
    },
    /// A message arrived on connection `generation`.
    Publish {
        /// The connection it came on.
        generation: u64,
        /// The message.
        publish: rumqttc::v5::mqttbytes::v5::Publish,
    },
    /// The connection failed; the task reconnects after a pause.
    Disconnected(String),
}

/// Longest pause between reconnection attempts.
const MAX_RECONNECT_PAUSE: Duration = Duration::from_secs(5);

/// Starts `rumqttc`'s event loop in a task of its own, forwarding connections and messages
/// to the returned channel (of `capacity`: when it is full the task stops reading the
/// socket). The task ends when the receiver is dropped.
pub fn start(options: MqttOptions, capacity: usize) -> (AsyncClient, mpsc::Receiver<MqttEvent>) {
    let (client, eventloop) = AsyncClient::new(options, 64);
    let (events, receiver) = mpsc::channel(capacity.max(1));
    tokio::spawn(drive(eventloop, events));
    (client, receiver)
}

async fn drive(mut eventloop: EventLoop, events: mpsc::Sender<MqttEvent>) {
    let mut generation = 0;
    let mut pause = Duration::from_millis(100);
    loop {
        let event = tokio::select! {
            polled = eventloop.poll() => polled,
            () = events.closed() => return,
        };
        let forward = match event {
            Ok(Event::Incoming(Packet::ConnAck(connack))) => {
                generation += 1;
                pause = Duration::from_millis(100);
                MqttEvent::Connected {
                    generation,
                    session_present: connack.session_present,
                }
            }
            Ok(Event::Incoming(Packet::Publish(publish))) => MqttEvent::Publish {
                generation,
                publish,
            },
            Ok(_) => continue,
            Err(error) => {
                let _ = events
                    .send(MqttEvent::Disconnected(error.to_string()))
                    .await;
                // sleep: the pause between reconnection attempts to a broker that is down
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_RECONNECT_PAUSE);
                continue;
            }
        };
        if events.send(forward).await.is_err() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_give_host_and_port_or_say_what_is_wrong() {
        let config = |url: &str| MqttConfig {
            url: url.into(),
            ..MqttConfig::default()
        };
        assert_eq!(
            config("mqtt://127.0.0.1:1883").address(),
            Ok(("127.0.0.1".into(), 1883))
        );
        assert_eq!(
            config("mqtt://broker").address(),
            Ok(("broker".into(), 1883))
        );
        assert_eq!(
            config("mqtt://[::1]:1884").address(),
            Ok(("::1".into(), 1884))
        );
        assert!(
            config("mqtts://x:8883")
                .address()
                .unwrap_err()
                .contains("TLS")
        );
        assert!(
            config("mqtt://x:port")
                .address()
                .unwrap_err()
                .contains("not a number")
        );
        assert!(
            config("mqtt://:1")
                .address()
                .unwrap_err()
                .contains("no host")
        );
    }

    #[test]
    fn shared_subscriptions_name_the_group() {
        let config = MqttConfig::default();
        assert_eq!(config.subscription("a/+"), "$share/keel-bridge/a/+");
        let plain = MqttConfig {
            shared_group: String::new(),
            ..MqttConfig::default()
        };
        assert_eq!(plain.subscription("a/+"), "a/+");
    }
}
