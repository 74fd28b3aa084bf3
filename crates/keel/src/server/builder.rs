//! Assembles services, health, reflection and metrics, then binds the listeners.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tonic::body::Body;
use tonic::server::NamedService;
use tonic::service::Routes;

use super::fallback::{GrpcStack, HttpService, MakeFallback};
use super::reflection::Reflection;

use super::shutdown::{self, ShutdownReport};
use super::stack;
use crate::config::{InvalidSetting, ServerConfig, Validate};
use crate::metrics::Metrics;
use crate::serving::{HttpProtocol, Listener, ListenerConfig};
use keel_core::method::MethodTable;
use keel_health::pb::health_server::HealthServer;
use keel_health::{HealthRegistry, HealthService, ServingStatus};
use keel_telemetry::Traces;
use keel_telemetry::observe::ServerObserver;

/// Why a server could not start or run.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// A setting cannot be used; nothing was bound.
    #[error("invalid setting {0}")]
    Config(#[from] InvalidSetting),
    /// A listener could not bind.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// `gRPC` or `admin`.
        what: &'static str,
        /// The I/O error (e.g. address in use).
        source: std::io::Error,
    },
    /// A descriptor set given for reflection and observability does not decode.
    #[error(transparent)]
    Descriptors(#[from] keel_core::method::DescriptorError),
    /// A listener's TLS material cannot be used; nothing was bound.
    #[error("cannot set up TLS for the {what} listener: {source}")]
    Tls {
        /// `gRPC`, `admin` or the HTTP listener's name.
        what: &'static str,
        /// What is wrong with the files, naming them.
        source: keel_tls::ServerTlsError,
    },
    /// Installing the signal handlers failed.
    #[error("cannot install signal handlers: {0}")]
    Signals(std::io::Error),
    /// The JWKS or policy file (`auth.*`) cannot be read or used; nothing was bound.
    #[error(transparent)]
    Auth(#[from] keel_authz::watch::LoadError),
}

/// Entry point: `Server::builder(config)`.
#[derive(Debug, Clone, Copy)]
pub struct Server;

impl Server {
    /// Starts building a server with `config` (use `ServerConfig::default()` for production
    /// defaults).
    pub fn builder(config: ServerConfig) -> ServerBuilder {
        ServerBuilder {
            config,
            routes: Routes::default(),
            services: Vec::new(),
            descriptor_sets: vec![keel_health::FILE_DESCRIPTOR_SET],
            health: HealthRegistry::new(),
            metrics: Metrics::new(),
            fallback: None,
            traces: Traces::global(),
        }
    }
}

/// Collects services, then [`ServerBuilder::bind`]s.
///
/// Health (`grpc.health.v1.Health`) and reflection (v1 and v1alpha) are always registered;
/// every added service is reported SERVING under its full name.
pub struct ServerBuilder {
    config: ServerConfig,
    routes: Routes,
    services: Vec<&'static str>,
    descriptor_sets: Vec<&'static [u8]>,
    health: HealthRegistry,
    metrics: Metrics,
    fallback: Option<MakeFallback>,
    traces: Traces,
}

impl std::fmt::Debug for ServerBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerBuilder")
            .field("config", &self.config)
            .field("services", &self.services)
            .finish_non_exhaustive()
    }
}

impl ServerBuilder {
    /// Adds a tonic service (a generated `...Server<T>`), reported SERVING under its name.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use keel::health::ServingStatus;
    ///
    /// let mut config = keel::config::ServerConfig::default();
    /// config.listen = "127.0.0.1:0".parse()?;
    /// config.admin_listen = "127.0.0.1:0".parse()?;
    /// let server = keel::Server::builder(config)
    ///     .add_service(keel_interop::Greeter.into_service())
    ///     .bind()
    ///     .await?;
    /// assert_eq!(server.health().get("helloworld.Greeter"), Some(ServingStatus::Serving));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn add_service<S>(mut self, service: S) -> Self
    where
        S: tower::Service<http::Request<Body>, Response = http::Response<Body>, Error = Infallible>
            + NamedService
            + Clone
            + Send
            + Sync
            + 'static,
        S::Future: Send + 'static,
    {
        self.services.push(S::NAME);
        self.routes = self.routes.add_service(service);
        self
    }

