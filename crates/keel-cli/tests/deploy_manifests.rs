//! The manifests in `deploy/` stay true to what Keel exposes.
//!
//! Every PromQL expression in the Grafana dashboard (`deploy/grafana/keel-grpc.json`) and in
//! the Prometheus alerts (`deploy/prometheus/alerts.yml`) may only name metrics listed in
//! [`KNOWN_METRICS`], with labels those metrics carry and label values they take (gRPC codes
//! spelled as grpc-go spells them), and the dashboard only Grafana variables it defines. The
//! dashboard's panels have unique ids, titles and targets and query through the
//! `${datasource}` variable; the alerts only match scrape jobs that `prometheus.yml` defines,
//! and `prometheus.yml` loads them. Files only: no server, Prometheus or Grafana runs.
//!
//! The dashboard is read with serde_json; the workspace has no YAML crate, so the YAML files
//! are read line by line, relying on the plain layout they are written in.

use std::collections::{BTreeSet, HashSet};
use std::path::{Path, PathBuf};

use serde_json::Value;

/// What a metric is, which decides the series names it has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Counter,
    Gauge,
    /// Queried only as `<name>_bucket` (with `le`), `<name>_sum` or `<name>_count`.
    Histogram,
}

/// A metric Keel exposes, and the labels of its series besides [`TARGET_LABELS`].
struct Metric {
    name: &'static str,
    kind: Kind,
    labels: &'static [&'static str],
}

const fn metric(name: &'static str, kind: Kind, labels: &'static [&'static str]) -> Metric {
    Metric { name, kind, labels }
}

const RPC: &[&str] = &["grpc_type", "grpc_service", "grpc_method"];
const RPC_CODE: &[&str] = &["grpc_type", "grpc_service", "grpc_method", "grpc_code"];

/// Every metric the dashboard and the alerts may query: go-grpc-middleware's Prometheus
/// provider names and labels (so existing dashboards work), and Keel's own.
const KNOWN_METRICS: &[Metric] = &[
    metric("grpc_server_started_total", Kind::Counter, RPC),
    metric("grpc_server_handled_total", Kind::Counter, RPC_CODE),
    metric("grpc_server_msg_received_total", Kind::Counter, RPC),
    metric("grpc_server_msg_sent_total", Kind::Counter, RPC),
    metric("grpc_server_handling_seconds", Kind::Histogram, RPC),
    metric("grpc_client_started_total", Kind::Counter, RPC),
    metric("grpc_client_handled_total", Kind::Counter, RPC_CODE),
    metric("grpc_client_msg_received_total", Kind::Counter, RPC),
    metric("grpc_client_msg_sent_total", Kind::Counter, RPC),
    metric("grpc_client_handling_seconds", Kind::Histogram, RPC),
    metric("keel_server_inflight_rpcs", Kind::Gauge, &["listener"]),
    metric("keel_server_shed_rpcs_total", Kind::Counter, &[]),
    metric("keel_server_connections", Kind::Gauge, &["listener"]),
    metric("keel_server_panics_total", Kind::Counter, &[]),
    metric(
        "keel_server_goaways_total",
        Kind::Counter,
        &["listener", "reason"],
    ),
];

/// Labels Prometheus adds to every scraped series.
const TARGET_LABELS: &[&str] = &["job", "instance"];

/// The values a label can take, where they are a closed set.
const LABEL_VALUES: &[(&str, &[&str])] = &[
    (
        "grpc_code",
        &[
            "OK",
            "Canceled",
            "Unknown",
            "InvalidArgument",
            "DeadlineExceeded",
            "NotFound",
            "AlreadyExists",
            "PermissionDenied",
            "ResourceExhausted",
            "FailedPrecondition",
            "Aborted",
            "OutOfRange",
            "Unimplemented",
            "Internal",
            "Unavailable",
            "DataLoss",
            "Unauthenticated",
        ],
    ),
    (
        "grpc_type",
        &["unary", "client_stream", "server_stream", "bidi_stream"],
    ),
    ("reason", &["max_age", "max_idle", "shutdown"]),
];

/// PromQL keywords followed by a parenthesised list of label names.
const GROUPING_KEYWORDS: &[&str] = &[
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
];

const DASHBOARD: &str = "deploy/grafana/keel-grpc.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const DATASOURCE_VARIABLE: &str = "${datasource}";

// ---------------------------------------------------------------------------------------
// Reading the files

fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .join(relative)
}

