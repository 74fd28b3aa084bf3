//! One observed call, from its start to its status: what every finished call reports to
//! metrics, logs and traces, in one place, exactly once.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt;
use prost_reflect::MessageDescriptor;
use tonic::Code;

use super::by_peer::{Identities, MethodSeries};
use super::log_budget::{self, Outcome};
use super::payload::{Capture, PayloadConfig};
use super::rpc_metrics::{MethodMetrics, RpcMetrics, Side};
use super::spans::{CallSpan, SpanEnd, Spans};
use crate::Traces;
use keel_core::code::{Severity, code_name, is_server_fault, severity};
use keel_core::identity::PeerIdentity;
use keel_core::method::{MethodInfo, MethodTable, PathMap, RpcType};

/// Where a finished call's log record goes.
pub(crate) const LOG_TARGET: &str = "keel::rpc";

/// A known method with its metric handles.
#[derive(Debug)]
pub(crate) struct ObservedMethod {
    pub(crate) info: MethodInfo,
    /// Its series: one set, or one per caller identity.
    pub(crate) series: MethodSeries,
    /// `service/method`, the span name.
    pub(crate) span_name: &'static str,
    /// How to show its responses on a span, when payload capture is on.
    pub(crate) payloads: Option<Arc<MethodPayloads>>,
}

/// The methods one server or client observes, by request path, and where their spans come
/// from.
pub(crate) struct Methods {
    by_path: PathMap<Arc<ObservedMethod>>,
    /// Paths no descriptor names share one series (`grpc_service="unknown"`), so that
    /// scanning for paths cannot create series without bound.
    unknown: Arc<ObservedMethod>,
    /// How calls get their spans.
    pub(crate) spans: Spans,
    /// How trace context is read from and written to headers.
    pub(crate) traces: Traces,
}

/// Longest request path kept in logs for methods no descriptor names.
const MAX_UNKNOWN_PATH: usize = 256;

impl Methods {
    /// The methods of `table` with their series in `metrics` (split by caller identity when
    /// `identities` is given), and payload capture where `capture` gives one.
    pub(crate) fn new(
        table: &MethodTable,
        metrics: &RpcMetrics,
        identities: Option<&Arc<Identities>>,
        traces: &Traces,
        capture: impl Fn(&MethodInfo) -> Option<MethodPayloads>,
    ) -> Self {
        let by_path = table
            .iter()
            .map(|(path, info)| {
                let series = MethodSeries::new(info, metrics, identities);
                let method = ObservedMethod::new(info.clone(), series, capture(info));
                (path.to_owned(), method)
            })
            .collect();
        let unknown = MethodInfo {
            service: "unknown".into(),
            method: "unknown".into(),
            rpc_type: RpcType::Unary,
        };
        let unknown = ObservedMethod::new(
            unknown.clone(),
            MethodSeries::new(&unknown, metrics, identities),
            None,
        );
        Self {
            by_path,
            unknown,
            spans: traces.spans(),
            traces: traces.clone(),
        }
    }

    /// The method a request path names, and, when no descriptor names it, the path itself
    /// (cut to a bounded length) for the log.
    pub(crate) fn lookup(&self, path: &str) -> (Arc<ObservedMethod>, Option<Box<str>>) {
        match self.by_path.get(path) {
            Some(method) => (method.clone(), None),
            None => {
                let mut end = path.len().min(MAX_UNKNOWN_PATH);
                while !path.is_char_boundary(end) {
                    end -= 1;
                }
                (self.unknown.clone(), Some(path[..end].into()))
            }
        }
    }
}

impl std::fmt::Debug for Methods {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Methods")
            .field("known", &self.by_path.len())
            .field("spans", &self.spans)
            .finish_non_exhaustive()
    }
}

/// What capturing a method's responses takes: the policy and the response type.
#[derive(Debug)]
pub(crate) struct MethodPayloads {
    pub(crate) config: Arc<PayloadConfig>,
    pub(crate) output: MessageDescriptor,
}

impl ObservedMethod {
    /// `info` with its `series`, and its payload capture if any.
    pub(crate) fn new(
        info: MethodInfo,
        series: MethodSeries,
        payloads: Option<MethodPayloads>,
    ) -> Arc<Self> {
        Arc::new(Self {
            series,
            span_name: intern(format!("{}/{}", info.service, info.method)),
            payloads: payloads.map(Arc::new),
            info,
        })
    }
}

