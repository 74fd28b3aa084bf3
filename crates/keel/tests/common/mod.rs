//! Shared fixture: a Keel server in-process on ephemeral loopback ports.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixture"
)]

pub mod mutual_tls;
pub mod raw_h2;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel::config::ServerConfig;
use keel::health::HealthRegistry;
use keel::metrics::Metrics;
use keel::server::ShutdownReport;
use keel::{Server, ServerBuilder};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use keel_test_support::{http_get, metric};

/// A test configuration: ephemeral ports, no drain delay, short deadline.
pub fn config() -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.shutdown.drain_delay = Duration::ZERO;
    config.shutdown.timeout = Duration::from_secs(5);
    config
}

/// A running server; `stop` shuts it down gracefully.
pub struct TestServer {
    pub addr: SocketAddr,
    pub admin: SocketAddr,
    pub health: HealthRegistry,
    pub metrics: Arc<Metrics>,
    /// The `auth.*` files, when configured.
    pub auth: Option<Arc<keel::authz::Auth>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<ShutdownReport>>,
}

impl TestServer {
    /// Starts a server with `config` and the Greeter, plus whatever `add` registers.
    pub async fn start(config: ServerConfig) -> Self {
        Self::start_with(config, |b| b).await
    }

    /// Starts a server with `config`, the Greeter and the services `add` registers.
    pub async fn start_with(
        config: ServerConfig,
        add: impl FnOnce(ServerBuilder) -> ServerBuilder,
    ) -> Self {
        let builder = Server::builder(config)
            .add_service(keel_interop::Greeter.into_service())
            .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET);
        let server = add(builder).bind().await.expect("bind");
        let (stop, stopped) = oneshot::channel::<()>();
        let (addr, admin, health, metrics) = (
            server.local_addr(),
            server.admin_addr(),
            server.health(),
            server.metrics(),
        );
        let auth = server.auth();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            health,
            metrics,
            auth,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// `http://ADDR` for tonic clients.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// A fresh tonic channel to the server.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url())
            .unwrap()
            .connect()
            .await
            .expect("connect")
    }

    /// Starts graceful shutdown without waiting for it.
    pub fn trigger_stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Shuts down and returns the report.
    pub async fn stop(mut self) -> ShutdownReport {
        self.trigger_stop();
        self.task.take().unwrap().await.expect("server task")
    }

    /// GETs an admin path; returns status and body.
    pub async fn admin_get(&self, path: &str) -> (u16, String) {
        http_get(self.admin, path).await
    }

    /// The value of one sample line of /metrics (`name{labels}` exactly as rendered).
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let (_, text) = self.admin_get("/metrics").await;
        metric(&text, series)
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}

/// Opens a never-ending health `Watch` of the whole server and reads its first message:
/// an RPC that stays in flight until dropped.
pub async fn open_watch(
    channel: tonic::transport::Channel,
) -> tonic::Streaming<keel::health::pb::HealthCheckResponse> {
    use tokio_stream::StreamExt;
    let mut client = keel::health::pb::health_client::HealthClient::new(channel);
    let request = keel::health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let mut stream = client.watch(request).await.expect("watch").into_inner();
    stream
        .next()
        .await
        .expect("first status")
        .expect("first status");
    stream
}
