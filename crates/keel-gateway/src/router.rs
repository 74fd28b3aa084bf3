//! Matching request paths against `google.api.http` templates, independent of the order
//! rules were added: at every segment a literal is tried before `*`, and `*` before `**`,
//! backtracking when a branch leads nowhere (grpc-gateway's precedence).
//!
//! A request path whose last segment holds a `:` is tried with that suffix as a custom
//! verb first, then as part of the segment. Values bound to single-segment variables are
//! percent-decoded completely; values spanning several segments keep `%2F` (an escaped
//! slash) as it is, so that they can be told from the separators (`google/api/http.proto`).

use std::collections::HashMap;

use http::Method;

use crate::percent::decode;
use crate::template::{Segment, Template};

/// A table of routes, each a method and a template with a value (what to call).
#[derive(Debug)]
pub struct Router<T> {
    root: Node,
    routes: Vec<Route<T>>,
}

#[derive(Debug)]
struct Route<T> {
    method: Method,
    template: Template,
    value: T,
}

#[derive(Debug, Default)]
struct Node {
    literals: HashMap<String, Node>,
    any: Option<Box<Node>>,
    rest: Option<Box<Node>>,
    /// Routes ending here: (verb, method, route index).
    ends: Vec<(Option<String>, Method, usize)>,
}

/// Two rules that would match exactly the same requests.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{method} {new} conflicts with {method} {existing}: they match the same paths")]
pub struct RouteConflict {
    method: Method,
    new: String,
    existing: String,
}

/// A route found for a request.
#[derive(Debug)]
pub struct Matched<'a, T> {
    /// The route's value.
    pub value: &'a T,
    /// Each variable's field path and decoded value, in template order.
    pub bindings: Vec<(&'a [String], String)>,
}

/// Why no route was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Miss {
    /// No template matches the path.
    NotFound,
    /// Templates match the path, for other methods (listed).
    MethodNotAllowed(Vec<Method>),
    /// The path matches, but a value is not valid percent-encoded UTF-8.
    BadEncoding(String),
}

impl<T> Default for Router<T> {
    fn default() -> Self {
        Self {
            root: Node::default(),
            routes: Vec::new(),
        }
    }
}

impl<T> Router<T> {
    /// Adds a route.
    pub fn insert(
        &mut self,
        method: Method,
        template: Template,
        value: T,
    ) -> Result<(), RouteConflict> {
        let mut node = &mut self.root;
        for segment in &template.segments {
            node = match segment {
                Segment::Literal(text) => node.literals.entry(text.clone()).or_default(),
                Segment::Any => node.any.get_or_insert_with(Box::default),
                Segment::Rest => node.rest.get_or_insert_with(Box::default),
            };
        }
        if let Some((_, _, existing)) = node
            .ends
            .iter()
            .find(|(verb, m, _)| *verb == template.verb && *m == method)
        {
            return Err(RouteConflict {
                method,
                new: template.to_string(),
                existing: self.routes[*existing].template.to_string(),
            });
        }
        node.ends
            .push((template.verb.clone(), method.clone(), self.routes.len()));
        self.routes.push(Route {
            method,
            template,
            value,
        });
        Ok(())
    }

    /// The number of routes.
    pub fn len(&self) -> usize {
        self.routes.len()
    }

    /// True when there are no routes.
    pub fn is_empty(&self) -> bool {
        self.routes.is_empty()
    }

    /// Every route's method, template and value, in the order they were added.
    pub fn iter(&self) -> impl Iterator<Item = (&Method, &Template, &T)> {
        self.routes
            .iter()
            .map(|route| (&route.method, &route.template, &route.value))
    }

