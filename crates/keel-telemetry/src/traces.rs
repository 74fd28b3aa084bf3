//! Where one server's or client's spans go and how its trace context crosses the wire,
//! handed to it when it is built instead of read from process globals: two servers in one
//! process can export to different collectors with different samplers.

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};

use crate::observe::spans::Spans;
use crate::recorder::SpanRecorder;
use keel_core::context::{HeaderExtractor, HeaderInjector};

/// The tracing a server or client is built with: its span recorder (with the recorder's
/// sampler) and its propagators.
///
/// [`Traces::global`] (the default) follows what [`crate::init`] installed for the whole
/// process; [`crate::Telemetry::traces`] gives the tracing of one [`crate::Telemetry`],
/// such as one made by [`crate::from_settings`] without touching the globals.
#[derive(Clone, Default)]
pub struct Traces {
    /// `None`: whatever the process is set up for when the observer is built.
    spans: Option<SpanSource>,
    /// `None`: the global propagator, looked up on each call.
    propagator: Option<Arc<dyn TextMapPropagator + Send + Sync>>,
}

/// Where spans come from, when not from the process's set-up.
#[derive(Clone)]
pub(crate) enum SpanSource {
    /// Nothing is exported: spans are ids.
    IdsOnly,
    /// Sampled spans go to this recorder.
    Recorder(Arc<SpanRecorder>),
}

impl Traces {
    /// The process's tracing, as [`crate::init`] set it up (or the embedder's own global
    /// tracer provider and propagator).
    pub fn global() -> Self {
        Self::default()
    }

    /// Tracing with `source`'s spans and `propagator`.
    pub(crate) fn new(
        source: SpanSource,
        propagator: Arc<dyn TextMapPropagator + Send + Sync>,
    ) -> Self {
        Self {
            spans: Some(source),
            propagator: Some(propagator),
        }
    }

    /// How an observer built now gets its spans.
    pub(crate) fn spans(&self) -> Spans {
        match &self.spans {
            None => Spans::current(),
            Some(SpanSource::IdsOnly) => Spans::IdsOnly,
            Some(SpanSource::Recorder(recorder)) => Spans::Recorder(recorder.clone()),
        }
    }

    /// The trace context `headers` carry.
    pub(crate) fn extract(&self, headers: &HeaderMap) -> Context {
        self.extract_from(&HeaderExtractor(headers))
    }

    /// Writes `cx`'s trace context into `headers`.
    pub(crate) fn inject(&self, cx: &Context, headers: &mut HeaderMap) {
        self.inject_into(cx, &mut HeaderInjector(headers));
    }

    /// The trace context `carrier` holds (message headers, MQTT user properties:
    /// [`crate::Pairs`]), read by this tracing's propagators.
    pub fn extract_from(&self, carrier: &dyn Extractor) -> Context {
        match &self.propagator {
            Some(propagator) => propagator.extract(carrier),
            None => global::get_text_map_propagator(|propagator| propagator.extract(carrier)),
        }
    }

    /// Writes `cx`'s trace context into `carrier` with this tracing's propagators.
    pub fn inject_into(&self, cx: &Context, carrier: &mut dyn Injector) {
        match &self.propagator {
            Some(propagator) => propagator.inject_context(cx, carrier),
            None => global::get_text_map_propagator(|propagator| {
                propagator.inject_context(cx, carrier);
            }),
        }
    }
}

impl fmt::Debug for Traces {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let spans = match &self.spans {
            None => "global",
            Some(SpanSource::IdsOnly) => "ids only",
            Some(SpanSource::Recorder(_)) => "recorded",
        };
        f.debug_struct("Traces")
            .field("spans", &spans)
            .field(
                "propagator",
                &if self.propagator.is_some() {
                    "own"
                } else {
                    "global"
                },
            )
            .finish()
    }
}
