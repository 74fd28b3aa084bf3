//! [`Intake`]: turns one MQTT publish into a [`Record`] for the log, or into the reason it
//! cannot be one (which goes to the dead-letter queue).
//!
//! The payload is read with the route's method input type (proto3 JSON or binary protobuf,
//! through prost-reflect), so a request that would never decode at the target is refused here,
//! once, rather than retried there. The log holds the binary encoding either way.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, MessageDescriptor, ReflectMessage as _, Value,
};

use crate::log::DeadLetter;
use crate::record::{Record, header};
use crate::route::{PayloadFormat, Route, Source};

/// What a device published, as the intake needs it.
#[derive(Debug, Clone, Copy)]
pub struct Publish<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// MQTT 5 user properties, in order.
    pub properties: &'a [(String, String)],
    /// MQTT 5 response topic, if the device set one.
    pub response_topic: Option<&'a str>,
    /// MQTT 5 correlation data, if the device set it.
    pub correlation_data: Option<&'a [u8]>,
}

/// Why a publish cannot be delivered; becomes a [`DeadLetter`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    /// The stable reason code: `NO_ROUTE`, `UNPARSEABLE_PAYLOAD`, `MISSING_DEVICE`,
    /// `MISSING_KEY`.
    pub reason: &'static str,
    /// What was wrong, for a person.
    pub detail: String,
    /// The route that took it, if one did.
    pub route: String,
    /// The device, if it could be read.
    pub device: String,
}

impl Rejected {
    /// The dead letter for this rejection of `publish`.
    pub fn dead_letter(&self, publish: &Publish<'_>) -> DeadLetter {
        DeadLetter {
            record: Record {
                device: self.device.clone(),
                key: String::new(),
                route: self.route.clone(),
                payload: Bytes::copy_from_slice(publish.payload),
                headers: vec![(header::MQTT_TOPIC.into(), publish.topic.into())],
            },
            reason: self.reason.into(),
            detail: self.detail.clone(),
        }
    }
}

/// The routes, each with its method's input type.
#[derive(Debug, Clone)]
pub struct Intake {
    routes: Vec<(Route, MessageDescriptor)>,
}

impl Intake {
    /// Checks every route against `pool`: its method exists, is unary, and any payload
    /// fields it names exist.
    pub fn new(routes: Vec<Route>, pool: &DescriptorPool) -> Result<Self, String> {
        let mut checked = Vec::with_capacity(routes.len());
        for route in routes {
            let service = pool.get_service_by_name(route.service()).ok_or_else(|| {
                format!(
                    "route {}: the target has no service {}",
                    route.name(),
                    route.service()
                )
            })?;
            let method = service
                .methods()
                .find(|method| method.name() == route.method())
                .ok_or_else(|| {
                    format!(
                        "route {}: {} has no method {}",
                        route.name(),
                        route.service(),
                        route.method()
                    )
                })?;
            if method.is_client_streaming() || method.is_server_streaming() {
                return Err(format!(
                    "route {}: {} streams; the bridge calls unary methods",
                    route.name(),
                    route.path()
                ));
            }
            let input = method.input();
            for source in [route.device(), &route.key().source] {
                if let Source::Field(path) = source {
                    field_path_exists(&input, path)
                        .map_err(|error| format!("route {}: {error}", route.name()))?;
                }
            }
            checked.push((route, input));
        }
        Ok(Self { routes: checked })
    }

    /// The routes.
    pub fn routes(&self) -> impl Iterator<Item = &Route> {
        self.routes.iter().map(|(route, _)| route)
    }

