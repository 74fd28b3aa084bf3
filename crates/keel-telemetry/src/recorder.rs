//! Keel's own path for its RPC spans when they are exported: sampled spans are kept as
//! compact records, queued, and sent in batches over OTLP/gRPC by one background task.
//!
//! It does what the SDK's span, batch processor and OTLP exporter do for these spans, at a
//! fraction of the cost (docs/BENCHMARKS.md, "Observability's cost"). It reads the same
//! settings: `OTEL_BSP_SCHEDULE_DELAY` (ms, default 5000), `OTEL_BSP_MAX_QUEUE_SIZE` (2048;
//! spans beyond it are dropped and counted in a warning), `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
//! (512), `OTEL_EXPORTER_OTLP[_TRACES]_ENDPOINT` (default `http://localhost:4317`),
//! `OTEL_EXPORTER_OTLP[_TRACES]_HEADERS` (`key=value,...`, values percent-encoded) and
//! `OTEL_EXPORTER_OTLP[_TRACES]_TIMEOUT` (ms, default 10000). Spans an application makes
//! itself still go through the SDK, to the same endpoint.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime};

use opentelemetry::KeyValue;
use opentelemetry::trace::{SpanId, SpanKind, TraceId};
use tokio::sync::{Notify, mpsc};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::transport::{Channel, Endpoint};

use super::TelemetryError;
use super::otlp::{EXPORT_PATH, EncodedCodec, export_request};
use super::sampler::Sampler;
use keel_core::status_check::CheckStatus;

/// A finished span, as exported.
#[derive(Debug, Clone)]
pub(crate) struct RecordedSpan {
    pub(crate) trace_id: TraceId,
    pub(crate) span_id: SpanId,
    /// The parent span, if the span has one.
    pub(crate) parent: Option<SpanId>,
    /// True when the parent's context came from another process (the caller of a server).
    pub(crate) parent_is_remote: bool,
    /// The W3C `tracestate` the trace carries, as a header value.
    pub(crate) trace_state: String,
    pub(crate) name: &'static str,
    pub(crate) kind: SpanKind,
    pub(crate) start: SystemTime,
    pub(crate) end: SystemTime,
    pub(crate) attributes: Vec<KeyValue>,
    pub(crate) events: Vec<SpanEvent>,
    /// The error status's message; `None` leaves the status unset.
    pub(crate) error: Option<String>,
}

/// Something that happened during a span.
#[derive(Debug, Clone)]
pub(crate) struct SpanEvent {
    pub(crate) name: &'static str,
    pub(crate) time: SystemTime,
    pub(crate) attributes: Vec<KeyValue>,
}

/// Where exported spans go and how they are batched.
#[derive(Debug, Clone)]
pub(crate) struct ExportSettings {
    endpoint: String,
    headers: MetadataMap,
    timeout: Duration,
    schedule_delay: Duration,
    max_queue: usize,
    max_batch: usize,
}

impl ExportSettings {
    /// The settings the `OTEL_*` variables `var` gives.
    pub(crate) fn from_vars(var: &impl Fn(&str) -> Option<String>) -> Result<Self, TelemetryError> {
        let either = |name: &str| {
            var(&format!("OTEL_EXPORTER_OTLP_TRACES_{name}"))
                .map(|value| (format!("OTEL_EXPORTER_OTLP_TRACES_{name}"), value))
                .or_else(|| {
                    var(&format!("OTEL_EXPORTER_OTLP_{name}"))
                        .map(|value| (format!("OTEL_EXPORTER_OTLP_{name}"), value))
                })
        };
        let number = |name: &str, value: String| -> Result<u64, TelemetryError> {
            value
                .trim()
                .parse()
                .map_err(|_| TelemetryError(format!("{name}={value:?} is not a whole number")))
        };
        let endpoint = either("ENDPOINT")
            .map_or_else(|| "http://localhost:4317".to_owned(), |(_, value)| value);
        if !endpoint.starts_with("http://") {
            return Err(TelemetryError(format!(
                "the OTLP endpoint {endpoint:?} is not supported: Keel exports over plain \
                 HTTP/2 to an `http://host:port` collector (TLS to the collector is not \
                 available yet; run a local collector or sidecar)"
            )));
        }
        let headers = match either("HEADERS") {
            Some((name, value)) => parse_headers(&name, &value)?,
            None => MetadataMap::new(),
        };
        let timeout = match either("TIMEOUT") {
            Some((name, value)) => Duration::from_millis(number(&name, value)?),
            None => Duration::from_secs(10),
        };
        let setting = |name: &str, default: u64| match var(name) {
            Some(value) => number(name, value),
            None => Ok(default),
        };
        Ok(Self {
            endpoint,
            headers,
            timeout,
            schedule_delay: Duration::from_millis(setting("OTEL_BSP_SCHEDULE_DELAY", 5000)?),
            max_queue: setting("OTEL_BSP_MAX_QUEUE_SIZE", 2048)?.max(1) as usize,
            max_batch: setting("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", 512)?.max(1) as usize,
        })
    }
}

