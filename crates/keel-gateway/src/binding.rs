//! From an HTTP request to the method's request message, per the rule that matched: the
//! body (all of it, one field, or none), then the path variables, then query parameters for
//! the fields neither of them set (`a.b=1` nested, `x=1&x=2` repeated, enums by name or
//! number, well-known types in their JSON form).
//!
//! Everything is gathered into one JSON object and read once by prost-reflect's proto3
//! JSON reader, so that path and query values follow exactly the JSON mapping (quoted
//! 64-bit integers, `"1.5s"` durations, RFC 3339 timestamps, comma-separated field masks).

use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use crate::percent::query_pairs;
use crate::rules::{Binding, BodyRule, is_scalar_like, resolve};

/// How JSON is read and written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JsonOptions {
    /// Write fields that hold their default value (off: proto3 JSON leaves them out).
    pub emit_defaults: bool,
    /// Write the `.proto` field names instead of lowerCamelCase.
    pub proto_names: bool,
    /// Reject unknown fields in bodies and unknown query parameters (off: ignored).
    pub strict: bool,
}

/// A request that cannot become the method's message: always the client's mistake.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BindError {
    /// The body is not JSON.
    #[error("the body is not valid JSON: {0}")]
    Syntax(String),
    /// The JSON does not fit the message (a wrong type, an unknown field in strict mode).
    #[error("the request does not fit {message}: {reason}")]
    Shape {
        /// The message type.
        message: String,
        /// Where and why.
        reason: String,
    },
    /// A path or query value cannot be a value of its field.
    #[error("{field}: {reason}")]
    Value {
        /// The field path.
        field: String,
        /// Why.
        reason: String,
    },
    /// A query parameter names no field (strict mode).
    #[error("unknown query parameter {0:?}")]
    UnknownParameter(String),
}

/// The request message for a call through `binding`.
pub fn request_message(
    binding: &Binding,
    path_values: &[(&[String], String)],
    query: Option<&str>,
    body: &[u8],
    options: JsonOptions,
) -> Result<DynamicMessage, BindError> {
    let input = binding.method.input();
    let mut root = Map::new();
    let body_json = || -> Result<Value, BindError> {
        serde_json::from_slice(body).map_err(|error| BindError::Syntax(error.to_string()))
    };
    match &binding.body {
        BodyRule::Whole if !body.is_empty() => match body_json()? {
            Value::Object(object) => root = object,
            other => {
                return Err(BindError::Shape {
                    message: input.full_name().to_owned(),
                    reason: format!("the body must be a JSON object, not {}", kind_of(&other)),
                });
            }
        },
        BodyRule::Field(field) if !body.is_empty() => {
            root.insert(field.name().to_owned(), body_json()?);
        }
        _ => {}
    }
    let mut bound: Vec<Vec<String>> = Vec::new();
    for (path, raw) in path_values {
        insert(&mut root, &input, path, raw, false)?;
        bound.push(path.to_vec());
    }
    if let (Some(query), false) = (query, matches!(binding.body, BodyRule::Whole)) {
        let pairs = query_pairs(query).map_err(|reason| BindError::Value {
            field: "query".into(),
            reason,
        })?;
        for (key, raw) in pairs {
            let path: Vec<String> = key.split('.').map(str::to_owned).collect();
            let field = match resolve(&input, &path) {
                Ok(field) => field,
                Err(_) if !options.strict => continue,
                Err(_) => return Err(BindError::UnknownParameter(key)),
            };
            // What the path or the body field set is theirs.
            let in_body = matches!(&binding.body, BodyRule::Field(body) if path.first().is_some_and(|first| first == body.name() || first == body.json_name()));
            if in_body || bound.iter().any(|taken| same_path(&input, taken, &path)) {
                continue;
            }
            insert(&mut root, &input, &path, &raw, field.is_list())?;
        }
    }
    let mut track = serde_path_to_error::Track::new();
    let deserializer = serde_path_to_error::Deserializer::new(Value::Object(root), &mut track);
    DynamicMessage::deserialize_with_options(
        input.clone(),
        deserializer,
        &DeserializeOptions::new().deny_unknown_fields(options.strict),
    )
    .map_err(|error| {
        let at = track.path().to_string();
        BindError::Shape {
            message: input.full_name().to_owned(),
            reason: if at.is_empty() || at == "." {
                error.to_string()
            } else {
                format!("at {at}: {error}")
            },
        }
    })
}