/// A call in flight. Reports when [`Call::finish`] is called, or as CANCELLED when dropped
/// before (the peer went away, or the response was never completed).
pub(crate) struct Call {
    side: Side,
    method: Arc<ObservedMethod>,
    /// The request path when the method is not in the table (labels say `unknown`).
    unknown_path: Option<Box<str>>,
    /// The series the call is counted in.
    metrics: Arc<MethodMetrics>,
    peer: Option<SocketAddr>,
    /// The identity the peer's certificate proved (server side, over mutual TLS).
    identity: Option<Arc<PeerIdentity>>,
    start: Instant,
    cx: Context,
    span: CallSpan,
    /// Raised when the request stream failed: the peer reset it, so whatever status the
    /// handler then produced, the call was cancelled by the client.
    request_failed: Arc<AtomicBool>,
    /// The response bytes, kept only when payload capture is on and the span is recorded.
    capture: Option<Capture>,
    /// The request was malformed (an unknown path, a malformed header): whatever the call
    /// ends with, the caller caused it.
    caller_at_fault: bool,
    finished: bool,
}

impl Call {
    /// Counts a call of `method` as started. `peer` is its address and `identity` the one
    /// its certificate proved (server side, over mutual TLS): both go in the log record,
    /// and the identity picks the series when they are split by caller.
    pub(crate) fn start(
        side: Side,
        method: Arc<ObservedMethod>,
        unknown_path: Option<Box<str>>,
        (peer, identity): (Option<SocketAddr>, Option<Arc<PeerIdentity>>),
        (cx, span): (Context, CallSpan),
    ) -> Self {
        let metrics = method.series.of(identity.as_deref());
        metrics.started();
        let call = Self {
            side,
            method,
            caller_at_fault: unknown_path.is_some(),
            unknown_path,
            metrics,
            peer,
            identity,
            start: Instant::now(),
            cx,
            span,
            request_failed: Arc::default(),
            capture: None,
            finished: false,
        };
        tracing::debug!(
            target: LOG_TARGET,
            grpc_service = call.service(),
            grpc_method = call.method_name(),
            grpc_type = call.method.info.rpc_type.as_str(),
            "started call"
        );
        call
    }

    /// The call's OpenTelemetry context (its span, its deadline).
    pub(crate) fn context(&self) -> &Context {
        &self.cx
    }

    /// True for a server call whose handler produces responses while the body is polled
    /// (server and bidi streaming).
    pub(crate) fn runs_handler_in_body(&self) -> bool {
        self.side == Side::Server
            && matches!(
                self.method.info.rpc_type,
                RpcType::ServerStream | RpcType::BidiStream
            )
    }

    /// Starts keeping the response bytes if the method's payloads may be captured and the
    /// call is traced (server side).
    pub(crate) fn capture_if_wanted(&mut self) {
        if self.method.payloads.is_some() && self.span.is_recording(&self.cx) {
            self.capture = Some(Capture::default());
        }
    }

    /// Response data passing, for payload capture.
    pub(crate) fn sent_data(&mut self, data: &bytes::Bytes) {
        if let Some(capture) = &mut self.capture {
            capture.add(data);
        }
    }

    /// Marks the request as malformed (a bad header): its outcome is the caller's doing.
    pub(crate) fn fault_the_caller(&mut self) {
        self.caller_at_fault = true;
    }

    /// The flag the request body raises when it fails.
    pub(crate) fn request_failed(&self) -> Arc<AtomicBool> {
        self.request_failed.clone()
    }

    /// The series the call is counted in.
    pub(crate) fn metrics(&self) -> &Arc<MethodMetrics> {
        &self.metrics
    }

    fn service(&self) -> &str {
        match &self.unknown_path {
            Some(path) => path_parts(path).0,
            None => &self.method.info.service,
        }
    }

    fn method_name(&self) -> &str {
        match &self.unknown_path {
            Some(path) => path_parts(path).1,
            None => &self.method.info.method,
        }
    }

