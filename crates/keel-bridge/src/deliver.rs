//! The deliver stage: log in, gRPC out, and a record done only after its final outcome.
//!
//! Records wait in their device's [lane](Lanes), so one device's calls reach the target in
//! order, with at most `max_in_flight` records held at once. Each call carries the record's
//! idempotency key (`idempotency-key` metadata) and trace context, under a deadline. A status
//! in `retry_codes` is retried with the same key after a growing pause, or the pause the
//! target asked for in `google.rpc.RetryInfo`, for as long as it takes: a target that is down
//! stops the stage, it does not lose requests. Any other status is final. The outcome is
//! published on the record's response topic as JSON; a final status in `dead_letter_codes`
//! also goes to the dead-letter queue. Only then is the record done.
//!
//! Each record's delivery is a span ([`BridgeSpans::deliver`]) under the trace context the
//! record carries; every call carries the span's context, so the target's span is its child.

use std::str::FromStr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, Bytes};
use futures_util::FutureExt as _;
use http::uri::PathAndQuery;
use opentelemetry::Context;
use prost_reflect::{DescriptorPool, DynamicMessage, MessageDescriptor, SerializeOptions};
use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::PublishProperties;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tonic::client::GrpcService;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::metadata::{AsciiMetadataValue, MetadataKey};
use tonic::{Code, Request, Status};

use crate::lanes::Lanes;
use crate::log::{DeadLetter, Delivery, LogError, LogReader, LogWriter};
use crate::metrics::BridgeMetrics;
use crate::record::{Record, header};
use crate::spans::BridgeSpans;

/// How the deliver stage calls the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DeliverConfig {
    /// Records held at once: being called, or waiting behind their device's earlier ones
    /// (default 64).
    pub max_in_flight: usize,
    /// Deadline of one call (default 10 s).
    #[serde(with = "humantime_serde")]
    pub deadline: Duration,
    /// First pause before retrying (default 100 ms); it doubles up to `retry_max_pause`.
    #[serde(with = "humantime_serde")]
    pub retry_pause: Duration,
    /// Longest pause between retries, also the cap on a RetryInfo delay (default 10 s).
    #[serde(with = "humantime_serde")]
    pub retry_max_pause: Duration,
    /// Codes retried with the same key (default UNAVAILABLE, RESOURCE_EXHAUSTED,
    /// DEADLINE_EXCEEDED, ABORTED: each leaves the request safe to repeat under its key).
    pub retry_codes: Vec<String>,
    /// Final codes that also go to the dead-letter queue: the request is poison, not a
    /// business answer (default INVALID_ARGUMENT, UNIMPLEMENTED, INTERNAL, UNKNOWN,
    /// DATA_LOSS). Business errors such as FAILED_PRECONDITION are published to the device
    /// and not kept.
    pub dead_letter_codes: Vec<String>,
}

impl Default for DeliverConfig {
    fn default() -> Self {
        let codes = |list: &[&str]| list.iter().map(|code| (*code).to_owned()).collect();
        Self {
            max_in_flight: 64,
            deadline: Duration::from_secs(10),
            retry_pause: Duration::from_millis(100),
            retry_max_pause: Duration::from_secs(10),
            retry_codes: codes(&[
                "UNAVAILABLE",
                "RESOURCE_EXHAUSTED",
                "DEADLINE_EXCEEDED",
                "ABORTED",
            ]),
            dead_letter_codes: codes(&[
                "INVALID_ARGUMENT",
                "UNIMPLEMENTED",
                "INTERNAL",
                "UNKNOWN",
                "DATA_LOSS",
            ]),
        }
    }
}

/// A route as the deliver stage needs it.
#[derive(Debug, Clone)]
pub struct Target {
    /// The route's name, as records carry it.
    pub route: String,
    /// `/package.Service/Method`.
    pub path: PathAndQuery,
    /// The method's output type, to publish responses as JSON.
    pub output: MessageDescriptor,
}

/// Everything a call needs, shared by the stage's tasks.
struct Shared<C, W> {
    channel: C,
    targets: Vec<Target>,
    pool: DescriptorPool,
    writer: Arc<W>,
    responses: Option<AsyncClient>,
    metrics: BridgeMetrics,
    spans: Arc<BridgeSpans>,
    retry_codes: Vec<Code>,
    dead_letter_codes: Vec<Code>,
    config: DeliverConfig,
}

/// The deliver stage, ready to run.
pub struct Deliver<C, W> {
    shared: Arc<Shared<C, W>>,
}

