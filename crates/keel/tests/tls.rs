//! TLS on Keel's listeners, over real sockets with real handshakes: server-only TLS, mutual
//! TLS (through an intermediate too), the handshake matrix (each failure seen on the side
//! that fails, and counted by the server), the peer identity handlers see, handshakes that
//! a flood of silent connections cannot delay, certificate and CA rotation under load, and
//! independent TLS stacks (`openssl s_client`, curl).
//!
//! Certificates come from `keel_test_support::tls` (rcgen); the client is tokio-rustls
//! under hyper's HTTP/2 client under tonic's generated Greeter client.

mod common;

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::mutual_tls::WhoAmI;
use hyper_util::rt::{TokioExecutor, TokioIo};
use keel::config::{ClientAuth, ServerConfig, TlsConfig, TlsVersion};
use keel::server::ShutdownReport;
use keel::tls::rustls::pki_types::pem::PemObject;
use keel::tls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use keel::tls::rustls::{self, ClientConfig, RootCertStore};
use keel::tls::tokio_rustls::TlsConnector;
use keel::{Server, ServerError};
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_interop::pb::helloworld::{HelloRequest, greeter_server};
use keel_test_support::tls::{Ca, Dir, Leaf};
use keel_test_support::{eventually_async, http_get, metric};
use tokio::net::TcpStream;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A root, an intermediate under it, and the files of a server certificate issued by the
/// intermediate (presented with it), trusted by clients through the root alone.
struct Pki {
    dir: Dir,
    root: Ca,
    issuing: Ca,
    server: Leaf,
    cert: PathBuf,
    key: PathBuf,
    root_file: PathBuf,
}

impl Pki {
    fn new() -> Self {
        let dir = Dir::new();
        let root = Ca::root("Keel Test Root");
        let issuing = root.intermediate("Keel Test Issuing");
        let server = server_leaf(&issuing);
        let cert = dir.write("server.pem", &server.chain_pem);
        let key = dir.write("server.key", &server.key_pem);
        let root_file = dir.write("root.pem", root.cert_pem());
        Self {
            dir,
            root,
            issuing,
            server,
            cert,
            key,
            root_file,
        }
    }

    /// Server-only TLS with the server certificate.
    fn tls(&self) -> TlsConfig {
        TlsConfig::new(&self.cert, &self.key)
    }

    /// Mutual TLS: client certificates must chain to the root.
    fn mtls(&self) -> TlsConfig {
        let mut tls = self.tls();
        tls.client_ca = self.root_file.clone();
        tls.client_auth = ClientAuth::Required;
        tls
    }

    /// A client trusting the root, presenting `identity` if given, offering `h2`.
    fn client(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        client_config(&[self.root.cert_pem()], identity, &[b"h2"])
    }

    /// [`Pki::client`] speaking TLS 1.2 only, for a refused client certificate: in TLS 1.3
    /// the client's handshake is over before the server judges its certificate, and the
    /// server's alert can lose the race with the client's first request (the server
    /// closes, the request meets a reset, the unread alert is gone); in TLS 1.2 the alert
    /// is the answer to the client's last handshake flight.
    fn client_tls12(&self, identity: Option<&Leaf>) -> Arc<ClientConfig> {
        client_config_versions(
            &[self.root.cert_pem()],
            identity,
            &[b"h2"],
            &[&rustls::version::TLS12],
        )
    }
}

fn server_leaf(ca: &Ca) -> Leaf {
    ca.leaf("server")
        .dns("localhost")
        .ip([127, 0, 0, 1].into())
        .issue()
}

fn client_config(roots: &[&str], identity: Option<&Leaf>, alpn: &[&[u8]]) -> Arc<ClientConfig> {
    client_config_versions(roots, identity, alpn, rustls::DEFAULT_VERSIONS)
}

