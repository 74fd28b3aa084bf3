//! Which series a PromQL query selects, and which labels it groups by: what promtool checks
//! the syntax of but cannot list. Meant for queries promtool has accepted, so it reads
//! tokens, not a grammar. Also Grafana's additions: `label_values(selector, label)` and
//! `$variables`.
//!
//! Include it with `#[path = "common/promql.rs"] mod promql;` in a test file.

use std::collections::BTreeSet;
use std::ops::Range;

/// Splits Grafana's `label_values(selector, label)` into its PromQL and its label; other
/// queries are PromQL as they are.
pub fn grafana_query(expr: &str) -> (&str, Option<&str>) {
    let Some(arguments) = expr
        .trim()
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
    else {
        return (expr, None);
    };
    match arguments.rsplit_once(',') {
        Some((selector, label)) => (selector.trim(), Some(label.trim())),
        None => ("", Some(arguments.trim())),
    }
}

/// The Grafana variables (`$name`, `${name}`, `${name:format}`) of an expression, with
/// their byte ranges.
fn variables_in(expr: &str) -> Vec<(Range<usize>, &str)> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(at) = expr[from..].find('$').map(|i| from + i) {
        let rest = &expr[at + 1..];
        let (name, len) = match rest.strip_prefix('{') {
            Some(braced) => {
                let end = braced.find('}').unwrap_or(braced.len());
                (braced[..end].split(':').next().unwrap_or_default(), end + 2)
            }
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                (&rest[..end], end)
            }
        };
        found.push((at..at + 1 + len, name));
        from = at + 1 + len;
    }
    found
}

/// The query Prometheus receives once Grafana has put its variables in: `$__…` intervals
/// become a duration, the dashboard's variables the regex `.*`.
pub fn interpolate(expr: &str) -> String {
    let mut out = expr.to_owned();
    for (range, name) in variables_in(expr).into_iter().rev() {
        out.replace_range(range, if name.starts_with("__") { "5m" } else { ".*" });
    }
    out
}

/// Variables an expression uses that are neither in `defined` nor Grafana built-ins (`$__…`).
pub fn undefined_variables(expr: &str, defined: &BTreeSet<String>) -> Vec<String> {
    variables_in(expr)
        .into_iter()
        .map(|(_, name)| name)
        .filter(|v| !v.starts_with("__") && !defined.contains(*v))
        .map(str::to_owned)
        .collect()
}

#[derive(Debug, PartialEq)]
enum Token<'a> {
    Ident(&'a str),
    Str(String),
    Op(&'a str),
    Punct(char),
    /// Numbers and durations.
    Other,
}

fn lex(expr: &str) -> Result<Vec<Token<'_>>, String> {
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let (c, start) = (bytes[i], i);
        if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' {
            i = expr[i..].find('\n').map_or(bytes.len(), |n| i + n);
        } else if matches!(c, b'"' | b'\'' | b'`') {
            let mut value = String::new();
            let mut chars = expr[i + 1..].char_indices();
            loop {
                match chars.next() {
                    None => return Err(format!("unterminated string at byte {start}")),
                    Some((n, q)) if q == c as char => {
                        i += n + 2;
                        break;
                    }
                    Some((_, '\\')) if c != b'`' => value.extend(chars.next().map(|(_, e)| e)),
                    Some((_, other)) => value.push(other),
                }
            }
            tokens.push(Token::Str(value));
        } else if matches!(c, b'=' | b'!' | b'<' | b'>') {
            i += if matches!(bytes.get(i + 1), Some(b'=' | b'~')) {
                2
            } else {
                1
            };
            tokens.push(Token::Op(&expr[start..i]));
        } else if c.is_ascii_digit() || c == b'.' {
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                i += 1;
            }
            tokens.push(Token::Other);
        } else if is_ident(c) {
            while i < bytes.len() && is_ident(bytes[i]) {
                i += 1;
            }
            tokens.push(Token::Ident(&expr[start..i]));
        } else {
            let ch = expr[i..].chars().next().unwrap_or_default();
            i += ch.len_utf8();
            tokens.push(Token::Punct(ch));
        }
    }
    Ok(tokens)
}

/// `label op "value"` inside a selector's braces.
#[derive(Debug)]
pub struct Matcher {
    pub label: String,
    pub op: String,
    pub value: String,
}

impl Matcher {
    /// The values it names, if they are plain words (`"a"`, or `"a|b"` after `=~`); `None`
    /// for an empty value, a regex proper or a Grafana variable, which name none.
    pub fn values(&self) -> Option<Vec<&str>> {
        let regex = self.op.ends_with('~');
        let values: Vec<&str> = if regex {
            self.value.split('|').collect()
        } else {
            vec![self.value.as_str()]
        };
        let plain = |v: &&str| {
            !v.is_empty()
                && v.bytes().all(|b| {
                    b.is_ascii_alphanumeric()
                        || b"_-:/".contains(&b)
                        || (!regex && b"+.".contains(&b))
                })
        };
        values.iter().all(plain).then_some(values)
    }
}

/// One series selector: a metric name and/or `{matchers}`.
#[derive(Debug)]
pub struct Selector {
    pub name: Option<String>,
    pub matchers: Vec<Matcher>,
}

