//! Observability for Keel servers and clients: [`observe`] (one tower layer a side for
//! Prometheus metrics, "finished call" logs and OpenTelemetry spans), [`logging`] (the
//! process's log output), [`process`] (CPU, memory and descriptor metrics), and the
//! OpenTelemetry setup below. The only Keel crate that pulls in the OpenTelemetry SDK and
//! `prometheus-client`: a client or gateway that does not observe does not compile them.
//!
//! # OpenTelemetry, configured by the standard `OTEL_*` environment variables
//!
//! [`init`] installs the global tracer provider and propagator that Keel's observability
//! layers use:
//! - **Export** over OTLP/gRPC when `OTEL_TRACES_EXPORTER=otlp` or an endpoint is set
//!   (`OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; the exporter reads
//!   them, and `OTEL_EXPORTER_OTLP_TIMEOUT`, `..._HEADERS`, itself). Not exporting by default
//!   keeps a server without a collector from logging connection errors for ever.
//!   Keel's own RPC spans take a leaner path than the SDK's to the same collector
//!   (`recorder`, `otlp`; the batching variables `OTEL_BSP_*` apply to both).
//! - **Sampling** by `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (e.g.
//!   `parentbased_traceidratio` and `0.1`), default `parentbased_always_on`, for Keel's spans
//!   and the SDK's alike. Without export no SDK runs: calls still get span ids (children of
//!   the caller's, keeping its sampling flag), so logs carry trace ids and outgoing calls
//!   pass the trace on.
//! - **Propagation** by `OTEL_PROPAGATORS`: `tracecontext` (W3C `traceparent`/`tracestate`),
//!   `baggage`, `b3` (B3 single header) and `b3multi` (`X-B3-*` headers), default
//!   `tracecontext,baggage,b3`. Every B3 propagator reads both B3 forms; the list decides
//!   what outgoing calls write.
//! - **Resource**: `OTEL_SERVICE_NAME` (else the binary's name) and `OTEL_RESOURCE_ATTRIBUTES`.
//! - `OTEL_SDK_DISABLED=true` turns spans off; propagation still works.

mod app_spans;
mod b3;
pub mod logging;
pub mod observe;
mod otlp;
pub mod process;
pub(crate) mod recorder;
mod sampler;
mod traces;

pub use app_spans::{AppSpan, AppSpans, Pairs, PairsMut};
pub use b3::{B3Format, B3Propagator};
pub use traces::Traces;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use opentelemetry_sdk::trace::SdkTracerProvider;

use recorder::{ExportSettings, SpanRecorder};
use sampler::Sampler;
use traces::SpanSource;

/// Set by [`init`] when nothing is exported: observers then mint span ids themselves
/// instead of going through the SDK (see `observe::spans`).
static IDS_ONLY: AtomicBool = AtomicBool::new(false);

/// True when [`init`] found nothing to export.
pub(crate) fn ids_only() -> bool {
    IDS_ONLY.load(Ordering::Relaxed)
}

/// Set by [`init`] when spans are exported: where Keel's RPC spans go.
static RECORDER: Mutex<Option<Arc<SpanRecorder>>> = Mutex::new(None);

/// The recorder for Keel's RPC spans, when spans are exported.
pub(crate) fn recorder() -> Option<Arc<SpanRecorder>> {
    RECORDER
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone()
}

/// A telemetry setting that cannot be used, naming the variable and what it accepts.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TelemetryError(String);

/// Keeps the tracer provider and Keel's span recorder; dropping it (or
/// [`Telemetry::shutdown`]) flushes the spans still queued for export.
#[derive(Debug)]
#[must_use = "dropping it shuts tracing down"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
    recorder: Option<Arc<SpanRecorder>>,
    exporting: bool,
    traces: Traces,
}

impl Telemetry {
    /// This telemetry's tracing, for a server's or client's builder: its recorder (and the
    /// recorder's sampler) and its propagators.
    pub fn traces(&self) -> Traces {
        self.traces.clone()
    }

