//! Keel's TLS against independent TLS stacks, over real sockets: the Python grpcio peer
//! (tests/python/keel_peer.py; grpc-core on BoringSSL) as a client of `keel serve` and as a
//! server for Keel's client, and curl (OpenSSL) against the `payments` binary's REST
//! gateway and admin port. A misreading of TLS shared by Keel's client and server (both
//! rustls) would pass Keel's own tests; it fails these.

mod common;
#[path = "common/python.rs"]
mod python;

use std::io::{BufRead as _, BufReader};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::KeelServe;
use common::payments::Payments;
use keel::client::{Channel, ClientTls, ClientTlsConfig};
use keel_interop::pb::helloworld::HelloRequest;
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_test_support::eventually;
use keel_test_support::tls::{Ca, Dir, Leaf};
use serde_json::{Value, json};
use tonic::Code;

/// The server certificate's SPIFFE ID (it also holds `localhost` and `127.0.0.1`).
const SERVER_ID: &str = "spiffe://keel.test/server";
/// The grpcio client's SPIFFE ID, the one `keel serve`'s policy allows.
const GRPCIO_ID: &str = "spiffe://keel.test/grpcio";
/// Keel's client's SPIFFE ID.
const KEEL_CLIENT_ID: &str = "spiffe://keel.test/keel-client";
/// A client the root vouches for but the policy does not allow.
const STRANGER_ID: &str = "spiffe://keel.test/stranger";

/// A root CA, an intermediate that issues every leaf, and the leaves as PEM files: each
/// `NAME.pem` is the leaf's chain (leaf, then the intermediate), so every peer has to
/// build the chain through an intermediate it is not given as an anchor.
struct Pki {
    dir: Dir,
}

impl Pki {
    fn new() -> Self {
        let root = Ca::root("Keel Interop Root");
        let issuing = root.intermediate("Keel Interop Issuing");
        let pki = Self { dir: Dir::new() };
        pki.dir.write("root.pem", root.cert_pem());
        let server = issuing
            .leaf("server")
            .uri(SERVER_ID)
            .dns("localhost")
            .ip([127, 0, 0, 1].into())
            .issue();
        pki.write_leaf("server", &server);
        for (name, id) in [
            ("grpcio", GRPCIO_ID),
            ("keel-client", KEEL_CLIENT_ID),
            ("stranger", STRANGER_ID),
        ] {
            pki.write_leaf(name, &issuing.leaf(name).uri(id).issue());
        }
        pki
    }

    fn write_leaf(&self, name: &str, leaf: &Leaf) {
        self.dir.write(&format!("{name}.pem"), &leaf.chain_pem);
        self.dir.write(&format!("{name}.key"), &leaf.key_pem);
    }

    /// The path of `name` in the directory, as text for command lines.
    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// `--set` flags for a server certificate under `prefix` (`tls`, `server.admin_tls`,
    /// ...), asking for client certificates when `client_auth` is `optional`/`required`.
    fn server_flags(&self, prefix: &str, client_auth: &str) -> Vec<String> {
        let mut settings = vec![
            format!("{prefix}.cert={}", self.file("server.pem")),
            format!("{prefix}.key={}", self.file("server.key")),
        ];
        if client_auth != "none" {
            settings.push(format!("{prefix}.client_ca={}", self.file("root.pem")));
            settings.push(format!("{prefix}.client_auth={client_auth}"));
        }
        settings
            .into_iter()
            .flat_map(|setting| ["--set".to_owned(), setting])
            .collect()
    }

    /// The peer's client TLS flags: the root, and `client`'s certificate when given.
    fn peer_client_flags(&self, client: Option<&str>) -> Vec<String> {
        let mut flags = vec!["--ca".to_owned(), self.file("root.pem")];
        if let Some(name) = client {
            flags.extend([
                "--cert".to_owned(),
                self.file(&format!("{name}.pem")),
                "--key".to_owned(),
                self.file(&format!("{name}.key")),
            ]);
        }
        flags
    }

