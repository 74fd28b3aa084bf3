//! The server side: [`ObserveLayer`] reports every call to metrics, logs and traces.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, StringValue};
use pin_project_lite::pin_project;
use tonic::Code;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use super::body::{Flow, ObservedBody};
use super::call::{Call, ObservedMethod};
use super::code::status_of;
use super::context::{Deadline, HeaderExtractor, parse_grpc_timeout};
use super::method::{MethodInfo, MethodTable, RpcType};
use super::rpc_metrics::{RpcMetrics, Side};
use super::semconv;

/// Longest request path kept in logs for methods no descriptor names.
const MAX_UNKNOWN_PATH: usize = 256;

/// What every call of one server is observed with.
pub struct ServerObserver {
    methods: HashMap<String, Arc<ObservedMethod>>,
    /// Methods no descriptor names share one series (`grpc_service="unknown"`), so that
    /// scanning for paths cannot create series without bound.
    unknown: Arc<ObservedMethod>,
    tracer: BoxedTracer,
}

impl std::fmt::Debug for ServerObserver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerObserver")
            .field("methods", &self.methods.len())
            .finish_non_exhaustive()
    }
}

impl ServerObserver {
    /// Observes the methods of `table` into `metrics`, tracing with the global tracer
    /// provider (see [`crate::telemetry::init`]).
    pub fn new(table: &MethodTable, metrics: &RpcMetrics) -> Self {
        let methods = table
            .iter()
            .map(|(path, info)| (path.to_owned(), ObservedMethod::new(info.clone(), metrics)))
            .collect();
        let unknown = ObservedMethod::new(
            MethodInfo {
                service: "unknown".into(),
                method: "unknown".into(),
                rpc_type: RpcType::Unary,
            },
            metrics,
        );
        Self {
            methods,
            unknown,
            tracer: global::tracer("keel"),
        }
    }
}

/// Layer producing [`Observe`].
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    observer: Arc<ServerObserver>,
}

impl ObserveLayer {
    /// Observes calls with `observer`.
    pub fn new(observer: Arc<ServerObserver>) -> Self {
        Self { observer }
    }
}

impl<S> Layer<S> for ObserveLayer {
    type Service = Observe<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Observe {
            inner,
            observer: self.observer.clone(),
        }
    }
}

/// Counts, logs and traces every call: started, messages each way, status and latency.
#[derive(Debug, Clone)]
pub struct Observe<S> {
    inner: S,
    observer: Arc<ServerObserver>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ObservedBody<ReqBody>>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let observer = &self.observer;
        let path = request.uri().path();
        let (method, unknown_path) = match observer.methods.get(path) {
            Some(method) => (method.clone(), None),
            None => {
                let mut end = path.len().min(MAX_UNKNOWN_PATH);
                while !path.is_char_boundary(end) {
                    end -= 1;
                }
                (observer.unknown.clone(), Some(path[..end].into()))
            }
        };
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);

        let parent = global::get_text_map_propagator(|propagator| {
            propagator.extract(&HeaderExtractor(request.headers()))
        });
        let mut attributes = vec![
            KeyValue::new(semconv::RPC_SYSTEM, "grpc"),
            KeyValue::new(
                semconv::RPC_SERVICE,
                StringValue::from(method.info.service.clone()),
            ),
            KeyValue::new(
                semconv::RPC_METHOD,
                StringValue::from(method.info.method.clone()),
            ),
        ];
        if let Some(peer) = peer {
            attributes.push(KeyValue::new(
                semconv::NETWORK_PEER_ADDRESS,
                peer.ip().to_string(),
            ));
            attributes.push(KeyValue::new(
                semconv::NETWORK_PEER_PORT,
                i64::from(peer.port()),
            ));
        }
        let span = observer
            .tracer
            .span_builder(method.span_name.clone())
            .with_kind(SpanKind::Server)
            .with_attributes(attributes)
            .start_with_context(&observer.tracer, &parent);
        let mut cx = parent.with_span(span);
        if let Some(timeout) = parse_grpc_timeout(request.headers()) {
            cx = cx.with_value(Deadline(Instant::now() + timeout));
        }

        let call = Call::start(Side::Server, method, unknown_path, peer, cx.clone());
        let metrics = call.metrics().clone();
        let failed = call.request_failed();
        let request = request.map(|body| {
            ObservedBody::new(body, metrics, Flow::Received, None).flag_failure(failed)
        });
        let inner = {
            let _attached = cx.clone().attach();
            self.inner.call(request)
        };
        ResponseFuture {
            inner: inner.with_context(cx),
            call: Some(call),
        }
    }
}

pin_project! {
    /// Runs the handler in the call's context; wraps the response body to see the status.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: WithContext<F>,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let outcome = ready!(this.inner.poll(cx));
        let call = this
            .call
            .take()
            .expect("ResponseFuture polled after completion");
        Poll::Ready(match outcome {
            Ok(response) => {
                let metrics = call.metrics().clone();
                // A trailers-only response carries its status in the headers.
                let call = match status_of(response.headers()) {
                    Some((code, message)) => {
                        call.finish(code, message.as_deref());
                        None
                    }
                    None => Some(call),
                };
                Ok(response.map(|body| ObservedBody::new(body, metrics, Flow::Sent, call)))
            }
            Err(error) => {
                call.finish(Code::Unknown, Some("the service failed without a status"));
                Err(error)
            }
        })
    }
}

/// The trace id of the call the current task serves, if any: for code that logs something
/// a person will want to find in the trace (an internal error's id, say).
pub fn current_trace_id() -> Option<String> {
    let cx = Context::current();
    let span = cx.span();
    let span_context = span.span_context();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}
