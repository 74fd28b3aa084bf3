//! Prometheus metrics served on the admin `/metrics` endpoint.
//!
//! One [`Metrics`] per server holds its registry and the handles the runtime updates.
//! Process metrics (CPU, memory, descriptors, threads) and the tokio runtime's live task
//! count are sampled at scrape time.

mod process;

use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use process::ProcessCollector;

use crate::observe::{RpcMetrics, Side};

/// Why the server sent a connection GOAWAY.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, EncodeLabelSet)]
pub struct GoawayLabels {
    /// `max_age`, `max_idle` or `shutdown`.
    pub reason: &'static str,
}

/// The server's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// RPCs whose handler or response is still alive (the live-handler gauge).
    pub inflight_rpcs: Gauge,
    /// RPCs refused with RESOURCE_EXHAUSTED by the concurrency limit.
    pub shed_rpcs: Counter,
    /// Open connections.
    pub connections: Gauge,
    /// Connections accepted since start.
    pub connections_accepted: Counter,
    /// GOAWAYs sent, by reason.
    pub goaways: Family<GoawayLabels, Counter>,
    /// Connections closed by force (grace or shutdown deadline passed with RPCs in flight).
    pub forced_closes: Counter,
    /// Tasks alive on the tokio runtime, refreshed at scrape.
    pub runtime_alive_tasks: Gauge,
    /// Handler panics caught and answered with INTERNAL.
    pub panics: Counter,
    /// The `grpc_server_*` RPC metrics (go-grpc-middleware's names and labels).
    pub rpc: RpcMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// A registry with every metric registered.
    pub fn new() -> Self {
        let mut registry = Registry::default();
        registry.register_collector(Box::new(ProcessCollector));
        let metrics = Self {
            inflight_rpcs: Gauge::default(),
            shed_rpcs: Counter::default(),
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            goaways: Family::default(),
            forced_closes: Counter::default(),
            runtime_alive_tasks: Gauge::default(),
            panics: Counter::default(),
            rpc: RpcMetrics::register(Side::Server, &mut registry),
            registry: Registry::default(),
        };
        let keel = registry.sub_registry_with_prefix("keel");
        keel.register(
            "server_inflight_rpcs",
            "RPCs whose handler or response stream is alive",
            metrics.inflight_rpcs.clone(),
        );
        keel.register(
            "server_shed_rpcs",
            "RPCs refused with RESOURCE_EXHAUSTED by the server-wide concurrency limit",
            metrics.shed_rpcs.clone(),
        );
        keel.register(
            "server_connections",
            "Open connections",
            metrics.connections.clone(),
        );
        keel.register(
            "server_connections_accepted",
            "Connections accepted since start",
            metrics.connections_accepted.clone(),
        );
        keel.register(
            "server_goaways",
            "GOAWAY frames sent to connections, by reason",
            metrics.goaways.clone(),
        );
        keel.register(
            "server_forced_closes",
            "Connections closed with RPCs still in flight after their grace period or the shutdown deadline",
            metrics.forced_closes.clone(),
        );
        keel.register(
            "server_panics",
            "Handler panics caught and answered with INTERNAL",
            metrics.panics.clone(),
        );
        keel.register(
            "runtime_alive_tasks",
            "Tasks alive on the tokio runtime",
            metrics.runtime_alive_tasks.clone(),
        );
        Self {
            registry,
            ..metrics
        }
    }

    /// The registry, to add service metrics to.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Refreshes the sampled metrics and renders the Prometheus text format.
    pub fn render(&self) -> String {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.runtime_alive_tasks
                .set(handle.metrics().num_alive_tasks() as i64);
        }
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }
}

/// Metrics shared between the server's tasks.
pub type SharedMetrics = Arc<Metrics>;
