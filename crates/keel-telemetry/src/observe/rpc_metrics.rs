//! The RPC metrics of go-grpc-middleware's Prometheus provider, for the server
//! (`grpc_server_*`) or the client (`grpc_client_*`) side, with the same names, labels and
//! label values, so its dashboards and alerts work on Keel unchanged.
//!
//! The families are looked up once per method (when the method table is built, or at a
//! method's first call for paths no descriptor names), so a call costs a few atomic updates,
//! not label hashing. With `observe.identity_label` on, a server's series also carry
//! `peer_identity` (see `by_peer.rs`); otherwise that label is absent, not empty.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, LabelSetEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::Code;

use keel_core::code::code_name;
use keel_core::method::MethodInfo;

/// Which end of the call the metrics describe.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// `grpc_server_*`.
    Server,
    /// `grpc_client_*`.
    Client,
}

/// `grpc_type`, `grpc_service`, `grpc_method`, and `peer_identity` when labelled by peer.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct MethodLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    #[prometheus(flatten)]
    peer: PeerLabel,
}

/// [`MethodLabels`] and `grpc_code` (`peer_identity` last, when present).
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct HandledLabels {
    grpc_type: &'static str,
    grpc_service: String,
    grpc_method: String,
    grpc_code: &'static str,
    #[prometheus(flatten)]
    peer: PeerLabel,
}

/// `peer_identity="<value>"`, or no label at all: absent by default, so that the series
/// are go-grpc-middleware's exactly.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct PeerLabel(Option<Arc<str>>);

impl EncodeLabelSet for PeerLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder<'_>) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(identity) => [("peer_identity", &**identity)].encode(encoder),
            None => Ok(()),
        }
    }
}

/// The exemplar of a latency observation: the trace it belongs to, when sampled.
#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct TraceExemplar {
    /// W3C trace id, 32 hex digits.
    pub trace_id: String,
}

type Histogram = HistogramWithExemplars<TraceExemplar>;
type HistogramFamily = Family<MethodLabels, Histogram, fn() -> Histogram>;

/// Prometheus' default buckets, which go-grpc-middleware uses: 5 ms to 10 s.
const BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

fn new_histogram() -> Histogram {
    HistogramWithExemplars::new(BUCKETS.into_iter())
}

/// The families of one side, registered in a registry.
#[derive(Debug, Clone)]
pub struct RpcMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    received: Family<MethodLabels, Counter>,
    sent: Family<MethodLabels, Counter>,
    handling: HistogramFamily,
}

impl RpcMetrics {
    /// Creates the families of `side` and registers them in `registry`.
    pub fn register(side: Side, registry: &mut Registry) -> Self {
        let metrics = Self {
            started: Family::default(),
            handled: Family::default(),
            received: Family::default(),
            sent: Family::default(),
            handling: Family::new_with_constructor(new_histogram as fn() -> Histogram),
        };
        let (prefix, who, started, handled) = match side {
            Side::Server => (
                "grpc_server",
                "server",
                "Total number of RPCs started on the server.",
                "Total number of RPCs completed on the server, regardless of success or failure.",
            ),
            Side::Client => (
                "grpc_client",
                "client",
                "Total number of RPCs started on the client.",
                "Total number of RPCs completed by the client, regardless of success or failure.",
            ),
        };
        registry.register(
            format!("{prefix}_started"),
            started,
            metrics.started.clone(),
        );
        registry.register(
            format!("{prefix}_handled"),
            handled,
            metrics.handled.clone(),
        );
        registry.register(
            format!("{prefix}_msg_received"),
            format!("Total number of RPC stream messages received by the {who}."),
            metrics.received.clone(),
        );
        registry.register(
            format!("{prefix}_msg_sent"),
            format!("Total number of gRPC stream messages sent by the {who}."),
            metrics.sent.clone(),
        );
        registry.register(
            format!("{prefix}_handling_seconds"),
            format!(
                "Histogram of response latency (seconds) of gRPC that had been application-level \
                 handled by the {who}."
            ),
            metrics.handling.clone(),
        );
        metrics
    }

    /// The handles of one method's series.
    pub fn method(&self, info: &MethodInfo) -> Arc<MethodMetrics> {
        self.series(info, PeerLabel::default())
    }

    /// The handles of one method's series for the calls of one peer: `identity` is the
    /// `peer_identity` label's value.
    pub fn method_of_peer(&self, info: &MethodInfo, identity: Arc<str>) -> Arc<MethodMetrics> {
        self.series(info, PeerLabel(Some(identity)))
    }

