//! `keel bridge` through the outages of issue 14, end to end: the real bridge, the real
//! `payments` binary and the `payments-devices` simulator publishing at a steady rate while
//! the test takes one dependency away and brings it back. The simulator's ledger check is the
//! verdict: every request the broker acknowledged to a device has exactly one payment, money
//! is conserved, and every outcome came back.
//!
//! - **payments down for 30 s** (killed, then started again on the same address and
//!   database): the bridge retries, `/readyz` reports the target down and then ready, and the
//!   backlog drains.
//! - **the log broker restarted under load**: a private NATS server, killed with SIGKILL and
//!   started again on the same store.
//! - **Mosquitto restarted**: a private Mosquitto with persistence; the bridge is first cut
//!   off from it while devices go on publishing (a proxy in between), then the broker itself
//!   is restarted. The bridge resumes its persistent session each time and receives what the
//!   broker kept for it; the devices resume theirs.
//!
//! Servers a test restarts listen on a [`stable_port`], which nothing else takes meanwhile.
//! Waits are bounded polls on what the test waits for; the only pauses are the outages
//! themselves.

mod common;

use std::future::Future;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::bridge::{Bridge, Scope, expect_pass, metric};
use common::payments::{Payments, TempDir, stable_port};
use serde_json::Value;
use tokio::sync::watch;

const OK_CALLS: &str = "keel_bridge_calls_total{route=\"payments\",outcome=\"OK\"}";
const UNAVAILABLE_CALLS: &str =
    "keel_bridge_calls_total{route=\"payments\",outcome=\"UNAVAILABLE\"}";
const UNAVAILABLE_RETRIES: &str =
    "keel_bridge_retries_total{route=\"payments\",outcome=\"UNAVAILABLE\"}";
const MQTT_DISCONNECTS: &str = "keel_bridge_mqtt_disconnects_total";

/// How long payments stays down.
const PAYMENTS_OUTAGE: Duration = Duration::from_secs(30);

/// How long devices publish to Mosquitto while the bridge is cut off from it.
const BRIDGE_AWAY: Duration = Duration::from_secs(3);

