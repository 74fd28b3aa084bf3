//! The REST/JSON face of gRPC services: an HTTP request is matched to a rule, turned into
//! the method's request message, sent over any gRPC transport (a Keel `Channel`, or the
//! service itself in-process), and the answer written back as JSON: one object, or for
//! server streaming, NDJSON lines (`{"result": ...}`, grpc-gateway's format) or Server-Sent
//! Events when the client asks for `text/event-stream`.
//!
//! Every client mistake is a 4xx with a `google.rpc.Status` JSON body saying what was
//! wrong: no route (404), wrong method (405 with `Allow`), a body that is not JSON or does
//! not fit (400), too large (413), not JSON at all (415). gRPC errors map to HTTP statuses
//! as grpc-gateway maps them ([`crate::status`]), with every detail and its `@type`.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::{ACCEPT, ALLOW, CONTENT_TYPE};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use http_body_util::BodyExt as _;
use keel_core::status_check::CheckStatus;
use keel_dynamic::{Detail, DynamicCodec, details};
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions};
use serde_json::{Value, json};
use tonic::client::{Grpc, GrpcService};
use tonic::codegen::StdError;
use tonic::metadata::{KeyAndValueRef, MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::binding::{BindError, JsonOptions, request_message};
use crate::openapi::{ApiInfo, openapi};
use crate::router::Miss;
use crate::rules::{Binding, RuleError, Rules};
use crate::status::http_status;
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

/// Headers every call passes on as metadata under their own name.
const PASSED_THROUGH: [&str; 8] = [
    "authorization",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-request-id",
    "user-agent",
];

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
    pool: DescriptorPool,
    options: GatewayOptions,
}

