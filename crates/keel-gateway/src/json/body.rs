//! A request body read against the request message's descriptor: every scalar is read from
//! the text the client wrote (a number's own digits, not the `f64` nearest to them) by
//! [`super::scalar`]'s rules, and the body comes back as a JSON tree whose scalars are in the
//! form prost-reflect reads exactly. Objects, arrays, maps, `Any` payloads and wrapper types
//! are followed; the other well-known types (Timestamp, Duration, FieldMask, Struct, Value,
//! ListValue, Empty) and unknown fields are kept as written, for prost-reflect to judge.

use std::fmt;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde::Deserialize as _;
use serde::de::{self, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use super::scalar::{self, Token};

/// Objects and arrays nested deeper than this are refused, `Any` payloads included (serde_json
/// stops at 128 as well, but each buffered `Any` entry is read by a deserializer of its own).
const MAX_DEPTH: usize = 128;

/// Why a body could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BodyError {
    /// It is not JSON.
    Syntax(String),
    /// A value its field does not take: where (`book.pageCount`, `ids[2]`; `.` for the
    /// whole body) and why.
    Value {
        /// The path to the value, by the names the body used.
        at: String,
        /// Why it is refused.
        reason: String,
    },
}

/// `body`, the JSON of a `message`.
pub(crate) fn read_message(message: &MessageDescriptor, body: &[u8]) -> Result<Value, BodyError> {
    read(body, KindSeed::new(Kind::Message(message.clone()), 0))
}

/// `body`, the JSON of one `field` (a rule whose body is that field).
pub(crate) fn read_field(field: &FieldDescriptor, body: &[u8]) -> Result<Value, BodyError> {
    read(
        body,
        FieldSeed {
            field: field.clone(),
            depth: 0,
        },
    )
}

fn read<'de, S>(body: &'de [u8], seed: S) -> Result<Value, BodyError>
where
    S: DeserializeSeed<'de, Value = Value>,
{
    let mut json = serde_json::Deserializer::from_slice(body);
    let mut track = serde_path_to_error::Track::new();
    let read = seed
        .deserialize(serde_path_to_error::Deserializer::new(
            &mut json, &mut track,
        ))
        .and_then(|value| json.end().map(|()| value));
    read.map_err(|error| {
        if error.is_data() {
            BodyError::Value {
                at: track.path().to_string(),
                reason: without_position(&error),
            }
        } else {
            BodyError::Syntax(error.to_string())
        }
    })
}

/// The error's message without serde_json's " at line 1 column 9": the path says where.
fn without_position(error: &serde_json::Error) -> String {
    let text = error.to_string();
    let position = format!(" at line {} column {}", error.line(), error.column());
    match text.strip_suffix(&position) {
        Some(message) => message.to_owned(),
        None => text,
    }
}

/// Well-known types whose JSON is not an object of their fields.
fn special_json(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Any"
            | "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.Struct"
            | "google.protobuf.Value"
            | "google.protobuf.ListValue"
            | "google.protobuf.Empty"
    ) || scalar::wrapped(message).is_some()
}

fn deeper<E: de::Error>(depth: usize) -> Result<usize, E> {
    if depth >= MAX_DEPTH {
        return Err(E::custom(format!(
            "the body is nested more than {MAX_DEPTH} deep"
        )));
    }
    Ok(depth + 1)
}

/// A field's value: a list, a map, or one value of its kind.
struct FieldSeed {
    field: FieldDescriptor,
    depth: usize,
}

impl<'de> DeserializeSeed<'de> for FieldSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        let depth = self.depth;
        match self.field.kind() {
            Kind::Message(entry) if self.field.is_map() => {
                deserializer.deserialize_any(MapVisitor {
                    key: entry.map_entry_key_field().kind(),
                    value: entry.map_entry_value_field().kind(),
                    depth,
                })
            }
            kind if self.field.is_list() => {
                deserializer.deserialize_any(ListVisitor { kind, depth })
            }
            kind => KindSeed::new(kind, depth).deserialize(deserializer),
        }
    }
}

