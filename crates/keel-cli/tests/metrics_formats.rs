//! `/metrics` answers in the format the `Accept` header asks for, and each answer is read by
//! the real tools: Prometheus text 0.0.4 by prometheus_client's text parser and by
//! `promtool check metrics`, OpenMetrics by prometheus_client's (strict) OpenMetrics parser,
//! with the exemplar of a sampled call. A real Prometheus server scrapes `keel serve` and
//! stores that exemplar, which only OpenMetrics carries: it negotiated OpenMetrics.

mod common;
#[path = "common/python.rs"]
mod python;
#[path = "common/tools.rs"]
mod tools;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::payments::TempDir;
use common::{KeelServe, scrape_accepting};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use serde_json::Value;

const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// What Prometheus 2.x sends when it scrapes.
const PROMETHEUS_2: &str = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
/// What Prometheus 3.x sends.
const PROMETHEUS_3: &str = "application/openmetrics-text;version=1.0.0;escaping=allow-utf-8;q=0.5,application/openmetrics-text;version=0.0.1;q=0.4,text/plain;version=1.0.0;escaping=allow-utf-8;q=0.3,text/plain;version=0.0.4;q=0.2,*/*;q=0.1";

/// A `keel serve` that has answered one SayHello in the trace [`TRACE_ID`] (sampled).
async fn serve_one_traced_call() -> KeelServe {
    let server = KeelServe::start(&[]);
    let mut client = GreeterClient::connect(server.grpc_url()).await.unwrap();
    let mut request = tonic::Request::new(HelloRequest { name: "Ada".into() });
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{TRACE_ID}-00f067aa0ba902b7-01")
            .parse()
            .unwrap(),
    );
    client.say_hello(request).await.unwrap();
    server
}

/// Splits a response into its `Content-Type` and body.
fn content_type_and_body(response: &str) -> (String, &str) {
    let (head, body) = response.split_once("\r\n\r\n").expect("an HTTP response");
    let content_type = head
        .lines()
        .find_map(|line| {
            let (name, value) = line.split_once(':')?;
            name.eq_ignore_ascii_case("content-type")
                .then(|| value.trim().to_owned())
        })
        .unwrap_or_default();
    (content_type, body)
}

/// Every sample as `name{label="value",...}`, labels sorted, for comparing formats.
fn series(parsed: &Value) -> BTreeSet<String> {
    parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|sample| {
            let labels: Vec<String> = sample["labels"]
                .as_object()
                .unwrap()
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            format!(
                "{}{{{}}}",
                sample["name"].as_str().unwrap(),
                labels.join(",")
            )
        })
        .collect()
}

#[tokio::test]
async fn each_accept_header_gets_its_format_and_the_reference_parsers_read_it() {
    let server = serve_one_traced_call().await;
    let cases: &[(&[&str], &str)] = &[
        (&[], TEXT),
        (&["*/*"], TEXT),
        (&["text/plain"], TEXT),
        (&["text/plain; version=0.0.4"], TEXT),
        (&["application/json"], TEXT),
        (
            &["application/openmetrics-text; version=1.0.0"],
            OPENMETRICS,
        ),
        (&["application/openmetrics-text"], OPENMETRICS),
        (&[PROMETHEUS_2], OPENMETRICS),
        (&[PROMETHEUS_3], OPENMETRICS),
        (
            &["text/plain;q=0.5, application/openmetrics-text;q=0.9"],
            OPENMETRICS,
        ),
        (&["application/openmetrics-text;q=0.2, text/plain"], TEXT),
        (&["application/openmetrics-text;q=0"], TEXT),
        // Two header fields count as one list.
        (&["text/html", "application/openmetrics-text"], OPENMETRICS),
    ];
    let mut text_series = None;
    let mut openmetrics_series = None;
    for (accept, expected) in cases {
        let response = scrape_accepting(server.admin, accept).await;
        let (content_type, body) = content_type_and_body(&response);
        assert_eq!(content_type, *expected, "Accept: {accept:?}");
        assert!(
            response
                .to_ascii_lowercase()
                .contains("\r\nvary: accept\r\n"),
            "no `Vary: Accept`:\n{response}"
        );
        let parsed = if *expected == TEXT {
            for (what, line) in [
                ("# EOF", "\n# EOF"),
                ("# UNIT", "\n# UNIT"),
                ("an exemplar", " # {"),
            ] {
                assert!(!body.contains(line), "{what} in text 0.0.4:\n{body}");
            }
            let lint = tools::promtool(&["check", "metrics"], body);
            assert!(
                lint.success,
                "promtool check metrics:\n{}\n---\n{body}",
                lint.output
            );
            let parsed = tools::parse_exposition("text", body)
                .unwrap_or_else(|e| panic!("Accept: {accept:?}: {e}\n---\n{body}"));
            text_series.get_or_insert_with(|| series(&parsed));
            parsed
        } else {
            let parsed = tools::parse_exposition("openmetrics", body)
                .unwrap_or_else(|e| panic!("Accept: {accept:?}: {e}\n---\n{body}"));
            let exemplars = parsed["exemplars"].as_array().unwrap();
            assert!(
                exemplars
                    .iter()
                    .any(|e| e["sample"] == "grpc_server_handling_seconds_bucket"
                        && e["labels"]["grpc_method"] == "SayHello"
                        && e["exemplar"]["trace_id"] == TRACE_ID),
                "no exemplar with the call's trace id: {exemplars:?}"
            );
            openmetrics_series.get_or_insert_with(|| series(&parsed));
            parsed
        };
        for (family, kind) in [
            ("grpc_server_started", "counter"),
            ("grpc_server_handled", "counter"),
            ("grpc_server_handling_seconds", "histogram"),
            ("keel_server_inflight_rpcs", "gauge"),
            ("process_cpu_seconds", "counter"),
        ] {
            assert_eq!(parsed["families"][family], kind, "{family} for {accept:?}");
        }
    }
    // The same series either way, so a scraper that changes format keeps its series (a
    // bucket's `le` is written alike). Only the gauges sampled at scrape time differ in
    // value, and values are not compared.
    assert_eq!(text_series, openmetrics_series);
}

