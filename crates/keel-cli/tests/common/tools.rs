//! The reference tools the metrics tests check with: prometheus_client's parsers
//! (`tests/python/parse_exposition.py`), PyYAML (`tests/python/yaml_to_json.py`) and
//! Prometheus's own `promtool` and server (Debian's `prometheus`; scripts/test.sh installs it).
//!
//! Include it with `#[path = "common/python.rs"] mod python;` and
//! `#[path = "common/tools.rs"] mod tools;` in a test file.
#![allow(
    dead_code,
    reason = "each test binary uses a different part of the helper"
)]

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

use crate::python::{python, workspace_root};

/// Runs `program args`, writing `stdin` to its standard input.
fn run(program: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new(program)
        .args(args)
        .current_dir(workspace_root())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}{}", program.display(), install_hint(program)));
    let mut input = child.stdin.take().unwrap();
    let stdin = stdin.to_owned();
    // A writer thread: the program may answer before it has read everything.
    let writer = std::thread::spawn(move || input.write_all(stdin.as_bytes()));
    let output = child.wait_with_output().unwrap();
    let _ = writer.join();
    output
}

fn install_hint(program: &Path) -> &'static str {
    if program.ends_with("promtool") || program.ends_with("prometheus") {
        " (install Debian's `prometheus` package; scripts/test.sh does)"
    } else {
        ""
    }
}

/// Parses an exposition with prometheus_client's reference parser for `format`
/// (`"openmetrics"` or `"text"`, 0.0.4): `{"families": {name: type}, "samples": [{"name",
/// "labels"}], "exemplars": [{"sample", "labels", "exemplar"}]}`, or the parser's complaint.
pub fn parse_exposition(format: &str, body: &str) -> Result<serde_json::Value, String> {
    let script = workspace_root().join("tests/python/parse_exposition.py");
    let output = run(&python(), &[script.to_str().unwrap(), format], body);
    if !output.status.success() {
        return Err(String::from_utf8_lossy(&output.stderr).into_owned());
    }
    Ok(serde_json::from_slice(&output.stdout).expect("parse_exposition.py prints JSON"))
}

/// A YAML file of the repository (a path relative to its root) as JSON.
pub fn yaml_to_json(relative: &str) -> serde_json::Value {
    let script = workspace_root().join("tests/python/yaml_to_json.py");
    let output = run(&python(), &[script.to_str().unwrap(), relative], "");
    assert!(
        output.status.success(),
        "{relative} is not YAML: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("yaml_to_json.py prints JSON")
}

/// What a promtool run said.
pub struct Promtool {
    pub success: bool,
    /// stdout and stderr.
    pub output: String,
}

/// Runs `promtool args` in the repository's root with `stdin` on its standard input.
pub fn promtool(args: &[&str], stdin: &str) -> Promtool {
    let output = run(Path::new("promtool"), args, stdin);
    Promtool {
        success: output.status.success(),
        output: format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    }
}
