//! The HTTP rules of a descriptor pool: every method's `google.api.http` option (and its
//! `additional_bindings`) as routes, checked against the request and response types.

use std::sync::Arc;

use http::Method;
use http::uri::PathAndQuery;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MessageDescriptor, MethodDescriptor,
    Value,
};

use crate::router::{RouteConflict, Router};
use crate::template::{Template, TemplateError};

/// How one route turns a request into a call and the answer into a response.
#[derive(Debug)]
pub struct Binding {
    /// The gRPC method called.
    pub method: MethodDescriptor,
    /// The HTTP method.
    pub http_method: Method,
    /// The path template.
    pub template: Template,
    /// Where the request body goes.
    pub body: BodyRule,
    /// The response field sent as the body instead of the whole response message.
    pub response_body: Option<FieldDescriptor>,
    /// The gRPC request path, `/package.Service/Method`, made once here rather than per
    /// request.
    pub grpc_path: PathAndQuery,
}

impl Binding {
    /// The binding of `method` for requests matching `http_method` and `template`; `Err`
    /// if the method's names do not make a URI path.
    pub fn new(
        method: MethodDescriptor,
        http_method: Method,
        template: Template,
        body: BodyRule,
        response_body: Option<FieldDescriptor>,
    ) -> Result<Self, String> {
        let grpc_path = format!("/{}/{}", method.parent_service().full_name(), method.name())
            .parse()
            .map_err(|_| format!("{} does not make a URI path", method.full_name()))?;
        Ok(Self {
            method,
            http_method,
            template,
            body,
            response_body,
            grpc_path,
        })
    }
}

/// The `body` of a rule.
#[derive(Debug, Clone)]
pub enum BodyRule {
    /// No body; every field not in the path comes from the query string.
    None,
    /// `body: "*"`: the body is the request message (minus path fields).
    Whole,
    /// `body: "field"`: the body is that field; the rest comes from path and query.
    Field(FieldDescriptor),
}

/// Every route of a pool: what a [`Gateway`](crate::Gateway) serves.
#[derive(Debug, Default)]
pub struct Rules {
    /// The routes.
    pub(crate) router: Router<Arc<Binding>>,
    /// Services of the pool that have no HTTP rule at all.
    services_without_rules: Vec<String>,
}

/// A rule that cannot be served, naming the method.
#[derive(Debug, thiserror::Error)]
pub enum RuleError {
    /// The pool has no `google.api.http` extension (its files do not import
    /// google/api/annotations.proto).
    #[error("the descriptors do not define google.api.http (import google/api/annotations.proto)")]
    NoHttpExtension,
    /// A rule's template does not parse.
    #[error("{method}: {source}")]
    Template {
        /// The method.
        method: String,
        /// Why.
        source: TemplateError,
    },
    /// A rule names a field that the message does not have, or cannot be bound.
    #[error("{method}: {reason}")]
    Field {
        /// The method.
        method: String,
        /// Why.
        reason: String,
    },
    /// Two rules match the same requests.
    #[error(transparent)]
    Conflict(#[from] RouteConflict),
}

impl Rules {
    /// The routes of every service in `pool` (all of them when `services` is empty, else
    /// those named).
    pub fn load(pool: &DescriptorPool, services: &[String]) -> Result<Self, RuleError> {
        let Some(extension) = pool.get_extension_by_name("google.api.http") else {
            let wanted = pool.services().any(|service| {
                services.is_empty() || services.contains(&service.full_name().to_owned())
            });
            return if wanted {
                Err(RuleError::NoHttpExtension)
            } else {
                Ok(Self::default())
            };
        };
        let mut rules = Self::default();
        for service in pool.services() {
            if !services.is_empty() && !services.iter().any(|name| name == service.full_name()) {
                continue;
            }
            let mut any = false;
            for method in service.methods() {
                let options = method.options();
                if !options.has_extension(&extension) {
                    continue;
                }
                let rule = options.get_extension(&extension);
                let Value::Message(rule) = rule.as_ref() else {
                    continue;
                };
                any = true;
                rules.add(&method, rule, true)?;
            }
            if !any {
                rules
                    .services_without_rules
                    .push(service.full_name().to_owned());
            }
        }
        Ok(rules)
    }

    /// How many routes there are (a rule and each of its `additional_bindings` are one each).
    pub fn len(&self) -> usize {
        self.router.len()
    }

    /// True when no method has a rule.
    pub fn is_empty(&self) -> bool {
        self.router.is_empty()
    }

    /// The services of the pool that have no HTTP rule at all, so nothing of theirs is
    /// served over REST.
    pub fn services_without_rules(&self) -> &[String] {
        &self.services_without_rules
    }

