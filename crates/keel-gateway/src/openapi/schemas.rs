//! `components.schemas`: a schema per message and enum, following the proto3 JSON mapping,
//! with the `.proto` comments as descriptions.

use std::collections::HashMap;

use prost_reflect::{EnumDescriptor, FieldDescriptor, FileDescriptor, Kind, MessageDescriptor};
use serde_json::{Map, Value, json};

use crate::binding::JsonOptions;

/// `components.schemas`: every message and enum reachable, by full name, each defined once.
pub(super) struct Schemas {
    json: JsonOptions,
    defined: Map<String, Value>,
    pending: Vec<Pending>,
    comments: Comments,
}

/// A type referenced and not yet defined.
enum Pending {
    Message(MessageDescriptor),
    Enum(EnumDescriptor),
}

impl Schemas {
    /// No schemas yet; field names as `json` says.
    pub(super) fn new(json: JsonOptions) -> Self {
        Self {
            json,
            defined: Map::new(),
            pending: Vec::new(),
            comments: Comments::default(),
        }
    }

    /// The comment on the element at `path` in `file`.
    pub(super) fn comment(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        self.comments.of(file, path)
    }

    /// The name a field has in JSON as the gateway writes it.
    pub(super) fn name<'f>(&self, field: &'f FieldDescriptor) -> &'f str {
        if self.json.proto_names {
            field.name()
        } else {
            field.json_name()
        }
    }

    /// A `$ref` to `name`, defined later from `pending` unless already known.
    fn reference(&mut self, name: &str, pending: impl FnOnce() -> Pending) -> Value {
        if !self.defined.contains_key(name) {
            // A placeholder until `finish`, so that recursive messages are queued once.
            self.defined.insert(name.to_owned(), Value::Null);
            self.pending.push(pending());
        }
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// A `$ref` to the message's schema.
    pub(super) fn message_ref(&mut self, message: &MessageDescriptor) -> Value {
        self.reference(message.full_name(), || Pending::Message(message.clone()))
    }

    /// A `$ref` to `google.rpc.Status`, the JSON of every error.
    pub(super) fn status_ref(&mut self) -> Value {
        for name in ["google.rpc.Status", "google.protobuf.Any"] {
            if let Some(schema) = known(name) {
                self.defined.insert(name.to_owned(), schema);
            }
        }
        json!({"$ref": "#/components/schemas/google.rpc.Status"})
    }

    /// Defines everything referenced, and what that references in turn.
    pub(super) fn finish(mut self) -> Map<String, Value> {
        while let Some(pending) = self.pending.pop() {
            let (name, schema) = match pending {
                Pending::Message(message) => {
                    let schema = known(message.full_name())
                        .unwrap_or_else(|| self.message_schema(&message, &[]));
                    (message.full_name().to_owned(), schema)
                }
                Pending::Enum(values) => (values.full_name().to_owned(), self.enum_schema(&values)),
            };
            self.defined.insert(name, schema);
        }
        self.defined
    }

    /// An object of the message's fields, leaving out the top-level fields in `skip`.
    pub(super) fn message_schema(&mut self, message: &MessageDescriptor, skip: &[&str]) -> Value {
        let mut properties = Map::new();
        for field in message.fields() {
            if skip.contains(&field.name()) {
                continue;
            }
            let schema = self.field_schema(&field);
            properties.insert(self.name(&field).to_owned(), schema);
        }
        let mut schema = json!({"type": "object", "properties": properties});
        if let Some(text) = self.comments.of(&message.parent_file(), message.path()) {
            schema["description"] = text.into();
        }
        schema
    }

    fn enum_schema(&mut self, values: &EnumDescriptor) -> Value {
        if values.full_name() == "google.protobuf.NullValue" {
            return json!({"type": "null"});
        }
        let names: Vec<String> = values
            .values()
            .map(|value| value.name().to_owned())
            .collect();
        let mut text: Vec<String> = self
            .comments
            .of(&values.parent_file(), values.path())
            .into_iter()
            .collect();
        for value in values.values() {
            if let Some(comment) = self.comments.of(&value.parent_file(), value.path()) {
                text.push(format!(
                    "- `{}`: {}",
                    value.name(),
                    comment.replace('\n', " ")
                ));
            }
        }
        let mut schema = json!({"type": "string", "enum": names});
        if !text.is_empty() {
            schema["description"] = text.join("\n\n").into();
        }
        schema
    }

    /// A field's schema as a property: repeated, map or single, with its description.
    pub(super) fn field_schema(&mut self, field: &FieldDescriptor) -> Value {
        let mut schema = match field.kind() {
            Kind::Message(entry) if field.is_map() => {
                let value = entry
                    .get_field(2)
                    .map_or_else(|| json!({}), |value| self.kind_schema(&value.kind()));
                let mut schema = json!({"type": "object", "additionalProperties": value});
                // Keys are always JSON strings; say which strings.
                match entry.get_field(1).map(|key| key.kind()) {
                    Some(Kind::Bool) => {
                        schema["propertyNames"] = json!({"enum": ["true", "false"]})
                    }
                    Some(Kind::String) | None => {}
                    Some(_) => schema["propertyNames"] = json!({"pattern": "^-?[0-9]+$"}),
                }
                schema
            }
            kind if field.is_list() => json!({"type": "array", "items": self.kind_schema(&kind)}),
            kind => self.kind_schema(&kind),
        };
        if let Some(text) = self.description(field) {
            schema["description"] = text.into();
        }
        if deprecated(field) {
            schema["deprecated"] = true.into();
        }
        schema
    }

    /// A field's comment, and which oneof it belongs to.
    pub(super) fn description(&mut self, field: &FieldDescriptor) -> Option<String> {
        let mut text: Vec<String> = self
            .comments
            .of(&field.parent_file(), field.path())
            .into_iter()
            .collect();
        if let Some(oneof) = field.containing_oneof()
            && !oneof.is_synthetic()
        {
            let members: Vec<String> = oneof
                .fields()
                .map(|member| format!("`{}`", self.name(&member)))
                .collect();
            text.push(format!(
                "Oneof `{}`: set at most one of {}.",
                oneof.name(),
                members.join(", ")
            ));
        }
        (!text.is_empty()).then(|| text.join("\n\n"))
    }

    /// The schema of one value of a field of this kind.
    pub(super) fn kind_schema(&mut self, kind: &Kind) -> Value {
        match kind {
            Kind::Double => json!({"type": "number", "format": "double"}),
            Kind::Float => json!({"type": "number", "format": "float"}),
            Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
                json!({"type": "integer", "format": "int32"})
            }
            Kind::Uint32 | Kind::Fixed32 => {
                json!({"type": "integer", "format": "uint32", "minimum": 0, "maximum": u32::MAX})
            }
            // 64-bit integers are JSON strings, so that no digit is lost to a double.
            Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => {
                json!({"type": "string", "format": "int64"})
            }
            Kind::Uint64 | Kind::Fixed64 => json!({"type": "string", "format": "uint64"}),
            Kind::Bool => json!({"type": "boolean"}),
            Kind::String => json!({"type": "string"}),
            Kind::Bytes => json!({"type": "string", "format": "byte"}),
            Kind::Message(message) => self.message_ref(message),
            Kind::Enum(values) => {
                self.reference(values.full_name(), || Pending::Enum(values.clone()))
            }
        }
    }
}