    /// Keel's client settings: the root, and Keel's client certificate when `mutual`.
    fn keel_client_tls(&self, mutual: bool) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::default();
        tls.ca = self.file("root.pem").into();
        if mutual {
            tls.cert = self.file("keel-client.pem").into();
            tls.key = self.file("keel-client.key").into();
        }
        tls
    }
}

fn strings(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `keel_peer.py hello` against `port` with `flags`: `Ok(reply)` or `Err(why)`, the
/// peer's `FAIL StatusCode.X: details` line and output.
fn grpcio_hello(port: u16, flags: &[String]) -> Result<String, String> {
    let port = port.to_string();
    let mut args = vec!["hello", "--port", &port];
    args.extend(strings(flags));
    let run = python::run_peer(&args, Duration::from_secs(60));
    let last = run.stdout.lines().last().unwrap_or_default();
    match (run.success(), last.strip_prefix("OK ")) {
        (true, Some(reply)) => Ok(reply.to_owned()),
        _ => Err(format!("{last}\n{}", run.report())),
    }
}

#[test]
fn grpcio_calls_keel_serve_over_tls() {
    python::python();
    let pki = Pki::new();
    let server = KeelServe::start(&strings(&pki.server_flags("tls", "none")));
    let port = server.grpc.port();

    // Verified against the address (the certificate's IP SAN)...
    let reply = grpcio_hello(port, &pki.peer_client_flags(None));
    assert_eq!(reply.as_deref(), Ok("Hello grpcio"), "{}", server.logs());
    // ...and against a host name, through grpc.ssl_target_name_override.
    let mut flags = pki.peer_client_flags(None);
    flags.extend(["--server-name".to_owned(), "localhost".to_owned()]);
    assert_eq!(grpcio_hello(port, &flags).as_deref(), Ok("Hello grpcio"));

    // A name the certificate does not hold fails on grpcio's side.
    let mut flags = pki.peer_client_flags(None);
    flags.extend(["--server-name".to_owned(), "payments.keel.test".to_owned()]);
    let error = grpcio_hello(port, &flags).unwrap_err();
    assert!(
        error.starts_with("FAIL StatusCode.UNAVAILABLE"),
        "wrong name accepted or unclear: {error}"
    );
}

/// A grpc-go authz policy allowing only the grpcio client's SPIFFE ID, so a call that
/// passes shows that Keel read it from grpcio's certificate.
fn policy_allowing_grpcio(dir: &Dir) -> PathBuf {
    let policy = json!({
        "name": "grpcio-only",
        "allow_rules": [{"name": "grpcio", "source": {"principals": [GRPCIO_ID]}}]
    });
    dir.write("policy.json", policy.to_string())
}

#[test]
fn grpcio_passes_interop_over_mutual_tls_and_keel_reads_its_spiffe_id() {
    python::python();
    let pki = Pki::new();
    let mut flags = pki.server_flags("tls", "required");
    let policy = policy_allowing_grpcio(&pki.dir);
    flags.extend([
        "--set".to_owned(),
        format!("auth.policy={}", policy.display()),
    ]);
    let server = KeelServe::start(&strings(&flags));
    let port = server.grpc.port().to_string();

    // Every interop case, health and reflection, over mutual TLS.
    let mut args = vec!["interop", "--port", &port];
    let client = pki.peer_client_flags(Some("grpcio"));
    args.extend(strings(&client));
    let run = python::run_peer(&args, Duration::from_secs(180));
    assert!(
        run.success() && run.stdout.contains("PASS ") && !run.stdout.contains("FAIL "),
        "interop over mTLS failed\n{}\n--- keel serve logs ---\n{}",
        run.report(),
        server.logs()
    );

    // A certificate from the same CA with another identity completes the handshake, and
    // the policy refuses it by that identity.
    let error =
        grpcio_hello(server.grpc.port(), &pki.peer_client_flags(Some("stranger"))).unwrap_err();
    assert!(
        error.starts_with("FAIL StatusCode.PERMISSION_DENIED"),
        "{error}\n--- keel serve logs ---\n{}",
        server.logs()
    );
}

#[test]
fn grpcio_without_a_client_certificate_is_refused_by_keel_requiring_one() {
    python::python();
    let pki = Pki::new();
    let server = KeelServe::start(&strings(&pki.server_flags("tls", "required")));
    let error = grpcio_hello(server.grpc.port(), &pki.peer_client_flags(None)).unwrap_err();
    // grpc-core names the failure as a TLS one: the alert rustls sent (TLS 1.3 sends
    // "certificate required" after the client has finished its side of the handshake).
    assert!(
        error.starts_with("FAIL StatusCode.UNAVAILABLE")
            && (error.contains("CERTIFICATE_REQUIRED") || error.contains("HANDSHAKE")),
        "{error}\n--- keel serve logs ---\n{}",
        server.logs()
    );
    // The same peer with its certificate passes, so the refusal was the certificate's.
    assert_eq!(
        grpcio_hello(server.grpc.port(), &pki.peer_client_flags(Some("grpcio"))).as_deref(),
        Ok("Hello grpcio")
    );
}

/// `keel_peer.py serve`: a grpcio Greeter over TLS on an ephemeral port, killed on drop.
/// `calls` collects the JSON line it prints per call (what it read from the client's
/// certificate).
struct GrpcioServer {
    child: Child,
    port: u16,
    calls: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
    /// Held open: the peer serves until its standard input ends.
    _stdin: ChildStdin,
}

impl GrpcioServer {
    /// Starts it with `pki`'s server certificate, asking for client certificates that
    /// chain to the root when `client_auth` is `optional` or `required`; waits until it
    /// prints its port.
    fn start(pki: &Pki, client_auth: &str) -> Self {
        let mut child = Command::new(python::python())
            .arg(python::peer_script())
            .args(["serve", "--cert", &pki.file("server.pem")])
            .args(["--key", &pki.file("server.key")])
            .args(["--client-auth", client_auth])
            .args(if client_auth == "none" {
                Vec::new()
            } else {
                vec!["--client-ca".to_owned(), pki.file("root.pem")]
            })
            .current_dir(python::workspace_root())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn keel_peer.py serve");
        let stdin = child.stdin.take().unwrap();
        let stderr = Arc::new(Mutex::new(String::new()));
        let sink = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                sink.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        let port = loop {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let _ = child.wait();
                panic!(
                    "keel_peer.py serve exited before listening:\n{}",
                    stderr.lock().unwrap()
                );
            }
            if let Some(port) = line.trim().strip_prefix("listening on ") {
                break port.parse().unwrap();
            }
        };
        let calls = Arc::new(Mutex::new(Vec::new()));
        let sink = calls.clone();
        std::thread::spawn(move || {
            for line in stdout.lines().map_while(Result::ok) {
                let call = serde_json::from_str(&line).unwrap_or(Value::String(line));
                sink.lock().unwrap().push(call);
            }
        });
        Self {
            child,
            port,
            calls,
            stderr,
            _stdin: stdin,
        }
    }

    /// What the peer reported for the call that greeted `name`, waiting for its line.
    async fn call_named(&self, name: &str) -> Value {
        let find = || {
            self.calls
                .lock()
                .unwrap()
                .iter()
                .find(|call| call["name"] == name)
                .cloned()
        };
        eventually(
            &format!("grpcio reports the call from {name}"),
            Duration::from_secs(5),
            || find().is_some(),
        )
        .await;
        find().unwrap()
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }
}

