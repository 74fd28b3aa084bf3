//! The connection metrics every listener reports, labelled with the listener's name
//! (`grpc`, `admin`, `gateway`, ...), so one dashboard reads them all; `keel_tls_*` for
//! listeners that serve TLS.

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

/// A listener and how something ended (`ok`, or why not).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// The listener's name.
    pub listener: &'static str,
    /// `ok` or a reason (see each metric).
    pub outcome: &'static str,
}

/// A listener and which of its certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct CertificateLabels {
    /// The listener's name.
    pub listener: &'static str,
    /// `serving` (its chain) or `client_ca` (the bundle client certificates chain to).
    pub certificate: &'static str,
}

/// The connection metric families, registered under `keel_server_*` and `keel_tls_*`.
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
    tls_handshakes: Family<OutcomeLabels, Counter>,
    tls_reloads: Family<OutcomeLabels, Counter>,
    tls_expiry: Family<CertificateLabels, Gauge>,
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
        keel.register(
            "tls_handshakes",
            "TLS handshakes by listener and outcome: ok, timeout (not done within \
             connection.handshake_timeout), or why it failed (no_application_protocol, \
             no_client_certificate, certificate_expired, certificate_untrusted, \
             certificate_invalid, protocol_version, incompatible, alert_received, not_tls, \
             closed, other)",
            metrics.tls_handshakes.clone(),
        );
        keel.register(
            "tls_reloads",
            "TLS material reloads that changed something, by listener and outcome: ok \
             (swapped in for new handshakes) or error (refused; the previous stays in use)",
            metrics.tls_reloads.clone(),
        );
        keel.register(
            "tls_certificate_expiry_timestamp_seconds",
            "When the first certificate of a listener's serving chain (certificate=serving) \
             or client CA bundle (certificate=client_ca) in use expires, in Unix seconds",
            metrics.tls_expiry.clone(),
        );
        metrics
    }

    /// Creates `listener`'s reload series at 0 (`ok` and `error`), so that its first
    /// refused reload is an increase a rate or an alert can see.
    pub fn tls_reloads_start(&self, listener: &'static str) {
        for outcome in ["ok", "error"] {
            self.tls_reloads
                .get_or_create_owned(&OutcomeLabels { listener, outcome });
        }
    }

    /// Counts a TLS reload of `listener`'s material: `ok` or `error`.
    pub fn tls_reload(&self, listener: &'static str, outcome: &'static str) {
        self.tls_reloads
            .get_or_create(&OutcomeLabels { listener, outcome })
            .inc();
    }

    /// Records when `listener`'s TLS material in use expires.
    pub fn tls_status(&self, listener: &'static str, status: &keel_tls::TlsStatus) {
        let seconds = |time: std::time::SystemTime| {
            time.duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |since| {
                    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
                })
        };
        let gauge = |certificate| {
            self.tls_expiry.get_or_create(&CertificateLabels {
                listener,
                certificate,
            })
        };
        gauge("serving").set(seconds(status.cert_not_after));
        match status.client_ca_not_after {
            Some(not_after) => {
                gauge("client_ca").set(seconds(not_after));
            }
            None => {
                self.tls_expiry.remove(&CertificateLabels {
                    listener,
                    certificate: "client_ca",
                });
            }
        }
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
            tls_handshakes: self.tls_handshakes.clone(),
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
    /// TLS handshakes by outcome (every listener's; [`ListenerMetrics::tls_handshake`]).
    tls_handshakes: Family<OutcomeLabels, Counter>,
}

impl ListenerMetrics {
    /// Counts one of this listener's TLS handshakes: `ok`, `timeout` or the failure reason.
    pub fn tls_handshake(&self, outcome: &'static str) {
        self.tls_handshakes
            .get_or_create(&OutcomeLabels {
                listener: self.name,
                outcome,
            })
            .inc();
    }
}