/// The schemas of messages whose JSON form is not an object of their fields (the
/// well-known types), and of `google.rpc.Status` as the gateway writes it.
pub(super) fn known(name: &str) -> Option<Value> {
    let wrapper = |kind: &str, format: &str| {
        let mut schema = json!({"type": [kind, "null"]});
        if !format.is_empty() {
            schema["format"] = format.into();
        }
        schema
    };
    Some(match name {
        "google.protobuf.Timestamp" => json!({
            "type": "string", "format": "date-time",
            "description": "An RFC 3339 date and time (written in UTC), e.g. `2024-01-02T03:04:05Z`.",
        }),
        "google.protobuf.Duration" => json!({
            "type": "string", "pattern": "^-?[0-9]+(\\.[0-9]{1,9})?s$",
            "description": "Seconds with up to nine decimals and an `s`, e.g. `1.5s`.",
        }),
        "google.protobuf.FieldMask" => json!({
            "type": "string",
            "description": "Field paths in lowerCamelCase, separated by commas, e.g. `title,author.displayName`.",
        }),
        "google.protobuf.Struct" => json!({"type": "object", "additionalProperties": true}),
        "google.protobuf.Value" => json!({"description": "Any JSON value."}),
        "google.protobuf.ListValue" => json!({"type": "array", "items": true}),
        "google.protobuf.Empty" => json!({"type": "object"}),
        "google.protobuf.Any" => json!({
            "type": "object",
            "properties": {"@type": {
                "type": "string",
                "description": "The message's type, e.g. `type.googleapis.com/google.rpc.ErrorInfo`.",
            }},
            "required": ["@type"],
            "additionalProperties": true,
            "description": "A message of the type `@type` names: its fields beside `@type`, or \
                `value` for a type whose JSON is not an object.",
        }),
        "google.protobuf.DoubleValue" => wrapper("number", "double"),
        "google.protobuf.FloatValue" => wrapper("number", "float"),
        "google.protobuf.Int64Value" => wrapper("string", "int64"),
        "google.protobuf.UInt64Value" => wrapper("string", "uint64"),
        "google.protobuf.Int32Value" => wrapper("integer", "int32"),
        "google.protobuf.UInt32Value" => wrapper("integer", "uint32"),
        "google.protobuf.BoolValue" => wrapper("boolean", ""),
        "google.protobuf.StringValue" => wrapper("string", ""),
        "google.protobuf.BytesValue" => wrapper("string", "byte"),
        "google.rpc.Status" => json!({
            "type": "object",
            "properties": {
                "code": {
                    "type": "integer", "format": "int32",
                    "description": "The gRPC status code, e.g. 5 for NOT_FOUND.",
                },
                "message": {"type": "string", "description": "What went wrong, for developers."},
                "details": {
                    "type": "array",
                    "items": {"$ref": "#/components/schemas/google.protobuf.Any"},
                    "description": "Machine-readable details, e.g. `google.rpc.BadRequest`.",
                },
            },
            "description": "An error, as `google.rpc.Status` in its JSON form.",
        }),
        _ => return None,
    })
}

