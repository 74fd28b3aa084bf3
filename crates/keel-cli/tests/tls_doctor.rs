//! `keel tls doctor` against real servers: small rustls servers on loopback, each
//! misconfigured one way with certificates from keel-certs, and a plaintext `keel serve`.
//! Each case checks the exit status and the line that explains the problem.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Arc;

use keel_certs::{Authority, CaOptions, Issued, LeafOptions, SpiffeId, Validity};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};

/// The CA a test trusts, its intermediate, and files the doctor reads.
struct Pki {
    root: Authority,
    intermediate: Authority,
    dir: PathBuf,
}

impl Pki {
    fn new(test: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("keel-doctor-{test}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let root = Authority::root(CaOptions::new("Keel Test CA")).unwrap();
        let intermediate = root
            .intermediate(CaOptions::new("Keel Test Intermediate"))
            .unwrap();
        std::fs::write(dir.join("ca.pem"), root.cert_pem()).unwrap();
        Self {
            root,
            intermediate,
            dir,
        }
    }

    fn ca(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    fn server(&self) -> Issued {
        self.root
            .issue(
                LeafOptions::server()
                    .dns("localhost")
                    .ip([127, 0, 0, 1].into()),
            )
            .unwrap()
    }

    /// Writes a client certificate's chain and key; returns their paths.
    fn client_files(&self, issued: &Issued) -> (PathBuf, PathBuf) {
        let (cert, key) = (self.dir.join("client.pem"), self.dir.join("client.key"));
        std::fs::write(&cert, issued.chain_pem()).unwrap();
        std::fs::write(&key, issued.key().pem()).unwrap();
        (cert, key)
    }
}

/// How a test server is set up.
struct Setup<'a> {
    chain: Vec<rustls::pki_types::CertificateDer<'static>>,
    key: rustls::pki_types::PrivateKeyDer<'static>,
    alpn: &'a [&'a [u8]],
    client_ca: Option<&'a Authority>,
    tls12_only: bool,
}

impl<'a> Setup<'a> {
    fn new(issued: &Issued) -> Self {
        Self {
            chain: issued.chain().to_vec(),
            key: issued.key().der(),
            alpn: &[b"h2"],
            client_ca: None,
            tls12_only: false,
        }
    }
}

/// A rustls server on 127.0.0.1 that, once the handshake is done, sends an HTTP/2
/// SETTINGS frame (as an HTTP/2 server does) and reads until the client leaves.
struct TlsServer {
    address: SocketAddr,
    _runtime: tokio::runtime::Runtime,
}

impl TlsServer {
    fn start(setup: Setup<'_>) -> Self {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let versions: &[&rustls::SupportedProtocolVersion] = if setup.tls12_only {
            &[&rustls::version::TLS12]
        } else {
            &[&rustls::version::TLS13, &rustls::version::TLS12]
        };
        let builder = ServerConfig::builder_with_provider(provider.clone())
            .with_protocol_versions(versions)
            .unwrap();
        let builder = match setup.client_ca {
            Some(ca) => {
                let mut roots = RootCertStore::empty();
                roots.add(ca.certificate().clone()).unwrap();
                let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider,
                )
                .build()
                .unwrap();
                builder.with_client_cert_verifier(verifier)
            }
            None => builder.with_no_client_auth(),
        };
        let mut config = builder.with_single_cert(setup.chain, setup.key).unwrap();
        config.alpn_protocols = setup.alpn.iter().map(|p| p.to_vec()).collect();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let listener = runtime
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let address = listener.local_addr().unwrap();
        runtime.spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let acceptor = acceptor.clone();
                tokio::spawn(async move {
                    let Ok(mut tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let _ = tls.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await;
                    let _ = tls.flush().await;
                    let mut buffer = [0; 1024];
                    while matches!(tls.read(&mut buffer).await, Ok(n) if n > 0) {}
                });
            }
        });
        Self {
            address,
            _runtime: runtime,
        }
    }

    fn target(&self) -> String {
        format!("localhost:{}", self.address.port())
    }
}

fn doctor(target: &str, args: &[&str]) -> (Output, String) {
    let output = Command::new(env!("CARGO_BIN_EXE_keel"))
        .args(["tls", "doctor", target, "--timeout", "5s"])
        .args(args)
        .env("KEEL_LOG", "off")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout).into_owned()
        + &String::from_utf8_lossy(&output.stderr);
    (output, text)
}

fn path(path: &Path) -> &str {
    path.to_str().unwrap()
}

