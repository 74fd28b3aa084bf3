//! The request side of a REST call: the body (bounded in size, JSON only), the messages it
//! makes, and the metadata and deadline the call carries from the HTTP headers.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, StatusCode};
use http_body_util::BodyExt as _;
use keel_core::identity::PeerIdentity;
use prost_reflect::DynamicMessage;
use serde_json::value::RawValue;
use tonic::codegen::StdError;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::{Code, Status};

use crate::binding::{BindError, JsonOptions, request_message};
use crate::failure::Failure;
use crate::rules::Binding;

/// Headers every call passes on as metadata under their own name.
const PASSED_THROUGH: [&str; 8] = [
    "authorization",
    "idempotency-key",
    "traceparent",
    "tracestate",
    "baggage",
    "b3",
    "x-request-id",
    "user-agent",
];

/// The request body, at most `limit` bytes, if its content type is JSON (or unset).
pub(crate) async fn read_body<B>(
    body: B,
    headers: &HeaderMap,
    limit: usize,
) -> Result<Bytes, Failure>
where
    B: http_body::Body<Data = Bytes>,
    B::Error: Into<StdError>,
{
    let collected = http_body_util::Limited::new(body, limit)
        .collect()
        .await
        .map_err(|error| {
            if error
                .downcast_ref::<http_body_util::LengthLimitError>()
                .is_some()
            {
                Failure::TooLarge(limit)
            } else if let Some(status) = body_timeout(&*error) {
                Failure::TooSlow(status.message().to_owned())
            } else {
                Failure::client(
                    StatusCode::BAD_REQUEST,
                    format!("the request body could not be read: {error}"),
                )
            }
        })?
        .to_bytes();
    if !collected.is_empty()
        && let Some(content_type) = headers.get(CONTENT_TYPE)
    {
        let text = content_type
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase();
        let essence = text.split(';').next().unwrap_or_default().trim();
        let json = essence == "application/json"
            || (essence.starts_with("application/") && essence.ends_with("+json"));
        if !json && !essence.is_empty() {
            return Err(Failure::client(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("the body must be JSON (Content-Type: application/json), not {essence}"),
            ));
        }
    }
    Ok(collected)
}

/// The DEADLINE_EXCEEDED status in `error`'s chain: the server cut a body that arrived too
/// slowly (Keel's `connection.body_timeout`).
fn body_timeout<'a>(error: &'a (dyn std::error::Error + 'static)) -> Option<&'a Status> {
    std::iter::successors(Some(error), |error| error.source())
        .filter_map(|error| error.downcast_ref::<Status>())
        .find(|status| status.code() == Code::DeadlineExceeded)
}

/// The messages of a client-streaming call: the body holds one JSON object per message
/// (on lines of their own or simply one after another); each gets the path values too.
pub(crate) fn stream_messages(
    binding: &Binding,
    path_values: &[(&[String], String)],
    query: Option<&str>,
    body: &[u8],
    options: JsonOptions,
) -> Result<Vec<DynamicMessage>, Failure> {
    let mut messages = Vec::new();
    // Each message's own text, so that its numbers are read as written.
    for value in serde_json::Deserializer::from_slice(body).into_iter::<&RawValue>() {
        let value = value.map_err(|error| Failure::Bind(BindError::Syntax(error.to_string())))?;
        messages.push(request_message(
            binding,
            path_values,
            query,
            value.get().as_bytes(),
            options,
        )?);
    }
    if messages.is_empty() {
        messages.push(request_message(binding, path_values, query, &[], options)?);
    }
    Ok(messages)
}

/// The metadata a request carries to the service: `Grpc-Metadata-*` headers without their
/// prefix, and the headers passed through (`forward` besides [`PASSED_THROUGH`]).
pub(crate) fn metadata(headers: &HeaderMap, forward: &[HeaderName]) -> MetadataMap {
    let mut metadata = MetadataMap::new();
    for (name, value) in headers {
        let name = name.as_str();
        let key = if let Some(key) = name.strip_prefix("grpc-metadata-") {
            key
        } else if PASSED_THROUGH.contains(&name)
            || name.starts_with("x-b3-")
            || forward.iter().any(|allowed| allowed.as_str() == name)
        {
            name
        } else {
            continue;
        };
        if key.ends_with("-bin") {
            if let (Ok(key), Ok(value)) = (
                MetadataKey::from_bytes(key.as_bytes()),
                MetadataValue::try_from(value.as_bytes()),
            ) {
                metadata.append_bin(key, value);
            }
        } else if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_bytes()),
        ) {
            metadata.append(key, value);
        }
    }
    metadata
}

/// The call's deadline: `Grpc-Timeout` (gRPC's format) or `X-Server-Timeout` (seconds).
pub(crate) fn timeout(headers: &HeaderMap) -> Result<Option<Duration>, Failure> {
    if headers.contains_key("grpc-timeout") {
        return keel_core::context::parse_grpc_timeout(headers)
            .map(Some)
            .ok_or_else(|| {
                Failure::client(
                    StatusCode::BAD_REQUEST,
                    "Grpc-Timeout must be like 500m or 2S (gRPC's timeout format)".into(),
                )
            });
    }
    let Some(value) = headers.get("x-server-timeout") else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|text| text.trim().parse::<f64>().ok())
        .filter(|seconds| seconds.is_finite() && *seconds > 0.0 && *seconds < 1e9)
        .map(|seconds| Some(Duration::from_secs_f64(seconds)))
        .ok_or_else(|| {
            Failure::client(
                StatusCode::BAD_REQUEST,
                "X-Server-Timeout must be a number of seconds, e.g. 1.5".into(),
            )
        })
}

/// The call's request: `message` with the request's metadata and deadline, and the
/// caller's certificate identity from `incoming` (the HTTP request's extensions), so that
/// a server's authorization sees who called through the gateway in-process.
pub(crate) fn outgoing<T>(
    metadata: MetadataMap,
    timeout: Option<Duration>,
    incoming: &http::Extensions,
    message: T,
) -> tonic::Request<T> {
    let mut extensions = tonic::Extensions::default();
    if let Some(peer) = incoming.get::<Arc<PeerIdentity>>() {
        extensions.insert(peer.clone());
    }
    let mut request = tonic::Request::from_parts(metadata, extensions, message);
    if let Some(timeout) = timeout {
        request.set_timeout(timeout);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_callers_certificate_identity_goes_with_the_call() {
        let mut incoming = http::Extensions::new();
        let peer = PeerIdentity::new(None, vec!["svc.keel.test".into()], "CN=svc".into()).shared();
        incoming.insert(peer.clone());
        incoming.insert("anything else stays behind");
        let request = outgoing(MetadataMap::new(), None, &incoming, ());
        assert_eq!(request.extensions().get::<Arc<PeerIdentity>>(), Some(&peer));
        assert!(request.extensions().get::<&str>().is_none());
    }
}