    /// Reports the call's end with `code` (and the status message, for errors).
    pub(crate) fn finish(mut self, code: Code, message: Option<&str>) {
        self.report(code, message);
    }

    fn report(&mut self, code: Code, message: Option<&str>) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        // tonic answers a request stream reset before its message with INTERNAL ("Missing
        // request message"); it was the client leaving, as grpc-go reports it.
        let (code, message) = if code != Code::Ok && self.request_failed.load(Ordering::Relaxed) {
            (Code::Cancelled, Some("the client cancelled the call"))
        } else {
            (code, message)
        };
        let elapsed = self.start.elapsed();
        let span_context = self.cx.span().span_context().clone();
        let exemplar = span_context
            .is_sampled()
            .then(|| span_context.trace_id().to_string());
        self.metrics.handled(code, elapsed, exemplar);

        let (side, capture, method) = (self.side, &self.capture, &self.method);
        self.span.end(&self.cx, || {
            let fault = match side {
                Side::Server => is_server_fault(code),
                Side::Client => code != Code::Ok,
            };
            let payload = match (capture, &method.payloads) {
                (Some(capture), Some(payloads)) if payloads.config.selects(code, capture.sent) => {
                    payloads.config.render(&payloads.output, capture.bytes())
                }
                _ => None,
            };
            SpanEnd {
                code: Some(i64::from(code as i32)),
                attributes: Vec::new(),
                error: fault.then(|| message.unwrap_or_default().to_owned()),
                payload,
            }
        });
        // Formatted only if the record is written.
        let (trace_id, span_id) = if span_context.is_valid() {
            (Some(span_context.trace_id()), Some(span_context.span_id()))
        } else {
            (None, None)
        };
        let peer = self.peer;
        let identity = self.identity.as_deref().map(PeerIdentity::principal);

        let level = match self.side {
            Side::Server => severity(code, self.caller_at_fault),
            // A client reports what it got; the server's log says why.
            Side::Client if matches!(code, Code::Ok | Code::Cancelled) => Severity::Debug,
            Side::Client => Severity::Info,
        };
        // Past the outcome's budget, the record goes to debug (metrics counted it above).
        let outcome = Outcome {
            side: self.side,
            code,
            level,
        };
        let level = if log_budget::admit(outcome) {
            level
        } else {
            Severity::Debug
        };
        macro_rules! finished {
            ($level:ident) => {
                tracing::$level!(
                    target: LOG_TARGET,
                    side = match self.side { Side::Server => "server", Side::Client => "client" },
                    grpc_service = self.service(),
                    grpc_method = self.method_name(),
                    grpc_type = self.method.info.rpc_type.as_str(),
                    peer_address = %Shown(peer),
                    peer_identity = %Shown(identity),
                    grpc_code = code_name(code),
                    grpc_message = message.unwrap_or_default(),
                    duration_ms = elapsed.as_secs_f64() * 1e3,
                    trace_id = %Shown(trace_id),
                    span_id = %Shown(span_id),
                    "finished call"
                )
            };
        }
        match level {
            Severity::Debug => finished!(debug),
            Severity::Info => finished!(info),
            Severity::Warn => finished!(warn),
            Severity::Error => finished!(error),
        }
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.report(Code::Cancelled, Some("call ended before its status"));
    }
}

/// `name` with a static lifetime, shared by every server and client of the process that
/// names it: span names are needed per call, and a borrowed name costs no allocation. The
/// set only grows with the distinct methods the process serves or calls.
pub(crate) fn intern(name: String) -> &'static str {
    static NAMES: Mutex<BTreeSet<&'static str>> = Mutex::new(BTreeSet::new());
    let mut names = NAMES
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if let Some(known) = names.get(name.as_str()) {
        return known;
    }
    let leaked: &'static str = Box::leak(name.into_boxed_str());
    names.insert(leaked);
    leaked
}

/// An optional value in a log record: itself, or nothing.
struct Shown<T>(Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for Shown<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(value) => value.fmt(f),
            None => Ok(()),
        }
    }
}

/// `("pkg.Service", "Method")` of `/pkg.Service/Method`, leniently.
fn path_parts(path: &str) -> (&str, &str) {
    let path = path.strip_prefix('/').unwrap_or(path);
    path.split_once('/').unwrap_or((path, ""))
}
