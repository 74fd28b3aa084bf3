//! A gateway whose routes can be replaced while it serves, for descriptors that change at
//! run time (re-read by reflection, a new descriptor set): the swap is atomic, and requests
//! already in flight finish on the gateway they started on.

use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use tower::Service;

use crate::Gateway;

/// A [`Gateway`] behind a shared slot: every request is answered by the gateway in the
/// slot when it arrives, and [`ReloadableGateway::replace`] puts a new one in for every
/// clone at once.
///
/// ```no_run
/// # async fn run(pool: prost_reflect::DescriptorPool, newer: prost_reflect::DescriptorPool)
/// # -> Result<(), Box<dyn std::error::Error>> {
/// use keel_gateway::{Gateway, ReloadableGateway};
///
/// let channel = keel::client::Channel::new("dns:///127.0.0.1:50051")?;
/// let gateway = ReloadableGateway::new(Gateway::new(pool, channel.clone(), Default::default())?);
/// let mut config = keel::config::ServerConfig::default();
/// config.listen = "127.0.0.1:8080".parse()?;
/// let server = keel::server::HttpServer::bind(config, "gateway", gateway.clone()).await?;
/// tokio::spawn(server.serve_until_signal());
/// // Later, with newer descriptors:
/// gateway.replace(Gateway::new(newer, channel, Default::default())?);
/// # Ok(()) }
/// ```
pub struct ReloadableGateway<S> {
    current: Arc<RwLock<Gateway<S>>>,
}

impl<S> Clone for ReloadableGateway<S> {
    fn clone(&self) -> Self {
        Self {
            current: self.current.clone(),
        }
    }
}

impl<S> std::fmt::Debug for ReloadableGateway<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let current = self.current.read().unwrap_or_else(PoisonError::into_inner);
        f.debug_tuple("ReloadableGateway").field(&*current).finish()
    }
}

impl<S: Clone> ReloadableGateway<S> {
    /// Serves `gateway` until it is replaced.
    pub fn new(gateway: Gateway<S>) -> Self {
        Self {
            current: Arc::new(RwLock::new(gateway)),
        }
    }

    /// The gateway answering new requests now.
    pub fn current(&self) -> Gateway<S> {
        // Nothing can panic while holding the lock, but a poisoned slot still holds a
        // whole gateway: keep serving it.
        self.current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Answers new requests with `gateway` from now on; requests in flight finish on the
    /// gateway they started on.
    pub fn replace(&self, gateway: Gateway<S>) {
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = gateway;
    }
}

impl<S, R> Service<R> for ReloadableGateway<S>
where
    S: Clone,
    Gateway<S>: Service<R>,
{
    type Response = <Gateway<S> as Service<R>>::Response;
    type Error = <Gateway<S> as Service<R>>::Error;
    type Future = <Gateway<S> as Service<R>>::Future;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The gateway is always ready: it waits for its upstream inside each call.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: R) -> Self::Future {
        let mut gateway = self.current();
        gateway.call(request)
    }
}

#[cfg(test)]
mod tests {

    use prost_reflect::DescriptorPool;
    use tower::ServiceExt as _;

    use super::*;
    use crate::GatewayOptions;
    use crate::testdata::scripted;

    fn get(path: &str) -> http::Request<String> {
        http::Request::get(path)
            .body(String::new())
            .expect("a valid request")
    }

    #[tokio::test]
    async fn a_replacement_serves_new_requests_and_in_flight_ones_finish_on_the_old() {
        let bookstore = Gateway::new(
            crate::testdata::bookstore(),
            scripted(0, 12),
            GatewayOptions::default(),
        )
        .unwrap();
        let mut service = ReloadableGateway::new(bookstore);
        // Routed and forwarded: the upstream's UNIMPLEMENTED is HTTP 501.
        let response = service.clone().oneshot(get("/v1/books/b1")).await.unwrap();
        assert_eq!(response.status(), 501);

        let started = service.call(get("/v1/books/b1"));
        let empty = Gateway::new(
            DescriptorPool::new(),
            scripted(0, 12),
            GatewayOptions::default(),
        )
        .unwrap();
        service.replace(empty);
        assert_eq!(
            started.await.unwrap().status(),
            501,
            "started before the swap"
        );
        let response = service.clone().oneshot(get("/v1/books/b1")).await.unwrap();
        assert_eq!(response.status(), 404, "no routes after the swap");
        assert_eq!(service.current().rules().len(), 0);
    }
}