/// One value of a kind: a scalar, or a message.
struct KindSeed {
    kind: Kind,
    depth: usize,
}

impl KindSeed {
    fn new(kind: Kind, depth: usize) -> Self {
        Self { kind, depth }
    }
}

impl<'de> DeserializeSeed<'de> for KindSeed {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        let kind = match &self.kind {
            Kind::Message(message) => match scalar::wrapped(message) {
                // A wrapper's JSON is the value it wraps.
                Some(kind) => kind,
                None if message.full_name() == "google.protobuf.Any" => {
                    return deserializer.deserialize_any(AnyVisitor {
                        any: message,
                        depth: self.depth,
                    });
                }
                None if special_json(message) => return Value::deserialize(deserializer),
                None => {
                    return deserializer.deserialize_any(MessageVisitor {
                        message,
                        depth: self.depth,
                    });
                }
            },
            kind => kind.clone(),
        };
        let raw = <&RawValue>::deserialize(deserializer)?;
        let text = raw.get();
        let token = match text.as_bytes().first() {
            Some(b'n') => return Ok(Value::Null),
            Some(b't') => Token::Bool(true),
            Some(b'f') => Token::Bool(false),
            Some(b'"') => {
                let string: String = serde_json::from_str(text).map_err(de::Error::custom)?;
                return scalar::scalar(&kind, Token::String(&string)).map_err(de::Error::custom);
            }
            Some(b'{') => Token::Other("an object"),
            Some(b'[') => Token::Other("an array"),
            _ => Token::Number(text),
        };
        scalar::scalar(&kind, token).map_err(de::Error::custom)
    }
}

/// A message's object: each known field read by its kind, the rest kept as written.
struct MessageVisitor<'a> {
    message: &'a MessageDescriptor,
    depth: usize,
}

impl<'de> Visitor<'de> for MessageVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "an object ({})", self.message.full_name())
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = deeper(self.depth)?;
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = match field(self.message, &key) {
                Some(field) => map.next_value_seed(FieldSeed { field, depth })?,
                None => map.next_value::<Value>()?,
            };
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// The field `key` names in `message`, by JSON or `.proto` name (as prost-reflect finds it).
fn field(message: &MessageDescriptor, key: &str) -> Option<FieldDescriptor> {
    message
        .get_field_by_json_name(key)
        .or_else(|| message.get_field_by_name(key))
}

/// A repeated field's array.
struct ListVisitor {
    kind: Kind,
    depth: usize,
}

impl<'de> Visitor<'de> for ListVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        let depth = deeper(self.depth)?;
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element_seed(KindSeed::new(self.kind.clone(), depth))? {
            items.push(item);
        }
        Ok(Value::Array(items))
    }
}

/// A map field's object: keys as written (an unsigned key takes no sign), values by kind.
struct MapVisitor {
    key: Kind,
    value: Kind,
    depth: usize,
}

impl<'de> Visitor<'de> for MapVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = deeper(self.depth)?;
        let unsigned = matches!(
            self.key,
            Kind::Uint32 | Kind::Uint64 | Kind::Fixed32 | Kind::Fixed64
        );
        let mut object = Map::new();
        while let Some(key) = map.next_key::<String>()? {
            if unsigned && key.starts_with('+') {
                return Err(de::Error::custom(format!(
                    "the map key {key:?} is not an unsigned integer"
                )));
            }
            let value = map.next_value_seed(KindSeed::new(self.value.clone(), depth))?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// A `google.protobuf.Any`: `@type`, then the payload's fields (or, for a well-known type,
/// its JSON under `value`) read by the payload's type. Entries before `@type` wait for it.
struct AnyVisitor<'a> {
    any: &'a MessageDescriptor,
    depth: usize,
}