    /// The record for `publish`: the first route whose filter matches takes it.
    pub fn take(&self, publish: &Publish<'_>) -> Result<Record, Rejected> {
        let Some((route, input, levels)) = self.routes.iter().find_map(|(route, input)| {
            let levels = route.filter().matches(publish.topic)?;
            Some((route, input, levels))
        }) else {
            return Err(Rejected {
                reason: "NO_ROUTE",
                detail: format!("no route's topic filter matches {:?}", publish.topic),
                route: String::new(),
                device: String::new(),
            });
        };
        let reject = |reason, detail: String, device: &str| Rejected {
            reason,
            detail,
            route: route.name().to_owned(),
            device: device.to_owned(),
        };
        let mut message = decode(route.payload(), input, publish.payload)
            .map_err(|detail| reject("UNPARSEABLE_PAYLOAD", detail, ""))?;
        let device = read(route.device(), &levels, publish.properties, &message)
            .filter(|device| !device.is_empty())
            .ok_or_else(|| {
                reject(
                    "MISSING_DEVICE",
                    format!("no device id in {}", describe(route.device())),
                    "",
                )
            })?;
        let request = read(&route.key().source, &levels, publish.properties, &message)
            .filter(|value| !value.is_empty())
            .ok_or_else(|| {
                reject(
                    "MISSING_KEY",
                    format!("no idempotency key in {}", describe(&route.key().source)),
                    &device,
                )
            })?;
        let key = if route.key().with_device {
            format!("{device}:{request}")
        } else {
            request
        };
        // The key the target is called with replaces the request id in the payload, so
        // the message and the `idempotency-key` metadata agree.
        let rewritten = match &route.key().source {
            Source::Field(path) if route.key().with_device => {
                set_string_field(&mut message, path, &key);
                true
            }
            _ => false,
        };

        let mut headers = vec![
            (header::MQTT_TOPIC.to_owned(), publish.topic.to_owned()),
            (header::RECEIVED_AT_MS.to_owned(), now_ms().to_string()),
        ];
        let response_topic = publish
            .response_topic
            .map(str::to_owned)
            .or_else(|| route.response_topic(&device, &key));
        if let Some(topic) = response_topic {
            headers.push((header::RESPONSE_TOPIC.to_owned(), topic));
        }
        if let Some(data) = publish.correlation_data {
            use base64::Engine as _;
            headers.push((
                header::CORRELATION_DATA.to_owned(),
                base64::engine::general_purpose::STANDARD.encode(data),
            ));
        }
        let payload = match route.payload() {
            PayloadFormat::Protobuf if !rewritten => Bytes::copy_from_slice(publish.payload),
            _ => Bytes::from(message.encode_to_vec()),
        };
        Ok(Record {
            device,
            key,
            route: route.name().to_owned(),
            payload,
            headers,
        })
    }
}

fn decode(
    format: PayloadFormat,
    input: &MessageDescriptor,
    payload: &[u8],
) -> Result<DynamicMessage, String> {
    match format {
        PayloadFormat::Protobuf => DynamicMessage::decode(input.clone(), payload)
            .map_err(|error| format!("the payload is not a binary {}: {error}", input.full_name())),
        PayloadFormat::Json => {
            let mut reader = serde_json::Deserializer::from_slice(payload);
            let message = DynamicMessage::deserialize(input.clone(), &mut reader)
                .and_then(|message| reader.end().map(|()| message))
                .map_err(|error| {
                    format!("the payload is not {} as JSON: {error}", input.full_name())
                })?;
            Ok(message)
        }
    }
}

/// The value `source` names, as text (numbers in decimal).
fn read(
    source: &Source,
    levels: &[&str],
    properties: &[(String, String)],
    message: &DynamicMessage,
) -> Option<String> {
    match source {
        Source::TopicLevel(index) => levels.get(*index).map(|level| (*level).to_owned()),
        Source::Property(name) => properties
            .iter()
            .find(|(key, _)| key == name)
            .map(|(_, value)| value.clone()),
        Source::Field(path) => match field_value(message, path)? {
            Value::String(text) => Some(text),
            Value::I32(n) => Some(n.to_string()),
            Value::I64(n) => Some(n.to_string()),
            Value::U32(n) => Some(n.to_string()),
            Value::U64(n) => Some(n.to_string()),
            _ => None,
        },
    }
}

/// Sets the string field at `path` (checked by [`Intake::new`] to exist) to `value`;
/// integer fields keep their request id, the metadata carries the full key.
fn set_string_field(message: &mut DynamicMessage, path: &[String], value: &str) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        let is_string = message
            .descriptor()
            .get_field_by_name(first)
            .is_some_and(|field| field.kind() == prost_reflect::Kind::String);
        if is_string {
            message.set_field_by_name(first, Value::String(value.to_owned()));
        }
        return;
    }
    if let Some(Value::Message(inner)) = message.get_field_by_name_mut(first) {
        set_string_field(inner, rest, value);
    }
}