    fn add(
        &mut self,
        method: &MethodDescriptor,
        rule: &DynamicMessage,
        top: bool,
    ) -> Result<(), RuleError> {
        let name = method.full_name().to_owned();
        let text = |field: &str| match rule.get_field_by_name(field).as_deref() {
            Some(Value::String(text)) if rule.has_field_by_name(field) => Some(text.clone()),
            _ => None,
        };
        let pattern = [
            ("get", Method::GET),
            ("put", Method::PUT),
            ("post", Method::POST),
            ("delete", Method::DELETE),
            ("patch", Method::PATCH),
        ]
        .into_iter()
        .find_map(|(field, http)| text(field).map(|path| (http, path)))
        .or_else(|| {
            let custom = rule.get_field_by_name("custom")?;
            let Value::Message(custom) = custom.as_ref() else {
                return None;
            };
            let kind = match custom.get_field_by_name("kind")?.as_ref() {
                Value::String(kind) => kind.clone(),
                _ => return None,
            };
            let path = match custom.get_field_by_name("path")?.as_ref() {
                Value::String(path) => path.clone(),
                _ => return None,
            };
            Some((Method::from_bytes(kind.as_bytes()).ok()?, path))
        });
        if let Some((http_method, path)) = pattern {
            let template = Template::parse(&path).map_err(|source| RuleError::Template {
                method: name.clone(),
                source,
            })?;
            let field_error = |reason: String| RuleError::Field {
                method: name.clone(),
                reason,
            };
            let input = method.input();
            for variable in &template.variables {
                let field = resolve(&input, &variable.field_path).map_err(&field_error)?;
                if field.is_list()
                    || field.is_map()
                    || matches!(field.kind(), Kind::Message(m) if !is_scalar_like(&m))
                {
                    return Err(field_error(format!(
                        "the path variable {} must be a singular scalar field",
                        variable.field_path.join(".")
                    )));
                }
            }
            let body = match text("body").as_deref() {
                None | Some("") => BodyRule::None,
                Some("*") => BodyRule::Whole,
                Some(path) => {
                    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
                    BodyRule::Field(resolve(&input, &parts).map_err(&field_error)?)
                }
            };
            let response_body = match text("response_body").as_deref() {
                None | Some("") => None,
                Some(path) => {
                    let parts: Vec<String> = path.split('.').map(str::to_owned).collect();
                    if parts.len() != 1 {
                        return Err(field_error(format!(
                            "response_body {path:?} must name a top-level field"
                        )));
                    }
                    Some(resolve(&method.output(), &parts).map_err(&field_error)?)
                }
            };
            self.router.insert(
                http_method.clone(),
                template.clone(),
                Arc::new(
                    Binding::new(method.clone(), http_method, template, body, response_body)
                        .map_err(field_error)?,
                ),
            )?;
        }
        if top
            && let Some(more) = rule.get_field_by_name("additional_bindings")
            && let Value::List(more) = more.as_ref()
        {
            for extra in more {
                if let Value::Message(extra) = extra {
                    self.add(method, extra, false)?;
                }
            }
        }
        Ok(())
    }
}

/// The field a dotted path names in `message` (proto or JSON names).
pub fn resolve(message: &MessageDescriptor, path: &[String]) -> Result<FieldDescriptor, String> {
    let mut current = message.clone();
    let mut found = None;
    for (index, part) in path.iter().enumerate() {
        let field = current
            .get_field_by_name(part)
            .or_else(|| current.get_field_by_json_name(part))
            .ok_or_else(|| format!("{} has no field {part:?}", current.full_name()))?;
        if index + 1 < path.len() {
            match field.kind() {
                Kind::Message(inner) if !field.is_list() && !field.is_map() => current = inner,
                _ => {
                    return Err(format!(
                        "{}.{part} is not a message, so {:?} cannot go inside it",
                        current.full_name(),
                        path.join(".")
                    ));
                }
            }
        }
        found = Some(field);
    }
    found.ok_or_else(|| "an empty field path".to_owned())
}

/// Well-known types whose JSON form is a string or number, so that a path or query value can
/// set them (Timestamp, Duration, FieldMask, the wrappers).
pub fn is_scalar_like(message: &MessageDescriptor) -> bool {
    matches!(
        message.full_name(),
        "google.protobuf.Timestamp"
            | "google.protobuf.Duration"
            | "google.protobuf.FieldMask"
            | "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_and_additional_binding_becomes_a_route() {
        let rules = Rules::load(&crate::testdata::bookstore(), &[]).unwrap();
        let routes: Vec<String> = rules
            .router
            .iter()
            .map(|(method, template, binding)| {
                format!("{method} {template} -> {}", binding.method.name())
            })
            .collect();
        assert_eq!(
            routes,
            [
                "GET /v1/{name=shelves/*/books/*} -> GetBook",
                "GET /v1/books/{name} -> GetBook",
                "POST /v1/{parent=shelves/*}/books -> CreateBook",
                "PATCH /v1/{book.name=shelves/*/books/*} -> UpdateBook",
                "GET /v1/search -> Search",
                "POST /v1/books/{name}:archive -> Archive",
                "GET /v1/{name=shelves/*}:watch -> WatchShelf",
            ]
        );
        assert_eq!(rules.services_without_rules, ["bookstore.v1.Internal"]);
        let search = rules.router.find(&Method::GET, "/v1/search").unwrap();
        assert_eq!(search.value.response_body.as_ref().unwrap().name(), "books");
        let create = rules
            .router
            .find(&Method::POST, "/v1/shelves/s/books")
            .unwrap();
        assert!(matches!(&create.value.body, BodyRule::Field(field) if field.name() == "book"));
    }

    #[test]
    fn resolving_field_paths_says_what_is_missing() {
        let pool = crate::testdata::bookstore();
        let request = pool
            .get_message_by_name("bookstore.v1.SearchRequest")
            .unwrap();
        let path = |text: &str| text.split('.').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            resolve(&request, &path("filter.pages.min")).unwrap().name(),
            "min"
        );
        assert_eq!(
            resolve(&request, &path("maxAge")).unwrap().name(),
            "max_age"
        );
        let error = resolve(&request, &path("filter.nope")).unwrap_err();
        assert!(
            error.contains("bookstore.v1.Filter has no field \"nope\""),
            "{error}"
        );
        let error = resolve(&request, &path("query.x")).unwrap_err();
        assert!(error.contains("not a message"), "{error}");
    }
}
