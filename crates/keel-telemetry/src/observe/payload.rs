//! Optional capture of response payloads on spans: for the responses a predicate selects
//! (by status code and size), the messages as JSON, with sensitive fields redacted and the
//! text truncated, as a span event. Off by default; only sampled calls pay for it.

use bytes::{Bytes, BytesMut};
use prost_reflect::{DynamicMessage, MessageDescriptor, ReflectMessage, Value};
use serde::{Deserialize, Serialize};
use tonic::Code;

use keel_core::code::code_name;
use keel_core::settings::{Checks, Validate};

/// Which responses are captured, and how (`observe.payloads` in the server configuration).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
#[non_exhaustive]
pub struct PayloadConfig {
    /// Capture at all. Off by default: payloads may hold personal data, and capture costs a
    /// decode per captured call.
    pub enabled: bool,
    /// Status codes whose responses are captured, spelled as in `grpc_code` (`OK`,
    /// `NotFound`, ...). Default `["OK"]`.
    pub codes: Vec<String>,
    /// Capture only responses whose messages add up to at least this many bytes (encoded).
    /// Default 1024: the large answers worth looking at, not every small one.
    pub min_bytes: usize,
    /// Longest JSON kept on the span; longer text is cut and marked. Default 4096.
    pub max_bytes: usize,
    /// Fields whose values are replaced by `"[REDACTED]"`, by name, at any depth
    /// (case-insensitive). Default: password, secret, token, authorization, card_number,
    /// cvv, api_key.
    pub redact: Vec<String>,
}

impl Default for PayloadConfig {
    fn default() -> Self {
        Self {
            enabled: false,
            codes: vec!["OK".to_owned()],
            min_bytes: 1024,
            max_bytes: 4096,
            redact: [
                "password",
                "secret",
                "token",
                "authorization",
                "card_number",
                "cvv",
                "api_key",
            ]
            .map(str::to_owned)
            .to_vec(),
        }
    }
}

impl Validate for PayloadConfig {
    fn check(&self, checks: &mut Checks) {
        // A misspelt code would silently capture nothing.
        for name in &self.codes {
            checks.require(
                (0..=16).any(|code| code_name(Code::from_i32(code)) == name),
                "codes",
                format_args!("{name:?}"),
                "must list status codes as grpc_code spells them: OK, NotFound, Unavailable, ...",
            );
        }
    }
}

/// Raw response bytes kept per call at most, before any decoding: enough for `max_bytes` of
/// JSON in all but pathological messages, and a bound on memory per call.
const MAX_RAW: usize = 64 * 1024;

impl PayloadConfig {
    /// True when a call that ended with `code` after sending `sent_bytes` is captured.
    pub fn selects(&self, code: Code, sent_bytes: usize) -> bool {
        self.enabled
            && sent_bytes >= self.min_bytes
            && self.codes.iter().any(|name| name == code_name(code))
    }

    /// The captured response (gRPC-framed messages of type `output`) as JSON text, redacted
    /// and truncated; `None` when it cannot be decoded (compressed, cut short, not this
    /// type).
    pub fn render(&self, output: &MessageDescriptor, framed: &[u8]) -> Option<String> {
        let mut rest = framed;
        let mut messages = Vec::new();
        while rest.len() >= 5 {
            let compressed = rest[0] != 0;
            let len = u32::from_be_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
            if compressed || rest.len() < 5 + len {
                break;
            }
            let mut message = DynamicMessage::decode(output.clone(), &rest[5..5 + len]).ok()?;
            self.redact_message(&mut message);
            messages.push(serde_json::to_value(&message).ok()?);
            rest = &rest[5 + len..];
        }
        if messages.is_empty() {
            return None;
        }
        let json = if messages.len() == 1 {
            messages.remove(0).to_string()
        } else {
            serde_json::Value::Array(messages).to_string()
        };
        Some(truncate(json, self.max_bytes))
    }

    fn redacts(&self, field: &str) -> bool {
        self.redact
            .iter()
            .any(|name| name.eq_ignore_ascii_case(field))
    }

