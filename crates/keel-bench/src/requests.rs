//! The messages each call sends: the request template rendered for the call, parsed as proto3
//! JSON against the method's input type, encoded and framed for the wire. A template without
//! placeholders is encoded once and shared by every call.

use std::sync::Arc;

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MethodDescriptor};

use crate::template::{Context, Template};

/// The requests of a benchmark, ready to send.
#[derive(Debug, Clone)]
pub struct Requests {
    method: MethodDescriptor,
    template: Template,
    /// The encoded messages, when every call sends the same.
    fixed: Option<Arc<[Bytes]>>,
}

impl Requests {
    /// Checks `template` against `method` by rendering the first request. Unary and
    /// server-streaming methods take one JSON object; client and bidi streaming take an array
    /// of objects (one message each) or one object.
    pub fn new(method: MethodDescriptor, template: Template) -> Result<Self, String> {
        let mut requests = Self {
            method,
            template,
            fixed: None,
        };
        let first = requests.messages(Context {
            request_number: 0,
            worker_id: 0,
        })?;
        if requests.template.is_static() {
            requests.fixed = Some(first);
        }
        Ok(requests)
    }

    /// The method called.
    pub fn method(&self) -> &MethodDescriptor {
        &self.method
    }

    /// The messages of one call, each encoded and framed (flag byte, length, message).
    pub fn messages(&self, context: Context) -> Result<Arc<[Bytes]>, String> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let text = self.template.render(context);
        let text = if text.trim().is_empty() { "{}" } else { &text };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
            format!(
                "request {} is not JSON: {error}: {text}",
                context.request_number
            )
        })?;
        let streaming = self.method.is_client_streaming();
        let values = match value {
            serde_json::Value::Array(values) if streaming => values,
            serde_json::Value::Array(_) => {
                return Err(format!(
                    "{} takes one request message: give a JSON object, not an array",
                    self.method.full_name()
                ));
            }
            value => vec![value],
        };
        let input = self.method.input();
        values
            .into_iter()
            .enumerate()
            .map(|(index, value)| {
                let message =
                    DynamicMessage::deserialize(input.clone(), value).map_err(|error| {
                        let which = if streaming {
                            format!(" message {index}")
                        } else {
                            String::new()
                        };
                        format!(
                            "request {}{which} is not a {}: {error}",
                            context.request_number,
                            input.full_name()
                        )
                    })?;
                let mut framed = Vec::with_capacity(5 + message.encoded_len());
                framed.push(0);
                framed.extend_from_slice(&(message.encoded_len() as u32).to_be_bytes());
                message
                    .encode(&mut framed)
                    .expect("the buffer was sized for the message");
                Ok(Bytes::from(framed))
            })
            .collect()
    }
}
