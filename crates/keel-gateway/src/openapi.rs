//! An OpenAPI 3.1 document of the REST/JSON routes, made from the same rules and descriptors
//! the gateway serves: a path item per template, an operation per rule, and schemas that
//! follow the proto3 JSON mapping as the gateway writes it (64-bit integers as strings, enums
//! by name, well-known types in their JSON forms), with the `.proto` comments as descriptions
//! when the pool has source info.
//!
//! `parameters` turns templates into OpenAPI paths and their parameters, `schemas`
//! writes `components.schemas`; this file assembles the operations.

mod parameters;
mod schemas;

use std::collections::{HashMap, HashSet};

use serde_json::{Map, Value, json};

use self::parameters::{Piece, path_parameters, pieces, query_parameters, render};
use self::schemas::{Schemas, known};
use crate::binding::JsonOptions;
use crate::rules::{Binding, BodyRule, Rules, resolve};
use crate::template::Template;

/// The document's `info`: the API's title and version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiInfo {
    /// What the API is called.
    pub title: String,
    /// The version of the API (not of OpenAPI).
    pub version: String,
}

impl ApiInfo {
    /// Info with this title and version.
    pub fn new(title: impl Into<String>, version: impl Into<String>) -> Self {
        Self {
            title: title.into(),
            version: version.into(),
        }
    }
}

impl Default for ApiInfo {
    /// Title "API", version "0.0.0".
    fn default() -> Self {
        Self::new("API", "0.0.0")
    }
}

/// The OpenAPI 3.1.0 document of every route in `rules`. Field names follow
/// `json.proto_names`, as the gateway writes them (it reads either form).
pub fn openapi(rules: &Rules, info: &ApiInfo, json: JsonOptions) -> Value {
    let mut short_names: HashMap<&str, HashSet<&str>> = HashMap::new();
    for (_, _, binding) in rules.router.iter() {
        let service = binding.method.parent_service();
        short_names
            .entry(service.name())
            .or_default()
            .insert(service.full_name());
    }
    let mut document = Document {
        schemas: Schemas::new(json),
        paths: Map::new(),
        shapes: HashMap::new(),
        operation_ids: HashSet::new(),
        tags: Vec::new(),
    };
    for (_, template, binding) in rules.router.iter() {
        let service = binding.method.parent_service();
        // A service's short name, unless two packages have services of that name.
        let unique = short_names
            .get(service.name())
            .is_some_and(|packages| packages.len() == 1);
        let tag = if unique {
            service.name()
        } else {
            service.full_name()
        };
        document.route(template, binding, tag);
    }
    let schemas = document.schemas.finish();
    json!({
        "openapi": "3.1.0",
        "info": {"title": info.title, "version": info.version},
        "tags": document.tags,
        "paths": document.paths,
        "components": {"schemas": schemas},
    })
}

struct Document {
    schemas: Schemas,
    paths: Map<String, Value>,
    /// The path keys of each shape (the path with its placeholders emptied, which OpenAPI
    /// deems the same path whatever the names), with their placeholder names.
    shapes: HashMap<String, Vec<(String, Vec<String>)>>,
    operation_ids: HashSet<String>,
    tags: Vec<Value>,
}

impl Document {
    fn route(&mut self, template: &Template, binding: &Binding, tag: &str) {
        // OpenAPI 3.1 has no room for other methods (a `custom` rule's own kind).
        let verb = binding.http_method.as_str().to_ascii_lowercase();
        if !matches!(
            verb.as_str(),
            "get" | "put" | "post" | "delete" | "options" | "head" | "patch" | "trace"
        ) {
            return;
        }
        let pieces = pieces(template);
        let mut wildcards = 0;
        let names: Vec<String> = pieces
            .iter()
            .filter_map(|piece| match piece {
                Piece::Literal(_) => None,
                Piece::Variable(variable, _) => Some(variable.field_path.join(".")),
                Piece::Wildcard(_) => {
                    wildcards += 1;
                    Some(format!("wildcard{wildcards}"))
                }
            })
            .collect();
        let shape = render(&pieces, &vec![String::new(); names.len()], template);
        let keys = self.shapes.entry(shape).or_default();
        // Same shape, free method: the same path item, its names for the placeholders.
        let free = keys.iter().find(|(key, _)| {
            self.paths
                .get(key)
                .is_none_or(|item| item.get(&verb).is_none())
        });
        let (key, names) = match free {
            Some(found) => found.clone(),
            // Else a path of its own: its names, with a suffix if the shape is taken.
            None => {
                let mut suffix = keys.len();
                let (key, names) = loop {
                    let names: Vec<String> = match suffix {
                        0 => names.clone(),
                        _ => names
                            .iter()
                            .map(|name| format!("{name}_{}", suffix + 1))
                            .collect(),
                    };
                    let key = render(&pieces, &names, template);
                    if !self.paths.contains_key(&key) {
                        break (key, names);
                    }
                    suffix += 1;
                };
                keys.push((key.clone(), names.clone()));
                (key, names)
            }
        };
        let operation = self.operation(binding, &pieces, &names, tag);
        if let Value::Object(item) = self
            .paths
            .entry(key)
            .or_insert_with(|| Value::Object(Map::new()))
        {
            item.insert(verb, operation);
        }
    }