impl Drop for GrpcioServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One SayHello from Keel's client to `target` over a fresh channel with `tls`, without
/// waiting for the channel first: the reply or the call's status.
async fn keel_hello(
    target: &str,
    tls: &ClientTlsConfig,
    name: &str,
) -> Result<String, tonic::Status> {
    let channel = Channel::builder(target)
        .unwrap()
        .tls(ClientTls::load(tls).expect("client TLS material"))
        .build()
        .unwrap();
    GreeterClient::new(channel)
        .say_hello(HelloRequest { name: name.into() })
        .await
        .map(|reply| reply.into_inner().message)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_client_calls_grpcio_over_tls() {
    let pki = Pki::new();
    let server = GrpcioServer::start(&pki, "none");
    let tls = pki.keel_client_tls(false);

    let target = format!("static:///127.0.0.1:{}", server.port);
    let reply = keel_hello(&target, &tls, "keel-static").await;
    assert_eq!(
        reply.as_deref().ok(),
        Some("Hello keel-static"),
        "{reply:?}\n{}",
        server.stderr()
    );
    // A DNS target: SNI and verification against the host name.
    let target = format!("dns:///localhost:{}", server.port);
    let reply = keel_hello(&target, &tls, "keel-dns").await;
    assert_eq!(reply.as_deref().ok(), Some("Hello keel-dns"), "{reply:?}");

    let call = server.call_named("keel-static").await;
    assert_eq!(
        call["peer"]["transport_security_type"],
        json!(["ssl"]),
        "{call}"
    );
    assert_eq!(call["peer"]["peer_identities"], json!([]), "{call}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_client_calls_grpcio_over_mutual_tls_and_grpcio_sees_its_spiffe_id() {
    let pki = Pki::new();
    let server = GrpcioServer::start(&pki, "required");
    let target = format!("static:///127.0.0.1:{}", server.port);

    let reply = keel_hello(&target, &pki.keel_client_tls(true), "keel-mtls").await;
    assert_eq!(
        reply.as_deref().ok(),
        Some("Hello keel-mtls"),
        "{reply:?}\n{}",
        server.stderr()
    );
    let call = server.call_named("keel-mtls").await;
    let peer = &call["peer"];
    assert_eq!(
        peer["x509_subject_alternative_name"],
        json!([KEEL_CLIENT_ID]),
        "{call}"
    );
    assert_eq!(peer["peer_identities"], json!([KEEL_CLIENT_ID]), "{call}");
    assert_eq!(peer["peer_spiffe_id"], json!([KEEL_CLIENT_ID]), "{call}");

    // Without its certificate, Keel's client is refused. grpc-core closes without an
    // alert; Keel's client says what that likely means.
    let status = keel_hello(&target, &pki.keel_client_tls(false), "anonymous")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains("if it requires a client certificate, set cert and key"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keel_client_refuses_a_grpcio_server_outside_its_expected_identities() {
    let pki = Pki::new();
    let server = GrpcioServer::start(&pki, "required");
    let target = format!("static:///127.0.0.1:{}", server.port);

    let mut expected = pki.keel_client_tls(true);
    expected.expected_identities = vec!["spiffe://keel.test/other".into(), SERVER_ID.into()];
    let reply = keel_hello(&target, &expected, "expected").await;
    assert_eq!(reply.as_deref().ok(), Some("Hello expected"), "{reply:?}");

    let mut elsewhere = pki.keel_client_tls(true);
    elsewhere.expected_identities = vec!["spiffe://keel.test/ledger".into()];
    let status = keel_hello(&target, &elsewhere, "unexpected")
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unavailable, "{status:?}");
    assert!(
        status
            .message()
            .contains(&format!("presented identity {SERVER_ID}"))
            && status.message().contains("spiffe://keel.test/ledger"),
        "{status:?}"
    );
    // The refused server never saw the call (its report of the first one is read first).
    server.call_named("expected").await;
    let names: Vec<Value> = server
        .calls
        .lock()
        .unwrap()
        .iter()
        .map(|c| c["name"].clone())
        .collect();
    assert_eq!(names, vec![json!("expected")]);
}

/// What curl got: the status code, the HTTP version it spoke (`2`, `1.1`) and the body.
#[derive(Debug)]
struct Curled {
    status: u16,
    http: String,
    body: Value,
}

/// `curl ARGS https://localhost:PORT/PATH` (localhost resolved to 127.0.0.1), trusting
/// the root: what it got, or its complaint when it got no response.
fn curl(pki: &Pki, port: u16, args: &[&str], path: &str) -> Result<Curled, String> {
    let output = Command::new("curl")
        .args(["-sS", "--max-time", "10", "--cacert", &pki.file("root.pem")])
        .args(["--resolve", &format!("localhost:{port}:127.0.0.1")])
        .args(["--write-out", "\n%{http_code} %{http_version}"])
        .args(args)
        .arg(format!("https://localhost:{port}{path}"))
        .output()
        .expect("curl runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let stderr = String::from_utf8_lossy(&output.stderr);
        return Err(format!("curl {}: {stderr}{stdout}", output.status));
    }
    let (body, last) = stdout.rsplit_once('\n').expect("curl's --write-out line");
    let (status, http) = last.split_once(' ').expect("status and version");
    Ok(Curled {
        status: status.parse().expect("a status code"),
        http: http.to_owned(),
        body: serde_json::from_str(body).unwrap_or_else(|_| Value::String(body.to_owned())),
    })
}

/// Creates `account` through the REST gateway with curl `args`, reads it back, and
/// checks both spoke HTTP `http`.
fn create_and_read_account(pki: &Pki, port: u16, args: &[&str], http: &str, account: &str) {
    let create = json!({"accountId": account, "currency": "USD"}).to_string();
    let mut post = args.to_vec();
    post.extend(["-H", "content-type: application/json", "--data", &create]);
    let created = curl(pki, port, &post, "/v1/accounts").unwrap();
    assert_eq!(
        (created.status, created.http.as_str()),
        (200, http),
        "{created:?}"
    );
    assert_eq!(created.body["account"]["accountId"], account, "{created:?}");

    let read = curl(pki, port, args, &format!("/v1/accounts/{account}")).unwrap();
    assert_eq!((read.status, read.http.as_str()), (200, http), "{read:?}");
    assert_eq!(read.body["account"]["accountId"], account, "{read:?}");
    assert_eq!(read.body["account"]["currency"], "USD", "{read:?}");
}

#[test]
fn curl_reaches_payments_rest_and_admin_over_https() {
    let pki = Pki::new();
    let mut flags = pki.server_flags("server.tls", "none");
    flags.extend(pki.server_flags("server.admin_tls", "none"));
    let payments = Payments::start_with(&strings(&flags));

    for (version, http, account) in [("--http2", "2", "alice"), ("--http1.1", "1.1", "bob")] {
        create_and_read_account(&pki, payments.grpc.port(), &[version], http, account);
        let ready = curl(&pki, payments.admin.port(), &[version], "/readyz").unwrap();
        assert_eq!(
            (ready.status, ready.http.as_str()),
            (200, http),
            "{ready:?}"
        );
        assert_eq!(ready.body["status"], "serving", "{ready:?}");
    }
}

#[test]
fn curl_needs_a_client_certificate_when_payments_requires_one() {
    let pki = Pki::new();
    let mut flags = pki.server_flags("server.tls", "required");
    flags.extend(pki.server_flags("server.admin_tls", "required"));
    let payments = Payments::start_with(&strings(&flags));
    let (rest, admin) = (payments.grpc.port(), payments.admin.port());

    // Every refusal reaches curl as the alert that says why, though curl (TLS 1.3) sends
    // its request before the server has judged its certificate: the server reads what
    // was sent before closing, so no reset overtakes the alert.
    for port in [rest, admin] {
        for version in ["--http2", "--http1.1"].repeat(5) {
            let refused = curl(&pki, port, &[version], "/readyz").unwrap_err();
            assert!(
                refused.contains("alert certificate required"),
                "port {port}, {version}: {refused}"
            );
        }
    }

    let cert = pki.file("keel-client.pem");
    let key = pki.file("keel-client.key");
    let identity = ["--cert", &cert, "--key", &key];
    for (version, http, account) in [("--http2", "2", "carol"), ("--http1.1", "1.1", "dave")] {
        let mut args = identity.to_vec();
        args.push(version);
        create_and_read_account(&pki, rest, &args, http, account);
        let ready = curl(&pki, admin, &args, "/readyz").unwrap();
        assert_eq!(
            (ready.status, ready.http.as_str()),
            (200, http),
            "{ready:?}"
        );
    }
}
