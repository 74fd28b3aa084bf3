//! A server for one HTTP service that is not a set of gRPC routes (the standalone REST
//! gateway, say): the same serving core, admin port (`/healthz`, `/readyz`, `/metrics`),
//! connection metrics and graceful shutdown as a gRPC [`super::Server`].

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::watch;

use super::builder::{ServerError, bind, bind_admin, load_tls};
use super::shutdown::{self, MainListener, ShutdownReport};
use crate::config::{ServerConfig, Validate};
use crate::metrics::Metrics;
use crate::serving::{
    HttpProtocol, Listener, ListenerConfig, ListenerService, ResponseBody, Stage,
};
use keel_health::HealthRegistry;

/// Entry point: `HttpServer::bind(config, name, service)`.
#[derive(Debug, Clone, Copy)]
pub struct HttpServer;

impl HttpServer {
    /// Binds `config.listen` (HTTP/1.1 and h2c; over TLS when `config.tls` says, with ALPN
    /// `h2` and `http/1.1`) for `service` and `config.admin_listen` for the admin endpoints. `name` labels the listener's metrics and logs (`gateway`).
    /// Nothing is served until [`BoundHttpServer::serve`]. The configuration is checked
    /// first: a setting that cannot be used is [`ServerError::Config`], naming its key, and
    /// nothing is bound.
    pub async fn bind<S>(
        config: ServerConfig,
        name: &'static str,
        service: S,
    ) -> Result<BoundHttpServer<S>, ServerError> {
        config.validate()?;
        if config.auth.is_enabled() {
            // The auth layer is part of the gRPC stack, which this server does not have:
            // accepting `auth.*` here would look like protection and be none.
            return Err(ServerError::Config(crate::config::InvalidSetting::new(
                "auth",
                "(jwks or policy set)",
                "is not applied by an HTTP server such as `keel gateway`: configure it on \
                 the gRPC server behind it",
            )));
        }
        let metrics = Arc::new(Metrics::new());
        let protocol = HttpProtocol::Http1AndHttp2;
        let listener = bind(
            config.listen,
            name,
            ListenerConfig {
                name,
                protocol,
                http2: config.http2.clone(),
                connection: config.connection.clone(),
                tls: load_tls(&config.tls, protocol, name)?,
                threads: config.serving_threads,
            },
            &metrics,
        )
        .await?;
        let admin = bind_admin(&config, &metrics).await?;
        Ok(BoundHttpServer {
            name,
            listener,
            admin,
            service,
            config,
            health: HealthRegistry::new(),
            metrics,
        })
    }
}

/// An HTTP server with bound listeners, ready to serve.
#[derive(Debug)]
pub struct BoundHttpServer<S> {
    name: &'static str,
    listener: Listener,
    admin: Listener,
    service: S,
    config: ServerConfig,
    health: HealthRegistry,
    metrics: Arc<Metrics>,
}

impl<S> BoundHttpServer<S> {
    /// The service listener's address.
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// The registry `/readyz` reads (`""` is the whole server).
    pub fn health(&self) -> HealthRegistry {
        self.health.clone()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully; a second signal skips
    /// straight to closing every connection.
    pub async fn serve_until_signal<B>(self) -> Result<ShutdownReport, ServerError>
    where
        S: ListenerService<B>,
        B: ResponseBody,
    {
        let signals = shutdown::Signals::install().map_err(ServerError::Signals)?;
        Ok(self.run(signals).await)
    }

    /// Serves until `shutdown` completes, then shuts down gracefully within the deadline.
    pub async fn serve<F, B>(self, shutdown: F) -> ShutdownReport
    where
        F: std::future::Future<Output = ()> + Send,
        S: ListenerService<B>,
        B: ResponseBody,
    {
        self.run(shutdown::Trigger::new(shutdown)).await
    }

    /// Serves until the first event of `events`, then shuts down gracefully; a second
    /// event skips straight to closing every connection. For processes that install their
    /// own signal handlers (SIGTERM and SIGINT as a stream).
    pub async fn serve_until_events<E, B>(self, events: E) -> ShutdownReport
    where
        E: futures_util::Stream<Item = ()> + Send,
        S: ListenerService<B>,
        B: ResponseBody,
    {
        self.run(shutdown::Events(Box::pin(events))).await
    }

    async fn run<B>(self, trigger: impl shutdown::ShutdownTrigger) -> ShutdownReport
    where
        S: ListenerService<B>,
        B: ResponseBody,
    {
        let _rotation = super::rotation::spawn(&[&self.listener, &self.admin], &self.metrics);
        let (stage, stage_rx) = watch::channel(Stage::Serving);
        let main = MainListener {
            name: self.name,
            task: tokio::spawn(self.listener.serve(self.service, stage_rx)),
            stage,
        };
        shutdown::run(
            main,
            self.admin,
            self.health,
            self.metrics,
            &self.config.shutdown,
            trigger,
        )
        .await
    }
}
