//! Serving a gateway on its own listener: HTTP/1.1 and HTTP/2 (h2c) on one port, as curl,
//! browsers and load balancers speak to it.

use std::future::Future;

use bytes::Bytes;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tonic::client::GrpcService;
use tonic::codegen::StdError;

use crate::Gateway;

/// Serves `gateway` on `listener` until `shutdown` completes; connections then close.
pub async fn serve<S>(
    listener: TcpListener,
    gateway: Gateway<S>,
    shutdown: impl Future<Output = ()>,
) where
    S: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<StdError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
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