    fn series(&self, info: &MethodInfo, peer: PeerLabel) -> Arc<MethodMetrics> {
        let labels = MethodLabels {
            grpc_type: info.rpc_type.as_str(),
            grpc_service: info.service.to_string(),
            grpc_method: info.method.to_string(),
            peer,
        };
        Arc::new(MethodMetrics {
            started: self.started.get_or_create(&labels).clone(),
            received: self.received.get_or_create(&labels).clone(),
            sent: self.sent.get_or_create(&labels).clone(),
            handling: self.handling.get_or_create(&labels).clone(),
            handled: std::array::from_fn(|_| OnceLock::new()),
            handled_family: self.handled.clone(),
            labels,
        })
    }
}

/// One method's series, ready to update.
#[derive(Debug)]
pub struct MethodMetrics {
    started: Counter,
    received: Counter,
    sent: Counter,
    handling: Histogram,
    /// `handled_total` by code, created at a code's first use (a series per code that never
    /// happens would only be noise).
    handled: [OnceLock<Counter>; 17],
    handled_family: Family<HandledLabels, Counter>,
    labels: MethodLabels,
}

impl MethodMetrics {
    /// A call started.
    pub fn started(&self) {
        self.started.inc();
    }

    /// `n` messages received.
    pub fn received(&self, n: u64) {
        self.received.inc_by(n);
    }

    /// `n` messages sent.
    pub fn sent(&self, n: u64) {
        self.sent.inc_by(n);
    }

    /// A call finished with `code` after `elapsed`; `trace_id` is the sampled trace's id.
    pub fn handled(&self, code: Code, elapsed: Duration, trace_id: Option<String>) {
        let slot = (code as usize).min(16);
        self.handled[slot]
            .get_or_init(|| {
                let labels = HandledLabels {
                    grpc_type: self.labels.grpc_type,
                    grpc_service: self.labels.grpc_service.clone(),
                    grpc_method: self.labels.grpc_method.clone(),
                    grpc_code: code_name(code),
                    peer: self.labels.peer.clone(),
                };
                self.handled_family.get_or_create(&labels).clone()
            })
            .inc();
        let exemplar = trace_id.map(|trace_id| TraceExemplar { trace_id });
        self.handling.observe(elapsed.as_secs_f64(), exemplar, None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use keel_core::method::RpcType;

    #[test]
    fn exposes_go_grpc_middleware_names_and_labels() {
        let mut registry = Registry::default();
        let metrics = RpcMetrics::register(Side::Server, &mut registry);
        let method = metrics.method(&MethodInfo {
            service: "helloworld.Greeter".into(),
            method: "SayHello".into(),
            rpc_type: RpcType::Unary,
        });
        method.started();
        method.received(1);
        method.sent(1);
        method.handled(
            Code::NotFound,
            Duration::from_millis(7),
            Some("ab".repeat(16)),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let labels =
            r#"grpc_type="unary",grpc_service="helloworld.Greeter",grpc_method="SayHello""#;
        for line in [
            format!("grpc_server_started_total{{{labels}}} 1"),
            format!("grpc_server_msg_received_total{{{labels}}} 1"),
            format!("grpc_server_msg_sent_total{{{labels}}} 1"),
            format!("grpc_server_handled_total{{{labels},grpc_code=\"NotFound\"}} 1"),
            format!("grpc_server_handling_seconds_count{{{labels}}} 1"),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
        assert!(!text.contains("peer_identity"), "{text}");
        let exemplar = format!("# {{trace_id=\"{}\"}} 0.007", "ab".repeat(16));
        assert!(
            text.lines()
                .any(|l| l.starts_with("grpc_server_handling_seconds_bucket")
                    && l.contains("le=\"0.01\"")
                    && l.contains(&exemplar)),
            "no exemplar on the 10 ms bucket in\n{text}"
        );
    }

    #[test]
    fn a_peer_series_carries_peer_identity_last() {
        let mut registry = Registry::default();
        let metrics = RpcMetrics::register(Side::Server, &mut registry);
        let info = MethodInfo {
            service: "helloworld.Greeter".into(),
            method: "SayHello".into(),
            rpc_type: RpcType::Unary,
        };
        metrics
            .method_of_peer(&info, "spiffe://keel.test/a".into())
            .handled(Code::Ok, Duration::from_millis(1), None);
        metrics
            .method_of_peer(&info, "".into())
            .handled(Code::Ok, Duration::from_millis(1), None);
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        let labels =
            r#"grpc_type="unary",grpc_service="helloworld.Greeter",grpc_method="SayHello""#;
        for line in [
            format!(
                "grpc_server_handled_total{{{labels},grpc_code=\"OK\",peer_identity=\"spiffe://keel.test/a\"}} 1"
            ),
            format!("grpc_server_handled_total{{{labels},grpc_code=\"OK\",peer_identity=\"\"}} 1"),
            format!(
                "grpc_server_handling_seconds_count{{{labels},peer_identity=\"spiffe://keel.test/a\"}} 1"
            ),
        ] {
            assert!(text.contains(&line), "missing {line} in\n{text}");
        }
    }
}