/// True when two field paths name the same field (one may use JSON names).
fn same_path(message: &MessageDescriptor, a: &[String], b: &[String]) -> bool {
    a.len() == b.len()
        && match (resolve(message, a), resolve(message, b)) {
            (Ok(a), Ok(b)) => a == b,
            _ => false,
        }
}

/// Sets (or, for repeated fields, appends) the value `raw` at `path` in the JSON tree.
fn insert(
    root: &mut Map<String, Value>,
    message: &MessageDescriptor,
    path: &[String],
    raw: &str,
    append: bool,
) -> Result<(), BindError> {
    let shown = path.join(".");
    let value_error = |reason: String| BindError::Value {
        field: shown.clone(),
        reason,
    };
    let mut object = root;
    let mut current = message.clone();
    for (index, part) in path.iter().enumerate() {
        let field = resolve(&current, std::slice::from_ref(part)).map_err(&value_error)?;
        // One key per field, whichever name the body used.
        let key = field.name().to_owned();
        if field.json_name() != field.name()
            && let Some(existing) = object.remove(field.json_name())
        {
            object.insert(key.clone(), existing);
        }
        if index + 1 == path.len() {
            let value = scalar_json(&field, raw).map_err(&value_error)?;
            if append {
                match object
                    .entry(key)
                    .or_insert_with(|| Value::Array(Vec::new()))
                {
                    Value::Array(items) => items.push(value),
                    slot => *slot = Value::Array(vec![value]),
                }
            } else {
                object.insert(key, value);
            }
            return Ok(());
        }
        let Kind::Message(inner) = field.kind() else {
            return Err(value_error(format!("{part} is not a message")));
        };
        current = inner;
        let slot = object
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()));
        if !slot.is_object() {
            *slot = Value::Object(Map::new());
        }
        object = slot.as_object_mut().expect("just made an object");
    }
    Ok(())
}

/// The JSON a path or query string stands for, for a field of this kind.
fn scalar_json(field: &FieldDescriptor, raw: &str) -> Result<Value, String> {
    let boolean = |raw: &str| match raw {
        "true" | "1" => Ok(Value::Bool(true)),
        "false" | "0" => Ok(Value::Bool(false)),
        other => Err(format!("{other:?} is not a boolean (true or false)")),
    };
    match field.kind() {
        Kind::Bool => boolean(raw),
        Kind::Enum(values) => match raw.parse::<i32>() {
            Ok(number) => Ok(Value::from(number)),
            Err(_) if values.get_value_by_name(raw).is_some() => Ok(Value::String(raw.to_owned())),
            Err(_) => {
                let names: Vec<String> = values.values().map(|v| v.name().to_owned()).collect();
                Err(format!(
                    "{raw:?} is not a value of {} ({})",
                    values.full_name(),
                    names.join(", ")
                ))
            }
        },
        Kind::Message(message) if message.full_name() == "google.protobuf.BoolValue" => {
            boolean(raw)
        }
        Kind::Message(message) if !is_scalar_like(&message) => Err(format!(
            "a {} cannot be given as a path or query value",
            message.full_name()
        )),
        // Strings, bytes (base64), numbers (quoted numbers are valid proto3 JSON) and the
        // well-known types whose JSON form is a string.
        _ => Ok(Value::String(raw.to_owned())),
    }
}

