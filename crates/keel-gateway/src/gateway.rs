//! The REST/JSON face of gRPC services, the [`Gateway`] service: an HTTP request is matched
//! to a rule, turned into the method's request message ([`crate::request`],
//! [`crate::binding`]), sent over any gRPC transport (a Keel `Channel`, or the service itself
//! in-process), and the answer written back as JSON ([`crate::response`]). gRPC and gRPC-Web
//! requests on the same port go to [`crate::web`].
//!
//! Every client mistake is a 4xx with a `google.rpc.Status` JSON body saying what was
//! wrong ([`crate::failure`]): no route (404), wrong method (405 with `Allow`), a body that
//! is not JSON or does not fit (400), too large (413), not JSON at all (415). gRPC errors map
//! to HTTP statuses as grpc-gateway maps them ([`crate::status`]), with every detail and its
//! `@type`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use axum::body::Body;
use bytes::Bytes;
use http::header::{ACCEPT, AUTHORIZATION};
use http::{HeaderName, Method, StatusCode};
use keel_core::status_check::CheckStatus;
use keel_dynamic::DynamicCodec;
use prost_reflect::DescriptorPool;
use tonic::Status;
use tonic::client::{Grpc, GrpcService};
use tonic::codegen::StdError;

use crate::binding::{JsonOptions, request_message};
use crate::failure::Failure;
use crate::openapi::{ApiInfo, openapi};
use crate::request::{metadata, outgoing, read_body, stream_messages, timeout};
use crate::response::{Writer, json_response};
use crate::rules::{RuleError, Rules};
use crate::web::{self, CorsOptions, Face, cors_layer};

/// How the gateway reads and writes requests.
#[derive(Debug, Clone)]
pub struct GatewayOptions {
    /// JSON reading and writing.
    pub json: JsonOptions,
    /// Largest request body in bytes (4 MiB, the gRPC message default); more is 413.
    pub max_body_bytes: usize,
    /// Request headers passed to the service as metadata besides `Grpc-Metadata-*`,
    /// `Authorization`, `Idempotency-Key` and the trace headers.
    pub forward_headers: Vec<HeaderName>,
    /// Cross-origin access for browsers (REST and gRPC-Web); off by default.
    pub cors: Option<CorsOptions>,
    /// Serve the routes' OpenAPI document at `GET /openapi.json` with this info (on by
    /// default, titled "API"); `None` leaves that path to the rules.
    pub openapi: Option<ApiInfo>,
}

impl Default for GatewayOptions {
    fn default() -> Self {
        Self {
            json: JsonOptions::default(),
            max_body_bytes: 4 * 1024 * 1024,
            forward_headers: Vec::new(),
            cors: None,
            openapi: Some(ApiInfo::default()),
        }
    }
}

/// The REST/JSON gateway in front of `upstream` (any gRPC transport).
pub struct Gateway<S> {
    shared: Arc<Shared>,
    /// Every status the upstream sends is checked before tonic reads it, whatever the
    /// transport: a malformed one is a clear INTERNAL or UNKNOWN (HTTP 500), never a panic.
    upstream: CheckStatus<S>,
}

impl<S: Clone> Clone for Gateway<S> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            upstream: self.upstream.clone(),
        }
    }
}

struct Shared {
    cors: Option<tower_http::cors::CorsLayer>,
    rules: Rules,
    writer: Writer,
    options: GatewayOptions,
}

