//! A server with only the admin port (`/healthz`, `/readyz`, `/metrics`) on the serving core,
//! for processes whose work is not serving requests: `keel bridge` reads MQTT and a log, and
//! still needs readiness, metrics, connection limits and TLS like every Keel listener.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel_health::HealthRegistry;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::builder::{ServerError, bind_admin};
use crate::config::{ServerConfig, Validate};
use crate::metrics::Metrics;
use crate::serving::{Listener, ListenerReport, Stage};

/// How long the admin port finishes its requests before closing them, at stop.
const ADMIN_GRACE: Duration = Duration::from_secs(1);

/// An admin port, bound and not yet serving.
#[derive(Debug)]
pub struct AdminServer {
    admin: Listener,
    health: HealthRegistry,
    metrics: Metrics,
}

impl AdminServer {
    /// Checks the configuration and binds `config.admin_listen` (over TLS when
    /// `config.admin_tls` says). Only the `admin_*`, `connection`, `http2` and `admin_tls`
    /// settings apply; the rest of the configuration is checked but unused.
    pub async fn bind(config: &ServerConfig) -> Result<Self, ServerError> {
        config.validate()?;
        let metrics = Metrics::new();
        let admin = bind_admin(config, &metrics).await?;
        Ok(Self {
            admin,
            health: HealthRegistry::new(),
            metrics,
        })
    }

    /// The admin port's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The registry `/readyz` reads: add readiness checks here.
    pub fn health(&self) -> HealthRegistry {
        self.health.clone()
    }

    /// The metrics registry, to register the process's own metrics before serving.
    pub fn metrics_registry(&mut self) -> &mut prometheus_client::registry::Registry {
        self.metrics.registry_mut()
    }

    /// Starts serving, until [`RunningAdmin::stop`].
    pub fn start(self) -> RunningAdmin {
        let metrics = Arc::new(self.metrics);
        let _rotation = super::rotation::spawn(&[&self.admin], &metrics);
        let (stage, stage_rx) = watch::channel(Stage::Serving);
        let task = tokio::spawn(self.admin.serve(
            crate::admin::router(self.health.clone(), metrics.clone()),
            stage_rx,
        ));
        RunningAdmin {
            stage,
            task,
            health: self.health,
            _rotation,
        }
    }
}

/// An admin port being served (with the task that rotates its TLS material, if any).
pub struct RunningAdmin {
    stage: watch::Sender<Stage>,
    task: JoinHandle<ListenerReport>,
    health: HealthRegistry,
    _rotation: super::rotation::Rotation,
}

impl RunningAdmin {
    /// Reports NOT_SERVING on `/readyz` from now on (the process is stopping its work).
    pub fn set_not_serving(&self) {
        self.health.set_all_not_serving();
    }

    /// Stops serving: open requests get one second to finish, then every connection
    /// is closed.
    pub async fn stop(mut self) {
        self.health.set_all_not_serving();
        self.stage.send_replace(Stage::Draining);
        if tokio::time::timeout(ADMIN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.stage.send_replace(Stage::Closing);
            let _ = (&mut self.task).await;
        }
    }
}
