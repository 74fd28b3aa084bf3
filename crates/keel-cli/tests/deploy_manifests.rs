//! The manifests in `deploy/` stay true to what Keel exposes, checked with the real tools
//! against live processes.
//!
//! - promtool checks `prometheus.yml` (and the rule files it loads) and `alerts.yml`, runs
//!   the alerts' unit tests (`alerts_test.yml`), and parses every query of the Grafana
//!   dashboard (`keel-grpc.json`), with Grafana's variables replaced as Grafana would.
//! - Every metric, label and label value that the dashboard, the alerts and the alerts' unit
//!   tests name is in a live scrape: `keel serve` and `payments` run on ephemeral ports and
//!   answer calls ending with every gRPC code, and a Keel client channel counts its calls
//!   (`grpc_client_*`: neither binary makes client calls), and a `keel serve` with TLS on
//!   its gRPC listener (`keel_tls_*`) completes a handshake with `openssl s_client`;
//!   prometheus_client's OpenMetrics parser reads the expositions. Renaming a metric or a label in the code fails here.
//!   Only `job` and `instance` (Prometheus's target labels, `job` checked against the
//!   scrape jobs) and `up` come from Prometheus rather than the scrape.
//! - The dashboard's own structure: unique panel ids, titles and targets, every query
//!   through the `${datasource}` variable, filters by job, service and method, and only
//!   variables it defines.
//!
//! PyYAML reads the YAML (`tests/python/yaml_to_json.py`; the workspace has no YAML crate)
//! and serde_json the dashboard. What promtool cannot tell is which series a query selects:
//! `common/promql.rs` reads that from the PromQL promtool has accepted.

mod common;
#[path = "common/promql.rs"]
mod promql;
#[path = "common/python.rs"]
mod python;
#[path = "common/tools.rs"]
mod tools;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::Path;
use std::process::Command;

use common::KeelServe;
use common::payments::{Payments, TempDir};
use keel_interop::pb::grpc_testing::test_service_client::TestServiceClient;
use keel_interop::pb::grpc_testing::{EchoStatus, SimpleRequest};
use promql::{Matcher, grafana_query, interpolate, undefined_variables, uses};
use serde_json::Value;

const DASHBOARD: &str = "deploy/grafana/keel-grpc.json";
const ALERTS: &str = "deploy/prometheus/alerts.yml";
const ALERTS_TEST: &str = "deploy/prometheus/alerts_test.yml";
const PROMETHEUS: &str = "deploy/prometheus/prometheus.yml";
const DATASOURCE_VARIABLE: &str = "${datasource}";
/// Labels Prometheus gives every series of a target.
const TARGET_LABELS: &[&str] = &["job", "instance"];
/// Series Prometheus writes itself for every target, and their labels.
const SYNTHETIC: &[&str] = &["up"];

// ---------------------------------------------------------------------------------------
// Reading the files

fn read(relative: &str) -> String {
    let path = python::workspace_root().join(relative);
    std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read {relative} ({}): {e}", path.display()))
}

fn dashboard() -> Value {
    serde_json::from_str(&read(DASHBOARD))
        .unwrap_or_else(|e| panic!("{DASHBOARD} is not valid JSON: {e}"))
}

/// A query of the manifests and where it is, for messages.
struct Query {
    place: String,
    /// PromQL, or Grafana's `label_values(selector, label)`.
    expr: String,
    /// Whether its `job` matchers must name scrape jobs (not in the unit tests' inputs,
    /// which include a job the alerts must ignore).
    scraped_jobs_only: bool,
}

/// Every panel, rows included, with the panels of collapsed rows.
fn panels(dashboard: &Value) -> Vec<&Value> {
    let mut all = Vec::new();
    for panel in array(dashboard, "panels") {
        all.push(panel);
        all.extend(array(panel, "panels"));
    }
    all
}

fn array<'a>(value: &'a Value, key: &str) -> &'a [Value] {
    value
        .get(key)
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default()
}

fn text<'a>(value: &'a Value, key: &str) -> Option<&'a str> {
    value.get(key).and_then(Value::as_str)
}

fn is_row(panel: &Value) -> bool {
    text(panel, "type") == Some("row")
}

