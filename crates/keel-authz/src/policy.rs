//! Authorization policies in grpc-go's authz JSON format (the `grpc/authz` package), read
//! and evaluated by Keel's own code.
//!
//! ```json
//! {
//!   "name": "payments",
//!   "deny_rules": [
//!     {"name": "no_admin_from_outside",
//!      "request": {"paths": ["/payments.v1.Admin/*"],
//!                  "headers": [{"key": "x-zone", "values": ["public*"]}]}}
//!   ],
//!   "allow_rules": [
//!     {"name": "workloads", "source": {"principals": ["spiffe://prod.keel/*"]}},
//!     {"name": "people", "source": {"claims": [{"key": "scope", "values": ["payments:*"]}]},
//!      "request": {"paths": ["/payments.v1.Payments/*"]}}
//!   ]
//! }
//! ```
//!
//! **Evaluation.** `deny_rules` first: a match refuses the call. Then `allow_rules`: a match
//! admits it. Anything else is refused. The [`Decision`] names the policy and the one rule
//! that decided (or that none allowed), never the other rules.
//!
//! **Rules.** A rule's fields are ANDed, the values of one field ORed; a missing or empty
//! field matches anything (`"principals": []` admits plaintext callers too). Every value is
//! a pattern: `*` (any non-empty value), `x*` (prefix), `*x` (suffix), else exact.
//! - `source.principals`: the names in the peer's certificate, [`PeerIdentity::principals`].
//!   A certificate with a SPIFFE ID is matched by that ID only, never by its DNS SANs or
//!   subject; without one by its DNS SANs, else its subject. grpc-go looks the same way (URI
//!   SANs, else DNS SANs, else subject), but takes any URI SAN where Keel takes only the
//!   SPIFFE ID. A caller without a client certificate (plaintext, or TLS without one) has no
//!   principal and matches no principal pattern, not even `*` (grpc-go matches a TLS caller
//!   without a certificate against `""`; Keel does not).
//! - `source.claims` (Keel's extension): `[{"key": "sub", "values": ["alice", "team-*"]}]`,
//!   matched against the verified token's [`Claims`] like headers: every key must have a
//!   value matching one of its patterns. A call without verified claims matches no claim
//!   rule. Files without it are grpc-go's format unchanged.
//! - `request.paths`: the gRPC path, `/package.Service/Method`.
//! - `request.headers`: `[{"key", "values"}]`, every key must be present with a value
//!   matching one of its patterns; several values of one header are joined with `,` first,
//!   as grpc-go does. Keys are lower-cased; pseudo-headers (`:path`), `grpc-*` and the
//!   hop-by-hop headers (`host`, `connection`, `te`, ...) are refused, as grpc-go refuses
//!   them. `-bin` headers are compared as their base64 text.
//!
//! **The format.** Keys are grpc-go's, spelled in lower case (Go's decoder also accepts
//! other cases; Keel does not). Unknown keys are errors naming their JSON path.
//! `audit_logging_options` is read and checked as grpc-go checks it, then ignored: Keel
//! counts every decision in `keel_auth_decisions_total` and its call log records the
//! status, which stand in for audit loggers.

use std::fmt;
use std::sync::Arc;

use http::HeaderMap;
use keel_core::identity::{Claims, PeerIdentity};
use serde::Deserialize;
use serde_json::{Map, Value};

/// A policy that cannot be used: where in the JSON (`allow_rules[0].request.headers[1].key`)
/// and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{path}: {message}")]
pub struct PolicyError {
    /// The JSON path of the offending value (`.` for the document itself).
    pub path: String,
    /// What is wrong with it.
    pub message: String,
}

impl PolicyError {
    fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// A checked policy, ready to evaluate calls.
#[derive(Debug, Clone)]
pub struct Policy {
    name: Arc<str>,
    deny: Vec<Rule>,
    allow: Vec<Rule>,
}

/// What a call presents to the policy.
#[derive(Debug, Clone, Copy)]
pub struct Call<'a> {
    /// The gRPC path, `/package.Service/Method`.
    pub path: &'a str,
    /// The request headers (gRPC metadata).
    pub headers: &'a HeaderMap,
    /// The identity of the peer's certificate, if it presented one.
    pub peer: Option<&'a PeerIdentity>,
    /// The verified claims of its bearer token, if it sent one.
    pub claims: Option<&'a Claims>,
}

