//! The real `payments` binary for keel-cli's tests: built on demand into this test run's
//! target directory, started on ephemeral ports (or a [`stable_port`], to be killed and
//! started again on it) with a SQLite database in a temporary directory, killed on drop.

use std::io::{BufRead as _, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};

/// A `payments` binary on an ephemeral port with a SQLite database in a temporary directory.
pub struct Payments {
    pub child: Child,
    pub grpc: SocketAddr,
    pub admin: SocketAddr,
    extra: Vec<String>,
    /// Shared with the process started again, which keeps the database.
    store: Arc<Store>,
}

impl Payments {
    /// Starts payments and waits until it listens.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// [`Payments::start`] with extra flags, e.g. `["--set", "server.connection.body_timeout=2s"]`.
    pub fn start_with(extra: &[&str]) -> Self {
        Self::start_with_env(extra, &[])
    }

    /// [`Payments::start_with`] with extra environment variables, e.g.
    /// `[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")]`.
    pub fn start_with_env(extra: &[&str], env: &[(&str, &str)]) -> Self {
        Self::launch("127.0.0.1:0", Arc::new(Store::sqlite()), extra, env)
    }

    /// [`Payments::start`] on a fresh PostgreSQL database at 127.0.0.1:5432, dropped when
    /// payments is.
    pub fn start_on_postgres() -> Self {
        Self::launch("127.0.0.1:0", Arc::new(Store::postgres()), &[], &[])
    }

    /// [`Payments::start`] with the gRPC listener on `listen`, so that it can be started
    /// again on the same address ([`Payments::start_again`]); see [`stable_port`].
    pub fn start_on(listen: SocketAddr) -> Self {
        Self::launch(&listen.to_string(), Arc::new(Store::sqlite()), &[], &[])
    }

    /// Kills the process (SIGKILL: nothing is finished or flushed) and waits for it to end.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts payments again after [`Payments::kill`]: on the same gRPC address, with the same
    /// database and flags. The admin listener gets a new port.
    pub fn start_again(&mut self) {
        let extra: Vec<&str> = self.extra.iter().map(String::as_str).collect();
        // The old process (ended already) is dropped; the store lives on in the new one.
        *self = Self::launch(&self.grpc.to_string(), self.store.clone(), &extra, &[]);
    }

    fn launch(listen: &str, store: Arc<Store>, extra: &[&str], env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(payments_binary())
            .args(["--listen", listen, "--admin-listen", "127.0.0.1:0"])
            .args(["--database-url", &store.url])
            .args(extra)
            .env_remove("PAYMENTS_CONFIG")
            .env("PAYMENTS_LOG", "warn")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn payments");
        let logs = Arc::new(Mutex::new(String::new()));
        let stderr = child.stderr.take().unwrap();
        let sink = logs.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (mut grpc, mut admin) = (None, None);
        while grpc.is_none() || admin.is_none() {
            let mut line = String::new();
            if stdout.read_line(&mut line).unwrap() == 0 {
                panic!(
                    "payments exited before listening:\n{}",
                    logs.lock().unwrap()
                );
            }
            if let Some(addr) = line.trim().strip_prefix("grpc listening on ") {
                grpc = Some(addr.parse().unwrap());
            } else if let Some(addr) = line.trim().strip_prefix("admin listening on ") {
                admin = Some(addr.parse().unwrap());
            }
        }
        std::thread::spawn(move || for _ in stdout.lines() {});
        Self {
            child,
            grpc: grpc.unwrap(),
            admin: admin.unwrap(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
            store,
        }
    }

    /// `http://ADDR` of its gRPC listener.
    pub fn url(&self) -> String {
        format!("http://{}", self.grpc)
    }
}

impl Drop for Payments {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free loopback address for a server that a test stops and starts again on the same
/// port. The port lies below Linux's ephemeral range (32768 and up), where the kernel never
/// picks a port for an outgoing connection or a `:0` bind: the many connections of tests
/// running alongside cannot take it while the server is down.
pub fn stable_port() -> SocketAddr {
    for _ in 0..1000 {
        let port = 20_000 + rand::random::<u16>() % 12_000;
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        if std::net::TcpListener::bind(addr).is_ok() {
            return addr;
        }
    }
    panic!("no free port between 20000 and 32000");
}

/// The `payments` binary, built once per test run into this test's target directory
/// (Cargo builds only the binaries of the package under test for its integration tests).
pub fn payments_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| build_payments_bin("payments"))
        .clone()
}

/// The `payments-devices` simulator, built like [`payments_binary`].
pub fn devices_binary() -> PathBuf {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY
        .get_or_init(|| build_payments_bin("payments-devices"))
        .clone()
}

fn build_payments_bin(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/<profile>/deps/<test>-<hash>
    let profile_dir = exe.parent().and_then(Path::parent).unwrap();
    let target_dir = profile_dir.parent().unwrap();
    let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
        Some("debug") | None => "dev",
        Some(other) => other,
    };
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../Cargo.toml");
    let status = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "payments", "--bin", name])
        .args(["--profile", profile])
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .status()
        .expect("run cargo build");
    assert!(
        status.success(),
        "cargo build -p payments --bin {name} failed"
    );
    profile_dir.join(name)
}

/// A fresh directory under the system temporary directory, removed on drop.
/// Where a payments process keeps its ledger: a SQLite file in a temporary directory, or a
/// PostgreSQL database of its own (dropped at the end).
struct Store {
    url: String,
    _dir: Option<TempDir>,
    postgres: Option<String>,
}

/// The PostgreSQL server the tests use (trust authentication).
const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

impl Store {
    fn sqlite() -> Self {
        let dir = TempDir::new("payments");
        Self {
            url: format!("sqlite://{}", dir.path().join("ledger.db").display()),
            _dir: Some(dir),
            postgres: None,
        }
    }

    fn postgres() -> Self {
        let name = format!(
            "keel_test_{}_{:x}",
            std::process::id(),
            rand::random::<u32>()
        );
        psql(&format!("CREATE DATABASE {name}"));
        Self {
            url: format!("{POSTGRES}/{name}"),
            _dir: None,
            postgres: Some(name),
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some(name) = &self.postgres {
            psql(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        }
    }
}

/// Runs one statement on the PostgreSQL server's `postgres` database with `psql`.
fn psql(statement: &str) {
    let output = Command::new("psql")
        .arg(format!("{POSTGRES}/postgres"))
        .args(["-v", "ON_ERROR_STOP=1", "-Atqc", statement])
        .output()
        .expect("run psql (PostgreSQL's client)");
    assert!(
        output.status.success(),
        "psql {statement:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(purpose: &str) -> Self {
        let dir = std::env::temp_dir().join(format!(
            "keel_test_{purpose}_{}_{}",
            std::process::id(),
            rand::random::<u64>()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
