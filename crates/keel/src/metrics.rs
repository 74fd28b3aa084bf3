//! Prometheus metrics served on the admin `/metrics` endpoint.
//!
//! One [`Metrics`] per server holds its registry and the handles the runtime updates.
//! Process metrics (CPU, memory, descriptors, threads) and the tokio runtime's live task
//! count are sampled at scrape time. [`Format`] chooses between OpenMetrics and the
//! Prometheus text format 0.0.4 by `Accept` (`format.rs`); `text.rs` writes the latter.

mod format;
mod text;

use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

pub use format::Format;
pub use keel_telemetry::process::ProcessCollector;

use crate::layer::AuthMetrics;
use crate::serving::ConnectionMetrics;
use keel_telemetry::observe::{RpcMetrics, Side};

/// The server's metrics and their registry.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    /// RPCs refused with RESOURCE_EXHAUSTED by the concurrency limit.
    pub shed_rpcs: Counter,
    /// Every listener's connection metrics (`keel_server_connections{listener}`, ...).
    pub connection: ConnectionMetrics,
    /// Tasks alive on the tokio runtime, refreshed at scrape.
    pub runtime_alive_tasks: Gauge,
    /// Handler panics caught and answered with INTERNAL.
    pub panics: Counter,
    /// The `grpc_server_*` RPC metrics (go-grpc-middleware's names and labels).
    pub rpc: RpcMetrics,
    /// `keel_auth_*`: decisions and reloads of the auth files.
    pub auth: AuthMetrics,
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
            shed_rpcs: Counter::default(),
            connection: ConnectionMetrics::default(),
            runtime_alive_tasks: Gauge::default(),
            panics: Counter::default(),
            rpc: RpcMetrics::register(Side::Server, &mut registry),
            auth: AuthMetrics::default(),
            registry: Registry::default(),
        };
        let keel = registry.sub_registry_with_prefix("keel");
        keel.register(
            "server_shed_rpcs",
            "RPCs refused with RESOURCE_EXHAUSTED by the server-wide concurrency limit",
            metrics.shed_rpcs.clone(),
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
        let connection = ConnectionMetrics::register(keel);
        let auth = AuthMetrics::register(keel);
        Self {
            registry,
            connection,
            auth,
            ..metrics
        }
    }

    /// The registry, to add service metrics to.
    pub fn registry_mut(&mut self) -> &mut Registry {
        &mut self.registry
    }

    /// Refreshes the sampled metrics and renders them as OpenMetrics text.
    pub fn render(&self) -> String {
        self.render_as(Format::OpenMetrics)
    }

    /// Refreshes the sampled metrics and renders them in `format`.
    pub fn render_as(&self, format: Format) -> String {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.runtime_alive_tasks
                .set(handle.metrics().num_alive_tasks() as i64);
        }
        let mut out = String::new();
        match format {
            Format::OpenMetrics => {
                prometheus_client::encoding::text::encode(&mut out, &self.registry)
                    .expect("writing to a String cannot fail");
            }
            Format::PrometheusText => {
                let families =
                    prometheus_client::encoding::prometheus_protobuf::encode(&self.registry)
                        .expect("the registry's metrics encode into the data model");
                text::encode(&mut out, &families);
            }
        }
        out
    }
}

/// Metrics shared between the server's tasks.
pub type SharedMetrics = Arc<Metrics>;