/// What a policy decided, and which rule decided it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// An allow rule matched and no deny rule did.
    Allowed {
        /// The policy's name.
        policy: Arc<str>,
        /// The allow rule that matched first.
        rule: Arc<str>,
    },
    /// A deny rule matched.
    DeniedByRule {
        /// The policy's name.
        policy: Arc<str>,
        /// The deny rule that matched first.
        rule: Arc<str>,
    },
    /// No rule matched: the default is to refuse.
    NotAllowed {
        /// The policy's name.
        policy: Arc<str>,
    },
}

impl Decision {
    /// Whether the call may proceed.
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed { .. })
    }

    /// The policy's name.
    pub fn policy(&self) -> &str {
        match self {
            Self::Allowed { policy, .. }
            | Self::DeniedByRule { policy, .. }
            | Self::NotAllowed { policy } => policy,
        }
    }

    /// The rule that decided (`None` when no rule matched).
    pub fn rule(&self) -> Option<&str> {
        match self {
            Self::Allowed { rule, .. } | Self::DeniedByRule { rule, .. } => Some(rule),
            Self::NotAllowed { .. } => None,
        }
    }
}

impl fmt::Display for Decision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Allowed { policy, rule } => {
                write!(
                    f,
                    "allowed by rule {rule:?} of authorization policy {policy:?}"
                )
            }
            Self::DeniedByRule { policy, rule } => {
                write!(
                    f,
                    "denied by rule {rule:?} of authorization policy {policy:?}"
                )
            }
            Self::NotAllowed { policy } => {
                write!(
                    f,
                    "no rule of authorization policy {policy:?} allows this call"
                )
            }
        }
    }
}

impl Policy {
    /// Reads a policy from its JSON text.
    ///
    /// ```
    /// use keel_authz::policy::{Call, Policy};
    ///
    /// let policy = Policy::parse(r#"{
    ///     "name": "authz",
    ///     "allow_rules": [{"name": "health", "request": {"paths": ["/grpc.health.v1.Health/*"]}}]
    /// }"#)?;
    /// let headers = http::HeaderMap::new();
    /// let call = |path| Call { path, headers: &headers, peer: None, claims: None };
    /// assert!(policy.evaluate(&call("/grpc.health.v1.Health/Check")).is_allowed());
    /// assert_eq!(
    ///     policy.evaluate(&call("/payments.v1.Payments/Pay")).to_string(),
    ///     r#"no rule of authorization policy "authz" allows this call"#
    /// );
    /// # Ok::<(), keel_authz::policy::PolicyError>(())
    /// ```
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        Self::from_slice(text.as_bytes())
    }

    /// [`parse`](Self::parse) over bytes (a file's content).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, PolicyError> {
        let mut deserializer = serde_json::Deserializer::from_slice(bytes);
        let raw: RawPolicy =
            serde_path_to_error::deserialize(&mut deserializer).map_err(|error| {
                PolicyError::new(error.path().to_string(), error.inner().to_string())
            })?;
        deserializer
            .end()
            .map_err(|error| PolicyError::new(".", error.to_string()))?;
        raw.check()
    }

    /// The policy's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Decides `call`: deny rules first, then allow rules, else refused.
    pub fn evaluate(&self, call: &Call<'_>) -> Decision {
        let policy = self.name.clone();
        if let Some(rule) = self.deny.iter().find(|rule| rule.matches(call)) {
            return Decision::DeniedByRule {
                policy,
                rule: rule.name.clone(),
            };
        }
        match self.allow.iter().find(|rule| rule.matches(call)) {
            Some(rule) => Decision::Allowed {
                policy,
                rule: rule.name.clone(),
            },
            None => Decision::NotAllowed { policy },
        }
    }
}

/// One rule, checked.
#[derive(Debug, Clone)]
struct Rule {
    name: Arc<str>,
    principals: Vec<Pattern>,
    claims: Vec<Keyed>,
    paths: Vec<Pattern>,
    headers: Vec<Keyed>,
}