    /// True when spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.exporting
    }

    /// Exports the spans queued so far, waiting for the exporter.
    pub fn flush(&self) {
        if let Some(recorder) = &self.recorder
            && !recorder.flush()
        {
            tracing::warn!("flushing Keel's spans did not finish in time");
        }
        if let Some(provider) = &self.provider
            && let Err(error) = provider.force_flush()
        {
            tracing::warn!(%error, "flushing spans failed");
        }
    }

    /// Exports what is queued and stops the provider.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        if let Some(recorder) = self.recorder.take() {
            let mut installed = RECORDER.lock().unwrap_or_else(PoisonError::into_inner);
            if installed
                .as_ref()
                .is_some_and(|it| Arc::ptr_eq(it, &recorder))
            {
                *installed = None;
            }
            drop(installed);
            if !recorder.stop() {
                tracing::warn!("flushing Keel's spans at shutdown did not finish in time");
            }
        }
        if let Some(provider) = self.provider.take()
            && let Err(error) = provider.shutdown()
        {
            tracing::warn!(%error, "flushing spans at shutdown failed");
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reads the `OTEL_*` variables and installs the global propagator and tracer provider.
/// `service_name` is used unless `OTEL_SERVICE_NAME` is set. Call it once, inside the Tokio
/// runtime (the exporter runs on it), before building servers and clients.
pub fn init(service_name: &str) -> Result<Telemetry, TelemetryError> {
    init_with(service_name, |name| std::env::var(name).ok())
}

/// [`init`] reading the `OTEL_*` settings from `var` instead of the environment (for tests
/// and embedders that configure telemetry from their own settings).
pub fn init_with(
    service_name: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Telemetry, TelemetryError> {
    build(service_name, &var, Scope::Global)
}

/// Telemetry for the servers and clients given its [`Telemetry::traces`], configured by
/// settings named and spelled as the `OTEL_*` variables but read from `var`, leaving the
/// process's globals alone: what two servers in one process that export to different
/// collectors, or sample differently, each get.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// let telemetry = keel_telemetry::from_settings("ledger", |name| match name {
///     "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4317".into()),
///     "OTEL_TRACES_SAMPLER" => Some("traceidratio".into()),
///     "OTEL_TRACES_SAMPLER_ARG" => Some("0.25".into()),
///     _ => None,
/// })?;
/// let traces = telemetry.traces(); // hand to a server's or client's builder
/// # let _ = traces;
/// # Ok(()) }
/// ```
pub fn from_settings(
    service_name: &str,
    var: impl Fn(&str) -> Option<String>,
) -> Result<Telemetry, TelemetryError> {
    build(service_name, &var, Scope::Own)
}

/// Whether a [`Telemetry`] becomes the process's default.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// Installed as the global propagator, tracer provider and span recorder.
    Global,
    /// Only for the servers and clients given its [`Telemetry::traces`].
    Own,
}

fn build(
    service_name: &str,
    var: &dyn Fn(&str) -> Option<String>,
    scope: Scope,
) -> Result<Telemetry, TelemetryError> {
    let propagators = var("OTEL_PROPAGATORS").unwrap_or_else(|| "tracecontext,baggage,b3".into());
    let own_propagator: Arc<dyn TextMapPropagator + Send + Sync> =
        Arc::new(propagator(&propagators)?);
    if scope == Scope::Global {
        opentelemetry::global::set_text_map_propagator(propagator(&propagators)?);
    }
    let ids_only = |scope: Scope| {
        if scope == Scope::Global {
            IDS_ONLY.store(true, Ordering::Relaxed);
        }
        Telemetry {
            provider: None,
            recorder: None,
            exporting: false,
            traces: Traces::new(SpanSource::IdsOnly, own_propagator.clone()),
        }
    };

    if var("OTEL_SDK_DISABLED").is_some_and(|value| value.eq_ignore_ascii_case("true")) {
        return Ok(ids_only(scope));
    }
    let exporting = match var("OTEL_TRACES_EXPORTER").as_deref() {
        Some("otlp") => true,
        Some("none") => false,
        Some(other) => {
            return Err(TelemetryError(format!(
                "OTEL_TRACES_EXPORTER={other:?} is not supported; use `otlp` or `none`"
            )));
        }
        None => {
            var("OTEL_EXPORTER_OTLP_ENDPOINT").is_some()
                || var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").is_some()
        }
    };

    let sampler = Sampler::parse(
        var("OTEL_TRACES_SAMPLER").as_deref(),
        var("OTEL_TRACES_SAMPLER_ARG").as_deref(),
    )?;
    if !exporting {
        return Ok(ids_only(scope));
    }

    let mut resource = opentelemetry_sdk::Resource::builder();
    if let Some(name) = var("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name(name);
    } else {
        resource = resource.with_service_name(service_name.to_owned());
    }
    let resource = resource.build();
    let recorder = SpanRecorder::start(
        ExportSettings::from_vars(&var)?,
        sampler,
        otlp::resource(resource.iter().map(|(key, value)| (key.as_str(), value))),
    )?;
    let traces = Traces::new(SpanSource::Recorder(recorder.clone()), own_propagator);
    if scope == Scope::Own {
        return Ok(Telemetry {
            provider: None,
            recorder: Some(recorder),
            exporting,
            traces,
        });
    }

    // The SDK's provider, for the embedder's own spans through the global tracer.
    let mut exporter = opentelemetry_otlp::SpanExporter::builder().with_tonic();
    if let Some(endpoint) =
        var("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT").or_else(|| var("OTEL_EXPORTER_OTLP_ENDPOINT"))
    {
        exporter = exporter.with_endpoint(endpoint);
    }
    let exporter = exporter
        .build()
        .map_err(|error| TelemetryError(format!("cannot set up the OTLP exporter: {error}")))?;
    let processor =
        opentelemetry_sdk::trace::span_processor_with_async_runtime::BatchSpanProcessor::builder(
            exporter,
            opentelemetry_sdk::runtime::Tokio,
        )
        .build();
    let provider = SdkTracerProvider::builder()
        .with_resource(resource)
        .with_sampler(sampler.to_sdk())
        .with_span_processor(processor)
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    IDS_ONLY.store(false, Ordering::Relaxed);
    *RECORDER.lock().unwrap_or_else(PoisonError::into_inner) = Some(recorder.clone());
    Ok(Telemetry {
        provider: Some(provider),
        recorder: Some(recorder),
        exporting,
        traces,
    })
}

/// The composite propagator an `OTEL_PROPAGATORS` value names.
fn propagator(list: &str) -> Result<TextMapCompositePropagator, TelemetryError> {
    let mut propagators: Vec<Box<dyn TextMapPropagator + Send + Sync>> = Vec::new();
    for name in list
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        propagators.push(match name {
            "tracecontext" => Box::new(TraceContextPropagator::new()),
            "baggage" => Box::new(BaggagePropagator::new()),
            "b3" => Box::new(B3Propagator::new(B3Format::Single)),
            "b3multi" => Box::new(B3Propagator::new(B3Format::Multi)),
            "none" => continue,
            other => {
                return Err(TelemetryError(format!(
                    "OTEL_PROPAGATORS names {other:?}; supported: tracecontext, baggage, b3, \
                     b3multi, none"
                )));
            }
        });
    }
    Ok(TextMapCompositePropagator::new(propagators))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_settings_name_their_variable() {
        let error = propagator("tracecontext,xray").unwrap_err().to_string();
        assert!(
            error.contains("OTEL_PROPAGATORS") && error.contains("xray"),
            "{error}"
        );
        let error = init_with("t", |name| {
            (name == "OTEL_TRACES_EXPORTER").then(|| "zipkin".to_owned())
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains("OTEL_TRACES_EXPORTER"), "{error}");
    }

    #[test]
    fn every_supported_propagator_is_accepted() {
        let composite = propagator("tracecontext, baggage,b3,b3multi,none").unwrap();
        let fields: Vec<&str> = composite.fields().collect();
        for field in ["traceparent", "tracestate", "baggage", "b3", "x-b3-traceid"] {
            assert!(fields.contains(&field), "{field} missing from {fields:?}");
        }
    }
}
