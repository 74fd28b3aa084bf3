//! The server side: [`ObserveLayer`] reports every call to metrics, logs and traces.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};
use std::time::Instant;

use opentelemetry::context::{FutureExt as _, WithContext};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;
use prost_reflect::DescriptorPool;
use tonic::Code;
use tonic::transport::server::TcpConnectInfo;
use tower::{Layer, Service};

use super::body::{Flow, ObservedBody};
use super::by_peer::Identities;
use super::call::{Call, MethodPayloads, Methods};
use super::payload::PayloadConfig;
use super::rpc_metrics::{RpcMetrics, Side};
use super::semconv;
use crate::Traces;
use keel_core::code::status_of;
use keel_core::context::{Deadline, grpc_timeout};
use keel_core::identity::PeerIdentity;
use keel_core::method::MethodTable;

/// What every call of one server is observed with.
#[derive(Debug)]
pub struct ServerObserver {
    methods: Methods,
}

impl ServerObserver {
    /// Observes the methods of `table` into `metrics`, tracing as `traces` says
    /// ([`Traces::global`]: as [`crate::init`] set up the process). With `payloads` (a
    /// capture policy and the descriptors of the methods' response types), selected
    /// responses go on the spans. With `identity_label` (`observe.identity_label`), the
    /// series carry the caller's identity as `peer_identity` (see
    /// [`MAX_IDENTITIES`](super::by_peer::MAX_IDENTITIES)); without, no such label.
    pub fn new(
        table: &MethodTable,
        metrics: &RpcMetrics,
        traces: &Traces,
        payloads: Option<(PayloadConfig, &DescriptorPool)>,
        identity_label: bool,
    ) -> Self {
        let payloads = payloads.map(|(config, pool)| (Arc::new(config), pool));
        let identities = identity_label.then(Arc::<Identities>::default);
        let methods = Methods::new(table, metrics, identities.as_ref(), traces, |info| {
            let (config, pool) = payloads.as_ref()?;
            let service = pool.get_service_by_name(&info.service)?;
            let method = service.methods().find(|m| m.name() == &*info.method)?;
            Some(MethodPayloads {
                config: config.clone(),
                output: method.output(),
            })
        });
        Self { methods }
    }
}

/// Layer producing [`Observe`]. A server puts its deadline enforcement right inside it, so
/// that every status a deadline produces (a malformed `grpc-timeout`, one that expired) is
/// counted and logged.
#[derive(Debug, Clone)]
pub struct ObserveLayer {
    observer: Option<Arc<ServerObserver>>,
}

impl ObserveLayer {
    /// Observes calls with `observer`.
    pub fn new(observer: Arc<ServerObserver>) -> Self {
        Self {
            observer: Some(observer),
        }
    }

    /// Observes nothing (`observe.enabled = false`): requests and responses pass through,
    /// with the same types as when observed.
    pub fn disabled() -> Self {
        Self { observer: None }
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
    observer: Option<Arc<ServerObserver>>,
}

impl<S, ReqBody, ResBody> Service<http::Request<ReqBody>> for Observe<S>
where
    S: Service<http::Request<ObservedBody<ReqBody>>, Response = http::Response<ResBody>>,
    ResBody: http_body::Body,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let Some(observer) = &self.observer else {
            return ResponseFuture {
                state: State::Unobserved {
                    inner: self.inner.call(request.map(ObservedBody::unobserved)),
                },
            };
        };
        let (method, unknown_path) = observer.methods.lookup(request.uri().path());
        let peer = request
            .extensions()
            .get::<TcpConnectInfo>()
            .and_then(TcpConnectInfo::remote_addr);
        let identity = request.extensions().get::<Arc<PeerIdentity>>().cloned();

        // Most requests carry no trace headers: skip the propagators' header lookups then.
        let parent = if carries_trace(request.headers()) {
            observer.methods.traces.extract(request.headers())
        } else {
            Context::new()
        };
        let (mut cx, span) =
            observer
                .methods
                .spans
                .start(method.span_name, SpanKind::Server, &parent, || {
                    let mut attributes = semconv::rpc_attributes(&method.info);
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
                    if let Some(identity) = &identity {
                        attributes.push(KeyValue::new(
                            semconv::KEEL_PEER_IDENTITY,
                            identity.principal().to_owned(),
                        ));
                    }
                    attributes
                });
        let timeout = grpc_timeout(request.headers());
        if let Ok(Some(timeout)) = timeout
            && let Some(deadline) = Instant::now().checked_add(timeout)
        {
            cx = cx.with_value(Deadline(deadline));
        }

        let mut call = Call::start(
            Side::Server,
            method,
            unknown_path,
            (peer, identity),
            (cx.clone(), span),
        );
        if timeout.is_err() {
            // The deadline layer refuses the call; the caller sent a malformed header.
            call.fault_the_caller();
        }
        call.capture_if_wanted();
        let metrics = call.metrics().clone();
        let failed = call.request_failed();
        let request = request.map(|body| {
            ObservedBody::new(body, metrics, Flow::Received, None).flag_failure(failed)
        });
        // The handler runs when the future is polled, in the call's context.
        let inner = self.inner.call(request);
        ResponseFuture {
            state: State::Observed {
                inner: inner.with_context(cx),
                call: Some(call),
            },
        }
    }
}

pin_project! {
    /// Runs the handler in the call's context; wraps the response body to see the status.
    pub struct ResponseFuture<F> {
        #[pin]
        state: State<F>,
    }
}

pin_project! {
    #[project = Projected]
    enum State<F> {
        Observed {
            #[pin]
            inner: WithContext<F>,
            call: Option<Call>,
        },
        // Observability is off.
        Unobserved {
            #[pin]
            inner: F,
        },
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    B: http_body::Body,
{
    type Output = Result<http::Response<ObservedBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut TaskContext<'_>) -> Poll<Self::Output> {
        let (inner, call) = match self.project().state.project() {
            Projected::Observed { inner, call } => (inner, call),
            Projected::Unobserved { inner } => {
                let outcome = ready!(inner.poll(cx));
                return Poll::Ready(outcome.map(|response| response.map(ObservedBody::unobserved)));
            }
        };
        let outcome = ready!(inner.poll(cx));
        let call = call.take().expect("ResponseFuture polled after completion");
        Poll::Ready(match outcome {
            Ok(response) => {
                let metrics = call.metrics().clone();
                // A trailers-only response (no body) carries its status in the headers.
                let in_headers = if response.body().is_end_stream() {
                    status_of(response.headers())
                } else {
                    None
                };
                let call = match in_headers {
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

/// True when a request has a header some trace propagator reads (W3C, baggage, B3).
fn carries_trace(headers: &http::HeaderMap) -> bool {
    headers.keys().any(|name| {
        let name = name.as_str();
        name == "traceparent" || name == "baggage" || name == "b3" || name.starts_with("x-b3-")
    })
}
