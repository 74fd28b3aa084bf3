//! What the `keel bridge` end-to-end tests share: a [`Scope`] of names (topics, client id,
//! group, log file) unique to one test, the real `keel bridge` binary ([`Bridge`]), the
//! simulator's verdict ([`expect_pass`]) and a look at the bridge's metrics ([`metric`]).

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::payments::{Payments, TempDir, devices_binary};

/// One test's names: topics, client id and group, unique to the test run; and the MQTT
/// broker it uses (the machine's Mosquitto unless [`Scope::with_broker`] says otherwise).
pub struct Scope {
    id: String,
    dir: TempDir,
    /// The broker as the devices reach it.
    mqtt: String,
    /// The broker as the bridge reaches it (through a proxy, say).
    bridge_mqtt: String,
    /// The bridge's shared-subscription group ("": a plain subscription).
    shared_group: String,
}

impl Scope {
    pub fn new(name: &str) -> Self {
        let id = format!("{name}-{}-{:x}", std::process::id(), rand::random::<u32>());
        Self {
            shared_group: format!("g-{id}"),
            id,
            dir: TempDir::new("bridge"),
            mqtt: "mqtt://127.0.0.1:1883".into(),
            bridge_mqtt: "mqtt://127.0.0.1:1883".into(),
        }
    }

    /// The same scope on another broker: `devices` is its URL for the simulator, `bridge`
    /// for the bridge.
    pub fn with_broker(mut self, devices: &str, bridge: &str) -> Self {
        self.mqtt = devices.to_owned();
        self.bridge_mqtt = bridge.to_owned();
        self
    }

    /// The same scope with the bridge subscribed plainly, not through a shared subscription.
    pub fn plain_subscription(mut self) -> Self {
        self.shared_group.clear();
        self
    }

    pub fn requests(&self) -> String {
        format!("t/{}/payment/request", self.id)
    }

    pub fn responses(&self) -> String {
        format!("t/{}/payment/response", self.id)
    }

    /// The bridge's configuration: the payments route on this scope's topics, the embedded
    /// log in this scope's directory.
    pub fn config(&self, target: &str) -> PathBuf {
        self.config_with(target, "")
    }

    /// The same on JetStream (at 127.0.0.1:4222), with this scope's streams and subjects.
    pub fn jetstream_config(&self, target: &str) -> PathBuf {
        self.jetstream_config_at(target, "nats://127.0.0.1:4222")
    }

    /// [`Scope::jetstream_config`] on the NATS server at `url`.
    pub fn jetstream_config_at(&self, target: &str, url: &str) -> PathBuf {
        let name = self.id.replace(|c: char| !c.is_ascii_alphanumeric(), "_");
        self.config_with(
            target,
            &format!(
                "[log]\nbackend = \"jetstream\"\n\n[log.jetstream]\nurl = \"{url}\"\n\
                 stream = \"KB_{name}\"\n\
                 dead_letter_stream = \"KB_{name}_DEAD\"\nsubject_prefix = \"kb.{name}\"\n"
            ),
        )
    }

    /// The same on Kafka (tansu at 127.0.0.1:9092), with this scope's topics and group.
    pub fn kafka_config(&self, target: &str) -> PathBuf {
        let name = format!("kb-{}", self.id);
        self.config_with(
            target,
            &format!(
                "[log]\nbackend = \"kafka\"\n\n[log.kafka]\ntopic = \"{name}\"\n\
                 dead_letter_topic = \"{name}-dead\"\nconsumer = \"{name}\"\n"
            ),
        )
    }

    pub fn config_with(&self, target: &str, log: &str) -> PathBuf {
        let text = format!(
            r#"target = "{target}"
{log}

[mqtt]
url = "{mqtt}"
client_id = "bridge-{id}"
shared_group = "{shared_group}"

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
            mqtt = self.bridge_mqtt,
            shared_group = self.shared_group,
            log_path = self.dir.path().join("log.db").display(),
            requests = self.requests(),
            responses = self.responses(),
        );
        let path = self.dir.path().join("bridge.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    /// Starts the simulator against this scope's topics.
    pub fn simulate(&self, payments: &Payments, extra: &[&str]) -> Child {
        Command::new(devices_binary())
            .args(["--mqtt", &self.mqtt, "--target", &payments.url()])
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
pub struct Bridge {
    child: Child,
    pub admin: SocketAddr,
    logs: Arc<Mutex<String>>,
}

impl Bridge {
    pub fn start(config: &Path, env: &[(&str, &str)]) -> Self {
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

    /// Asks the bridge to stop (SIGTERM), as an operator or Kubernetes would.
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to end.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
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

    pub fn logs(&self) -> String {
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
pub fn expect_pass(simulator: Child, bridge: &Bridge) -> serde_json::Value {
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

pub async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let (_, text) = keel_test_support::http_get(admin, "/metrics").await;
    keel_test_support::metric(&text, series)
}
