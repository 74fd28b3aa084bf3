//! The B3 propagator (Zipkin's trace headers), as the OpenTelemetry specification describes
//! it: extraction reads the single `b3` header and, failing that, the `X-B3-*` headers,
//! whatever the configured injection format; injection writes one of the two.
//!
//! - single: `b3: {trace id}-{span id}[-{sampling}[-{parent span id}]]`
//! - multi: `X-B3-TraceId`, `X-B3-SpanId`, `X-B3-Sampled` (`1`/`0`, also `true`/`false`),
//!   `X-B3-Flags: 1` (debug, meaning sampled), `X-B3-ParentSpanId`
//!
//! Trace ids may be 16 or 32 hex digits (64-bit ids are widened with zeros); span ids 16.
//! Anything malformed or all-zero is ignored: the context stays as it was.

use std::sync::LazyLock;

use opentelemetry::Context;
use opentelemetry::propagation::text_map_propagator::FieldIter;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};

const SINGLE: &str = "b3";
const TRACE_ID: &str = "x-b3-traceid";
const SPAN_ID: &str = "x-b3-spanid";
const SAMPLED: &str = "x-b3-sampled";
const FLAGS: &str = "x-b3-flags";
const PARENT_SPAN_ID: &str = "x-b3-parentspanid";

static SINGLE_FIELDS: LazyLock<[String; 1]> = LazyLock::new(|| [SINGLE.to_owned()]);
static MULTI_FIELDS: LazyLock<[String; 5]> =
    LazyLock::new(|| [TRACE_ID, SPAN_ID, SAMPLED, FLAGS, PARENT_SPAN_ID].map(str::to_owned));

/// Which headers a [`B3Propagator`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum B3Format {
    /// The single `b3` header (`OTEL_PROPAGATORS=b3`).
    Single,
    /// The `X-B3-*` headers (`OTEL_PROPAGATORS=b3multi`).
    Multi,
}

/// Reads both B3 forms; writes the one it was made with.
#[derive(Debug, Clone, Copy)]
pub struct B3Propagator {
    format: B3Format,
}

impl B3Propagator {
    /// A propagator writing `format`.
    pub fn new(format: B3Format) -> Self {
        Self { format }
    }
}

impl TextMapPropagator for B3Propagator {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let span = cx.span();
        let context = span.span_context();
        if !context.is_valid() {
            return;
        }
        let sampled = if context.is_sampled() { "1" } else { "0" };
        match self.format {
            B3Format::Single => injector.set(
                SINGLE,
                format!("{}-{}-{sampled}", context.trace_id(), context.span_id()),
            ),
            B3Format::Multi => {
                injector.set(TRACE_ID, context.trace_id().to_string());
                injector.set(SPAN_ID, context.span_id().to_string());
                injector.set(SAMPLED, sampled.to_owned());
            }
        }
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        match extract_single(extractor).or_else(|| extract_multi(extractor)) {
            Some(context) => cx.with_remote_span_context(context),
            None => cx.clone(),
        }
    }

    fn fields(&self) -> FieldIter<'_> {
        match self.format {
            B3Format::Single => FieldIter::new(SINGLE_FIELDS.as_slice()),
            B3Format::Multi => FieldIter::new(MULTI_FIELDS.as_slice()),
        }
    }
}