fn assert_problem(output: &Output, text: &str, lines: &[&str]) {
    assert_eq!(output.status.code(), Some(1), "{text}");
    for line in lines {
        assert!(text.contains(line), "expected {line:?} in:\n{text}");
    }
    assert!(!text.contains("panicked"), "{text}");
}

#[test]
fn a_good_server_passes_with_exit_0() {
    let pki = Pki::new("good");
    let server = TlsServer::start(Setup::new(&pki.server()));
    let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca())]);
    assert_eq!(output.status.code(), Some(0), "{text}");
    for line in [
        "ok    TLS          TLS 1.3",
        "info  SNI          sent \"localhost\"",
        "ok    ALPN         offered h2; the server chose h2",
        "ok    certificate  chain verified against --ca",
        "ok    HTTP/2       the server answered the HTTP/2 preface with SETTINGS",
        "[0] CN=localhost",
        "issuer  CN=Keel Test CA",
        "names   DNS:localhost, IP:127.0.0.1",
        "No problems",
    ] {
        assert!(text.contains(line), "expected {line:?} in:\n{text}");
    }

    // JSON for scripts.
    let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca()), "--json"]);
    assert_eq!(output.status.code(), Some(0), "{text}");
    let json: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(json["ok"], true);
    assert_eq!(json["chain"][0]["subject"], "CN=localhost");
    assert_eq!(json["problems"].as_array().unwrap().len(), 0);
}

#[test]
fn mutual_tls_through_an_intermediate_passes() {
    let pki = Pki::new("mtls");
    let server_cert = pki
        .intermediate
        .issue(LeafOptions::server().dns("localhost"))
        .unwrap();
    let mut setup = Setup::new(&server_cert);
    setup.client_ca = Some(&pki.root);
    let server = TlsServer::start(setup);
    let client = pki
        .intermediate
        .issue(LeafOptions::client().spiffe(SpiffeId::parse("spiffe://keel.test/a").unwrap()))
        .unwrap();
    let (cert, key) = pki.client_files(&client);
    let (output, text) = doctor(
        &server.target(),
        &[
            "--ca",
            path(&pki.ca()),
            "--cert",
            path(&cert),
            "--key",
            path(&key),
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{text}");
    assert!(
        text.contains("sent \"CN=spiffe://keel.test/a\"; the server accepted it"),
        "{text}"
    );
    assert!(text.contains("[1] CN=Keel Test Intermediate"), "{text}");
}

#[test]
fn an_untrusted_ca_is_named_with_the_fix() {
    let pki = Pki::new("untrusted");
    let other = Authority::root(CaOptions::new("Other CA")).unwrap();
    let other_intermediate = other.intermediate(CaOptions::new("Other Int")).unwrap();
    let issued = other_intermediate
        .issue(LeafOptions::server().dns("localhost"))
        .unwrap();
    let server = TlsServer::start(Setup::new(&issued));
    let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca())]);
    assert_problem(
        &output,
        &text,
        &[
            "FAIL  certificate  unknown issuer",
            "unknown issuer: the chain presented ends at \"CN=Other Int\", issued by \"CN=Other CA\"",
            "fix: pass the root CA \"CN=Other CA\" with --ca",
        ],
    );
    // Without --ca, the public roots do not know a private CA either.
    let (output, text) = doctor(&server.target(), &[]);
    assert_problem(&output, &text, &["the Mozilla roots"]);
}

#[test]
fn an_expired_certificate_shows_its_dates() {
    let pki = Pki::new("expired");
    let issued = pki
        .root
        .issue(
            LeafOptions::server()
                .dns("localhost")
                .validity(Validity::expired()),
        )
        .unwrap();
    let server = TlsServer::start(Setup::new(&issued));
    let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca())]);
    assert_problem(
        &output,
        &text,
        &[
            "FAIL  certificate  expired",
            "Problem 1: expired: the certificate \"CN=localhost\" was valid until",
            "24 hours ago (now: ",
            "fix: renew the server's certificate",
            "(EXPIRED 24 hours ago)",
        ],
    );
}

#[test]
fn a_name_mismatch_lists_the_names_the_certificate_has() {
    let pki = Pki::new("name");
    let issued = pki
        .root
        .issue(LeafOptions::server().dns("payments.internal"))
        .unwrap();
    let server = TlsServer::start(Setup::new(&issued));
    let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca())]);
    assert_problem(
        &output,
        &text,
        &[
            "name mismatch: the certificate is not valid for \"localhost\"; its names: DNS:payments.internal",
            "fix: connect by a name the certificate has: --server-name payments.internal",
            "--dns localhost",
        ],
    );
    // ... and the fix works.
    let (output, text) = doctor(
        &server.target(),
        &[
            "--ca",
            path(&pki.ca()),
            "--server-name",
            "payments.internal",
        ],
    );
    assert_eq!(output.status.code(), Some(0), "{text}");
}