// ---------------------------------------------------------------------------------------
// A real Prometheus

/// A Prometheus server scraping one target every second, killed on drop.
struct Prometheus {
    child: Child,
    web: SocketAddr,
    _dir: TempDir,
}

impl Prometheus {
    fn start(target: SocketAddr) -> Self {
        let dir = TempDir::new("prometheus");
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
                 - job_name: keel\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        // Prometheus does not say which port it bound: take a free one, then hand it over.
        let web = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={web}"))
            .arg("--enable-feature=exemplar-storage")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("run prometheus (Debian's `prometheus` package; scripts/test.sh installs it)");
        Self {
            child,
            web,
            _dir: dir,
        }
    }

    /// GETs an API path (query already encoded); `None` while Prometheus does not answer.
    async fn get(&self, path: &str) -> Option<Value> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = tokio::net::TcpStream::connect(self.web).await.ok()?;
        // HTTP/1.0: the body ends with the connection, never chunked.
        let request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.web);
        stream.write_all(request.as_bytes()).await.ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).await.ok()?;
        let (_, body) = response.split_once("\r\n\r\n")?;
        serde_json::from_str(body).ok()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter's value.
fn encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

#[tokio::test]
async fn prometheus_scrapes_openmetrics_and_stores_the_exemplar() {
    let server = serve_one_traced_call().await;
    let prometheus = Prometheus::start(server.admin);
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let exemplars = format!(
        "/api/v1/query_exemplars?query={}&start={}&end={}",
        encode("grpc_server_handling_seconds_bucket{grpc_method=\"SayHello\"}"),
        now - 600,
        now + 600
    );
    // Prometheus starts, scrapes within its 1 s interval, and stores what it read.
    let deadline = Instant::now() + Duration::from_secs(30);
    let found = loop {
        let answer = prometheus.get(&exemplars).await;
        let found = answer.as_ref().is_some_and(|answer| {
            answer["data"].as_array().is_some_and(|series| {
                series.iter().any(|s| {
                    s["exemplars"]
                        .as_array()
                        .is_some_and(|e| e.iter().any(|e| e["labels"]["trace_id"] == TRACE_ID))
                })
            })
        });
        if found || Instant::now() >= deadline {
            break found;
        }
        // sleep: poll interval of a bounded poll on the condition
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let targets = prometheus.get("/api/v1/targets").await;
    assert!(
        found,
        "Prometheus stored no exemplar with the call's trace id within 30 s; targets: {targets:?}"
    );
    let target = &targets.expect("Prometheus answers")["data"]["activeTargets"][0];
    assert_eq!(target["health"], "up", "{target}");

    let handled = prometheus
        .get(&format!(
            "/api/v1/query?query={}",
            encode("grpc_server_handled_total{grpc_method=\"SayHello\",grpc_code=\"OK\"}")
        ))
        .await
        .expect("Prometheus answers");
    assert_eq!(
        handled["data"]["result"][0]["value"][1], "1",
        "the SayHello Prometheus scraped: {handled}"
    );
}
