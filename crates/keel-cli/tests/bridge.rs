//! `keel bridge` end to end: the real binary between the machine's Mosquitto and the real
//! `payments` binary, fed by the `payments-devices` simulator, whose ledger check is the
//! verdict: every acknowledged request has exactly one payment, money is conserved, and every
//! outcome came back on the response topic.
//!
//! Each test uses its own topics, MQTT client id, shared-subscription group and log file, so
//! the tests share the broker without seeing each other's messages.

mod common;

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::payments::{Payments, TempDir, devices_binary};

/// One test's names: topics, client id and group, unique to the test run.
struct Scope {
    id: String,
    dir: TempDir,
}

impl Scope {
    fn new(name: &str) -> Self {
        Self {
            id: format!("{name}-{}-{:x}", std::process::id(), rand::random::<u32>()),
            dir: TempDir::new("bridge"),
        }
    }

    fn requests(&self) -> String {
        format!("t/{}/payment/request", self.id)
    }

    fn responses(&self) -> String {
        format!("t/{}/payment/response", self.id)
    }

    /// The bridge's configuration: the payments route on this scope's topics, the embedded
    /// log in this scope's directory.
    fn config(&self, target: &str) -> PathBuf {
        self.config_with(target, "")
    }

    /// The same on JetStream (at 127.0.0.1:4222), with this scope's streams and subjects.
    fn jetstream_config(&self, target: &str) -> PathBuf {
        let name = self.id.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        self.config_with(
            target,
            &format!(
                "[log]\nbackend = \"jetstream\"\n\n[log.jetstream]\nstream = \"KB_{name}\"\n\
                 dead_letter_stream = \"KB_{name}_DEAD\"\nsubject_prefix = \"kb.{name}\"\n"
            ),
        )
    }

    /// The same on Kafka (tansu at 127.0.0.1:9092), with this scope's topics and group.
    fn kafka_config(&self, target: &str) -> PathBuf {
        let name = format!("kb-{}", self.id);
        self.config_with(
            target,
            &format!(
                "[log]\nbackend = \"kafka\"\n\n[log.kafka]\ntopic = \"{name}\"\n\
                 dead_letter_topic = \"{name}-dead\"\nconsumer = \"{name}\"\n"
            ),
        )
    }

