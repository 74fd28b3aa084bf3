//! `keel certs` end to end: the real binary writes the files, and OpenSSL (a second,
//! independent implementation) verifies the chains and reads the names.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn keel(args: &[&str]) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(args)
        .env("KEEL_LOG", "off")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output, text)
}

fn openssl(args: &[&str]) -> (bool, String) {
    let output = Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl");
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output.status.success(), text)
}

fn tempdir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("keel-certs-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn s(path: &Path) -> &str {
    path.to_str().unwrap()
}

/// `openssl verify` of `leaf` (its file holds the chain) against `ca` for `purpose`.
fn verify(ca: &Path, leaf: &Path, purpose: &str) -> (bool, String) {
    openssl(&[
        "verify",
        "-purpose",
        purpose,
        "-CAfile",
        s(ca),
        "-untrusted",
        s(leaf),
        s(leaf),
    ])
}

#[test]
fn dev_makes_a_ca_a_server_and_a_client_that_openssl_verifies() {
    let dir = tempdir("dev");
    let (output, text) = keel(&["certs", "dev", "--out", s(&dir), "--intermediate"]);
    assert!(output.status.success(), "{text}");
    for line in [
        "ca.pem  \"CN=Keel Dev CA\" (root CA",
        "server.pem  server certificate for DNS:localhost, IP:127.0.0.1, IP:::1, chain of 2",
        "client.pem  client certificate for URI:spiffe://keel.test/client, chain of 2",
        "keel tls doctor localhost:50051 --ca",
    ] {
        assert!(text.contains(line), "expected {line:?} in:\n{text}");
    }
    let ca = dir.join("ca.pem");
    let (ok, text) = verify(&ca, &dir.join("server.pem"), "sslserver");
    assert!(ok, "{text}");
    let (ok, text) = verify(&ca, &dir.join("client.pem"), "sslclient");
    assert!(ok, "{text}");
    // The purposes are kept apart.
    let (ok, _) = verify(&ca, &dir.join("client.pem"), "sslserver");
    assert!(!ok, "a client certificate must not serve");

    let (_, names) = openssl(&[
        "x509",
        "-in",
        s(&dir.join("server.pem")),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(
        names.contains("DNS:localhost, IP Address:127.0.0.1, IP Address:0:0:0:0:0:0:0:1"),
        "{names}"
    );
    let (_, names) = openssl(&[
        "x509",
        "-in",
        s(&dir.join("client.pem")),
        "-noout",
        "-ext",
        "subjectAltName",
    ]);
    assert!(names.contains("URI:spiffe://keel.test/client"), "{names}");
    // Keys are PKCS#8 and private.
    for key in ["ca.key", "intermediate.key", "server.key", "client.key"] {
        let path = dir.join(key);
        let pem = std::fs::read_to_string(&path).unwrap();
        assert!(pem.starts_with("-----BEGIN PRIVATE KEY-----"), "{key}");
        use std::os::unix::fs::PermissionsExt as _;
        let mode = std::fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600, "{key}");
    }

    // Nothing is overwritten without --force, and nothing is half-written.
    let before = std::fs::read(&ca).unwrap();
    let (output, text) = keel(&["certs", "dev", "--out", s(&dir)]);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(
        text.contains("exists already (pass --force to overwrite)"),
        "{text}"
    );
    assert_eq!(std::fs::read(&ca).unwrap(), before);
    let (output, text) = keel(&["certs", "dev", "--out", s(&dir), "--force"]);
    assert!(output.status.success(), "{text}");
    assert_ne!(std::fs::read(&ca).unwrap(), before);
}

#[test]
fn ca_intermediate_and_issue_build_a_chain_step_by_step() {
    let dir = tempdir("steps");
    let ca = dir.join("ca");
    let intermediate = dir.join("intermediate");
    let workload = dir.join("payments");
    let (output, text) = keel(&[
        "certs",
        "ca",
        "--out",
        s(&ca),
        "--name",
        "Team CA",
        "--validity",
        "730d",
        "--key-type",
        "ecdsa-p384",
    ]);
    assert!(output.status.success(), "{text}");
    assert!(text.contains("keel certs issue --ca"), "{text}");
    let (output, text) = keel(&[
        "certs",
        "intermediate",
        "--ca",
        s(&ca),
        "--out",
        s(&intermediate),
    ]);
    assert!(output.status.success(), "{text}");
    let (output, text) = keel(&[
        "certs",
        "issue",
        "--ca",
        s(&intermediate),
        "--out",
        s(&workload),
        "--dns",
        "payments.internal",
        "--ip",
        "10.0.0.7",
        "--spiffe",
        "spiffe://keel.test/payments",
        "--both",
        "--key-type",
        "ed25519",
    ]);
    assert!(output.status.success(), "{text}");
    assert!(
        text.contains(
            "server and client certificate for DNS:payments.internal, IP:10.0.0.7, \
             URI:spiffe://keel.test/payments, chain of 2"
        ),
        "{text}"
    );
    let root = dir.join("ca.pem");
    let leaf = dir.join("payments.pem");
    for purpose in ["sslserver", "sslclient"] {
        let (ok, text) = verify(&root, &leaf, purpose);
        assert!(ok, "{purpose}: {text}");
    }
    let (_, subject) = openssl(&["x509", "-in", s(&root), "-noout", "-subject", "-enddate"]);
    assert!(
        subject.contains("CN=Team CA") || subject.contains("CN = Team CA"),
        "{subject}"
    );

    // An expired certificate, for tests: OpenSSL agrees it expired.
    let old = dir.join("old");
    let (output, text) = keel(&[
        "certs",
        "issue",
        "--ca",
        s(&ca),
        "--out",
        s(&old),
        "--dns",
        "localhost",
        "--not-before",
        "-30d",
        "--validity",
        "1d",
    ]);
    assert!(output.status.success(), "{text}");
    let (ok, text) = verify(&root, &dir.join("old.pem"), "sslserver");
    assert!(!ok && text.contains("expired"), "{text}");
}

#[test]
fn mistakes_get_clear_errors_and_exit_2() {
    let dir = tempdir("errors");
    let (output, _) = keel(&["certs", "ca", "--out", s(&dir.join("ca"))]);
    assert!(output.status.success());
    let cases: &[(&[&str], &str)] = &[
        (
            &["--spiffe", "spiffe://Keel.test/x", "--client"],
            "invalid SPIFFE ID \"spiffe://Keel.test/x\"",
        ),
        (
            &["--spiffe", "https://keel.test/x", "--client"],
            "must start with spiffe://",
        ),
        (&["--spiffe", "spiffe://keel.test/x"], "--client"),
        (&["--dns", "bad name"], "invalid DNS name \"bad name\""),
        (
            &["--dns", "localhost", "--key-type", "rsa"],
            "openssl genpkey",
        ),
        (
            &["--dns", "localhost", "--not-before", "yesterday"],
            "neither an RFC 3339 time",
        ),
        (&["--dns", "a", "--client", "--both"], "cannot be used with"),
    ];
    let (ca, out) = (dir.join("ca"), dir.join("leaf"));
    for (extra, expected) in cases {
        let mut args = vec!["certs", "issue", "--ca", s(&ca), "--out", s(&out)];
        args.extend_from_slice(extra);
        let (output, text) = keel(&args);
        assert_eq!(output.status.code(), Some(2), "{extra:?}: {text}");
        assert!(
            text.contains(expected),
            "{extra:?}: expected {expected:?} in {text}"
        );
    }
    // The CA's key is missing.
    std::fs::remove_file(dir.join("ca.key")).unwrap();
    let (output, text) = keel(&[
        "certs",
        "issue",
        "--ca",
        s(&dir.join("ca")),
        "--out",
        s(&dir.join("leaf")),
        "--dns",
        "localhost",
    ]);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("but not its key"), "{text}");
    // --help teaches by example.
    let (output, text) = keel(&["certs", "--help"]);
    assert!(output.status.success());
    assert!(
        text.contains("Examples:") && text.contains("keel certs dev --out certs"),
        "{text}"
    );
}