impl<S> std::fmt::Debug for Gateway<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gateway")
            .field("routes", &self.shared.rules.router.len())
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
                pool,
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
            Face::Rest => match self.try_handle(request).await {
                Ok(response) => response,
                Err(failure) => failure.into_response(),
            },
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
        let outgoing = outgoing_request(&metadata, timeout, tokio_stream::iter(messages));
        let response = grpc
            .streaming(outgoing, binding.grpc_path.clone(), codec)
            .await?;
        if method.is_server_streaming() {
            return self.stream_response(binding, response, wants_events).await;
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
        let mut response = self.unary_response(binding, &message);
        metadata_headers(&metadata, "grpc-metadata-", response.headers_mut());
        metadata_headers(&trailers, "grpc-trailer-", response.headers_mut());
        Ok(response)
    }

    fn unary_response(&self, binding: &Binding, message: &DynamicMessage) -> http::Response<Body> {
        match self.message_json(binding, message) {
            Ok(json) => json_response(StatusCode::OK, json),
            Err(failure) => failure.into_response(),
        }
    }

    async fn stream_response(
        &self,
        binding: &Arc<Binding>,
        response: tonic::Response<tonic::Streaming<DynamicMessage>>,
        events: bool,
    ) -> Result<http::Response<Body>, Failure> {
        let (metadata, mut stream, _) = response.into_parts();
        // An error before the first message still gets a real HTTP status.
        let first = match stream.next().await {
            Some(Ok(message)) => Some(message),
            Some(Err(status)) => return Err(Failure::Status(status)),
            None => None,
        };
        let shared = self.shared.clone();
        let field = binding.response_body.clone();
        let frames = futures_util::stream::iter(first.map(Ok)).chain(stream).map(
            move |item| -> Result<Bytes, Infallible> {
                Ok(match item {
                    Ok(message) => message_frame(&shared, field.as_ref(), &message, events),
                    Err(status) => error_frame(&shared, &status, events),
                })
            },
        );
        let mut response = http::Response::new(Body::from_stream(frames));
        let content_type = if events {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        };
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        metadata_headers(&metadata, "grpc-metadata-", response.headers_mut());
        Ok(response)
    }

    /// `message` as the response body: the whole message, or the `response_body` field.
    fn message_json(&self, binding: &Binding, message: &DynamicMessage) -> Result<Bytes, Failure> {
        message_json(&self.shared, binding.response_body.as_ref(), message)
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

/// The call's request: `message` with the request's metadata and deadline.
fn outgoing_request<T>(
    metadata: &MetadataMap,
    timeout: Option<Duration>,
    message: T,
) -> tonic::Request<T> {
    let mut request =
        tonic::Request::from_parts(metadata.clone(), tonic::Extensions::default(), message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

/// `message` as JSON bytes: the whole message, or only `field` of it.
fn message_json(
    shared: &Shared,
    field: Option<&prost_reflect::FieldDescriptor>,
    message: &DynamicMessage,
) -> Result<Bytes, Failure> {
    let json = shared.options.json;
    let options = SerializeOptions::new()
        .skip_default_fields(!json.emit_defaults)
        .use_proto_field_name(json.proto_names);
    let failed = |error: serde_json::Error| {
        Failure::internal(&format!("the response does not convert to JSON: {error}"))
    };
    // Straight to bytes: building a `Value` first cost a third of a REST call's instructions.
    let direct = |message: &DynamicMessage| -> Result<Bytes, Failure> {
        let mut out = Vec::with_capacity(256);
        message
            .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options)
            .map_err(failed)?;
        Ok(Bytes::from(out))
    };
    let Some(field) = field else {
        return direct(message);
    };
    if let prost_reflect::Value::Message(inner) = message.get_field(field).as_ref()
        && !field.is_list()
    {
        return direct(inner);
    }
    // A scalar, list or map field: through a `Value`, taking the field's key.
    let value = message
        .serialize_with_options(serde_json::value::Serializer, &options)
        .map_err(failed)?;
    let key = if json.proto_names {
        field.name()
    } else {
        field.json_name()
    };
    let value = value.get(key).cloned().unwrap_or(Value::Null);
    Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
}

/// One streamed message: an NDJSON `{"result": ...}` line or an SSE `data:` event.
fn message_frame(
    shared: &Shared,
    field: Option<&prost_reflect::FieldDescriptor>,
    message: &DynamicMessage,
    events: bool,
) -> Bytes {
    match message_json(shared, field, message) {
        Ok(json) if events => Bytes::from([&b"data: "[..], &json, b"\n\n"].concat()),
        Ok(json) => Bytes::from([&b"{\"result\":"[..], &json, b"}\n"].concat()),
        Err(Failure::Status(status)) => error_frame(shared, &status, events),
        Err(_) => error_frame(
            shared,
            &Status::internal("the response does not convert to JSON"),
            events,
        ),
    }
}

/// The error that ends a stream: an NDJSON `{"error": status}` line or an SSE `error` event.
fn error_frame(shared: &Shared, status: &Status, events: bool) -> Bytes {
    let json = serde_json::to_vec(&status_json(status, &shared.pool)).unwrap_or_default();
    if events {
        Bytes::from([&b"event: error\ndata: "[..], &json, b"\n\n"].concat())
    } else {
        Bytes::from([&b"{\"error\":"[..], &json, b"}\n"].concat())
    }
}

/// The messages of a client-streaming call: the body holds one JSON object per message
/// (on lines of their own or simply one after another); each gets the path values too.
fn stream_messages(
    binding: &Binding,
    path_values: &[(&[String], String)],
    query: Option<&str>,
    body: &[u8],
    options: JsonOptions,
) -> Result<Vec<DynamicMessage>, Failure> {
    let mut messages = Vec::new();
    for value in serde_json::Deserializer::from_slice(body).into_iter::<Value>() {
        let value = value.map_err(|error| Failure::Bind(BindError::Syntax(error.to_string())))?;
        let bytes = serde_json::to_vec(&value).unwrap_or_default();
        messages.push(request_message(
            binding,
            path_values,
            query,
            &bytes,
            options,
        )?);
    }
    if messages.is_empty() {
        messages.push(request_message(binding, path_values, query, &[], options)?);
    }
    Ok(messages)
}

/// The request body, at most `limit` bytes, if its content type is JSON (or unset).
async fn read_body<B>(body: B, headers: &HeaderMap, limit: usize) -> Result<Bytes, Failure>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|error| {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Failure::TooLarge(limit)
            } else if let Some(status) = body_timeout(&*error) {
                Failure::TooSlow(status.message().to_owned())
            } else {
                Failure::client(
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {error}"),
                )
            }
        })?
        .to_bytes();
    if !collected.is_empty()
        && let Some(content_type) = headers.get(CONTENT_TYPE)
    {
        let text = content_type
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let essence = text.split(';').next().unwrap_or_default().trim();
        let json = essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !json && !essence.is_empty() {
            return Err(Failure::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the body must be JSON (Content-Type: application/json), not {essence}"),
            ));
        }
    }
    Ok(collected)
}

/// The DEADLINE_EXCEEDED status in `error`'s chain: the server cut a body that arrived too
/// slowly (Keel's `connection.body_timeout`).
fn body_timeout<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Status> {
    std::iter::successors(Some(error), |error| error.source())
        .filter_map(|error| error.downcast_ref::<Status>())
        .find(|status| status.code() == Code::DeadlineExceeded)
}

/// The metadata a request carries to the service.
fn metadata(headers: &HeaderMap, forward: &[HeaderName]) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        let key = if let Some(key) = name.strip_prefix("grpc-metadata-") {
            key
        } else if PASSED_THROUGH.contains(&name)
            || name.starts_with("x-b3-")
            || forward.iter().any(|allowed| allowed.as_str() == name)
        {
            name
        } else {
            continue;
        };
        if key.ends_with("-bin") {
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(key.as_bytes()),
                MetadataValue::try_from(value.as_bytes()),
            ) {
                metadata.append_bin(key, value);
            }
        } else if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_bytes()),
        ) {
            metadata.append(key, value);
        }
    }
    metadata
}