impl Selector {
    /// The metric names it selects: its name, or the plain words of its `__name__`.
    pub fn names(&self) -> Vec<&str> {
        let from_matcher = self
            .matchers
            .iter()
            .filter(|m| m.label == "__name__")
            .flat_map(|m| m.values().unwrap_or_default());
        self.name
            .as_deref()
            .into_iter()
            .chain(from_matcher)
            .collect()
    }
}

/// What a query names: its selectors, and the labels of its `by`, `without`, `on`,
/// `ignoring`, `group_left` and `group_right` lists (with the word before them).
#[derive(Debug, Default)]
pub struct Uses {
    pub selectors: Vec<Selector>,
    pub grouping: Vec<(String, String)>,
}

const GROUPING: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];
/// PromQL's words that may stand without a `(` after them (aggregations are followed by
/// `(`, `by` or `without`).
const KEYWORDS: &[&str] = &[
    "group_left",
    "group_right",
    "bool",
    "offset",
    "and",
    "or",
    "unless",
    "atan2",
    "inf",
    "nan",
];

/// The selectors and grouping labels of a query promtool has accepted.
pub fn uses(expr: &str) -> Result<Uses, String> {
    let tokens = lex(expr)?;
    let mut uses = Uses::default();
    let mut i = 0;
    while let Some(token) = tokens.get(i) {
        let next = tokens.get(i + 1);
        i += 1;
        match token {
            Token::Ident(word) if GROUPING.contains(word) && next == Some(&Token::Punct('(')) => {
                i += 1;
                while let Some(token) = tokens.get(i) {
                    i += 1;
                    match token {
                        Token::Punct(')') => break,
                        Token::Ident(label) => {
                            uses.grouping.push((word.to_string(), label.to_string()))
                        }
                        _ => {}
                    }
                }
            }
            Token::Ident(word)
                if matches!(
                    next,
                    Some(Token::Punct('(') | Token::Ident("by" | "without"))
                ) || KEYWORDS.contains(&word.to_ascii_lowercase().as_str()) => {}
            Token::Ident(name) => {
                let matchers = if next == Some(&Token::Punct('{')) {
                    i += 1;
                    matchers(&tokens, &mut i)?
                } else {
                    Vec::new()
                };
                uses.selectors.push(Selector {
                    name: Some(name.to_string()),
                    matchers,
                });
            }
            Token::Punct('{') => uses.selectors.push(Selector {
                name: None,
                matchers: matchers(&tokens, &mut i)?,
            }),
            _ => {}
        }
    }
    Ok(uses)
}

/// Reads `label op "value", ... }` with `*i` after the `{`, leaving `*i` after the `}`.
fn matchers(tokens: &[Token<'_>], i: &mut usize) -> Result<Vec<Matcher>, String> {
    let mut found = Vec::new();
    loop {
        match (tokens.get(*i), tokens.get(*i + 1), tokens.get(*i + 2)) {
            (Some(Token::Punct('}')), _, _) => {
                *i += 1;
                return Ok(found);
            }
            (Some(Token::Punct(',')), _, _) => *i += 1,
            (Some(Token::Ident(label)), Some(Token::Op(op)), Some(Token::Str(value))) => {
                found.push(Matcher {
                    label: label.to_string(),
                    op: op.to_string(),
                    value: value.clone(),
                });
                *i += 3;
            }
            other => return Err(format!("malformed label matchers at {other:?}")),
        }
    }
}

#[test]
fn reads_selectors_and_grouping_labels() {
    #[track_caller]
    fn check(expr: &str, selectors: &[&str], grouping: &[&str]) {
        let uses = uses(expr).unwrap();
        let found: Vec<String> = uses
            .selectors
            .iter()
            .map(|s| {
                let matchers: Vec<String> = s
                    .matchers
                    .iter()
                    .map(|m| format!("{}{}{}", m.label, m.op, m.value))
                    .collect();
                format!(
                    "{}{{{}}}",
                    s.name.as_deref().unwrap_or(""),
                    matchers.join(",")
                )
            })
            .collect();
        assert_eq!(found, selectors, "selectors of {expr}");
        let labels: Vec<String> = uses
            .grouping
            .iter()
            .map(|(w, l)| format!("{w}:{l}"))
            .collect();
        assert_eq!(labels, grouping, "grouping labels of {expr}");
    }
    check(
        r#"sum by (a, b) (rate(x_total{c="1", d=~"e|f"}[5m])) / ignoring (g) group_left sum(y) > bool 0"#,
        &[r#"x_total{c=1,d=~e|f}"#, "y{}"],
        &["by:a", "by:b", "ignoring:g"],
    );
    check(
        "histogram_quantile(0.9, sum without (instance) (rate(h_bucket[1m]) offset 5m)) and on (job) up # up{x}",
        &["h_bucket{}", "up{}"],
        &["without:instance", "on:job"],
    );
    check(
        r#"topk(3, count_values("v", z)) + sum(x) by (k) + Inf + group_left_metric * {__name__=~'n\'1|n2'}"#,
        &["z{}", "x{}", "group_left_metric{}", "{__name__=~n'1|n2}"],
        &["by:k"],
    );
    assert!(
        uses(r#"x{a="1}"#)
            .unwrap_err()
            .contains("unterminated string")
    );
    assert!(
        uses(r#"x{a}"#)
            .unwrap_err()
            .contains("malformed label matchers")
    );
}
