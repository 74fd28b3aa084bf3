//! Shared fixture: runs the real `keel serve` binary on ephemeral loopback ports.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the fixture"
)]

pub mod bridge;
pub mod payments;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[allow(
    unused_imports,
    reason = "each test binary uses a different part of the fixture"
)]
pub use keel_test_support::metric;

/// A running `keel serve`, killed on drop. Its stderr (logs) is collected in `logs`, and
/// what it writes to stdout after announcing its addresses in `stdout`.
pub struct KeelServe {
    pub child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    pub logs: Arc<Mutex<String>>,
    pub stdout: Arc<Mutex<String>>,
}

impl KeelServe {
    /// Starts `keel serve --listen 127.0.0.1:0 --admin-listen 127.0.0.1:0 <extra>` and waits
    /// until it prints both addresses.
    pub fn start(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// [`KeelServe::start`] with extra environment variables (they override `KEEL_LOG`).
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::start_listening("127.0.0.1:0", extra, env)
    }

    /// [`KeelServe::start_with_env`] with the gRPC listener on `listen`.
    pub fn start_listening(listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
            .args(["serve", "--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .args(extra)
            .env_remove("KEEL_CONFIG")
            .env(
                "KEEL_LOG",
                std::env::var("KEEL_TEST_SERVER_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel serve");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                let mut logs = sink.lock().unwrap();
                logs.push_str(&line);
                logs.push('\n');
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut grpc, mut admin) = (None, None);
        let mut line = String::new();
        while grpc.is_none() || admin.is_none() {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!(
                    "keel serve exited before listening; logs:\n{}",
                    logs.lock().unwrap()
                );
            }
            if let Some(addr) = line.trim().strip_prefix("grpc listening on ") {
                grpc = Some(addr.parse().unwrap());
            } else if let Some(addr) = line.trim().strip_prefix("admin listening on ") {
                admin = Some(addr.parse().unwrap());
            }
        }
        // Keep draining stdout so the child never blocks on a full pipe.
        let later = Arc::new(Mutex::new(String::new()));
        let sink = later.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let mut later = sink.lock().unwrap();
                later.push_str(&line);
                later.push('\n');
            }
        });
        Self {
            child,
            grpc: grpc.unwrap(),
            admin: admin.unwrap(),
            logs,
            stdout: later,
        }
    }

    /// `http://127.0.0.1:PORT` of the gRPC listener.
    pub fn grpc_url(&self) -> String {
        format!("http://{}", self.grpc)
    }

    /// Sends SIGTERM (the orchestrator's stop signal).
    pub fn sigterm(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits up to `limit` for exit; `None` if still running.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<std::process::ExitStatus> {
        let start = std::time::Instant::now();
        while start.elapsed() < limit {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Some(status);
            }
            // sleep: poll interval of a bounded poll on the condition
            std::thread::sleep(Duration::from_millis(20));
        }
        None
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().clone()
    }

    /// Bytes written so far to stderr and, after the announcement, to stdout.
    pub fn output_bytes(&self) -> usize {
        self.logs.lock().unwrap().len() + self.stdout.lock().unwrap().len()
    }
}

impl Drop for KeelServe {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GETs `/metrics` from the admin listener over plain HTTP/1.1, with no `Accept` header
/// (so in the Prometheus text format 0.0.4); returns the whole response.
pub async fn scrape(admin: SocketAddr) -> String {
    scrape_accepting(admin, &[]).await
}

/// [`scrape`] with one `Accept` header field per item of `accept`.
pub async fn scrape_accepting(admin: SocketAddr, accept: &[&str]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(admin)
        .await
        .expect("connect admin");
    let mut request = format!("GET /metrics HTTP/1.1\r\nHost: {admin}\r\nConnection: close\r\n");
    for value in accept {
        request.push_str(&format!("Accept: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    response
}
