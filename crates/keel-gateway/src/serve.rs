//! Serving a gateway on its own listener: HTTP/1.1 and HTTP/2 (h2c) on one port, as curl,
//! browsers and load balancers speak to it.

use std::convert::Infallible;
use std::future::Future;

use axum::body::Body;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;

/// Serves `gateway` (a [`crate::Gateway`], a [`crate::ReloadableGateway`]) on `listener`
/// until `shutdown` completes; connections then close.
pub async fn serve<G>(listener: TcpListener, gateway: G, shutdown: impl Future<Output = ()>)
where
    G: tower::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<Body>,
            Error = Infallible,
        > + Clone
        + Send
        + 'static,
    G::Future: Send + 'static,
{
    let mut shutdown = std::pin::pin!(shutdown);
    let mut connections = tokio::task::JoinSet::new();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = &mut shutdown => break,
        };
        let (stream, _) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "accepting a gateway connection failed");
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(gateway.clone());
        connections.spawn(async move {
            let builder = auto::Builder::new(TokioExecutor::new());
            if let Err(error) = builder
                .serve_connection(TokioIo::new(stream), service)
                .await
            {
                tracing::debug!(%error, "gateway connection ended");
            }
        });
    }
    connections.abort_all();
}