impl<S> std::fmt::Debug for Gateway<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.shared.rules.len())
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl<S> Gateway<S>
where
    S: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<StdError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
{
    /// A gateway for the HTTP rules of every service in `pool`, calling `upstream`.
    pub fn new(
        pool: DescriptorPool,
        upstream: S,
        options: GatewayOptions,
    ) -> Result<Self, RuleError> {
        let rules = Rules::load(&pool, &[])?;
        Ok(Self::from_rules(rules, pool, upstream, options))
    }

    /// A gateway for rules already loaded from `pool` (to check them before there is an
    /// upstream, as a server does before it binds).
    pub fn from_rules(
        rules: Rules,
        pool: DescriptorPool,
        upstream: S,
        options: GatewayOptions,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                cors: options.cors.as_ref().map(cors_layer),
                rules,
                writer: Writer::new(options.json, pool),
                options,
            }),
            upstream: CheckStatus::new(upstream),
        }
    }

    /// The rules served.
    pub fn rules(&self) -> &Rules {
        &self.shared.rules
    }

    /// Answers one HTTP request: REST/JSON, gRPC-Web or plain gRPC by its content type,
    /// with CORS when configured.
    pub async fn handle<B>(&self, request: http::Request<B>) -> http::Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError>,
    {
        let Some(cors) = &self.shared.cors else {
            return self.dispatch(request).await;
        };
        let inner = tower::service_fn(|request: http::Request<B>| async move {
            Ok::<_, Infallible>(self.dispatch(request).await)
        });
        match tower::ServiceExt::oneshot(tower::Layer::layer(cors, inner), request).await {
            Ok(response) => response,
            Err(never) => match never {},
        }
    }

    async fn dispatch<B>(&self, request: http::Request<B>) -> http::Response<Body>
    where
        B: http_body::Body<Data = Bytes> + Send + 'static,
        B::Error: Into<StdError>,
    {
        match Face::of(request.headers()) {
            Face::Grpc => {
                web::pass_through(self.upstream.clone(), request.map(tonic::body::Body::new)).await
            }
            Face::GrpcWeb => {
                web::grpc_web(self.upstream.clone(), request.map(tonic::body::Body::new)).await
            }
            Face::Rest => {
                let token_sent = request.headers().contains_key(AUTHORIZATION);
                match self.try_handle(request).await {
                    Ok(response) => response,
                    Err(failure) => failure.into_response(token_sent),
                }
            }
        }
    }

    async fn try_handle<B>(
        &self,
        request: http::Request<B>,
    ) -> Result<http::Response<Body>, Failure>
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Into<StdError>,
    {
        let shared = &self.shared;
        let (parts, body) = request.into_parts();
        let path = parts.uri.path();
        let query = parts.uri.query();
        if let Some(info) = &shared.options.openapi
            && parts.method == Method::GET
            && path == "/openapi.json"
        {
            let document = openapi(&shared.rules, info, shared.options.json);
            let body = serde_json::to_vec(&document).unwrap_or_default();
            return Ok(json_response(StatusCode::OK, Bytes::from(body)));
        }
        let found = shared
            .rules
            .router
            .find(&parts.method, path)
            .map_err(|miss| Failure::route(miss, &parts.method, path))?;
        let binding = found.value;

        let body = read_body(body, &parts.headers, shared.options.max_body_bytes).await?;
        let metadata = metadata(&parts.headers, &shared.options.forward_headers);
        let timeout = timeout(&parts.headers)?;
        let options = shared.options.json;
        let method = &binding.method;
        let codec = DynamicCodec::new(method.output());
        let mut grpc = Grpc::new(self.upstream.clone());
        grpc.ready().await.map_err(|error| {
            Failure::Status(Status::unavailable(format!(
                "the service is not reachable: {}",
                error.into()
            )))
        })?;

        let wants_events = parts
            .headers
            .get(ACCEPT)
            .and_then(|accept| accept.to_str().ok())
            .is_some_and(|accept| accept.contains("text/event-stream"));

        let messages = if method.is_client_streaming() {
            stream_messages(binding, &found.bindings, query, &body, options)?
        } else {
            vec![request_message(
                binding,
                &found.bindings,
                query,
                &body,
                options,
            )?]
        };
        // Every kind of call as a stream, as tonic's own unary and streaming calls are.
        let request = outgoing(
            metadata,
            timeout,
            &parts.extensions,
            tokio_stream::iter(messages),
        );
        let response = grpc
            .streaming(request, binding.grpc_path.clone(), codec)
            .await?;
        if method.is_server_streaming() {
            return shared.writer.stream(binding, response, wants_events).await;
        }
        let (metadata, mut stream, _) = response.into_parts();
        let message = stream
            .message()
            .await?
            .ok_or_else(|| Status::internal("the service answered no message"))?;
        if stream.message().await?.is_some() {
            return Err(Failure::Status(Status::internal(
                "the service answered more than one message to a call that takes one",
            )));
        }
        let trailers = stream.trailers().await?.unwrap_or_default();
        shared.writer.unary(binding, &message, &metadata, &trailers)
    }
}

impl<S, B> tower::Service<http::Request<B>> for Gateway<S>
where
    S: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    S::Future: Send,
    S::Error: Into<StdError>,
    S::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <S::ResponseBody as http_body::Body>::Error: Into<StdError> + Send,
    B: http_body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let gateway = self.clone();
        Box::pin(async move { Ok(gateway.handle(request).await) })
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::BodyExt as _;
    use serde_json::Value;

    use super::*;
    use crate::testdata::scripted;

    async fn get(
        gateway: &Gateway<
            impl GrpcService<
                tonic::body::Body,
                ResponseBody = tonic::body::Body,
                Error = Infallible,
                Future = impl Send,
            > + Clone
            + Send
            + Sync
            + 'static,
        >,
        accept: &str,
    ) -> (StatusCode, String) {
        let request = http::Request::get("/v1/shelves/s1:watch")
            .header(ACCEPT, accept)
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = gateway.handle(request).await;
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_unary_answer_is_the_json_message_with_its_trailers_as_headers() {
        let gateway = Gateway::new(
            crate::testdata::bookstore(),
            scripted(1, 0),
            GatewayOptions::default(),
        )
        .unwrap();
        let request = http::Request::get("/v1/books/b1")
            .body(http_body_util::Empty::<Bytes>::new())
            .unwrap();
        let response = gateway.handle(request).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["grpc-trailer-x-checked"], "yes");
        let body = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], br#"{"title":"Dune"}"#);
    }

    #[tokio::test]
    async fn a_stream_failing_midway_ends_with_an_error_record() {
        let pool = crate::testdata::bookstore();
        let gateway =
            Gateway::new(pool.clone(), scripted(2, 13), GatewayOptions::default()).unwrap();

        let (status, text) = get(&gateway, "application/json").await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the status line went out with the first message"
        );
        let lines: Vec<Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert_eq!(lines[0]["result"]["title"], "Dune");
        assert_eq!(lines[2]["error"]["code"], 13);
        assert_eq!(lines[2]["error"]["message"], "broke");

        let (_, text) = get(&gateway, "text/event-stream").await;
        assert!(text.starts_with("data: {\"title\":\"Dune\"}\n\n"), "{text}");
        assert!(
            text.ends_with(
                "event: error\ndata: {\"code\":13,\"details\":[],\"message\":\"broke\"}\n\n"
            ),
            "{text}"
        );

        // Failing before the first message: a real HTTP status.
        let gateway = Gateway::new(pool, scripted(0, 5), GatewayOptions::default()).unwrap();
        let (status, text) = get(&gateway, "application/json").await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{text}");
        assert_eq!(serde_json::from_str::<Value>(&text).unwrap()["code"], 5);
    }
}