    fn config_with(&self, target: &str, log: &str) -> PathBuf {
        let text = format!(
            r#"target = "{target}"
{log}

[mqtt]
url = "mqtt://127.0.0.1:1883"
client_id = "bridge-{id}"
shared_group = "g-{id}"

[log.embedded]
path = "{log_path}"

[[routes]]
name = "payments"
topic = "{requests}/+"
method = "payments.v1.PaymentService/Process"
key = "device+field:idempotency_key"
response_topic = "{responses}/{{device}}"
"#,
            id = self.id,
            log_path = self.dir.path().join("log.db").display(),
            requests = self.requests(),
            responses = self.responses(),
        );
        let path = self.dir.path().join("bridge.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts the simulator against this scope's topics.
    fn simulate(&self, payments: &Payments, extra: &[&str]) -> Child {
        Command::new(devices_binary())
            .args([
                "--mqtt",
                "mqtt://127.0.0.1:1883",
                "--target",
                &payments.url(),
            ])
            .args(["--topic-prefix", &self.requests()])
            .args(["--response-prefix", &self.responses()])
            .args(["--run-id", &self.id, "--json"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn payments-devices")
    }
}

/// A running `keel bridge`, killed on drop.
struct Bridge {
    child: Child,
    admin: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Bridge {
    fn start(config: &Path, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["bridge", "--admin-listen", "127.0.0.1:0", "--config"])
            .arg(config)
            .env_remove("KEEL_BRIDGE_CONFIG")
            .env_remove("KEEL_BRIDGE_FAULT")
            .env("KEEL_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel bridge");
        let logs = Arc::new(Mutex::new(String::new()));
        let sink = logs.clone();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let admin = loop {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!(
                    "keel bridge exited before listening:\n{}",
                    logs.lock().unwrap()
                );
            }
            if let Some(addr) = line.trim().strip_prefix("admin listening on ") {
                break addr.parse().unwrap();
            }
        };
        std::thread::spawn(move || for _ in stdout.lines() {});
        Self { child, admin, logs }
    }

    /// Waits up to `limit` for the process to end.
    fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let start = Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            // sleep: poll interval of a bounded poll on the process's exit
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits for the simulator and fails the test, with everything each process said, unless
/// its verdict is a pass.
fn expect_pass(simulator: Child, bridge: &Bridge) -> serde_json::Value {
    let Output {
        status,
        stdout,
        stderr,
    } = simulator.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&stdout);
    assert!(
        status.success(),
        "the simulator's verdict: {status}\nstdout: {stdout}\nstderr: {}\nbridge logs:\n{}",
        String::from_utf8_lossy(&stderr),
        bridge.logs()
    );
    let summary = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(summary).unwrap_or_else(|error| panic!("{error}: {summary}"))
}

async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, text) = keel_test_support::http_get(admin, "/metrics").await;
    keel_test_support::metric(&text, series)
}

#[tokio::test]
async fn a_thousand_device_requests_make_a_thousand_payments_with_every_outcome_published() {
    let payments = Payments::start();
    let scope = Scope::new("happy");
    a_thousand_requests(&payments, &scope, &scope.config(&payments.url())).await;
}

#[tokio::test]
async fn a_thousand_device_requests_through_jetstream_make_a_thousand_payments() {
    let payments = Payments::start();
    let scope = Scope::new("jetstream");
    a_thousand_requests(&payments, &scope, &scope.jetstream_config(&payments.url())).await;
}

#[tokio::test]
async fn a_thousand_device_requests_through_kafka_make_a_thousand_payments() {
    let payments = Payments::start();
    let scope = Scope::new("kafka");
    a_thousand_requests(&payments, &scope, &scope.kafka_config(&payments.url())).await;
}

async fn a_thousand_requests(payments: &Payments, scope: &Scope, config: &Path) {
    let bridge = Bridge::start(config, &[]);
    let simulator = scope.simulate(
        payments,
        &[
            "--devices",
            "20",
            "--requests",
            "1000",
            "--rate",
            "0",
            "--resend",
            "0.05",
            "--malformed",
            "3",
            "--wait",
            "60",
        ],
    );
    let summary = expect_pass(simulator, &bridge);
    assert_eq!(summary["published"], 1000, "{summary}");

    let dead =
        "keel_bridge_dead_lettered_total{route=\"payments\",outcome=\"UNPARSEABLE_PAYLOAD\"}";
    assert_eq!(
        metric(bridge.admin, dead).await,
        Some(3.0),
        "{}",
        bridge.logs()
    );
    let calls = "keel_bridge_calls_total{route=\"payments\",outcome=\"OK\"}";
    assert!(
        metric(bridge.admin, calls).await.unwrap_or(0.0) >= 1000.0,
        "every request was called"
    );
}

/// Kills the bridge with a fault at `point` while devices publish, restarts it, and lets the
/// simulator judge: nothing lost, nothing doubled.
async fn survives_a_crash(point: &str) {
    let payments = Payments::start();
    let scope = Scope::new(point);
    let config = scope.config(&payments.url());
    let fault = format!("{point}:200");
    let mut crashing = Bridge::start(&config, &[("KEEL_BRIDGE_FAULT", &fault)]);
    let simulator = scope.simulate(
        &payments,
        &[
            "--devices",
            "10",
            "--requests",
            "600",
            "--rate",
            "0",
            "--resend",
            "0.05",
            "--wait",
            "90",
        ],
    );
    let status = crashing
        .wait_exit(Duration::from_secs(60))
        .unwrap_or_else(|| panic!("the fault {fault} was never reached:\n{}", crashing.logs()));
    assert!(!status.success(), "the bridge aborted at {fault}: {status}");
    assert!(
        crashing.logs().contains("reached; aborting"),
        "{}",
        crashing.logs()
    );
    let restarted = Bridge::start(&config, &[]);
    expect_pass(simulator, &restarted);
}

#[tokio::test]
async fn a_crash_after_receipt_before_the_log_ack_loses_nothing() {
    survives_a_crash("after_receipt").await;
}

#[tokio::test]
async fn a_crash_after_the_log_ack_before_the_puback_doubles_nothing() {
    survives_a_crash("after_log_ack").await;
}

#[tokio::test]
async fn a_crash_after_grpc_ok_before_the_record_is_done_doubles_nothing() {
    survives_a_crash("after_grpc_ok").await;
}