/// `key=value,key2=value2` with percent-encoded values, as gRPC metadata.
fn parse_headers(name: &str, list: &str) -> Result<MetadataMap, TelemetryError> {
    let mut headers = MetadataMap::new();
    for pair in list
        .split(',')
        .map(str::trim)
        .filter(|pair| !pair.is_empty())
    {
        let bad = || TelemetryError(format!("{name} has {pair:?}; write key=value pairs"));
        let (key, value) = pair.split_once('=').ok_or_else(bad)?;
        let key = MetadataKey::from_bytes(key.trim().to_ascii_lowercase().as_bytes())
            .map_err(|_| bad())?;
        let value =
            MetadataValue::try_from(percent_decode(value.trim()).as_str()).map_err(|_| bad())?;
        headers.insert(key, value);
    }
    Ok(headers)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|pair| std::str::from_utf8(pair).ok())
            .and_then(|pair| u8::from_str_radix(pair, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// What the export task is asked to do besides its periodic export.
enum Command {
    /// Export everything queued, then answer.
    Flush(std::sync::mpsc::Sender<()>),
    /// Export everything queued, answer, and stop.
    Stop(std::sync::mpsc::Sender<()>),
}

/// The queue of finished spans and the handle of the task that exports them.
#[derive(Debug)]
pub(crate) struct SpanRecorder {
    /// Which traces are recorded.
    pub(crate) sampler: Sampler,
    queue: Mutex<Vec<RecordedSpan>>,
    max_queue: usize,
    max_batch: usize,
    /// Woken when a full batch is queued.
    batch_ready: Notify,
    dropped: AtomicU64,
    commands: mpsc::UnboundedSender<Command>,
    timeout: Duration,
}

impl std::fmt::Debug for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Flush(_) => "Flush",
            Self::Stop(_) => "Stop",
        })
    }
}

impl SpanRecorder {
    /// A recorder exporting per `settings` with `resource` (an encoded OTLP `Resource`),
    /// and its export task spawned on the current Tokio runtime.
    pub(crate) fn start(
        settings: ExportSettings,
        sampler: Sampler,
        resource: Vec<u8>,
    ) -> Result<Arc<Self>, TelemetryError> {
        let channel = Endpoint::from_shared(settings.endpoint.clone())
            .map_err(|error| {
                TelemetryError(format!(
                    "the OTLP endpoint {:?} is not a URI: {error}",
                    settings.endpoint
                ))
            })?
            .connect_timeout(settings.timeout)
            .connect_lazy();
        let (commands, receiver) = mpsc::unbounded_channel();
        let recorder = Arc::new(Self {
            sampler,
            queue: Mutex::new(Vec::new()),
            max_queue: settings.max_queue,
            max_batch: settings.max_batch,
            batch_ready: Notify::new(),
            dropped: AtomicU64::new(0),
            commands,
            timeout: settings.timeout,
        });
        let exporter = Exporter {
            grpc: tonic::client::Grpc::new(CheckStatus::new(channel)),
            headers: settings.headers,
            timeout: settings.timeout,
            resource,
            endpoint: settings.endpoint,
            failing: false,
        };
        tokio::spawn(run(
            recorder.clone(),
            exporter,
            receiver,
            settings.schedule_delay,
        ));
        Ok(recorder)
    }

    /// Queues a finished span; drops it when the queue is full.
    pub(crate) fn record(&self, span: RecordedSpan) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() >= self.max_queue {
            drop(queue);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push(span);
        let batch_ready = queue.len() == self.max_batch;
        drop(queue);
        if batch_ready {
            self.batch_ready.notify_one();
        }
    }