fn read(relative: &str) -> String {
    let path = repo_path(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {relative} ({}): {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

/// One PromQL expression and where it was found, for messages.
struct Query {
    place: String,
    expr: String,
}

/// Every panel, rows included, with the panels of collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in dashboard
        .get("panels")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
    {
        all.push(panel);
        if let Some(nested) = panel.get("panels").and_then(Value::as_array) {
            all.extend(nested);
        }
    }
    all
}

fn is_row(panel: &Value) -> bool {
    panel.get("type").and_then(Value::as_str) == Some("row")
}

fn describe_panel(index: usize, panel: &Value) -> String {
    let id = panel
        .get("id")
        .and_then(Value::as_i64)
        .map_or_else(|| "without id".to_owned(), |id| format!("id {id}"));
    let title = panel.get("title").and_then(Value::as_str).unwrap_or("");
    format!("{DASHBOARD} panel #{index} ({id}, \"{title}\")")
}

fn targets(panel: &Value) -> &[Value] {
    panel
        .get("targets")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn template_variables(dashboard: &Value) -> &[Value] {
    dashboard
        .get("templating")
        .and_then(|t| t.get("list"))
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

/// A query variable's query: a string, or since Grafana 10 an object with a `query` field.
fn variable_query(variable: &Value) -> Option<&str> {
    let query = variable.get("query")?;
    query
        .as_str()
        .or_else(|| query.get("query").and_then(Value::as_str))
}

fn panel_queries(dashboard: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for (index, panel) in panels(dashboard).into_iter().enumerate() {
        for target in targets(panel) {
            let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
            queries.push(Query {
                place: format!("{} target {ref_id}", describe_panel(index, panel)),
                expr: target
                    .get("expr")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_owned(),
            });
        }
    }
    queries
}

/// The `expr:` of every rule in an alerts file (inline, quoted or as a `|`/`>` block), and
/// the names of its alerts in order.
fn alert_queries(file: &str, text: &str) -> (Vec<Query>, Vec<String>) {
    let lines: Vec<&str> = text.lines().collect();
    let mut queries = Vec::new();
    let mut alerts = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let line = lines[i];
        let trimmed = line.trim_start();
        let indent = line.len() - trimmed.len();
        let trimmed = trimmed.strip_prefix("- ").unwrap_or(trimmed);
        if let Some(name) = trimmed.strip_prefix("alert:") {
            alerts.push(unquote(name.trim()).to_owned());
        }
        if let Some(value) = trimmed.strip_prefix("expr:") {
            let value = value.trim();
            let line_number = i + 1;
            let expr = if value.starts_with('|') || value.starts_with('>') {
                let mut block = Vec::new();
                while let Some(next) = lines.get(i + 1) {
                    let next_indent = next.len() - next.trim_start().len();
                    if !next.trim().is_empty() && next_indent <= indent {
                        break;
                    }
                    block.push(next.trim());
                    i += 1;
                }
                block.join("\n").trim().to_owned()
            } else {
                unquote(value).to_owned()
            };
            let alert = alerts.last().map_or("no alert", String::as_str);
            queries.push(Query {
                place: format!("{file} line {line_number} (alert {alert})"),
                expr,
            });
        }
        i += 1;
    }
    (queries, alerts)
}

fn unquote(value: &str) -> &str {
    for quote in ['"', '\''] {
        if let Some(inner) = value
            .strip_prefix(quote)
            .and_then(|v| v.strip_suffix(quote))
        {
            return inner;
        }
    }
    value
}

/// The uncommented list items under a top-level key of a YAML file, with their line numbers.
fn top_level_list(text: &str, key: &str) -> Vec<(usize, String)> {
    let mut items = Vec::new();
    let mut inside = false;
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') && !line.starts_with('-') {
            inside = line
                .strip_prefix(key)
                .and_then(|l| l.strip_prefix(':'))
                .is_some_and(|rest| rest.trim().is_empty() || rest.trim().starts_with('#'));
            continue;
        }
        if inside {
            if let Some(item) = trimmed.strip_prefix("- ") {
                items.push((index + 1, unquote(item.trim()).to_owned()));
            }
        }
    }
    items
}

/// The `job_name`s of the (uncommented) scrape configs.
fn scrape_jobs(prometheus_yml: &str) -> BTreeSet<String> {
    prometheus_yml
        .lines()
        .filter_map(|line| {
            let trimmed = line.trim_start();
            let trimmed = trimmed.strip_prefix("- ").unwrap_or(trimmed);
            trimmed.strip_prefix("job_name:")
        })
        .map(|name| unquote(name.trim()).to_owned())
        .collect()
}

// ---------------------------------------------------------------------------------------
// Checking PromQL

/// What an expression queries, and what is wrong with it.
#[derive(Debug, Default)]
struct Analysis {
    metrics: BTreeSet<&'static str>,
    problems: Vec<String>,
}

#[derive(Debug, PartialEq)]
enum Token<'a> {
    Ident(&'a str),
    Str(String),
    Op(&'a str),
    Punct(char),
    /// Numbers, durations and Grafana variables.
    Other,
}

struct Matcher {
    label: String,
    op: String,
    value: String,
}

fn lex(expr: &str) -> Result<Vec<Token<'_>>, String> {
    let bytes = expr.as_bytes();
    let is_ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < bytes.len() {
        let c = bytes[i];
        let start = i;
        match c {
            _ if c.is_ascii_whitespace() => i += 1,
            b'#' => {
                while i < bytes.len() && bytes[i] != b'\n' {
                    i += 1;
                }
            }
            b'"' | b'\'' | b'`' => {
                i += 1;
                let mut value = String::new();
                loop {
                    match bytes.get(i) {
                        None => return Err(format!("unterminated string at byte {start}")),
                        Some(&b) if b == c => break,
                        Some(b'\\') if c != b'`' && i + 1 < bytes.len() => {
                            let next = expr[i + 1..].chars().next().unwrap_or_default();
                            value.push(next);
                            i += 1 + next.len_utf8();
                        }
                        Some(_) => {
                            let next = expr[i..].chars().next().unwrap_or_default();
                            value.push(next);
                            i += next.len_utf8();
                        }
                    }
                }
                i += 1;
                tokens.push(Token::Str(value));
            }
            b'$' => {
                i += 1;
                if bytes.get(i) == Some(&b'{') {
                    while i < bytes.len() && bytes[i] != b'}' {
                        i += 1;
                    }
                    i += 1;
                } else {
                    while i < bytes.len() && is_ident(bytes[i]) {
                        i += 1;
                    }
                }
                tokens.push(Token::Other);
            }
            b'=' | b'!' | b'<' | b'>' => {
                i += if matches!(bytes.get(i + 1), Some(b'=' | b'~')) {
                    2
                } else {
                    1
                };
                tokens.push(Token::Op(&expr[start..i]));
            }
            _ if c.is_ascii_digit() || c == b'.' => {
                while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == b'.') {
                    i += 1;
                }
                tokens.push(Token::Other);
            }
            _ if is_ident(c) => {
                while i < bytes.len() && is_ident(bytes[i]) {
                    i += 1;
                }
                tokens.push(Token::Ident(&expr[start..i]));
            }
            _ => {
                let ch = expr[i..].chars().next().unwrap_or_default();
                i += ch.len_utf8();
                tokens.push(Token::Punct(ch));
            }
        }
    }
    Ok(tokens)
}

