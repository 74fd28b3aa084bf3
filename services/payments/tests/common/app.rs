//! The whole payments service as the binary assembles it ([`payments::app::App`]), in-process
//! on ephemeral loopback ports, with its admin port: for tests of readiness and outages.

use std::net::SocketAddr;
use std::time::Duration;

use keel_test_support::http_get;
use payments::app::App;
use payments::config::PaymentsConfig;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A configuration for `database_url` on ephemeral loopback ports, with no drain delay.
pub fn config(database_url: &str) -> PaymentsConfig {
    let mut config = PaymentsConfig {
        database_url: database_url.to_owned(),
        rest_gateway: false,
        ..PaymentsConfig::default()
    };
    config.server.listen = "127.0.0.1:0".parse().unwrap();
    config.server.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.server.shutdown.drain_delay = Duration::ZERO;
    config.server.shutdown.timeout = Duration::from_secs(5);
    config
}

/// A running payments service; dropping it stops it.
pub struct RunningApp {
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl RunningApp {
    /// Binds and serves `config`.
    pub async fn start(config: PaymentsConfig) -> Self {
        let app = App::bind(config).await.expect("payments starts");
        let (grpc, admin) = (app.server().local_addr(), app.server().admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            grpc,
            admin,
            stop: Some(stop),
            task,
        }
    }

    /// A fresh channel to the gRPC port.
    pub async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(format!("http://{}", self.grpc))
            .unwrap()
            .connect()
            .await
            .unwrap()
    }

    /// `GET /readyz`: the status code and the JSON body.
    pub async fn readyz(&self) -> (u16, serde_json::Value) {
        let (code, body) = http_get(self.admin, "/readyz").await;
        let body = serde_json::from_str(&body)
            .unwrap_or_else(|error| panic!("/readyz body {body:?}: {error}"));
        (code, body)
    }

    /// Polls `/readyz` (every 50 ms, for at most `limit`) until `done` holds for its answer,
    /// and returns that answer.
    pub async fn wait_readyz(
        &self,
        limit: Duration,
        done: impl Fn(u16, &serde_json::Value) -> bool,
    ) -> (u16, serde_json::Value) {
        let started = tokio::time::Instant::now();
        loop {
            let (code, body) = self.readyz().await;
            if done(code, &body) {
                return (code, body);
            }
            assert!(
                started.elapsed() < limit,
                "/readyz did not get there in {limit:?}; last: {code} {body}"
            );
            // sleep: poll interval of a bounded poll on the condition
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Shuts the service down gracefully and waits until it is.
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        (&mut self.task).await.unwrap();
    }
}

impl Drop for RunningApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
