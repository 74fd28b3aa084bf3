//! What `keel call` prints: response messages as proto3 JSON on stdout (pretty or one line
//! each), listings and descriptions as text, and, with `-v`, metadata on stderr.

use std::io::Write as _;

use prost_reflect::ReflectMessage as _;
use prost_reflect::{DynamicMessage, SerializeOptions};
use tonic::metadata::{KeyAndValueRef, MetadataMap};

use super::Failure;
use super::args::OutputOptions;
use super::escape;

/// Prints to stdout (results) and stderr (metadata), flushing after every item so that
/// streamed responses appear as they arrive.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    options: OutputOptions,
}

impl Printer {
    /// A printer with these options.
    pub fn new(options: OutputOptions) -> Self {
        Self { options }
    }

    /// The options it prints with.
    pub fn options(&self) -> OutputOptions {
        self.options
    }

    /// Prints one response message as JSON on stdout.
    pub fn message(&self, message: &DynamicMessage) -> Result<(), Failure> {
        let mut json = json(message, self.options).map_err(|error| {
            Failure::Other(format!(
                "cannot print a {} as JSON: {error}",
                message.descriptor().full_name()
            ))
        })?;
        json.push(b'\n');
        stdout(&json)
    }

    /// Prints text (a listing or a description) on stdout, controls escaped.
    pub fn text(&self, text: &str) -> Result<(), Failure> {
        stdout(escape::lines(text).as_bytes())
    }

    /// Prints `metadata` under `title` on stderr, when verbose.
    pub fn metadata(&self, title: &str, metadata: &MetadataMap) {
        if self.options.verbose {
            eprint!("{}", metadata_text(title, metadata));
        }
    }

    /// Prints a note on stderr, when verbose.
    pub fn note(&self, note: &str) {
        if self.options.verbose {
            eprintln!("{note}");
        }
    }
}

/// `message` as proto3 JSON, pretty or on one line, with or without default-valued fields,
/// terminal controls escaped.
pub fn json(
    message: &DynamicMessage,
    options: OutputOptions,
) -> Result<Vec<u8>, serde_json::Error> {
    let serialize = SerializeOptions::new().skip_default_fields(!options.emit_defaults);
    let mut out = Vec::new();
    if options.compact {
        message.serialize_with_options(&mut serde_json::Serializer::new(&mut out), &serialize)?;
    } else {
        message
            .serialize_with_options(&mut serde_json::Serializer::pretty(&mut out), &serialize)?;
    }
    // serde_json writes UTF-8, so nothing is lost.
    Ok(escape::json(String::from_utf8_lossy(&out).into_owned()).into_bytes())
}

/// `serde_json::Value` as text, pretty or on one line, terminal controls escaped.
pub fn value_text(value: &serde_json::Value, options: OutputOptions) -> String {
    let text = if options.compact {
        serde_json::to_string(value)
    } else {
        serde_json::to_string_pretty(value)
    };
    // A Value always serializes; the fallback only keeps this total.
    escape::json(text.unwrap_or_else(|_| value.to_string()))
}

/// The status entries, which the status report shows decoded.
const STATUS_KEYS: [&str; 3] = ["grpc-status", "grpc-message", "grpc-status-details-bin"];

/// `title:` then one `  key: value` line per entry (but the status's own); binary values as
/// sent (base64), controls in values escaped.
fn metadata_text(title: &str, metadata: &MetadataMap) -> String {
    let mut text = format!("{title}:\n");
    for entry in metadata.iter() {
        let (key, value) = match entry {
            KeyAndValueRef::Ascii(key, value) => (
                key.as_str(),
                String::from_utf8_lossy(value.as_encoded_bytes()),
            ),
            KeyAndValueRef::Binary(key, value) => (
                key.as_str(),
                String::from_utf8_lossy(value.as_encoded_bytes()),
            ),
        };
        if !STATUS_KEYS.contains(&key) {
            text.push_str(&format!("  {key}: {}\n", escape::line(&value)));
        }
    }
    text
}

/// Writes to stdout; a closed stdout (`keel call ... | head`) ends the command quietly.
fn stdout(bytes: &[u8]) -> Result<(), Failure> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)
        .and_then(|()| out.flush())
        .map_err(|error| match error.kind() {
            std::io::ErrorKind::BrokenPipe => Failure::ClosedOutput,
            _ => Failure::Other(format!("cannot write to stdout: {error}")),
        })
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;
    use tonic::metadata::{AsciiMetadataValue, BinaryMetadataValue};

    use super::*;

    fn options(compact: bool, emit_defaults: bool) -> OutputOptions {
        OutputOptions {
            compact,
            emit_defaults,
            verbose: false,
        }
    }

    #[test]
    fn messages_pretty_compact_and_with_defaults() {
        let pool = DescriptorPool::decode(keel_interop::FILE_DESCRIPTOR_SET).unwrap();
        let reply = pool.get_message_by_name("helloworld.HelloReply").unwrap();
        let mut message = DynamicMessage::new(reply);
        let text = |m: &DynamicMessage, o| String::from_utf8(json(m, o).unwrap()).unwrap();
        assert_eq!(text(&message, options(true, false)), "{}");
        assert_eq!(text(&message, options(true, true)), r#"{"message":""}"#);
        message.set_field_by_name("message", prost_reflect::Value::String("hi".into()));
        assert_eq!(text(&message, options(true, false)), r#"{"message":"hi"}"#);
        assert_eq!(
            text(&message, options(false, false)),
            "{\n  \"message\": \"hi\"\n}"
        );
    }

    #[test]
    fn metadata_lines_show_binary_values_as_base64() {
        let mut metadata = MetadataMap::new();
        metadata.insert("x-a", AsciiMetadataValue::from_static("1"));
        metadata.insert_bin("x-b-bin", BinaryMetadataValue::from_bytes(&[0, 1, 2]));
        metadata.insert("grpc-status", AsciiMetadataValue::from_static("0"));
        assert_eq!(
            metadata_text("response headers", &metadata),
            "response headers:\n  x-a: 1\n  x-b-bin: AAEC\n"
        );
    }
}