/// Parses `{label op "value", ...}` with `*i` at the `{`, leaving `*i` after the `}`.
fn parse_matchers(tokens: &[Token<'_>], i: &mut usize) -> Result<Vec<Matcher>, String> {
    let mut matchers = Vec::new();
    *i += 1;
    loop {
        match tokens.get(*i) {
            Some(Token::Punct('}')) => {
                *i += 1;
                return Ok(matchers);
            }
            Some(Token::Ident(label)) => match (tokens.get(*i + 1), tokens.get(*i + 2)) {
                (Some(Token::Op(op)), Some(Token::Str(value)))
                    if ["=", "!=", "=~", "!~"].contains(op) =>
                {
                    matchers.push(Matcher {
                        label: (*label).to_owned(),
                        op: (*op).to_owned(),
                        value: value.clone(),
                    });
                    *i += 3;
                    if tokens.get(*i) == Some(&Token::Punct(',')) {
                        *i += 1;
                    }
                }
                _ => return Err(format!("malformed label matcher after `{label}`")),
            },
            other => return Err(format!("malformed label matchers: unexpected {other:?}")),
        }
    }
}

fn is_known_label(label: &str) -> bool {
    label == "le"
        || TARGET_LABELS.contains(&label)
        || KNOWN_METRICS.iter().any(|m| m.labels.contains(&label))
}

/// Whether an identifier outside matchers and groupings names a metric (and so must be
/// known), rather than a function, keyword or label.
fn is_metric_like(ident: &str) -> bool {
    (ident.starts_with("grpc_") || ident.starts_with("keel_")) && !is_known_label(ident)
}

/// The metric behind a series name, and whether the series is a histogram's `_bucket`.
fn resolve(series: &str) -> Result<(&'static Metric, bool), String> {
    if let Some(metric) = KNOWN_METRICS.iter().find(|m| m.name == series) {
        if metric.kind == Kind::Histogram {
            return Err(format!(
                "`{series}` is a histogram, which has no series of that name: query \
                 `{series}_bucket`, `{series}_sum` or `{series}_count`"
            ));
        }
        return Ok((metric, false));
    }
    for suffix in ["_bucket", "_sum", "_count"] {
        if let Some(base) = series.strip_suffix(suffix) {
            if let Some(metric) = KNOWN_METRICS
                .iter()
                .find(|m| m.name == base && m.kind == Kind::Histogram)
            {
                return Ok((metric, suffix == "_bucket"));
            }
        }
    }
    Err(format!(
        "unknown metric `{series}` (not in KNOWN_METRICS of crates/keel-cli/tests/deploy_manifests.rs)"
    ))
}

impl Analysis {
    fn series(&mut self, series: &str, matchers: &[Matcher]) {
        let (metric, bucket) = match resolve(series) {
            Ok(found) => found,
            Err(problem) => return self.problems.push(problem),
        };
        self.metrics.insert(metric.name);
        for matcher in matchers.iter().filter(|m| m.label != "__name__") {
            let label = matcher.label.as_str();
            let has_label = metric.labels.contains(&label)
                || TARGET_LABELS.contains(&label)
                || (bucket && label == "le");
            if !has_label {
                self.problems.push(format!(
                    "`{series}` has no label `{label}` (its labels: {}{})",
                    metric.labels.join(", "),
                    if bucket { ", le" } else { "" },
                ));
                continue;
            }
            self.label_value(series, matcher);
        }
    }

    /// Checks a matcher's value against the label's closed set of values, if it has one.
    /// Regex alternatives that are plain words are checked; other regexes are let through.
    fn label_value(&mut self, series: &str, matcher: &Matcher) {
        let Some((_, values)) = LABEL_VALUES.iter().find(|(l, _)| *l == matcher.label) else {
            return;
        };
        if matcher.value.contains('$') {
            return;
        }
        let alternatives: Vec<&str> = if matcher.op.ends_with('~') {
            matcher
                .value
                .split('|')
                .filter(|a| a.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'))
                .collect()
        } else {
            vec![matcher.value.as_str()]
        };
        for value in alternatives {
            if !values.contains(&value) {
                self.problems.push(format!(
                    "`{series}`: \"{value}\" is not a value of `{}` (it is one of: {})",
                    matcher.label,
                    values.join(", "),
                ));
            }
        }
    }
}

/// Checks the metrics, labels and label values an expression names.
fn analyze(expr: &str) -> Analysis {
    let mut analysis = Analysis::default();
    let tokens = match lex(expr) {
        Ok(tokens) => tokens,
        Err(problem) => {
            analysis.problems.push(problem);
            return analysis;
        }
    };
    let label_arguments = label_values_arguments(&tokens);
    let mut i = 0;
    while i < tokens.len() {
        match &tokens[i] {
            Token::Ident(label) if label_arguments.contains(&i) => {
                if !is_known_label(label) {
                    analysis
                        .problems
                        .push(format!("`label_values` asks for unknown label `{label}`"));
                }
                i += 1;
            }
            // A metric, or any other identifier owning a selector (`up{job="keel"}`, whose
            // labels are not Keel's to check).
            Token::Ident(name)
                if is_metric_like(name) || tokens.get(i + 1) == Some(&Token::Punct('{')) =>
            {
                i += 1;
                let matchers = if tokens.get(i) == Some(&Token::Punct('{')) {
                    match parse_matchers(&tokens, &mut i) {
                        Ok(matchers) => matchers,
                        Err(problem) => {
                            analysis.problems.push(problem);
                            return analysis;
                        }
                    }
                } else {
                    Vec::new()
                };
                if is_metric_like(name) {
                    analysis.series(name, &matchers);
                }
            }
            Token::Punct('{') => {
                let matchers = match parse_matchers(&tokens, &mut i) {
                    Ok(matchers) => matchers,
                    Err(problem) => {
                        analysis.problems.push(problem);
                        return analysis;
                    }
                };
                let names: Vec<&str> = matchers
                    .iter()
                    .filter(|m| m.label == "__name__")
                    .flat_map(|m| m.value.split('|'))
                    .collect();
                if names.is_empty() {
                    analysis
                        .problems
                        .push("a selector without a metric name".to_owned());
                }
                for name in names {
                    analysis.series(name, &matchers);
                }
            }
            Token::Ident(keyword)
                if GROUPING_KEYWORDS.contains(keyword)
                    && tokens.get(i + 1) == Some(&Token::Punct('(')) =>
            {
                i += 2;
                while let Some(token) = tokens.get(i) {
                    i += 1;
                    match token {
                        Token::Punct(')') => break,
                        Token::Ident(label) if !is_known_label(label) => analysis
                            .problems
                            .push(format!("`{keyword}` names unknown label `{label}`")),
                        _ => {}
                    }
                }
            }
            _ => i += 1,
        }
    }
    analysis
}

/// The token indexes of the label arguments of Grafana's `label_values(selector, label)`.
fn label_values_arguments(tokens: &[Token<'_>]) -> HashSet<usize> {
    let mut arguments = HashSet::new();
    for (start, token) in tokens.iter().enumerate() {
        if *token != Token::Ident("label_values") {
            continue;
        }
        let mut depth = 0;
        for (i, token) in tokens.iter().enumerate().skip(start + 1) {
            match token {
                Token::Punct('(') => depth += 1,
                Token::Punct(')') => {
                    depth -= 1;
                    if depth == 0 {
                        if let Some(Token::Ident(_)) = tokens.get(i - 1) {
                            arguments.insert(i - 1);
                        }
                        break;
                    }
                }
                _ => {}
            }
        }
    }
    arguments
}

/// The Grafana variables (`$name`, `${name}`, `${name:format}`) an expression uses.
fn variables_in(expr: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = expr;
    while let Some(at) = rest.find('$') {
        rest = &rest[at + 1..];
        let name = match rest.strip_prefix('{') {
            Some(braced) => braced.split(['}', ':']).next().unwrap_or_default(),
            None => {
                let end = rest
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(rest.len());
                &rest[..end]
            }
        };
        names.push(name.to_owned());
    }
    names
}

/// Variables an expression uses that are neither in `defined` nor Grafana built-ins (`$__…`).
fn undefined_variables(expr: &str, defined: &BTreeSet<String>) -> Vec<String> {
    variables_in(expr)
        .into_iter()
        .filter(|v| !v.starts_with("__") && !defined.contains(v))
        .collect()
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------------------
// The dashboard

#[test]
fn dashboard_panels_have_unique_ids_titles_and_targets() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    let schema = dashboard.get("schemaVersion").and_then(Value::as_i64);
    if schema != Some(39) {
        problems.push(format!(
            "{DASHBOARD}: schemaVersion is {schema:?}, expected 39"
        ));
    }
    let all = panels(&dashboard);
    if all.iter().all(|p| is_row(p)) {
        problems.push(format!("{DASHBOARD}: no panels"));
    }
    let mut ids = HashSet::new();
    for (index, panel) in all.into_iter().enumerate() {
        let place = describe_panel(index, panel);
        match panel.get("id").and_then(Value::as_i64) {
            None => problems.push(format!("{place}: no integer `id`")),
            Some(id) if !ids.insert(id) => {
                problems.push(format!("{place}: id {id} is used by an earlier panel"))
            }
            Some(_) => {}
        }
        if panel
            .get("title")
            .and_then(Value::as_str)
            .is_none_or(|t| t.trim().is_empty())
        {
            problems.push(format!("{place}: no title"));
        }
        if is_row(panel) {
            continue;
        }
        if targets(panel).is_empty() {
            problems.push(format!("{place}: no targets"));
        }
        let mut ref_ids = HashSet::new();
        for (t, target) in targets(panel).iter().enumerate() {
            match target.get("refId").and_then(Value::as_str) {
                None => problems.push(format!("{place} target #{t}: no refId")),
                Some(r) if !ref_ids.insert(r) => {
                    problems.push(format!("{place} target {r}: refId used twice"))
                }
                Some(_) => {}
            }
            if target
                .get("expr")
                .and_then(Value::as_str)
                .is_none_or(|e| e.trim().is_empty())
            {
                problems.push(format!("{place} target #{t}: no `expr`"));
            }
        }
    }
    assert_no_problems("the dashboard's panels are malformed", &problems);
}

#[test]
fn dashboard_queries_use_known_metrics_labels_and_variables() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    let mut defined = BTreeSet::new();
    for variable in template_variables(&dashboard) {
        let name = variable.get("name").and_then(Value::as_str).unwrap_or("?");
        if variable.get("type").and_then(Value::as_str) == Some("query") {
            let query = variable_query(variable).unwrap_or_default();
            let place = format!("{DASHBOARD} variable `{name}`");
            let definition = variable.get("definition").and_then(Value::as_str);
            if definition.is_some_and(|d| d != query) {
                problems.push(format!(
                    "{place}: `definition` ({}) differs from the query Grafana runs ({query})",
                    definition.unwrap_or_default()
                ));
            }
            problems.extend(
                analyze(query)
                    .problems
                    .into_iter()
                    .map(|p| format!("{place}: {p}")),
            );
            for v in undefined_variables(query, &defined) {
                problems.push(format!(
                    "{place}: uses `${v}`, which is not a variable defined before it"
                ));
            }
        }
        defined.insert(name.to_owned());
    }
    let queries = panel_queries(&dashboard);
    for query in &queries {
        let analysis = analyze(&query.expr);
        if analysis.metrics.is_empty() && analysis.problems.is_empty() {
            problems.push(format!("{}: queries no Keel metric", query.place));
        }
        problems.extend(
            analysis
                .problems
                .into_iter()
                .map(|p| format!("{}: {p}", query.place)),
        );
        for v in undefined_variables(&query.expr, &defined) {
            problems.push(format!(
                "{}: uses `${v}`, which is not a dashboard variable",
                query.place
            ));
        }
    }
    assert_no_problems("the dashboard queries what Keel does not expose", &problems);
}

#[test]
fn dashboard_filters_by_job_service_and_method() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    for name in ["job", "grpc_service", "grpc_method"] {
        let Some(variable) = template_variables(&dashboard)
            .iter()
            .find(|v| v.get("name").and_then(Value::as_str) == Some(name))
        else {
            problems.push(format!("{DASHBOARD}: no template variable `{name}`"));
            continue;
        };
        let place = format!("{DASHBOARD} variable `{name}`");
        if variable.get("type").and_then(Value::as_str) != Some("query") {
            problems.push(format!("{place}: type is not `query`"));
        }
        let query = variable_query(variable).unwrap_or_default();
        if !(query.starts_with("label_values(") && query.trim_end().ends_with(&format!("{name})")))
        {
            problems.push(format!(
                "{place}: query `{query}` is not `label_values(…, {name})`"
            ));
        }
    }
    assert_no_problems("the dashboard's filters are missing or wrong", &problems);
}

/// Every `datasource` in the dashboard, by JSON path.
fn datasources<'a>(value: &'a Value, path: &str, found: &mut Vec<(String, &'a Value)>) {
    if let Some(object) = value.as_object() {
        for (key, child) in object {
            let child_path = format!("{path}.{key}");
            if key == "datasource" {
                found.push((child_path.clone(), child));
            }
            datasources(child, &child_path, found);
        }
    } else if let Some(array) = value.as_array() {
        for (index, child) in array.iter().enumerate() {
            datasources(child, &format!("{path}[{index}]"), found);
        }
    }
}

#[test]
fn dashboard_queries_through_the_datasource_variable() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    let variable = template_variables(&dashboard)
        .iter()
        .find(|v| v.get("name").and_then(Value::as_str) == Some("datasource"));
    match variable {
        None => problems.push(format!("{DASHBOARD}: no template variable `datasource`")),
        Some(v) => {
            if v.get("type").and_then(Value::as_str) != Some("datasource")
                || v.get("query").and_then(Value::as_str) != Some("prometheus")
            {
                problems.push(format!(
                    "{DASHBOARD} variable `datasource`: must have type `datasource` and query `prometheus`"
                ));
            }
        }
    }
    let mut found = Vec::new();
    datasources(&dashboard, "$", &mut found);
    for (path, datasource) in found {
        let uid = datasource
            .as_str()
            .or_else(|| datasource.get("uid").and_then(Value::as_str));
        let kind = datasource.get("type").and_then(Value::as_str);
        if uid != Some(DATASOURCE_VARIABLE) {
            problems.push(format!(
                "{DASHBOARD} {path}: uid is \"{}\", not \"{DATASOURCE_VARIABLE}\"",
                uid.unwrap_or("(none)")
            ));
        }
        if kind.is_some_and(|k| k != "prometheus") {
            problems.push(format!(
                "{DASHBOARD} {path}: type is \"{}\", not \"prometheus\"",
                kind.unwrap_or_default()
            ));
        }
    }
    for (index, panel) in panels(&dashboard).into_iter().enumerate() {
        if is_row(panel) {
            continue;
        }
        let place = describe_panel(index, panel);
        if panel.get("datasource").is_none() {
            problems.push(format!("{place}: no `datasource`"));
        }
        for target in targets(panel) {
            if target.get("datasource").is_none() {
                let ref_id = target.get("refId").and_then(Value::as_str).unwrap_or("?");
                problems.push(format!("{place} target {ref_id}: no `datasource`"));
            }
        }
    }
    for variable in template_variables(&dashboard) {
        if variable.get("type").and_then(Value::as_str) == Some("query")
            && variable.get("datasource").is_none()
        {
            let name = variable.get("name").and_then(Value::as_str).unwrap_or("?");
            problems.push(format!("{DASHBOARD} variable `{name}`: no `datasource`"));
        }
    }
    assert_no_problems(
        "the dashboard does not query through ${datasource}",
        &problems,
    );
}

