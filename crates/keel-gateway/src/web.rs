//! The other faces on the gateway's port: plain gRPC passed through untouched, gRPC-Web
//! (binary and text, translated by tonic-web) for browsers, and CORS for both REST and
//! gRPC-Web callers on other origins. Requests are told apart by their content type.

use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderName, HeaderValue, Method};
use tonic::client::GrpcService;
use tonic::codegen::StdError;
use tower::{Layer as _, ServiceExt as _};
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

/// What a request is, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Face {
    /// `application/grpc...`: forwarded as it is.
    Grpc,
    /// `application/grpc-web...` (binary or text): translated.
    GrpcWeb,
    /// Anything else: REST/JSON.
    Rest,
}

impl Face {
    /// The face a request's headers show.
    pub(crate) fn of(headers: &http::HeaderMap) -> Self {
        let content_type = headers
            .get(CONTENT_TYPE)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default();
        if content_type.starts_with("application/grpc-web") {
            Self::GrpcWeb
        } else if content_type.starts_with("application/grpc") {
            Self::Grpc
        } else {
            Self::Rest
        }
    }
}

/// Cross-origin access for browsers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CorsOptions {
    /// Origins allowed (`https://app.example.com`); empty allows any origin.
    pub allowed_origins: Vec<String>,
    /// How long browsers may cache a preflight answer.
    pub max_age: Option<Duration>,
}

/// The CORS layer for `options`: REST methods and gRPC-Web's headers allowed, the gRPC
/// status headers exposed.
pub(crate) fn cors_layer(options: &CorsOptions) -> CorsLayer {
    let origins = if options.allowed_origins.is_empty() {
        AllowOrigin::any()
    } else {
        AllowOrigin::list(
            options
                .allowed_origins
                .iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        )
    };
    let mut layer = CorsLayer::new()
        .allow_origin(origins)
        .allow_methods([
            Method::GET,
            Method::POST,
            Method::PUT,
            Method::PATCH,
            Method::DELETE,
        ])
        .allow_headers(Any)
        .expose_headers([
            HeaderName::from_static("grpc-status"),
            HeaderName::from_static("grpc-message"),
            HeaderName::from_static("grpc-status-details-bin"),
        ]);
    if let Some(max_age) = options.max_age {
        layer = layer.max_age(max_age);
    }
    layer
}

/// `request` forwarded to `upstream` unchanged (plain gRPC on the gateway's port).
pub(crate) async fn pass_through<S>(
    upstream: S,
    request: http::Request<tonic::body::Body>,
) -> http::Response<Body>
where
    S: GrpcService<tonic::body::Body> + Send + 'static,
    S::Future: Send,
    S::Error: Into<StdError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    match Upstream(upstream).oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(status) => status.into_http::<Body>(),
    }
}

/// A gRPC-Web call translated to gRPC for `upstream` and its answer back.
pub(crate) async fn grpc_web<S>(
    upstream: S,
    request: http::Request<tonic::body::Body>,
) -> http::Response<Body>
where
    S: GrpcService<tonic::body::Body> + Send + 'static,
    S::Future: Send,
    S::Error: Into<StdError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    let service = tonic_web::GrpcWebLayer::new().layer(Upstream(upstream));
    match service.oneshot(request).await {
        Ok(response) => response.map(Body::new),
        Err(status) => status.into_http::<Body>(),
    }
}

/// Any gRPC transport as the tower service tonic-web wraps.
struct Upstream<S>(S);

impl<S> tower::Service<http::Request<tonic::body::Body>> for Upstream<S>
where
    S: GrpcService<tonic::body::Body>,
    S::Future: Send + 'static,
    S::Error: Into<StdError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = tonic::Status;
    type Future =
        std::pin::Pin<Box<dyn Future<Output = Result<Self::Response, tonic::Status>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), tonic::Status>> {
        GrpcService::poll_ready(&mut self.0, cx)
            .map_err(|error| tonic::Status::from_error(error.into()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let future = GrpcService::call(&mut self.0, request);
        Box::pin(async move {
            future
                .await
                .map(|response| response.map(tonic::body::Body::new))
                .map_err(|error| tonic::Status::from_error(error.into()))
        })
    }
}
