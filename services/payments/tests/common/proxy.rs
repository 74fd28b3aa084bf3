//! A TCP proxy in front of a test server (PostgreSQL, Redis) that a test takes down, brings
//! back, or cuts off silently, to play outages:
//! - [`Proxy::stop`]: live connections are cut and new ones refused (a crashed server);
//! - [`Proxy::blackhole`]: nothing is forwarded either way, and no socket is closed (a network
//!   partition: packets vanish, nobody says so); new connections are accepted and then hear
//!   nothing. [`Proxy::heal`] forwards again, what was held included, as TCP's retransmissions
//!   would deliver it.
//! - [`Proxy::blackhole_after_commit`]: forwards until a client sends `COMMIT`, forwards that,
//!   then blackholes: the server commits, the answer never comes (an in-doubt commit).

use std::net::SocketAddr;
use std::sync::Mutex;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinSet;

/// What the proxy does with the bytes of its connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flow {
    Forward,
    Blackhole,
    BlackholeAfterCommit,
}

/// The proxy; listening on `127.0.0.1:port()` while up.
pub struct Proxy {
    addr: SocketAddr,
    target: SocketAddr,
    running: Mutex<Option<tokio::task::JoinHandle<()>>>,
    flow: watch::Sender<Flow>,
}

impl Proxy {
    /// Starts a proxy to `target` on an ephemeral loopback port (inside a Tokio runtime).
    pub fn start(target: SocketAddr) -> Self {
        let mut proxy = Self {
            addr: "127.0.0.1:0".parse().unwrap(),
            target,
            running: Mutex::new(None),
            flow: watch::Sender::new(Flow::Forward),
        };
        proxy.addr = proxy.listen(proxy.addr);
        proxy
    }

    /// The port it listens on (the same across restarts).
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Cuts every connection and stops listening.
    pub async fn stop(&self) {
        let running = self.running.lock().unwrap().take();
        if let Some(task) = running {
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port.
    pub fn restart(&self) {
        self.listen(self.addr);
    }

    /// Stops forwarding in both directions, closing nothing.
    pub fn blackhole(&self) {
        self.flow.send_replace(Flow::Blackhole);
    }

    /// Forwards until a client sends `COMMIT`, then blackholes right after forwarding it.
    pub fn blackhole_after_commit(&self) {
        self.flow.send_replace(Flow::BlackholeAfterCommit);
    }

    /// True once the proxy blackholes (after [`Proxy::blackhole_after_commit`]: once it
    /// tripped).
    pub fn is_blackholed(&self) -> bool {
        *self.flow.borrow() == Flow::Blackhole
    }

    /// Forwards again, starting with what it held back.
    pub fn heal(&self) {
        self.flow.send_replace(Flow::Forward);
    }

    fn listen(&self, addr: SocketAddr) -> SocketAddr {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        socket.bind(addr).unwrap();
        let listener = socket.listen(64).unwrap();
        let bound = listener.local_addr().unwrap();
        let (target, flow) = (self.target, self.flow.clone());
        // One task owns the listener and every connection: aborting it cuts them all.
        let task = tokio::spawn(async move {
            let mut connections = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        let Ok((inbound, _)) = accepted else { continue };
                        connections.spawn(relay(inbound, target, flow.clone()));
                    }
                    Some(_) = connections.join_next(), if !connections.is_empty() => {}
                }
            }
        });
        *self.running.lock().unwrap() = Some(task);
        bound
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(task) = self.running.get_mut().unwrap().take() {
            task.abort();
        }
    }
}

/// Relays one connection in both directions until both ends have closed.
async fn relay(inbound: TcpStream, target: SocketAddr, flow: watch::Sender<Flow>) {
    let Ok(outbound) = TcpStream::connect(target).await else {
        return;
    };
    let (client_read, client_write) = inbound.into_split();
    let (server_read, server_write) = outbound.into_split();
    tokio::join!(
        pump(client_read, server_write, flow.clone(), true),
        pump(server_read, client_write, flow, false),
    );
}

/// Copies `from` to `to` while the flow allows, holding what it read while it does not. With
/// `from_client`, a `COMMIT` read while armed trips the blackhole and is still forwarded.
async fn pump(
    mut from: OwnedReadHalf,
    mut to: OwnedWriteHalf,
    flow: watch::Sender<Flow>,
    from_client: bool,
) {
    let mut open = flow.subscribe();
    let mut buffer = vec![0; 16 * 1024];
    loop {
        if open
            .wait_for(|flow| *flow != Flow::Blackhole)
            .await
            .is_err()
        {
            return;
        }
        let read = match from.read(&mut buffer).await {
            Ok(0) | Err(_) => {
                let _ = to.shutdown().await;
                return;
            }
            Ok(read) => read,
        };
        let bytes = &buffer[..read];
        // Tripped before the COMMIT leaves, so its answer cannot slip through first.
        let tripped = from_client
            && bytes.windows(6).any(|window| window == b"COMMIT")
            && flow.send_if_modified(|flow| {
                let trip = *flow == Flow::BlackholeAfterCommit;
                if trip {
                    *flow = Flow::Blackhole;
                }
                trip
            });
        if !tripped
            && open
                .wait_for(|flow| *flow != Flow::Blackhole)
                .await
                .is_err()
        {
            return;
        }
        if to.write_all(bytes).await.is_err() {
            return;
        }
    }
}

/// The address of the test PostgreSQL.
pub async fn postgres_addr() -> SocketAddr {
    use std::str::FromStr;
    let admin = sqlx::postgres::PgConnectOptions::from_str(&super::postgres_admin_url()).unwrap();
    tokio::net::lookup_host((admin.get_host(), admin.get_port()))
        .await
        .unwrap()
        .next()
        .unwrap()
}

/// A fresh PostgreSQL test database whose store connects through a new proxy, so the test can
/// take the database "down" with [`Proxy::stop`]; the fixture's own checks connect directly.
/// Connections are given up after 500 ms, so an outage is reported quickly.
pub async fn postgres_behind_proxy() -> (Proxy, super::TestDb) {
    let config = payments::store::StoreConfig::default()
        .acquire_timeout(std::time::Duration::from_millis(500));
    postgres_behind_proxy_with(config).await
}

/// [`postgres_behind_proxy`] with the store configured by `config`.
pub async fn postgres_behind_proxy_with(
    config: payments::store::StoreConfig,
) -> (Proxy, super::TestDb) {
    let proxy = Proxy::start(postgres_addr().await);
    let port = proxy.port();
    let db = super::TestDb::reached_by(super::Backend::Postgres, |url| via_port(url, port), config)
        .await;
    (proxy, db)
}

/// The URL `url` with its host and port replaced by 127.0.0.1:`port`.
pub fn via_port(url: &str, port: u16) -> String {
    let authority_start = url.find("://").unwrap() + 3;
    let host_start = url[authority_start..]
        .find('@')
        .map_or(authority_start, |at| authority_start + at + 1);
    let host_end = host_start + url[host_start..].find('/').unwrap();
    format!("{}127.0.0.1:{port}{}", &url[..host_start], &url[host_end..])
}
