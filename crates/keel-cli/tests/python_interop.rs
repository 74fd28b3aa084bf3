//! `keel serve` against an independent gRPC implementation: the Python grpcio peer
//! (tests/python/keel_peer.py) runs the interop cases, health and reflection checks.

mod common;
#[path = "common/python.rs"]
mod python;

use std::collections::BTreeMap;
use std::time::Duration;

use common::KeelServe;

#[test]
fn grpcio_peer_passes_interop_health_and_reflection() {
    // Resolve the interpreter first, so a missing venv fails with its own message.
    python::python();
    let server = KeelServe::start(&[]);
    let port = server.grpc.port().to_string();
    let run = python::run_peer(
        &["interop", "--host", "127.0.0.1", "--port", &port],
        Duration::from_secs(180),
    );
    let context = || {
        format!(
            "{}\n--- keel serve logs ---\n{}",
            run.report(),
            server.logs()
        )
    };
    assert!(
        run.success(),
        "the grpcio peer reported failures\n{}",
        context()
    );
    assert!(
        run.stdout.lines().any(|l| l.starts_with("PASS ")) && !run.stdout.contains("FAIL "),
        "the grpcio peer exited 0 but its report is not all PASS\n{}",
        context()
    );
}

#[test]
fn grpcio_load_runs_without_failures() {
    python::python();
    let server = KeelServe::start(&[]);
    let result = python::python_load(server.grpc, Duration::from_secs(2), 4);
    assert!(
        result.ok > 0 && result.failed == 0,
        "{result:?}\n--- keel serve logs ---\n{}",
        server.logs()
    );
}

#[test]
fn load_result_line_parses() {
    let parsed = python::parse_load_line(
        r#"{"ok": 120, "failed": 3, "errors": {"StatusCode.UNAVAILABLE": 2, "BadReply": 1}}"#,
    );
    let errors = BTreeMap::from([
        ("BadReply".to_owned(), 1),
        ("StatusCode.UNAVAILABLE".to_owned(), 2),
    ]);
    assert_eq!(
        parsed,
        Some(python::LoadResult {
            ok: 120,
            failed: 3,
            errors
        })
    );
    let empty = python::parse_load_line(r#"{"ok": 5, "failed": 0, "errors": {}}"#).unwrap();
    assert_eq!((empty.ok, empty.failed, empty.errors.len()), (5, 0, 0));
    assert_eq!(
        python::parse_load_line("Traceback (most recent call last):"),
        None
    );
}
