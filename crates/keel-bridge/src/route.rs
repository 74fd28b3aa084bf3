//! Routes: which MQTT topics go to which gRPC method, and how a request's device, idempotency
//! key and response topic are read from what the device sent.
//!
//! ```
//! use keel_bridge::route::{Route, RouteConfig};
//!
//! let route = Route::parse(&RouteConfig {
//!     name: "payments".into(),
//!     topic: "payment/request/+".into(),
//!     method: "payments.v1.PaymentService/Process".into(),
//!     key: "device+field:request_id".into(),
//!     response_topic: "payment/response/{device}".into(),
//!     ..RouteConfig::default()
//! })
//! .unwrap();
//! let levels = route.filter().matches("payment/request/dev-7").unwrap();
//! assert_eq!(levels, ["dev-7"]);
//! assert_eq!(route.response_topic("dev-7", "dev-7:42").as_deref(), Some("payment/response/dev-7"));
//! ```

use serde::{Deserialize, Serialize};

/// A route as configured (`[[routes]]` in the bridge's TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RouteConfig {
    /// The route's name, unique, carried in the log with each request.
    pub name: String,
    /// The MQTT topic filter: `payment/request/+`; `+` matches one level, a final `#` the
    /// rest.
    pub topic: String,
    /// The gRPC method: `package.Service/Method` (unary).
    pub method: String,
    /// How payloads are written: `json` (proto3 JSON, default) or `protobuf` (binary).
    pub payload: PayloadFormat,
    /// Where the device id comes from: `topic` (default: the level the filter's first `+`
    /// matched), `property:NAME` (an MQTT 5 user property) or `field:PATH` (a payload field).
    pub device: String,
    /// Where the idempotency key comes from: `field:PATH`, `property:NAME`, or either
    /// prefixed with `device+` to make the key the device id plus that request id
    /// (`device+field:request_id` gives `dev-7:42`). A device that resends sends the same key.
    pub key: String,
    /// Where each outcome is published, e.g. `payment/response/{device}` (`{device}` and
    /// `{key}` are filled in); empty: outcomes are not published. An MQTT 5 response topic
    /// in the request takes precedence.
    pub response_topic: String,
}

impl Default for RouteConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            topic: String::new(),
            method: String::new(),
            payload: PayloadFormat::Json,
            device: "topic".into(),
            key: String::new(),
            response_topic: String::new(),
        }
    }
}

/// How a route's payloads are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// Proto3 JSON of the method's input type.
    Json,
    /// Binary protobuf of the method's input type.
    Protobuf,
}

/// A checked route.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    name: String,
    filter: TopicFilter,
    service: String,
    method: String,
    payload: PayloadFormat,
    device: Source,
    key: KeySource,
    response_topic: Option<Template>,
}

/// Where one value (a device id, a request id) is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The level the topic filter's `n`th wildcard matched (0-based).
    TopicLevel(usize),
    /// An MQTT 5 user property.
    Property(String),
    /// A payload field, by its path of field names (`meta.request_id`).
    Field(Vec<String>),
}

/// Where the idempotency key is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeySource {
    /// The value.
    pub source: Source,
    /// Whether the key is `device:value` rather than the value alone.
    pub with_device: bool,
}

impl Route {
    /// Checks a configured route; the error says which setting is wrong and why.
    pub fn parse(config: &RouteConfig) -> Result<Self, String> {
        if config.name.is_empty() {
            return Err("name: every route needs a name".into());
        }
        let filter = TopicFilter::parse(&config.topic).map_err(|e| format!("topic: {e}"))?;
        let (service, method) = config
            .method
            .rsplit_once('/')
            .filter(|(service, method)| service.contains('.') && !method.is_empty())
            .ok_or_else(|| {
                format!(
                    "method = {:?}: must be package.Service/Method, e.g. \
                     payments.v1.PaymentService/Process",
                    config.method
                )
            })?;
        let device = source(&config.device, &filter).map_err(|e| format!("device: {e}"))?;
        let (with_device, key_text) = match config.key.strip_prefix("device+") {
            Some(rest) => (true, rest),
            None => (false, config.key.as_str()),
        };
        let key = KeySource {
            source: source(key_text, &filter).map_err(|e| {
                format!("key: {e}; a key is field:PATH, property:NAME, or device+ either")
            })?,
            with_device,
        };
        if matches!(key.source, Source::TopicLevel(_)) {
            return Err("key: the topic names the device, not one request; use \
                        device+field:PATH or device+property:NAME"
                .into());
        }
        let response_topic = if config.response_topic.is_empty() {
            None
        } else {
            Some(
                Template::parse(&config.response_topic)
                    .map_err(|e| format!("response_topic: {e}"))?,
            )
        };
        Ok(Self {
            name: config.name.clone(),
            filter,
            service: service.to_owned(),
            method: method.to_owned(),
            payload: config.payload,
            device,
            key,
            response_topic,
        })
    }

