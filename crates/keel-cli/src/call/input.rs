//! The request messages of a call: `-d` text, a file or stdin, read as a sequence of JSON
//! values in the proto3 JSON mapping, with errors that say where and for which type.

use std::io::Read as _;

use prost_reflect::{DynamicMessage, MessageDescriptor, MethodDescriptor};
use serde::de::IgnoredAny;

use super::Failure;
use super::args::Data;

/// The request messages for `method`: what `data` holds, or, without `-d`, one empty message
/// (none for client streaming). Unary and server-streaming methods take exactly one.
pub fn requests(method: &MethodDescriptor, data: &Data) -> Result<Vec<DynamicMessage>, Failure> {
    let input = method.input();
    let text = match data {
        Data::Absent if method.is_client_streaming() => return Ok(Vec::new()),
        Data::Absent => return Ok(vec![DynamicMessage::new(input)]),
        Data::Inline(text) => text.clone(),
        Data::Stdin => {
            let mut text = String::new();
            std::io::stdin()
                .read_to_string(&mut text)
                .map_err(|error| Failure::Usage(format!("cannot read stdin: {error}")))?;
            text
        }
        Data::File(file) => std::fs::read_to_string(file).map_err(|error| {
            Failure::Usage(format!("cannot read -d @{}: {error}", file.display()))
        })?,
    };
    let messages = parse(&text, &input)?;
    if !method.is_client_streaming() && messages.len() != 1 {
        return Err(Failure::Usage(format!(
            "{} takes one request message; the input has {}",
            method.full_name(),
            messages.len()
        )));
    }
    Ok(messages)
}

/// Every JSON value in `text` (concatenated or one per line) as a message of type `input`.
pub fn parse(text: &str, input: &MessageDescriptor) -> Result<Vec<DynamicMessage>, Failure> {
    // First pass: the JSON syntax of the whole input, so that a broken last value stops the
    // call before anything is sent.
    let mut count = 0;
    for value in serde_json::Deserializer::from_str(text).into_iter::<IgnoredAny>() {
        value.map_err(|error| {
            Failure::Usage(format!(
                "request message {} is not valid JSON: {error}",
                count + 1
            ))
        })?;
        count += 1;
    }
    // Second pass: each value as a message, positions counted from the start of the input.
    let mut values = serde_json::Deserializer::from_str(text);
    (1..=count)
        .map(|n| {
            DynamicMessage::deserialize(input.clone(), &mut values).map_err(|error| {
                Failure::Usage(format!(
                    "request message {n} is not a valid {}: {error}",
                    input.full_name()
                ))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use prost_reflect::DescriptorPool;

    use super::*;

    fn simple_request() -> MessageDescriptor {
        DescriptorPool::decode(keel_interop::FILE_DESCRIPTOR_SET)
            .unwrap()
            .get_message_by_name("grpc.testing.SimpleRequest")
            .unwrap()
    }

    #[test]
    fn values_in_sequence_in_any_layout() {
        let input = simple_request();
        for text in [
            "{\"responseSize\": 1}\n{\"response_size\": 2}\n",
            "{\"responseSize\":1}{\"responseSize\":2}",
            "  {\"responseSize\": 1}  \n\n {\n\"responseSize\": 2\n}",
        ] {
            let messages = parse(text, &input).unwrap();
            let sizes: Vec<_> = messages
                .iter()
                .map(|m| m.get_field_by_name("response_size").unwrap().as_i32())
                .collect();
            assert_eq!(sizes, [Some(1), Some(2)], "{text:?}");
        }
        assert!(parse(" \n", &input).unwrap().is_empty());
    }

    #[test]
    fn errors_say_which_message_where_and_what_type() {
        let input = simple_request();
        let check = |text: &str, parts: &[&str]| {
            let message = parse(text, &input).unwrap_err().to_string();
            for part in parts {
                assert!(message.contains(part), "{text:?}: {message}");
            }
        };
        check(
            "{\"responseSize\": 1}\n{\"responseSize\": }",
            &["message 2", "not valid JSON", "line 2 column 18"],
        );
        check(
            "{}\n{\"nope\": 1}",
            &["message 2", "grpc.testing.SimpleRequest", "nope", "line 2"],
        );
        check(
            "{\"responseSize\": \"many\"}",
            &["message 1", "grpc.testing.SimpleRequest"],
        );
        check("[1, 2]", &["message 1", "grpc.testing.SimpleRequest"]);
    }
}
