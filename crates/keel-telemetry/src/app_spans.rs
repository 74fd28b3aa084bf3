//! Spans an application starts itself on the path Keel's RPC spans take: [`AppSpans`] are
//! recorded by the same recorder (or are just ids when nothing is exported), sampled by the
//! same sampler, and carried across the wire by the same propagators as the calls of the
//! [`Traces`] they come from. What a message bridge needs for its consumer spans, at the cost
//! of an RPC span rather than a trip through the SDK.
//!
//! ```
//! use keel_telemetry::{AppSpans, Traces};
//! use opentelemetry::KeyValue;
//! use opentelemetry::trace::SpanKind;
//!
//! let traces = Traces::global();
//! let spans = AppSpans::new(&traces, "process orders", SpanKind::Consumer);
//! let headers = vec![(
//!     "traceparent".to_owned(),
//!     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
//! )];
//! let parent = traces.extract_from(&keel_telemetry::Pairs(&headers));
//! let span = spans.start(&parent, || vec![KeyValue::new("messaging.system", "kafka")]);
//! // ... work under `span.context()`, passing it on with `traces.inject_into` ...
//! span.end(|| vec![KeyValue::new("messaging.message.id", "m-1")], None);
//! ```

use std::fmt;
use std::sync::Arc;

use opentelemetry::propagation::{Extractor, Injector};
use opentelemetry::trace::SpanKind;
use opentelemetry::{Context, KeyValue};

use crate::Traces;
use crate::observe::spans::{CallSpan, SpanEnd, Spans};

/// Spans of one name and kind, started under a parent context (a caller's, extracted with
/// [`Traces::extract_from`]) or as the root of a fresh trace. Cheap to clone.
#[derive(Clone)]
pub struct AppSpans {
    name: &'static str,
    kind: SpanKind,
    spans: Arc<Spans>,
}

impl AppSpans {
    /// Spans named `name` (interned: keep names few, such as one per route) of kind `kind`,
    /// going where `traces` sends spans as it is set up now.
    pub fn new(traces: &Traces, name: impl Into<String>, kind: SpanKind) -> Self {
        Self {
            name: crate::observe::intern(name.into()),
            kind,
            spans: Arc::new(traces.spans()),
        }
    }

    /// Starts a span, a child of `parent`'s span when it has one; `attributes` are computed
    /// only when the span is recorded.
    pub fn start(&self, parent: &Context, attributes: impl FnOnce() -> Vec<KeyValue>) -> AppSpan {
        let (cx, span) = self
            .spans
            .start(self.name, self.kind.clone(), parent, attributes);
        AppSpan {
            cx,
            span: Some(span),
        }
    }
}

impl fmt::Debug for AppSpans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSpans")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("spans", &self.spans)
            .finish()
    }
}

/// A started span. [`AppSpan::end`] finishes it; dropped unfinished, it ends as it is.
pub struct AppSpan {
    cx: Context,
    /// `None` once ended.
    span: Option<CallSpan>,
}

impl AppSpan {
    /// The context the span's work runs under: its children's parent, and what
    /// [`Traces::inject_into`] passes on.
    pub fn context(&self) -> &Context {
        &self.cx
    }

    /// True when the span is recorded (sampled and exported), so attributes are kept.
    pub fn is_recording(&self) -> bool {
        self.span
            .as_ref()
            .is_some_and(|span| span.is_recording(&self.cx))
    }

    /// Ends the span with more `attributes` (computed only when it is recorded) and, when
    /// `error` is given, an error status with that message.
    pub fn end(mut self, attributes: impl FnOnce() -> Vec<KeyValue>, error: Option<String>) {
        if let Some(mut span) = self.span.take() {
            span.end(&self.cx, || SpanEnd {
                code: None,
                attributes: attributes(),
                error,
                payload: None,
            });
        }
    }
}

impl Drop for AppSpan {
    fn drop(&mut self) {
        if let Some(mut span) = self.span.take() {
            span.end(&self.cx, || SpanEnd {
                code: None,
                attributes: Vec::new(),
                error: None,
                payload: None,
            });
        }
    }
}

impl fmt::Debug for AppSpan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppSpan")
            .field("recording", &self.is_recording())
            .finish_non_exhaustive()
    }
}

/// Name-value pairs as a propagation carrier: message headers, MQTT 5 user properties.
/// Names match without regard to ASCII case, as HTTP header names do.
#[derive(Debug, Clone, Copy)]
pub struct Pairs<'a>(pub &'a [(String, String)]);

impl Extractor for Pairs<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
            .map(|(_, value)| value.as_str())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.iter().map(|(name, _)| name.as_str()).collect()
    }
}

/// Name-value pairs a propagator writes into: a value replaces one of the same name, and an
/// empty value (a `tracestate` with nothing in it) is not written.
#[derive(Debug)]
pub struct PairsMut<'a>(pub &'a mut Vec<(String, String)>);

impl Injector for PairsMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        if value.is_empty() {
            return;
        }
        match self
            .0
            .iter_mut()
            .find(|(name, _)| name.eq_ignore_ascii_case(key))
        {
            Some((_, old)) => *old = value,
            None => self.0.push((key.to_owned(), value)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::TraceContextExt as _;

    fn w3c() -> Traces {
        let propagator = opentelemetry_sdk::propagation::TraceContextPropagator::new();
        Traces::new(
            crate::traces::SpanSource::IdsOnly,
            Arc::new(propagator) as Arc<_>,
        )
    }

    #[test]
    fn a_span_continues_the_extracted_trace_and_passes_its_own_on() {
        let traces = w3c();
        let spans = AppSpans::new(&traces, "deliver orders", SpanKind::Consumer);
        let incoming = vec![(
            "Traceparent".to_owned(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_owned(),
        )];
        let parent = traces.extract_from(&Pairs(&incoming));
        let span = spans.start(&parent, Vec::new);

        let mut outgoing = vec![("traceparent".to_owned(), "stale".to_owned())];
        traces.inject_into(span.context(), &mut PairsMut(&mut outgoing));
        let child = span.context().span().span_context().clone();
        assert_eq!(
            format!("{:032x}", child.trace_id()),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_ne!(format!("{:016x}", child.span_id()), "b7ad6b7169203331");
        assert!(child.is_sampled(), "the caller's decision travels on");
        assert_eq!(
            outgoing.len(),
            1,
            "replaced, nothing empty added: {outgoing:?}"
        );
        assert_eq!(
            outgoing[0].1,
            format!("00-{:032x}-{:016x}-01", child.trace_id(), child.span_id())
        );
        span.end(Vec::new, None);
    }

    #[test]
    fn without_a_caller_a_span_starts_a_fresh_trace() {
        let traces = w3c();
        let spans = AppSpans::new(&traces, "ingest", SpanKind::Consumer);
        let garbage = vec![("traceparent".to_owned(), "garbage".to_owned())];
        let parent = traces.extract_from(&Pairs(&garbage));
        let first = spans.start(&parent, Vec::new);
        let second = spans.start(&parent, Vec::new);
        let (first, second) = (
            first.context().span().span_context().clone(),
            second.context().span().span_context().clone(),
        );
        assert!(first.is_valid() && second.is_valid());
        assert_ne!(
            first.trace_id(),
            second.trace_id(),
            "each a trace of its own"
        );
    }
}