/// Whether the field is marked `[deprecated = true]`.
pub(super) fn deprecated(field: &FieldDescriptor) -> bool {
    field
        .field_descriptor_proto()
        .options
        .as_ref()
        .is_some_and(|options| options.deprecated())
}

/// The comments of a pool's files, by file and descriptor path, read once per file.
#[derive(Default)]
struct Comments {
    files: HashMap<String, HashMap<Vec<i32>, String>>,
}

impl Comments {
    /// The leading (else trailing) comment of the element at `path` in `file`.
    fn of(&mut self, file: &FileDescriptor, path: &[i32]) -> Option<String> {
        self.files
            .entry(file.name().to_owned())
            .or_insert_with(|| {
                let mut index = HashMap::new();
                let locations = file
                    .file_descriptor_proto()
                    .source_code_info
                    .iter()
                    .flat_map(|info| &info.location);
                for location in locations {
                    let text = clean(location.leading_comments())
                        .or_else(|| clean(location.trailing_comments()));
                    if let Some(text) = text {
                        index.entry(location.path.clone()).or_insert(text);
                    }
                }
                index
            })
            .get(path)
            .cloned()
    }
}

/// A comment without the space after each `//`, or `None` if it is blank.
fn clean(comment: &str) -> Option<String> {
    let lines: Vec<&str> = comment
        .lines()
        .map(|line| line.strip_prefix(' ').unwrap_or(line).trim_end())
        .collect();
    let text = lines.join("\n");
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::openapi::testing::{bookstore, reference, schema};

    #[test]
    fn schemas_follow_the_proto3_json_mapping() {
        let document = bookstore(JsonOptions::default());
        let book = &schema(&document, "bookstore.v1.Book")["properties"];
        assert_eq!(
            book["pageCount"],
            json!({"type": "string", "format": "int64"})
        );
        assert_eq!(book["genre"], reference("bookstore.v1.Genre"));
        assert_eq!(
            book["tags"],
            json!({"type": "array", "items": {"type": "string"}})
        );
        assert_eq!(book["published"], reference("google.protobuf.Timestamp"));
        assert_eq!(
            schema(&document, "bookstore.v1.Genre"),
            &json!({"type": "string", "enum": ["GENRE_UNSPECIFIED", "GENRE_FICTION", "GENRE_HISTORY"]})
        );

        let extras = &schema(&document, "bookstore.v1.Extras")["properties"];
        assert_eq!(
            extras["isbn"],
            json!({"type": "string", "format": "uint64"})
        );
        assert_eq!(
            extras["offset"],
            json!({"type": "string", "format": "int64"})
        );
        assert_eq!(
            extras["rank"],
            json!({"type": "integer", "format": "int32"})
        );
        assert_eq!(extras["shelfSlot"]["minimum"], 0);
        assert_eq!(
            extras["weight"],
            json!({"type": "number", "format": "float"})
        );
        assert_eq!(extras["cover"], json!({"type": "string", "format": "byte"}));
        assert_eq!(
            extras["counts"],
            json!({"type": "object", "additionalProperties": {"type": "string", "format": "int64"}})
        );
        assert_eq!(
            extras["genreByYear"]["additionalProperties"],
            reference("bookstore.v1.Genre")
        );
        assert_eq!(extras["legacyCode"]["deprecated"], true);
        assert_eq!(
            extras["ebookUrl"]["description"],
            "Where to read it online.\n\nOneof `source`: set at most one of `ebookUrl`, `signedBy`."
        );
        // Book → Extras → Book: a reference back, defined once.
        assert_eq!(
            extras["related"],
            json!({"type": "array", "items": reference("bookstore.v1.Book")})
        );
        assert_eq!(
            schema(&document, "bookstore.v1.Extras.Format")["description"],
            "The shapes a book comes in.\n\n- `FORMAT_HARDCOVER`: Bound in boards."
        );

        for (name, kind, format) in [
            (
                "google.protobuf.Timestamp",
                json!("string"),
                Some("date-time"),
            ),
            ("google.protobuf.Duration", json!("string"), None),
            ("google.protobuf.FieldMask", json!("string"), None),
            (
                "google.protobuf.Int32Value",
                json!(["integer", "null"]),
                Some("int32"),
            ),
            (
                "google.protobuf.Int64Value",
                json!(["string", "null"]),
                Some("int64"),
            ),
            (
                "google.protobuf.StringValue",
                json!(["string", "null"]),
                None,
            ),
            ("google.protobuf.Struct", json!("object"), None),
            ("google.protobuf.ListValue", json!("array"), None),
            ("google.protobuf.Any", json!("object"), None),
            ("google.protobuf.Empty", json!("object"), None),
        ] {
            let defined = schema(&document, name);
            assert_eq!(defined["type"], kind, "{name}: {defined}");
            assert_eq!(defined["format"].as_str(), format, "{name}: {defined}");
        }
        assert_eq!(schema(&document, "google.protobuf.Value").get("type"), None);
        assert!(
            schema(&document, "google.protobuf.Duration")["description"]
                .as_str()
                .unwrap()
                .contains("1.5s")
        );

        let proto_names = bookstore(JsonOptions {
            proto_names: true,
            ..JsonOptions::default()
        });
        let book = &schema(&proto_names, "bookstore.v1.Book")["properties"];
        assert_eq!(book["page_count"]["format"], "int64");
        assert_eq!(book.get("pageCount"), None);
    }

    #[test]
    fn every_reference_is_defined() {
        fn references(value: &Value, found: &mut Vec<String>) {
            match value {
                Value::Object(object) => {
                    if let Some(Value::String(target)) = object.get("$ref") {
                        found.push(target.clone());
                    }
                    object.values().for_each(|inner| references(inner, found));
                }
                Value::Array(items) => items.iter().for_each(|inner| references(inner, found)),
                _ => {}
            }
        }
        let document = bookstore(JsonOptions::default());
        let mut found = Vec::new();
        references(&document, &mut found);
        assert!(found.len() > 20);
        for target in found {
            let name = target.strip_prefix("#/components/schemas/").unwrap();
            let defined = schema(&document, name);
            assert!(defined.is_object(), "{target} is not defined");
        }
    }
}