    /// Exports what is queued and waits for it (at most the export timeout, twice over);
    /// false if that did not finish. Blocks: call it outside async code or on a runtime
    /// with another worker thread.
    pub(crate) fn flush(&self) -> bool {
        self.ask(Command::Flush)
    }

    /// Exports what is queued and stops the export task.
    pub(crate) fn stop(&self) -> bool {
        self.ask(Command::Stop)
    }

    fn ask(&self, command: fn(std::sync::mpsc::Sender<()>) -> Command) -> bool {
        let (done, finished) = std::sync::mpsc::channel();
        self.commands.send(command(done)).is_ok() && finished.recv_timeout(self.timeout * 2).is_ok()
    }

    /// Up to one batch of queued spans, oldest first.
    fn take_batch(&self) -> Vec<RecordedSpan> {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        if queue.len() <= self.max_batch {
            std::mem::take(&mut *queue)
        } else {
            queue.drain(..self.max_batch).collect()
        }
    }
}

/// The export task: a batch when one is full, everything every `delay`, and on command.
async fn run(
    recorder: Arc<SpanRecorder>,
    mut exporter: Exporter,
    mut commands: mpsc::UnboundedReceiver<Command>,
    delay: Duration,
) {
    loop {
        let command = tokio::select! {
            command = commands.recv() => command,
            () = recorder.batch_ready.notified() => None,
            () = tokio::time::sleep(delay) => None,
        };
        loop {
            let batch = recorder.take_batch();
            if !batch.is_empty() {
                exporter.export(&batch).await;
            }
            if batch.len() < recorder.max_batch {
                break;
            }
        }
        let dropped = recorder.dropped.swap(0, Ordering::Relaxed);
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "the span export queue was full and spans were dropped; raise \
                 OTEL_BSP_MAX_QUEUE_SIZE or sample fewer traces (OTEL_TRACES_SAMPLER_ARG)"
            );
        }
        match command {
            Some(Command::Flush(done)) => {
                let _ = done.send(());
            }
            Some(Command::Stop(done)) => {
                let _ = done.send(());
                return;
            }
            None => {}
        }
    }
}

/// Sends batches to the collector.
struct Exporter {
    /// tonic's channel, with the collector's statuses checked: no collector can panic
    /// the export task.
    grpc: tonic::client::Grpc<CheckStatus<Channel>>,
    headers: MetadataMap,
    timeout: Duration,
    /// The encoded OTLP `Resource` every batch carries.
    resource: Vec<u8>,
    endpoint: String,
    /// True after a failed export, to warn once per outage rather than every batch.
    failing: bool,
}