impl<C, W> Deliver<C, W>
where
    C: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
    W: LogWriter,
{
    /// A stage calling `targets` through `channel` (Keel's channel in production), with
    /// `pool` to write responses and status details as JSON, dead-lettering through `writer`,
    /// publishing outcomes through `responses` (none: outcomes are not published) and
    /// tracing each delivery with `spans`.
    #[allow(
        clippy::too_many_arguments,
        reason = "eight collaborators, each its own: a struct of them would only rename this list"
    )]
    pub fn new(
        config: DeliverConfig,
        channel: C,
        targets: Vec<Target>,
        pool: DescriptorPool,
        writer: Arc<W>,
        responses: Option<AsyncClient>,
        metrics: BridgeMetrics,
        spans: Arc<BridgeSpans>,
    ) -> Result<Self, String> {
        let parse = |key: &str, names: &[String]| {
            names
                .iter()
                .map(|name| {
                    code_from_name(name).ok_or_else(|| {
                        format!(
                            "{key}: {name:?} is not a gRPC status code name such as UNAVAILABLE"
                        )
                    })
                })
                .collect::<Result<Vec<_>, _>>()
        };
        let retry_codes = parse("retry_codes", &config.retry_codes)?;
        let dead_letter_codes = parse("dead_letter_codes", &config.dead_letter_codes)?;
        if retry_codes.contains(&Code::Ok) {
            return Err("retry_codes: OK is not an error to retry".into());
        }
        Ok(Self {
            shared: Arc::new(Shared {
                channel,
                targets,
                pool,
                writer,
                responses,
                metrics,
                spans,
                retry_codes,
                dead_letter_codes,
                config,
            }),
        })
    }

    /// Runs until `shutdown` completes (finishing the calls under way), reading `reader`.
    pub async fn run<R: LogReader>(
        self,
        mut reader: R,
        shutdown: impl Future<Output = ()>,
    ) -> Result<(), LogError> {
        let max_in_flight = self.shared.config.max_in_flight.max(1);
        let mut lanes: Lanes<String, Delivery<R::Token>> = Lanes::new();
        let mut running: JoinSet<(String, R::Token)> = JoinSet::new();
        tokio::pin!(shutdown);
        let mut stopping = false;
        loop {
            while let Some(finished) = running.try_join_next() {
                self.finish(finished, &mut reader, &mut lanes, &mut running)
                    .await?;
            }
            if !stopping && (&mut shutdown).now_or_never().is_some() {
                stopping = true;
            }
            if stopping {
                if running.is_empty() {
                    return Ok(());
                }
                if let Some(finished) = running.join_next().await {
                    self.finish(finished, &mut reader, &mut lanes, &mut running)
                        .await?;
                }
                continue;
            }
            let room = max_in_flight.saturating_sub(lanes.len());
            if room == 0 {
                tokio::select! {
                    Some(finished) = running.join_next() => {
                        self.finish(finished, &mut reader, &mut lanes, &mut running).await?;
                    }
                    () = &mut shutdown => stopping = true,
                }
                continue;
            }
            // Short waits while calls are under way, so their lanes move on promptly.
            let wait = if lanes.is_empty() {
                Duration::from_millis(500)
            } else {
                Duration::from_millis(5)
            };
            let deliveries = match reader.next(room, wait).await {
                Ok(deliveries) => deliveries,
                Err(LogError::Unavailable(reason)) => {
                    tracing::warn!(%reason, "bridge: the log is unavailable to read; retrying");
                    // sleep: the pause before reading a log that is down again
                    tokio::time::sleep(self.shared.config.retry_pause).await;
                    continue;
                }
                Err(refused) => return Err(refused),
            };
            for delivery in deliveries {
                let device = delivery.record.device.clone();
                if let Some(start) = lanes.push(&device, delivery) {
                    running.spawn(deliver(self.shared.clone(), start));
                }
            }
            self.shared.metrics.set_in_flight("deliver", lanes.len());
            if let Ok(Some(lag)) = reader.lag().await {
                self.shared.metrics.set_consumer_lag(lag);
            }
        }
    }

    async fn finish<R: LogReader>(
        &self,
        finished: Result<(String, R::Token), tokio::task::JoinError>,
        reader: &mut R,
        lanes: &mut Lanes<String, Delivery<R::Token>>,
        running: &mut JoinSet<(String, R::Token)>,
    ) -> Result<(), LogError> {
        let (device, token) = finished
            .map_err(|error| LogError::Refused(format!("a delivery task failed: {error}")))?;
        let mut pause = self.shared.config.retry_pause;
        loop {
            match reader.done(token.clone()).await {
                Ok(()) => break,
                Err(LogError::Unavailable(reason)) => {
                    tracing::warn!(%reason, "bridge: cannot mark a record done; retrying");
                    // sleep: the pause before trying a log that is down again
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(self.shared.config.retry_max_pause);
                }
                Err(refused) => return Err(refused),
            }
        }
        if let Some(next) = lanes.finish(&device) {
            running.spawn(deliver(self.shared.clone(), next));
        }
        self.shared.metrics.set_in_flight("deliver", lanes.len());
        Ok(())
    }
}