#[test]
fn a_missing_intermediate_is_named() {
    let pki = Pki::new("intermediate");
    let issued = pki
        .intermediate
        .issue(LeafOptions::server().dns("localhost"))
        .unwrap();
    let mut setup = Setup::new(&issued);
    setup.chain.truncate(1); // the leaf alone
    let server = TlsServer::start(setup);
    let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca())]);
    assert_problem(
        &output,
        &text,
        &[
            "\"CN=localhost\" was issued by \"CN=Keel Test Intermediate\", which is neither in the chain presented",
            "a missing intermediate",
            "(missing intermediate): the server must send it after its own certificate",
        ],
    );
}

#[test]
fn a_client_certificate_demanded_but_not_sent_is_explained() {
    let pki = Pki::new("demanded");
    for tls12_only in [false, true] {
        let mut setup = Setup::new(&pki.server());
        setup.client_ca = Some(&pki.root);
        setup.tls12_only = tls12_only;
        let server = TlsServer::start(setup);
        let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca())]);
        assert_problem(
            &output,
            &text,
            &[
                "client certificate required: the server asked for a client certificate (mTLS) \
                 and none was sent",
                "it accepts certificates issued by \"CN=Keel Test CA\"",
                "fix: pass --cert CLIENT.pem --key CLIENT.key",
            ],
        );
        if !tls12_only {
            // TLS 1.3: the handshake completes on the client; the alert follows it.
            assert!(text.contains("certificate_required"), "{text}");
        }
    }
}

#[test]
fn a_rejected_client_certificate_says_which_cas_the_server_accepts() {
    let pki = Pki::new("rejected");
    let mut setup = Setup::new(&pki.server());
    setup.client_ca = Some(&pki.root);
    let server = TlsServer::start(setup);
    let stranger = Authority::root(CaOptions::new("Stranger CA")).unwrap();
    let client = stranger
        .issue(LeafOptions::client().common_name("mallory"))
        .unwrap();
    let (cert, key) = pki.client_files(&client);
    let (output, text) = doctor(
        &server.target(),
        &[
            "--ca",
            path(&pki.ca()),
            "--cert",
            path(&cert),
            "--key",
            path(&key),
        ],
    );
    assert_problem(
        &output,
        &text,
        &[
            "client certificate rejected: the server answered unknown_ca: it was issued by a CA the server does not trust",
            "your certificate chains to \"CN=Stranger CA\", but the server accepts certificates issued by \"CN=Keel Test CA\"",
        ],
    );
}

#[test]
fn a_server_without_h2_in_alpn_fails() {
    let pki = Pki::new("alpn");
    let mut setup = Setup::new(&pki.server());
    setup.alpn = &[];
    let server = TlsServer::start(setup);
    let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca())]);
    assert_problem(
        &output,
        &text,
        &[
            "FAIL  ALPN         offered h2; the server chose none",
            "no h2: the server chose none in ALPN; gRPC runs on HTTP/2",
            "fix: enable h2 in the server's ALPN protocols",
        ],
    );
    // A server with ALPN, but only http/1.1, refuses the handshake.
    let mut setup = Setup::new(&pki.server());
    setup.alpn = &[b"http/1.1"];
    let server = TlsServer::start(setup);
    let (output, text) = doctor(&server.target(), &["--ca", path(&pki.ca())]);
    assert_problem(&output, &text, &["no_application_protocol"]);
}

#[test]
fn a_plaintext_server_is_told_to_drop_tls() {
    let keel = common::KeelServe::start(&[]);
    let (output, text) = doctor(&format!("127.0.0.1:{}", keel.grpc.port()), &[]);
    assert_problem(
        &output,
        &text,
        &[
            "FAIL  TLS          the server answered in plaintext HTTP/2, not TLS",
            "plaintext: the server speaks HTTP/2 without TLS",
            "fix: drop TLS on the client: call http://127.0.0.1:",
        ],
    );
}

#[test]
fn a_refused_connection_and_bad_flags_have_their_exit_codes() {
    let port = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap().port()
    }; // closed again: nothing listens there now
    let (output, text) = doctor(&format!("127.0.0.1:{port}"), &[]);
    assert_problem(&output, &text, &["connection refused: nothing listens on"]);
    let (output, text) = doctor("127.0.0.1:1", &["--ca", "/nonexistent/ca.pem"]);
    assert_eq!(output.status.code(), Some(2), "{text}");
    assert!(text.contains("cannot read /nonexistent/ca.pem"), "{text}");
}
