//! The messages each call sends: the request template rendered for the call, then for a gRPC
//! method parsed as proto3 JSON against its input type, encoded and framed for the wire, or for
//! a REST call (`keel bench --rest`) sent as the JSON text it is. A template without
//! placeholders is prepared once and shared by every call.

use std::sync::Arc;

use bytes::Bytes;
use http::Method;
use prost::Message as _;
use prost_reflect::{DynamicMessage, MethodDescriptor};

use crate::template::{Context, Template};

/// The requests of a benchmark, ready to send.
#[derive(Debug, Clone)]
pub struct Requests {
    call: Call,
    template: Template,
    /// The prepared bodies, when every call sends the same.
    fixed: Option<Arc<[Bytes]>>,
}

/// What is called.
#[derive(Debug, Clone)]
pub enum Call {
    /// A gRPC method: each message is proto3 JSON for its input, encoded and framed.
    Grpc(MethodDescriptor),
    /// An HTTP request with a JSON body (none when the template is empty), success on 2xx:
    /// a REST route, e.g. one keel-gateway serves beside the gRPC service.
    Rest {
        /// The HTTP method.
        method: Method,
        /// The path and query, from `/`.
        path: String,
    },
}

impl Requests {
    /// Checks `template` against `method` by rendering the first request. Unary and
    /// server-streaming methods take one JSON object; client and bidi streaming take an array
    /// of objects (one message each) or one object.
    pub fn new(method: MethodDescriptor, template: Template) -> Result<Self, String> {
        Self::prepare(Call::Grpc(method), template)
    }

    /// REST calls: `method` on `path` (from `/`), the rendered template as a JSON body, or no
    /// body when it renders empty. The first request is rendered and checked to be JSON.
    pub fn rest(method: Method, path: &str, template: Template) -> Result<Self, String> {
        if !path.starts_with('/') {
            return Err(format!("the path must start with `/`, not `{path}`"));
        }
        let path = path.to_owned();
        Self::prepare(Call::Rest { method, path }, template)
    }

    fn prepare(call: Call, template: Template) -> Result<Self, String> {
        let mut requests = Self {
            call,
            template,
            fixed: None,
        };
        let first = requests.messages(Context {
            request_number: 0,
            worker_id: 0,
        })?;
        if let (Call::Rest { .. }, Some(body)) = (&requests.call, first.first()) {
            serde_json::from_slice::<serde_json::Value>(body).map_err(|error| {
                format!(
                    "request 0 is not JSON: {error}: {}",
                    String::from_utf8_lossy(body)
                )
            })?;
        }
        if requests.template.is_static() {
            requests.fixed = Some(first);
        }
        Ok(requests)
    }

    /// What is called.
    pub fn call(&self) -> &Call {
        &self.call
    }

    /// The name reports give the call: `pkg.Service/Method`, or `POST /v1/payments`.
    pub fn name(&self) -> String {
        match &self.call {
            Call::Grpc(method) => {
                format!("{}/{}", method.parent_service().full_name(), method.name())
            }
            Call::Rest { method, path } => format!("{method} {path}"),
        }
    }

    /// The request's path: `/pkg.Service/Method`, or the REST path.
    pub fn path(&self) -> String {
        match &self.call {
            Call::Grpc(_) => format!("/{}", self.name()),
            Call::Rest { path, .. } => path.clone(),
        }
    }

    /// The bodies of one call: for gRPC each message encoded and framed (flag byte, length,
    /// message); for REST the rendered JSON, unparsed (the server judges it), or nothing.
    pub fn messages(&self, context: Context) -> Result<Arc<[Bytes]>, String> {
        if let Some(fixed) = &self.fixed {
            return Ok(fixed.clone());
        }
        let text = self.template.render(context);
        let method = match &self.call {
            Call::Grpc(method) => method,
            Call::Rest { .. } if text.trim().is_empty() => return Ok(Arc::new([])),
            Call::Rest { .. } => return Ok(Arc::new([Bytes::from(text)])),
        };
        let text = if text.trim().is_empty() { "{}" } else { &text };
        let value: serde_json::Value = serde_json::from_str(text).map_err(|error| {
            format!(
                "request {} is not JSON: {error}: {text}",
                context.request_number
            )
        })?;
        let streaming = method.is_client_streaming();
        let values = match value {
            serde_json::Value::Array(values) if streaming => values,
            serde_json::Value::Array(_) => {
                return Err(format!(
                    "{} takes one request message: give a JSON object, not an array",
                    method.full_name()
                ));
            }
            value => vec![value],
        };
        let input = method.input();
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

#[cfg(test)]
mod tests {
    use super::*;

    fn rest(path: &str, template: &str) -> Result<Requests, String> {
        Requests::rest(Method::POST, path, Template::parse(template).unwrap())
    }

    #[test]
    fn rest_bodies_are_the_rendered_json() {
        let requests = rest("/v1/payments", r#"{"key":"k-{{.RequestNumber}}"}"#).unwrap();
        assert_eq!(requests.name(), "POST /v1/payments");
        assert_eq!(requests.path(), "/v1/payments");
        let context = Context {
            request_number: 7,
            worker_id: 0,
        };
        assert_eq!(&*requests.messages(context).unwrap(), [r#"{"key":"k-7"}"#]);
        let empty = rest("/v1/accounts/alice", "").unwrap();
        assert!(empty.messages(context).unwrap().is_empty());
    }

    #[test]
    fn rest_mistakes_are_caught_before_the_run() {
        let error = rest("v1/payments", "{}").unwrap_err();
        assert!(error.contains("must start with `/`"), "{error}");
        let error = rest("/v1/payments", "{not json").unwrap_err();
        assert!(error.contains("request 0 is not JSON"), "{error}");
    }
}
