//! Where a call's span comes from: the OpenTelemetry tracer, or, when nothing is exported,
//! just ids.
//!
//! Without an exporter a span is only good for its ids: the log record's `trace_id` and
//! `span_id`, and the headers outgoing calls carry. Minting those directly (a child of the
//! caller's span, keeping its trace and sampling flag, or a fresh unsampled trace) costs two
//! random numbers instead of a trip through the SDK's sampler, span and processors on every
//! call, which is most of what observation costs when it is on by default.

use opentelemetry::global::{self, BoxedTracer};
use opentelemetry::trace::{
    Span as _, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, Tracer,
};
use opentelemetry::{Context, KeyValue};

/// How calls get their spans; chosen when a server or client is built.
pub(crate) enum Spans {
    /// Real spans from the global tracer provider.
    Tracer(BoxedTracer),
    /// Ids only: [`crate::telemetry::init`] found nothing to export.
    IdsOnly,
}

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Tracer(_) => "Tracer",
            Self::IdsOnly => "IdsOnly",
        })
    }
}

impl Spans {
    /// What the process is set up for now.
    pub(crate) fn current() -> Self {
        if crate::telemetry::ids_only() {
            Self::IdsOnly
        } else {
            Self::Tracer(global::tracer("keel"))
        }
    }

    /// The context of a new call named `name` under `parent`; `attributes` are computed and
    /// set only when the span is recorded.
    pub(crate) fn start(
        &self,
        name: &'static str,
        kind: SpanKind,
        parent: &Context,
        attributes: impl FnOnce() -> Vec<KeyValue>,
    ) -> Context {
        match self {
            Self::Tracer(tracer) => {
                let mut span = tracer
                    .span_builder(name)
                    .with_kind(kind)
                    .start_with_context(tracer, parent);
                if span.is_recording() {
                    span.set_attributes(attributes());
                }
                parent.with_span(span)
            }
            Self::IdsOnly => {
                let caller = parent.span();
                let caller = caller.span_context();
                let (trace_id, flags, state) = if caller.is_valid() {
                    (
                        caller.trace_id(),
                        caller.trace_flags(),
                        caller.trace_state().clone(),
                    )
                } else {
                    (
                        TraceId::from(u128::from(next_id()) << 64 | u128::from(next_id())),
                        TraceFlags::default(),
                        Default::default(),
                    )
                };
                let span_id = SpanId::from(next_id());
                parent.with_remote_span_context(SpanContext::new(
                    trace_id, span_id, flags, false, state,
                ))
            }
        }
    }
}

/// A non-zero id from a per-thread SplitMix64 sequence seeded from the OS: ids must not
/// repeat, not resist prediction, and this costs a few instructions where a cryptographic
/// generator costs hundreds on every call.
fn next_id() -> u64 {
    use std::cell::Cell;
    thread_local! {
        static STATE: Cell<u64> = Cell::new(rand::random());
    }
    STATE.with(|state| {
        loop {
            let next = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
            state.set(next);
            let mut z = next;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            if z != 0 {
                return z;
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn ids_only_spans_continue_the_caller_or_start_fresh() {
        let fresh = Spans::IdsOnly.start("s/m", SpanKind::Server, &Context::new(), Vec::new);
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
        let child = Spans::IdsOnly.start("s/m", SpanKind::Client, &parent, Vec::new);
        let span = child.span();
        let child = span.span_context();
        assert_eq!(child.trace_id(), root.trace_id(), "same trace");
        assert_ne!(child.span_id(), root.span_id(), "its own span");
        assert!(child.is_sampled(), "the caller's decision travels on");
    }

    #[test]
    fn ids_do_not_repeat() {
        let ids: HashSet<u64> = (0..100_000).map(|_| next_id()).collect();
        assert_eq!(ids.len(), 100_000);
        assert!(!ids.contains(&0));
    }
}