impl<'de> Visitor<'de> for AnyVisitor<'_> {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object with \"@type\"")
    }

    fn visit_unit<E: de::Error>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        let depth = deeper(self.depth)?;
        let mut object = Map::new();
        let mut waiting: Vec<(String, &'de RawValue)> = Vec::new();
        // Known once `@type` is read: the payload's type, if the pool has it.
        let mut payload: Option<Option<MessageDescriptor>> = None;
        while let Some(key) = map.next_key::<String>()? {
            match &payload {
                None if key == "@type" => {
                    let url = map.next_value::<Value>()?;
                    let name = url
                        .as_str()
                        .map(|url| url.rsplit('/').next().unwrap_or(url));
                    let message =
                        name.and_then(|name| self.any.parent_pool().get_message_by_name(name));
                    for (key, raw) in waiting.drain(..) {
                        let mut json = serde_json::Deserializer::from_str(raw.get());
                        let value = AnyEntry::new(message.as_ref(), &key, depth)
                            .deserialize(&mut json)
                            .map_err(|error| {
                                de::Error::custom(format!("{key}: {}", without_position(&error)))
                            })?;
                        object.insert(key, value);
                    }
                    object.insert(key, url);
                    payload = Some(message);
                }
                None => waiting.push((key, map.next_value()?)),
                Some(message) => {
                    let value =
                        map.next_value_seed(AnyEntry::new(message.as_ref(), &key, depth))?;
                    object.insert(key, value);
                }
            }
        }
        // No `@type`: kept as written, for prost-reflect to refuse.
        for (key, raw) in waiting {
            let value = serde_json::from_str(raw.get()).map_err(de::Error::custom)?;
            object.insert(key, value);
        }
        Ok(Value::Object(object))
    }
}

/// One entry of an `Any` whose payload is a `message` (`None`: a type the pool lacks): a
/// field of the payload, the `value` of a well-known type, or anything else, kept as written.
enum AnyEntry {
    Field(FieldSeed),
    Value(KindSeed),
    Kept,
}

impl AnyEntry {
    fn new(message: Option<&MessageDescriptor>, key: &str, depth: usize) -> Self {
        match message {
            Some(message) if special_json(message) && key == "value" => {
                Self::Value(KindSeed::new(Kind::Message(message.clone()), depth))
            }
            Some(message) if !special_json(message) => match field(message, key) {
                Some(field) => Self::Field(FieldSeed { field, depth }),
                None => Self::Kept,
            },
            _ => Self::Kept,
        }
    }
}

