//! The parameters of an operation: the path's variables (and wildcards), and the query
//! parameters the gateway reads for every field neither the path nor the body sets.

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};
use serde_json::{Value, json};

use super::schemas::{Schemas, deprecated, known};
use crate::rules::{Binding, BodyRule, is_scalar_like, resolve};
use crate::template::{Segment, Template, Variable};

/// How deep query parameters go into nested messages (`a.b.c`), so that a wide tree of
/// messages cannot make the document explode.
const MAX_QUERY_DEPTH: usize = 8;

/// A piece of an OpenAPI path: literal text, or a placeholder for a variable or for a
/// wildcard outside any variable.
pub(super) enum Piece<'t> {
    Literal(&'t str),
    Variable(&'t Variable, &'t [Segment]),
    Wildcard(&'t Segment),
}

/// The path parameters: a variable's field (its pattern when it covers several segments),
/// or a wildcard no field takes.
pub(super) fn path_parameters(
    schemas: &mut Schemas,
    binding: &Binding,
    pieces: &[Piece<'_>],
    names: &[String],
) -> Vec<Value> {
    let input = binding.method.input();
    let placeholders = pieces
        .iter()
        .filter(|piece| !matches!(piece, Piece::Literal(_)));
    let mut parameters = Vec::new();
    for (piece, name) in placeholders.zip(names) {
        let (schema, description, marked) = match piece {
            Piece::Variable(variable, covered) => {
                let field = resolve(&input, &variable.field_path).ok();
                let mut notes = Vec::new();
                let shown = variable.field_path.join(".");
                if *name != shown {
                    notes.push(format!("Sets `{shown}`."));
                }
                if let Some(text) = field.as_ref().and_then(|f| schemas.description(f)) {
                    notes.push(text);
                }
                let schema = if *covered == [Segment::Any] {
                    match &field {
                        Some(field) => schemas.kind_schema(&field.kind()),
                        None => json!({"type": "string"}),
                    }
                } else {
                    let matched: Vec<String> = covered.iter().map(ToString::to_string).collect();
                    notes.push(format!(
                        "Matches `{}`: send the slashes between its segments as they are, \
                         not escaped as `%2F`.",
                        matched.join("/")
                    ));
                    json!({"type": "string", "pattern": pattern(covered)})
                };
                (
                    schema,
                    notes.join("\n\n"),
                    field.as_ref().is_some_and(deprecated),
                )
            }
            Piece::Wildcard(Segment::Rest) => (
                json!({"type": "string"}),
                "Any rest of the path, slashes sent as they are; the service does not read it."
                    .to_owned(),
                false,
            ),
            _ => (
                json!({"type": "string"}),
                "Any one path segment; the service does not read it.".to_owned(),
                false,
            ),
        };
        let mut parameter = json!({"name": name, "in": "path", "required": true, "schema": schema});
        if !description.is_empty() {
            parameter["description"] = description.into();
        }
        if marked {
            parameter["deprecated"] = true.into();
        }
        parameters.push(parameter);
    }
    parameters
}

/// Every field neither the path nor the body sets, as the gateway reads them from the
/// query string: nested fields as `a.b`, repeated ones as `x=1&x=2`.
pub(super) fn query_parameters(schemas: &mut Schemas, binding: &Binding) -> Vec<Value> {
    let body = match &binding.body {
        BodyRule::Whole => return Vec::new(),
        BodyRule::Field(field) => Some(field.name()),
        BodyRule::None => None,
    };
    let input = binding.method.input();
    let bound: Vec<Vec<String>> = binding
        .template
        .variables
        .iter()
        .filter_map(|variable| proto_path(&input, &variable.field_path))
        .collect();
    let mut parameters = Vec::new();
    let mut walk = QueryWalk {
        bound: &bound,
        body,
        path: Vec::new(),
        names: Vec::new(),
        stack: vec![input.full_name().to_owned()],
        parameters: &mut parameters,
    };
    walk.message(schemas, &input);
    parameters
}

/// The query parameters under one message, depth first.
struct QueryWalk<'a> {
    /// The fields the path sets, as proto names.
    bound: &'a [Vec<String>],
    /// The top-level field the body sets.
    body: Option<&'a str>,
    /// The proto names down to the current message.
    path: Vec<String>,
    /// The same path as the parameter names it (JSON or proto names).
    names: Vec<String>,
    /// The messages being walked, so that recursive ones stop.
    stack: Vec<String>,
    parameters: &'a mut Vec<Value>,
}

impl QueryWalk<'_> {
    fn message(&mut self, schemas: &mut Schemas, message: &MessageDescriptor) {
        for field in message.fields() {
            if field.is_map() || (self.path.is_empty() && self.body == Some(field.name())) {
                continue;
            }
            self.path.push(field.name().to_owned());
            self.names.push(schemas.name(&field).to_owned());
            if !self.bound.contains(&self.path) {
                self.field(schemas, &field);
            }
            self.path.pop();
            self.names.pop();
        }
    }

    fn field(&mut self, schemas: &mut Schemas, field: &FieldDescriptor) {
        if let Kind::Message(inner) = field.kind()
            && !is_scalar_like(&inner)
        {
            // Structs, lists, Any and repeated messages have no query form.
            let nested = !field.is_list()
                && known(inner.full_name()).is_none()
                && !self.stack.iter().any(|name| name == inner.full_name())
                && self.stack.len() < MAX_QUERY_DEPTH;
            if nested {
                self.stack.push(inner.full_name().to_owned());
                self.message(schemas, &inner);
                self.stack.pop();
            }
            return;
        }
        let item = schemas.kind_schema(&field.kind());
        let mut parameter = json!({"name": self.names.join("."), "in": "query"});
        if field.is_list() {
            parameter["schema"] = json!({"type": "array", "items": item});
            parameter["style"] = "form".into();
            parameter["explode"] = true.into();
        } else {
            parameter["schema"] = item;
        }
        if let Some(text) = schemas.description(field) {
            parameter["description"] = text.into();
        }
        if deprecated(field) {
            parameter["deprecated"] = true.into();
        }
        self.parameters.push(parameter);
    }
}

