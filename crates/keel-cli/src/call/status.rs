//! How `keel call` reports an error status: the code as grpc-go spells it, the message, and
//! every `google.rpc.Status` detail from `grpc-status-details-bin` as JSON with its `@type`.

use base64::Engine as _;
use keel::code::code_name;
use keel::dynamic::{Detail, details};
use prost_reflect::DescriptorPool;
use serde_json::{Value, json};
use tonic::Status;

use super::args::OutputOptions;
use super::escape;
use super::output::{json, value_text};

/// The report of `status` for stderr: the code as grpc-go spells it, the message, and every
/// detail as JSON, terminal controls escaped. Detail types are looked up among the standard google.rpc ones, then in
/// `server` (the server's own descriptors), if given.
pub fn report(status: &Status, server: Option<&DescriptorPool>, options: OutputOptions) -> String {
    let mut text = format!(
        "ERROR:\n  Code: {}\n  Message: {}\n",
        code_name(status.code()),
        escape::line(status.message())
    );
    let details = match details(status, server) {
        Ok(details) if details.is_empty() => return text,
        Ok(details) => details,
        Err(error) => {
            text.push_str(&format!(
                "  Details:\n  (grpc-status-details-bin is not a google.rpc.Status: {})\n",
                escape::line(&error.to_string())
            ));
            return text;
        }
    };
    text.push_str("  Details:\n");
    for detail in &details {
        for line in detail_text(detail, options).lines() {
            text.push_str("  ");
            text.push_str(line);
            text.push('\n');
        }
    }
    text
}

/// One detail as proto3 JSON for `google.protobuf.Any`: `@type`, then the message's fields in
/// their `.proto` order. A type no pool knows, or a value that does not decode, keeps its
/// bytes in base64.
fn detail_text(detail: &Detail, options: OutputOptions) -> String {
    let error = match detail {
        Detail::Known(any) => match json(any, options) {
            Ok(json) => return String::from_utf8_lossy(&json).into_owned(),
            Err(error) => Some(error.to_string()),
        },
        Detail::Unknown { error, .. } => error.clone(),
    };
    let (type_url, value) = match detail {
        Detail::Unknown {
            type_url, value, ..
        } => (type_url.clone(), value.clone()),
        // An `Any` whose JSON failed: its own type URL and value.
        Detail::Known(any) => (
            match any.get_field_by_name("type_url").as_deref() {
                Some(prost_reflect::Value::String(url)) => url.clone(),
                _ => String::new(),
            },
            match any.get_field_by_name("value").as_deref() {
                Some(prost_reflect::Value::Bytes(bytes)) => bytes.to_vec(),
                _ => Vec::new(),
            },
        ),
    };
    let mut raw = json!({
        "@type": type_url,
        "value": base64::engine::general_purpose::STANDARD.encode(value),
    });
    if let Some(error) = error {
        raw["error"] = Value::String(error);
    }
    value_text(&raw, options)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tonic::Code;
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
        let standard = keel::dynamic::standard();
        let pools = [&standard];
        let parse = |text: String| serde_json::from_str::<Value>(&text).unwrap();
        let unknown = parse(detail_text(
            &Detail::of("type.example.com/x.Unknown", &[1, 2, 3], &pools),
            PRETTY,
        ));
        assert_eq!(
            unknown,
            json!({"@type": "type.example.com/x.Unknown", "value": "AQID"})
        );
        let broken = parse(detail_text(
            &Detail::of("type.googleapis.com/google.rpc.ErrorInfo", &[0xff], &pools),
            PRETTY,
        ));
        assert_eq!(broken["value"], "/w==");
        assert!(broken["error"].is_string());
    }

    #[test]
    fn fields_keep_their_proto_order_after_the_type() {
        let info = tonic_types::ErrorInfo::new("R", "d", [("k".to_owned(), "v".to_owned())]);
        let bytes = prost::Message::encode_to_vec(&tonic_types::pb::ErrorInfo::from(info));
        let standard = keel::dynamic::standard();
        let text = detail_text(
            &Detail::of(
                "type.googleapis.com/google.rpc.ErrorInfo",
                &bytes,
                &[&standard],
            ),
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