    /// Serves requests that are not gRPC (REST/JSON, gRPC-Web) on the gRPC port too: the
    /// port then accepts HTTP/1.1 besides HTTP/2, and every request whose content type is
    /// not `application/grpc` goes to the service `make` builds from the server's own gRPC
    /// stack (for a gateway to call in-process, e.g. `keel_gateway::Gateway`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::convert::Infallible;
    /// use tower::util::BoxCloneSyncService;
    ///
    /// let mut config = keel::config::ServerConfig::default();
    /// config.listen = "127.0.0.1:0".parse()?;
    /// config.admin_listen = "127.0.0.1:0".parse()?;
    /// let server = keel::Server::builder(config)
    ///     .add_service(keel_interop::Greeter.into_service())
    ///     // A REST gateway would call `_grpc` in-process; this one answers 404 to all.
    ///     .http_fallback(|_grpc| {
    ///         BoxCloneSyncService::new(tower::service_fn(
    ///             |_request: http::Request<tonic::body::Body>| async {
    ///                 let mut response = http::Response::new(tonic::body::Body::empty());
    ///                 *response.status_mut() = http::StatusCode::NOT_FOUND;
    ///                 Ok::<_, Infallible>(response)
    ///             },
    ///         ))
    ///     })
    ///     .bind()
    ///     .await?;
    /// # let _ = server;
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn http_fallback(
        mut self,
        make: impl FnOnce(GrpcStack) -> HttpService + Send + 'static,
    ) -> Self {
        self.fallback = Some(Box::new(make));
        self
    }

    /// Adds an encoded `FileDescriptorSet` (with imports) to what reflection serves, and to
    /// what metrics read RPC types from. A set that does not decode fails `bind`.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut config = keel::config::ServerConfig::default();
    /// config.listen = "127.0.0.1:0".parse()?;
    /// config.admin_listen = "127.0.0.1:0".parse()?;
    /// let server = keel::Server::builder(config)
    ///     .add_service(keel_interop::Greeter.into_service())
    ///     .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
    ///     .bind()
    ///     .await?;
    /// # let _ = server;
    /// let mut config = keel::config::ServerConfig::default();
    /// config.listen = "127.0.0.1:0".parse()?;
    /// config.admin_listen = "127.0.0.1:0".parse()?;
    /// let garbled = keel::Server::builder(config)
    ///     .file_descriptor_set(b"not a descriptor set")
    ///     .bind()
    ///     .await;
    /// assert!(matches!(garbled, Err(keel::ServerError::Descriptors(_))));
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn file_descriptor_set(mut self, encoded: &'static [u8]) -> Self {
        self.descriptor_sets.push(encoded);
        self
    }

