//! From an HTTP request to the method's request message, per the rule that matched: the
//! body (all of it, one field, or none), then the path variables, then query parameters for
//! the fields neither of them set (`a.b=1` nested, `x=1&x=2` repeated, enums by name or
//! number, well-known types in their JSON form).
//!
//! Everything is gathered into one JSON object and read once by prost-reflect's proto3
//! JSON reader, so that path and query values follow the JSON mapping (quoted 64-bit
//! integers, `"1.5s"` durations, RFC 3339 timestamps, comma-separated field masks). Scalars
//! reach it in canonical form, read first by [`crate::json`] as Go's `protojson` reads them:
//! the body's by its message's descriptor, from the digits the client wrote; a path or
//! query value as the JSON string holding it.

use prost_reflect::{DeserializeOptions, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value};

use crate::json::{self, BodyError, Token};
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
    match &binding.body {
        BodyRule::Whole if !body.is_empty() => {
            if body.iter().find(|byte| !byte.is_ascii_whitespace()) != Some(&b'{') {
                let other: Value = serde_json::from_slice(body)
                    .map_err(|error| BindError::Syntax(error.to_string()))?;
                return Err(BindError::Shape {
                    message: input.full_name().to_owned(),
                    reason: format!("the body must be a JSON object, not {}", kind_of(&other)),
                });
            }
            if let Value::Object(object) =
                json::read_message(&input, body).map_err(|error| body_error(error, None))?
            {
                root = object;
            }
        }
        BodyRule::Field(field) if !body.is_empty() => {
            let value = json::read_field(field, body)
                .map_err(|error| body_error(error, Some(field.name())))?;
            root.insert(field.name().to_owned(), value);
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

/// The error of a body that cannot be read; `field` is the field it is the value of, if any.
fn body_error(error: BodyError, field: Option<&str>) -> BindError {
    match error {
        BodyError::Syntax(reason) => BindError::Syntax(reason),
        BodyError::Value { at, reason } => BindError::Value {
            field: match (field, at.as_str()) {
                (Some(field), ".") => field.to_owned(),
                (Some(field), at) if at.starts_with('[') => format!("{field}{at}"),
                (Some(field), at) => format!("{field}.{at}"),
                (None, at) => at.to_owned(),
            },
            reason,
        },
    }
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

/// The JSON a path or query string stands for, for a field of this kind: the string as the
/// JSON string holding it, except that booleans also take `1` and `0`, enums a bare number,
/// and scalar-like well-known types (Timestamp, Duration, FieldMask) their JSON string.
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
        Kind::Message(message) => match json::wrapped(&message) {
            Some(Kind::Bool) => boolean(raw),
            Some(kind) => json::scalar(&kind, Token::String(raw)),
            None if is_scalar_like(&message) => Ok(Value::String(raw.to_owned())),
            None => Err(format!(
                "a {} cannot be given as a path or query value",
                message.full_name()
            )),
        },
        kind => json::scalar(&kind, Token::String(raw)),
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
    fn a_float_written_as_f32_max_is_f32_max() {
        // 3.4028235e38 is a little over f32::MAX and rounds to it; it is how prost-reflect and
        // Go write f32::MAX, and it used to be refused as out of range.
        for weight in ["3.4028235e38", "\"3.4028235e+38\"", "-3.4028235e38"] {
            let body = format!(r#"{{"extras":{{"weight":{weight}}}}}"#);
            let bound = bind("POST", "/v1/shelves/s/books", &body, false).unwrap();
            let sign = if weight.starts_with('-') { "-" } else { "" };
            assert!(
                bound.contains(&format!(r#""weight":{sign}3.4028235e+38"#)),
                "{weight}: {bound}"
            );
        }
    }

    #[test]
    fn a_body_value_that_does_not_fit_names_its_field() {
        let cases = [
            (
                "/v1/shelves/s/books",
                r#"{"extras":{"isbn":18446744073709551616}}"#,
                "book.extras.isbn: 18446744073709551616 is not a valid uint64: out of range",
            ),
            (
                "/v1/books/b:archive",
                r#"{"permanent":1}"#,
                "permanent: 1 is not a valid bool: expected true or false",
            ),
        ];
        for (path, body, message) in cases {
            let error = bind("POST", path, body, false).unwrap_err();
            assert!(matches!(&error, BindError::Value { .. }), "{error:?}");
            assert!(error.to_string().starts_with(message), "{body}: {error}");
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
