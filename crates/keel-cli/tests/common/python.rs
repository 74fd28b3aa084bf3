//! Runs the independent Python grpcio peer, `tests/python/keel_peer.py`, from Rust tests.
//!
//! Include it with `#[path = "common/python.rs"] mod python;` in a test file.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the helper"
)]

use std::collections::BTreeMap;
use std::io::Read;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The workspace root (`CARGO_MANIFEST_DIR/../..`).
pub fn workspace_root() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    root.canonicalize().unwrap_or(root)
}

/// The Python that has `tests/python/requirements.txt` installed: `$KEEL_TEST_PYTHON` if set,
/// else `<workspace>/.venv/bin/python`. Panics, saying how to create it, when neither exists.
pub fn python() -> PathBuf {
    if let Some(python) = std::env::var_os("KEEL_TEST_PYTHON").filter(|p| !p.is_empty()) {
        return PathBuf::from(python);
    }
    let venv = workspace_root().join(".venv/bin/python");
    if venv.exists() {
        return venv;
    }
    panic!(
        "no Python for the grpcio peer: KEEL_TEST_PYTHON is unset and {} does not exist; \
         run scripts/test.sh (it creates .venv with tests/python/requirements.txt)",
        venv.display()
    );
}

/// The peer script, `tests/python/keel_peer.py`.
pub fn peer_script() -> PathBuf {
    workspace_root().join("tests/python/keel_peer.py")
}

/// What a run of the peer left: its exit status (`None` if it was killed at the time limit)
/// and everything it printed.
#[derive(Debug)]
pub struct PeerRun {
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl PeerRun {
    /// True when the peer exited by itself with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// Exit status, stdout and stderr, for assertion messages.
    pub fn report(&self) -> String {
        let status = match self.status {
            Some(status) => status.to_string(),
            None => "killed after its time limit".to_owned(),
        };
        format!(
            "peer status: {status}\n--- peer stdout ---\n{}\n--- peer stderr ---\n{}",
            self.stdout, self.stderr
        )
    }
}

/// Runs `<python> tests/python/keel_peer.py <args>`, killing it after `limit`.
pub fn run_peer(args: &[&str], limit: Duration) -> PeerRun {
    let mut child = Command::new(python())
        .arg(peer_script())
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "spawn {} {}: {e}",
                python().display(),
                peer_script().display()
            )
        });
    let stdout = read_all(child.stdout.take().unwrap());
    let stderr = read_all(child.stderr.take().unwrap());
    let start = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if start.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        // sleep: poll interval of a bounded poll on the condition
        std::thread::sleep(Duration::from_millis(50));
    };
    PeerRun {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_all(mut pipe: impl Read + Send + 'static) -> JoinHandle<String> {
    std::thread::spawn(move || {
        let mut bytes = Vec::new();
        let _ = pipe.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}

/// The outcome of `keel_peer.py load`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadResult {
    /// RPCs that succeeded with the expected reply.
    pub ok: u64,
    /// RPCs that failed (the sum of `errors`).
    pub failed: u64,
    /// Failures by kind: `"StatusCode.UNAVAILABLE"` and so on, or `"BadReply"`.
    pub errors: BTreeMap<String, u64>,
}

/// Runs `keel_peer.py load`: `concurrency` concurrent tasks sending unary
/// `helloworld.Greeter/SayHello` calls on one grpcio channel to `addr` for `duration`.
/// Panics (with the peer's output) if the peer itself fails.
pub fn python_load(addr: SocketAddr, duration: Duration, concurrency: usize) -> LoadResult {
    let host = addr.ip().to_string();
    let port = addr.port().to_string();
    let seconds = duration.as_secs_f64().to_string();
    let concurrency = concurrency.to_string();
    let args = [
        "load",
        "--host",
        &host,
        "--port",
        &port,
        "--seconds",
        &seconds,
        "--concurrency",
        &concurrency,
    ];
    let run = run_peer(&args, duration + Duration::from_secs(60));
    assert!(run.success(), "keel_peer.py load failed\n{}", run.report());
    run.stdout
        .lines()
        .rev()
        .find_map(parse_load_line)
        .unwrap_or_else(|| panic!("no result line from keel_peer.py load\n{}", run.report()))
}

/// Parses the one JSON line `load` prints: `{"ok": N, "failed": M, "errors": {"K": n, ...}}`.
/// The format is fixed by keel_peer.py (keys never contain `"`, `,` or `:`).
pub fn parse_load_line(line: &str) -> Option<LoadResult> {
    let body = line.trim().strip_prefix('{')?.strip_suffix('}')?;
    let (head, errors) = body.split_once("\"errors\":")?;
    let errors = errors.trim().strip_prefix('{')?.strip_suffix('}')?;
    let head: BTreeMap<String, u64> = parse_pairs(head)?;
    Some(LoadResult {
        ok: *head.get("ok")?,
        failed: *head.get("failed")?,
        errors: parse_pairs(errors)?,
    })
}

fn parse_pairs(text: &str) -> Option<BTreeMap<String, u64>> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let (key, value) = pair.split_once(':')?;
            let key = key.trim().strip_prefix('"')?.strip_suffix('"')?;
            Some((key.to_owned(), value.trim().parse().ok()?))
        })
        .collect()
}
