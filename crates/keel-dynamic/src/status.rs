//! The details of an error status (`grpc-status-details-bin`, a `google.rpc.Status`), each
//! as a `google.protobuf.Any` message ready to print as proto3 JSON with its `@type`, or, for
//! a type no pool knows, its bytes; and the whole status as `google.rpc.Status` JSON.

use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage, SerializeOptions, Value};
use tonic::Status;

use super::types;

/// One detail of a status.
#[derive(Debug, Clone)]
pub enum Detail {
    /// A `google.protobuf.Any` holding a type a pool knows: its JSON is `@type` and fields.
    Known(DynamicMessage),
    /// A type no pool knows, or a value that does not decode.
    Unknown {
        /// The detail's type URL.
        type_url: String,
        /// Its encoded value.
        value: Vec<u8>,
        /// Why it could not be decoded, when the type is known.
        error: Option<String>,
    },
}

/// The details of `status`, looking types up among the standard google.rpc ones, then in
/// `server` (the server's own descriptors) if given. `Err` when `grpc-status-details-bin`
/// is not a `google.rpc.Status`; empty when there is none.
pub fn details(
    status: &Status,
    server: Option<&DescriptorPool>,
) -> Result<Vec<Detail>, prost::DecodeError> {
    if status.details().is_empty() {
        return Ok(Vec::new());
    }
    let decoded = tonic_types::pb::Status::decode(status.details())?;
    let standard = types::standard();
    let pools: Vec<&DescriptorPool> = std::iter::once(&standard).chain(server).collect();
    Ok(decoded
        .details
        .iter()
        .map(|any| Detail::of(&any.type_url, &any.value, &pools))
        .collect())
}

/// `status` as the JSON of a `google.rpc.Status`: `code` (the number), `message`, and every
/// detail with its `@type` (types looked up among the standard ones, then in `server`); a
/// detail of a type no pool knows keeps its bytes as base64 `value`.
pub fn status_json(status: &Status, server: Option<&DescriptorPool>) -> serde_json::Value {
    use base64::Engine as _;
    let options = SerializeOptions::new();
    let details: Vec<serde_json::Value> = details(status, server)
        .unwrap_or_default()
        .into_iter()
        .map(|detail| match detail {
            Detail::Known(any) => any
                .serialize_with_options(serde_json::value::Serializer, &options)
                .unwrap_or(serde_json::Value::Null),
            Detail::Unknown {
                type_url, value, ..
            } => serde_json::json!({
                "@type": type_url,
                "value": base64::engine::general_purpose::STANDARD.encode(value),
            }),
        })
        .collect();
    serde_json::json!({
        "code": status.code() as i32,
        "message": status.message(),
        "details": details,
    })
}

impl Detail {
    /// The detail with this type URL and value, decoded with the first pool that knows the
    /// type.
    pub fn of(type_url: &str, value: &[u8], pools: &[&DescriptorPool]) -> Self {
        let name = type_url.rsplit('/').next().unwrap_or(type_url);
        let known = pools.iter().find_map(|pool| {
            let message = pool.get_message_by_name(name)?;
            Some((message, pool.get_message_by_name("google.protobuf.Any")?))
        });
        let error = match known {
            Some((message, any)) => match DynamicMessage::decode(message, value) {
                Ok(_) => {
                    let mut wrapped = DynamicMessage::new(any);
                    wrapped.set_field_by_name("type_url", Value::String(type_url.to_owned()));
                    wrapped.set_field_by_name("value", Value::Bytes(value.to_vec().into()));
                    return Self::Known(wrapped);
                }
                Err(error) => Some(error.to_string()),
            },
            None => None,
        };
        Self::Unknown {
            type_url: type_url.to_owned(),
            value: value.to_vec(),
            error,
        }
    }
}

#[cfg(test)]
mod tests {
    use prost_reflect::ReflectMessage as _;
    use tonic::Code;
    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;

    #[test]
    fn known_details_decode_and_unknown_ones_keep_their_bytes() {
        let details_in = ErrorDetails::with_error_info("R", "d", []);
        let status = Status::with_error_details(Code::NotFound, "gone", details_in);
        let found = details(&status, None).unwrap();
        assert!(
            matches!(&found[..], [Detail::Known(any)] if any.descriptor().full_name() == "google.protobuf.Any")
        );

        let pools = [&types::standard()];
        assert!(matches!(
            Detail::of("type.example.com/x.Unknown", &[1, 2], &pools),
            Detail::Unknown { error: None, .. }
        ));
        assert!(matches!(
            Detail::of("type.googleapis.com/google.rpc.ErrorInfo", &[0xff], &pools),
            Detail::Unknown { error: Some(_), .. }
        ));
        let broken = Status::with_details(Code::Internal, "x", vec![0xff, 0xff].into());
        assert!(details(&broken, None).is_err());
        assert!(
            details(&Status::internal("plain"), None)
                .unwrap()
                .is_empty()
        );
    }
}