/// The value at `path`, through nested messages.
fn field_value(message: &DynamicMessage, path: &[String]) -> Option<Value> {
    let (first, rest) = path.split_first()?;
    let value = message.get_field_by_name(first)?;
    if rest.is_empty() {
        return Some(value.into_owned());
    }
    match value.as_ref() {
        Value::Message(inner) => field_value(inner, rest),
        _ => None,
    }
}

fn field_path_exists(input: &MessageDescriptor, path: &[String]) -> Result<(), String> {
    let mut message = input.clone();
    for (index, name) in path.iter().enumerate() {
        let field = message
            .get_field_by_name(name)
            .ok_or_else(|| format!("{} has no field {name}", message.full_name()))?;
        if index + 1 < path.len() {
            match field.kind() {
                prost_reflect::Kind::Message(inner) if !field.is_list() && !field.is_map() => {
                    message = inner;
                }
                _ => return Err(format!("{}.{name} is not a message", message.full_name())),
            }
        } else if field.is_list()
            || field.is_map()
            || !matches!(
                field.kind(),
                prost_reflect::Kind::String
                    | prost_reflect::Kind::Int32
                    | prost_reflect::Kind::Int64
                    | prost_reflect::Kind::Uint32
                    | prost_reflect::Kind::Uint64
                    | prost_reflect::Kind::Sint32
                    | prost_reflect::Kind::Sint64
            )
        {
            return Err(format!(
                "{}.{name} must be a string or integer field to name a device or a request",
                message.full_name()
            ));
        }
    }
    Ok(())
}