    fn redact_message(&self, message: &mut DynamicMessage) {
        let descriptor = message.descriptor();
        for field in descriptor.fields() {
            if !message.has_field(&field) {
                continue;
            }
            if self.redacts(field.name()) {
                let is_text = matches!(field.kind(), prost_reflect::Kind::String)
                    && !field.is_list()
                    && !field.is_map();
                if is_text {
                    message.set_field(&field, Value::String("[REDACTED]".to_owned()));
                } else {
                    message.clear_field(&field);
                }
                continue;
            }
            match message.get_field_mut(&field) {
                Value::Message(inner) => self.redact_message(inner),
                Value::List(items) => {
                    for item in items {
                        if let Value::Message(inner) = item {
                            self.redact_message(inner);
                        }
                    }
                }
                Value::Map(entries) => {
                    for value in entries.values_mut() {
                        if let Value::Message(inner) = value {
                            self.redact_message(inner);
                        }
                    }
                }
                _ => {}
            }
        }
    }
}

/// `text` cut to at most `max` bytes at a character boundary, marked when cut.
fn truncate(mut text: String, max: usize) -> String {
    if text.len() <= max {
        return text;
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text.push_str("…(truncated)");
    text
}

/// The response bytes of one call, kept while it streams.
#[derive(Debug, Default)]
pub(crate) struct Capture {
    raw: BytesMut,
    /// Every response byte sent, captured or not.
    pub(crate) sent: usize,
}

impl Capture {
    /// Keeps what fits of a data frame.
    pub(crate) fn add(&mut self, data: &Bytes) {
        self.sent += data.len();
        let take = MAX_RAW.saturating_sub(self.raw.len()).min(data.len());
        self.raw.extend_from_slice(&data[..take]);
    }

    /// What was kept.
    pub(crate) fn bytes(&self) -> &[u8] {
        &self.raw
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_descriptor() -> MessageDescriptor {
        let pool =
            prost_reflect::DescriptorPool::decode(keel_interop::FILE_DESCRIPTOR_SET).unwrap();
        pool.get_message_by_name("grpc.testing.SimpleResponse")
            .unwrap()
    }

    fn framed(message: &DynamicMessage) -> Vec<u8> {
        use prost::Message;
        let body = message.encode_to_vec();
        let mut out = vec![0];
        out.extend_from_slice(&(body.len() as u32).to_be_bytes());
        out.extend(body);
        out
    }

    #[test]
    fn selects_by_code_and_size() {
        let config = PayloadConfig {
            enabled: true,
            ..PayloadConfig::default()
        };
        assert!(config.selects(Code::Ok, 2048));
        assert!(!config.selects(Code::Ok, 100), "too small");
        assert!(!config.selects(Code::NotFound, 2048), "code not listed");
        assert!(
            !PayloadConfig::default().selects(Code::Ok, 1 << 20),
            "off by default"
        );
    }

    #[test]
    fn renders_json_with_redacted_fields_and_a_cut() {
        let descriptor = reply_descriptor();
        let mut message = DynamicMessage::new(descriptor.clone());
        message.set_field_by_name("username", Value::String("ada".into()));
        message.set_field_by_name("oauth_scope", Value::String("s3cr3t-scope".into()));
        let config = PayloadConfig {
            enabled: true,
            redact: vec!["OAUTH_SCOPE".into()],
            ..PayloadConfig::default()
        };
        let text = config.render(&descriptor, &framed(&message)).unwrap();
        assert!(text.contains("\"username\":\"ada\""), "{text}");
        assert!(
            text.contains("[REDACTED]") && !text.contains("s3cr3t"),
            "{text}"
        );

        let short = PayloadConfig {
            max_bytes: 10,
            ..config.clone()
        };
        let cut = short.render(&descriptor, &framed(&message)).unwrap();
        assert!(cut.ends_with("…(truncated)") && cut.len() <= 10 + "…(truncated)".len());
        assert_eq!(
            config.render(&descriptor, b"\x01\x00\x00\x00\x01x"),
            None,
            "compressed"
        );
        assert_eq!(
            config.render(&descriptor, b"\x00\x00\x00\x00\x09ab"),
            None,
            "cut short"
        );
    }
}