/// Polls `check` every 100 ms until it holds; false if it did not within `within`.
async fn until<F: Future<Output = bool>>(within: Duration, mut check: impl FnMut() -> F) -> bool {
    let deadline = Instant::now() + within;
    loop {
        if check().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        // sleep: the interval of a bounded poll on what the test waits for
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The bridge's `/readyz`: its status code and body.
async fn readyz(bridge: &Bridge) -> (u16, Value) {
    let (code, body) = keel_test_support::http_get(bridge.admin, "/readyz").await;
    (code, serde_json::from_str(&body).unwrap_or(Value::Null))
}

/// Whether `/readyz` answers 503 with check `check` failing.
async fn reports_down(bridge: &Bridge, check: &str) -> bool {
    let (code, body) = readyz(bridge).await;
    code == 503 && body["checks"][check]["status"] == "failing"
}

/// Whether `/readyz` answers 200: every check passes.
async fn reports_ready(bridge: &Bridge) -> bool {
    readyz(bridge).await.0 == 200
}

async fn count(bridge: &Bridge, series: &str) -> f64 {
    metric(bridge.admin, series).await.unwrap_or(0.0)
}

/// Waits until the bridge has delivered `calls` requests OK: the load is under way.
async fn delivering(bridge: &Bridge, calls: f64) {
    assert!(
        until(Duration::from_secs(60), || async {
            count(bridge, OK_CALLS).await >= calls
        })
        .await,
        "the bridge never delivered {calls} requests:\n{}",
        bridge.logs()
    );
}

/// A log broker that accepts the TCP connection and never says a word: while the bridge
/// waits for its log, the admin port answers (liveness) but `/readyz` says not ready, and
/// why, from its very first answer.
#[tokio::test]
async fn a_bridge_whose_log_is_not_open_yet_is_not_ready_from_its_first_answer() {
    let payments = Payments::start();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("nats://{}", silent.local_addr().unwrap());
    let scope = Scope::new("log-opening");
    let bridge = Bridge::start(
        &scope.jetstream_config_at(&payments.url(), &url),
        &[("KEEL_BRIDGE_LOG_JETSTREAM_REQUEST_TIMEOUT", "60s")],
    );
    let (code, body) = readyz(&bridge).await;
    assert_eq!(code, 503, "{body}");
    assert_eq!(body["status"], "not_serving", "{body}");
    assert_eq!(
        body["checks"]["log"]["error"], "the log is not open yet",
        "{body}"
    );
    let (live, _) = keel_test_support::http_get(bridge.admin, "/healthz").await;
    assert_eq!(live, 200);
}

#[tokio::test]
async fn payments_down_for_30_s_under_load_loses_nothing_and_the_backlog_drains() {
    let mut payments = Payments::start_on(stable_port());
    let scope = Scope::new("payments-down");
    let bridge = Bridge::start(&scope.config(&payments.url()), &[]);
    // 40 s of publishing: before, during and after the outage.
    let simulator = scope.simulate(
        &payments,
        &[
            "--devices",
            "10",
            "--requests",
            "1000",
            "--rate",
            "25",
            "--resend",
            "0.05",
            "--wait",
            "90",
        ],
    );
    delivering(&bridge, 100.0).await;
    payments.kill();
    let down = Instant::now();
    assert!(
        until(Duration::from_secs(20), || reports_down(&bridge, "target")).await,
        "/readyz never reported the target down: {:?}",
        readyz(&bridge).await
    );
    assert!(
        until(Duration::from_secs(20), || async {
            count(&bridge, UNAVAILABLE_RETRIES).await > 0.0
        })
        .await,
        "no UNAVAILABLE call was retried while payments was down:\n{}",
        bridge.logs()
    );
    // sleep: the outage under test: payments stays down this long while devices publish
    tokio::time::sleep(PAYMENTS_OUTAGE.saturating_sub(down.elapsed())).await;
    // Same address, same database: what it committed before the kill is still there.
    payments.start_again();
    assert!(
        until(Duration::from_secs(60), || reports_ready(&bridge)).await,
        "/readyz never reported ready again: {:?}",
        readyz(&bridge).await
    );

    let summary = expect_pass(simulator, &bridge);
    assert_eq!(summary["published"], 1000, "{summary}");
    assert!(count(&bridge, UNAVAILABLE_CALLS).await > 0.0);
    assert!(count(&bridge, OK_CALLS).await >= 1000.0, "{summary}");
}

#[tokio::test]
async fn the_jetstream_server_killed_and_restarted_under_load_loses_nothing() {
    let payments = Payments::start();
    let mut nats = NatsServer::start();
    let scope = Scope::new("nats-restart");
    let config = scope.jetstream_config_at(&payments.url(), &nats.url());
    let bridge = Bridge::start(&config, &[]);
    let simulator = scope.simulate(
        &payments,
        &[
            "--devices",
            "10",
            "--requests",
            "1000",
            "--rate",
            "50",
            "--resend",
            "0.05",
            "--wait",
            "90",
        ],
    );
    delivering(&bridge, 150.0).await;

    nats.kill();
    assert!(
        until(Duration::from_secs(20), || reports_down(&bridge, "log")).await,
        "/readyz never reported the log down: {:?}",
        readyz(&bridge).await
    );
    nats.start_again();
    assert!(
        until(Duration::from_secs(40), || reports_ready(&bridge)).await,
        "/readyz never reported ready again: {:?}\n{}",
        readyz(&bridge).await,
        bridge.logs()
    );

    let summary = expect_pass(simulator, &bridge);
    assert_eq!(summary["published"], 1000, "{summary}");
}

#[tokio::test]
async fn mosquitto_restarted_under_load_the_persistent_sessions_resume() {
    let payments = Payments::start();
    let mut mosquitto = Mosquitto::start();
    let proxy = Proxy::start(mosquitto.addr);
    // A plain subscription: Mosquitto 2.0 writes a session's shared subscriptions to its
    // persistence file but does not restore them, so after its restart, requests published
    // before the bridge subscribes again find no subscriber and are dropped (the devices are
    // told: PUBACK reason 0x10, no matching subscribers). A plain one is restored with the
    // session, and the broker keeps those requests for the bridge.
    let scope = Scope::new("mosquitto-restart")
        .with_broker(
            &format!("mqtt://{}", mosquitto.addr),
            &format!("mqtt://{}", proxy.addr),
        )
        .plain_subscription();
    let bridge = Bridge::start(&scope.config(&payments.url()), &[]);
    // 30 s of publishing.
    let simulator = scope.simulate(
        &payments,
        &[
            "--devices",
            "10",
            "--requests",
            "1200",
            "--rate",
            "40",
            "--resend",
            "0.05",
            "--wait",
            "90",
        ],
    );
    delivering(&bridge, 100.0).await;

    // The bridge away from a broker that stays up: what devices publish meanwhile waits in
    // the bridge's session.
    proxy.cut(true);
    assert!(
        until(Duration::from_secs(10), || reports_down(&bridge, "mqtt")).await,
        "/readyz never reported the broker down: {:?}",
        readyz(&bridge).await
    );
    let received = "keel_bridge_received_total{route=\"payments\"}";
    let before = count(&bridge, received).await;
    // sleep: the outage under test: devices publish while the bridge is away
    tokio::time::sleep(BRIDGE_AWAY).await;
    assert_eq!(
        count(&bridge, received).await,
        before,
        "the bridge received messages while cut off"
    );
    proxy.cut(false);
    assert!(
        until(Duration::from_secs(20), || async {
            reports_ready(&bridge).await && count(&bridge, received).await > before
        })
        .await,
        "the bridge did not come back and receive what was kept for it: {:?}\n{}",
        readyz(&bridge).await,
        bridge.logs()
    );

    // The broker itself restarted: it writes its sessions and the messages in flight on
    // SIGTERM and reads them back.
    mosquitto.stop();
    mosquitto.start_again();
    assert!(
        until(Duration::from_secs(20), || async {
            count(&bridge, MQTT_DISCONNECTS).await >= 2.0 && reports_ready(&bridge).await
        })
        .await,
        "the bridge did not reconnect after the broker restarted: {:?}\n{}",
        readyz(&bridge).await,
        bridge.logs()
    );

    let summary = expect_pass(simulator, &bridge);
    assert_eq!(summary["published"], 1200, "{summary}");
    assert!(
        summary["disconnects"].as_u64() >= Some(10),
        "every device lost its connection once: {summary}"
    );
    let resumed = bridge.logs().matches("session_present=true").count();
    assert!(
        resumed >= 2,
        "the bridge resumed its session after each outage ({resumed} times):\n{}",
        bridge.logs()
    );
}

/// The path of an installed server program: on `PATH`, or in an `sbin` directory, where
/// distributions put Mosquitto and NATS.
fn program(name: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/usr/local/sbin".into()])
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| panic!("{name} is not installed (scripts/test.sh installs it)"))
}

/// Waits until `child` accepts connections on `addr`; panics if it exits or takes 20 s.
fn wait_listening(child: &mut Child, addr: SocketAddr, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while TcpStream::connect(addr).is_err() {
        if let Some(status) = child.try_wait().unwrap() {
            panic!("{what} exited before listening on {addr}: {status}");
        }
        assert!(Instant::now() < deadline, "{what} never listened on {addr}");
        // sleep: the interval of a bounded poll on the server's port
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private NATS server with JetStream, its store in a temporary directory (removed with
/// the test's streams in it), on a stable port; killed on drop.
struct NatsServer {
    dir: TempDir,
    addr: SocketAddr,
    child: Child,
}

impl NatsServer {
    fn start() -> Self {
        let dir = TempDir::new("nats");
        let addr = stable_port();
        let child = Self::spawn(&dir, addr);
        Self { dir, addr, child }
    }

    fn spawn(dir: &TempDir, addr: SocketAddr) -> Child {
        let mut child = Command::new(program("nats-server"))
            .args(["-js", "-sd"])
            .arg(dir.path().join("store"))
            .args(["-a", "127.0.0.1", "-p", &addr.port().to_string(), "-l"])
            .arg(dir.path().join("nats.log"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        wait_listening(&mut child, addr, "nats-server");
        child
    }

    fn url(&self) -> String {
        format!("nats://{}", self.addr)
    }

    /// SIGKILL: the hardest stop. JetStream's file store writes each message to its file
    /// before acknowledging it (it only delays the fsync, `sync_interval`, which matters to a
    /// machine that loses power, not to a process that dies), so whatever the bridge was told
    /// is stored must survive this. (The installed nats-server, 2.9, has no
    /// `sync_interval: always` to rule out the fsync question as well.)
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same port and store.
    fn start_again(&mut self) {
        self.child = Self::spawn(&self.dir, self.addr);
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A private Mosquitto keeping sessions in a temporary directory (`persistence true`), on a
/// stable port; killed on drop.
struct Mosquitto {
    dir: TempDir,
    addr: SocketAddr,
    child: Child,
}

impl Mosquitto {
    fn start() -> Self {
        let dir = TempDir::new("mosquitto");
        let addr = stable_port();
        let config = format!(
            "listener {port} 127.0.0.1\n\
             allow_anonymous true\n\
             persistence true\n\
             persistence_location {dir}/\n\
             log_dest file {dir}/mosquitto.log\n\
             # When started as root, stay root: the directory is root's.\n\
             user root\n",
            port = addr.port(),
            dir = dir.path().display(),
        );
        std::fs::write(dir.path().join("mosquitto.conf"), config).unwrap();
        let child = Self::spawn(&dir, addr);
        Self { dir, addr, child }
    }

    fn spawn(dir: &TempDir, addr: SocketAddr) -> Child {
        let mut child = Command::new(program("mosquitto"))
            .arg("-c")
            .arg(dir.path().join("mosquitto.conf"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn mosquitto");
        wait_listening(&mut child, addr, "mosquitto");
        child
    }

    /// SIGTERM, and waits for the exit: Mosquitto closes every connection and writes its
    /// sessions, with the messages queued and in flight, to its persistence file. (It keeps
    /// them in memory otherwise and writes them only every `autosave_interval`, so a SIGKILL
    /// would lose messages it had acknowledged: no client could make up for that.)
    fn stop(&mut self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        let deadline = Instant::now() + Duration::from_secs(20);
        while self.child.try_wait().unwrap().is_none() {
            assert!(
                Instant::now() < deadline,
                "mosquitto did not stop on SIGTERM"
            );
            // sleep: the interval of a bounded poll on the process's exit
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(
            self.dir.path().join("mosquitto.db").exists(),
            "mosquitto wrote no persistence file"
        );
    }

    /// Starts the broker again on the same port and persistence file.
    fn start_again(&mut self) {
        self.child = Self::spawn(&self.dir, self.addr);
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A TCP proxy to `target` on its own thread and runtime (the test blocks its own while it
/// waits for the simulator), which the test cuts: every connection closed, and new ones
/// closed as soon as they are accepted, as if the network between were gone.
struct Proxy {
    addr: SocketAddr,
    cut: watch::Sender<bool>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (cut, watching) = watch::channel(false);
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        std::thread::spawn(move || runtime.block_on(forward(listener, target, watching)));
        Self { addr, cut }
    }

    /// Cuts the proxy (`true`), or lets connections through again (`false`).
    fn cut(&self, cut: bool) {
        self.cut.send_replace(cut);
    }
}

/// The proxy's accept loop, until its [`Proxy`] is dropped.
async fn forward(listener: std::net::TcpListener, target: SocketAddr, cut: watch::Receiver<bool>) {
    let listener = tokio::net::TcpListener::from_std(listener).unwrap();
    let mut dropped = cut.clone();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            changed = dropped.changed() => match changed {
                Ok(()) => continue,
                Err(_) => return,
            },
        };
        let Ok((mut client, _)) = accepted else {
            continue;
        };
        if *cut.borrow() {
            continue;
        }
        let mut cut = cut.clone();
        tokio::spawn(async move {
            let Ok(mut server) = tokio::net::TcpStream::connect(target).await else {
                return;
            };
            tokio::select! {
                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                _ = cut.wait_for(|cut| *cut) => {}
            }
        });
    }
}
