//! The client side: [`ClientObserveLayer`] reports every outgoing call to the
//! `grpc_client_*` metrics, the log and a client span, and carries the call being served
//! onward: its trace (written in the headers by the global propagator) and what is left of
//! its deadline (`grpc-timeout`, never longer than the caller's own).
//!
//! ```no_run
//! # async fn run(channel: tonic::transport::Channel) {
//! use keel_core::method::MethodTable;
//! use keel_telemetry::observe::{ClientObserveLayer, ClientObserver};
//!
//! let mut methods = MethodTable::default();
//! methods.add_encoded(keel_interop::FILE_DESCRIPTOR_SET).unwrap();
//! let mut registry = prometheus_client::registry::Registry::default();
//! let observer = ClientObserver::new(&methods, &mut registry, &keel_telemetry::Traces::global());
//! let channel = tower::ServiceBuilder::new()
//!     .layer(ClientObserveLayer::new(observer).target(&"http://127.0.0.1:50051".parse().unwrap()))
//!     .service(channel);
//! let mut greeter =
//!     keel_interop::pb::helloworld::greeter_client::GreeterClient::new(channel);
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context as TaskContext, Poll, ready};

use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};
use pin_project_lite::pin_project;
use prometheus_client::registry::Registry;
use tonic::Code;
use tower::{Layer, Service};

use super::body::{Flow, ObservedBody};
use super::call::{Call, Methods};
use super::rpc_metrics::{RpcMetrics, Side};
use super::semconv;
use crate::Traces;
use keel_core::code::status_of;
use keel_core::context::{Deadline, GRPC_TIMEOUT, format_grpc_timeout, parse_grpc_timeout};
use keel_core::method::MethodTable;

/// What every outgoing call of one client is observed with.
#[derive(Debug)]
pub struct ClientObserver {
    methods: Methods,
}

impl ClientObserver {
    /// Observes calls to the methods of `table`, registering the `grpc_client_*` families in
    /// `registry` (serve it on the process's `/metrics`: a Keel server's
    /// `ServerBuilder::metrics_registry`, say), tracing as `traces` says
    /// ([`Traces::global`]: as [`crate::init`] set up the process).
    pub fn new(table: &MethodTable, registry: &mut Registry, traces: &Traces) -> Arc<Self> {
        let metrics = RpcMetrics::register(Side::Client, registry);
        Arc::new(Self {
            methods: Methods::new(table, &metrics, None, traces, |_| None),
        })
    }
}

/// Layer producing [`ClientObserve`], for a tonic `Channel` (or any service taking
/// `http::Request<tonic::body::Body>`).
#[derive(Debug, Clone)]
pub struct ClientObserveLayer {
    observer: Arc<ClientObserver>,
    target: Option<Arc<Target>>,
}

/// The server a channel calls, for span attributes and logs (a tonic `Channel` adds it to
/// requests only below this layer).
#[derive(Debug)]
struct Target {
    host: String,
    port: Option<u16>,
    address: Option<SocketAddr>,
}

impl Target {
    fn of(authority: &http::uri::Authority) -> Arc<Self> {
        Arc::new(Self {
            host: authority.host().to_owned(),
            port: authority.port_u16(),
            address: authority.as_str().parse().ok(),
        })
    }
}

impl ClientObserveLayer {
    /// Observes outgoing calls with `observer`.
    pub fn new(observer: Arc<ClientObserver>) -> Self {
        Self {
            observer,
            target: None,
        }
    }

    /// Names the server the wrapped channel calls (`http://host:port`), for the
    /// `server.address`/`server.port` span attributes and the log's peer.
    ///
    /// ```
    /// use keel_core::method::MethodTable;
    /// use keel_telemetry::Traces;
    /// use keel_telemetry::observe::{ClientObserveLayer, ClientObserver};
    ///
    /// let mut registry = prometheus_client::registry::Registry::default();
    /// let observer = ClientObserver::new(&MethodTable::default(), &mut registry, &Traces::global());
    /// let layer = ClientObserveLayer::new(observer).target(&"http://127.0.0.1:50051".parse()?);
    /// # let _ = layer;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[must_use]
    pub fn target(mut self, uri: &http::Uri) -> Self {
        self.target = uri.authority().map(Target::of);
        self
    }
}

impl<S> Layer<S> for ClientObserveLayer {
    type Service = ClientObserve<S>;

    fn layer(&self, inner: S) -> Self::Service {
        ClientObserve {
            inner,
            observer: self.observer.clone(),
            target: self.target.clone(),
        }
    }
}

/// Counts, logs and traces every outgoing call, and propagates trace and deadline.
#[derive(Debug, Clone)]
pub struct ClientObserve<S> {
    inner: S,
    observer: Arc<ClientObserver>,
    target: Option<Arc<Target>>,
}

impl<S, ResBody> Service<http::Request<tonic::body::Body>> for ClientObserve<S>
where
    S: Service<http::Request<tonic::body::Body>, Response = http::Response<ResBody>>,
    S::Error: std::fmt::Display,
{
    type Response = http::Response<ObservedBody<ResBody>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut TaskContext<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<tonic::body::Body>) -> Self::Future {
        let observer = &self.observer;
        let (method, unknown_path) = observer.methods.lookup(request.uri().path());
        let target = match request.uri().authority() {
            Some(authority) => Some(Target::of(authority)),
            None => self.target.clone(),
        };

        let parent = Context::current();
        let (cx, span) =
            observer
                .methods
                .spans
                .start(method.span_name, SpanKind::Client, &parent, || {
                    let mut attributes = semconv::rpc_attributes(&method.info);
                    if let Some(target) = &target {
                        attributes
                            .push(KeyValue::new(semconv::SERVER_ADDRESS, target.host.clone()));
                        if let Some(port) = target.port {
                            attributes.push(KeyValue::new(semconv::SERVER_PORT, i64::from(port)));
                        }
                    }
                    attributes
                });
        observer.methods.traces.inject(&cx, request.headers_mut());
        if let Some(deadline) = cx.get::<Deadline>() {
            let left = deadline.remaining();
            let own = parse_grpc_timeout(request.headers());
            if own.is_none_or(|own| left < own)
                && let Ok(value) = format_grpc_timeout(left).parse()
            {
                request.headers_mut().insert(GRPC_TIMEOUT, value);
            }
        }

        let server = target.and_then(|target| target.address);
        let call = Call::start(
            Side::Client,
            method,
            unknown_path,
            (server, None),
            (cx, span),
        );
        let metrics = call.metrics().clone();
        let request = request
            .map(|body| tonic::body::Body::new(ObservedBody::new(body, metrics, Flow::Sent, None)));
        ResponseFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

pin_project! {
    /// Waits for the response headers; wraps the body to see the status.
    pub struct ResponseFuture<F> {
        #[pin]
        inner: F,
        call: Option<Call>,
    }
}

impl<F, B, E> Future for ResponseFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
    E: std::fmt::Display,
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
                let call = match status_of(response.headers()) {
                    Some((code, message)) => {
                        call.finish(code, message.as_deref());
                        None
                    }
                    None => Some(call),
                };
                Ok(response.map(|body| ObservedBody::new(body, metrics, Flow::Received, call)))
            }
            Err(error) => {
                // What tonic reports for a call the transport could not carry.
                call.finish(Code::Unavailable, Some(&error.to_string()));
                Err(error)
            }
        })
    }
}
