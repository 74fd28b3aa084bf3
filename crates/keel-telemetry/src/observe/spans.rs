//! Where a call's span comes from: Keel's own recorder when spans are exported, just ids
//! when they are not, or the OpenTelemetry tracer of an embedder's own SDK set-up.
//!
//! Without an exporter a span is only good for its ids: the log record's `trace_id` and
//! `span_id`, and the headers outgoing calls carry. Minting those directly (a child of the
//! caller's span, keeping its trace and sampling flag, or a fresh unsampled trace) costs two
//! random numbers instead of a trip through the SDK's sampler, span and processors on every
//! call, which is most of what observation costs when it is on by default. With an
//! exporter, the same ids, the sampler's decision, and for sampled calls a compact record
//! handed to [`SpanRecorder`] at the end: the SDK's path cost 1.3x what the RPC itself
//! does per exported span (docs/BENCHMARKS.md).

use std::sync::Arc;
use std::time::SystemTime;

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, Status, TraceContextExt, TraceFlags, TraceId,
    TraceState, Tracer,
};
use opentelemetry::{Context, KeyValue};

use crate::recorder::{RecordedSpan, SpanEvent, SpanRecorder};

/// How calls get their spans; chosen when a server or client is built.
pub(crate) enum Spans {
    /// Real spans from the global tracer provider (an embedder's own SDK set-up).
    Tracer(BoxedTracer),
    /// Ids only: [`crate::init`] found nothing to export.
    IdsOnly,
    /// Ids, and a record of each sampled span for Keel's exporter:
    /// [`crate::init`] set up export.
    Recorder(Arc<SpanRecorder>),
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tracer(_) => "Tracer",
            Self::IdsOnly => "IdsOnly",
            Self::Recorder(_) => "Recorder",
        })
    }
}

/// A call's span while the call runs.
pub(crate) enum CallSpan {
    /// The span is the one in the call's context: the SDK's, or just ids.
    InContext,
    /// A sampled span Keel records itself, exported when it ends.
    Recorded(Box<OpenSpan>),
}

/// A recorded span before its end.
pub(crate) struct OpenSpan {
    recorder: Arc<SpanRecorder>,
    span: RecordedSpan,
}

/// How a call ended, for its span.
pub(crate) struct SpanEnd {
    /// `rpc.grpc.status_code`, for an RPC span.
    pub(crate) code: Option<i64>,
    /// More attributes.
    pub(crate) attributes: Vec<KeyValue>,
    /// The error status's message, when the outcome is a fault on this side.
    pub(crate) error: Option<String>,
    /// A captured response payload.
    pub(crate) payload: Option<String>,
}

impl CallSpan {
    /// True when the span is recorded (sampled), so its attributes and events are kept.
    pub(crate) fn is_recording(&self, cx: &Context) -> bool {
        match self {
            Self::InContext => cx.span().is_recording(),
            Self::Recorded(_) => true,
        }
    }

    /// Ends the span (`end` is computed only for recorded spans).
    pub(crate) fn end(&mut self, cx: &Context, end: impl FnOnce() -> SpanEnd) {
        match std::mem::replace(self, Self::InContext) {
            Self::InContext => {
                let span = cx.span();
                if span.is_recording() {
                    let SpanEnd {
                        code,
                        attributes,
                        error,
                        payload,
                    } = end();
                    if let Some(code) = code {
                        span.set_attribute(KeyValue::new(
                            super::semconv::RPC_GRPC_STATUS_CODE,
                            code,
                        ));
                    }
                    span.set_attributes(attributes);
                    if let Some(message) = error {
                        span.set_status(Status::error(message));
                    }
                    if let Some(text) = payload {
                        span.add_event(
                            super::semconv::PAYLOAD_EVENT,
                            vec![KeyValue::new(super::semconv::PAYLOAD_BODY, text)],
                        );
                    }
                }
                span.end();
            }
            Self::Recorded(open) => {
                let OpenSpan { recorder, mut span } = *open;
                let SpanEnd {
                    code,
                    attributes,
                    error,
                    payload,
                } = end();
                span.end = SystemTime::now();
                if let Some(code) = code {
                    span.attributes
                        .push(KeyValue::new(super::semconv::RPC_GRPC_STATUS_CODE, code));
                }
                span.attributes.extend(attributes);
                span.error = error;
                if let Some(text) = payload {
                    span.events.push(SpanEvent {
                        name: super::semconv::PAYLOAD_EVENT,
                        time: span.end,
                        attributes: vec![KeyValue::new(super::semconv::PAYLOAD_BODY, text)],
                    });
                }
                recorder.record(span);
            }
        }
    }
}