fn kind_of(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use http::Method;
    use prost_reflect::ReflectMessage as _;

    use super::*;
    use crate::rules::Rules;

    /// The request message (as compact JSON with proto names) for a request.
    fn bind(
        method: &str,
        path_and_query: &str,
        body: &str,
        strict: bool,
    ) -> Result<String, BindError> {
        let rules = Rules::load(&crate::testdata::bookstore(), &[]).unwrap();
        let (path, query) = match path_and_query.split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (path_and_query, None),
        };
        let found = rules
            .router
            .find(&method.parse::<Method>().unwrap(), path)
            .unwrap();
        let options = JsonOptions {
            strict,
            ..JsonOptions::default()
        };
        let message = request_message(
            found.value,
            &found.bindings,
            query,
            body.as_bytes(),
            options,
        )?;
        let mut out = Vec::new();
        let mut serializer = serde_json::Serializer::new(&mut out);
        message
            .serialize_with_options(
                &mut serializer,
                &prost_reflect::SerializeOptions::new().use_proto_field_name(true),
            )
            .unwrap();
        assert_eq!(message.descriptor(), found.value.method.input());
        Ok(String::from_utf8(out).unwrap())
    }

    #[test]
    fn path_body_and_query_fill_the_request() {
        let cases = [
            (
                "GET",
                "/v1/shelves/s1/books/b%201",
                "",
                r#"{"name":"shelves/s1/books/b 1"}"#,
            ),
            ("GET", "/v1/books/b%2F1", "", r#"{"name":"b/1"}"#),
            (
                "POST",
                "/v1/shelves/s1/books?request_id=r1&book.title=ignored",
                r#"{"title":"Dune","pageCount":"412","genre":"GENRE_FICTION","unknown":1}"#,
                r#"{"parent":"shelves/s1","book":{"title":"Dune","genre":"GENRE_FICTION","page_count":"412"},"request_id":"r1"}"#,
            ),
            (
                "PATCH",
                "/v1/shelves/s1/books/b1?update_mask=title,pageCount",
                r#"{"name":"other","title":"New"}"#,
                r#"{"book":{"name":"shelves/s1/books/b1","title":"New"},"update_mask":"title,pageCount"}"#,
            ),
            (
                "GET",
                "/v1/search?query=a+b&genres=GENRE_HISTORY&genres=1&filter.author=Le%20Guin&filter.pages.min=10&after=2024-01-02T03:04:05Z&max_age=1.5s&min_pages=3&in_print=true&ids=1&ids=2&min_rating=4.5&cursor=AAE%3D&nope=1",
                "",
                r#"{"query":"a b","genres":["GENRE_HISTORY","GENRE_FICTION"],"filter":{"author":"Le Guin","pages":{"min":10}},"after":"2024-01-02T03:04:05Z","max_age":"1.500s","min_pages":3,"in_print":true,"ids":["1","2"],"min_rating":4.5,"cursor":"AAE="}"#,
            ),
            // body "*": the path wins over the body, and query parameters are not read.
            (
                "POST",
                "/v1/books/b1:archive?reason=ignored",
                r#"{"name":"x","reason":"old","permanent":true}"#,
                r#"{"name":"b1","reason":"old","permanent":true}"#,
            ),
        ];
        for (method, path, body, expected) in cases {
            assert_eq!(
                bind(method, path, body, false).as_deref(),
                Ok(expected),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn client_mistakes_are_explained() {
        let cases: [(&str, &str, &str, bool, &str); 8] = [
            (
                "POST",
                "/v1/shelves/s/books",
                "{not json",
                false,
                "not valid JSON",
            ),
            (
                "POST",
                "/v1/books/b:archive",
                "[1]",
                false,
                "must be a JSON object, not an array",
            ),
            (
                "POST",
                "/v1/books/b:archive",
                r#"{"permanent":"maybe"}"#,
                false,
                "permanent",
            ),
            (
                "POST",
                "/v1/books/b:archive",
                r#"{"colour":"red"}"#,
                true,
                "colour",
            ),
            (
                "GET",
                "/v1/search?in_print=perhaps",
                "",
                false,
                "not a boolean",
            ),
            ("GET", "/v1/search?genres=GENRE_NOPE", "", false, "genres"),
            (
                "GET",
                "/v1/search?nope=1",
                "",
                true,
                "unknown query parameter \"nope\"",
            ),
            (
                "GET",
                "/v1/search?filter=x",
                "",
                false,
                "bookstore.v1.Filter cannot be given",
            ),
        ];
        for (method, path, body, strict, hint) in cases {
            let error = bind(method, path, body, strict).unwrap_err().to_string();
            assert!(error.contains(hint), "{method} {path} {body}: {error}");
        }
    }

    #[test]
    fn random_query_strings_and_bodies_never_panic() {
        let alphabet: Vec<char> = "a.=&%2F1{}\"[]:,+ genres_inprtfluq".chars().collect();
        let mut state = 11_u64;
        let mut text = |len: usize| {
            (0..len)
                .map(|_| {
                    state = state
                        .wrapping_mul(6_364_136_223_846_793_005)
                        .wrapping_add(1_442_695_040_888_963_407);
                    alphabet[(state >> 33) as usize % alphabet.len()]
                })
                .collect::<String>()
        };
        for round in 0..3_000 {
            let query = text(round % 40);
            let body = text(round % 30);
            let _ = bind("GET", &format!("/v1/search?{query}"), "", round % 2 == 0);
            let _ = bind("POST", "/v1/books/b:archive", &body, round % 2 == 0);
            let _ = bind("POST", "/v1/shelves/s/books", &body, false);
        }
    }
}