impl<'de> DeserializeSeed<'de> for AnyEntry {
    type Value = Value;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        match self {
            Self::Field(seed) => seed.deserialize(deserializer),
            Self::Value(seed) => seed.deserialize(deserializer),
            Self::Kept => Value::deserialize(deserializer),
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    /// `body` read as a `bookstore.v1.Extras`.
    fn read(body: &str) -> Result<Value, BodyError> {
        let pool = crate::testdata::bookstore();
        let extras = pool.get_message_by_name("bookstore.v1.Extras").unwrap();
        read_message(&extras, body.as_bytes())
    }

    #[test]
    fn numbers_are_read_from_their_digits_wherever_they_are() {
        let max = f64::from(f32::MAX);
        let extras = "type.googleapis.com/bookstore.v1.Extras";
        let cases = [
            (
                r#"{"counts":{"a":9.223372036854775807e18}}"#.to_owned(),
                json!({"counts": {"a": i64::MAX}}),
            ),
            (r#"{"sales":"1e3"}"#.to_owned(), json!({"sales": 1000})),
            (
                r#"{"related":[{"pageCount":1e2},{"page_count":"2e0"}]}"#.to_owned(),
                json!({"related": [{"pageCount": 100}, {"page_count": 2}]}),
            ),
            (r#"{"weight":3.4028235e38}"#.to_owned(), json!({"weight": max})),
            // An Any's payload by its type, named first or last; a well-known type's `value`.
            (
                format!(r#"{{"attachment":{{"@type":"{extras}","weight":3.4028235e38}}}}"#),
                json!({"attachment": {"@type": extras, "weight": max}}),
            ),
            (
                format!(r#"{{"attachment":{{"isbn":1.8446744073709551615e19,"@type":"{extras}"}}}}"#),
                json!({"attachment": {"@type": extras, "isbn": u64::MAX}}),
            ),
            (
                r#"{"attachment":{"@type":"type.googleapis.com/google.protobuf.FloatValue","value":"NaN"}}"#.to_owned(),
                json!({"attachment": {"@type": "type.googleapis.com/google.protobuf.FloatValue", "value": "NaN"}}),
            ),
            // Kept as written, for prost-reflect: unknown fields and types, Struct, Duration.
            (
                r#"{"nope":1.5,"metadata":{"x":[1e2]},"loan":"1.5s","attachment":{"@type":"x/no.Such","a":1}}"#.to_owned(),
                json!({"nope": 1.5, "metadata": {"x": [100.0]}, "loan": "1.5s", "attachment": {"@type": "x/no.Such", "a": 1}}),
            ),
        ];
        for (body, expected) in cases {
            assert_eq!(read(&body), Ok(expected), "{body}");
        }
    }

    #[test]
    fn a_value_that_does_not_fit_says_where_it_is() {
        let cases = [
            (r#"{"isbn":18446744073709551616}"#, "isbn"),
            (r#"{"weight":1e39}"#, "weight"),
            (
                r#"{"related":[{},{"pageCount":1.5}]}"#,
                "related[1].pageCount",
            ),
            (r#"{"counts":{"a":"x"}}"#, "counts.a"),
            (r#"{"genreByYear":{"1":true}}"#, "genreByYear.1"),
            (r#"{"signedBy":7}"#, "signedBy"),
        ];
        for (body, path) in cases {
            match read(body) {
                Err(BodyError::Value { at, .. }) => assert_eq!(at, path, "{body}"),
                other => panic!("{body}: {other:?}"),
            }
        }
        let inside_any =
            r#"{"attachment":{"weight":"inf","@type":"type.googleapis.com/bookstore.v1.Extras"}}"#;
        assert_eq!(
            read(inside_any),
            Err(BodyError::Value {
                at: "attachment".into(),
                reason: "weight: \"inf\" is not a valid float: expected a number, or \"NaN\", \
                         \"Infinity\" or \"-Infinity\""
                    .into()
            })
        );
        assert!(matches!(read(r#"{"isbn":1"#), Err(BodyError::Syntax(_))));
        assert!(matches!(read(r#"{} {}"#), Err(BodyError::Syntax(_))));
    }

    #[test]
    fn anys_nested_past_the_depth_limit_are_refused() {
        let inner = r#"{"@type":"type.googleapis.com/bookstore.v1.Extras","isbn":"1"}"#;
        let any = "type.googleapis.com/google.protobuf.Any";
        // `@type` first: one deserializer reads it all. Last: each payload waits for its type
        // and is read by a deserializer of its own, which must not start the count anew.
        let first = |depth: usize| {
            format!(r#"{{"@type":"{any}","value":"#).repeat(depth) + inner + &"}".repeat(depth)
        };
        let last = |depth: usize| {
            r#"{"value":"#.repeat(depth) + inner + &format!(r#","@type":"{any}"}}"#).repeat(depth)
        };
        for (nested, depth, refused) in [
            (first(10), 10, None),
            (last(10), 10, None),
            (first(5_000), 5_000, Some("recursion limit")),
            (last(5_000), 5_000, Some("nested more than 128 deep")),
        ] {
            let body = format!(r#"{{"attachment":{nested}}}"#);
            match (refused, read(&body)) {
                (None, Ok(_)) => {}
                (
                    Some(reason),
                    Err(BodyError::Value { reason: why, .. } | BodyError::Syntax(why)),
                ) if why.contains(reason) => {}
                (_, read) => panic!("{depth}: {read:?}"),
            }
        }
    }
}
