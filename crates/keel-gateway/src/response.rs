//! The response side of a REST call: the service's answer written as JSON (one object), or
//! for server streaming as NDJSON lines (`{"result": ...}`, grpc-gateway's format) or
//! Server-Sent Events; response metadata as `Grpc-Metadata-*` and trailers as
//! `Grpc-Trailer-*` headers.

use std::convert::Infallible;

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt as _;
use http::header::CONTENT_TYPE;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use prost_reflect::{DescriptorPool, DynamicMessage, FieldDescriptor, SerializeOptions};
use serde_json::Value;
use tonic::Status;
use tonic::metadata::{KeyAndValueRef, MetadataMap};

use crate::binding::JsonOptions;
use crate::failure::{Failure, status_json};
use crate::rules::Binding;

/// How answers are written: the JSON options, and the pool that knows the types of error
/// details.
#[derive(Debug, Clone)]
pub(crate) struct Writer {
    json: JsonOptions,
    pool: DescriptorPool,
}

impl Writer {
    /// A writer with these JSON options, decoding details with `pool`.
    pub(crate) fn new(json: JsonOptions, pool: DescriptorPool) -> Self {
        Self { json, pool }
    }

    /// A unary call's answer, `message`, with the call's response `metadata` and `trailers`.
    pub(crate) fn unary(
        &self,
        binding: &Binding,
        message: &DynamicMessage,
        metadata: &MetadataMap,
        trailers: &MetadataMap,
    ) -> Result<http::Response<Body>, Failure> {
        let json = self.message_json(binding.response_body.as_ref(), message)?;
        let mut response = json_response(StatusCode::OK, json);
        metadata_headers(metadata, "grpc-metadata-", response.headers_mut());
        metadata_headers(trailers, "grpc-trailer-", response.headers_mut());
        Ok(response)
    }

    /// A server-streaming call's answer: NDJSON, or Server-Sent Events if `events`. An error
    /// before the first message is the whole answer, with its HTTP status; a later one ends
    /// the stream with an error record.
    pub(crate) async fn stream(
        &self,
        binding: &Binding,
        response: tonic::Response<tonic::Streaming<DynamicMessage>>,
        events: bool,
    ) -> Result<http::Response<Body>, Failure> {
        let (metadata, mut stream, _) = response.into_parts();
        let first = match stream.next().await {
            Some(Ok(message)) => Some(message),
            Some(Err(status)) => return Err(Failure::Status(status)),
            None => None,
        };
        let writer = self.clone();
        let field = binding.response_body.clone();
        let frames = futures_util::stream::iter(first.map(Ok)).chain(stream).map(
            move |item| -> Result<Bytes, Infallible> {
                Ok(match item {
                    Ok(message) => writer.message_frame(field.as_ref(), &message, events),
                    Err(status) => writer.error_frame(&status, events),
                })
            },
        );
        let mut response = http::Response::new(Body::from_stream(frames));
        let content_type = if events {
            "text/event-stream"
        } else {
            "application/x-ndjson"
        };
        response
            .headers_mut()
            .insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        metadata_headers(&metadata, "grpc-metadata-", response.headers_mut());
        Ok(response)
    }

    /// `message` as JSON bytes: the whole message, or only `field` of it.
    fn message_json(
        &self,
        field: Option<&FieldDescriptor>,
        message: &DynamicMessage,
    ) -> Result<Bytes, Failure> {
        let options = SerializeOptions::new()
            .skip_default_fields(!self.json.emit_defaults)
            .use_proto_field_name(self.json.proto_names);
        let failed = |error: serde_json::Error| {
            Failure::internal(&format!("the response does not convert to JSON: {error}"))
        };
        // Straight to bytes: building a `Value` first cost a third of a REST call's
        // instructions.
        let direct = |message: &DynamicMessage| -> Result<Bytes, Failure> {
            let mut out = Vec::with_capacity(256);
            message
                .serialize_with_options(&mut serde_json::Serializer::new(&mut out), &options)
                .map_err(failed)?;
            Ok(Bytes::from(out))
        };
        let Some(field) = field else {
            return direct(message);
        };
        if let prost_reflect::Value::Message(inner) = message.get_field(field).as_ref()
            && !field.is_list()
        {
            return direct(inner);
        }
        // A scalar, list or map field: through a `Value`, taking the field's key.
        let value = message
            .serialize_with_options(serde_json::value::Serializer, &options)
            .map_err(failed)?;
        let key = if self.json.proto_names {
            field.name()
        } else {
            field.json_name()
        };
        let value = value.get(key).cloned().unwrap_or(Value::Null);
        Ok(Bytes::from(serde_json::to_vec(&value).unwrap_or_default()))
    }

    /// One streamed message: an NDJSON `{"result": ...}` line or an SSE `data:` event.
    fn message_frame(
        &self,
        field: Option<&FieldDescriptor>,
        message: &DynamicMessage,
        events: bool,
    ) -> Bytes {
        match self.message_json(field, message) {
            Ok(json) if events => Bytes::from([&b"data: "[..], &json, b"\n\n"].concat()),
            Ok(json) => Bytes::from([&b"{\"result\":"[..], &json, b"}\n"].concat()),
            Err(Failure::Status(status)) => self.error_frame(&status, events),
            Err(_) => self.error_frame(
                &Status::internal("the response does not convert to JSON"),
                events,
            ),
        }
    }

    /// The error that ends a stream: an NDJSON `{"error": status}` line or an SSE `error`
    /// event.
    fn error_frame(&self, status: &Status, events: bool) -> Bytes {
        let json = serde_json::to_vec(&status_json(status, &self.pool)).unwrap_or_default();
        if events {
            Bytes::from([&b"event: error\ndata: "[..], &json, b"\n\n"].concat())
        } else {
            Bytes::from([&b"{\"error\":"[..], &json, b"}\n"].concat())
        }
    }
}

/// A response of `status` with a JSON `body`.
pub(crate) fn json_response(status: StatusCode, body: Bytes) -> http::Response<Body> {
    let mut response = http::Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

/// Response metadata as headers named `prefix` + key (`Grpc-Metadata-*` for headers,
/// `Grpc-Trailer-*` for trailers, as grpc-gateway names them).
fn metadata_headers(metadata: &MetadataMap, prefix: &str, headers: &mut HeaderMap) {
    for entry in metadata.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(key, value) => (key.as_str(), value.as_bytes()),
            KeyAndValueRef::Binary(key, value) => (key.as_str(), value.as_encoded_bytes()),
        };
        if matches!(
            key,
            "content-type"
                | "grpc-status"
                | "grpc-message"
                | "grpc-status-details-bin"
                | "date"
                | "grpc-encoding"
                | "grpc-accept-encoding"
        ) {
            continue;
        }
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(format!("{prefix}{key}").as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
}