/// A key (header or claim name) and the patterns one of its values must match.
#[derive(Debug, Clone)]
struct Keyed {
    key: String,
    patterns: Vec<Pattern>,
}

impl Rule {
    fn matches(&self, call: &Call<'_>) -> bool {
        self.matches_principal(call.peer)
            && self.matches_claims(call.claims)
            && (self.paths.is_empty() || any_matches(&self.paths, call.path))
            && self.headers.iter().all(|keyed| {
                header_value(call.headers, &keyed.key)
                    .is_some_and(|value| any_matches(&keyed.patterns, &value))
            })
    }

    fn matches_principal(&self, peer: Option<&PeerIdentity>) -> bool {
        if self.principals.is_empty() {
            return true;
        }
        peer.is_some_and(|peer| {
            peer.principals()
                .into_iter()
                .any(|name| any_matches(&self.principals, name))
        })
    }

    fn matches_claims(&self, claims: Option<&Claims>) -> bool {
        if self.claims.is_empty() {
            return true;
        }
        claims.is_some_and(|claims| {
            self.claims.iter().all(|keyed| {
                claims
                    .get(&keyed.key)
                    .iter()
                    .any(|value| any_matches(&keyed.patterns, value))
            })
        })
    }
}

/// A header's values joined with `,` (grpc-go's view of repeated metadata); `None` when
/// absent or when a value is not visible ASCII text.
fn header_value(headers: &HeaderMap, key: &str) -> Option<String> {
    let mut joined: Option<String> = None;
    for value in headers.get_all(key) {
        let text = value.to_str().ok()?;
        match &mut joined {
            None => joined = Some(text.to_owned()),
            Some(all) => {
                all.push(',');
                all.push_str(text);
            }
        }
    }
    joined
}

fn any_matches(patterns: &[Pattern], value: &str) -> bool {
    patterns.iter().any(|pattern| pattern.matches(value))
}

/// One value of a rule: `*`, `x*`, `*x` or exact, read as grpc-go reads it (a trailing `*`
/// before a leading one; no `*` in the middle).
#[derive(Debug, Clone, PartialEq, Eq)]
enum Pattern {
    Any,
    Prefix(String),
    Suffix(String),
    Exact(String),
}

impl Pattern {
    fn parse(text: &str) -> Self {
        if text == "*" {
            Self::Any
        } else if let Some(prefix) = text.strip_suffix('*') {
            Self::Prefix(prefix.to_owned())
        } else if let Some(suffix) = text.strip_prefix('*') {
            Self::Suffix(suffix.to_owned())
        } else {
            Self::Exact(text.to_owned())
        }
    }

    fn matches(&self, value: &str) -> bool {
        match self {
            // grpc-go's `*` is the regular expression `.+`.
            Self::Any => !value.is_empty(),
            Self::Prefix(prefix) => value.starts_with(prefix.as_str()),
            Self::Suffix(suffix) => value.ends_with(suffix.as_str()),
            Self::Exact(exact) => value == exact,
        }
    }
}