    fn operation(
        &mut self,
        binding: &Binding,
        pieces: &[Piece<'_>],
        names: &[String],
        tag: &str,
    ) -> Value {
        let method = &binding.method;
        let service = method.parent_service();
        if !self.tags.iter().any(|known| known["name"] == tag) {
            let mut entry = json!({"name": tag});
            if let Some(text) = self.schemas.comment(&service.parent_file(), service.path()) {
                entry["description"] = text.into();
            }
            self.tags.push(entry);
        }
        let base = format!("{}_{}", service.name(), method.name());
        let mut id = base.clone();
        let mut counter = 1;
        while !self.operation_ids.insert(id.clone()) {
            counter += 1;
            id = format!("{base}_{counter}");
        }
        let mut operation = json!({"operationId": id, "tags": [tag]});
        if let Some(text) = self.schemas.comment(&method.parent_file(), method.path()) {
            let (summary, rest) = text.split_once("\n\n").unwrap_or((&text, ""));
            operation["summary"] = summary.replace('\n', " ").into();
            if !rest.trim().is_empty() {
                operation["description"] = rest.trim().into();
            }
        }
        if method
            .method_descriptor_proto()
            .options
            .as_ref()
            .is_some_and(|options| options.deprecated())
        {
            operation["deprecated"] = true.into();
        }
        let mut parameters = path_parameters(&mut self.schemas, binding, pieces, names);
        parameters.extend(query_parameters(&mut self.schemas, binding));
        if !parameters.is_empty() {
            operation["parameters"] = parameters.into();
        }
        if let Some(body) = self.request_body(binding) {
            operation["requestBody"] = body;
        }
        operation["responses"] = self.responses(binding);
        operation
    }

    fn request_body(&mut self, binding: &Binding) -> Option<Value> {
        let input = binding.method.input();
        let schema = match &binding.body {
            BodyRule::None => return None,
            BodyRule::Field(field) => self.schemas.field_schema(field),
            BodyRule::Whole => {
                // The path's values win over the body's: the body is the rest.
                let top: Vec<String> = binding
                    .template
                    .variables
                    .iter()
                    .filter(|variable| variable.field_path.len() == 1)
                    .filter_map(|variable| resolve(&input, &variable.field_path).ok())
                    .map(|field| field.name().to_owned())
                    .collect();
                if top.is_empty() || known(input.full_name()).is_some() {
                    self.schemas.message_ref(&input)
                } else {
                    let top: Vec<&str> = top.iter().map(String::as_str).collect();
                    self.schemas.message_schema(&input, &top)
                }
            }
        };
        let mut body = json!({"content": {"application/json": {"schema": schema}}});
        if binding.method.is_client_streaming() {
            body["description"] =
                "One JSON object per message, one after another (or one per line).".into();
        }
        Some(body)
    }

    fn responses(&mut self, binding: &Binding) -> Value {
        let method = &binding.method;
        let message = match &binding.response_body {
            Some(field) => self.schemas.field_schema(field),
            None => self.schemas.message_ref(&method.output()),
        };
        let status = self.schemas.status_ref();
        let ok = if method.is_server_streaming() {
            json!({
                "description": "A stream of messages: one `{\"result\": message}` JSON line each, \
                    ended by an `{\"error\": status}` line if the call fails after the first \
                    message. With `Accept: text/event-stream`, Server-Sent Events: a `data:` \
                    event per message, an `error` event holding the status.",
                "content": {
                    "application/x-ndjson": {"schema": {"oneOf": [
                        {"type": "object", "properties": {"result": message}, "required": ["result"]},
                        {"type": "object", "properties": {"error": status}, "required": ["error"]},
                    ]}},
                    "text/event-stream": {"schema": {"type": "string"}},
                },
            })
        } else {
            json!({"description": "OK", "content": {"application/json": {"schema": message}}})
        };
        json!({
            "200": ok,
            "default": {
                "description": "An error: the gRPC status, its code mapped to the HTTP status.",
                "content": {"application/json": {"schema": status}},
            },
        })
    }
}

#[cfg(test)]
mod testing {
    //! What the tests of the document and of its parts share.

    use serde_json::{Value, json};

    use super::{ApiInfo, openapi};
    use crate::binding::JsonOptions;
    use crate::rules::Rules;

    /// The document of the bookstore contract.
    pub(super) fn bookstore(json: JsonOptions) -> Value {
        let rules = Rules::load(&crate::testdata::bookstore(), &[]).unwrap();
        openapi(&rules, &ApiInfo::new("Bookstore", "1.0.0"), json)
    }

