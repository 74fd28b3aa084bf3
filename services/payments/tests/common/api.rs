//! The payments services on an in-process Keel server, for tests over real gRPC.

use std::sync::Arc;

use payments::service::Payments;
use payments::store::Store;
use tonic::transport::Channel;

/// Serves both services on `store` (with `rate_limit` payments per second per payer, `0` for
/// none) on an ephemeral loopback port, and returns a connected channel. The server stops
/// with the test's runtime.
pub async fn serve(store: Arc<dyn Store>, rate_limit: u32) -> Channel {
    serve_payments(Payments::new(store, rate_limit)).await
}

/// Serves `service` (built by the test, e.g. with a Redis limiter over a cached store) as
/// [`serve`] does.
pub async fn serve_payments(service: Payments) -> Channel {
    let config = keel::config::ServerConfig {
        listen: "127.0.0.1:0".parse().unwrap(),
        admin_listen: "127.0.0.1:0".parse().unwrap(),
        ..Default::default()
    };
    let server = keel::Server::builder(config)
        .add_service(service.account_service())
        .add_service(service.payment_service())
        .file_descriptor_set(payments::FILE_DESCRIPTOR_SET)
        .bind()
        .await
        .unwrap();
    let url = format!("http://{}", server.local_addr());
    tokio::spawn(server.serve(std::future::pending()));
    tonic::transport::Endpoint::from_shared(url)
        .unwrap()
        .connect()
        .await
        .unwrap()
}