fn extract_single(extractor: &dyn Extractor) -> Option<SpanContext> {
    let value = extractor.get(SINGLE)?.trim();
    let mut parts = value.split('-');
    let trace_id = trace_id(parts.next()?)?;
    let span_id = span_id(parts.next()?)?;
    let sampled = match parts.next() {
        None => None,
        Some("1" | "d") => Some(true),
        Some("0") => Some(false),
        Some(_) => return None,
    };
    if let Some(parent) = parts.next() {
        span_id_of(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(remote(trace_id, span_id, sampled.unwrap_or(false)))
}

fn extract_multi(extractor: &dyn Extractor) -> Option<SpanContext> {
    let trace_id = trace_id(extractor.get(TRACE_ID)?.trim())?;
    let span_id = span_id(extractor.get(SPAN_ID)?.trim())?;
    if let Some(parent) = extractor.get(PARENT_SPAN_ID) {
        span_id_of(parent.trim())?;
    }
    let debug = extractor.get(FLAGS).map(str::trim) == Some("1");
    let sampled = match extractor.get(SAMPLED).map(str::trim) {
        None => false,
        Some("1" | "true") => true,
        Some("0" | "false") => false,
        Some(_) => return None,
    };
    Some(remote(trace_id, span_id, sampled || debug))
}

fn remote(trace_id: TraceId, span_id: SpanId, sampled: bool) -> SpanContext {
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    SpanContext::new(trace_id, span_id, flags, true, TraceState::default())
}

fn is_hex(text: &str) -> bool {
    text.bytes().all(|b| b.is_ascii_hexdigit())
}

/// A 16- or 32-digit, non-zero trace id.
fn trace_id(text: &str) -> Option<TraceId> {
    if !(text.len() == 16 || text.len() == 32) || !is_hex(text) {
        return None;
    }
    TraceId::from_hex(text)
        .ok()
        .filter(|id| *id != TraceId::INVALID)
}

/// A 16-digit, non-zero span id.
fn span_id(text: &str) -> Option<SpanId> {
    span_id_of(text).filter(|id| *id != SpanId::INVALID)
}

fn span_id_of(text: &str) -> Option<SpanId> {
    if text.len() != 16 || !is_hex(text) {
        return None;
    }
    SpanId::from_hex(text).ok()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn extract(headers: &[(&str, &str)]) -> Option<SpanContext> {
        let map: HashMap<String, String> = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let cx = B3Propagator::new(B3Format::Single).extract(&map);
        let span = cx.span();
        let context = span.span_context();
        context.is_valid().then(|| context.clone())
    }

    #[test]
    fn reads_the_single_header() {
        let context = extract(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )])
        .unwrap();
        assert_eq!(
            context.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(context.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(context.is_sampled() && context.is_remote());
        let short = extract(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-d")]).unwrap();
        assert_eq!(
            short.trace_id().to_string(),
            "0000000000000000a3ce929d0e0e4736"
        );
        assert!(short.is_sampled(), "debug means sampled");
        let unsampled = extract(&[("b3", "a3ce929d0e0e4736-00f067aa0ba902b7-0")]).unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn reads_the_multi_headers() {
        let context = extract(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ])
        .unwrap();
        assert_eq!(context.span_id().to_string(), "a2fb4a1d1a96d312");
        assert!(context.is_sampled());
        let debug = extract(&[
            ("x-b3-traceid", "463ac35c9f6413ad"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-flags", "1"),
        ])
        .unwrap();
        assert!(debug.is_sampled());
    }

    #[test]
    fn malformed_headers_are_ignored() {
        for headers in [
            vec![("b3", "0")],
            vec![("b3", "1")],
            vec![("b3", "nothex-nothex")],
            vec![("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-x")],
            vec![("b3", "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd")],
            vec![("b3", "00000000000000000000000000000000-e457b5a2e4d86bd1")],
            vec![("b3", "80f198ee56343ba864fe8b2a57d3eff7-0000000000000000-1")],
            vec![(
                "b3",
                "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3-x",
            )],
            vec![("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124")],
            vec![
                ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb612"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ],
            vec![
                ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
                ("x-b3-spanid", "a2fb4a1d1a96d312"),
                ("x-b3-sampled", "maybe"),
            ],
            vec![("b3", "+80f198ee56343ba-e457b5a2e4d86bd1")],
        ] {
            assert!(extract(&headers).is_none(), "{headers:?}");
        }
    }

    #[test]
    fn what_is_written_reads_back_in_both_formats() {
        use rand::Rng;
        let mut rng = rand::rng();
        for _ in 0..200 {
            let trace_id = TraceId::from(rng.random_range(1..=u128::MAX));
            let span_id = SpanId::from(rng.random_range(1..=u64::MAX));
            let sampled = rng.random_bool(0.5);
            let cx = Context::new().with_remote_span_context(remote(trace_id, span_id, sampled));
            for format in [B3Format::Single, B3Format::Multi] {
                let mut headers: HashMap<String, String> = HashMap::new();
                let propagator = B3Propagator::new(format);
                propagator.inject_context(&cx, &mut headers);
                let fields: Vec<&str> = propagator.fields().collect();
                assert!(
                    headers.keys().all(|k| fields.contains(&k.as_str())),
                    "{headers:?}"
                );
                let back = B3Propagator::new(B3Format::Single).extract(&headers);
                let span = back.span();
                let context = span.span_context();
                assert_eq!(context.trace_id(), trace_id, "{format:?}");
                assert_eq!(context.span_id(), span_id, "{format:?}");
                assert_eq!(context.is_sampled(), sampled, "{format:?}");
            }
        }
    }

    #[test]
    fn random_text_never_panics_or_invents_a_context() {
        use rand::Rng;
        let mut rng = rand::rng();
        let alphabet = b"0123456789abcdefABCDEF-xz ";
        for _ in 0..2_000 {
            let len = rng.random_range(0..80);
            let text: String = (0..len)
                .map(|_| alphabet[rng.random_range(0..alphabet.len())] as char)
                .collect();
            if let Some(context) = extract(&[("b3", &text)]) {
                assert!(context.is_valid(), "{text:?}");
                assert_ne!(context.trace_id(), TraceId::INVALID);
            }
        }
    }
}