    /// The route for `method` and `path` (without the query string).
    pub fn find(&self, method: &Method, path: &str) -> Result<Matched<'_, T>, Miss> {
        let Some(body) = path.strip_prefix('/') else {
            return Err(Miss::NotFound);
        };
        let raw: Vec<&str> = body.split('/').collect();
        let mut other_methods = Vec::new();
        let last = raw.len() - 1;
        // With a verb first (`/v1/x:refund`), then the whole segment as it is.
        if let Some((segment, verb)) = raw[last].rsplit_once(':') {
            let mut with_verb = raw.clone();
            with_verb[last] = segment;
            if let Some(found) = self.search(&with_verb, Some(verb), method, &mut other_methods)? {
                return Ok(found);
            }
        }
        if let Some(found) = self.search(&raw, None, method, &mut other_methods)? {
            return Ok(found);
        }
        if other_methods.is_empty() {
            Err(Miss::NotFound)
        } else {
            other_methods.sort_by(|a, b| a.as_str().cmp(b.as_str()));
            other_methods.dedup();
            Err(Miss::MethodNotAllowed(other_methods))
        }
    }

    fn search<'a>(
        &'a self,
        raw: &[&str],
        verb: Option<&str>,
        method: &Method,
        other_methods: &mut Vec<Method>,
    ) -> Result<Option<Matched<'a, T>>, Miss> {
        let decoded: Vec<Option<String>> = raw.iter().map(|s| decode(s, true)).collect();
        let Some(index) = walk(&self.root, raw, &decoded, 0, verb, method, other_methods) else {
            return Ok(None);
        };
        let route = &self.routes[index];
        let mut bindings = Vec::with_capacity(route.template.variables.len());
        for variable in &route.template.variables {
            let end = variable.end.unwrap_or(raw.len());
            let value = if end == variable.start + 1
                && route.template.segments[variable.start] != Segment::Rest
            {
                decoded[variable.start].clone()
            } else {
                decode(&raw[variable.start..end].join("/"), false)
            };
            let value = value.ok_or_else(|| {
                Miss::BadEncoding(format!(
                    "the value of {} is not valid percent-encoded UTF-8",
                    variable.field_path.join(".")
                ))
            })?;
            bindings.push((variable.field_path.as_slice(), value));
        }
        Ok(Some(Matched {
            value: &route.value,
            bindings,
        }))
    }
}

/// Depth-first: literal, then `*`, then `**`; the index of the route found.
fn walk(
    node: &Node,
    raw: &[&str],
    decoded: &[Option<String>],
    at: usize,
    verb: Option<&str>,
    method: &Method,
    other_methods: &mut Vec<Method>,
) -> Option<usize> {
    if at == raw.len() {
        if let Some(found) = end_here(node, verb, method, other_methods) {
            return Some(found);
        }
    } else {
        if let Some(text) = &decoded[at]
            && let Some(next) = node.literals.get(text)
            && let Some(found) = walk(next, raw, decoded, at + 1, verb, method, other_methods)
        {
            return Some(found);
        }
        if let Some(next) = &node.any
            && !raw[at].is_empty()
            && let Some(found) = walk(next, raw, decoded, at + 1, verb, method, other_methods)
        {
            return Some(found);
        }
    }
    // `**` takes whatever is left, nothing included.
    let rest = node.rest.as_ref()?;
    end_here(rest, verb, method, other_methods)
}