fn describe(source: &Source) -> String {
    match source {
        Source::TopicLevel(_) => "the topic".into(),
        Source::Property(name) => format!("the user property {name:?}"),
        Source::Field(path) => format!("the payload field {}", path.join(".")),
    }
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_millis())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RouteConfig;

    fn payments() -> DescriptorPool {
        let root = env!("CARGO_MANIFEST_DIR");
        let mut compiler = protox::Compiler::new([format!("{root}/../../proto")]).unwrap();
        compiler.include_imports(true);
        compiler.open_file("payments/v1/payments.proto").unwrap();
        compiler.descriptor_pool()
    }

    fn intake(key: &str, payload: PayloadFormat) -> Intake {
        let route = Route::parse(&RouteConfig {
            name: "pay".into(),
            topic: "payment/request/+".into(),
            method: "payments.v1.PaymentService/Process".into(),
            payload,
            key: key.into(),
            response_topic: "payment/response/{device}".into(),
            ..RouteConfig::default()
        })
        .unwrap();
        Intake::new(vec![route], &payments()).unwrap()
    }

    fn publish<'a>(
        topic: &'a str,
        payload: &'a [u8],
        properties: &'a [(String, String)],
    ) -> Publish<'a> {
        Publish {
            topic,
            payload,
            properties,
            response_topic: None,
            correlation_data: None,
        }
    }

    const PAYMENT: &str = r#"{"idempotencyKey":"r-1","payerAccountId":"alice","payeeAccountId":"bob","amountMinor":"250","currency":"USD"}"#;

    #[test]
    fn a_json_request_becomes_a_binary_record_with_its_key() {
        let properties = vec![("traceparent".to_owned(), "00-aa-bb-01".to_owned())];
        let record = intake("device+field:idempotency_key", PayloadFormat::Json)
            .take(&publish(
                "payment/request/dev-7",
                PAYMENT.as_bytes(),
                &properties,
            ))
            .unwrap();
        assert_eq!(record.device, "dev-7");
        assert_eq!(record.key, "dev-7:r-1");
        assert_eq!(record.route, "pay");
        assert_eq!(
            record.header(header::TRACEPARENT),
            None,
            "ingest writes the trace context (spans.rs)"
        );
        assert_eq!(
            record.header(header::RESPONSE_TOPIC),
            Some("payment/response/dev-7")
        );
        let input = payments()
            .get_message_by_name("payments.v1.ProcessRequest")
            .unwrap();
        let decoded = DynamicMessage::decode(input, record.payload).unwrap();
        assert_eq!(
            decoded.get_field_by_name("amount_minor").unwrap().as_i64(),
            Some(250)
        );
        assert_eq!(
            decoded
                .get_field_by_name("idempotency_key")
                .unwrap()
                .as_str(),
            Some("dev-7:r-1"),
            "the payload's key matches the metadata the target is called with"
        );
    }

    #[test]
    fn a_resend_gets_the_same_key_and_a_property_can_carry_it() {
        let intake = intake("device+property:request-id", PayloadFormat::Json);
        let properties = vec![("request-id".to_owned(), "42".to_owned())];
        let first = intake
            .take(&publish(
                "payment/request/d",
                PAYMENT.as_bytes(),
                &properties,
            ))
            .unwrap();
        let again = intake
            .take(&publish(
                "payment/request/d",
                PAYMENT.as_bytes(),
                &properties,
            ))
            .unwrap();
        assert_eq!(first.key, "d:42");
        assert_eq!(first.key, again.key);
    }

    #[test]
    fn binary_payloads_are_checked_and_kept_as_sent() {
        let input = payments()
            .get_message_by_name("payments.v1.ProcessRequest")
            .unwrap();
        let mut message = DynamicMessage::new(input);
        message.set_field_by_name("idempotency_key", Value::String("k9".into()));
        let bytes = message.encode_to_vec();
        let intake = intake("field:idempotency_key", PayloadFormat::Protobuf);
        let record = intake
            .take(&publish("payment/request/d", &bytes, &[]))
            .unwrap();
        assert_eq!(record.key, "k9");
        assert_eq!(record.payload.as_ref(), bytes.as_slice());
        let garbage = intake
            .take(&publish("payment/request/d", b"\xff\xff\xff", &[]))
            .unwrap_err();
        assert_eq!(garbage.reason, "UNPARSEABLE_PAYLOAD");
    }

    #[test]
    fn bad_publishes_are_rejected_with_a_reason() {
        let intake = intake("device+field:idempotency_key", PayloadFormat::Json);
        let cases = [
            ("other/topic", PAYMENT, "NO_ROUTE"),
            ("payment/request/d", "{not json", "UNPARSEABLE_PAYLOAD"),
            (
                "payment/request/d",
                r#"{"amountMinor":"1"} trailing"#,
                "UNPARSEABLE_PAYLOAD",
            ),
            (
                "payment/request/d",
                r#"{"noSuchField":1}"#,
                "UNPARSEABLE_PAYLOAD",
            ),
            ("payment/request/d", r#"{"amountMinor":"1"}"#, "MISSING_KEY"),
            ("payment/request/", PAYMENT, "MISSING_DEVICE"),
        ];
        for (topic, payload, reason) in cases {
            let rejected = intake
                .take(&publish(topic, payload.as_bytes(), &[]))
                .unwrap_err();
            assert_eq!(rejected.reason, reason, "{topic} {payload}: {rejected:?}");
            let letter = rejected.dead_letter(&publish(topic, payload.as_bytes(), &[]));
            assert_eq!(letter.record.payload.as_ref(), payload.as_bytes());
        }
    }

    #[test]
    fn routes_are_checked_against_the_contract() {
        let route = |method: &str, key: &str| {
            Route::parse(&RouteConfig {
                name: "r".into(),
                topic: "t/+".into(),
                method: method.into(),
                key: key.into(),
                ..RouteConfig::default()
            })
            .unwrap()
        };
        for (method, key, expected) in [
            (
                "payments.v1.Nope/Process",
                "field:idempotency_key",
                "no service",
            ),
            (
                "payments.v1.PaymentService/Nope",
                "field:idempotency_key",
                "no method",
            ),
            (
                "payments.v1.PaymentService/ProcessStream",
                "field:idempotency_key",
                "streams",
            ),
            (
                "payments.v1.PaymentService/Process",
                "field:nope",
                "no field nope",
            ),
            (
                "payments.v1.PaymentService/Process",
                "field:metadata",
                "string or integer",
            ),
        ] {
            let error = Intake::new(vec![route(method, key)], &payments()).unwrap_err();
            assert!(error.contains(expected), "{method} {key}: {error}");
        }
    }
}