/// A field path (proto or JSON names) in proto names, if it names fields of `message`.
fn proto_path(message: &MessageDescriptor, path: &[String]) -> Option<Vec<String>> {
    let mut names = Vec::with_capacity(path.len());
    for end in 1..=path.len() {
        names.push(resolve(message, &path[..end]).ok()?.name().to_owned());
    }
    Some(names)
}

/// A template as pieces of an OpenAPI path.
pub(super) fn pieces(template: &Template) -> Vec<Piece<'_>> {
    let mut pieces = Vec::new();
    let mut index = 0;
    while index < template.segments.len() {
        if let Some(variable) = template.variables.iter().find(|v| v.start == index) {
            let end = variable
                .end
                .unwrap_or(template.segments.len())
                .clamp(index + 1, template.segments.len());
            pieces.push(Piece::Variable(variable, &template.segments[index..end]));
            index = end;
        } else {
            pieces.push(match &template.segments[index] {
                Segment::Literal(text) => Piece::Literal(text),
                wildcard => Piece::Wildcard(wildcard),
            });
            index += 1;
        }
    }
    pieces
}

/// The OpenAPI path of `pieces` with these placeholder names, the verb kept literally
/// (`/v1/payments/{payment_id}:refund`).
pub(super) fn render(pieces: &[Piece<'_>], names: &[String], template: &Template) -> String {
    let mut names = names.iter();
    let mut path = String::new();
    for piece in pieces {
        path.push('/');
        match piece {
            Piece::Literal(text) => path.push_str(text),
            _ => {
                path.push('{');
                path.push_str(names.next().map_or("", String::as_str));
                path.push('}');
            }
        }
    }
    if let Some(verb) = &template.verb {
        path.push(':');
        path.push_str(verb);
    }
    path
}

/// A regular expression for the value of a variable that covers these segments.
fn pattern(covered: &[Segment]) -> String {
    let mut pattern = String::from("^");
    for (index, segment) in covered.iter().enumerate() {
        let slash = if index > 0 { "/" } else { "" };
        match segment {
            Segment::Literal(text) => {
                pattern.push_str(slash);
                for c in text.chars() {
                    if "\\.+*?()|[]{}^$".contains(c) {
                        pattern.push('\\');
                    }
                    pattern.push(c);
                }
            }
            Segment::Any => {
                pattern.push_str(slash);
                pattern.push_str("[^/]+");
            }
            Segment::Rest if index > 0 => pattern.push_str("(/.*)?"),
            Segment::Rest => pattern.push_str(".*"),
        }
    }
    pattern.push('$');
    pattern
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http::Method;
    use serde_json::json;

    use super::*;
    use crate::binding::JsonOptions;
    use crate::openapi::testing::{bookstore, parameter, parameters, reference};
    use crate::openapi::{ApiInfo, openapi};
    use crate::rules::Rules;

    #[test]
    fn path_and_query_parameters_are_the_fields_path_and_body_leave() {
        let document = bookstore(JsonOptions::default());
        let paths = &document["paths"];

        let get = &paths["/v1/{name}"]["get"];
        let name = parameter(get, "name");
        assert_eq!(name["in"], "path");
        assert_eq!(name["required"], true);
        assert_eq!(
            name["schema"],
            json!({"type": "string", "pattern": "^shelves/[^/]+/books/[^/]+$"})
        );
        assert!(name["description"].as_str().unwrap().contains("%2F"));
        assert_eq!(
            paths["/v1/books/{name}"]["get"]["parameters"],
            json!([{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}])
        );

        let search = &paths["/v1/search"]["get"];
        assert_eq!(
            parameters(search, "query"),
            [
                "query",
                "genres",
                "filter.author",
                "filter.pages.min",
                "filter.pages.max",
                // filter.and is a Filter again: not followed.
                "after",
                "maxAge",
                "minPages",
                "inPrint",
                "ids",
                "minRating",
                "cursor",
            ]
        );
        let genres = parameter(search, "genres");
        assert_eq!(
            (&genres["style"], &genres["explode"]),
            (&json!("form"), &json!(true))
        );
        assert_eq!(
            genres["schema"],
            json!({"type": "array", "items": reference("bookstore.v1.Genre")})
        );
        assert_eq!(
            parameter(search, "ids")["schema"]["items"],
            json!({"type": "string", "format": "int64"})
        );
        assert_eq!(
            parameter(search, "after")["schema"],
            reference("google.protobuf.Timestamp")
        );
        assert_eq!(
            parameter(search, "filter.pages.min")["schema"],
            json!({"type": "integer", "format": "int32"})
        );

        // body "book": the rest of the request, less the path's parent, is the query.
        let create = &paths["/v1/{parent}/books"]["post"];
        assert_eq!(parameters(create, "path"), ["parent"]);
        assert_eq!(parameters(create, "query"), ["requestId"]);
        let update = &paths["/v1/{name}"]["patch"];
        assert_eq!(parameters(update, "query"), ["updateMask"]);
        // body "*": no query parameters at all.
        let archive = &paths["/v1/books/{name}:archive"]["post"];
        assert_eq!(parameters(archive, "query"), Vec::<String>::new());

        let proto_names = bookstore(JsonOptions {
            proto_names: true,
            ..JsonOptions::default()
        });
        let search = &proto_names["paths"]["/v1/search"]["get"];
        assert!(parameters(search, "query").contains(&"max_age".to_owned()));
        let create = &proto_names["paths"]["/v1/{parent}/books"]["post"];
        assert_eq!(parameters(create, "query"), ["request_id"]);
    }

    #[test]
    fn odd_templates_still_make_distinct_paths() {
        let pool = crate::testdata::bookstore();
        let mut rules = Rules::load(&pool, &[]).unwrap();
        let get_book = pool
            .get_service_by_name("bookstore.v1.Bookstore")
            .and_then(|service| service.methods().find(|m| m.name() == "GetBook"))
            .unwrap();
        let mut add = |method: Method, template: &str| {
            let template = Template::parse(template).unwrap();
            let binding = Binding::new(
                get_book.clone(),
                method.clone(),
                template.clone(),
                BodyRule::None,
                None,
            )
            .unwrap();
            rules
                .router
                .insert(method, template, Arc::new(binding))
                .unwrap();
        };
        // The same OpenAPI path as /v1/{name=shelves/*/books/*}, for the same method.
        add(Method::GET, "/v1/{name=shelves/*}");
        add(Method::GET, "/v2/*/files/{name=**}");
        add(Method::HEAD, "/v2/{name}");
        add(Method::from_bytes(b"LIST").unwrap(), "/v2/{name}");
        let document = openapi(&rules, &ApiInfo::default(), JsonOptions::default());
        let paths = &document["paths"];
        assert_eq!(
            document["info"],
            json!({"title": "API", "version": "0.0.0"})
        );

        let shelf = &paths["/v1/{name_2}"]["get"];
        assert_eq!(shelf["operationId"], "Bookstore_GetBook_3");
        assert_eq!(
            parameter(shelf, "name_2")["schema"]["pattern"],
            "^shelves/[^/]+$"
        );
        let files = &paths["/v2/{wildcard1}/files/{name}"]["get"];
        assert_eq!(parameters(files, "path"), ["wildcard1", "name"]);
        assert_eq!(parameter(files, "name")["schema"]["pattern"], "^.*$");
        let item = paths["/v2/{name}"].as_object().unwrap();
        assert_eq!(
            item.keys().collect::<Vec<_>>(),
            ["head"],
            "LIST has no OpenAPI form"
        );
        assert_eq!(
            pattern(&[Segment::Literal("a.b".into()), Segment::Rest]),
            "^a\\.b(/.*)?$"
        );
    }
}
