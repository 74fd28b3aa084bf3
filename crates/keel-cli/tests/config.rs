//! Start-up configuration through the real binary: a bad value fails fast with a message
//! naming the key and where it came from, and `--print-config` round-trips.

use std::process::{Command, Output};

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