// ---------------------------------------------------------------------------------------
// Prometheus

#[test]
fn alerts_use_known_metrics_and_scraped_jobs() {
    let (queries, alerts) = alert_queries(ALERTS, &read(ALERTS));
    let jobs = scrape_jobs(&read(PROMETHEUS));
    let mut problems = Vec::new();
    if alerts.is_empty() {
        problems.push(format!("{ALERTS}: no `alert:` rules found"));
    }
    if queries.len() != alerts.len() {
        problems.push(format!(
            "{ALERTS}: {} alerts but {} `expr:` lines; every alert needs exactly one",
            alerts.len(),
            queries.len()
        ));
    }
    let mut names = HashSet::new();
    for name in &alerts {
        if !names.insert(name) {
            problems.push(format!("{ALERTS}: alert {name} is defined twice"));
        }
    }
    for query in &queries {
        if query.expr.is_empty() {
            problems.push(format!("{}: empty expr", query.place));
        }
        problems.extend(
            analyze(&query.expr)
                .problems
                .into_iter()
                .map(|p| format!("{}: {p}", query.place)),
        );
        if query.expr.contains('$') {
            problems.push(format!(
                "{}: `$` in an expr (Grafana variables such as $__rate_interval mean nothing to Prometheus)",
                query.place
            ));
        }
        let job_matchers = lex(&query.expr).unwrap_or_default();
        for window in job_matchers.windows(3) {
            if let [Token::Ident("job"), Token::Op(_), Token::Str(value)] = window {
                for job in value.split('|').filter(|j| !j.contains(['.', '*', '+'])) {
                    if !jobs.contains(job) {
                        problems.push(format!(
                            "{}: matches job \"{job}\", which {PROMETHEUS} does not scrape (jobs: {})",
                            query.place,
                            jobs.iter().cloned().collect::<Vec<_>>().join(", ")
                        ));
                    }
                }
            }
        }
    }
    assert_no_problems("the alerts query what Keel does not expose", &problems);
}