impl Spans {
    /// What the process is set up for now.
    pub(crate) fn current() -> Self {
        if let Some(recorder) = crate::recorder() {
            Self::Recorder(recorder)
        } else if crate::ids_only() {
            Self::IdsOnly
        } else {
            Self::Tracer(global::tracer("keel"))
        }
    }

    /// The context of a new call named `name` under `parent`, and its span; `attributes`
    /// are computed and set only when the span is recorded.
    pub(crate) fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> (Context, CallSpan) {
        match self {
            Self::Tracer(tracer) => {
                let mut span = tracer
                    .span_builder(name)
                    .with_kind(kind)
                    .start_with_context(tracer, parent);
                if span.is_recording() {
                    span.set_attributes(attributes());
                }
                (parent.with_span(span), CallSpan::InContext)
            }
            Self::IdsOnly => {
                let (trace_id, caller, state) = child_of(parent);
                let sampled = caller.is_some_and(|caller| caller.sampled);
                let ids = span_context(
                    trace_id,
                    SpanId::from(keel_core::random::nonzero_u64()),
                    sampled,
                    state,
                );
                (parent.with_remote_span_context(ids), CallSpan::InContext)
            }
            Self::Recorder(recorder) => {
                let (trace_id, caller, state) = child_of(parent);
                let sampled = recorder
                    .sampler
                    .samples(caller.map(|caller| caller.sampled), trace_id);
                let span_id = SpanId::from(keel_core::random::nonzero_u64());
                let span = if sampled {
                    CallSpan::Recorded(Box::new(OpenSpan {
                        recorder: recorder.clone(),
                        span: RecordedSpan {
                            trace_id,
                            span_id,
                            parent: caller.map(|caller| caller.span_id),
                            parent_is_remote: caller.is_some_and(|caller| caller.remote),
                            trace_state: state.header(),
                            name,
                            kind,
                            start: SystemTime::now(),
                            end: SystemTime::UNIX_EPOCH,
                            attributes: attributes(),
                            events: Vec::new(),
                            error: None,
                        },
                    }))
                } else {
                    CallSpan::InContext
                };
                let ids = span_context(trace_id, span_id, sampled, state);
                (parent.with_remote_span_context(ids), span)
            }
        }
    }
}

/// The caller a new span continues: its span id, whether it sampled the trace, and whether
/// its context came from another process.
#[derive(Clone, Copy)]
struct Caller {
    span_id: SpanId,
    sampled: bool,
    remote: bool,
}

/// The trace a child of `parent`'s span belongs to (the caller's, or a fresh one), the
/// caller if there is one, and the trace's state.
fn child_of(parent: &Context) -> (TraceId, Option<Caller>, TraceState) {
    let caller = parent.span();
    let caller = caller.span_context();
    if caller.is_valid() {
        (
            caller.trace_id(),
            Some(Caller {
                span_id: caller.span_id(),
                sampled: caller.is_sampled(),
                remote: caller.is_remote(),
            }),
            caller.trace_state().clone(),
        )
    } else {
        (
            TraceId::from(
                u128::from(keel_core::random::nonzero_u64()) << 64
                    | u128::from(keel_core::random::nonzero_u64()),
            ),
            None,
            TraceState::default(),
        )
    }
}

/// The ids a call's context carries (not a recording span in the SDK's sense: whoever
/// records it, Keel or nobody, it is only ids there).
fn span_context(
    trace_id: TraceId,
    span_id: SpanId,
    sampled: bool,
    state: TraceState,
) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace_id, span_id, flags, false, state)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_only_spans_continue_the_caller_or_start_fresh() {
        let (fresh, _) = Spans::IdsOnly.start("s/m", SpanKind::Server, &Context::new(), Vec::new);
        let span = fresh.span();
        let root = span.span_context().clone();
        assert!(root.is_valid() && !root.is_sampled());

        let sampled = SpanContext::new(
            root.trace_id(),
            root.span_id(),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        );
        let parent = Context::new().with_remote_span_context(sampled);
        let (child, _) = Spans::IdsOnly.start("s/m", SpanKind::Client, &parent, Vec::new);
        let span = child.span();
        let child = span.span_context();
        assert_eq!(child.trace_id(), root.trace_id(), "same trace");
        assert_ne!(child.span_id(), root.span_id(), "its own span");
        assert!(child.is_sampled(), "the caller's decision travels on");
    }
}
