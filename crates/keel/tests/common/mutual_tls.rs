//! A Greeter that answers with the caller's certificate identity, a PKI for it (root,
//! intermediate, server and client certificates), and one call over Keel's client: what
//! the TLS tests share.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use keel::client::{Channel, ClientTls, ClientTlsConfig};
use keel::config::{ClientAuth, ServerConfig, TlsConfig};
use keel::identity::PeerIdentity;
use keel::{BoundServer, Server};
use keel_interop::pb::helloworld::greeter_client::GreeterClient;
use keel_interop::pb::helloworld::{HelloReply, HelloRequest, greeter_server};
use keel_test_support::tls::{Ca, Dir, Leaf};
use tokio::sync::oneshot;
use tonic::{Request, Response, Status};

/// Answers with the caller's principal (`anonymous` without a certificate).
#[derive(Debug, Clone, Copy)]
pub struct WhoAmI;

#[tonic::async_trait]
impl greeter_server::Greeter for WhoAmI {
    async fn say_hello(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        let message = request.extensions().get::<Arc<PeerIdentity>>().map_or_else(
            || "anonymous".to_owned(),
            |peer| peer.principal().to_owned(),
        );
        Ok(Response::new(HelloReply { message }))
    }

    async fn say_hello_again(
        &self,
        request: Request<HelloRequest>,
    ) -> Result<Response<HelloReply>, Status> {
        self.say_hello(request).await
    }
}

/// A root, an intermediate issuing a server certificate (SPIFFE ID and `localhost`,
/// 127.0.0.1) and a client certificate, all written to a temporary directory.
pub struct Pki {
    pub dir: Dir,
    pub root: Ca,
    pub issuing: Ca,
}

pub const SERVER_ID: &str = "spiffe://keel.test/payments";
pub const CLIENT_ID: &str = "spiffe://keel.test/checkout";

impl Pki {
    pub fn new() -> Self {
        let root = Ca::root("Keel Client Test Root");
        let issuing = root.intermediate("Keel Client Test Issuing");
        let pki = Self {
            dir: Dir::new(),
            root,
            issuing,
        };
        pki.dir.write("root.pem", pki.root.cert_pem());
        pki.write_leaf(
            "server",
            &pki.issuing
                .leaf("server")
                .uri(SERVER_ID)
                .dns("localhost")
                .ip([127, 0, 0, 1].into())
                .issue(),
        );
        pki.write_leaf("client", &pki.issuing.leaf("client").uri(CLIENT_ID).issue());
        pki
    }

    pub fn write_leaf(&self, name: &str, leaf: &Leaf) {
        self.dir.write(&format!("{name}.pem"), &leaf.chain_pem);
        self.dir.write(&format!("{name}.key"), &leaf.key_pem);
    }

    pub fn file(&self, name: &str) -> std::path::PathBuf {
        self.dir.path().join(name)
    }

    /// Mutual TLS on the server: client certificates must chain to the root.
    pub fn server_tls(&self, client_auth: ClientAuth) -> TlsConfig {
        let mut tls = TlsConfig::new(self.file("server.pem"), self.file("server.key"));
        if client_auth != ClientAuth::None {
            tls.client_ca = self.file("root.pem");
            tls.client_auth = client_auth;
        }
        tls
    }

    /// A client trusting the root, presenting its certificate when `mutual`.
    pub fn client_tls(&self, mutual: bool) -> ClientTlsConfig {
        let mut tls = ClientTlsConfig::default();
        tls.ca = self.file("root.pem");
        if mutual {
            tls.cert = self.file("client.pem");
            tls.key = self.file("client.key");
        }
        tls
    }
}

/// A server with `WhoAmI`, stopped on drop.
pub struct Running {
    pub addr: SocketAddr,
    _stop: oneshot::Sender<()>,
}

pub async fn start(tls: TlsConfig) -> Running {
    start_with(tls, |_| {}).await
}

/// [`start`] with whatever else `configure` sets.
pub async fn start_with(tls: TlsConfig, configure: impl FnOnce(&mut ServerConfig)) -> Running {
    let mut config = ServerConfig::default();
    config.listen = "127.0.0.1:0".parse().unwrap();
    config.admin_listen = "127.0.0.1:0".parse().unwrap();
    config.shutdown.drain_delay = Duration::ZERO;
    config.tls = tls;
    configure(&mut config);
    let server: BoundServer = Server::builder(config)
        .add_service(greeter_server::GreeterServer::new(WhoAmI))
        .bind()
        .await
        .expect("bind");
    let addr = server.local_addr();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.serve(async move {
        let _ = stopped.await;
    }));
    Running { addr, _stop: stop }
}

/// One call over a fresh channel to `target` with `tls`: the reply or the status.
pub async fn call(target: &str, tls: &ClientTlsConfig) -> Result<String, Status> {
    let channel = Channel::builder(target)
        .unwrap()
        .tls(ClientTls::load(tls).expect("client TLS material"))
        .build()
        .unwrap();
    // The first connection attempt decides: a fail-fast call waits for it, then fails
    // with its reason if it failed.
    channel
        .connect(Duration::from_secs(5))
        .await
        .map_err(|error| Status::unavailable(error.to_string()))?;
    GreeterClient::new(channel)
        .say_hello(HelloRequest { name: "tls".into() })
        .await
        .map(|reply| reply.into_inner().message)
}
