//! Requests that are not gRPC on the gRPC port: REST/JSON, gRPC-Web, a browser. A server
//! built with [`super::ServerBuilder::http_fallback`] accepts HTTP/1.1 as well as HTTP/2
//! and hands every request whose content type is not `application/grpc` to the fallback,
//! which gets the server's own gRPC stack (every service, every per-request layer) to call
//! in-process, without a network hop.

use std::convert::Infallible;
use std::task::{Context, Poll};

use bytes::Bytes;
use tower::ServiceExt as _;
use tower::util::BoxCloneSyncService;

use crate::serving::{RequestBody, is_grpc};

/// The server's gRPC services behind its per-request layers, callable in-process.
pub type GrpcStack = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// What answers the requests that are not gRPC.
pub type HttpService = BoxCloneSyncService<
    http::Request<tonic::body::Body>,
    http::Response<tonic::body::Body>,
    Infallible,
>;

/// Makes the fallback from the server's gRPC stack, when the server binds.
pub type MakeFallback = Box<dyn FnOnce(GrpcStack) -> HttpService + Send>;

/// gRPC requests to the connection's gRPC stack, the rest to the fallback.
#[derive(Clone)]
pub(super) struct Split<G> {
    pub(super) grpc: G,
    pub(super) fallback: HttpService,
}

impl<G, B> tower::Service<http::Request<RequestBody>> for Split<G>
where
    G: tower::Service<http::Request<RequestBody>, Response = http::Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    G::Future: Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<tonic::codegen::StdError>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Infallible>> + Send>,
    >;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<RequestBody>) -> Self::Future {
        if is_grpc(request.headers()) {
            let grpc = self.grpc.clone();
            Box::pin(async move {
                let response = grpc.oneshot(request).await?;
                Ok(response.map(tonic::body::Body::new))
            })
        } else {
            let fallback = self.fallback.clone();
            Box::pin(fallback.oneshot(request.map(tonic::body::Body::new)))
        }
    }
}