    /// The schema `name` of the document's components.
    pub(super) fn schema<'d>(document: &'d Value, name: &str) -> &'d Value {
        &document["components"]["schemas"][name]
    }

    /// A `$ref` to the component `name`.
    pub(super) fn reference(name: &str) -> Value {
        json!({"$ref": format!("#/components/schemas/{name}")})
    }

    /// The names of an operation's parameters that are `in` this place.
    pub(super) fn parameters(operation: &Value, place: &str) -> Vec<String> {
        operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|parameter| parameter["in"] == place)
            .map(|parameter| parameter["name"].as_str().unwrap().to_owned())
            .collect()
    }

    /// An operation's parameter `name`.
    pub(super) fn parameter<'d>(operation: &'d Value, name: &str) -> &'d Value {
        operation["parameters"]
            .as_array()
            .and_then(|all| all.iter().find(|parameter| parameter["name"] == name))
            .unwrap_or_else(|| panic!("no parameter {name} in {operation}"))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::testing::{bookstore, parameter, reference, schema};
    use crate::binding::JsonOptions;

    #[test]
    fn every_rule_is_an_operation_under_its_openapi_path() {
        let document = bookstore(JsonOptions::default());
        assert_eq!(document["openapi"], "3.1.0");
        assert_eq!(
            document["info"],
            json!({"title": "Bookstore", "version": "1.0.0"})
        );
        let operations: Vec<String> = document["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .iter()
                    .map(move |(verb, operation)| {
                        format!(
                            "{verb} {path} {}",
                            operation["operationId"].as_str().unwrap()
                        )
                    })
            })
            .collect();
        assert_eq!(
            operations,
            [
                "get /v1/books/{name} Bookstore_GetBook_2",
                "post /v1/books/{name}:archive Bookstore_Archive",
                "get /v1/search Bookstore_Search",
                "get /v1/{name} Bookstore_GetBook",
                // Same path, another field: the placeholder keeps the path's name.
                "patch /v1/{name} Bookstore_UpdateBook",
                "get /v1/{name}:watch Bookstore_WatchShelf",
                "post /v1/{parent}/books Bookstore_CreateBook",
            ]
        );
        let get = &document["paths"]["/v1/{name}"]["get"];
        assert_eq!(get["tags"], json!(["Bookstore"]));
        assert_eq!(get["summary"], "Gets one book.");
        assert_eq!(
            get["description"],
            "By its full name under its shelf, or by its name alone."
        );
        assert_eq!(
            document["tags"],
            json!([{"name": "Bookstore", "description": "Books on shelves."}])
        );
        let patch = &document["paths"]["/v1/{name}"]["patch"];
        assert!(
            parameter(patch, "name")["description"]
                .as_str()
                .unwrap()
                .starts_with("Sets `book.name`."),
            "{patch}"
        );
    }

    #[test]
    fn bodies_and_responses_are_the_messages_or_fields_the_rules_name() {
        let document = bookstore(JsonOptions::default());
        let paths = &document["paths"];
        let content = |operation: &Value, part: &str| operation[part]["content"].clone();
        let status = reference("google.rpc.Status");

        let create = &paths["/v1/{parent}/books"]["post"];
        assert_eq!(
            content(create, "requestBody"),
            json!({"application/json": {"schema": reference("bookstore.v1.Book")}})
        );
        // body "*" less the path's name.
        let archive = &paths["/v1/books/{name}:archive"]["post"];
        assert_eq!(
            content(archive, "requestBody")["application/json"]["schema"],
            json!({"type": "object", "properties": {
                "reason": {"type": "string"},
                "permanent": {"type": "boolean"},
            }})
        );
        let get = &paths["/v1/{name}"]["get"];
        assert_eq!(get.get("requestBody"), None);
        assert_eq!(
            get["responses"]["200"]["content"],
            json!({"application/json": {"schema": reference("bookstore.v1.Book")}})
        );
        assert_eq!(
            get["responses"]["default"]["content"],
            json!({"application/json": {"schema": status}})
        );
        // response_body "books".
        let search = &paths["/v1/search"]["get"];
        assert_eq!(
            search["responses"]["200"]["content"]["application/json"]["schema"],
            json!({"type": "array", "items": reference("bookstore.v1.Book")})
        );
        // Server streaming: NDJSON records or Server-Sent Events.
        let watch = &paths["/v1/{name}:watch"]["get"]["responses"]["200"]["content"];
        assert_eq!(
            watch["application/x-ndjson"]["schema"]["oneOf"],
            json!([
                {"type": "object", "properties": {"result": reference("bookstore.v1.Book")}, "required": ["result"]},
                {"type": "object", "properties": {"error": status}, "required": ["error"]},
            ])
        );
        assert_eq!(
            watch["text/event-stream"]["schema"],
            json!({"type": "string"})
        );

        let status = schema(&document, "google.rpc.Status");
        assert_eq!(status["properties"]["code"]["type"], "integer");
        assert_eq!(status["properties"]["message"]["type"], "string");
        assert_eq!(
            status["properties"]["details"]["items"],
            reference("google.protobuf.Any")
        );
        assert_eq!(
            schema(&document, "google.protobuf.Any")["required"],
            json!(["@type"])
        );
    }
}
