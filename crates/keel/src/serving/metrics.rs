//! The connection metrics every listener reports, labelled with the listener's name
//! (`grpc`, `admin`, `gateway`, ...), so one dashboard reads them all.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// A listener.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ListenerLabels {
    /// The listener's name.
    pub listener: &'static str,
}

/// A listener and why something happened on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct ReasonLabels {
    /// The listener's name.
    pub listener: &'static str,
    /// Why (see each metric).
    pub reason: &'static str,
}

/// The connection metric families, registered under `keel_server_*`.
#[derive(Debug, Clone, Default)]
pub struct ConnectionMetrics {
    connections: Family<ListenerLabels, Gauge>,
    accepted: Family<ListenerLabels, Counter>,
    refused: Family<ListenerLabels, Counter>,
    accept_errors: Family<ListenerLabels, Counter>,
    timeouts: Family<ReasonLabels, Counter>,
    goaways: Family<ReasonLabels, Counter>,
    forced_closes: Family<ListenerLabels, Counter>,
    late_frames: Family<ListenerLabels, Counter>,
    inflight: Family<ListenerLabels, Gauge>,
}

impl ConnectionMetrics {
    /// Registers every family in `keel` (the `keel_` sub-registry).
    pub fn register(keel: &mut Registry) -> Self {
        let metrics = Self::default();
        keel.register(
            "server_connections",
            "Open connections, by listener",
            metrics.connections.clone(),
        );
        keel.register(
            "server_connections_accepted",
            "Connections accepted since start, by listener",
            metrics.accepted.clone(),
        );
        keel.register(
            "server_connections_refused",
            "Connections closed on arrival because the listener's max_connections were open",
            metrics.refused.clone(),
        );
        keel.register(
            "server_accept_errors",
            "Failed accepts (out of descriptors, ...), each followed by a backoff",
            metrics.accept_errors.clone(),
        );
        keel.register(
            "server_timeouts",
            "Connections and requests cut for slowness: reason handshake (no request within \
             connection.handshake_timeout) or body (a message not whole within connection.body_timeout)",
            metrics.timeouts.clone(),
        );
        keel.register(
            "server_goaways",
            "GOAWAY frames sent to connections, by listener and reason",
            metrics.goaways.clone(),
        );
        keel.register(
            "server_forced_closes",
            "Connections closed with requests still in flight after their grace period or the shutdown deadline",
            metrics.forced_closes.clone(),
        );
        keel.register(
            "server_late_frames_ignored",
            "HTTP/2 frames on streams above the last id of a GOAWAY, ignored as RFC 9113 §6.8 says",
            metrics.late_frames.clone(),
        );
        keel.register(
            "server_inflight_rpcs",
            "RPCs and HTTP requests whose handler or response stream is alive, by listener",
            metrics.inflight.clone(),
        );
        metrics
    }

    /// The handles for one listener, resolved once so connections never look them up.
    pub fn listener(&self, name: &'static str) -> ListenerMetrics {
        let labels = ListenerLabels { listener: name };
        let reason = |reason| ReasonLabels {
            listener: name,
            reason,
        };
        ListenerMetrics {
            name,
            connections: self.connections.get_or_create_owned(&labels),
            accepted: self.accepted.get_or_create_owned(&labels),
            refused: self.refused.get_or_create_owned(&labels),
            accept_errors: self.accept_errors.get_or_create_owned(&labels),
            handshake_timeouts: self.timeouts.get_or_create_owned(&reason("handshake")),
            body_timeouts: self.timeouts.get_or_create_owned(&reason("body")),
            goaway_max_age: self.goaways.get_or_create_owned(&reason("max_age")),
            goaway_max_idle: self.goaways.get_or_create_owned(&reason("max_idle")),
            goaway_shutdown: self.goaways.get_or_create_owned(&reason("shutdown")),
            forced_closes: self.forced_closes.get_or_create_owned(&labels),
            late_frames: self.late_frames.get_or_create_owned(&labels),
            inflight: self.inflight.get_or_create_owned(&labels),
        }
    }
}

/// One listener's connection metrics.
#[derive(Debug, Clone)]
pub struct ListenerMetrics {
    /// The listener's name, its `listener` label.
    pub name: &'static str,
    /// Open connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub accepted: Counter,
    /// Connections closed on arrival past `max_connections`.
    pub refused: Counter,
    /// Failed accepts.
    pub accept_errors: Counter,
    /// Connections that sent no request within the handshake timeout.
    pub handshake_timeouts: Counter,
    /// Request bodies cut by the body timeout.
    pub body_timeouts: Counter,
    /// GOAWAYs for age.
    pub goaway_max_age: Counter,
    /// GOAWAYs for idleness.
    pub goaway_max_idle: Counter,
    /// GOAWAYs for shutdown.
    pub goaway_shutdown: Counter,
    /// Connections closed with requests in flight.
    pub forced_closes: Counter,
    /// Late frames ignored after GOAWAY.
    pub late_frames: Counter,
    /// Requests in flight.
    pub inflight: Gauge,
}