    /// The route's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The topic filter.
    pub fn filter(&self) -> &TopicFilter {
        &self.filter
    }

    /// The service's full name, `payments.v1.PaymentService`.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// The method's name, `Process`.
    pub fn method(&self) -> &str {
        &self.method
    }

    /// The gRPC path, `/payments.v1.PaymentService/Process`.
    pub fn path(&self) -> String {
        format!("/{}/{}", self.service, self.method)
    }

    /// How payloads are written.
    pub fn payload(&self) -> PayloadFormat {
        self.payload
    }

    /// Where the device id comes from.
    pub fn device(&self) -> &Source {
        &self.device
    }

    /// Where the idempotency key comes from.
    pub fn key(&self) -> &KeySource {
        &self.key
    }

    /// The response topic for this device and key, if the route publishes outcomes.
    pub fn response_topic(&self, device: &str, key: &str) -> Option<String> {
        self.response_topic
            .as_ref()
            .map(|template| template.render(device, key))
    }
}

fn source(text: &str, filter: &TopicFilter) -> Result<Source, String> {
    if text == "topic" {
        return if filter.wildcards() > 0 {
            Ok(Source::TopicLevel(0))
        } else {
            Err("topic: the topic filter has no + level to take it from".into())
        };
    }
    if let Some(name) = text.strip_prefix("property:") {
        if name.is_empty() {
            return Err("property: needs a name, e.g. property:request-id".into());
        }
        return Ok(Source::Property(name.to_owned()));
    }
    if let Some(path) = text.strip_prefix("field:") {
        let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
        if parts.iter().any(|part| {
            part.is_empty() || !part.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
        }) {
            return Err(format!(
                "field:{path}: a field path is field names joined by dots, e.g. field:meta.request_id"
            ));
        }
        return Ok(Source::Field(parts));
    }
    Err(format!(
        "{text:?} is not a source: topic, property:NAME or field:PATH"
    ))
}

/// An MQTT topic filter, checked as MQTT 5 (section 4.7) requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicFilter {
    text: String,
    levels: Vec<Level>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Exact(String),
    One,
    Rest,
}

/// The longest topic MQTT allows, in bytes.
const MAX_TOPIC_BYTES: usize = 65_535;

impl TopicFilter {
    /// Parses a filter: non-empty, `+` and `#` only as whole levels, `#` only last.
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() || text.len() > MAX_TOPIC_BYTES {
            return Err(format!(
                "{text:?}: a topic filter has 1 to {MAX_TOPIC_BYTES} bytes"
            ));
        }
        if text.contains('\0') {
            return Err(format!("{text:?}: a topic filter has no NUL character"));
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        for (index, part) in parts.iter().enumerate() {
            levels.push(match *part {
                "+" => Level::One,
                "#" if index + 1 == parts.len() => Level::Rest,
                "#" => return Err(format!("{text:?}: # may only be the last level")),
                _ if part.contains(['+', '#']) => {
                    return Err(format!(
                        "{text:?}: + and # must be whole levels, as in a/+/b or a/#"
                    ));
                }
                _ => Level::Exact((*part).to_owned()),
            });
        }
        Ok(Self {
            text: text.to_owned(),
            levels,
        })
    }

    /// The filter as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// How many `+` levels it has.
    pub fn wildcards(&self) -> usize {
        self.levels.iter().filter(|l| **l == Level::One).count()
    }

    /// The levels the `+` wildcards matched, in order, if `topic` matches. As MQTT says, a
    /// topic starting with `$` is not matched by a filter starting with a wildcard.
    pub fn matches<'t>(&self, topic: &'t str) -> Option<Vec<&'t str>> {
        if topic.starts_with('$') && !matches!(self.levels.first(), Some(Level::Exact(_))) {
            return None;
        }
        let mut matched = Vec::new();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(matched),
                Level::One => matched.push(parts.next()?),
                Level::Exact(text) => {
                    if parts.next()? != text {
                        return None;
                    }
                }
            }
        }
        parts.next().is_none().then_some(matched)
    }
}

/// A response topic template: text with `{device}` and `{key}` placeholders.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    parts: Vec<Part>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Device,
    Key,
}