    /// Where this server's spans go and which propagators read its callers' trace context:
    /// by default the process's, as `keel::telemetry::init` set them up. Give one
    /// [`keel_telemetry::Telemetry::traces`] to export this server's spans to its own
    /// collector with its own sampler.
    ///
    /// ```no_run
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let telemetry = keel::telemetry::from_settings("ledger", |name| {
    ///     (name == "OTEL_EXPORTER_OTLP_ENDPOINT").then(|| "http://127.0.0.1:4317".to_owned())
    /// })?;
    /// let server = keel::Server::builder(keel::config::ServerConfig::default())
    ///     .traces(telemetry.traces())
    ///     .bind()
    ///     .await?;
    /// # drop(server);
    /// # Ok(()) }
    /// ```
    #[must_use]
    pub fn traces(mut self, traces: Traces) -> Self {
        self.traces = traces;
        self
    }

    /// The health registry, for services that report their own status.
    pub fn health(&self) -> HealthRegistry {
        self.health.clone()
    }

    /// The metrics registry, for services to register their own metrics before binding.
    pub fn metrics_registry(&mut self) -> &mut prometheus_client::registry::Registry {
        self.metrics.registry_mut()
    }

    /// Checks the configuration, then binds the gRPC and admin listeners. Nothing is served
    /// until [`BoundServer::serve`]. A setting that cannot be used is
    /// [`ServerError::Config`], naming its key, and nothing is bound.
    pub async fn bind(self) -> Result<BoundServer, ServerError> {
        self.config.validate()?;
        let auth = keel_authz::Auth::from_config(
            &self.config.auth,
            Some(self.metrics.auth.reload_observer()),
        )?
        .map(Arc::new);
        let standard = [
            <HealthServer<HealthService> as NamedService>::NAME,
            "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection",
        ];
        let mut reflected_sets = self.descriptor_sets.clone();
        reflected_sets.extend([
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]);
        let listed = self
            .services
            .iter()
            .chain(&standard)
            .map(|name| (*name).to_owned())
            .collect();
        let reflection = Reflection::new(&reflected_sets, listed);
        let health_service = HealthService::new(self.health.clone()).into_service();
        let routes = self
            .routes
            .add_service(health_service)
            .add_service(reflection.v1())
            .add_service(reflection.v1alpha())
            .prepare();
        for name in self.services.iter().chain(&standard) {
            self.health.set(name, ServingStatus::Serving);
        }

        let mut methods = MethodTable::default();
        for set in self.descriptor_sets.iter().chain(&[
            tonic_reflection::pb::v1::FILE_DESCRIPTOR_SET,
            tonic_reflection::pb::v1alpha::FILE_DESCRIPTOR_SET,
        ]) {
            methods.add_encoded(set)?;
        }
        let payloads = &self.config.observe.payloads;
        let pool = if payloads.enabled {
            Some(descriptor_pool(&self.descriptor_sets))
        } else {
            None
        };
        let observer = Arc::new(ServerObserver::new(
            &methods,
            &self.metrics.rpc,
            &self.traces,
            pool.as_ref().map(|pool| (payloads.clone(), pool)),
            self.config.observe.identity_label,
        ));

        let metrics = Arc::new(self.metrics);
        let protocol = if self.fallback.is_some() {
            HttpProtocol::Http1AndHttp2
        } else {
            HttpProtocol::Http2
        };
        let listener = bind(
            self.config.listen,
            "gRPC",
            ListenerConfig {
                name: stack::GRPC,
                protocol,
                http2: self.config.http2.clone(),
                connection: self.config.connection.clone(),
                tls: load_tls(&self.config.tls, protocol, "gRPC")?,
                threads: self.config.serving_threads,
            },
            &metrics,
        )
        .await?;
        let admin = bind_admin(&self.config, &metrics).await?;
        Ok(BoundServer {
            listener,
            admin,
            routes,
            fallback: self.fallback,
            config: Arc::new(self.config),
            health: self.health,
            metrics,
            observer,
            auth,
        })
    }
}

/// The descriptors payload capture decodes responses with. A set that does not fit (its
/// types clash with another's) leaves its methods uncaptured, with a warning.
fn descriptor_pool(sets: &[&[u8]]) -> prost_reflect::DescriptorPool {
    let mut pool = prost_reflect::DescriptorPool::new();
    for set in sets {
        if let Err(error) = pool.decode_file_descriptor_set(*set) {
            tracing::warn!(%error, "a descriptor set cannot be used for payload capture");
        }
    }
    pool
}

/// Loads a listener's TLS material when `settings` turn TLS on, offering the ALPN
/// protocols of `protocol`; `what` names the listener in the error.
pub(super) fn load_tls(
    settings: &keel_tls::TlsConfig,
    protocol: HttpProtocol,
    what: &'static str,
) -> Result<Option<Arc<keel_tls::ServerTls>>, ServerError> {
    if !settings.enabled() {
        return Ok(None);
    }
    keel_tls::ServerTls::load(settings, protocol.alpn())
        .map(|tls| Some(Arc::new(tls)))
        .map_err(|source| ServerError::Tls { what, source })
}

/// Binds one listener, naming it (`what`) in the error.
pub(super) async fn bind(
    addr: SocketAddr,
    what: &'static str,
    config: ListenerConfig,
    metrics: &Metrics,
) -> Result<Listener, ServerError> {
    Listener::bind(addr, config, &metrics.connection)
        .await
        .map_err(|source| ServerError::Bind { addr, what, source })
}

/// Binds the admin listener: HTTP/1.1 and HTTP/2, the server's timeouts, its own
/// connection budget, no age limit (scrapers keep their connection).
pub(super) async fn bind_admin(
    config: &ServerConfig,
    metrics: &Metrics,
) -> Result<Listener, ServerError> {
    let mut connection = config.connection.clone();
    connection.max_connections = config.admin_max_connections;
    connection.max_age = Duration::ZERO;
    let protocol = HttpProtocol::Http1AndHttp2;
    let admin = ListenerConfig {
        name: "admin",
        protocol,
        http2: config.http2.clone(),
        connection,
        tls: load_tls(&config.admin_tls, protocol, "admin")?,
        threads: 0,
    };
    bind(config.admin_listen, "admin", admin, metrics).await
}

/// A server with bound listeners, ready to serve.
pub struct BoundServer {
    pub(super) listener: Listener,
    pub(super) admin: Listener,
    pub(super) routes: Routes,
    pub(super) fallback: Option<MakeFallback>,
    pub(super) config: Arc<ServerConfig>,
    pub(super) health: HealthRegistry,
    pub(super) metrics: Arc<Metrics>,
    pub(super) observer: Arc<ServerObserver>,
    pub(super) auth: Option<Arc<keel_authz::Auth>>,
}

impl std::fmt::Debug for BoundServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BoundServer")
            .field("listener", &self.listener)
            .field("admin", &self.admin)
            .field("http_fallback", &self.fallback.is_some())
            .finish_non_exhaustive()
    }
}