fn describe_panel(index: usize, panel: &Value) -> String {
    let id = panel
        .get("id")
        .and_then(Value::as_i64)
        .map_or_else(|| "without id".to_owned(), |id| format!("id {id}"));
    let title = text(panel, "title").unwrap_or("");
    format!("{DASHBOARD} panel #{index} ({id}, \"{title}\")")
}

fn template_variables(dashboard: &Value) -> &[Value] {
    dashboard
        .get("templating")
        .map(|t| array(t, "list"))
        .unwrap_or_default()
}

/// A query variable's query: a string, or since Grafana 10 an object with a `query` field.
fn variable_query(variable: &Value) -> Option<&str> {
    let query = variable.get("query")?;
    query.as_str().or_else(|| text(query, "query"))
}

/// The dashboard's query variables' queries and its panels' queries.
fn dashboard_queries(dashboard: &Value) -> Vec<Query> {
    let mut queries = Vec::new();
    for variable in template_variables(dashboard) {
        if text(variable, "type") == Some("query") {
            queries.push(Query {
                place: format!(
                    "{DASHBOARD} variable `{}`",
                    text(variable, "name").unwrap_or("?")
                ),
                expr: variable_query(variable).unwrap_or_default().to_owned(),
                scraped_jobs_only: true,
            });
        }
    }
    for (index, panel) in panels(dashboard).into_iter().enumerate() {
        for target in array(panel, "targets") {
            let ref_id = text(target, "refId").unwrap_or("?");
            queries.push(Query {
                place: format!("{} target {ref_id}", describe_panel(index, panel)),
                expr: text(target, "expr").unwrap_or_default().to_owned(),
                scraped_jobs_only: true,
            });
        }
    }
    queries
}

/// The alerts' expressions, and the input series of their unit tests.
fn alert_queries() -> Vec<Query> {
    let mut queries = Vec::new();
    for group in array(&tools::yaml_to_json(ALERTS), "groups") {
        for rule in array(group, "rules") {
            let name = text(rule, "alert").or_else(|| text(rule, "record"));
            queries.push(Query {
                place: format!("{ALERTS} rule {}", name.unwrap_or("?")),
                expr: text(rule, "expr").unwrap_or_default().to_owned(),
                scraped_jobs_only: true,
            });
        }
    }
    for test in array(&tools::yaml_to_json(ALERTS_TEST), "tests") {
        for input in array(test, "input_series") {
            queries.push(Query {
                place: format!(
                    "{ALERTS_TEST} test \"{}\" input series",
                    text(test, "name").unwrap_or("?")
                ),
                expr: text(input, "series").unwrap_or_default().to_owned(),
                scraped_jobs_only: false,
            });
        }
    }
    queries
}

/// The `job_name`s of the scrape configs.
fn scrape_jobs() -> BTreeSet<String> {
    array(&tools::yaml_to_json(PROMETHEUS), "scrape_configs")
        .iter()
        .filter_map(|job| text(job, "job_name").map(str::to_owned))
        .collect()
}

// ---------------------------------------------------------------------------------------
// What Keel exposes

/// The series of live scrapes: metric name → label → values.
#[derive(Debug, Default)]
struct Exposed(BTreeMap<String, BTreeMap<String, BTreeSet<String>>>);

impl Exposed {
    /// Adds the samples of an OpenMetrics exposition.
    fn add(&mut self, source: &str, exposition: &str) {
        let parsed = tools::parse_exposition("openmetrics", exposition)
            .unwrap_or_else(|e| panic!("{source}'s /metrics: {e}"));
        for sample in parsed["samples"].as_array().unwrap() {
            let labels = self
                .0
                .entry(sample["name"].as_str().unwrap().to_owned())
                .or_default();
            for (label, value) in sample["labels"].as_object().unwrap() {
                let value = value.as_str().unwrap().to_owned();
                labels.entry(label.clone()).or_default().insert(value);
            }
        }
    }

    /// The labels of `name`'s series, besides the target labels; `None` if no series has
    /// that name.
    fn labels(&self, name: &str) -> Option<BTreeSet<&str>> {
        if SYNTHETIC.contains(&name) {
            return Some(BTreeSet::new());
        }
        Some(self.0.get(name)?.keys().map(String::as_str).collect())
    }

