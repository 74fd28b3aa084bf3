//! Start-up configuration through the real binary: a bad value fails fast with a message
//! naming the key and where it came from, and `--print-config` round-trips.

use std::io::Read;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn keel(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .envs(env.iter().copied())
        .env_remove("KEEL_CONFIG")
        .output()
        .expect("run keel")
}

fn temp_file(name: &str, text: &str) -> std::path::PathBuf {
    let path = std::env::temp_dir().join(format!("keel-cli-{}-{name}", std::process::id()));
    std::fs::write(&path, text).unwrap();
    path
}

const EPHEMERAL: [&str; 4] = ["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];

#[test]
fn bad_value_in_config_file_fails_start_naming_key_and_file() {
    let path = temp_file("bad.toml", "[http2]\nmax_concurrent_streams = -5\n");
    let file = path.to_str().unwrap();
    let out = keel(
        &[&["serve", "--config", file][..], &EPHEMERAL].concat(),
        &[],
    );
    std::fs::remove_file(&path).unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("`http2.max_concurrent_streams`"),
        "{stderr}"
    );
    assert!(stderr.contains(file), "{stderr}");
    assert!(
        out.stdout.is_empty(),
        "nothing may be served: {}",
        String::from_utf8_lossy(&out.stdout)
    );
}

#[test]
fn bad_environment_value_names_the_variable() {
    let out = keel(
        &[&["serve"][..], &EPHEMERAL].concat(),
        &[("KEEL_SHUTDOWN_TIMEOUT", "soon")],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("`shutdown.timeout`"), "{stderr}");
    assert!(stderr.contains("KEEL_SHUTDOWN_TIMEOUT"), "{stderr}");
}

#[test]
fn malformed_set_flag_explains_the_form() {
    let out = keel(&["serve", "--set", "listen"], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("KEY=VALUE"), "{stderr}");
}

#[test]
fn print_config_round_trips_through_a_file() {
    let first = keel(
        &[
            "serve",
            "--print-config",
            "--set",
            "http2.max_concurrent_streams=77",
        ],
        &[],
    );
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    let text = String::from_utf8(first.stdout).unwrap();
    assert!(text.contains("max_concurrent_streams = 77"), "{text}");
    let path = temp_file("round.toml", &text);
    let second = keel(
        &[
            "serve",
            "--print-config",
            "--config",
            path.to_str().unwrap(),
        ],
        &[],
    );
    std::fs::remove_file(&path).unwrap();
    assert!(
        second.status.success(),
        "{}",
        String::from_utf8_lossy(&second.stderr)
    );
    assert_eq!(String::from_utf8(second.stdout).unwrap(), text);
}

/// Runs `keel` with `args` and waits at most `limit` for it to exit; `None` (after killing
/// it) if it is still running then, e.g. serving a setting it should have refused.
fn exit_within(args: &[&str], limit: Duration) -> Option<(std::process::ExitStatus, String)> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env_remove("KEEL_CONFIG")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run keel");
    let mut stderr = child.stderr.take().unwrap();
    let (done, exited) = std::sync::mpsc::channel();
    // stderr ends when the process exits.
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = stderr.read_to_string(&mut text);
        let _ = done.send(text);
    });
    match exited.recv_timeout(limit) {
        Ok(text) => Some((child.wait().unwrap(), text)),
        Err(_) => {
            child.kill().unwrap();
            child.wait().unwrap();
            None
        }
    }
}

/// Settings that used to start a server which then panicked or tripped an assertion (at
/// bind, on every connection, or at shutdown): now refused at start, naming the key.
#[test]
fn out_of_range_settings_stop_start_up_naming_the_key() {
    for (set, expected) in [
        (
            "http2.max_frame_size=1",
            "invalid setting from --set: http2.max_frame_size = 1: must be between 16384 and \
             16777215 bytes",
        ),
        (
            "limits.concurrency_limit=2305843009213693952",
            "invalid setting from --set: limits.concurrency_limit = 2305843009213693952: must \
             be at most 2305843009213693951 (0: unlimited)",
        ),
        (
            "http2.max_send_buffer=4294967296",
            "invalid setting from --set: http2.max_send_buffer = 4294967296: must be between 1 \
             and 4294967295 bytes",
        ),
        (
            "connection.max_age=500000000000years",
            "invalid setting from --set: connection.max_age = 500000000000years: must be at \
             most 1year",
        ),
        (
            "connection.max_age_jitter=nan",
            "invalid setting from --set: connection.max_age_jitter = NaN: must be a fraction \
             between 0 and 1",
        ),
    ] {
        let args = [&["serve", "--set", set][..], &EPHEMERAL].concat();
        let Some((status, stderr)) = exit_within(&args, Duration::from_secs(30)) else {
            panic!("keel serve --set {set} started serving");
        };
        assert_eq!(status.code(), Some(1), "{set}: {stderr}");
        assert_eq!(stderr.trim_end(), format!("keel: {expected}"), "{set}");
    }
}