fn end_here(
    node: &Node,
    verb: Option<&str>,
    method: &Method,
    other_methods: &mut Vec<Method>,
) -> Option<usize> {
    let mut found = None;
    for (end_verb, end_method, index) in &node.ends {
        if end_verb.as_deref() != verb {
            continue;
        }
        if end_method == method {
            found = Some(*index);
        } else {
            other_methods.push(end_method.clone());
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(rules: &[(&str, &str)]) -> Router<String> {
        let mut router = Router::default();
        for (method, template) in rules {
            let method: Method = method.parse().unwrap();
            router
                .insert(
                    method.clone(),
                    Template::parse(template).unwrap(),
                    format!("{method} {template}"),
                )
                .unwrap();
        }
        router
    }

    /// The route a request finds and its bindings as `field=value`.
    fn find(
        router: &Router<String>,
        method: &str,
        path: &str,
    ) -> Result<(String, Vec<String>), Miss> {
        let found = router.find(&method.parse().unwrap(), path)?;
        let bindings = found
            .bindings
            .iter()
            .map(|(field, value)| format!("{}={value}", field.join(".")))
            .collect();
        Ok((found.value.clone(), bindings))
    }

    /// Method, path, and the route and bindings expected.
    type Case = (
        &'static str,
        &'static str,
        Result<(&'static str, &'static [&'static str]), Miss>,
    );

    const RULES: &[(&str, &str)] = &[
        ("GET", "/v1/accounts/{account_id}"),
        ("GET", "/v1/accounts/me"),
        ("POST", "/v1/accounts/{account_id}:deposit"),
        ("GET", "/v1/accounts/{account_id}/payments"),
        ("POST", "/v1/payments/{payment_id}:refund"),
        ("GET", "/v1/payments/{payment_id}"),
        ("GET", "/v1/files/{path=**}"),
        ("GET", "/v1/files/{path=**}:meta"),
        ("GET", "/v1/{name=shelves/*/books/*}"),
        ("GET", "/v1/{parent=shelves/*}/books"),
        ("GET", "/v1/*/stats"),
        ("GET", "/v1/{book.name}/b/c"),
    ];

    #[test]
    fn precedence_binding_and_verbs() {
        for order in [false, true] {
            let mut rules = RULES.to_vec();
            if order {
                rules.reverse();
            }
            let router = router(&rules);
            let cases: &[Case] = &[
                (
                    "GET",
                    "/v1/accounts/alice",
                    Ok(("GET /v1/accounts/{account_id}", &["account_id=alice"])),
                ),
                ("GET", "/v1/accounts/me", Ok(("GET /v1/accounts/me", &[]))),
                (
                    "POST",
                    "/v1/accounts/alice:deposit",
                    Ok((
                        "POST /v1/accounts/{account_id}:deposit",
                        &["account_id=alice"],
                    )),
                ),
                (
                    "GET",
                    "/v1/accounts/a:b",
                    Ok(("GET /v1/accounts/{account_id}", &["account_id=a:b"])),
                ),
                (
                    "GET",
                    "/v1/accounts/alice/payments",
                    Ok((
                        "GET /v1/accounts/{account_id}/payments",
                        &["account_id=alice"],
                    )),
                ),
                (
                    "POST",
                    "/v1/payments/p1:refund",
                    Ok(("POST /v1/payments/{payment_id}:refund", &["payment_id=p1"])),
                ),
                (
                    "GET",
                    "/v1/files/a/b/c",
                    Ok(("GET /v1/files/{path=**}", &["path=a/b/c"])),
                ),
                (
                    "GET",
                    "/v1/files",
                    Ok(("GET /v1/files/{path=**}", &["path="])),
                ),
                (
                    "GET",
                    "/v1/files/a/b:meta",
                    Ok(("GET /v1/files/{path=**}:meta", &["path=a/b"])),
                ),
                (
                    "GET",
                    "/v1/shelves/s1/books/b1",
                    Ok((
                        "GET /v1/{name=shelves/*/books/*}",
                        &["name=shelves/s1/books/b1"],
                    )),
                ),
                (
                    "GET",
                    "/v1/shelves/s1/books",
                    Ok(("GET /v1/{parent=shelves/*}/books", &["parent=shelves/s1"])),
                ),
                ("GET", "/v1/other/stats", Ok(("GET /v1/*/stats", &[]))),
                // The leftmost literal wins: `accounts` before `*`.
                (
                    "GET",
                    "/v1/accounts/stats",
                    Ok(("GET /v1/accounts/{account_id}", &["account_id=stats"])),
                ),
                // Backtracking: the literal branch `accounts` leads nowhere for /b/c.
                (
                    "GET",
                    "/v1/accounts/b/c",
                    Ok(("GET /v1/{book.name}/b/c", &["book.name=accounts"])),
                ),
                // Percent-decoding: full in one segment, %2F kept across several.
                (
                    "GET",
                    "/v1/accounts/a%2Fb%20c",
                    Ok(("GET /v1/accounts/{account_id}", &["account_id=a/b c"])),
                ),
                (
                    "GET",
                    "/v1/files/a%2Fb/c%20d",
                    Ok(("GET /v1/files/{path=**}", &["path=a%2Fb/c d"])),
                ),
                (
                    "DELETE",
                    "/v1/accounts/alice",
                    Err(Miss::MethodNotAllowed(vec![Method::GET])),
                ),
                ("GET", "/v2/accounts", Err(Miss::NotFound)),
                ("GET", "/v1/accounts/", Err(Miss::NotFound)),
                ("GET", "v1/accounts", Err(Miss::NotFound)),
            ];
            for (method, path, expected) in cases {
                let got = find(&router, method, path);
                let expected = expected.clone().map(|(route, bindings)| {
                    (
                        route.to_owned(),
                        bindings.iter().map(|b| (*b).to_owned()).collect::<Vec<_>>(),
                    )
                });
                assert_eq!(got, expected, "{method} {path} (reversed: {order})");
            }
        }
    }

    #[test]
    fn broken_escapes_are_reported_and_duplicates_refused() {
        let router = router(RULES);
        assert!(matches!(
            find(&router, "GET", "/v1/accounts/%zz"),
            Err(Miss::NotFound) | Err(Miss::BadEncoding(_))
        ));
        assert!(matches!(
            find(&router, "GET", "/v1/files/%ff"),
            Err(Miss::BadEncoding(_))
        ));
        let mut router = router;
        let error = router
            .insert(
                Method::GET,
                Template::parse("/v1/accounts/{id}").unwrap(),
                String::new(),
            )
            .unwrap_err();
        assert!(
            error.to_string().contains("/v1/accounts/{account_id}"),
            "{error}"
        );
    }

    #[test]
    fn random_paths_never_panic() {
        let router = router(RULES);
        let alphabet: Vec<char> = "/:%a1*{}.~ é2F".chars().collect();
        let mut state = 7_u64;
        for _ in 0..20_000 {
            let mut path = String::from("/");
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1);
            for i in 0..(state >> 60) as usize + 1 {
                let pick = (state.rotate_left(i as u32 * 7) % alphabet.len() as u64) as usize;
                path.push(alphabet[pick]);
            }
            for method in ["GET", "POST"] {
                let _ = find(&router, method, &path);
            }
        }
    }
}