/// Headers grpc-go refuses to match on, besides pseudo-headers and `grpc-*`.
const REFUSED_HEADERS: [&str; 9] = [
    "host",
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

// The JSON as written. Every field is optional here (JSON `null` is absent, as in Go);
// `check` says which are required.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    name: Option<String>,
    deny_rules: Option<Vec<RawRule>>,
    allow_rules: Option<Vec<RawRule>>,
    audit_logging_options: Option<RawAuditOptions>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    name: Option<String>,
    source: Option<RawSource>,
    request: Option<RawRequest>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    principals: Option<Vec<String>>,
    claims: Option<Vec<RawKeyed>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    paths: Option<Vec<String>>,
    headers: Option<Vec<RawKeyed>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawKeyed {
    key: Option<String>,
    values: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditOptions {
    audit_condition: Option<String>,
    audit_loggers: Option<Vec<RawAuditLogger>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAuditLogger {
    name: Option<String>,
    #[serde(rename = "config")]
    _config: Option<Map<String, Value>>,
    #[serde(rename = "is_optional")]
    _is_optional: Option<bool>,
}

impl RawPolicy {
    fn check(self) -> Result<Policy, PolicyError> {
        let name = self.name.unwrap_or_default();
        if name.is_empty() {
            return Err(PolicyError::new("name", "is not present"));
        }
        let allow = self.allow_rules.unwrap_or_default();
        if allow.is_empty() {
            return Err(PolicyError::new(
                "allow_rules",
                "is not present (a policy without allow rules refuses every call)",
            ));
        }
        if let Some(audit) = self.audit_logging_options {
            audit.check()?;
        }
        let rules = |list: Vec<RawRule>, field: &str| {
            list.into_iter()
                .enumerate()
                .map(|(i, rule)| rule.check(&format!("{field}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(Policy {
            name: name.into(),
            deny: rules(self.deny_rules.unwrap_or_default(), "deny_rules")?,
            allow: rules(allow, "allow_rules")?,
        })
    }
}

impl RawAuditOptions {
    fn check(self) -> Result<(), PolicyError> {
        const CONDITIONS: [&str; 4] = ["NONE", "ON_DENY", "ON_ALLOW", "ON_DENY_AND_ALLOW"];
        if let Some(condition) = &self.audit_condition
            && !condition.is_empty()
            && !CONDITIONS.contains(&condition.as_str())
        {
            return Err(PolicyError::new(
                "audit_logging_options.audit_condition",
                format!("{condition:?} is not one of {}", CONDITIONS.join(", ")),
            ));
        }
        for (i, logger) in self.audit_loggers.unwrap_or_default().iter().enumerate() {
            if logger.name.as_deref().unwrap_or_default().is_empty() {
                return Err(PolicyError::new(
                    format!("audit_logging_options.audit_loggers[{i}].name"),
                    "is not present",
                ));
            }
        }
        Ok(())
    }
}

impl RawRule {
    fn check(self, at: &str) -> Result<Rule, PolicyError> {
        let name = self.name.unwrap_or_default();
        if name.is_empty() {
            return Err(PolicyError::new(format!("{at}.name"), "is not present"));
        }
        let (principals, claims) = match self.source {
            None => (Vec::new(), Vec::new()),
            Some(source) => (
                patterns(source.principals),
                keyed(source.claims, &format!("{at}.source.claims"), Ok)?,
            ),
        };
        let (paths, headers) = match self.request {
            None => (Vec::new(), Vec::new()),
            Some(request) => (
                patterns(request.paths),
                keyed(
                    request.headers,
                    &format!("{at}.request.headers"),
                    check_header_key,
                )?,
            ),
        };
        Ok(Rule {
            name: name.into(),
            principals,
            claims,
            paths,
            headers,
        })
    }
}

fn patterns(values: Option<Vec<String>>) -> Vec<Pattern> {
    values
        .unwrap_or_default()
        .iter()
        .map(|value| Pattern::parse(value))
        .collect()
}

/// Header keys are lower-cased, then refused as grpc-go refuses them.
fn check_header_key(key: String) -> Result<String, String> {
    let key = key.to_ascii_lowercase();
    if key.starts_with(':') || key.starts_with("grpc-") || REFUSED_HEADERS.contains(&&*key) {
        Err(format!(
            "{key:?} cannot be matched: pseudo-headers, grpc-* and hop-by-hop headers are \
             refused, as grpc-go refuses them"
        ))
    } else {
        Ok(key)
    }
}

fn keyed(
    list: Option<Vec<RawKeyed>>,
    at: &str,
    check_key: fn(String) -> Result<String, String>,
) -> Result<Vec<Keyed>, PolicyError> {
    let mut checked = Vec::new();
    for (i, entry) in list.unwrap_or_default().into_iter().enumerate() {
        let key = entry.key.unwrap_or_default();
        if key.is_empty() {
            return Err(PolicyError::new(format!("{at}[{i}].key"), "is not present"));
        }
        let key = check_key(key)
            .map_err(|message| PolicyError::new(format!("{at}[{i}].key"), message))?;
        let values = entry.values.unwrap_or_default();
        if values.is_empty() {
            return Err(PolicyError::new(
                format!("{at}[{i}].values"),
                "is not present",
            ));
        }
        checked.push(Keyed {
            key,
            patterns: patterns(Some(values)),
        });
    }
    Ok(checked)
}

#[cfg(test)]
mod tests;