fn client_config_versions(
    roots: &[&str],
    identity: Option<&Leaf>,
    alpn: &[&[u8]],
    versions: &[&'static rustls::SupportedProtocolVersion],
) -> Arc<ClientConfig> {
    let mut store = RootCertStore::empty();
    for pem in roots {
        for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(cert.unwrap()).unwrap();
        }
    }
    let builder = ClientConfig::builder_with_provider(keel::tls::provider())
        .with_protocol_versions(versions)
        .unwrap()
        .with_root_certificates(store);
    let mut config = match identity {
        Some(leaf) => {
            let chain = CertificateDer::pem_slice_iter(leaf.chain_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = PrivateKeyDer::from_pem_slice(leaf.key_pem.as_bytes()).unwrap();
            builder.with_client_auth_cert(chain, key).unwrap()
        }
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Arc::new(config)
}

/// A running server with `WhoAmI` as its Greeter.
struct Running {
    addr: SocketAddr,
    admin: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<ShutdownReport>,
}

impl Running {
    async fn start(config: ServerConfig) -> Self {
        let server = Server::builder(config)
            .add_service(greeter_server::GreeterServer::new(WhoAmI))
            // Names SayHello in the metrics' labels.
            .file_descriptor_set(keel_interop::FILE_DESCRIPTOR_SET)
            .bind()
            .await
            .expect("bind");
        let (addr, admin) = (server.local_addr(), server.admin_addr());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server.serve(async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            admin,
            stop: Some(stop),
            task,
        }
    }

    /// One sample of the plaintext admin port's `/metrics` (0 when absent).
    async fn metric(&self, series: &str) -> f64 {
        let (_, text) = http_get(self.admin, "/metrics").await;
        metric(&text, series).unwrap_or(0.0)
    }

    /// Waits until `series` is at least `count`.
    async fn reaches(&self, series: &str, count: f64) {
        let what = format!("{series} >= {count}");
        eventually_async(&what, Duration::from_secs(5), || async move {
            self.metric(series).await >= count
        })
        .await;
    }

    /// Waits until the server has counted a handshake of the gRPC listener as `outcome`.
    async fn counted(&self, outcome: &str) {
        let series =
            format!("keel_tls_handshakes_total{{listener=\"grpc\",outcome=\"{outcome}\"}}");
        self.reaches(&series, 1.0).await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

fn config(tls: TlsConfig) -> ServerConfig {
    let mut config = ServerConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.shutdown.drain_delay = Duration::ZERO;
    config.tls = tls;
    config
}

/// An error and its sources, `: `-separated, as a log line shows them.
fn chain(error: &(dyn StdError + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// An HTTP/2 connection as the service a tonic client calls, its errors with their sources.
#[derive(Clone)]
struct H2(hyper::client::conn::http2::SendRequest<tonic::body::Body>);

impl tower::Service<http::Request<tonic::body::Body>> for H2 {
    type Response = http::Response<hyper::body::Incoming>;
    type Error = BoxError;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, BoxError>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<tonic::body::Body>) -> Self::Future {
        let mut sender = self.0.clone();
        Box::pin(async move {
            sender
                .send_request(request)
                .await
                .map_err(|e| -> BoxError { chain(&e).into() })
        })
    }
}

/// One client connection: TLS, then HTTP/2.
struct Conn {
    sender: hyper::client::conn::http2::SendRequest<tonic::body::Body>,
    /// The leaf the server presented, DER.
    server_leaf: Vec<u8>,
    /// How the connection ended (`Some` once it has): TLS 1.3 reports a refused client
    /// certificate after the client's handshake is done, as an alert that ends the
    /// connection rather than a request.
    ended: tokio::sync::watch::Receiver<Option<String>>,
    task: JoinHandle<()>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connects to `addr` as `name` with `config`: the TLS handshake, then HTTP/2's.
async fn connect(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Result<Conn, String> {
    let tcp = TcpStream::connect(addr).await.map_err(|e| chain(&e))?;
    let name = ServerName::try_from(name.to_owned()).unwrap();
    let tls = TlsConnector::from(config)
        .connect(name, tcp)
        .await
        .map_err(|e| format!("TLS handshake: {}", chain(&e)))?;
    let server_leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .map_err(|e| format!("HTTP/2 handshake: {}", chain(&e)))?;
    let (end, ended) = tokio::sync::watch::channel(None);
    let task = tokio::spawn(async move {
        let outcome = match connection.await {
            Ok(()) => "closed".to_owned(),
            Err(error) => chain(&error),
        };
        end.send_replace(Some(outcome));
    });
    Ok(Conn {
        sender,
        server_leaf,
        ended,
        task,
    })
}

impl Conn {
    /// Calls SayHello; the principal the server saw, or the error with its sources.
    async fn hello(&self) -> Result<String, String> {
        let service = H2(self.sender.clone());
        let mut client = GreeterClient::with_origin(service, "https://localhost".parse().unwrap());
        let outcome = client
            .say_hello(HelloRequest { name: "tls".into() })
            .await
            .map(|response| response.into_inner().message);
        match outcome {
            Ok(message) => Ok(message),
            Err(status) => {
                let mut ended = self.ended.clone();
                let connection =
                    tokio::time::timeout(Duration::from_secs(1), ended.wait_for(Option::is_some))
                        .await
                        .ok()
                        .and_then(|ended| ended.ok().map(|ended| ended.clone()))
                        .flatten()
                        .unwrap_or_else(|| "still open".to_owned());
                Err(format!("{status}; connection: {connection}"))
            }
        }
    }
}

/// Connects and calls once: the principal the server saw, or the first error.
async fn call(addr: SocketAddr, config: Arc<ClientConfig>, name: &str) -> Result<String, String> {
    connect(addr, config, name).await?.hello().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_and_mutual_tls_complete_through_an_intermediate() {
    let pki = Pki::new();

    // Server-only TLS: the server's chain (leaf + intermediate) builds to the client's root.
    let server = Running::start(config(pki.tls())).await;
    let conn = connect(server.addr, pki.client(None), "localhost")
        .await
        .unwrap();
    assert_eq!(conn.hello().await.unwrap(), "anonymous");
    assert_eq!(conn.server_leaf, pki.server.der);
    server.counted("ok").await;
    drop(server);

    // Mutual TLS, a client issued by the root itself.
    let server = Running::start(config(pki.mtls())).await;
    let client = pki.root.leaf("direct").dns("direct.keel.test").issue();
    assert_eq!(
        call(server.addr, pki.client(Some(&client)), "localhost")
            .await
            .unwrap(),
        "direct.keel.test"
    );
    // Mutual TLS through the intermediate: the client presents leaf + intermediate; the
    // server trusts only the root.
    let client = pki
        .issuing
        .leaf("workload")
        .uri("spiffe://keel.test/ns/prod/sa/payments")
        .issue();
    assert!(client.chain_pem.ends_with(pki.issuing.cert_pem()));
    assert_eq!(
        call(server.addr, pki.client(Some(&client)), "localhost")
            .await
            .unwrap(),
        "spiffe://keel.test/ns/prod/sa/payments"
    );
    // Over IP too (the server certificate has an IP SAN).
    call(server.addr, pki.client(Some(&client)), "127.0.0.1")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_a_certificate_is_refused_when_one_is_required() {
    let pki = Pki::new();
    let server = Running::start(config(pki.mtls())).await;
    let error = call(server.addr, pki.client_tls12(None), "localhost")
        .await
        .unwrap_err();
    assert!(error.contains("CertificateRequired"), "{error}");
    server.counted("no_client_certificate").await;

    // Optional: the same client is served, without an identity.
    let mut optional = pki.mtls();
    optional.client_auth = ClientAuth::Optional;
    let server = Running::start(config(optional)).await;
    assert_eq!(
        call(server.addr, pki.client(None), "localhost")
            .await
            .unwrap(),
        "anonymous"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_from_an_untrusted_ca_is_refused() {
    let pki = Pki::new();
    let server = Running::start(config(pki.mtls())).await;
    let stranger = Ca::root("Stranger Root").leaf("stranger").issue();
    let error = call(server.addr, pki.client_tls12(Some(&stranger)), "localhost")
        .await
        .unwrap_err();
    assert!(error.contains("UnknownCA"), "{error}");
    server.counted("certificate_untrusted").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_certificates_are_refused_on_both_sides() {
    let pki = Pki::new();
    let server = Running::start(config(pki.mtls())).await;
    let expired = pki.root.leaf("old").expired().issue();
    let error = call(server.addr, pki.client_tls12(Some(&expired)), "localhost")
        .await
        .unwrap_err();
    assert!(error.contains("CertificateExpired"), "{error}");
    server.counted("certificate_expired").await;

    // An expired serving certificate never reaches a client: bind refuses it, naming the
    // file and what to do.
    let old = pki
        .issuing
        .leaf("server")
        .dns("localhost")
        .expired()
        .issue();
    let cert = pki.dir.write("old.pem", &old.chain_pem);
    let key = pki.dir.write("old.key", &old.key_pem);
    let refused = Server::builder(config(TlsConfig::new(&cert, &key)))
        .bind()
        .await
        .unwrap_err();
    assert!(
        matches!(refused, ServerError::Tls { what: "gRPC", .. }),
        "{refused}"
    );
    let text = refused.to_string();
    assert!(
        text.contains("old.pem") && text.contains("expired at 2021-01-01"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_wrong_server_name_is_refused_by_the_client() {
    let pki = Pki::new();
    let server = Running::start(config(pki.tls())).await;
    let error = call(server.addr, pki.client(None), "payments.keel.test")
        .await
        .unwrap_err();
    assert!(
        error.starts_with("TLS handshake") && error.contains("certificate not valid for name"),
        "{error}"
    );
    server.counted("alert_received").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_intermediate_fails_the_chain_on_either_side() {
    let pki = Pki::new();
    // The client presents its leaf without the intermediate that issued it.
    let server = Running::start(config(pki.mtls())).await;
    let mut bare = pki.issuing.leaf("bare").issue();
    bare.chain_pem = bare.cert_pem.clone();
    let error = call(server.addr, pki.client_tls12(Some(&bare)), "localhost")
        .await
        .unwrap_err();
    assert!(error.contains("UnknownCA"), "{error}");
    server.counted("certificate_untrusted").await;
    drop(server);

    // The server presents its leaf alone: the client cannot build to its root.
    let cert = pki.dir.write("leaf-only.pem", &pki.server.cert_pem);
    let server = Running::start(config(TlsConfig::new(&cert, &pki.key))).await;
    let error = call(server.addr, pki.client(None), "localhost")
        .await
        .unwrap_err();
    assert!(
        error.starts_with("TLS handshake") && error.contains("UnknownIssuer"),
        "{error}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_without_h2_in_alpn_gets_a_clear_error_on_the_grpc_port() {
    let pki = Pki::new();
    let mut config = config(pki.tls());
    config.admin_tls = pki.tls();
    let server = Running::start(config).await;
    let http1_only = client_config(&[pki.root.cert_pem()], None, &[b"http/1.1"]);
    let error = connect(server.addr, http1_only.clone(), "localhost")
        .await
        .err()
        .expect("no protocol in common");
    assert!(error.contains("NoApplicationProtocol"), "{error}");

    // The admin port serves HTTP/1.1 too: the same client gets `http/1.1` and an answer.
    let tcp = TcpStream::connect(server.admin).await.unwrap();
    let tls = TlsConnector::from(http1_only)
        .connect(ServerName::try_from("localhost").unwrap(), tcp)
        .await
        .unwrap();
    assert_eq!(tls.get_ref().1.alpn_protocol(), Some(&b"http/1.1"[..]));
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = http::Request::get("/healthz")
        .header(http::header::HOST, "localhost")
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    assert_eq!(response.status(), 200);

    // No ALPN at all: the listener's own protocol (HTTP/2 on the gRPC port).
    let no_alpn = client_config(&[pki.root.cert_pem()], None, &[]);
    assert_eq!(
        call(server.addr, no_alpn, "localhost").await.unwrap(),
        "anonymous"
    );
    // The refusal was counted on the gRPC listener (the admin port is TLS here: read it
    // over HTTPS with curl).
    let metrics = curl(&pki.root_file, server.admin, "/metrics", &[]).unwrap();
    assert_eq!(
        metric(
            &metrics,
            "keel_tls_handshakes_total{listener=\"grpc\",outcome=\"no_application_protocol\"}"
        ),
        Some(1.0),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_protocol_versions_are_refused() {
    let pki = Pki::new();
    let server = Running::start(config(pki.tls())).await;
    // TLS 1.1 (rustls cannot offer it; OpenSSL can, at security level 0).
    let output = openssl_s_client(
        server.addr,
        &["-tls1_1", "-cipher", "DEFAULT@SECLEVEL=0", "-CAfile"],
        &pki.root_file,
    );
    assert!(!output.status.success(), "{}", text(&output));
    // rustls answers a ClientHello without TLS 1.2 or 1.3 with handshake_failure.
    let printed = text(&output);
    assert!(
        printed.contains("Protocol  : TLSv1.1") && printed.contains("alert handshake failure"),
        "{printed}"
    );
    server.counted("protocol_version").await;
    drop(server);

    // A 1.3-only listener refuses TLS 1.2.
    let mut tls13 = pki.tls();
    tls13.min_version = TlsVersion::Tls13;
    let server = Running::start(config(tls13)).await;
    let tls12 = client_config_versions(
        &[pki.root.cert_pem()],
        None,
        &[b"h2"],
        &[&rustls::version::TLS12],
    );
    let error = call(server.addr, tls12, "localhost").await.unwrap_err();
    assert!(error.contains("ProtocolVersion"), "{error}");
    server.counted("protocol_version").await;
    call(server.addr, pki.client(None), "localhost")
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_identity_reaches_the_handler_and_spiffe_rules_hold() {
    let pki = Pki::new();
    let mut optional = pki.mtls();
    optional.client_auth = ClientAuth::Optional;
    let server = Running::start(config(optional)).await;
    let principal = |leaf: Leaf| {
        let config = pki.client_tls12(Some(&leaf));
        async move { call(server.addr, config, "localhost").await }
    };
    // SPIFFE ID before DNS SAN, DNS SAN before subject.
    let both = pki
        .root
        .leaf("svc")
        .dns("svc.keel.test")
        .uri("spiffe://keel.test/svc")
        .issue();
    assert_eq!(principal(both).await.unwrap(), "spiffe://keel.test/svc");
    let dns = pki.root.leaf("svc").dns("svc.keel.test").issue();
    assert_eq!(principal(dns).await.unwrap(), "svc.keel.test");
    let bare = pki.root.leaf("bare").issue();
    assert_eq!(principal(bare).await.unwrap(), "CN=bare,O=Keel Test");

    // A SPIFFE ID next to another URI SAN: WebPKI accepts the chain, the SPIFFE rules do
    // not, and the handshake fails.
    let two = pki
        .root
        .leaf("two")
        .uri("spiffe://keel.test/two")
        .uri("https://keel.test/")
        .issue();
    let error = principal(two).await.unwrap_err();
    assert!(error.contains("CertificateUnknown"), "{error}");
    server.counted("certificate_invalid").await;
    // A CA certificate with a SPIFFE ID as a client leaf.
    let ca_leaf = pki
        .root
        .leaf("ca")
        .uri("spiffe://keel.test/ca")
        .ca()
        .issue();
    assert!(principal(ca_leaf).await.is_err());
}

/// `series{labels,peer_identity="identity"}` of SayHello, or without `peer_identity`.
fn say_hello_series(series: &str, extra: &str, identity: Option<&str>) -> String {
    let peer = identity.map_or_else(String::new, |id| format!(",peer_identity=\"{id}\""));
    format!(
        "{series}{{grpc_type=\"unary\",grpc_service=\"helloworld.Greeter\",\
         grpc_method=\"SayHello\"{extra}{peer}}}"
    )
}

/// `grpc_server_handled_total` of OK SayHello calls from `identity`.
fn handled(identity: Option<&str>) -> String {
    say_hello_series("grpc_server_handled_total", ",grpc_code=\"OK\"", identity)
}

/// Calls SayHello over plaintext HTTP/2; the principal the server saw.
async fn plaintext_call(addr: SocketAddr) -> String {
    let tcp = TcpStream::connect(addr).await.unwrap();
    let (sender, connection) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .unwrap();
    let task = tokio::spawn(connection);
    let mut client = GreeterClient::with_origin(H2(sender), "http://localhost".parse().unwrap());
    let reply = client
        .say_hello(HelloRequest {
            name: "plain".into(),
        })
        .await
        .unwrap();
    task.abort();
    reply.into_inner().message
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_peer_identity_labels_metrics_only_when_asked() {
    let pki = Pki::new();
    let spiffe = "spiffe://keel.test/ns/prod/sa/billing";
    let workload = pki.issuing.leaf("billing").uri(spiffe).issue();
    let mut optional = pki.mtls();
    optional.client_auth = ClientAuth::Optional;

    // Off (the default): go-grpc-middleware's labels, whoever calls.
    let server = Running::start(config(optional.clone())).await;
    let seen = call(server.addr, pki.client(Some(&workload)), "localhost").await;
    assert_eq!(seen.unwrap(), spiffe);
    server.reaches(&handled(None), 1.0).await;
    let (_, text) = http_get(server.admin, "/metrics").await;
    assert!(!text.contains("peer_identity"), "{text}");
    drop(server);

    // On, over TLS: the caller's SPIFFE ID, and "" for a caller without a certificate.
    let mut on = config(optional);
    on.observe.identity_label = true;
    let server = Running::start(on).await;
    for _ in 0..2 {
        let seen = call(server.addr, pki.client(Some(&workload)), "localhost").await;
        assert_eq!(seen.unwrap(), spiffe);
    }
    let seen = call(server.addr, pki.client(None), "localhost").await;
    assert_eq!(seen.unwrap(), "anonymous");
    server.reaches(&handled(Some(spiffe)), 2.0).await;
    server.reaches(&handled(Some("")), 1.0).await;
    let (_, text) = http_get(server.admin, "/metrics").await;
    for series in [
        say_hello_series("grpc_server_started_total", "", Some(spiffe)),
        say_hello_series("grpc_server_msg_received_total", "", Some(spiffe)),
        say_hello_series("grpc_server_msg_sent_total", "", Some(spiffe)),
        say_hello_series("grpc_server_handling_seconds_count", "", Some(spiffe)),
    ] {
        assert_eq!(metric(&text, &series), Some(2.0), "{series} in\n{text}");
    }
    // Every series is split by caller: none is left without the label.
    let unlabelled: Vec<&str> = text
        .lines()
        .filter(|line| line.starts_with("grpc_server_") && !line.contains("peer_identity="))
        .collect();
    assert!(unlabelled.is_empty(), "{unlabelled:#?}");
    drop(server);

    // On, over plaintext: "".
    let mut plaintext = config(TlsConfig::default());
    plaintext.observe.identity_label = true;
    let server = Running::start(plaintext).await;
    assert_eq!(plaintext_call(server.addr).await, "anonymous");
    server.reaches(&handled(Some("")), 1.0).await;
    assert_eq!(server.metric(&handled(None)).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_delay_no_handshake() {
    let pki = Pki::new();
    let mut config = config(pki.tls());
    config.connection.handshake_timeout = Duration::from_secs(3);
    let server = Running::start(config).await;
    let mut silent = Vec::new();
    for _ in 0..500 {
        silent.push(TcpStream::connect(server.addr).await.unwrap());
    }
    // Every silent connection is accepted and waiting for its ClientHello.
    eventually_async(
        "500 silent connections open",
        Duration::from_secs(5),
        || async {
            server
                .metric("keel_server_connections{listener=\"grpc\"}")
                .await
                >= 500.0
        },
    )
    .await;
    let started = Instant::now();
    assert_eq!(
        call(server.addr, pki.client(None), "localhost")
            .await
            .unwrap(),
        "anonymous"
    );
    let took = started.elapsed();
    assert!(
        took < Duration::from_millis(500),
        "a handshake took {took:?} behind 500 silent connections"
    );
    // The silent ones are cut at the handshake timeout, each counted.
    eventually_async("500 handshake timeouts", Duration::from_secs(8), || async {
        server
            .metric("keel_tls_handshakes_total{listener=\"grpc\",outcome=\"timeout\"}")
            .await
            >= 500.0
    })
    .await;
    drop(silent);
}

/// PEM holding a chain and its key, for `tls.cert` and `tls.key` naming one file: a
/// rotation is then one rename, which a poll can never see half done.
fn combined(leaf: &Leaf) -> String {
    format!("{}{}", leaf.chain_pem, leaf.key_pem)
}

/// Calls in a loop until stopped, counting calls and failures: on one long-lived
/// connection, or on a new connection each time (with the current client config).
fn keep_calling(
    addr: SocketAddr,
    client: Arc<Mutex<Arc<ClientConfig>>>,
    fresh: bool,
    stop: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let current = || client.lock().unwrap().clone();
        let mut conn = connect(addr, current(), "localhost").await.unwrap();
        while !stop.load(Ordering::Relaxed) {
            if fresh {
                conn = match connect(addr, current(), "localhost").await {
                    Ok(conn) => conn,
                    Err(error) => {
                        failures.lock().unwrap().push(error);
                        continue;
                    }
                };
            }
            match conn.hello().await {
                Ok(_) => {
                    calls.fetch_add(1, Ordering::Relaxed);
                }
                Err(error) => failures.lock().unwrap().push(error),
            }
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_and_ca_bundles_rotate_under_load_without_a_failed_call() {
    let pki = Pki::new();
    let second_root = Ca::root("Keel Test Root 2");
    let file = pki.dir.write("serving.pem", combined(&pki.server));
    let mut tls = TlsConfig::new(&file, &file);
    tls.client_ca = pki.root_file.clone();
    tls.client_auth = ClientAuth::Required;
    tls.reload_interval = Duration::from_millis(50);
    let server = Running::start(config(tls)).await;
    let expiry =
        "keel_tls_certificate_expiry_timestamp_seconds{listener=\"grpc\",certificate=\"serving\"}";
    assert_eq!(server.metric(expiry).await, 4_102_358_400.0); // 2099-12-31T00:00:00Z

    let first_client = pki.root.leaf("load").dns("load.keel.test").issue();
    let second_client = second_root.leaf("load").dns("load.keel.test").issue();
    let trusted = [pki.root.cert_pem(), second_root.cert_pem()];
    let client = Arc::new(Mutex::new(client_config(
        &trusted,
        Some(&first_client),
        &[b"h2"],
    )));
    let stop = Arc::new(AtomicBool::new(false));
    let calls = Arc::new(AtomicU64::new(0));
    let failures = Arc::new(Mutex::new(Vec::new()));
    let load: Vec<_> = [false, true]
        .into_iter()
        .map(|fresh| {
            keep_calling(
                server.addr,
                client.clone(),
                fresh,
                stop.clone(),
                calls.clone(),
                failures.clone(),
            )
        })
        .collect();
    let reloads = |outcome: &str| {
        format!("keel_tls_reloads_total{{listener=\"grpc\",outcome=\"{outcome}\"}}")
    };
    // A full handshake (a resumed one shows the certificate of the session it resumes).
    let presented = || async {
        let mut config = ClientConfig::clone(&client.lock().unwrap());
        config.resumption = rustls::client::Resumption::disabled();
        connect(server.addr, Arc::new(config), "localhost")
            .await
            .unwrap()
            .server_leaf
            .clone()
    };
    assert_eq!(presented().await, pki.server.der);

    // 1. A new server certificate (and key): new connections present it.
    let rotated = server_leaf(&pki.issuing);
    pki.dir.write("serving.pem", combined(&rotated));
    server.reaches(&reloads("ok"), 1.0).await;
    assert_eq!(presented().await, rotated.der);

    // 2. The CA bundle gains a second root; clients move to certificates it issued.
    let both = format!("{}{}", pki.root.cert_pem(), second_root.cert_pem());
    pki.dir.write("root.pem", both);
    server.reaches(&reloads("ok"), 2.0).await;
    *client.lock().unwrap() = client_config(&trusted, Some(&second_client), &[b"h2"]);
    // 3. The first root leaves the bundle: its clients are refused from now on.
    pki.dir.write("root.pem", second_root.cert_pem());
    server.reaches(&reloads("ok"), 3.0).await;
    let old_client = client_config_versions(
        &trusted,
        Some(&first_client),
        &[b"h2"],
        &[&rustls::version::TLS12],
    );
    let error = call(server.addr, old_client, "localhost")
        .await
        .unwrap_err();
    assert!(error.contains("UnknownCA"), "{error}");

    // 4. A certificate with a key that is not its own is refused and counted; the
    // previous material keeps serving.
    let mismatched = server_leaf(&pki.issuing);
    let wrong = format!("{}{}", mismatched.chain_pem, rotated.key_pem);
    pki.dir.write("serving.pem", wrong);
    server.reaches(&reloads("error"), 1.0).await;
    assert_eq!(presented().await, rotated.der);
    let before = calls.load(Ordering::Relaxed);
    eventually_async("calls go on", Duration::from_secs(5), || {
        let calls = calls.clone();
        async move { calls.load(Ordering::Relaxed) > before + 20 }
    })
    .await;

    stop.store(true, Ordering::Relaxed);
    for task in load {
        task.await.unwrap();
    }
    let failures = failures.lock().unwrap().clone();
    assert!(failures.is_empty(), "failed calls: {failures:?}");
    assert_eq!(server.metric(&reloads("ok")).await, 3.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_when_polling_is_off() {
    let pki = Pki::new();
    let file = pki.dir.write("serving.pem", combined(&pki.server));
    let mut tls = TlsConfig::new(&file, &file);
    tls.reload_interval = Duration::ZERO;
    let server = Running::start(config(tls)).await;
    let rotated = server_leaf(&pki.issuing);
    pki.dir.write("serving.pem", combined(&rotated));
    let series = "keel_tls_reloads_total{listener=\"grpc\",outcome=\"ok\"}";
    eventually_async("a reload on SIGHUP", Duration::from_secs(5), || async {
        // The server's SIGHUP handler is installed once it serves; until then a signal
        // would end the process, so send it only after a handshake proved it serves.
        call(server.addr, pki.client(None), "localhost")
            .await
            .unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        server.metric(series).await >= 1.0
    })
    .await;
    let conn = connect(server.addr, pki.client(None), "localhost")
        .await
        .unwrap();
    assert_eq!(conn.server_leaf, rotated.der);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openssl_negotiates_h2_and_curl_reaches_the_admin_port_over_https() {
    let pki = Pki::new();
    let mut config = config(pki.tls());
    config.admin_tls = pki.tls();
    let server = Running::start(config).await;
    let output = openssl_s_client(server.addr, &["-alpn", "h2", "-CAfile"], &pki.root_file);
    let printed = text(&output);
    assert!(printed.contains("ALPN protocol: h2"), "{printed}");
    assert!(printed.contains("Verify return code: 0 (ok)"), "{printed}");

    for version in ["--http2", "--http1.1"] {
        let body = curl(&pki.root_file, server.admin, "/healthz", &[version]).unwrap();
        assert_eq!(body, r#"{"status":"alive"}"#, "{version}");
    }
    // Plaintext on the TLS admin port is refused, not served.
    let tcp = tokio::time::timeout(Duration::from_secs(5), async {
        let stream = TcpStream::connect(server.admin).await.unwrap();
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .unwrap();
        tokio::spawn(connection);
        let request = http::Request::get("/healthz")
            .body(http_body_util::Empty::<bytes::Bytes>::new())
            .unwrap();
        sender.send_request(request).await
    })
    .await
    .unwrap();
    assert!(tcp.is_err(), "plaintext was served on a TLS port");
}

/// Runs `openssl s_client` against `addr` as `localhost` with `args` then `file`, its
/// input closed: it handshakes, prints the session and exits.
fn openssl_s_client(addr: SocketAddr, args: &[&str], file: &Path) -> std::process::Output {
    std::process::Command::new("openssl")
        .args([
            "s_client",
            "-connect",
            &addr.to_string(),
            "-servername",
            "localhost",
        ])
        .args(args)
        .arg(file)
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl runs")
}

fn text(output: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// GETs `path` from `addr` over HTTPS as `localhost` with curl; the body, or curl's
/// complaint.
fn curl(ca: &Path, addr: SocketAddr, path: &str, args: &[&str]) -> Result<String, String> {
    let output = std::process::Command::new("curl")
        .args(["-sS", "--fail", "--max-time", "5", "--cacert"])
        .arg(ca)
        .args(["--resolve", &format!("localhost:{}:127.0.0.1", addr.port())])
        .args(args)
        .arg(format!("https://localhost:{}{path}", addr.port()))
        .output()
        .expect("curl runs");
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(text(&output))
    }
}