/// Calls the target until the record's outcome is final, publishes it, dead-letters it if it
/// is poison; then hands the record back to be marked done.
async fn deliver<C, W, T>(shared: Arc<Shared<C, W>>, delivery: Delivery<T>) -> (String, T)
where
    C: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
    W: LogWriter,
{
    let Delivery { record, token } = delivery;
    let device = record.device.clone();
    let span = shared.spans.deliver(&record);
    let Some(target) = shared.targets.iter().find(|t| t.route == record.route) else {
        let letter = DeadLetter {
            detail: format!(
                "the record names route {:?}, which this bridge does not have",
                record.route
            ),
            record,
            reason: "NO_ROUTE".into(),
        };
        keep_dead_letter(&shared, &letter).await;
        BridgeSpans::delivered(span, None, 0, Some(&letter));
        return (device, token);
    };
    let (outcome, retries) = call_until_final(&shared, target, &record, span.context()).await;
    if outcome.is_ok() {
        crate::fault::reached(crate::fault::Point::AfterGrpcOk);
    }
    let code = outcome.as_ref().err().map_or(Code::Ok, Status::code);
    if let Some(received) = record
        .header(header::RECEIVED_AT_MS)
        .and_then(|ms| ms.parse::<u128>().ok())
    {
        let seconds = now_ms().saturating_sub(received) as f64 / 1000.0;
        shared.metrics.delivered(seconds);
    }
    let json = outcome_json(&shared.pool, target, &record, &outcome);
    publish_outcome(&shared, &record, &json).await;
    let mut letter = None;
    if let Err(status) = &outcome
        && shared.dead_letter_codes.contains(&code)
    {
        let kept = DeadLetter {
            record,
            reason: "TERMINAL_STATUS".into(),
            detail: json["status"].to_string(),
        };
        tracing::warn!(route = %target.route, code = ?status.code(), message = status.message(),
            "bridge: the target refused a request for good; dead-lettered");
        keep_dead_letter(&shared, &kept).await;
        letter = Some(kept);
    }
    BridgeSpans::delivered(span, Some(code), retries, letter.as_ref());
    (device, token)
}

/// One call after another, each under the delivery's context `cx`, until the status is
/// final (OK, or a code not in `retry_codes`); with the number of retries it took.
async fn call_until_final<C, W>(
    shared: &Shared<C, W>,
    target: &Target,
    record: &Record,
    cx: &Context,
) -> (Result<Bytes, Status>, u32)
where
    C: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut pause = shared.config.retry_pause;
    let mut retries = 0u32;
    loop {
        let outcome = call(shared, target, record, cx).await;
        let code = outcome.as_ref().err().map_or(Code::Ok, Status::code);
        shared.metrics.call(&target.route, code_name(code));
        match outcome {
            Err(status) if shared.retry_codes.contains(&status.code()) => {
                shared.metrics.retry(&target.route, code_name(code));
                let asked = retry_delay(&status);
                let wait = asked.unwrap_or(pause).min(shared.config.retry_max_pause);
                tracing::debug!(route = %target.route, key = %record.key, ?code, ?wait,
                    message = status.message(), "bridge: retrying");
                // sleep: the retry pause (or the target's RetryInfo delay)
                tokio::time::sleep(wait).await;
                pause = (pause * 2).min(shared.config.retry_max_pause);
                retries = retries.saturating_add(1);
            }
            final_outcome => return (final_outcome, retries),
        }
    }
}

/// One unary call with the record's key and the trace context `cx`, under the deadline.
async fn call<C, W>(
    shared: &Shared<C, W>,
    target: &Target,
    record: &Record,
    cx: &Context,
) -> Result<Bytes, Status>
where
    C: GrpcService<tonic::body::Body> + Clone + Send + Sync + 'static,
    C::Future: Send,
    C::ResponseBody: http_body::Body<Data = Bytes> + Send + 'static,
    <C::ResponseBody as http_body::Body>::Error: Into<tonic::codegen::StdError> + Send,
{
    let mut request = Request::new(record.payload.clone());
    let metadata = request.metadata_mut();
    if let Ok(key) = AsciiMetadataValue::from_str(&record.key) {
        metadata.insert(MetadataKey::from_static("idempotency-key"), key);
    }
    shared.spans.inject(cx, metadata);
    request.set_timeout(shared.config.deadline);
    let mut grpc = tonic::client::Grpc::new(shared.channel.clone());
    let attempt = async {
        grpc.ready().await.map_err(|error| {
            Status::unavailable(format!("the target is not ready: {}", error.into()))
        })?;
        grpc.unary(request, target.path.clone(), BytesCodec)
            .await
            .map(tonic::Response::into_inner)
    };
    tokio::time::timeout(shared.config.deadline, attempt)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("the call's deadline passed")))
}