    /// What a missing name may have become: the exposed names with its first two words.
    fn similar(&self, name: &str) -> String {
        let prefix: String = name.split('_').take(2).collect::<Vec<_>>().join("_");
        let similar: Vec<&str> = self
            .0
            .keys()
            .filter(|n| n.starts_with(&prefix))
            .map(String::as_str)
            .collect();
        if similar.is_empty() {
            "none starts like it".to_owned()
        } else {
            format!(
                "exposed names starting with `{prefix}`: {}",
                similar.join(", ")
            )
        }
    }

    /// What is wrong with what `query` names: metrics no scrape has, labels their series
    /// lack, label values they never take, and jobs `prometheus.yml` does not scrape.
    fn check(&self, query: &Query, jobs: &BTreeSet<String>) -> Vec<String> {
        let (promql, label_argument) = grafana_query(&query.expr);
        let uses = match uses(&interpolate(promql)) {
            Ok(uses) => uses,
            Err(problem) => return vec![problem],
        };
        let mut problems = Vec::new();
        let mut all_labels: BTreeSet<&str> = TARGET_LABELS.iter().copied().collect();
        for selector in &uses.selectors {
            let names = selector.names();
            if names.is_empty() {
                problems.push("a selector without a metric name".to_owned());
            }
            for name in &names {
                let Some(labels) = self.labels(name) else {
                    problems.push(format!(
                        "`{name}` is in no scrape of keel serve, payments or a Keel client ({})",
                        self.similar(name)
                    ));
                    continue;
                };
                all_labels.extend(&labels);
                for matcher in selector.matchers.iter().filter(|m| m.label != "__name__") {
                    problems.extend(self.check_matcher(name, &labels, matcher, query, jobs));
                }
            }
        }
        let grouping = uses.grouping.iter().map(|(w, l)| (w.as_str(), l.as_str()));
        for (word, label) in grouping.chain(label_argument.map(|l| ("label_values", l))) {
            if !all_labels.contains(label) {
                problems.push(format!(
                    "`{word}` names label `{label}`, which none of the query's series has \
                     (they have: {})",
                    all_labels.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        problems
    }

    /// A matcher's label must be on `name`'s series and its values among theirs; a `job`
    /// must be scraped (where `query` says so); `instance` is anything.
    fn check_matcher(
        &self,
        name: &str,
        labels: &BTreeSet<&str>,
        matcher: &Matcher,
        query: &Query,
        jobs: &BTreeSet<String>,
    ) -> Vec<String> {
        let label = matcher.label.as_str();
        let values = matcher.values().unwrap_or_default();
        if label == "job" && query.scraped_jobs_only {
            return values
                .into_iter()
                .filter(|job| !jobs.contains(*job))
                .map(|job| {
                    format!("matches job \"{job}\", which {PROMETHEUS} does not scrape ({jobs:?})")
                })
                .collect();
        }
        if TARGET_LABELS.contains(&label) {
            return Vec::new();
        }
        if !labels.contains(label) {
            let labels: Vec<&str> = labels.iter().copied().collect();
            return vec![format!(
                "`{name}` has no label `{label}` (its labels: {})",
                labels.join(", ")
            )];
        }
        let seen = &self.0[name][label];
        values
            .into_iter()
            .filter(|value| !seen.contains(*value))
            .map(|value| {
                let seen: Vec<&str> = seen.iter().map(String::as_str).collect();
                format!(
                    "`{name}`: no series has {label}=\"{value}\" (values seen: {})",
                    seen.join(", ")
                )
            })
            .collect()
    }
}

/// Calls `keel serve`'s TestService through a Keel client channel, once per gRPC code (0 to
/// 16, each answered as asked), and returns the channel's `grpc_client_*` exposition.
async fn call_keel_serve_with_every_code(server: &KeelServe) -> String {
    let mut metrics = keel::metrics::Metrics::new();
    let mut methods = keel::method::MethodTable::default();
    methods
        .add_encoded(keel_interop::FILE_DESCRIPTOR_SET)
        .unwrap();
    let observer = keel::observe::ClientObserver::new(
        &methods,
        metrics.registry_mut(),
        &keel::telemetry::Traces::global(),
    );
    let channel = tower::ServiceBuilder::new()
        .layer(
            keel::observe::ClientObserveLayer::new(observer)
                .target(&server.grpc_url().parse().unwrap()),
        )
        .service(keel::client::Channel::new(&format!("dns:///{}", server.grpc)).unwrap());
    let mut client = TestServiceClient::new(channel);
    for code in 0..=16 {
        let request = SimpleRequest {
            response_status: Some(EchoStatus {
                code,
                message: format!("asked for {code}"),
            }),
            ..Default::default()
        };
        let answered = match client.unary_call(request).await {
            Ok(_) => 0,
            Err(status) => status.code() as i32,
        };
        assert_eq!(
            answered, code,
            "TestService/UnaryCall asked for code {code}"
        );
    }
    metrics.render_as(keel::metrics::Format::OpenMetrics)
}

/// A first payment with `keel call`, as the README makes it, then a look at an account that
/// does not exist (NOT_FOUND).
fn call_payments(payments: &Payments) {
    let address = payments.grpc.to_string();
    let calls: [(&str, &[&str], &str, i32); 5] = [
        (
            "payments.v1.AccountService/CreateAccount",
            &[],
            r#"{"account_id":"alice","currency":"EUR"}"#,
            0,
        ),
        (
            "payments.v1.AccountService/CreateAccount",
            &[],
            r#"{"account_id":"bob","currency":"EUR"}"#,
            0,
        ),
        (
            "payments.v1.AccountService/Deposit",
            &[],
            r#"{"account_id":"alice","amount_minor":10000,"idempotency_key":"dep-1"}"#,
            0,
        ),
        (
            "payments.v1.PaymentService/Process",
            &["-H", "idempotency-key: pay-1"],
            r#"{"payer_account_id":"alice","payee_account_id":"bob","amount_minor":2500,"currency":"EUR","description":"books"}"#,
            0,
        ),
        (
            "payments.v1.AccountService/GetAccount",
            &[],
            r#"{"account_id":"nobody"}"#,
            64 + 5,
        ),
    ];
    for (method, headers, body, exit) in calls {
        let output = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["call", &address, method])
            .args(headers)
            .args(["-d", body])
            .output()
            .expect("run keel call");
        assert_eq!(
            output.status.code(),
            Some(exit),
            "keel call {method} {body}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// A `keel serve` with mutual TLS (optional) on its gRPC listener, after one handshake;
/// its admin listener stays plaintext. The files live as long as the returned directory.
fn keel_serve_with_tls() -> (KeelServe, keel_test_support::tls::Dir) {
    use keel_test_support::tls::{Ca, Dir};
    let dir = Dir::new();
    let root = Ca::root("Deploy Root");
    let leaf = root.leaf("localhost").dns("localhost").issue();
    let set = |key: &str, path: std::path::PathBuf| format!("{key}={}", path.display());
    let cert = set("tls.cert", dir.write("server.pem", &leaf.chain_pem));
    let key = set("tls.key", dir.write("server.key", &leaf.key_pem));
    let ca = set("tls.client_ca", dir.write("ca.pem", root.cert_pem()));
    let server = KeelServe::start(&[
        "--set",
        &cert,
        "--set",
        &key,
        "--set",
        &ca,
        "--set",
        "tls.client_auth=optional",
    ]);
    let handshake = Command::new("openssl")
        .args(["s_client", "-connect", &server.grpc.to_string()])
        .args(["-servername", "localhost", "-alpn", "h2", "-CAfile"])
        .arg(dir.path().join("ca.pem"))
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs");
    assert!(
        handshake.status.success(),
        "{}",
        String::from_utf8_lossy(&handshake.stderr)
    );
    (server, dir)
}

/// The series of `keel serve` (plaintext and TLS), `payments` and a Keel client after the
/// calls above.
async fn live_scrapes() -> Exposed {
    let server = KeelServe::start(&[]);
    let (tls_server, _files) = keel_serve_with_tls();
    let payments = Payments::start();
    let client = call_keel_serve_with_every_code(&server).await;
    call_payments(&payments);
    // As Prometheus asks: OpenMetrics.
    let accept = ["application/openmetrics-text; version=1.0.0"];
    let mut exposed = Exposed::default();
    for (source, admin) in [
        ("keel serve", server.admin),
        ("keel serve with TLS", tls_server.admin),
        ("payments", payments.admin),
    ] {
        let response = common::scrape_accepting(admin, &accept).await;
        let (_, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
        exposed.add(source, body);
    }
    exposed.add("a Keel client", &client);
    exposed
}

fn assert_no_problems(what: &str, problems: &[String]) {
    assert!(
        problems.is_empty(),
        "{what}:\n  - {}",
        problems.join("\n  - ")
    );
}

// ---------------------------------------------------------------------------------------
// promtool

#[test]
fn promtool_accepts_the_config_the_alerts_and_their_unit_tests() {
    for args in [
        ["check", "config", PROMETHEUS],
        ["check", "rules", ALERTS],
        ["test", "rules", ALERTS_TEST],
    ] {
        let run = tools::promtool(&args, "");
        assert!(run.success, "promtool {}:\n{}", args.join(" "), run.output);
    }
}

#[test]
fn promtool_parses_every_dashboard_query() {
    // Each query (a `label_values` variable's selector) as a recording rule named after
    // where it is, so promtool's complaint points at the panel.
    let mut rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (index, query) in dashboard_queries(&dashboard()).iter().enumerate() {
        let (promql, _) = grafana_query(&query.expr);
        let record = format!("keel_dashboard:query_{index}");
        rules.push_str(&format!(
            "      # {}\n      - record: {record}\n        expr: {}\n",
            query.place,
            serde_json::to_string(&interpolate(promql)).unwrap()
        ));
    }
    let dir = TempDir::new("dashboard_rules");
    let file = dir.path().join("dashboard.yml");
    std::fs::write(&file, &rules).unwrap();
    let run = tools::promtool(&["check", "rules", file.to_str().unwrap()], "");
    assert!(
        run.success,
        "promtool cannot parse the dashboard's queries:\n{}\n--- as rules ---\n{rules}",
        run.output
    );
}

// ---------------------------------------------------------------------------------------
// Against live scrapes

#[tokio::test]
async fn dashboard_and_alerts_name_only_what_keel_exposes() {
    let exposed = live_scrapes().await;
    let jobs = scrape_jobs();
    let mut queries = dashboard_queries(&dashboard());
    queries.extend(alert_queries());
    let mut problems = Vec::new();
    for query in &queries {
        if query.expr.trim().is_empty() {
            problems.push(format!("{}: empty", query.place));
        }
        problems.extend(
            exposed
                .check(query, &jobs)
                .into_iter()
                .map(|p| format!("{}: {p}", query.place)),
        );
    }
    assert_no_problems("the manifests query what Keel does not expose", &problems);
}

// ---------------------------------------------------------------------------------------
// The files themselves

#[test]
fn prometheus_config_loads_the_alerts_and_scrapes_keel_and_payments() {
    let config = tools::yaml_to_json(PROMETHEUS);
    let rule_files: Vec<&str> = array(&config, "rule_files")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    // Relative to the configuration file's directory, as Prometheus resolves them.
    assert!(
        rule_files
            .iter()
            .any(|f| Path::new(PROMETHEUS).with_file_name(f) == Path::new(ALERTS)),
        "{PROMETHEUS}: `rule_files` does not load {ALERTS} (it lists {rule_files:?})"
    );
    let jobs = scrape_jobs();
    for job in ["keel", "payments"] {
        assert!(
            jobs.contains(job),
            "{PROMETHEUS}: no scrape job `{job}` ({jobs:?})"
        );
    }
}

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
        if text(panel, "title").is_none_or(|t| t.trim().is_empty()) {
            problems.push(format!("{place}: no title"));
        }
        if is_row(panel) {
            continue;
        }
        if array(panel, "targets").is_empty() {
            problems.push(format!("{place}: no targets"));
        }
        let mut ref_ids = HashSet::new();
        for (t, target) in array(panel, "targets").iter().enumerate() {
            match text(target, "refId") {
                None => problems.push(format!("{place} target #{t}: no refId")),
                Some(r) if !ref_ids.insert(r) => {
                    problems.push(format!("{place} target {r}: refId used twice"))
                }
                Some(_) => {}
            }
            if text(target, "expr").is_none_or(|e| e.trim().is_empty()) {
                problems.push(format!("{place} target #{t}: no `expr`"));
            }
        }
    }
    assert_no_problems("the dashboard's panels are malformed", &problems);
}

#[test]
fn dashboard_uses_only_variables_it_defines() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    let mut defined = BTreeSet::new();
    for variable in template_variables(&dashboard) {
        let name = text(variable, "name").unwrap_or("?");
        if text(variable, "type") == Some("query") {
            let query = variable_query(variable).unwrap_or_default();
            let place = format!("{DASHBOARD} variable `{name}`");
            let definition = text(variable, "definition");
            if definition.is_some_and(|d| d != query) {
                problems.push(format!(
                    "{place}: `definition` ({}) differs from the query Grafana runs ({query})",
                    definition.unwrap_or_default()
                ));
            }
            for v in undefined_variables(query, &defined) {
                problems.push(format!(
                    "{place}: uses `${v}`, which is not a variable defined before it"
                ));
            }
        }
        defined.insert(name.to_owned());
    }
    for (index, panel) in panels(&dashboard).into_iter().enumerate() {
        for target in array(panel, "targets") {
            let expr = text(target, "expr").unwrap_or_default();
            for v in undefined_variables(expr, &defined) {
                problems.push(format!(
                    "{} target {}: uses `${v}`, which is not a dashboard variable",
                    describe_panel(index, panel),
                    text(target, "refId").unwrap_or("?")
                ));
            }
        }
    }
    assert_no_problems("the dashboard uses undefined variables", &problems);
}

#[test]
fn dashboard_filters_by_job_service_and_method() {
    let dashboard = dashboard();
    let mut problems = Vec::new();
    for name in ["job", "grpc_service", "grpc_method"] {
        let Some(variable) = template_variables(&dashboard)
            .iter()
            .find(|v| text(v, "name") == Some(name))
        else {
            problems.push(format!("{DASHBOARD}: no template variable `{name}`"));
            continue;
        };
        let place = format!("{DASHBOARD} variable `{name}`");
        if text(variable, "type") != Some("query") {
            problems.push(format!("{place}: type is not `query`"));
        }
        let query = variable_query(variable).unwrap_or_default();
        if grafana_query(query).1 != Some(name) {
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
        .find(|v| text(v, "name") == Some("datasource"));
    match variable {
        None => problems.push(format!("{DASHBOARD}: no template variable `datasource`")),
        Some(v) => {
            if text(v, "type") != Some("datasource") || text(v, "query") != Some("prometheus") {
                problems.push(format!(
                    "{DASHBOARD} variable `datasource`: must have type `datasource` and query `prometheus`"
                ));
            }
        }
    }
    let mut found = Vec::new();
    datasources(&dashboard, "$", &mut found);
    for (path, datasource) in found {
        let uid = datasource.as_str().or_else(|| text(datasource, "uid"));
        let kind = text(datasource, "type");
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
        for target in array(panel, "targets") {
            if target.get("datasource").is_none() {
                let ref_id = text(target, "refId").unwrap_or("?");
                problems.push(format!("{place} target {ref_id}: no `datasource`"));
            }
        }
    }
    for variable in template_variables(&dashboard) {
        if text(variable, "type") == Some("query") && variable.get("datasource").is_none() {
            let name = text(variable, "name").unwrap_or("?");
            problems.push(format!("{DASHBOARD} variable `{name}`: no `datasource`"));
        }
    }
    assert_no_problems(
        "the dashboard does not query through ${datasource}",
        &problems,
    );
}

// ---------------------------------------------------------------------------------------
// The checks themselves can fail

#[test]
fn the_checks_catch_mistakes() {
    let exposition = "# TYPE grpc_server_handled counter\n\
        grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"m\",grpc_code=\"OK\"} 1\n\
        grpc_server_handled_total{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"m\",grpc_code=\"Internal\"} 1\n\
        # TYPE grpc_server_handling_seconds histogram\n\
        grpc_server_handling_seconds_bucket{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"m\",le=\"1.0\"} 1\n\
        grpc_server_handling_seconds_bucket{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"m\",le=\"+Inf\"} 1\n\
        grpc_server_handling_seconds_sum{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"m\"} 0.1\n\
        grpc_server_handling_seconds_count{grpc_type=\"unary\",grpc_service=\"s\",grpc_method=\"m\"} 1\n\
        # TYPE keel_server_connections gauge\n\
        keel_server_connections{listener=\"grpc\"} 1\n\
        # EOF\n";
    let mut exposed = Exposed::default();
    exposed.add("a test", exposition);
    let jobs = BTreeSet::from(["keel".to_owned(), "payments".to_owned()]);
    let check = |expr: &str| {
        exposed.check(
            &Query {
                place: String::new(),
                expr: expr.to_owned(),
                scraped_jobs_only: true,
            },
            &jobs,
        )
    };

    let good = [
        r#"histogram_quantile(0.99, sum by (grpc_service, le) (rate(grpc_server_handling_seconds_bucket{job=~".*", grpc_type="unary"}[5m])))
        / ignoring (grpc_code) group_left sum without (instance) (rate(grpc_server_handled_total{grpc_code=~"Internal|OK", grpc_method=~".*"}[5m]))
        + on (job) keel_server_connections offset 5m > bool 0 and sum(nan) # a comment"#,
        r#"up{job=~"keel|payments"} == 0"#,
        r#"label_values({__name__=~"grpc_server_handled_total|keel_server_connections", job=~"$job"}, job)"#,
        "label_values(keel_server_connections, listener)",
        r#"grpc_server_handled_total{grpc_code!="OK", grpc_method=""}"#,
    ];
    for expr in good {
        assert_eq!(check(expr), Vec::<String>::new(), "{expr}");
    }

    let bad = [
        (
            "rate(grpc_server_handeld_total[5m])",
            "`grpc_server_handeld_total` is in no scrape",
        ),
        (
            "rate(grpc_server_handled[5m])",
            "exposed names starting with `grpc_server`: grpc_server_handled_total",
        ),
        (
            "grpc_server_handling_seconds",
            "`grpc_server_handling_seconds` is in no scrape",
        ),
        (
            r#"rate(grpc_server_handling_seconds_bucket{grpc_code="OK"}[5m])"#,
            "no label `grpc_code`",
        ),
        (
            r#"grpc_server_handling_seconds_sum{le="0.1"}"#,
            "no label `le`",
        ),
        (
            r#"grpc_server_handling_seconds_bucket{le="1"}"#,
            "no series has le=\"1\"",
        ),
        (
            r#"rate(grpc_server_handled_total{grpc_code="Cancelled"}[5m])"#,
            "no series has grpc_code=\"Cancelled\"",
        ),
        (
            r#"rate(grpc_server_handled_total{grpc_code=~"Internal|Unavilable"}[5m])"#,
            "no series has grpc_code=\"Unavilable\"",
        ),
        (
            "sum by (grpc_methd) (rate(grpc_server_handled_total[5m]))",
            "`by` names label `grpc_methd`",
        ),
        (
            "keel_server_connections / ignoring (listner) keel_server_connections",
            "`ignoring` names label `listner`",
        ),
        (
            r#"label_values({__name__=~"grpc_server_handled"}, job)"#,
            "`grpc_server_handled` is in no scrape",
        ),
        (
            r#"label_values(grpc_server_handled_total{job=~"$job"}, grpc_services)"#,
            "`label_values` names label `grpc_services`",
        ),
        (r#"{job="keel"}"#, "a selector without a metric name"),
        (r#"up{job=~"keel|node"}"#, "matches job \"node\""),
        (r#"up{grpc_code="OK"}"#, "`up` has no label `grpc_code`"),
        (
            r#"rate(grpc_server_handled_total{grpc_code="OK}[5m])"#,
            "unterminated string",
        ),
    ];
    for (expr, expected) in bad {
        let problems = check(expr);
        assert!(
            problems.iter().any(|p| p.contains(expected)),
            "`{expr}` should be reported with \"{expected}\", got {problems:?}"
        );
    }

    // The unit tests' inputs may name other jobs.
    let input = Query {
        place: String::new(),
        expr: r#"up{job="node", instance="a"}"#.to_owned(),
        scraped_jobs_only: false,
    };
    assert_eq!(exposed.check(&input, &jobs), Vec::<String>::new());

    let defined = BTreeSet::from(["job".to_owned(), "grpc_method".to_owned()]);
    let expr = r#"x{job=~"$job", m=~"${grpc_method:regex}", s=~"$grpc_servic"}[$__rate_interval]"#;
    assert_eq!(undefined_variables(expr, &defined), ["grpc_servic"]);
    assert_eq!(interpolate(expr), r#"x{job=~".*", m=~".*", s=~".*"}[5m]"#);
}
