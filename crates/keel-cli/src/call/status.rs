//! How `keel call` reports an error status: the code as grpc-go spells it, the message, and
//! every `google.rpc.Status` detail from `grpc-status-details-bin` as JSON with its `@type`.

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{DescriptorPool, DynamicMessage};
use serde_json::{Value, json};
use tonic::{Code, Status};

use super::args::OutputOptions;
use super::output::{json, value_text};
use super::types;

/// The code's name as grpc-go prints it (`codes.Code.String()`), e.g. `InvalidArgument`.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The report of `status` for stderr. Detail types are looked up among the standard
/// google.rpc ones, then in `server` (the server's own descriptors), if given.
pub fn report(status: &Status, server: Option<&DescriptorPool>, options: OutputOptions) -> String {
    let mut text = format!(
        "ERROR:\n  Code: {}\n  Message: {}\n",
        code_name(status.code()),
        status.message()
    );
    let details = status.details();
    if details.is_empty() {
        return text;
    }
    text.push_str("  Details:\n");
    let status = match tonic_types::pb::Status::decode(details) {
        Ok(status) => status,
        Err(error) => {
            text.push_str(&format!(
                "  (grpc-status-details-bin is not a google.rpc.Status: {error})\n"
            ));
            return text;
        }
    };
    let standard = types::standard();
    let pools: Vec<&DescriptorPool> = std::iter::once(&standard).chain(server).collect();
    for any in &status.details {
        let json = detail(&any.type_url, &any.value, &pools, options);
        for line in json.lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// One detail as proto3 JSON for `google.protobuf.Any`: `@type`, then the message's fields in
/// their `.proto` order (or `value` for a well-known type). A type no pool knows, or a value
/// that does not decode, keeps its bytes in base64.
fn detail(
    type_url: &str,
    bytes: &[u8],
    pools: &[&DescriptorPool],
    options: OutputOptions,
) -> String {
    let name = type_url.rsplit('/').next().unwrap_or(type_url);
    let any = pools.iter().find_map(|pool| {
        pool.get_message_by_name(name)?;
        pool.get_message_by_name("google.protobuf.Any")
    });
    let error = match any {
        Some(any) => {
            let mut message = DynamicMessage::new(any);
            message.set_field_by_name(
                "type_url",
                prost_reflect::Value::String(type_url.to_owned()),
            );
            message.set_field_by_name("value", prost_reflect::Value::Bytes(bytes.to_vec().into()));
            match json(&message, options) {
                Ok(json) => return String::from_utf8_lossy(&json).into_owned(),
                Err(error) => Some(error.to_string()),
            }
        }
        None => None,
    };
    let mut raw = json!({
        "@type": type_url,
        "value": base64::engine::general_purpose::STANDARD.encode(bytes),
    });
    if let Some(error) = error {
        raw["error"] = Value::String(error);
    }
    value_text(&raw, options)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic_types::{ErrorDetails, StatusExt as _};

    use super::*;

    const PRETTY: OutputOptions = OutputOptions {
        compact: false,
        emit_defaults: false,
        verbose: false,
    };
    const COMPACT: OutputOptions = OutputOptions {
        compact: true,
        ..PRETTY
    };

    #[test]
    fn every_code_has_grpc_gos_name() {
        let names: Vec<_> = (0..17).map(|n| code_name(Code::from_i32(n))).collect();
        assert_eq!(
            names,
            [
                "OK",
                "Canceled",
                "Unknown",
                "InvalidArgument",
                "DeadlineExceeded",
                "NotFound",
                "AlreadyExists",
                "PermissionDenied",
                "ResourceExhausted",
                "FailedPrecondition",
                "Aborted",
                "OutOfRange",
                "Unimplemented",
                "Internal",
                "Unavailable",
                "DataLoss",
                "Unauthenticated",
            ]
        );
    }

    #[test]
    fn standard_details_become_json_with_their_type() {
        let mut details = ErrorDetails::with_error_info(
            "INSUFFICIENT_FUNDS",
            "payments.keel.dev",
            [("account_id".to_owned(), "alice".to_owned())],
        );
        details.set_retry_info(Some(Duration::from_millis(1500)));
        details.add_bad_request_violation("amount", "must be positive");
        let status = Status::with_error_details(Code::FailedPrecondition, "no money", details);
        let report = report(&status, None, COMPACT);
        let lines: Vec<&str> = report.lines().collect();
        assert_eq!(
            lines[..4],
            [
                "ERROR:",
                "  Code: FailedPrecondition",
                "  Message: no money",
                "  Details:"
            ]
        );
        let details: Vec<Value> = lines[4..]
            .iter()
            .map(|l| serde_json::from_str(l.trim()).unwrap())
            .collect();
        let by_type = |t: &str| {
            details
                .iter()
                .find(|d| d["@type"] == format!("type.googleapis.com/google.rpc.{t}"))
                .unwrap_or_else(|| panic!("no {t} in {report}"))
        };
        let info = by_type("ErrorInfo");
        assert_eq!(info["reason"], "INSUFFICIENT_FUNDS");
        assert_eq!(info["domain"], "payments.keel.dev");
        assert_eq!(info["metadata"]["account_id"], "alice");
        assert_eq!(by_type("RetryInfo")["retryDelay"], "1.500s");
        assert_eq!(
            by_type("BadRequest")["fieldViolations"][0]["field"],
            "amount"
        );
    }

    #[test]
    fn unknown_and_broken_details_keep_their_bytes() {
        let pools = [&types::standard()];
        let parse = |text: String| serde_json::from_str::<Value>(&text).unwrap();
        let unknown = parse(detail(
            "type.example.com/x.Unknown",
            &[1, 2, 3],
            &pools,
            PRETTY,
        ));
        assert_eq!(
            unknown,
            json!({"@type": "type.example.com/x.Unknown", "value": "AQID"})
        );
        let broken = parse(detail(
            "type.googleapis.com/google.rpc.ErrorInfo",
            &[0xff],
            &pools,
            PRETTY,
        ));
        assert_eq!(broken["value"], "/w==");
        assert!(broken["error"].is_string());
    }

    #[test]
    fn fields_keep_their_proto_order_after_the_type() {
        let info = tonic_types::ErrorInfo::new("R", "d", [("k".to_owned(), "v".to_owned())]);
        let bytes = prost::Message::encode_to_vec(&tonic_types::pb::ErrorInfo::from(info));
        let pools = [&types::standard()];
        let text = detail(
            "type.googleapis.com/google.rpc.ErrorInfo",
            &bytes,
            &pools,
            COMPACT,
        );
        assert_eq!(
            text,
            r#"{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"R","domain":"d","metadata":{"k":"v"}}"#
        );
    }

    #[test]
    fn details_that_are_not_a_status_are_reported_not_fatal() {
        let status = Status::with_details(Code::Internal, "boom", vec![0xff, 0xff].into());
        let report = report(&status, None, PRETTY);
        assert!(report.contains("Code: Internal"), "{report}");
        assert!(report.contains("not a google.rpc.Status"), "{report}");
    }
}