impl BoundServer {
    /// The gRPC listener's address (with the real port when configured with port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.listener.local_addr()
    }

    /// The admin listener's address.
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.local_addr()
    }

    /// Prints `grpc listening on ADDR` and `admin listening on ADDR` to stdout and flushes:
    /// how every Keel server tells people and test harnesses where it listens (with the real
    /// ports when configured with port 0).
    pub fn announce(&self) -> std::io::Result<()> {
        use std::io::Write;
        let mut stdout = std::io::stdout().lock();
        writeln!(stdout, "grpc listening on {}", self.local_addr())?;
        writeln!(stdout, "admin listening on {}", self.admin_addr())?;
        stdout.flush()
    }

    /// The health registry.
    pub fn health(&self) -> HealthRegistry {
        self.health.clone()
    }

    /// The server's metrics.
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// The token keys and policy of `auth.*` (`None` when neither is configured), e.g. to
    /// [`reload`](keel_authz::Auth::reload) them on demand. While serving they are also
    /// reloaded every `auth.reload_interval`, and on SIGHUP under
    /// [`serve_until_signal`](Self::serve_until_signal).
    pub fn auth(&self) -> Option<Arc<keel_authz::Auth>> {
        self.auth.clone()
    }

    /// Serves until SIGTERM or SIGINT, then shuts down gracefully; a second signal skips
    /// straight to closing every connection. SIGHUP reloads the `auth.*` files.
    pub async fn serve_until_signal(self) -> Result<ShutdownReport, ServerError> {
        let signals = shutdown::Signals::install().map_err(ServerError::Signals)?;
        let hangups = match &self.auth {
            None => None,
            Some(auth) => Some(reload_on_hangup(auth.clone()).map_err(ServerError::Signals)?),
        };
        let report = self.run(signals).await;
        if let Some(task) = hangups {
            task.abort();
        }
        Ok(report)
    }

    /// Serves until `shutdown` completes, then shuts down gracefully within the configured
    /// deadline.
    pub async fn serve<F>(self, shutdown: F) -> ShutdownReport
    where
        F: std::future::Future<Output = ()> + Send,
    {
        self.run(shutdown::Trigger::new(shutdown)).await
    }

    async fn run(self, trigger: impl shutdown::ShutdownTrigger) -> ShutdownReport {
        let polls = self.auth.clone().map(|auth| tokio::spawn(auth.poll()));
        let _rotation = super::rotation::spawn(&[&self.listener, &self.admin], &self.metrics);
        let main = stack::spawn(
            self.listener,
            &self.config,
            self.routes,
            self.fallback,
            &self.metrics,
            self.observer,
            self.auth,
        );
        let report = shutdown::run(
            main,
            self.admin,
            self.health,
            self.metrics,
            &self.config.shutdown,
            trigger,
        )
        .await;
        if let Some(task) = polls {
            task.abort();
        }
        report
    }
}

/// Reloads `auth`'s files on every SIGHUP, in a task of its own.
fn reload_on_hangup(auth: Arc<keel_authz::Auth>) -> std::io::Result<tokio::task::JoinHandle<()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut hangups = signal(SignalKind::hangup())?;
    Ok(tokio::spawn(async move {
        while hangups.recv().await.is_some() {
            tracing::info!("received SIGHUP: reloading the auth files");
            let auth = auth.clone();
            let _ = tokio::task::spawn_blocking(move || auth.reload()).await;
        }
    }))
}