#[test]
fn prometheus_config_loads_the_alerts() {
    let text = read(PROMETHEUS);
    let rule_files = top_level_list(&text, "rule_files");
    let alerts = rule_files
        .iter()
        .find(|(_, file)| Path::new(file).file_name() == Some("alerts.yml".as_ref()));
    let Some((line, file)) = alerts else {
        panic!("{PROMETHEUS}: `rule_files:` does not list alerts.yml (it lists {rule_files:?})");
    };
    // Prometheus resolves rule files relative to the configuration file's directory.
    let resolved = repo_path(PROMETHEUS).with_file_name(file);
    assert!(
        resolved.is_file(),
        "{PROMETHEUS} line {line}: rule file `{file}` resolves to {}, which does not exist",
        resolved.display()
    );
    let jobs = scrape_jobs(&text);
    for job in ["keel", "payments"] {
        assert!(
            jobs.contains(job),
            "{PROMETHEUS}: no scrape job `{job}` (jobs: {jobs:?})"
        );
    }
}

// ---------------------------------------------------------------------------------------
// The checks themselves can fail

#[test]
fn the_checks_catch_mistakes() {
    let good = r#"histogram_quantile(0.99, sum by (grpc_service, le) (rate(grpc_server_handling_seconds_bucket{job=~"$job", grpc_type="unary"}[$__rate_interval])))
        / ignoring (grpc_code) group_left sum(rate(grpc_server_handled_total{grpc_code=~"Internal|Unavailable", grpc_method=~".*"}[5m]))
        + keel_server_connections + rate(keel_server_goaways_total{reason="max_age"}[5m])"#;
    let analysis = analyze(good);
    assert!(analysis.problems.is_empty(), "{:?}", analysis.problems);
    assert_eq!(
        analysis.metrics.into_iter().collect::<Vec<_>>(),
        [
            "grpc_server_handled_total",
            "grpc_server_handling_seconds",
            "keel_server_connections",
            "keel_server_goaways_total"
        ]
    );
    assert!(
        analyze(r#"up{job=~"keel|payments"} == 0"#)
            .problems
            .is_empty()
    );
    let labelled = r#"label_values({__name__=~"grpc_server_handled_total|keel_server_connections", job=~"$job"}, grpc_service)"#;
    assert!(analyze(labelled).problems.is_empty());

    let bad = [
        ("rate(grpc_server_handeld_total[5m])", "unknown metric"),
        ("rate(keel_server_shed_rpcs[5m])", "unknown metric"),
        (
            "rate(grpc_server_handled_total_count[5m])",
            "unknown metric",
        ),
        ("grpc_server_handling_seconds", "is a histogram"),
        (
            r#"rate(grpc_server_handling_seconds_bucket{grpc_code="OK"}[5m])"#,
            "no label `grpc_code`",
        ),
        (
            r#"grpc_server_handling_seconds_sum{le="0.1"}"#,
            "no label `le`",
        ),
        (
            r#"rate(grpc_server_handled_total{grpc_code="Cancelled"}[5m])"#,
            "\"Cancelled\" is not a value",
        ),
        (
            r#"rate(grpc_server_handled_total{grpc_code=~"Internal|Unavilable"}[5m])"#,
            "\"Unavilable\" is not a value",
        ),
        (
            r#"grpc_server_started_total{grpc_type="stream"}"#,
            "\"stream\" is not a value",
        ),
        (
            "sum by (grpc_methd) (rate(grpc_server_handled_total[5m]))",
            "unknown label `grpc_methd`",
        ),
        (
            r#"label_values({__name__=~"grpc_server_handled"}, job)"#,
            "unknown metric",
        ),
        (
            r#"label_values(grpc_server_handled_total{job=~"$job"}, grpc_services)"#,
            "unknown label `grpc_services`",
        ),
        (
            "label_values(keel_server_connections, jobs)",
            "unknown label `jobs`",
        ),
        (
            r#"rate(grpc_server_handled_total{grpc_code="OK"[5m])"#,
            "malformed",
        ),
        (
            r#"rate(grpc_server_handled_total{grpc_code="OK}[5m])"#,
            "unterminated string",
        ),
    ];
    for (expr, expected) in bad {
        let problems = analyze(expr).problems;
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "`{expr}` should be reported with \"{expected}\", got {problems:?}"
        );
    }

    let defined = BTreeSet::from(["job".to_owned(), "grpc_method".to_owned()]);
    assert_eq!(
        undefined_variables(
            r#"x{job=~"$job", m=~"${grpc_method:regex}", s=~"$grpc_servic"}[$__rate_interval]"#,
            &defined
        ),
        ["grpc_servic"]
    );

    let yaml = "groups:\n  - name: g\n    rules:\n      - alert: A\n        expr: up == 0\n        for: 1m\n      - alert: B\n        expr: |\n          sum(\n            keel_server_connections\n          ) > 1\n        labels:\n          severity: warning\n";
    let (queries, alerts) = alert_queries("test.yml", yaml);
    assert_eq!(alerts, ["A", "B"]);
    assert_eq!(queries.len(), 2);
    assert_eq!(queries[0].expr, "up == 0");
    assert_eq!(queries[1].expr, "sum(\nkeel_server_connections\n) > 1");
    assert_eq!(queries[1].place, "test.yml line 8 (alert B)");

    let config = "global:\n  scrape_interval: 15s\n# rule_files:\n#   - other.yml\nrule_files:\n  - \"alerts.yml\"\n  # - old.yml\nscrape_configs:\n  - job_name: keel\n  # - job_name: commented\n";
    assert_eq!(
        top_level_list(config, "rule_files"),
        [(6, "alerts.yml".to_owned())]
    );
    assert_eq!(scrape_jobs(config), BTreeSet::from(["keel".to_owned()]));
}