impl Template {
    /// Parses a template; any placeholder but `{device}` and `{key}` is an error, and the
    /// text must not hold `+` or `#` (a topic to publish on has no wildcards).
    pub fn parse(text: &str) -> Result<Self, String> {
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("{text:?}: a {{ without its }}"))?;
            parts.push(match &rest[open + 1..open + close] {
                "device" => Part::Device,
                "key" => Part::Key,
                other => {
                    return Err(format!(
                        "{text:?}: {{{other}}} is not a placeholder; use {{device}} or {{key}}"
                    ));
                }
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        if text.contains(['+', '#']) || text.is_empty() {
            return Err(format!(
                "{text:?}: a topic to publish on is not empty and has no + or #"
            ));
        }
        Ok(Self { parts })
    }

    /// The topic for this device and key. Characters that would change the topic's shape
    /// (`/`, `+`, `#`, NUL) in the device or key are replaced by `_`.
    pub fn render(&self, device: &str, key: &str) -> String {
        let safe = |value: &str| value.replace(['/', '+', '#', '\0'], "_");
        self.parts
            .iter()
            .map(|part| match part {
                Part::Text(text) => text.clone(),
                Part::Device => safe(device),
                Part::Key => safe(key),
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(key: &str, device: &str) -> Result<Route, String> {
        Route::parse(&RouteConfig {
            name: "r".into(),
            topic: "payment/request/+".into(),
            method: "payments.v1.PaymentService/Process".into(),
            key: key.into(),
            device: device.into(),
            ..RouteConfig::default()
        })
    }

    #[test]
    fn filters_match_as_mqtt_says() {
        let filter = |text| TopicFilter::parse(text).unwrap();
        assert_eq!(filter("a/+/c").matches("a/b/c"), Some(vec!["b"]));
        assert_eq!(filter("a/+/c").matches("a/b/d"), None);
        assert_eq!(filter("a/+/c").matches("a/b/c/d"), None);
        assert_eq!(filter("a/+").matches("a/"), Some(vec![""]));
        assert_eq!(filter("a/#").matches("a"), Some(vec![]));
        assert_eq!(filter("a/#").matches("a/b/c"), Some(vec![]));
        assert_eq!(filter("+/x").matches("$SYS/x"), None);
        assert_eq!(filter("#").matches("$SYS/x"), None);
        assert_eq!(filter("$SYS/+").matches("$SYS/x"), Some(vec!["x"]));
        assert_eq!(filter("+/+").matches("a/b"), Some(vec!["a", "b"]));
    }

    #[test]
    fn malformed_filters_are_refused_with_a_reason() {
        for (text, reason) in [
            ("", "1 to"),
            ("a/#/b", "last level"),
            ("a/b+", "whole levels"),
            ("a#", "whole levels"),
            ("a/\0", "NUL"),
        ] {
            let error = TopicFilter::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }

    #[test]
    fn sources_and_keys_parse() {
        let parsed = route("device+field:meta.request_id", "topic").unwrap();
        assert_eq!(parsed.device(), &Source::TopicLevel(0));
        assert_eq!(
            parsed.key(),
            &KeySource {
                source: Source::Field(vec!["meta".into(), "request_id".into()]),
                with_device: true
            }
        );
        let route = route("property:idempotency-key", "property:device-id").unwrap();
        assert_eq!(route.device(), &Source::Property("device-id".into()));
        assert!(!route.key().with_device);
        assert_eq!(route.path(), "/payments.v1.PaymentService/Process");
    }

    #[test]
    fn bad_routes_say_which_setting_is_wrong() {
        for (key, device, expected) in [
            ("", "topic", "key:"),
            ("topic", "topic", "key: the topic names the device"),
            ("field:a..b", "topic", "field names joined by dots"),
            ("property:", "topic", "needs a name"),
            ("field:x", "header:x", "device:"),
        ] {
            let error = route(key, device).unwrap_err();
            assert!(error.contains(expected), "{key} {device}: {error}");
        }
        let no_method = Route::parse(&RouteConfig {
            name: "r".into(),
            topic: "t/+".into(),
            method: "Process".into(),
            key: "field:k".into(),
            ..RouteConfig::default()
        })
        .unwrap_err();
        assert!(no_method.contains("package.Service/Method"), "{no_method}");
    }

    #[test]
    fn templates_fill_in_and_cannot_escape_their_level() {
        let template = Template::parse("payment/response/{device}/{key}").unwrap();
        assert_eq!(template.render("d1", "k/+#"), "payment/response/d1/k___");
        for (text, reason) in [
            ("a/{dev}", "not a placeholder"),
            ("a/{device", "without its"),
            ("a/+", "no + or #"),
            ("", "not empty"),
        ] {
            let error = Template::parse(text).unwrap_err();
            assert!(error.contains(reason), "{text:?}: {error}");
        }
    }
}