impl Exporter {
    async fn export(&mut self, spans: &[RecordedSpan]) {
        let body = export_request(&self.resource, "keel", env!("CARGO_PKG_VERSION"), spans);
        let mut request = tonic::Request::new(body);
        *request.metadata_mut() = self.headers.clone();
        request.set_timeout(self.timeout);
        let grpc = &mut self.grpc;
        let sent = tokio::time::timeout(self.timeout, async {
            grpc.ready()
                .await
                .map_err(|error| tonic::Status::unavailable(error.to_string()))?;
            let path = http::uri::PathAndQuery::from_static(EXPORT_PATH);
            grpc.unary(request, path, EncodedCodec).await
        })
        .await;
        let outcome = match sent {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err(format!("no answer within {:?}", self.timeout)),
        };
        match outcome {
            Ok(()) if self.failing => {
                self.failing = false;
                tracing::info!(endpoint = %self.endpoint, "span export works again");
            }
            Ok(()) => {}
            Err(error) => {
                if !std::mem::replace(&mut self.failing, true) {
                    tracing::warn!(
                        endpoint = %self.endpoint,
                        %error,
                        spans = spans.len(),
                        "exporting spans failed; spans are dropped until the collector answers"
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<ExportSettings, TelemetryError> {
        ExportSettings::from_vars(&|name: &str| {
            vars.iter()
                .find(|(key, _)| *key == name)
                .map(|(_, value)| (*value).to_owned())
        })
    }

    #[test]
    fn traces_settings_win_over_general_ones() {
        let settings = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://general:4317"),
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://traces:4317"),
            ("OTEL_EXPORTER_OTLP_HEADERS", "api-key=a%20b, x-tenant = t1"),
            ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "250"),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", "8"),
        ])
        .unwrap();
        assert_eq!(settings.endpoint, "http://traces:4317");
        assert_eq!(settings.headers.get("api-key").unwrap(), "a b");
        assert_eq!(settings.headers.get("x-tenant").unwrap(), "t1");
        assert_eq!(settings.timeout, Duration::from_millis(250));
        assert_eq!((settings.max_batch, settings.max_queue), (8, 2048));
        assert_eq!(settings.schedule_delay, Duration::from_secs(5));
    }

    #[test]
    fn unusable_settings_name_their_variable() {
        let error = settings(&[("OTEL_BSP_MAX_QUEUE_SIZE", "lots")]).unwrap_err();
        assert!(
            error.to_string().contains("OTEL_BSP_MAX_QUEUE_SIZE"),
            "{error}"
        );
        let error = settings(&[("OTEL_EXPORTER_OTLP_HEADERS", "novalue")]).unwrap_err();
        assert!(
            error.to_string().contains("OTEL_EXPORTER_OTLP_HEADERS"),
            "{error}"
        );
        let error = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "https://c:4317")]).unwrap_err();
        assert!(error.to_string().contains("http://"), "{error}");
    }

    fn span(n: u64) -> RecordedSpan {
        RecordedSpan {
            trace_id: TraceId::from(u128::from(n)),
            span_id: SpanId::from(n),
            parent: None,
            parent_is_remote: false,
            trace_state: String::new(),
            name: "test/span",
            kind: SpanKind::Internal,
            start: SystemTime::now(),
            end: SystemTime::now(),
            attributes: Vec::new(),
            events: Vec::new(),
            error: None,
        }
    }

    fn recorder(endpoint: &str, batch: &str, queue: &str) -> Arc<SpanRecorder> {
        let vars = [
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
            ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE", batch),
            ("OTEL_BSP_MAX_QUEUE_SIZE", queue),
            ("OTEL_BSP_SCHEDULE_DELAY", "3600000"),
        ];
        SpanRecorder::start(settings(&vars).unwrap(), Sampler::AlwaysOn, Vec::new()).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_batch_is_sent_without_waiting_for_the_schedule() {
        let (collector, endpoint) = keel_interop::otlp::OtlpCollector::start().await;
        let recorder = recorder(&endpoint, "3", "100");
        for n in 1..=3 {
            recorder.record(span(n));
        }
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while collector.spans().len() < 3 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the batch was not sent"
            );
            // sleep: poll interval of a bounded poll on the condition
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let ids: Vec<Vec<u8>> = collector
            .spans()
            .into_iter()
            .map(|c| c.span.span_id)
            .collect();
        assert_eq!(
            ids,
            (1..=3_u64)
                .map(|n| n.to_be_bytes().to_vec())
                .collect::<Vec<_>>()
        );
        let stopping = recorder.clone();
        assert!(
            tokio::task::spawn_blocking(move || stopping.stop())
                .await
                .unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_queue_drops_and_counts_and_flush_sends_the_rest() {
        let (collector, endpoint) = keel_interop::otlp::OtlpCollector::start().await;
        let recorder = recorder(&endpoint, "100", "3");
        for n in 1..=5 {
            recorder.record(span(n));
        }
        assert_eq!(recorder.dropped.load(Ordering::Relaxed), 2);
        assert!(
            collector.spans().is_empty(),
            "nothing is sent before a batch fills"
        );
        let flushing = recorder.clone();
        assert!(
            tokio::task::spawn_blocking(move || flushing.flush())
                .await
                .unwrap()
        );
        assert_eq!(collector.spans().len(), 3);
        let stopping = recorder.clone();
        assert!(
            tokio::task::spawn_blocking(move || stopping.stop())
                .await
                .unwrap()
        );
        let flushing = recorder.clone();
        assert!(
            !tokio::task::spawn_blocking(move || flushing.flush())
                .await
                .unwrap(),
            "a stopped recorder says its flush did not happen"
        );
    }

    #[test]
    fn percent_decoding_keeps_what_is_not_an_escape() {
        assert_eq!(percent_decode("a%3Db%2"), "a=b%2");
        assert_eq!(percent_decode("%zz%41"), "%zzA");
    }
}