/// The pause the target asked for with `google.rpc.RetryInfo`, if it did.
fn retry_delay(status: &Status) -> Option<Duration> {
    use tonic_types::StatusExt as _;
    status.get_details_retry_info()?.retry_delay
}

/// The outcome as published: the device, key and route, the status as `google.rpc.Status`
/// JSON, and on OK the response as proto3 JSON.
fn outcome_json(
    pool: &DescriptorPool,
    target: &Target,
    record: &Record,
    outcome: &Result<Bytes, Status>,
) -> serde_json::Value {
    let (status, response) = match outcome {
        Ok(bytes) => {
            let response = DynamicMessage::decode(target.output.clone(), bytes.clone())
                .ok()
                .and_then(|message| {
                    message
                        .serialize_with_options(
                            serde_json::value::Serializer,
                            &SerializeOptions::new(),
                        )
                        .ok()
                });
            (Status::ok(""), response)
        }
        Err(status) => (status.clone(), None),
    };
    let mut json = serde_json::json!({
        "device": record.device,
        "key": record.key,
        "route": record.route,
        "code": code_name(status.code()),
        "status": keel_dynamic::status_json(&status, Some(pool)),
    });
    if let Some(response) = response {
        json["response"] = response;
    }
    json
}

/// Publishes the outcome on the record's response topic, if it has one. The publish is
/// queued in the MQTT client, which sends it (QoS 1) once connected.
async fn publish_outcome<C, W>(shared: &Shared<C, W>, record: &Record, json: &serde_json::Value) {
    let (Some(client), Some(topic)) = (&shared.responses, record.header(header::RESPONSE_TOPIC))
    else {
        return;
    };
    let correlation_data = record.header(header::CORRELATION_DATA).and_then(|data| {
        use base64::Engine as _;
        base64::engine::general_purpose::STANDARD.decode(data).ok()
    });
    let properties = PublishProperties {
        content_type: Some("application/json".into()),
        correlation_data: correlation_data.map(Bytes::from),
        ..PublishProperties::default()
    };
    let payload = serde_json::to_vec(json).unwrap_or_default();
    if let Err(error) = client
        .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
        .await
    {
        tracing::warn!(%error, topic, "bridge: cannot publish an outcome");
    }
}

/// Stores a dead letter, retrying while the log is down.
async fn keep_dead_letter<C, W: LogWriter>(shared: &Shared<C, W>, letter: &DeadLetter) {
    let mut pause = shared.config.retry_pause;
    loop {
        match shared.writer.dead_letter(letter.clone()).await {
            Ok(()) => {
                shared
                    .metrics
                    .dead_lettered(&letter.record.route, &letter.reason);
                return;
            }
            Err(error) => {
                tracing::warn!(%error, "bridge: cannot store a dead letter; retrying");
                // sleep: the pause before trying a log that is down again
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(shared.config.retry_max_pause);
            }
        }
    }
}

/// The code's name as gRPC writes it: `UNAVAILABLE`, `OK`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

fn code_from_name(name: &str) -> Option<Code> {
    (0..=16)
        .map(Code::from_i32)
        .find(|code| code_name(*code).eq_ignore_ascii_case(name))
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

/// A codec that passes messages through as bytes: requests are already encoded in the log,
/// and responses are decoded only to publish them.
#[derive(Debug, Clone, Copy, Default)]
struct BytesCodec;

impl Codec for BytesCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = BytesCodec;
    type Decoder = BytesCodec;

    fn encoder(&mut self) -> Self {
        *self
    }

    fn decoder(&mut self) -> Self {
        *self
    }
}

impl Encoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for BytesCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_names_round_trip() {
        for number in 0..=16 {
            let code = Code::from_i32(number);
            assert_eq!(code_from_name(code_name(code)), Some(code));
        }
        assert_eq!(code_from_name("unavailable"), Some(Code::Unavailable));
        assert_eq!(code_from_name("NOPE"), None);
    }

    #[test]
    fn retry_info_sets_the_pause() {
        use tonic_types::{ErrorDetails, StatusExt as _};
        let status = Status::with_error_details(
            Code::Unavailable,
            "busy",
            ErrorDetails::with_retry_info(Some(Duration::from_millis(1500))),
        );
        assert_eq!(retry_delay(&status), Some(Duration::from_millis(1500)));
        assert_eq!(retry_delay(&Status::unavailable("down")), None);
    }
}