/// The call's deadline: `Grpc-Timeout` (gRPC's format) or `X-Server-Timeout` (seconds).
fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, Failure> {
    if headers.contains_key("grpc-timeout") {
        return keel_core::context::parse_grpc_timeout(headers)
            .map(Some)
            .ok_or_else(|| {
                Failure::client(
                    StatusCode::BAD_REQUEST,
                    "Grpc-Timeout must be like 500m or 2S (gRPC's timeout format)".into(),
                )
            });
    }
    let Some(value) = headers.get("x-server-timeout") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds < 1e9)
        .map(|seconds| Some(Duration::from_secs_f64(seconds)))
        .ok_or_else(|| {
            Failure::client(
                StatusCode::BAD_REQUEST,
                "X-Server-Timeout must be a number of seconds, e.g. 1.5".into(),
            )
        })
}

/// Response metadata as headers named `prefix` + key (`Grpc-Metadata-*` for headers,
/// `Grpc-Trailer-*` for trailers, as grpc-gateway names them).
fn metadata_headers(metadata: &MetadataMap, prefix: &str, headers: &mut HeaderMap) {
    for entry in metadata.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(key, value) => (key.as_str(), value.as_bytes()),
            KeyAndValueRef::Binary(key, value) => (key.as_str(), value.as_encoded_bytes()),
        };
        if matches!(
            key,
            "content-type"
                | "grpc-status"
                | "grpc-message"
                | "grpc-status-details-bin"
                | "date"
                | "grpc-encoding"
                | "grpc-accept-encoding"
        ) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(format!("{prefix}{key}").as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
}

fn json_response(status: StatusCode, body: Bytes) -> http::Response<Body> {
    let mut response = http::Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// A `google.rpc.Status` as JSON: code, message, and every detail with its `@type`.
fn status_json(status: &Status, pool: &DescriptorPool) -> Value {
    let options = SerializeOptions::new();
    let details: Vec<Value> = details(status, Some(pool))
        .unwrap_or_default()
        .into_iter()
        .map(|detail| match detail {
            Detail::Known(any) => any
                .serialize_with_options(serde_json::value::Serializer, &options)
                .unwrap_or(Value::Null),
            Detail::Unknown { type_url, value, .. } => {
                use base64::Engine as _;
                json!({"@type": type_url, "value": base64::engine::general_purpose::STANDARD.encode(value)})
            }
        })
        .collect();
    json!({"code": status.code() as i32, "message": status.message(), "details": details})
}

/// Why a request got no answer from the service.
#[derive(Debug)]
enum Failure {
    /// The service (or the transport) answered with an error status.
    Status(Status),
    /// The request does not fit the method.
    Bind(BindError),
    /// No route, or not for this method.
    Route(StatusCode, Status, Option<Vec<Method>>),
    /// The body is over the limit.
    TooLarge(usize),
    /// The body did not arrive within the server's body timeout: 408 Request Timeout, the
    /// client's slowness (not 504, which would blame an upstream).
    TooSlow(String),
    /// Another client mistake, with its HTTP status.
    Client(StatusCode, String),
}

impl From<Status> for Failure {
    fn from(status: Status) -> Self {
        Self::Status(status)
    }
}

impl From<BindError> for Failure {
    fn from(error: BindError) -> Self {
        Self::Bind(error)
    }
}

impl Failure {
    fn route(miss: Miss, method: &Method, path: &str) -> Self {
        match miss {
            Miss::NotFound => Self::Route(
                StatusCode::NOT_FOUND,
                Status::not_found(format!("no route for {method} {path}")),
                None,
            ),
            Miss::MethodNotAllowed(allowed) => Self::Route(
                StatusCode::METHOD_NOT_ALLOWED,
                Status::new(
                    Code::Unimplemented,
                    format!("{path} does not take {method}; it takes {}", join(&allowed)),
                ),
                Some(allowed),
            ),
            Miss::BadEncoding(reason) => Self::Client(StatusCode::BAD_REQUEST, reason),
        }
    }

    fn client(status: StatusCode, message: String) -> Self {
        Self::Client(status, message)
    }

    fn internal(message: &str) -> Self {
        Self::Status(Status::internal(message.to_owned()))
    }

    fn into_response(self) -> http::Response<Body> {
        let empty = DescriptorPool::new();
        let (http, status, allow) = match self {
            Self::Status(status) => (http_status(status.code()), status, None),
            Self::Bind(error) => (
                StatusCode::BAD_REQUEST,
                Status::invalid_argument(error.to_string()),
                None,
            ),
            Self::Route(http, status, allow) => (http, status, allow),
            Self::TooLarge(limit) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                Status::resource_exhausted(format!(
                    "the request body is larger than {limit} bytes"
                )),
                None,
            ),
            Self::TooSlow(message) => (
                StatusCode::REQUEST_TIMEOUT,
                Status::deadline_exceeded(message),
                None,
            ),
            Self::Client(http, message) => (http, Status::invalid_argument(message), None),
        };
        let body = serde_json::to_vec(&status_json(&status, &empty)).unwrap_or_default();
        let mut response = json_response(http, Bytes::from(body));
        if let Some(allow) = allow
            && let Ok(value) = HeaderValue::from_str(&join(&allow))
        {
            response.headers_mut().insert(ALLOW, value);
        }
        response
    }
}

fn join(methods: &[Method]) -> String {
    methods
        .iter()
        .map(Method::as_str)
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use bytes::Bytes;
    use http_body_util::BodyExt as _;

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
